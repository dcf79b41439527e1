"""One configuration of the linear teacher-student problem, validated before any compute."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .closed_form import deep_learning_time
from .errors import ConfigError
from .rules import get_rule, is_ld, resolve

INITS = ("random", "aligned", "first-zero")


@dataclass(frozen=True)
class TheoryConfig:
    """A deep linear student W_L ⋯ W_1 learning a teacher W* = U diag(spectrum) Vᵀ.

    Inputs are whitened; the teacher's output noise has covariance noise² I.
    ``init_scale`` sets the initial weights: ``random`` draws W_l with entries
    N(0, init_scale² / n_{l-1}); ``aligned`` starts every layer in the teacher's modes
    with strength init_scale (u_0 = init_scale^L); ``first-zero`` is ``random`` with
    W_1 = 0, so that W_1 stays in the span of the feedback. Times are in units of τ (= 1/η).
    ``tau_b``, ``tau_p``, ``tau_q`` are the timescales of the rule's own matrices.
    ``t_max=None`` picks 3x the backprop learning time of the weakest mode.
    """

    rule: str = "bp"
    p_rule: str | None = None
    q_rule: str | None = None
    direct: bool = False
    layers: int = 2
    n_in: int = 100
    hidden: int = 100
    n_out: int = 10
    rank: int | None = None
    spectrum: tuple = (5.0, 4.0, 3.0, 2.0, 1.0)
    noise: float = 0.0
    init: str = "random"
    init_scale: float = 1e-3
    tau: float = 1.0
    tau_b: float = 1.0
    tau_p: float = 0.1
    tau_q: float = 1.0
    weight_decay: float = 0.0
    t_max: float | None = None
    n_points: int = 201
    seed: int = 0
    rtol: float = 1e-8
    atol: float = 1e-10
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        try:
            spectrum = tuple(float(x) for x in self.spectrum)
        except (TypeError, ValueError):
            raise ConfigError(f"spectrum={self.spectrum!r}: must be a sequence of numbers, "
                              "e.g. (5, 4, 3)") from None
        if isinstance(self.spectrum, str):
            raise ConfigError(f"spectrum={self.spectrum!r}: must be a sequence of numbers, e.g. (5, 4, 3)")
        object.__setattr__(self, "spectrum", spectrum)
        validate(self)

    @property
    def is_ld(self) -> bool:
        return is_ld(self.rule)

    @property
    def uses_rank(self) -> bool:
        """True for rules with a bottleneck of r numbers (ld, its presets, registered rank rules)."""
        return self.is_ld or get_rule(self.rule, self.p_rule, self.q_rule, self.direct).uses_rank

    def teacher(self):
        """(W*, U, V) of this configuration: :func:`teacher_matrices` of (n_in, n_out, spectrum, seed)."""
        return teacher_matrices(self.n_in, self.n_out, self.spectrum, self.seed)

    @property
    def widths(self) -> list[int]:
        return [self.n_in] + [self.hidden] * (self.layers - 1) + [self.n_out]

    @property
    def t_end(self) -> float:
        if self.t_max is not None:
            return self.t_max
        s_min = min(self.spectrum)
        u0 = min(self.init_scale**self.layers, s_min / 4)
        return 3 * deep_learning_time(s_min, u0, self.layers, self.tau)

    def to_dict(self) -> dict:
        return asdict(self)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r}: must be a positive number")


def _orthonormal_rows(rng, r, n):
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q[:, :r].T


def teacher_matrices(n_in: int, n_out: int, spectrum, seed: int = 0):
    """The one teacher of the project, for theory and simulation alike: W* = U diag(spectrum) Vᵀ.

    U (n_out x k) and V (n_in x k), k = len(spectrum), are random orthonormal columns drawn, in
    that order, from numpy's default_rng(seed). Returns float64 arrays (W*, U, V).
    """
    rng = np.random.default_rng(seed)
    k = len(spectrum)
    U = _orthonormal_rows(rng, k, n_out).T
    V = _orthonormal_rows(rng, k, n_in).T
    return U @ np.diag(np.asarray(spectrum, dtype=float)) @ V.T, U, V


def validate(c: TheoryConfig) -> None:
    """Raise ConfigError with one line naming the first bad value and what is allowed.

    Rule names, p_rule, q_rule and direct are checked by :func:`ldfa.theory.rules.resolve`
    (shared with the simulation); the rank's bounds here are the theory's (1 <= r <= d).
    """
    get_rule(c.rule, p_rule=c.p_rule, q_rule=c.q_rule, direct=c.direct)  # names, no_theory
    if not isinstance(c.layers, int) or c.layers < 2:
        raise ConfigError(f"layers={c.layers!r}: must be an integer >= 2")
    for name in ("n_in", "hidden", "n_out", "n_points"):
        v = getattr(c, name)
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{name}={v!r}: must be a positive integer")
    for name in ("tau", "tau_b", "tau_p", "tau_q", "init_scale", "rtol", "atol"):
        _positive(name, getattr(c, name))
    if c.t_max is not None:
        _positive("t_max", c.t_max)
    for name in ("noise", "weight_decay"):
        v = getattr(c, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name}={v!r}: must be a finite number >= 0")
    if c.n_points < 2:
        raise ConfigError(f"n_points={c.n_points}: need at least 2 time points")
    if c.init not in INITS:
        raise ConfigError(f"init={c.init!r}; allowed: {', '.join(INITS)}")
    k = len(c.spectrum)
    if k < 1 or not all(math.isfinite(s) and s > 0 for s in c.spectrum):
        raise ConfigError(f"spectrum={list(c.spectrum)}: need at least one singular value, all > 0")
    if k > min(c.n_in, c.n_out):
        raise ConfigError(f"spectrum has {k} modes but the teacher is {c.n_out} x {c.n_in}: "
                          f"at most {min(c.n_in, c.n_out)} modes")
    if c.init == "aligned" and k > c.hidden:
        raise ConfigError(f"init='aligned' needs hidden >= number of modes ({k}), got {c.hidden}")
    if c.uses_rank:
        if c.rank is None:
            raise ConfigError(f"rule {c.rule!r} needs a rank r, an integer in 1..d")
        if not _is_int(c.rank) or not 1 <= c.rank <= c.n_out:
            raise ConfigError(f"rank r={c.rank!r}: must be an integer with 1 <= r <= d = {c.n_out}")
        if c.rank > c.hidden:
            raise ConfigError(f"rank r={c.rank} exceeds the hidden width {c.hidden}")
    resolve(c.rule, c.p_rule, c.q_rule, c.direct, rank=c.rank)
