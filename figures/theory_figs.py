"""Figures of the linear theory, with the torch simulation overlaid where it applies.

Every integration and simulation is a cached job (figures/runner.py runs them in parallel);
the figures draw from plain numbers (``draw_*``), also written as JSON.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D

from ..bridge.linear import simulate, simulate_config
from ..theory.config import TheoryConfig
from ..theory.integrate import integrate
from ..theory.predictions import bp_learning_time, fixed_feedback_plateau, mode_learning_times
from .runner import Job
from .store import Store
from .style import PALETTE, figure, legend_below, legend_right, save
from .verify import crossing_times

SPECTRUM = (5.0, 4.0, 3.0, 2.0, 1.0)
SIZES = {"quick": 40, "full": 100, "tiny": 12}
ETAS = {"quick": 0.01, "full": 0.002, "tiny": 0.05}
LABELS = {"bp": "bp", "fa": "fa", "ld-fixed": "ld, fixed P, Q (r = 3)",
          "ld-adapting": "ld, svd P, aligned Q (r = 3)"}
MODE_RULES = ("bp", "ld-adapting", "ld-fixed")  # drawn in the mode panel


def _configs(preset: str) -> dict[str, TheoryConfig]:
    n = SIZES[preset]
    base = dict(n_in=n, hidden=n, n_out=10, spectrum=SPECTRUM, init_scale=1e-3, t_max=20.0,
                n_points=401, rtol=1e-7, atol=1e-10)
    return {
        "bp": TheoryConfig(rule="bp", **base),
        "fa": TheoryConfig(rule="fa", **base),
        "ld-fixed": TheoryConfig(rule="ld", p_rule="fixed", q_rule="fixed", rank=3, init="first-zero",
                                 **base),
        "ld-adapting": TheoryConfig(rule="ld", p_rule="svd", q_rule="aligned", rank=3, **base),
    }


def _ode_job(name: str, cfg: TheoryConfig) -> Job:
    return Job("theory-ode", {"config": cfg.to_dict()}, _ode, label=f"ODE {name}",
               cost=8.0 if cfg.rule == "ld" else 1.0, fields=("t", "loss", "modes"))


def _ode(config: dict, store: Store) -> dict:
    """The matrix ODEs of the configuration: t, loss, mode strengths; for fixed P, Q also the
    predicted plateau loss of the final feedback Q_2 P_2."""
    tr = integrate(TheoryConfig(**config["config"]))
    k = len(config["config"]["spectrum"])
    out = {"t": tr.t.tolist(), "loss": tr["loss"].tolist(),
           "modes": np.stack([tr[f"mode_{a + 1}"] for a in range(k)], axis=1).tolist()}
    if config["config"].get("p_rule") == "fixed":
        out["plateau"] = float(fixed_feedback_plateau(tr.teacher[0], tr.final["Q_2"] @ tr.final["P_2"]))
    return out


def _sim_job(name: str, cfg: TheoryConfig, eta: float) -> Job:
    return Job("linear-sim", {"config": cfg.to_dict(), "eta": eta}, _linear_sim, label=f"GD {name}",
               cost=4.0 * 0.01 / eta * (cfg.n_in / 40) ** 2, fields=("t", "loss", "modes"))


def _linear_sim(config: dict, store: Store) -> dict:
    """The torch simulation (full-batch GD, t = k eta) from the ODE's initial matrices."""
    eta = config["eta"]
    run = simulate_config(TheoryConfig(**config["config"]), eta, record_every=max(1, int(round(0.05 / eta))))
    return {"t": run.t.tolist(), "loss": run.loss.tolist(), "modes": run.modes.tolist()}


def theory_trajectories_jobs(preset: str) -> list[Job]:
    cfgs = _configs(preset)
    return [_ode_job(k, c) for k, c in cfgs.items()] + [_sim_job(k, c, ETAS[preset]) for k, c in cfgs.items()]


def theory_trajectories(preset: str, out_dir, store: Store | None = None):
    """Figure a: loss and mode strengths of a 2-layer linear net under bp, fa, ld with fixed P, Q
    and ld with adapting P (svd) and aligned Q: theory (lines) and simulation (markers) from
    identical initial matrices; the simulation is full-batch GD, t = kη."""
    store = store or Store()
    eta = ETAS[preset]
    cfgs = _configs(preset)
    data = {"eta": eta, "n": SIZES[preset], "spectrum": SPECTRUM,
            "theory": {k: store.run(_ode_job(k, c))["result"] for k, c in cfgs.items()},
            "simulation": {k: store.run(_sim_job(k, c, eta))["result"] for k, c in cfgs.items()}}
    return save(draw_theory_trajectories(data), out_dir, "theory_trajectories", data)


def draw_theory_trajectories(data: dict):
    fig, (ax_loss, ax_modes) = figure(ncols=2, width=3.3, height=2.6)
    theory, sims = data["theory"], data["simulation"]
    for k, tr in theory.items():
        sim = {key: np.asarray(v) for key, v in sims[k].items()}
        every = max(1, len(sim["t"]) // 25)
        ax_loss.semilogy(tr["t"], tr["loss"], color=PALETTE[k])
        ax_loss.semilogy(sim["t"][::every], sim["loss"][::every], "o", ms=2.5, color=PALETTE[k])
    if "plateau" in theory.get("ld-fixed", {}):
        ax_loss.axhline(theory["ld-fixed"]["plateau"], color=PALETTE["ld-fixed"], ls=":", lw=0.8)
    ax_loss.set(xlabel=r"time $t$ (units of $\tau$)", ylabel=r"loss $\frac{1}{2}\|E\|_F^2$", ylim=(1e-6, 50),
                title="loss")
    for k in MODE_RULES:
        tr, sim = theory[k], {key: np.asarray(v) for key, v in sims[k].items()}
        modes = np.asarray(tr["modes"])
        every = max(1, len(sim["t"]) // 25)
        for a in range(modes.shape[1]):
            ax_modes.plot(tr["t"], modes[:, a], color=PALETTE[k], lw=1.0)
            ax_modes.plot(sim["t"][::every], sim["modes"][::every, a], "o", ms=2, color=PALETTE[k])
    ax_modes.set(xlabel=r"time $t$ (units of $\tau$)",
                 ylabel=r"mode strength $u_\alpha^\top W_2 W_1 v_\alpha$",
                 xlim=(0, 15), title=r"modes $s_\alpha$ = " + ", ".join(f"{s:g}" for s in data["spectrum"])
                 + " (no fa)")
    handles = [Line2D([], [], color=PALETTE[k], lw=1.2, label=LABELS[k]) for k in theory]
    handles += [Line2D([], [], color="grey", lw=1.0, label="line: theory (matrix ODE)"),
                Line2D([], [], color="grey", marker="o", ms=2.5, ls="none",
                       label=f"circles: simulation (GD, η = {data['eta']})"),
                Line2D([], [], color=PALETTE["ld-fixed"], ls=":", lw=0.8,
                       label="dotted: predicted plateau, fixed P")]
    legend_below(fig, handles, ncol=3)
    return fig


def _learning_time_job(r: int, eta: float, init: float) -> Job:
    return Job("learning-times-sim", {"rank": r, "eta": eta, "init": init, "spectrum": SPECTRUM},
               _learning_sim,
               label=f"GD learning times r={r}", cost=3.0 * 0.01 / eta, fields=("t_half",))


def _learning_sim(config: dict, store: Store) -> dict:
    """Per-mode times to reach s_α/2 in the torch simulation from the aligned start, run to
    1.2 x the slowest predicted time."""
    spectrum, r, init = tuple(config["spectrum"]), config["rank"], config["init"]
    t_end = 1.2 * float(mode_learning_times(spectrum, r, init_scale=init).max())
    k = len(spectrum)
    run = simulate([k, k, k], spectrum, "ld", eta=config["eta"], t_end=t_end, init_scale=init, rank=r,
                   p_rule="svd", q_rule="aligned", svd_refresh=1, svd_momentum=0.0, record_every=1)
    return {"t_half": crossing_times(run, spectrum).tolist()}


def _mode_times_job(init: float) -> Job:
    return Job("mode-learning-times", {"spectrum": SPECTRUM, "init": init, "ranks": len(SPECTRUM)},
               _mode_times,
               label="per-mode ODE learning times", cost=5.0, fields=("t_half",))


def _mode_times(config: dict, store: Store) -> dict:
    """Per-mode learning times (theory) for every rank r = 1 .. ranks."""
    return {"t_half": [mode_learning_times(tuple(config["spectrum"]), r, init_scale=config["init"]).tolist()
                       for r in range(1, config["ranks"] + 1)]}


def learning_times_jobs(preset: str) -> list[Job]:
    return [_mode_times_job(1e-3)] + [_learning_time_job(r, ETAS[preset], 1e-3)
                                      for r in range(1, len(SPECTRUM) + 1)]


def learning_times(preset: str, out_dir, store: Store | None = None):
    """Figure c: per-mode learning time (u_α reaches s_α/2) against the feedback rank r with
    adapting P (svd, aligned Q): per-mode theory (lines), torch simulation (markers) from the
    aligned start; dotted lines are the bp closed forms."""
    store = store or Store()
    init, eta = 1e-3, ETAS[preset]
    ranks = list(range(1, len(SPECTRUM) + 1))
    data = {"ranks": ranks, "spectrum": SPECTRUM, "eta": eta, "init": init,
            "theory": store.run(_mode_times_job(init))["result"]["t_half"],
            "simulation": [store.run(_learning_time_job(r, eta, init))["result"]["t_half"] for r in ranks],
            "bp": [bp_learning_time(s, init**2) for s in SPECTRUM]}
    return save(draw_learning_times(data), out_dir, "learning_times", data)


def draw_learning_times(data: dict):
    ranks = data["ranks"]
    times, sims = np.asarray(data["theory"]), np.asarray(data["simulation"], float)
    fig, (ax,) = figure(width=5.4, height=2.9)
    colors = ["#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7"]
    handles = []
    for a, s in enumerate(data["spectrum"]):
        ax.plot(ranks, times[:, a], "-", color=colors[a])
        ax.plot(ranks, sims[:, a], "o", ms=4, mfc="none", color=colors[a])
        ax.axhline(data["bp"][a], color=colors[a], ls=":", lw=0.7)
        handles.append(Line2D([], [], color=colors[a], label=rf"$s_\alpha = {s:g}$"))
    handles += [Line2D([], [], color="grey", label="line: theory (per-mode ODE)"),
                Line2D([], [], color="grey", marker="o", mfc="none", ls="none",
                       label=f"circles: simulation (GD, η = {data['eta']})"),
                Line2D([], [], color="grey", ls=":", lw=0.7, label="dotted: bp closed form")]
    ax.set(xlabel=r"feedback rank $r$", ylabel=r"learning time $t_{1/2}$ (units of $\tau$)", xticks=ranks,
           title="adapting P (svd), aligned Q")
    legend_right(ax, handles, title="teacher mode")
    return fig
