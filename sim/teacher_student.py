"""Finite-N online SGD of the two-layer erf teacher-student network under a feedback rule.

One fresh Gaussian input per step, several seeds at once (numpy, float64). For seed s:

    λ = w x/√N,  ν = w* x/√N,  e = v* g(ν) − v g(λ),  δ = g'(λ) ⊙ (F e),
    w ← w + (η/√N) δ xᵀ − (ηλ_wd/N) w,     v ← v + (η_v/N)(e g(λ)ᵀ − λ_wd v),

with g(u) = erf(u/√2) and F the rule's feedback matrix, built here sample by sample:
bp F = vᵀ; fa/dfa F = B fixed; kp F = B with ΔB = (η_B/N)(g(λ) eᵀ − λ_wd B);
ld F = Q P with P fixed or following Oja's rule ΔP = (η_P/N)(z eᵀ − z zᵀ P), z = P e,
and Q fixed, aligned (Q = vᵀ Pᵀ) or Kolen-Pollack ΔQ = (η_Q/N)(g(λ) eᵀ Pᵀ − λ_wd Q).
Time is t = steps/N. These per-sample updates are written independently of the theory's
registry mapping (:mod:`ldfa.theory.teacher_student`), which they are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from ..theory.errors import ConfigError
from ..theory.teacher_student import Setup, overlaps

SUPPORTED_P = ("fixed", "oja")
SUPPORTED_Q = ("fixed", "aligned", "kp")


def _g(u):
    return erf(u / np.sqrt(2.0))


def _g_prime(u):
    return np.sqrt(2.0 / np.pi) * np.exp(-u * u / 2)


@dataclass(frozen=True)
class Init:
    """How a seed's weights are drawn.

    w* ~ N(0, 1); w ~ N(0, sigma_w²); v* and v either all ones ("ones") or N(0, 1) and
    N(0, sigma_v²) ("gaussian"); fixed feedback B ~ N(0, 1); fixed P ~ N(0, 1/D), fixed
    Q ~ N(0, 1/r); Oja's P starts with random orthonormal rows. teacher="orthonormal" makes
    the rows of w* orthogonal with norm √N, so that T = I exactly.
    """

    sigma_w: float = 0.5
    sigma_v: float = 0.5
    vstar: str = "gaussian"
    v: str = "gaussian"
    teacher: str = "gaussian"

    def __post_init__(self):
        if self.teacher not in ("gaussian", "orthonormal"):
            raise ConfigError(f"teacher={self.teacher!r}; allowed: gaussian, orthonormal")
        for key in ("vstar", "v"):
            if getattr(self, key) not in ("gaussian", "ones"):
                raise ConfigError(f"{key}={getattr(self, key)!r}; allowed: gaussian, ones")


def rule_matrix_names(setup: Setup) -> list:
    """The rule matrices the simulation keeps for ``setup`` (registry names)."""
    if setup.rule == "bp":
        return []
    if setup.rule in ("fa", "kp"):
        return ["B"]
    if setup.rule == "dfa":
        return ["D"]
    if setup.rule == "ld":
        if setup.p_rule not in SUPPORTED_P or setup.q_rule not in SUPPORTED_Q:
            raise ConfigError(f"p_rule {setup.p_rule!r} / q_rule {setup.q_rule!r}: the teacher-student "
                              f"simulation supports p_rule {', '.join(SUPPORTED_P)} and q_rule "
                              f"{', '.join(SUPPORTED_Q)}")
        return ["P"] if setup.q_rule == "aligned" else ["P", "Q"]
    raise ConfigError(f"rule {setup.rule!r}: the teacher-student simulation supports bp, fa, dfa, kp, ld")


def initial_weights(setup: Setup, N: int, seed: int, init: Init = Init()) -> dict:
    """One seed's starting weights: w, wstar (N columns), v, vstar and the rule's matrices."""
    rng = np.random.default_rng([seed, 0])
    K, M, D = setup.K, setup.M, setup.D
    # the N-independent draws first, so a seed poses the same problem at every N
    vstar = np.ones((D, M)) if init.vstar == "ones" else rng.standard_normal((D, M))
    v = np.ones((D, K)) if init.v == "ones" else init.sigma_v * rng.standard_normal((D, K))
    mats = {}
    for name in rule_matrix_names(setup):
        if name in ("B", "D"):
            mats[name] = rng.standard_normal((K, D))
        elif name == "P" and setup.p_rule == "oja":
            mats["P"] = np.linalg.qr(rng.standard_normal((D, setup.rank)))[0].T
        elif name == "P":
            mats["P"] = rng.standard_normal((setup.rank, D)) / np.sqrt(D)
        else:
            mats["Q"] = rng.standard_normal((K, setup.rank)) / np.sqrt(setup.rank)
    rng = np.random.default_rng([seed, 2])  # first-layer weights: their own stream
    wstar = rng.standard_normal((M, N))
    if init.teacher == "orthonormal":
        wstar = np.linalg.qr(wstar.T)[0].T * np.sqrt(N)
    w = init.sigma_w * rng.standard_normal((K, N))
    return {"w": w, "wstar": wstar, "v": v, "vstar": vstar, "mats": mats}


@dataclass
class SimRun:
    """Recorded order parameters, one row per seed: Q (S, T, K, K), R (S, T, K, M), v, mats."""

    t: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    T: np.ndarray  # (S, M, M)
    v: np.ndarray
    vstar: np.ndarray  # (S, D, M)
    mats: dict
    inits: list = field(repr=False)
    N: int = 0

    def eps(self) -> np.ndarray:
        """ε_g (S, T) of the simulated networks, from their own order parameters."""
        from ..theory.teacher_student import generalisation_error
        S, n = self.Q.shape[:2]
        return np.array([[generalisation_error(self.Q[s, i], self.R[s, i], self.T[s], self.v[s, i],
                                               self.vstar[s]) for i in range(n)] for s in range(S)])


def _padded(setup: Setup, mats: dict, v: np.ndarray):
    """(P, Q, oja, aligned, kp) in the common form F = Q P with P (D x D), Q (K x D).

    bp: Q = vᵀ Pᵀ, P = I; fa/dfa: Q = B, P = I; kp: Q = B following Kolen-Pollack, P = I;
    ld with rank r: P's last D − r rows and Q's last D − r columns are zero (they stay zero
    under every supported update).
    """
    K, D = setup.K, setup.D
    P, Q = np.eye(D), np.zeros((K, D))
    if setup.rule in ("fa", "kp"):
        Q = mats["B"].copy()
    elif setup.rule == "dfa":
        Q = mats["D"].copy()
    elif setup.rule == "ld":
        r = setup.rank
        P = np.zeros((D, D))
        P[:r] = mats["P"]
        if setup.q_rule != "aligned":
            Q[:, :r] = mats["Q"]
    aligned = setup.rule == "bp" or (setup.rule == "ld" and setup.q_rule == "aligned")
    kp = setup.rule == "kp" or (setup.rule == "ld" and setup.q_rule == "kp")
    oja = setup.rule == "ld" and setup.p_rule == "oja"
    return P, Q, oja, aligned, kp


def simulate(setup: Setup, N: int, seeds, t_record, init: Init = Init(), chunk: int = 256) -> SimRun:
    """Run online SGD for every seed in ``seeds``; record the order parameters at ``t_record``."""
    return simulate_many([setup], N, seeds, t_record, init, chunk)[0]


def simulate_many(setups, N: int, seeds, t_record, init: Init = Init(), chunk: int = 256) -> list:
    """:func:`simulate` for several setups (same K, M, D) in one batch; one :class:`SimRun` each.

    Seed s draws the same teacher, student and inputs under every setup (its rule matrices
    come after), so the rules are compared on common random numbers.
    """
    if not isinstance(N, (int, np.integer)) or N < 2:
        raise ConfigError(f"N={N!r}: an integer input dimension >= 2 is required")
    seeds = list(seeds)
    t_record = np.asarray(t_record, float)
    if len(seeds) == 0 or t_record.ndim != 1 or np.any(np.diff(t_record) < 0) or t_record[0] < 0:
        raise ConfigError("seeds must be non-empty and t_record a non-decreasing list of times >= 0")
    sizes = {(s.K, s.M, s.D) for s in setups}
    if len(sizes) != 1:
        raise ConfigError(f"simulate_many: all setups need the same (K, M, D); got {sorted(sizes)}")
    members = [(i, s, seed) for i, s in enumerate(setups) for seed in seeds]
    inits = [initial_weights(s, N, seed, init) for _, s, seed in members]
    names = [rule_matrix_names(s) for _, s, _ in members]
    stack = lambda key: np.stack([i[key] for i in inits])  # noqa: E731
    w, wstar, v, vstar = stack("w"), stack("wstar"), stack("v"), stack("vstar")
    padded = [_padded(s, i["mats"], i["v"]) for (_, s, _), i in zip(members, inits)]
    P = np.stack([p[0] for p in padded])
    Qf = np.stack([p[1] for p in padded])
    col = lambda vals: np.array(vals, float)[:, None, None]  # noqa: E731
    oja, aligned, kp = (col([p[j] for p in padded]) for j in (2, 3, 4))
    eta, eta_v = col([s.eta for _, s, _ in members]), col([s.eta_v for _, s, _ in members])
    eta_fb, lam = col([s.fb_rate for _, s, _ in members]), col([s.lam for _, s, _ in members])
    seed_index = np.array([seeds.index(seed) for _, _, seed in members])
    rngs = [np.random.default_rng([s, 1]) for s in seeds]
    sqN = np.sqrt(N)
    rec_steps = np.round(t_record * N).astype(int)
    n_steps = int(rec_steps[-1])
    rec = {"Q": [], "R": [], "v": [], "P": [], "Qf": []}
    any_decay, any_kp, any_oja = bool(lam.any()), bool(kp.any()), bool(oja.any())
    all_aligned, none_aligned = bool(aligned.all()), not aligned.any()

    def record():
        Q, R, _ = overlaps_batch(w, wstar)
        for key, val in (("Q", Q), ("R", R), ("v", v), ("P", P), ("Qf", Qf)):
            rec[key].append(val.copy())

    rec_i = 0
    while rec_i < len(rec_steps) and rec_steps[rec_i] == 0:
        record()
        rec_i += 1
    step = 0
    while step < n_steps:
        m = min(chunk, n_steps - step)
        X = np.stack([r.standard_normal((m, N)) for r in rngs])[seed_index]  # (S, m, N)
        ystar = vstar @ _g(wstar @ np.swapaxes(X, 1, 2) / sqN)  # (S, D, m)
        for j in range(m):
            x = X[:, j, :]
            lam_ = (w @ x[:, :, None])[..., 0] / sqN  # (S, K)
            gl = _g(lam_)
            e = ystar[:, :, j] - (v @ gl[:, :, None])[..., 0]  # (S, D)
            Pt = np.swapaxes(P, 1, 2)
            Q_now = Qf if none_aligned else np.swapaxes(v, 1, 2) @ Pt if all_aligned else \
                np.where(aligned > 0, np.swapaxes(v, 1, 2) @ Pt, Qf)
            z = P @ e[:, :, None]  # (S, D, 1)
            delta = _g_prime(lam_) * (Q_now @ z)[..., 0]  # (S, K): g'(λ) ⊙ Q P e
            if any_decay:
                w *= 1 - eta * lam / N
            w += (eta / sqN) * delta[:, :, None] * x[:, None, :]
            ge = gl[:, :, None] * e[:, None, :]  # (S, K, D) = g(λ) eᵀ
            if any_kp:
                Qf += kp * (eta_fb / N) * (ge @ Pt - lam * Qf)
            if any_oja:
                P += oja * (eta_fb / N) * (z * e[:, None, :] - z @ (np.swapaxes(z, 1, 2) @ P))
            v += (eta_v / N) * (np.swapaxes(ge, 1, 2) - lam * v)
            step += 1
            while rec_i < len(rec_steps) and rec_steps[rec_i] == step:
                record()
                rec_i += 1
    T = np.stack([overlaps(i["wstar"], i["wstar"])[0] for i in inits])
    arr = {k: np.stack(val, axis=1) for k, val in rec.items()}  # (S, T, ...)
    runs = []
    for i, s in enumerate(setups):
        idx = [j for j, (k, _, _) in enumerate(members) if k == i]
        mats = {}
        for n in names[idx[0]]:
            if n in ("B", "D"):
                mats[n] = arr["Qf"][idx]
            elif n == "P":
                mats[n] = arr["P"][idx][:, :, :s.rank]
            else:
                mats[n] = arr["Qf"][idx][:, :, :, :s.rank]
        runs.append(SimRun(t_record, arr["Q"][idx], arr["R"][idx], T[idx], arr["v"][idx], vstar[idx],
                           mats, [inits[j] for j in idx], N))
    return runs


def overlaps_batch(w, wstar):
    """(Q, R, T) for a batch of seeds: w (S, K, N), wstar (S, M, N)."""
    N = w.shape[-1]
    wt = np.swapaxes(w, 1, 2)
    return w @ wt / N, w @ np.swapaxes(wstar, 1, 2) / N, wstar @ np.swapaxes(wstar, 1, 2) / N
