"""Check any registered rule: its ODE against its simulation, from identical initial matrices.

:func:`verify_rule` integrates the matrix ODE of the rule (ldfa.theory.integrate) and
simulates the same linear net (:func:`ldfa.bridge.linear.simulate_config`) with time step η
and with η/2. The deviation is D(η) = max_t |L_sim(t) - L_ode(t)| / L_ode(0).

Tolerance. Full-batch gradient descent is Euler's method for the flow, whose global error
is first order: D(η) ≈ K η with K set by the fastest rate of the system (at most a few
s_max/τ_min here). The check therefore asks for both

- D(η) <= ``rel_tol`` · η · s_max · τ/τ_min (``rel_tol`` = 1: measured D/(η s_max τ/τ_min) is
  0.03-0.42 for the built-in rules on the default problem at η = 0.01), and
- first-order convergence: D(η/2)/D(η) within [0.35, 0.65] (Euler halves its error with the
  step), unless D(η) is at round-off level (< 1e-9, e.g. an ODE that the simulation follows
  exactly).

A wrong theory fails the second condition even where its curve happens to lie close: its
deviation does not shrink with the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..theory.config import TheoryConfig
from ..theory.errors import ConfigError
from ..theory.rules import RULES, FeedbackRule, register_rule, resolve
from .linear import simulate_config

ROUND_OFF = 1e-9
ORDER_BAND = (0.35, 0.65)


@dataclass
class RuleCheck:
    """The outcome of :func:`verify_rule`."""

    rule: str
    deviation: float  # D(η)
    deviation_half: float  # D(η/2)
    tolerance: float
    ratio: float  # D(η/2) / D(η)
    eta: float
    passed: bool
    curves: dict = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        return (f"{self.rule}: D(eta={self.eta:g}) = {self.deviation:.2e} (tolerance {self.tolerance:.2e}), "
                f"D(eta/2)/D(eta) = {self.ratio:.2f} (Euler: 0.5) -> {'pass' if self.passed else 'FAIL'}")


def verify_rule(name: str, p_rule: str | None = None, q_rule: str | None = None, rank: int | None = None,
                direct: bool = False, layers: int = 2, eta: float = 0.01, t_max: float = 4.0,
                n_in: int = 8, hidden: int = 6, n_out: int = 4, spectrum=(3.0, 2.0, 1.0),
                init: str = "random", init_scale: float = 0.5, tau_b: float = 1.0, tau_p: float = 1.0,
                tau_q: float = 1.0, seed: int = 0, implementation: str = "auto",
                theory: FeedbackRule | None = None, rel_tol: float = 1.0) -> RuleCheck:
    """Integrate rule ``name``'s ODE and simulate the same linear net; pass/fail as in the module
    docstring. ``theory``: a FeedbackRule to integrate instead of the rule's own (a sabotage
    check: the wrong theory must fail). Stochastic fast paths (wm, q_rule mirror) are simulated
    by the generic path, i.e. by their mean, unless implementation='fast'."""
    spec = resolve(name, p_rule, q_rule, direct, rank=rank)
    if implementation == "auto" and (spec.base == "wm" or spec.q_rule == "mirror"):
        implementation = "generic"
    cfg = TheoryConfig(rule=name, p_rule=p_rule, q_rule=q_rule, direct=direct, layers=layers, n_in=n_in,
                       hidden=hidden, n_out=n_out, rank=rank, spectrum=spectrum, init=init,
                       init_scale=init_scale, tau_b=tau_b, tau_p=tau_p, tau_q=tau_q, t_max=t_max,
                       seed=seed, rtol=1e-8, atol=1e-10)  # ODE error << Euler's
    run = simulate_config(cfg, eta, implementation=implementation)
    half = simulate_config(cfg, eta / 2, implementation=implementation, record_every=2)
    if theory is not None and not isinstance(theory, FeedbackRule):
        raise ConfigError(f"theory={theory!r}: must be a FeedbackRule")
    loss = _ode_loss(cfg, run.t, theory)
    dev = float(np.max(np.abs(run.loss - loss)) / loss[0])
    dev_half = float(np.max(np.abs(half.loss - loss)) / loss[0])
    ratio = dev_half / dev if dev > 0 else 0.0
    tau_min = min([cfg.tau] + [t for t, used in ((tau_b, "B"), (tau_p, "P"), (tau_q, "Q"))
                               if used in spec.rule.matrices and spec.rule.matrices[used].kind == "flow"])
    tol = rel_tol * eta * max(spectrum) * cfg.tau / tau_min
    converges = dev < ROUND_OFF or ORDER_BAND[0] <= ratio <= ORDER_BAND[1]
    passed = bool(np.all(np.isfinite(run.loss)) and dev <= tol and converges)
    return RuleCheck(name if not spec.is_ld else spec.rule.name, dev, dev_half, tol, ratio, eta, passed,
                     curves={"t": run.t, "sim": run.loss[:, None], "theory": loss[:, None],
                             "ylabel": "loss"})


def _ode_loss(cfg: TheoryConfig, t, theory: FeedbackRule | None) -> np.ndarray:
    from ..theory.integrate import integrate

    if theory is None:
        return np.asarray(integrate(cfg, t_eval=t)["loss"])
    name = "~theory-under-test"
    register_rule(FeedbackRule(name, theory.description, theory.feedback, theory.matrices, theory.direct))
    try:
        ode_cfg = TheoryConfig(**{**cfg.to_dict(), "rule": name, "p_rule": None, "q_rule": None,
                                  "direct": theory.direct, "rank": cfg.rank if theory.uses_rank else None})
        return np.asarray(integrate(ode_cfg, t_eval=t)["loss"])
    finally:
        RULES.pop(name, None)
