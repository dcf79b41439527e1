"""Checks of the two-layer erf teacher-student theory against finite-N online SGD.

The theory (:mod:`ldfa.theory.teacher_student`) is exact as N → ∞; a simulation at finite N
differs from it by fluctuations of order 1/√N (one sample per step, finite-N overlaps) and a
bias of order 1/N. Every tolerance below is therefore measured, not chosen: for S seeds the
seed-mean of d(t) = ε_sim(t) − ε_ode(t) (the ODE integrated from each seed's own initial
overlaps) should be zero within its standard error. With the relative deviation
ρ_s(t) = d_s(t) / ε_ode,s(t) (so that late, small errors count as much as early ones), a
check passes when

    max_t |mean_s ρ(t)|  <=  4 · max_t std_s ρ(t) / √S,

i.e. the mean deviation stays within four standard errors of the per-seed scatter at the
worst time. The ``ts-scaling`` check measures that scatter at two N to show it falls as 1/√N.
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from ..sim import teacher_student as sim
from ..theory import teacher_student as ts

Z_TOL = 4.0  # standard errors allowed for the seed-mean deviation


def _ode_eps(setup, run: sim.SimRun) -> np.ndarray:
    """ε_ode (S, T) integrated from each seed's initial weights."""
    return np.array([ts.integrate_from(setup, i["w"], i["wstar"], i["v"], i["vstar"], i["mats"], run.t).eps
                     for i in run.inits])


def _compare(name, quantity, t, eps_sim, eps_ode, seconds=0.0, extra=None, relative=None) -> Result:
    """Result of a seed-averaged comparison with the measured-fluctuation tolerance.

    The deviation is taken of ``relative`` (S, T) when given, else of eps_sim − eps_ode.
    """
    d = eps_sim - eps_ode if relative is None else relative
    S = len(d)
    dev = float(np.max(np.abs(d.mean(0))))
    tol = float(Z_TOL * np.max(d.std(0, ddof=1)) / np.sqrt(S))
    curves = {"t": t, "sim": eps_sim.mean(0)[:, None], "theory": eps_ode.mean(0)[:, None],
              "ylabel": r"$\epsilon_g$", "xlabel": "time t = steps/N", **(extra or {})}
    return Result(name, quantity, float(eps_ode.mean(0)[-1]), float(eps_sim.mean(0)[-1]), dev, tol,
                  bool(np.all(np.isfinite(eps_sim)) and dev <= tol), seconds, curves)


# -- ODE against simulation, one check per rule -------------------------------------------------

RULES = {  # K = M = 2 hidden units, D = 2 outputs; ld at rank 1 < D
    "bp": dict(rule="bp"),
    "fa": dict(rule="fa"),
    "dfa": dict(rule="dfa"),
    "kp": dict(rule="kp", lam=0.05),
    "ld-fixed": dict(rule="ld", p_rule="fixed", q_rule="fixed", rank=1),
    "ld-oja": dict(rule="ld", p_rule="oja", q_rule="aligned", rank=1),
}


def _sizes(quick):
    return dict(N=500, seeds=range(6), t=np.linspace(0, 15, 16)) if quick else \
        dict(N=1000, seeds=range(10), t=np.linspace(0, 30, 31))


@lru_cache(maxsize=2)
def _rule_runs(quick: bool) -> dict:
    """All rules of RULES in one simulation batch (common random numbers), with their ODEs."""
    sz = _sizes(quick)
    setups = {k: ts.Setup(K=2, M=2, D=2, **kw) for k, kw in RULES.items()}
    t0 = time.perf_counter()
    runs = sim.simulate_many(list(setups.values()), sz["N"], sz["seeds"], sz["t"])
    t_sim = time.perf_counter() - t0
    out = {}
    for (k, s), run in zip(setups.items(), runs):
        t1 = time.perf_counter()
        out[k] = (s, run, run.eps(), _ode_eps(s, run), t_sim / len(setups) + time.perf_counter() - t1)
    return out


def _rule_check(key):
    def check(quick=True) -> Result:
        t0 = time.perf_counter()
        s, run, eps_sim, eps_ode, cost = _rule_runs(quick)[key]
        rel = (eps_sim - eps_ode) / eps_ode
        res = _compare(f"ts-{key}", f"(ε_sim−ε_ode)/ε_ode, N={run.N}, {len(run.inits)} seeds", run.t,
                       eps_sim, eps_ode, relative=rel)
        res.seconds = max(cost, time.perf_counter() - t0)
        return res
    check.__doc__ = (f"The order-parameter ODEs of {key} against online SGD (docs/nonlinear.md, section "
                     f"'What is checked'). Tolerance: the seed mean of (ε_sim − ε_ode)/ε_ode within "
                     f"{Z_TOL} standard errors of its measured seed scatter at the worst time.")
    return check


# -- the 1/√N scaling of the fluctuations -------------------------------------------------------

def check_scaling(quick=True) -> Result:
    """Seed scatter of ε_sim − ε_ode for bp at N and 4N: it should halve (1/√N).

    The scatter is the standard deviation over S seeds, pooled over the T recorded times
    (a seed poses the same problem, v* and v, at every N; only w*, w and the inputs change).
    Its relative error is about 1/√(2 (S − 1) T_eff) with T_eff ≈ T/3 correlated times
    (about 15 % for S = 8, T = 12), so the ratio of two such estimates has about 20 %
    relative error. Tolerance: the ratio within 30 % of √4 = 2 (docs/nonlinear.md, section
    'What is checked').
    """
    t0 = time.perf_counter()
    Ns = (250, 1000) if quick else (500, 2000)
    seeds = range(8) if quick else range(12)
    t = np.linspace(0, 6, 13)
    s = ts.Setup(K=2, M=2, D=2, rule="bp")
    scatter = []
    for N in Ns:
        run = sim.simulate(s, N, seeds, t)
        d = run.eps() - _ode_eps(s, run)
        scatter.append(float(np.sqrt(np.mean(d[:, 1:].var(0, ddof=1)))))
    ratio = scatter[0] / scatter[1]
    expected = float(np.sqrt(Ns[1] / Ns[0]))
    dev = abs(ratio - expected) / expected
    return Result("ts-scaling", f"std(ε_sim−ε_ode) N={Ns[0]} / N={Ns[1]}", expected, ratio, dev, 0.3,
                  bool(dev <= 0.3), time.perf_counter() - t0,
                  {"t": np.array(Ns, float), "sim": np.array(scatter)[:, None],
                   "theory": (scatter[1] * np.sqrt(Ns[1] / np.array(Ns, float)))[:, None],
                   "xlabel": "N", "ylabel": "seed scatter of the deviation"})


# -- the closed-form Gaussian averages ----------------------------------------------------------

def check_integrals(quick=True) -> Result:
    """I2, I3, I4 closed forms against Monte Carlo over u ~ N(0, Ω) for a random Ω (K+M = 4).

    Tolerance: 5 Monte Carlo standard errors of the worst entry (standard error of each
    entry estimated from the same samples); docs/nonlinear.md, section 'What is checked'.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 4))
    O = A @ A.T / 4 + 0.3 * np.eye(4)
    n = 200_000 if quick else 2_000_000
    u = np.linalg.cholesky(O) @ rng.standard_normal((4, n))
    gu, gp = ts.g(u), ts.g_prime(u)
    z = []
    for exact, samples in (
            (ts.i2(O), gu[:, None] * gu[None, :]),
            (ts.i3(O, 4), gp[:, None, None] * u[None, :, None] * gu[None, None, :]),
            (ts.i4(O, 4), gp[:, None, None, None] * gp[None, :, None, None] * gu[None, None, :, None]
             * gu[None, None, None, :])):
        se = samples.std(-1) / np.sqrt(n)
        z.append(np.max(np.abs(samples.mean(-1) - exact) / np.maximum(se, 1e-12)))
    worst = float(max(z))
    return Result("ts-integrals", "max |MC − closed form| / MC s.e.", 0.0, worst, worst, 5.0,
                  bool(worst <= 5.0), time.perf_counter() - t0,
                  {"t": np.array([2.0, 3.0, 4.0]), "sim": np.array(z)[:, None], "theory": np.zeros((3, 1)),
                   "xlabel": "average I_n", "ylabel": "worst |MC − closed form| / s.e."})


# -- Saad & Solla's plateau and its escape --------------------------------------------------------

def plateau_setup(quick):
    """Soft committee machine (v = v* = 1 fixed), K = M = 2 (quick) or 3 (full), T = I, small init."""
    K = 2 if quick else 3
    return ts.Setup(K=K, M=K, D=1, rule="bp", eta=1.0 if quick else 0.5, eta_v=0.0), \
        sim.Init(sigma_w=0.1, vstar="ones", v="ones", teacher="orthonormal")


def symmetric_trajectory(setup, init, t) -> np.ndarray:
    """ε_g(t) on the symmetric invariant set: Q = σ_w² I, R = 0, T = I, v = v* = 1 at t = 0.

    Every student unit stays equal to every other (R_km = ρ(t), Q = q(t) I + c(t)(11ᵀ − I)),
    so this trajectory never escapes: it is the plateau of the N → ∞ theory.
    """
    K = setup.K
    ode = ts.TeacherStudentODE(setup, np.eye(K), np.ones((1, K)))
    st = {"Q": init.sigma_w**2 * np.eye(K), "R": np.zeros((K, K)), "v": np.ones((1, K)), "mats": {}}
    return ode.integrate(st, t).eps


def check_plateau(quick=True) -> Result:
    """bp on the soft committee machine (Saad & Solla): the symmetric plateau and the escape.

    Theory: ε_sym(t) on the symmetric invariant set. Simulation: the median of ε_g over the
    plateau window (t > 5, ε_sym within 20 % of its final value, the seed's own ODE still
    within 2 % of ε_sym). Deviation: |sim median − ε_sym median| over the window. Tolerance:
    4 standard errors of the per-seed medians. Both the simulation and the ODE must escape
    (ε_g < ε_p/10 at the end). docs/nonlinear.md, section 'What is checked'.
    """
    t0 = time.perf_counter()
    setup, init = plateau_setup(quick)
    N, seeds = (500, range(4)) if quick else (1000, range(6))
    t = np.linspace(0, 200, 101) if quick else np.linspace(0, 400, 101)
    eps_sym = symmetric_trajectory(setup, init, t)
    run = sim.simulate(setup, N, seeds, t, init)
    eps_sim, eps_ode = run.eps(), _ode_eps(setup, run)
    plateau = (t > 5) & (eps_sym < 1.2 * eps_sym[-1])
    heights, theory, esc_sim, esc_ode = [], [], [], []
    for s in range(len(eps_sim)):
        window = plateau & (np.abs(eps_ode[s] / eps_sym - 1) < 0.02)
        if window.sum() < 3:
            continue
        heights.append(np.median(eps_sim[s, window]))
        theory.append(np.median(eps_sym[window]))
        esc_sim.append(_escape(t, eps_sim[s], eps_sym[-1]))
        esc_ode.append(_escape(t, eps_ode[s], eps_sym[-1]))
    heights, theory = np.array(heights), np.array(theory)
    dev = float(abs(np.mean(heights - theory))) if len(heights) else np.inf
    tol = float(Z_TOL * heights.std(ddof=1) / np.sqrt(len(heights))) if len(heights) > 1 else 0.0
    eps_p = float(np.median(theory)) if len(theory) else np.nan
    escaped = bool(np.all(eps_sim[:, -1] < eps_p / 10) and np.all(eps_ode[:, -1] < eps_p / 10))
    return Result("ts-plateau", f"plateau ε_g (K=M={setup.K}); escape t sim {np.nanmean(esc_sim):.0f} "
                  f"/ ode {np.nanmean(esc_ode):.0f}", eps_p, float(np.mean(heights)), dev, tol,
                  bool(len(heights) == len(eps_sim) and dev <= tol and escaped), time.perf_counter() - t0,
                  {"t": t, "sim": eps_sim.mean(0)[:, None], "theory": eps_ode.mean(0)[:, None],
                   "ylabel": "loss", "xlabel": "time t = steps/N", "eps_sym": eps_sym,
                   "escape_sim": np.array(esc_sim), "escape_ode": np.array(esc_ode)})


def _escape(t, eps, eps_p) -> float:
    """First time after reaching the plateau (ε_g within 20 % of ε_p) that ε_g falls below ε_p / 2."""
    on = np.nonzero(eps < 1.2 * eps_p)[0]
    if not len(on):
        return np.nan
    below = np.nonzero((eps < eps_p / 2) & (np.arange(len(t)) > on[0]))[0]
    return float(t[below[0]]) if len(below) else np.nan


# -- feedback alignment: align, then memorise -----------------------------------------------------

def check_fa_alignment(quick=True) -> Result:
    """fa: the overlap cos∠(vᵀ, B) rises before ε_g falls (Refinetti et al.'s alignment phase).

    Measured in theory and simulation: t_align = first time the overlap reaches half its final
    value, t_learn = first time ε_g has fallen half way to its final value; the check passes
    when t_align < t_learn in both, and the simulated overlap curve stays within the
    measured-fluctuation tolerance of the theory (4 standard errors, as for ε_g). Pass criterion
    and tolerance as stated; docs/nonlinear.md, section 'What is checked'.
    """
    t0 = time.perf_counter()
    s = ts.Setup(K=2, M=2, D=1, rule="fa", eta_v=1.0)
    init = sim.Init(sigma_w=0.5, sigma_v=0.01)
    N, seeds = (500, range(6)) if quick else (1000, range(10))
    t = np.linspace(0, 20, 41) if quick else np.linspace(0, 40, 81)
    run = sim.simulate(s, N, seeds, t, init)
    al_sim = np.array([[_cos(run.v[k, i].T, run.mats["B"][k, i]) for i in range(len(t))]
                       for k in range(len(seeds))])
    al_ode, eps_ode = [], []
    for i in run.inits:
        sol = ts.integrate_from(s, i["w"], i["wstar"], i["v"], i["vstar"], i["mats"], t)
        al_ode.append(sol.feedback_alignment())
        eps_ode.append(sol.eps)
    al_ode, eps_ode = np.array(al_ode), np.array(eps_ode)
    eps_sim = run.eps()

    def first(curve, level, falling=False):
        idx = np.nonzero(curve <= level if falling else curve >= level)[0]
        return float(t[idx[0]]) if len(idx) else np.inf

    def times(al, eps):
        a, e = al.mean(0), eps.mean(0)
        return first(a, 0.5 * a[-1]), first(e, e[-1] + 0.5 * (e[0] - e[-1]), falling=True)

    (ta_o, tl_o), (ta_s, tl_s) = times(al_ode, eps_ode), times(al_sim, eps_sim)
    res = _compare("ts-fa-align", f"cos∠(vᵀ,B); t_align/t_learn ode {ta_o:.1f}/{tl_o:.1f}, "
                   f"sim {ta_s:.1f}/{tl_s:.1f}", t, al_sim, al_ode,
                   extra={"ylabel": r"cos$\angle(v^\top, B)$"})
    res.passed = bool(res.passed and ta_o < tl_o and ta_s < tl_s)
    res.seconds = time.perf_counter() - t0
    return res


def _cos(a, b) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


CHECKS = {
    "ts-integrals": check_integrals,
    **{f"ts-{k}": _rule_check(k) for k in RULES},
    "ts-scaling": check_scaling,
    "ts-plateau": check_plateau,
    "ts-fa-align": check_fa_alignment,
}

# Imported last, so that figures/verify.py may merge CHECKS at its own end whichever of the two
# modules is imported first (Result is looked up when a check runs).
from .verify import Result  # noqa: E402
