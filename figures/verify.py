"""`ldfa verify`: every analytic prediction of the linear theory checked against simulation.

Each check runs the torch simulation engine (`ldfa.sim`) on a deep linear network with
whitened inputs and full-batch gradient descent, so that SGD is Euler's method for the
gradient flow with step η: simulation step k sits at theory time t = k·η/τ with τ = 1.
It compares one measured quantity with the theory function, against a tolerance whose
size is justified in the check's docstring, and draws theory (lines) over simulation
(markers).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..bridge.linear import LinearRun, simulate, theory_matrix
from ..sim.layers import feedback_layers
from ..theory import predictions as pred
from ..theory.config import TheoryConfig
from ..theory.errors import ConfigError
from ..theory.integrate import integrate, integrate_modes
from .style import PALETTE, figure, legend_below, save


@dataclass
class Result:
    """One prediction checked: theory and simulation values, deviation, tolerance, verdict."""

    name: str
    quantity: str
    theory: float
    simulation: float
    deviation: float
    tolerance: float
    passed: bool
    seconds: float = 0.0
    curves: dict = field(default_factory=dict, repr=False)

    def row(self) -> dict:
        out = asdict(self)
        out.pop("curves")
        return out


def relative(theory, simulation) -> float:
    """max |sim - theory| / |theory| over the entries (the deviation of most checks)."""
    theory, simulation = np.atleast_1d(theory), np.atleast_1d(simulation)
    return float(np.max(np.abs(simulation - theory) / np.abs(theory)))


def crossing_times(run: LinearRun, spectrum, frac=0.5) -> np.ndarray:
    return np.array([pred.crossing_time(run.t, run.modes[:, a], frac * s) for a, s in enumerate(spectrum)])


# -- the checks ---------------------------------------------------------------------------

SPECTRUM = (3.0, 2.0, 1.0)
MODE_LABEL = r"mode strength $u_\alpha$"


def _eta(quick):
    return 0.01 if quick else 0.002


def check_saxe(quick=True, learning_time=pred.bp_learning_time) -> Result:
    """docs/theory.md, prediction 1: bp from balanced aligned init a_1 = a_2 = a_0 learns mode α
    at t½ = τ/(2 s_α) ln[(s_α - u_0)/u_0], u_0 = a_0².

    Tolerance 0.5 η s_max relative: gradient descent is Euler's method, which shifts the
    logistic's time-to-half by O(η s) (measured 0.40 η s_max at η = 0.01).
    """
    eta = _eta(quick)
    run = simulate([12, 10, 6], SPECTRUM, "bp", eta=eta, t_end=6.0, init_scale=1e-2)
    u0 = 1e-4
    theory = np.array([learning_time(s, u0) for s in SPECTRUM])
    sim = crossing_times(run, SPECTRUM)
    curves = {"t": run.t, "sim": run.modes, "theory": np.stack(
        [pred.saxe_mode_strength(run.t, s, u0) for s in SPECTRUM], 1), "ylabel": MODE_LABEL}
    return _result("saxe", "t½ per mode (τ)", theory, sim, 0.5 * eta * max(SPECTRUM), curves)


def fa_alignment_quantity():
    """The theory's conserved quantity of 2-layer fa, K = B W_2 + W_2ᵀ Bᵀ - W_1 W_1ᵀ, as found by
    :func:`ldfa.theory.analysis.conserved_quantities` (its name, the sympy expression)."""
    from ..theory.analysis import conserved_quantities
    from ..theory.derive import derive

    ode = derive("fa")
    return next((name, K) for name, K, _ in conserved_quantities(ode) if name.startswith("alignment"))


def _fa_observer(K):
    """observe(model) -> K evaluated on the simulated W_1, W_2 and B (theory orientation)."""
    import sympy as sp

    symbols = sorted(K.free_symbols, key=lambda X: X.name)  # B_2, W_1, W_2
    f = sp.lambdify(symbols, K, "numpy")

    def observe(model):
        W = [layer.weight.detach().numpy() for layer in model.layers]
        values = {"W_1": W[0], "W_2": W[1], "B_2": theory_matrix(model.layers[1], "B")}
        return np.asarray(f(*[values[X.name] for X in symbols]), dtype=float)
    return observe


def check_fa(quick=True, final_loss=0.0, quantity=None) -> Result:
    """docs/theory.md, predictions 2 and 7: full-rank fa learns W* (loss → 0) while
    K = B W_2 + W_2ᵀ Bᵀ - W_1 W_1ᵀ is conserved (``quantity``: the theory's expression, by default
    the one :func:`ldfa.theory.analysis.conserved_quantities` proves conserved).

    Measured: the drift max_t ‖K(t) - K(0)‖_F / ‖W_1 W_1ᵀ‖_F (at the end, its largest), and the
    loss at t = 20τ relative to the initial loss. Tolerances: drift 0.4 η s_max: each Euler step
    changes K by O(η²) (B ΔW_2 terms and ΔW_1 ΔW_1ᵀ), so the drift is O(η) over a fixed time
    (measured 0.27 η s_max at η = 0.01); loss 1e-6: the flow converges exponentially once
    aligned (rate ≥ the smallest s² scale), so by t = 20τ the residual is ~e^{-20}, and
    Euler at η ≤ 0.01 converges to the same fixed point.
    """
    eta = _eta(quick)
    name, K = quantity if quantity is not None else fa_alignment_quantity()
    run = simulate([12, 10, 6], SPECTRUM, "fa", eta=eta, t_end=20.0, init="random", init_scale=1e-2,
                   record_every=10, observe=_fa_observer(K))
    Ks = np.stack(run.extra["observed"])
    W1 = run.model.layers[0].weight.detach().numpy()
    scale = float(np.linalg.norm(W1 @ W1.T))  # W_1 grows from 1e-2 to O(1): its final size is the largest
    drift_curve = np.array([np.linalg.norm(k - Ks[0]) for k in Ks]) / scale
    drift = float(drift_curve.max())
    loss_ratio = float(run.loss[-1] / run.loss[0])
    tol = 0.4 * eta * max(SPECTRUM)
    ok = bool(np.all(np.isfinite(run.loss)) and drift <= tol and abs(loss_ratio - final_loss) <= 1e-6)
    return Result("fa", "conserved K drift; L(20)/L(0)", 0.0, drift, drift, tol, ok,
                  curves={"t": run.t, "sim": drift_curve[:, None], "theory": np.zeros((len(run.t), 1)),
                          "ylabel": r"$\|K(t) - K(0)\| / \|W_1 W_1^\top\|$", "quantity": name,
                          "loss_ratio": loss_ratio})


def check_fixed_p(quick=True, plateau=pred.fixed_feedback_plateau) -> Result:
    """docs/theory.md, prediction 3: ld with fixed random P, Q and r = 2 < rank W* = 3,
    W_1(0) = 0, plateaus at ½‖W*(I - Π)‖², Π the projector onto span(W*ᵀPᵀ).

    Tolerance 1e-8 relative: gradient descent has the same fixed point as the flow, so the
    only error is the distance to convergence at t = 60τ, which is below round-off there
    (measured 0 at η = 0.02); 1e-8 leaves room for another platform's rounding.
    """
    eta = _eta(quick) * 2
    run = simulate([12, 10, 6], SPECTRUM, "ld", eta=eta, t_end=60.0, init="first-zero",
                   init_scale=1e-2, rank=2, p_rule="fixed", q_rule="fixed", record_every=10)
    layer = dict(feedback_layers(run.model))["layers.1"]  # W_2 carries the error to layer 1
    B = theory_matrix(layer, "B")  # the theory's B = Q P (n_1 x d)
    theory = plateau(run.teacher[0].numpy(), B)
    return _result("fixed-p-plateau", "final loss", np.array([theory]), np.array([run.loss[-1]]), 1e-8,
                   {"t": run.t, "sim": run.loss[:, None], "theory": np.full((len(run.t), 1), theory),
                    "ylabel": "loss"})


def check_adapting_p(quick=True, reference=None) -> Result:
    """docs/theory.md, prediction 4: ld with P = top-r(⟨δδᵀ⟩) (svd, refreshed every step) and
    aligned Q, r = rank W*, follows the bp trajectory; theory: the integrated bp matrix ODE from
    the same start (``reference``: that loss curve).

    Measured: max |L_sim(t) - L_bp(t)| / L_bp(0). Tolerance 1.0 η s_max: the Euler error of
    the simulated trajectory itself (measured 0.83 η s_max at η = 0.01; ld simulated vs bp
    simulated: 3e-16 from this aligned start).
    """
    eta = _eta(quick)
    widths, t_end = [12, 10, 6], 6.0
    run = simulate(widths, SPECTRUM, "ld", eta=eta, t_end=t_end, init_scale=1e-2, rank=3,
                   p_rule="svd", q_rule="aligned", svd_refresh=1, svd_momentum=0.0)
    if reference is None:
        cfg = TheoryConfig(rule="bp", n_in=12, hidden=10, n_out=6, spectrum=SPECTRUM, init="aligned",
                           init_scale=1e-2, t_max=t_end, n_points=len(run.t), rtol=1e-9, atol=1e-12)
        reference = integrate(cfg, t_eval=run.t)["loss"]
    dev = float(np.max(np.abs(run.loss - reference)) / reference[0])
    tol = 1.0 * eta * max(SPECTRUM)
    return Result("adapting-p-bp", "max |L_ld - L_bp| / L(0)", 0.0, dev, dev, tol, dev <= tol,
                  curves={"t": run.t, "sim": run.loss[:, None], "theory": np.asarray(reference)[:, None],
                          "ylabel": "loss"})


def check_sequential(quick=True, learning_times=pred.mode_learning_times) -> Result:
    """docs/theory.md, prediction 5: with r = 1 < rank W* = 3 (svd P, aligned Q) the modes are
    learned one after another; theory: the per-mode ODEs with top-r selection.

    Tolerance 0.5 η s_max relative: Euler error as for bp; the switching times inherit it
    (measured 0.33 η s_max at η = 0.01).
    """
    eta = _eta(quick)
    run = simulate([6, 6, 3], SPECTRUM, "ld", eta=eta, t_end=25.0, init_scale=1e-2, rank=1,
                   p_rule="svd", q_rule="aligned", svd_refresh=1, svd_momentum=0.0, record_every=2)
    theory = np.asarray(learning_times(SPECTRUM, 1, init_scale=1e-2))
    sim = crossing_times(run, SPECTRUM)
    return _result("sequential-modes", "t½ per mode (τ), r = 1", theory, sim, 0.5 * eta * max(SPECTRUM),
                   {"t": run.t, "sim": run.modes, "ylabel": MODE_LABEL, "marks": theory,
                    "theory": _mode_curves(run.t, "ld", rank=1, p_rule="svd", q_rule="aligned",
                                           init_scale=1e-2)})


def _mode_curves(t, rule, layers=2, **kw):
    """The per-mode ODEs of the theory at times t (aligned start), one column per mode."""
    k = len(SPECTRUM)
    cfg = TheoryConfig(rule=rule, layers=layers, n_in=k, hidden=k, n_out=k, spectrum=SPECTRUM,
                       init="aligned", t_max=float(t[-1]), n_points=len(t), rtol=1e-8, atol=1e-11, **kw)
    traj = integrate_modes(cfg, t_eval=t)
    return np.stack([traj[f"mode_{a + 1}"] for a in range(k)], 1)


def check_deep(quick=True, learning_time=pred.deep_learning_time) -> Result:
    """docs/theory.md, prediction 6: 3 weight layers, balanced aligned start a_l = a_0:
    τ du/dt = 3u^{4/3}(s - u).

    Tolerance 0.3 η s_max relative (Euler, as for two layers; measured 0.22 η s_max at η = 0.01).
    """
    eta = _eta(quick)
    a0 = 0.1
    run = simulate([10, 8, 8, 6], SPECTRUM, "bp", eta=eta, t_end=12.0, init_scale=a0)
    theory = np.array([learning_time(s, a0**3, 3) for s in SPECTRUM])
    return _result("deep-balanced", "t½ per mode (τ), L = 3", theory, crossing_times(run, SPECTRUM),
                   0.3 * eta * max(SPECTRUM),
                   {"t": run.t, "sim": run.modes, "ylabel": MODE_LABEL, "marks": theory,
                    "theory": _mode_curves(run.t, "bp", layers=3, init_scale=a0)})


def check_lambda(quick=True, learning_time=pred.lambda_balanced_learning_time) -> Result:
    """docs/theory.md, prediction 6: λ-balanced start a_2² - a_1² = λ (here λ = 1, a_1 = 0.05):
    τ du/dt = √(λ² + 4u²)(s - u).

    Tolerance 0.15 η s_max relative (Euler; measured 0.10 η s_max at η = 0.01).
    """
    eta, lam, a1 = _eta(quick), 1.0, 0.05
    a2 = math.sqrt(lam + a1**2)
    run = simulate([12, 10, 6], SPECTRUM, "bp", eta=eta, t_end=6.0, layer_scales=[a1, a2])
    theory = np.array([learning_time(s, a1 * a2, lam) for s in SPECTRUM])
    return _result("lambda-balanced", "t½ per mode (τ), λ = 1", theory, crossing_times(run, SPECTRUM),
                   0.15 * eta * max(SPECTRUM), {"t": run.t, "sim": run.modes, "theory": None,
                                             "ylabel": MODE_LABEL, "marks": theory})


def check_nonlinear_rank(quick=True, classes=10, ranks=(1, 2, 5, 10, 20)) -> Result:
    """Nonlinear guide (docs/theory.md, final section): in an MLP 784-256-256-10 (tanh) on Fashion-MNIST, the
    smallest r in {1, 2, 5, 10, 20} whose accuracy with the paper's method (preset ``ldfa``:
    lowrank P and Q, svd init) is within 1 point of bp.

    Pass criterion, stated before the run: r* <= the number of classes (10). Theory gives
    no equation here; the linear analysis says r of the order of the task dimension suffices.
    quick: 1 epoch on 20000 training images; full: 2 epochs on all 60000.
    """
    from ..sim.train import TrainConfig, train

    base = dict(model="mlp", hidden=(256, 256), epochs=1 if quick else 2,
                model_options={"activation": "tanh"}, train_subset=20000 if quick else None)
    bp_acc = train(TrainConfig(rule="bp", **base), progress=False)["test_acc"]
    ranks, accs = list(ranks), []
    r_star = float("nan")
    for r in ranks:
        accs.append(train(TrainConfig(rule="ldfa", rank=r, **base), progress=False)["test_acc"])
        if accs[-1] >= bp_acc - 0.01:
            r_star = r
            break
    tested = ranks[:len(accs)]
    return Result("nonlinear-rank", "smallest r within 1 pt of bp", float(classes), r_star,
                  r_star - classes, 0.0, bool(r_star <= classes),
                  curves={"t": np.array(tested, float), "sim": np.array(accs)[:, None],
                          "theory": np.full((len(tested), 1), bp_acc), "ylabel": "test accuracy",
                          "xlabel": "feedback rank r"})


def _result(name, quantity, theory, sim, tol, curves, absolute=False) -> Result:
    dev = float(np.max(np.abs(sim - theory))) if absolute else relative(theory, sim)
    ok = bool(np.all(np.isfinite(sim))) and dev <= tol
    return Result(name, quantity, float(np.max(theory)) if theory.size == 1 else float(theory[-1]),
                  float(sim[-1]), dev, tol, ok, curves=curves | {"theory_values": theory, "sim_values": sim})


CHECKS: dict[str, Callable[..., Result]] = {
    "saxe": check_saxe,
    "fa": check_fa,
    "fixed-p-plateau": check_fixed_p,
    "adapting-p-bp": check_adapting_p,
    "sequential-modes": check_sequential,
    "deep-balanced": check_deep,
    "lambda-balanced": check_lambda,
    "nonlinear-rank": check_nonlinear_rank,
}


def plot(result: Result, out_dir) -> list[Path]:
    """Theory as lines, simulation as markers."""
    c = result.curves
    fig, (ax,) = figure(width=3.8, height=2.8)
    t, sim, theory = c["t"], np.asarray(c["sim"]), c.get("theory")
    every = max(1, len(t) // 40)
    colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00"]
    for j in range(sim.shape[1]):
        ax.plot(t[::every], sim[::every, j], "o", ms=3, color=colors[j % 5],
                label="simulation" if j == 0 else None)
        if theory is not None:
            ax.plot(t, np.asarray(theory)[:, j], "-", lw=1, color=colors[j % 5] if sim.shape[1] > 1
                    else PALETTE["bp"], label="theory" if j == 0 else None)
    for j, m in enumerate(np.atleast_1d(c.get("marks", []))):
        ax.axvline(m, color=colors[j % 5], lw=0.8, ls="--", label="theory t½" if j == 0 else None)
    ax.set(xlabel=c.get("xlabel", r"time $t = k\eta/\tau$"), ylabel=c.get("ylabel", ""),
           title=f"{result.name}: {'pass' if result.passed else 'FAIL'} "
                 f"(dev {result.deviation:.2g}, tol {result.tolerance:.2g})")
    if c.get("ylabel") == "loss":
        ax.set_yscale("log")
    handles = ax.get_legend_handles_labels()[0]
    legend_below(fig, handles, ncol=len(handles))  # outside the axes: never over a curve
    return save(fig, out_dir, f"verify_{result.name}")


def run(only=None, quick=False, out="runs/verify", plots=True, progress=print, bar=False) -> list[Result]:
    """Run the checks; write report.json and one overlay plot per check into ``out``.

    ``progress(row)`` gets each result's table row; ``bar``: a tqdm bar naming the check that
    runs and done/total.
    """
    from tqdm.auto import tqdm

    names = list(only or CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown prediction {unknown[0]!r}; allowed: {', '.join(CHECKS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(total=len(names), disable=not bar, unit="check", leave=False) as pbar:
        for name in names:
            pbar.set_description(f"verify {name}")
            t0 = time.perf_counter()
            res = CHECKS[name](quick=quick)
            res.seconds = time.perf_counter() - t0
            results.append(res)
            if plots:
                plot(res, out)
            if progress:
                (tqdm.write if bar else progress)(format_row(res))
            pbar.update(1)
    (out / "report.json").write_text(json.dumps({"quick": quick, "results": [r.row() for r in results]},
                                                indent=1))
    return results


HEADER = f"{'prediction':<18}{'quantity':<28}{'theory':>10}{'simulation':>12}{'deviation':>11}" \
         f"{'tolerance':>11}  verdict"


def format_row(r: Result) -> str:
    return (f"{r.name:<18}{r.quantity:<28}{r.theory:>10.4g}{r.simulation:>12.4g}{r.deviation:>11.2e}"
            f"{r.tolerance:>11.2e}  {'pass' if r.passed else 'FAIL'} ({r.seconds:.1f} s)")


# the two-layer nonlinear teacher-student checks (figures/verify_nonlinear.py)
from .verify_nonlinear import CHECKS as _TEACHER_STUDENT_CHECKS  # noqa: E402

CHECKS.update(_TEACHER_STUDENT_CHECKS)
