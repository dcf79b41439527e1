"""Figure b (phase diagram over r and task rank) and figure i (compute against r)."""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..sim import models
from ..sim.layers import convert
from ..theory.predictions import fixed_feedback_plateau, mode_learning_times
from .runner import Job
from .store import Store, torch_threads
from .style import figure, legend_right, rank_axis, save

MAX_RANK = {"quick": 6, "full": 8, "tiny": 3}
PHASE = dict(d=8, n_in=16, init=1e-3, draws=20, s_max=3.0, s_min=1.0)


def _orthonormal(rows, cols, rng):
    q, _ = np.linalg.qr(rng.standard_normal((cols, rows)))
    return q[:, :rows].T


def phase_spectrum(n: int) -> tuple[float, ...]:
    """The one teacher spectrum of the phase diagram: n values evenly spaced from s_max down to
    s_min; a teacher of rank k has the first k of them."""
    return tuple(float(s) for s in np.linspace(PHASE["s_max"], PHASE["s_min"], n))


def _phase_job(preset: str) -> Job:
    n = MAX_RANK[preset]
    return Job("phase-diagram", {"n": n, **PHASE, "spectrum": phase_spectrum(n)}, _phase,
               label="phase diagram",
               cost=2.0 * n, fields=("plateau", "learn"))


def _phase(config: dict, store: Store) -> dict:
    """plateau[i, j]: mean over random fixed P (rank r = i+1) and teachers (rank k = j+1) of
    the plateau loss (closed form) over the initial loss ½ Σ s_α²; learn[i, j]: time for
    adapting P (svd, aligned Q) to bring the weakest mode to s_k/2 (per-mode ODEs)."""
    n, d, n_in, draws, init = config["n"], config["d"], config["n_in"], config["draws"], config["init"]
    rng = np.random.default_rng(0)
    plateau, learn = np.zeros((n, n)), np.zeros((n, n))
    for j in range(n):
        spectrum = tuple(config["spectrum"][:j + 1])
        k = len(spectrum)
        for i in range(n):
            fr = []
            for _ in range(draws):
                U, V = _orthonormal(k, d, rng).T, _orthonormal(k, n_in, rng).T
                Wstar = U @ np.diag(spectrum) @ V.T
                fr.append(fixed_feedback_plateau(Wstar, _orthonormal(i + 1, d, rng)) /
                          (0.5 * np.sum(np.square(spectrum))))
            plateau[i, j] = np.mean(fr)
            # rtol 1e-5: on the tied residuals of r < k the selection slides and rtol 1e-7 took up to
            # 230 s a cell; 1e-5 and 1e-4 give the same t_1/2 to 1e-4 relative (k = 2, r = 1)
            learn[i, j] = np.max(mode_learning_times(spectrum, i + 1, init_scale=init, n_points=2001,
                                                     rtol=1e-5, atol=1e-8))
    return {"plateau": plateau.tolist(), "learn": learn.tolist()}


def phase_diagram_jobs(preset: str) -> list[Job]:
    return [_phase_job(preset)]


def phase_diagram(preset: str, out_dir, store: Store | None = None):
    """Left: plateau loss of fixed random P (fraction of the initial loss, mean over random P
    and teachers; closed form, theory.predictions.fixed_feedback_plateau). Right: time for
    adapting P (svd, aligned Q) to learn the weakest mode (per-mode ODEs). Axes: feedback rank r
    and teacher rank k; d = 8; every teacher takes the first k values of one spectrum."""
    store = store or Store()
    job = _phase_job(preset)
    data = {**job.config, **store.run(job)["result"]}
    return save(draw_phase_diagram(data), out_dir, "phase_diagram", data)


def draw_phase_diagram(data: dict):
    n = data["n"]
    ranks = ks = list(range(1, n + 1))
    fig, axes = figure(ncols=2, width=3.3, height=2.9)
    panels = [(np.array(data["plateau"]), "fixed P: plateau loss / initial loss", "viridis", ".2f"),
              (np.array(data["learn"]), r"adapting P: $t_{1/2}$ of the weakest mode ($\tau$)", "magma",
               ".1f")]
    for ax, (M, title, cmap, fmt) in zip(axes, panels):
        im = ax.imshow(M, origin="lower", cmap=cmap, aspect="auto", extent=(0.5, n + 0.5, 0.5, n + 0.5))
        for i in range(n):
            for j in range(n):
                ax.text(j + 1, i + 1, format(M[i, j], fmt), ha="center", va="center", fontsize=5,
                        color="white" if M[i, j] < M.mean() else "black")
        ax.plot([0.5, n + 0.5], [0.5, n + 0.5], color="white", lw=0.6, ls="--")
        ax.set(xlabel=r"teacher rank $k$", ylabel=r"feedback rank $r$", title=title, xticks=ks, yticks=ranks)
        fig.colorbar(im, ax=ax, shrink=0.8, label="plateau / initial loss" if cmap == "viridis"
                     else r"$t_{1/2}$ ($\tau$)")
    spectrum = ", ".join(f"{s:.2g}" for s in data["spectrum"])
    fig.suptitle(f"output dimension d = {data['d']}; teacher of rank k: first k of s = ({spectrum}); "
                 "dashed: r = k", fontsize=8)
    return fig


COMPUTE = {"quick": dict(width=512, ranks=[1, 4, 16, 64, 256, 512], repeats=9, steps=2),
           "full": dict(width=2048, ranks=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
                        repeats=15, steps=5),
           "tiny": dict(width=64, ranks=[1, 8, 64], repeats=3, steps=1)}
BATCH = 256


def _time_once(model, opt, x, y, steps):
    """Seconds per training step of its forward pass (loss included), its backward pass and the
    whole step (forward, backward, optimizer update), all from the same ``steps`` steps."""
    fwd = bwd = total = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        fwd, bwd, total = fwd + t1 - t0, bwd + t2 - t1, total + t3 - t0
    return fwd / steps, bwd / steps, total / steps


def _measure(config: dict, store: Store) -> dict:
    """Per repeat and rank, bp and ld (fixed P, Q) timed back to back (order alternating between
    repeats) on one thread, so that load changes hit both alike; the ld/bp ratios of the
    backward pass and of the whole step in every repeat, their median and quartiles, and
    whether the spread (interquartile range) is smaller than the effect |median - 1|
    (conclusive)."""
    c = config
    with torch_threads(1):
        torch.manual_seed(0)
        x, y = torch.randn(c["batch"], 784), torch.randint(0, 10, (c["batch"],))

        def build(**kw):
            torch.manual_seed(0)
            return convert(models.MLP([784, c["width"], c["width"], c["width"], 10]), clip_rank=True, **kw)

        bp = build(rule="bp")
        lds = [build(rule="ld", rank=r, p_rule="fixed", q_rule="fixed") for r in c["ranks"]]
        opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-4) for m in [bp, *lds]}
        for m in [bp, *lds]:
            _time_once(m, opts[id(m)], x, y, 1)  # warm-up
        load = [os.getloadavg()[0]]
        samples = [[] for _ in lds]  # per rank: (backward ratio, step ratio) per repeat
        for rep in range(c["repeats"]):
            for i, m in enumerate(lds):
                pair = [bp, m] if (rep + i) % 2 == 0 else [m, bp]
                t = {id(mm): _time_once(mm, opts[id(mm)], x, y, c["steps"]) for mm in pair}
                samples[i].append((t[id(m)][1] / t[id(bp)][1], t[id(m)][2] / t[id(bp)][2]))
            load.append(os.getloadavg()[0])
    out = {"load_average": [min(load), max(load)], "cores": os.cpu_count(), "repeats": c["repeats"]}
    for j, name in enumerate(("backward", "step")):
        per = np.array([[s[j] for s in rank_samples] for rank_samples in samples])  # ranks x repeats
        q1, med, q3 = np.percentile(per, [25, 50, 75], axis=1)
        out[name] = {"samples": per.tolist(), "median": med.tolist(), "q1": q1.tolist(), "q3": q3.tolist(),
                     "conclusive": (np.abs(med - 1) > (q3 - q1)).tolist()}
    return out


def _compute_job(preset: str) -> Job:
    c = COMPUTE[preset]
    config = {**c, "batch": BATCH, "machine": platform.node(), "processor": platform.machine(),
              "threads": 1, "method": "paired, per-step forward/backward/update"}
    return Job("compute-vs-rank", config, _measure, label="timing compute_vs_rank (alone)",
               cost=0.02 * c["repeats"] * c["steps"] * len(c["ranks"]) * (c["width"] / 512) ** 2,
               fields=("backward", "step"), exclusive=True)


def compute_vs_rank_jobs(preset: str) -> list[Job]:
    return [_compute_job(preset)]


def compute_vs_rank(preset: str, out_dir, store: Store | None = None):
    """Figure i: backward time and whole step time of ld (fixed P, Q) against r, relative to
    bp, on an MLP 784-w-w-w-10 at batch 256; measured alone (after every other run), on one
    thread, bp and ld paired in every repeat (this machine; timing, so cached per machine)."""
    store = store or Store()
    job = _compute_job(preset)
    data = {**{k: job.config[k] for k in ("width", "ranks", "repeats", "steps", "batch", "threads")},
            **store.run(job)["result"]}
    data["conclusive"] = bool(all(data["backward"]["conclusive"]) and all(data["step"]["conclusive"]))
    return save(draw_compute_vs_rank(data), out_dir, "compute_vs_rank", data)


def draw_compute_vs_rank(data: dict):
    """Median ratio with quartile bars; a rank whose spread exceeds its effect is drawn open and
    grey on a hatched band, with the note 'spread > effect: not conclusive'."""
    ranks = data["ranks"]
    fig, (ax,) = figure(width=6.2, height=3.0)
    handles = []
    inconclusive = set()
    for name, color, marker, label in (("backward", "#D55E00", "o", "backward pass"),
                                       ("step", "#0072B2", "s", "whole training step")):
        s = data[name]
        med, q1, q3 = (np.asarray(s[k]) for k in ("median", "q1", "q3"))
        ax.plot(ranks, med, "-", color=color, lw=1.0)
        ax.errorbar(ranks, med, yerr=[med - q1, q3 - med], fmt="none", ecolor=color, capsize=2, lw=0.8)
        for r, m, ok in zip(ranks, med, s["conclusive"]):
            ax.plot([r], [m], marker, ms=4, color=color if ok else "grey", mfc=color if ok else "white")
            if not ok:
                inconclusive.add(r)
        handles.append(Line2D([], [], color=color, marker=marker, ms=4, label=f"{label} (median, quartiles)"))
    for r in sorted(inconclusive):
        ax.axvspan(r / 1.25, r * 1.25, facecolor="none", edgecolor="0.6", hatch="///", lw=0)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(2 / 3, color="#0072B2", lw=0.6, ls=":")
    ax.axhline(1 / 2, color="#D55E00", lw=0.6, ls=":")
    handles += [Line2D([], [], color="black", lw=0.8, label="bp (= 1)"),
                Line2D([], [], color="#0072B2", lw=0.6, ls=":",
                       label="ideal step (forward + weight gradient)"),
                Line2D([], [], color="#D55E00", lw=0.6, ls=":",
                       label="ideal backward (weight gradient only)")]
    if inconclusive:
        handles += [Line2D([], [], color="grey", marker="o", mfc="white", ls="none",
                           label="open grey marker on hatched band:"),
                    Patch(facecolor="none", edgecolor="0.6", hatch="///",
                          label="spread (quartiles) > effect |ratio - 1|")]
    rank_axis(ax, ranks)
    lo, hi = data["load_average"]
    ax.set(xlabel=r"feedback rank $r$", ylabel="time relative to bp")
    fig.suptitle(f"MLP 784-{data['width']}x3-10, batch {data['batch']}, {data['threads']} CPU thread, "
                 f"{data['repeats']} paired repeats;\n"
                 f"load average {lo:.1f}-{hi:.1f} on {data['cores']} cores "
                 "while timing", fontsize=8)
    note = None
    if inconclusive:
        note = ("spread > effect: not conclusive" if len(inconclusive) == len(ranks)
                else f"spread > effect at r = {', '.join(map(str, sorted(inconclusive)))}:\nnot conclusive")
    legend = legend_right(ax, handles, title=note)
    if note:
        legend.get_title().set_color("#A00000")
    return fig
