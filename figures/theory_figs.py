"""Figures drawn from the linear theory alone (the simulation overlays come with `ldfa verify`)."""

from __future__ import annotations

import numpy as np

from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import integrate
from ldfa.theory.predictions import bp_learning_time, fixed_feedback_plateau, mode_learning_times

from .style import PALETTE, figure, save

SPECTRUM = (5.0, 4.0, 3.0, 2.0, 1.0)
SIZES = {"quick": 40, "full": 100, "tiny": 12}


def theory_trajectories(preset: str, out_dir):
    """Loss and mode strengths of a 2-layer linear net: bp, fa, ld with fixed P, ld with adapting P."""
    n = SIZES[preset]
    base = dict(n_in=n, hidden=n, n_out=10, spectrum=SPECTRUM, init_scale=1e-3, t_max=40.0,
                n_points=401, rtol=1e-7, atol=1e-10)
    runs = {
        "bp": TheoryConfig(rule="bp", **base),
        "fa": TheoryConfig(rule="fa", **base),
        "ld-fixed": TheoryConfig(rule="ld", p_rule="fixed", q_rule="fixed", rank=3,
                                 init="first-zero", **base),
        "ld-adapting": TheoryConfig(rule="ld", p_rule="oja", q_rule="aligned", rank=3,
                                    tau_p=0.01, **base),
    }
    labels = {"bp": "bp", "fa": "fa", "ld-fixed": "ld, fixed P, Q (r = 3)",
              "ld-adapting": "ld, Oja P, aligned Q (r = 3)"}
    trajs = {k: integrate(c) for k, c in runs.items()}
    fig, (ax_loss, ax_modes) = figure(ncols=2)
    for k, tr in trajs.items():
        ax_loss.semilogy(tr.t, tr["loss"], color=PALETTE[k], label=labels[k])
    tr = trajs["ld-fixed"]
    plateau = fixed_feedback_plateau(tr.teacher[0], tr.final["Q_2"] @ tr.final["P_2"])
    ax_loss.axhline(plateau, color=PALETTE["ld-fixed"], ls=":", lw=0.8,
                    label="predicted plateau, fixed P")
    ax_loss.set(xlabel=r"time $t$ (units of $\tau$)", ylabel=r"loss $\frac{1}{2}\|E\|_F^2$",
                ylim=(1e-6, 50))
    ax_loss.legend(loc="lower left")
    for k, ls in [("bp", "-"), ("ld-adapting", "--"), ("ld-fixed", ":")]:
        tr = trajs[k]
        for a in range(len(SPECTRUM)):
            ax_modes.plot(tr.t, tr[f"mode_{a + 1}"], color=PALETTE[k], ls=ls, lw=1.0,
                          label=labels[k] if a == 0 else None)
    ax_modes.set(xlabel=r"time $t$ (units of $\tau$)",
                 ylabel=r"mode strength $u_\alpha^\top W_2 W_1 v_\alpha$", xlim=(0, 15))
    ax_modes.legend(loc="lower right")
    return save(fig, out_dir, "theory_trajectories")


def learning_times(preset: str, out_dir):
    """Per-mode learning time (u_α reaches s_α/2) against the feedback rank r, adapting P."""
    init = 1e-3
    ranks = list(range(1, len(SPECTRUM) + 1))
    times = np.array([mode_learning_times(SPECTRUM, r, init_scale=init) for r in ranks])
    fig, (ax,) = figure(width=3.6)
    colors = ["#0072B2", "#009E73", "#E69F00", "#D55E00", "#CC79A7"]
    for a, s in enumerate(SPECTRUM):
        ax.plot(ranks, times[:, a], "o-", color=colors[a], ms=3, label=rf"$s_\alpha = {s:g}$")
        ax.axhline(bp_learning_time(s, init**2), color=colors[a], ls=":", lw=0.7)
    ax.set(xlabel=r"feedback rank $r$", ylabel=r"learning time $t_{1/2}$ (units of $\tau$)",
           xticks=ranks)
    ax.legend(title="teacher mode", loc="upper right")
    return save(fig, out_dir, "learning_times")
