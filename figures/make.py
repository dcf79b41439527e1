"""`ldfa figures`: regenerate every figure of the paper into one folder.

Two stages. First every run the chosen figures read (training runs, ODE integrations,
simulations) is computed into the results store (figures/store.py) by figures/runner.py:
one process per core, one torch thread each, with a progress bar; timing measurements run
last and alone. Then each figure is drawn from the store (PDF, PNG and the plotted numbers
as JSON). A second run finds everything in the store and only re-plots.
"""

from __future__ import annotations

import inspect
import time
from functools import partial
from pathlib import Path

from ..theory.errors import ConfigError
from . import mlp_figs, nonlinear_figs, phase_compute, runner, strict_figs, style, theory_figs, transfer
from .store import Store

FIGURES = {
    "theory_trajectories": theory_figs.theory_trajectories,
    "phase_diagram": phase_compute.phase_diagram,
    "learning_times": theory_figs.learning_times,
    "mlp_accuracy_vs_rank": mlp_figs.accuracy_vs_rank,
    "cnn_accuracy_vs_rank": partial(mlp_figs.accuracy_vs_rank, suite="cnn"),
    "vit_accuracy_vs_rank": partial(mlp_figs.accuracy_vs_rank, suite="vit"),
    "receptive_fields": mlp_figs.receptive_fields,
    "alignment": mlp_figs.alignment,
    "mlp_fashion_table": mlp_figs.table,
    "compute_vs_rank": phase_compute.compute_vs_rank,
    "transfer_table": transfer.transfer_table,
    "strict_bottleneck": strict_figs.strict_bottleneck,
    "nonlinear_rank": nonlinear_figs.nonlinear_rank,
}
# the runs each figure reads: name -> function(preset, store) -> list of runner.Job
JOBS = {
    "theory_trajectories": lambda p, s: theory_figs.theory_trajectories_jobs(p),
    "phase_diagram": lambda p, s: phase_compute.phase_diagram_jobs(p),
    "learning_times": lambda p, s: theory_figs.learning_times_jobs(p),
    "mlp_accuracy_vs_rank": lambda p, s: mlp_figs.accuracy_vs_rank_jobs(p),
    "cnn_accuracy_vs_rank": lambda p, s: mlp_figs.accuracy_vs_rank_jobs(p, "cnn"),
    "vit_accuracy_vs_rank": lambda p, s: mlp_figs.accuracy_vs_rank_jobs(p, "vit"),
    "receptive_fields": lambda p, s: mlp_figs.receptive_fields_jobs(p),
    "alignment": lambda p, s: mlp_figs.alignment_jobs(p),
    "mlp_fashion_table": lambda p, s: mlp_figs.table_jobs(p),
    "compute_vs_rank": lambda p, s: phase_compute.compute_vs_rank_jobs(p),
    "transfer_table": transfer.transfer_table_jobs,
    "strict_bottleneck": lambda p, s: strict_figs.strict_bottleneck_jobs(p),
    "nonlinear_rank": lambda p, s: nonlinear_figs.nonlinear_rank_jobs(p),
}
PRESETS = ("quick", "full", "tiny")  # tiny: seconds, for tests


def jobs(preset: str, names: list[str], store: Store) -> list[runner.Job]:
    """Every run the figures ``names`` read."""
    return [job for name in names for job in JOBS[name](preset, store)]


def draw(name: str, preset: str, out, store: Store) -> tuple[list[Path], dict, int, float]:
    """Draw one figure from the store: (files, layout problems per saved figure, runs computed
    while drawing, seconds)."""
    t0 = time.perf_counter()
    fn = FIGURES[name]
    kwargs = {"store": store} if "store" in inspect.signature(fn).parameters else {}
    before, misses = dict(style.LAYOUT), store.misses
    paths = fn(preset, out, **kwargs)
    layout = {k: v for k, v in style.LAYOUT.items() if before.get(k) is not v}
    return paths, layout, store.misses - misses, time.perf_counter() - t0


def _draw_in_worker(name: str, preset: str, out: str, root: str, threads: int, code: str):
    return draw(name, preset, out, Store(root, threads=threads, code=code))


def run(preset: str = "quick", only: list[str] | None = None, out="figures/out",
        store: Store | str | None = None, workers: int | None = None, threads: int | None = None,
        progress: bool = True) -> list[Path]:
    """Draw the figures named in ``only`` (default: all) with ``preset``; returns the files.

    ``threads``: torch threads per run (default 1; recorded in every store key); ``workers``:
    processes computing runs and drawing figures side by side (default: one per core / threads;
    1 = all in this process).
    """
    t_start = time.perf_counter()
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}; allowed: {', '.join(PRESETS)}")
    names = only or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure {unknown[0]!r}; allowed: {', '.join(FIGURES)}")
    for flag, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{flag} {value!r}: must be a positive integer")
    if not isinstance(store, Store):
        store = Store(store or "runs/store", threads=threads or 1, report=print)
    elif threads is not None and threads != store.threads:
        raise ConfigError(f"--threads {threads} differs from the store's threads={store.threads}")
    store.report = store.report or print
    workers = workers or runner.default_workers(store.threads)
    pool = runner.make_pool(workers, store.threads) if workers > 1 else None
    try:
        stats = runner.execute(jobs(preset, names, store), store, workers=workers, progress=progress,
                               pool=pool)
        print(f"drawing {len(names)} figures ...", flush=True)
        if pool is not None:
            futures = [pool.submit(_draw_in_worker, name, preset, str(out), str(store.root), store.threads,
                                   store.code)
                       for name in names]
            drawn = [f.result() for f in futures]
        else:
            drawn = [draw(name, preset, out, store) for name in names]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    written, late = [], 0
    if pool is not None:  # the workers' stores counted these
        store.misses += sum(d[2] for d in drawn)
    for name, (paths, layout, misses, seconds) in zip(names, drawn):
        style.LAYOUT.update(layout)
        late += misses
        problems = [p for v in layout.values() for p in v]
        print(f"{name}: {', '.join(str(p) for p in paths)} ({seconds:.1f} s)"
              + (f"; LAYOUT: {problems[0]}" if problems else ""), flush=True)
        written += paths
    print(f"results store {store.root}: {stats['runs']} runs, {stats['cached']} cached, {stats['computed']} "
          f"computed in {stats['seconds']:.0f} s ({stats['cpu_seconds']:.0f} s CPU)"
          + (f", {late} computed while drawing (missing from the figure's job list)" if late else "")
          + (f"; {len(store.corrupt)} corrupt entries recomputed" if store.corrupt else "")
          + f"; total {time.perf_counter() - t_start:.0f} s", flush=True)
    return written
