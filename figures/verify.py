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
import torch
import torch.nn.functional as F

from ..sim import data as datasets
from ..sim import models
from ..sim.layers import convert, feedback_layers
from ..theory import predictions as pred
from ..theory.config import TheoryConfig
from ..theory.errors import ConfigError
from ..theory.integrate import integrate, integrate_modes
from .style import PALETTE, figure, save


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


# -- the simulation: a deep linear net trained by full-batch gradient descent ------------

@dataclass
class LinearRun:
    t: np.ndarray
    loss: np.ndarray
    modes: np.ndarray  # steps x k
    model: torch.nn.Module
    teacher: tuple


def simulate(widths, spectrum, rule="bp", eta=0.005, t_end=10.0, init="aligned", init_scale=1e-2,
             layer_scales=None, seed=0, record_every=1, **rule_kw) -> LinearRun:
    """Train DeepLinear(widths) on the whitened linear teacher with full-batch GD (float64).

    init ``aligned``: W_l = a_l R_l R_{l-1}ᵀ in the teacher's modes (R_0 = V, R_L = U), with
    a_l = init_scale or ``layer_scales[l]``; ``random``: N(0, init_scale²/n_in) entries;
    ``first-zero``: random with W_1 = 0. Loss ½ mean ‖y - ŷ‖², so the gradient is -F E.
    """
    n_in, d = widths[0], widths[-1]
    k = len(spectrum)
    data, (Wstar, U, V) = datasets.linear_teacher(n_in, d, spectrum, n_samples=max(4 * n_in, 64),
                                                  seed=seed, whiten=True)
    x = data.x.double()
    x = torch.linalg.qr(x)[0] * math.sqrt(len(x))  # re-whiten exactly in float64
    y = x @ Wstar.T
    torch.manual_seed(seed)
    model = models.DeepLinear(widths, init_scale=init_scale if init != "aligned" else None).double()
    with torch.no_grad():
        if init == "aligned":
            gen = torch.Generator().manual_seed(seed + 1)
            bases = [V] + [torch.linalg.qr(torch.randn(w, k, generator=gen, dtype=torch.float64))[0]
                           for w in widths[1:-1]] + [U]
            for l, layer in enumerate(model.layers):
                a = (layer_scales or [init_scale] * len(model.layers))[l]
                layer.weight.copy_(a * bases[l + 1] @ bases[l].T)
        elif init == "first-zero":
            model.layers[0].weight.zero_()
    convert(model, rule, seed=seed, **rule_kw)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    return gradient_descent(model, opt, x, y, eta, t_end, record_every, (Wstar, U, V))


def gradient_descent(model, opt, x, y, eta, t_end, record_every, teacher) -> LinearRun:
    """Full-batch GD on ½ mean ‖y - ŷ‖² until t = t_end (step k at t = kη), recording the loss
    and the teacher's mode strengths u_αᵀ W_L⋯W_1 v_α every ``record_every`` steps."""
    _, U, V = teacher
    steps = int(round(t_end / eta))
    ts, losses, modes = [], [], []
    for step in range(steps + 1):
        out = model(x)
        loss = 0.5 * F.mse_loss(out, y, reduction="sum") / len(x)
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                Wtot = torch.eye(x.shape[1], dtype=x.dtype)
                for layer in model.layers:
                    Wtot = layer.weight @ Wtot
                ts.append(step * eta)
                losses.append(loss.item())
                modes.append([float(U[:, a] @ Wtot @ V[:, a]) for a in range(U.shape[1])])
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return LinearRun(np.array(ts), np.array(losses), np.array(modes), model, teacher)


def crossing_times(run: LinearRun, spectrum, frac=0.5) -> np.ndarray:
    return np.array([pred.crossing_time(run.t, run.modes[:, a], frac * s) for a, s in enumerate(spectrum)])


# -- the checks ---------------------------------------------------------------------------

SPECTRUM = (3.0, 2.0, 1.0)
MODE_LABEL = r"mode strength $u_\alpha$"


def _eta(quick):
    return 0.01 if quick else 0.002


def check_saxe(quick=True, learning_time=pred.bp_learning_time) -> Result:
    """SPEC 3.1: bp from balanced aligned init a_1 = a_2 = a_0 learns mode α at
    t½ = τ/(2 s_α) ln[(s_α - u_0)/u_0], u_0 = a_0².

    Tolerance η s_max relative: gradient descent is Euler's method, which shifts the
    logistic's time-to-half by O(η s) (measured 0.4 η s_max at η = 0.01 and 0.002).
    """
    eta = _eta(quick)
    run = simulate([12, 10, 6], SPECTRUM, "bp", eta=eta, t_end=6.0, init_scale=1e-2)
    u0 = 1e-4
    theory = np.array([learning_time(s, u0) for s in SPECTRUM])
    sim = crossing_times(run, SPECTRUM)
    curves = {"t": run.t, "sim": run.modes, "theory": np.stack(
        [pred.saxe_mode_strength(run.t, s, u0) for s in SPECTRUM], 1), "ylabel": MODE_LABEL}
    return _result("saxe", "t½ per mode (τ)", theory, sim, eta * max(SPECTRUM), curves)


def check_fa(quick=True, final_loss=0.0) -> Result:
    """SPEC 3.2 and 3.7: full-rank fa learns W* (loss → 0) while B W_2 + W_2ᵀ Bᵀ - W_1 W_1ᵀ
    is conserved.

    Measured: the loss at t = 20τ, relative to the initial loss. Tolerance 1e-6: the flow
    converges exponentially once aligned (rate ≥ the smallest s² scale), so by t = 20τ the
    residual is ~e^{-20}; Euler at η ≤ 0.01 converges to the same fixed point.
    The conservation is reported in the curves (its relative drift is O(η)).
    """
    eta = _eta(quick)
    run = simulate([12, 10, 6], SPECTRUM, "fa", eta=eta, t_end=20.0, init="random", init_scale=1e-2)
    return _result("fa", "final loss / initial loss", np.array([final_loss]),
                   np.array([run.loss[-1] / run.loss[0]]), 1e-6,
                   {"t": run.t, "sim": run.loss[:, None], "theory": None, "ylabel": "loss"},
                   absolute=True)


def check_fixed_p(quick=True, plateau=pred.fixed_feedback_plateau) -> Result:
    """SPEC 3.3: ld with fixed random P, Q and r = 2 < rank W* = 3, W_1(0) = 0, plateaus at
    ½‖W*(I - Π)‖², Π the projector onto span(W*ᵀPᵀ).

    Tolerance 1e-4 relative: gradient descent has the same fixed point as the flow, so the
    only error is the distance to convergence at t = 60τ (the slowest rate here is O(0.1/τ)).
    """
    eta = _eta(quick) * 2
    run = simulate([12, 10, 6], SPECTRUM, "ld", eta=eta, t_end=60.0, init="first-zero",
                   init_scale=1e-2, rank=2, p_rule="fixed", q_rule="fixed", record_every=10)
    layer = dict(feedback_layers(run.model))["layers.1"]  # W_2 carries the error to layer 1
    B = (layer.P.T @ layer.Q).detach().numpy().T  # B_w = Pᵀ Q_w; SPEC's B = B_wᵀ (n_1 x d)
    theory = plateau(run.teacher[0].numpy(), B)
    return _result("fixed-p-plateau", "final loss", np.array([theory]), np.array([run.loss[-1]]), 1e-4,
                   {"t": run.t, "sim": run.loss[:, None], "theory": np.full((len(run.t), 1), theory),
                    "ylabel": "loss"})


def check_adapting_p(quick=True, reference=None) -> Result:
    """SPEC 3.4: ld with P = top-r(⟨δδᵀ⟩) (svd, refreshed every step) and aligned Q, r = rank W*,
    follows the bp trajectory; theory: the integrated bp matrix ODE from the same start.

    Measured: max |L_sim(t) - L_bp(t)| / L_bp(0). Tolerance 1.5 η s_max: the Euler error of
    the simulated trajectory itself (bp simulated vs its ODE: 0.83 η s_max at η = 0.01 and
    0.002; ld simulated vs bp simulated: 3e-16 from this aligned start).
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
    tol = 1.5 * eta * max(SPECTRUM)
    return Result("adapting-p-bp", "max |L_ld - L_bp| / L(0)", 0.0, dev, dev, tol, dev <= tol,
                  curves={"t": run.t, "sim": run.loss[:, None], "theory": np.asarray(reference)[:, None],
                          "ylabel": "loss"})


def check_sequential(quick=True, learning_times=pred.mode_learning_times) -> Result:
    """SPEC 3.5: with r = 1 < rank W* = 3 (svd P, aligned Q) the modes are learned one after
    another; theory: the per-mode ODEs with top-r selection.

    Tolerance η s_max relative: Euler error as for bp; the switching times inherit it
    (measured 0.33 η s_max at η = 0.01).
    """
    eta = _eta(quick)
    run = simulate([6, 6, 3], SPECTRUM, "ld", eta=eta, t_end=25.0, init_scale=1e-2, rank=1,
                   p_rule="svd", q_rule="aligned", svd_refresh=1, svd_momentum=0.0, record_every=2)
    theory = np.asarray(learning_times(SPECTRUM, 1, init_scale=1e-2))
    sim = crossing_times(run, SPECTRUM)
    return _result("sequential-modes", "t½ per mode (τ), r = 1", theory, sim, eta * max(SPECTRUM),
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
    """SPEC 3.6: 3 weight layers, balanced aligned start a_l = a_0: τ du/dt = 3u^{4/3}(s - u).

    Tolerance η s_max relative (Euler, as for two layers; measured 0.22 η s_max).
    """
    eta = _eta(quick)
    a0 = 0.1
    run = simulate([10, 8, 8, 6], SPECTRUM, "bp", eta=eta, t_end=12.0, init_scale=a0)
    theory = np.array([learning_time(s, a0**3, 3) for s in SPECTRUM])
    return _result("deep-balanced", "t½ per mode (τ), L = 3", theory, crossing_times(run, SPECTRUM),
                   eta * max(SPECTRUM), {"t": run.t, "sim": run.modes, "ylabel": MODE_LABEL, "marks": theory,
                                         "theory": _mode_curves(run.t, "bp", layers=3, init_scale=a0)})


def check_lambda(quick=True, learning_time=pred.lambda_balanced_learning_time) -> Result:
    """SPEC 3.6: λ-balanced start a_2² - a_1² = λ (here λ = 1, a_1 = 0.05):
    τ du/dt = √(λ² + 4u²)(s - u).

    Tolerance η s_max relative (Euler; measured 0.1 η s_max).
    """
    eta, lam, a1 = _eta(quick), 1.0, 0.05
    a2 = math.sqrt(lam + a1**2)
    run = simulate([12, 10, 6], SPECTRUM, "bp", eta=eta, t_end=6.0, layer_scales=[a1, a2])
    theory = np.array([learning_time(s, a1 * a2, lam) for s in SPECTRUM])
    return _result("lambda-balanced", "t½ per mode (τ), λ = 1", theory, crossing_times(run, SPECTRUM),
                   eta * max(SPECTRUM), {"t": run.t, "sim": run.modes, "theory": None,
                                             "ylabel": MODE_LABEL, "marks": theory})


def check_nonlinear_rank(quick=True, classes=10) -> Result:
    """Nonlinear guide (SPEC 4): in an MLP 784-256-256-10 (tanh) on Fashion-MNIST, the
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
    ranks, accs = [1, 2, 5, 10, 20], []
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
    ax.legend()
    return save(fig, out_dir, f"verify_{result.name}")


def run(only=None, quick=False, out="runs/verify", plots=True, progress=print) -> list[Result]:
    """Run the checks; write report.json and one overlay plot per check into ``out``."""
    names = list(only or CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown prediction {unknown[0]!r}; allowed: {', '.join(CHECKS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        t0 = time.perf_counter()
        res = CHECKS[name](quick=quick)
        res.seconds = time.perf_counter() - t0
        results.append(res)
        if plots:
            plot(res, out)
        if progress:
            progress(format_row(res))
    (out / "report.json").write_text(json.dumps({"quick": quick, "results": [r.row() for r in results]},
                                                indent=1))
    return results


HEADER = f"{'prediction':<18}{'quantity':<28}{'theory':>10}{'simulation':>12}{'deviation':>11}" \
         f"{'tolerance':>11}  verdict"


def format_row(r: Result) -> str:
    return (f"{r.name:<18}{r.quantity:<28}{r.theory:>10.4g}{r.simulation:>12.4g}{r.deviation:>11.2e}"
            f"{r.tolerance:>11.2e}  {'pass' if r.passed else 'FAIL'} ({r.seconds:.1f} s)")


def simulate_config(cfg: TheoryConfig, eta: float, record_every: int = 1) -> LinearRun:
    """Simulate exactly the theory configuration ``cfg`` (2 layers): same teacher, same
    initial W_1, W_2 and feedback matrices, full-batch GD with step η in float64.

    SPEC orientation → weight orientation: B_w = Bᵀ, P_w = P, Q_w = Qᵀ.
    """
    from ..theory.integrate import MatrixSystem

    if cfg.layers != 2 or cfg.direct:
        raise ConfigError("simulate_config covers 2-layer layerwise configurations")
    system = MatrixSystem(cfg)
    y0, fixed = system.initial()
    mats = dict(zip([X.name for X in system.state], system.unpack(y0)))
    mats.update({X.name: M for X, M in zip(system.fixed, fixed)})
    Wstar, U, V = (torch.as_tensor(a) for a in (system.Wstar, system.U, system.V))
    n = max(4 * cfg.n_in, 64)
    x = torch.linalg.qr(torch.randn(n, cfg.n_in, generator=torch.Generator().manual_seed(cfg.seed),
                                    dtype=torch.float64))[0] * math.sqrt(n)
    y = x @ Wstar.T
    model = models.DeepLinear([cfg.n_in, cfg.hidden, cfg.n_out]).double()
    extra = dict(svd_refresh=1, svd_momentum=0.0) if cfg.p_rule == "svd" else {}
    convert(model, cfg.rule, rank=cfg.rank, p_rule=cfg.p_rule, q_rule=cfg.q_rule, **extra)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.as_tensor(mats["W_1"]))
        model.layers[1].weight.copy_(torch.as_tensor(mats["W_2"]))
        top = model.layers[1]
        for name, value in (("B", mats.get("B_2")), ("P", mats.get("P_2")), ("Q", mats.get("Q_2"))):
            if value is not None and getattr(top, name, None) is not None:
                value = torch.as_tensor(value)
                getattr(top, name).copy_(value if name == "P" else value.T)
    groups = [{"params": [p for n_, p in model.named_parameters() if n_.endswith("weight")], "lr": eta}]
    fb = [p for n_, p in model.named_parameters() if not n_.endswith("weight")]
    if fb:
        scale = {"P": cfg.tau / cfg.tau_p, "Q": cfg.tau / cfg.tau_q, "B": cfg.tau / cfg.tau_b}
        for n_, p in model.named_parameters():
            if not n_.endswith("weight"):
                groups.append({"params": [p], "lr": eta * scale[n_.rsplit(".", 1)[-1]]})
    opt = torch.optim.SGD(groups, lr=eta)
    return gradient_descent(model, opt, x, y, eta, cfg.t_end, record_every, (Wstar, U, V))
