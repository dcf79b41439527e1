"""Figure b (phase diagram over r and task rank) and figure i (compute against r)."""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..sim import models
from ..sim.layers import convert
from ..theory.predictions import fixed_feedback_plateau, mode_learning_times
from .store import Store
from .style import figure, save

MAX_RANK = {"quick": 6, "full": 8, "tiny": 3}


def _orthonormal(rows, cols, rng):
    q, _ = np.linalg.qr(rng.standard_normal((cols, rows)))
    return q[:, :rows].T


def phase_diagram(preset: str, out_dir, store: Store | None = None, draws: int = 20):
    """Left: plateau loss of fixed random P (fraction of the initial loss, mean over random P
    and teachers; closed form of SPEC 3.3). Right: time for adapting P (svd, aligned Q) to
    learn the weakest mode (per-mode ODEs). Axes: feedback rank r and teacher rank k; d = 8."""
    store = store or Store()
    n = MAX_RANK[preset]
    d, n_in, init = 8, 16, 1e-3
    ranks = ks = list(range(1, n + 1))

    def compute():
        rng = np.random.default_rng(0)
        plateau = np.zeros((n, n))
        learn = np.zeros((n, n))
        for j, k in enumerate(ks):
            spectrum = tuple(np.linspace(3.0, 1.0, k)) if k > 1 else (3.0,)
            for i, r in enumerate(ranks):
                fr = []
                for _ in range(draws):
                    U, V = _orthonormal(k, d, rng).T, _orthonormal(k, n_in, rng).T
                    Wstar = U @ np.diag(spectrum) @ V.T
                    fr.append(fixed_feedback_plateau(Wstar, _orthonormal(r, d, rng)) /
                              (0.5 * np.sum(np.square(spectrum))))
                plateau[i, j] = np.mean(fr)
                learn[i, j] = np.max(mode_learning_times(spectrum, r, init_scale=init, n_points=2001))
        return {"plateau": plateau.tolist(), "learn": learn.tolist()}

    res = store.cached("phase-diagram", {"n": n, "d": d, "n_in": n_in, "draws": draws, "init": init},
                       compute)["result"]
    fig, axes = figure(ncols=2, width=3.3, height=2.9)
    panels = [(np.array(res["plateau"]), "fixed P: plateau loss / initial loss", "viridis", ".2f"),
              (np.array(res["learn"]), r"adapting P: $t_{1/2}$ of the weakest mode ($\tau$)", "magma", ".1f")]
    for ax, (M, title, cmap, fmt) in zip(axes, panels):
        im = ax.imshow(M, origin="lower", cmap=cmap, aspect="auto",
                       extent=(0.5, n + 0.5, 0.5, n + 0.5))
        for i in range(n):
            for j in range(n):
                ax.text(j + 1, i + 1, format(M[i, j], fmt), ha="center", va="center", fontsize=5,
                        color="white" if M[i, j] < M.mean() else "black")
        ax.plot([0.5, n + 0.5], [0.5, n + 0.5], color="white", lw=0.6, ls="--")
        ax.set(xlabel=r"teacher rank $k$", ylabel=r"feedback rank $r$", title=title,
               xticks=ks, yticks=ranks)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return save(fig, out_dir, "phase_diagram")


COMPUTE = {"quick": dict(width=1024, ranks=[1, 4, 16, 64, 256, 1024], repeats=9, steps=3),
           "full": dict(width=2048, ranks=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
                        repeats=7, steps=5),
           "tiny": dict(width=64, ranks=[1, 8, 64], repeats=1, steps=1)}


def _time_once(model, opt, x, y, steps):
    """Seconds per call of forward, forward+backward and a full SGD step (one sample each)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.no_grad():
            model(x)
    t1 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    t2 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    t3 = time.perf_counter()
    return (t1 - t0) / steps, (t2 - t1) / steps, (t3 - t2) / steps


def _interleaved(models_, x, y, repeats, steps):
    """Median (forward, forward+backward, step) seconds per model, the models timed in turn
    within every repeat so that drift of the machine hits them alike."""
    opts = [torch.optim.SGD(m.parameters(), lr=1e-4) for m in models_]
    for m, o in zip(models_, opts):
        _time_once(m, o, x, y, 1)  # warm-up
    samples = [[] for _ in models_]
    for _ in range(repeats):
        for i, (m, o) in enumerate(zip(models_, opts)):
            samples[i].append(_time_once(m, o, x, y, steps))
    return [tuple(statistics.median(s[j] for s in samples[i]) for j in range(3)) for i in range(len(models_))]


def compute_vs_rank(preset: str, out_dir, store: Store | None = None):
    """Figure i: backward time and total step time of ld (fixed P, Q) against r, relative to
    bp, on an MLP 784-w-w-w-10 at batch 256 (this machine; timing, so cached per machine)."""
    store = store or Store()
    c = COMPUTE[preset]

    def compute():
        torch.manual_seed(0)
        x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))

        def build(**kw):
            torch.manual_seed(0)
            return convert(models.MLP([784, c["width"], c["width"], c["width"], 10]), clip_rank=True, **kw)

        nets = [build(rule="bp")] + [build(rule="ld", rank=r, p_rule="fixed", q_rule="fixed")
                                     for r in c["ranks"]]
        times = _interleaved(nets, x, y, c["repeats"], c["steps"])
        return {"bp": times[0], "ld": times[1:]}

    config = {**c, "machine": platform.node(), "processor": platform.machine(),
              "threads": torch.get_num_threads()}
    res = store.cached("compute-vs-rank", config, compute)["result"]
    fwd_bp, fb_bp, full_bp = res["bp"]
    ld = np.array(res["ld"])
    fig, (ax,) = figure(width=3.8)
    ax.plot(c["ranks"], (ld[:, 1] - ld[:, 0]) / (fb_bp - fwd_bp), "o-", ms=3, color="#D55E00",
            label="backward pass")
    ax.plot(c["ranks"], ld[:, 2] / full_bp, "s-", ms=3, color="#0072B2", label="whole training step")
    ax.axhline(1.0, color="black", lw=0.8, label="bp")
    ax.axhline(2 / 3, color="#0072B2", lw=0.6, ls=":", label="ideal step (forward + weight gradient)")
    ax.axhline(1 / 2, color="#D55E00", lw=0.6, ls=":", label="ideal backward (weight gradient only)")
    ax.set(xscale="log", xlabel=r"feedback rank $r$", ylabel="time relative to bp",
           title=f"MLP 784-{c['width']}x3-10, batch 256, {torch.get_num_threads()} CPU threads")
    ax.legend(loc="upper left")
    return save(fig, out_dir, "compute_vs_rank")
