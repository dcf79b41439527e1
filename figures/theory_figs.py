"""Figures of the linear theory, with the torch simulation overlaid where it applies."""

from __future__ import annotations

import numpy as np

from ..theory.config import TheoryConfig
from ..theory.integrate import integrate
from ..theory.predictions import bp_learning_time, fixed_feedback_plateau, mode_learning_times
from .store import Store
from .style import PALETTE, figure, save
from .verify import crossing_times, simulate, simulate_config

SPECTRUM = (5.0, 4.0, 3.0, 2.0, 1.0)
SIZES = {"quick": 40, "full": 100, "tiny": 12}
ETAS = {"quick": 0.01, "full": 0.002, "tiny": 0.05}


def theory_trajectories(preset: str, out_dir, store: Store | None = None):
    """Figure a: loss and mode strengths of a 2-layer linear net under bp, fa, ld with fixed P, Q
    and ld with adapting P (svd) and aligned Q: theory (lines) and simulation (markers) from
    identical initial matrices; the simulation is full-batch GD, t = kη."""
    store = store or Store()
    n, eta = SIZES[preset], ETAS[preset]
    base = dict(n_in=n, hidden=n, n_out=10, spectrum=SPECTRUM, init_scale=1e-3, t_max=20.0,
                n_points=401, rtol=1e-7, atol=1e-10)
    runs = {
        "bp": TheoryConfig(rule="bp", **base),
        "fa": TheoryConfig(rule="fa", **base),
        "ld-fixed": TheoryConfig(rule="ld", p_rule="fixed", q_rule="fixed", rank=3,
                                 init="first-zero", **base),
        "ld-adapting": TheoryConfig(rule="ld", p_rule="svd", q_rule="aligned", rank=3, **base),
    }
    labels = {"bp": "bp", "fa": "fa", "ld-fixed": "ld, fixed P, Q (r = 3)",
              "ld-adapting": "ld, svd P, aligned Q (r = 3)"}
    trajs = {k: integrate(c) for k, c in runs.items()}
    sims = {k: _simulated(store, c, eta) for k, c in runs.items()}
    fig, (ax_loss, ax_modes) = figure(ncols=2)
    for k, tr in trajs.items():
        ax_loss.semilogy(tr.t, tr["loss"], color=PALETTE[k], label=labels[k])
        sim = sims[k]
        every = max(1, len(sim["t"]) // 25)
        ax_loss.semilogy(sim["t"][::every], sim["loss"][::every], "o", ms=2.5, color=PALETTE[k])
    tr = trajs["ld-fixed"]
    plateau = fixed_feedback_plateau(tr.teacher[0], tr.final["Q_2"] @ tr.final["P_2"])
    ax_loss.axhline(plateau, color=PALETTE["ld-fixed"], ls=":", lw=0.8,
                    label="predicted plateau, fixed P")
    ax_loss.plot([], [], "o", ms=2.5, color="grey", label=f"simulation (GD, η = {eta})")
    ax_loss.set(xlabel=r"time $t$ (units of $\tau$)", ylabel=r"loss $\frac{1}{2}\|E\|_F^2$",
                ylim=(1e-6, 50))
    ax_loss.legend(loc="lower left")
    for k, ls in [("bp", "-"), ("ld-adapting", "--"), ("ld-fixed", ":")]:
        tr, sim = trajs[k], sims[k]
        every = max(1, len(sim["t"]) // 25)
        for a in range(len(SPECTRUM)):
            ax_modes.plot(tr.t, tr[f"mode_{a + 1}"], color=PALETTE[k], ls=ls, lw=1.0,
                          label=labels[k] if a == 0 else None)
            ax_modes.plot(sim["t"][::every], sim["modes"][::every, a], "o", ms=2, color=PALETTE[k])
    ax_modes.set(xlabel=r"time $t$ (units of $\tau$)",
                 ylabel=r"mode strength $u_\alpha^\top W_2 W_1 v_\alpha$", xlim=(0, 15))
    ax_modes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, fontsize=6)
    return save(fig, out_dir, "theory_trajectories")


def _simulated(store: Store, cfg: TheoryConfig, eta: float) -> dict:
    """The torch simulation of ``cfg`` (cached): t, loss and mode strengths."""
    def compute():
        run = simulate_config(cfg, eta, record_every=max(1, int(round(0.05 / eta))))
        return {"t": run.t.tolist(), "loss": run.loss.tolist(), "modes": run.modes.tolist()}

    res = store.cached("linear-sim", {"config": cfg.to_dict(), "eta": eta}, compute)["result"]
    return {k: np.asarray(v) for k, v in res.items()}


def learning_times(preset: str, out_dir, store: Store | None = None):
    """Figure c: per-mode learning time (u_α reaches s_α/2) against the feedback rank r with
    adapting P (svd, aligned Q): per-mode theory (lines), torch simulation (markers) from the
    aligned start; dotted lines are the bp closed forms."""
    store = store or Store()
    init, eta = 1e-3, ETAS[preset]
    ranks = list(range(1, len(SPECTRUM) + 1))
    times = np.array([mode_learning_times(SPECTRUM, r, init_scale=init) for r in ranks])
    k = len(SPECTRUM)

    def sim_times(r):
        def compute():
            run = simulate([k, k, k], SPECTRUM, "ld", eta=eta, t_end=1.2 * float(times[r - 1].max()),
                           init_scale=init, rank=r, p_rule="svd", q_rule="aligned", svd_refresh=1,
                           svd_momentum=0.0, record_every=1)
            return {"t_half": crossing_times(run, SPECTRUM).tolist()}
        return store.cached("learning-times-sim", {"rank": r, "eta": eta, "init": init,
                                                   "spectrum": SPECTRUM}, compute)["result"]["t_half"]

    sims = np.array([sim_times(r) for r in ranks])
    fig, (ax,) = figure(width=3.6)
    colors = ["#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7"]
    for a, s in enumerate(SPECTRUM):
        ax.plot(ranks, times[:, a], "-", color=colors[a], label=rf"$s_\alpha = {s:g}$")
        ax.plot(ranks, sims[:, a], "o", ms=4, mfc="none", color=colors[a])
        ax.axhline(bp_learning_time(s, init**2), color=colors[a], ls=":", lw=0.7)
    ax.plot([], [], "o", mfc="none", color="grey", label=f"simulation (η = {eta})")
    ax.set(xlabel=r"feedback rank $r$", ylabel=r"learning time $t_{1/2}$ (units of $\tau$)",
           xticks=ranks)
    ax.legend(title="teacher mode", loc="upper right")
    return save(fig, out_dir, "learning_times")
