"""`ldfa figures`: regenerate every figure of the paper into one folder.

Training runs are cached in a results store (figures/store.py) keyed by their
configuration and the code version, so a second run only re-plots.
"""

from __future__ import annotations

import inspect
import time
from functools import partial
from pathlib import Path

from ..theory.errors import ConfigError
from . import mlp_figs, phase_compute, theory_figs, transfer
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
}
PRESETS = ("quick", "full", "tiny")  # tiny: seconds, for tests


def run(preset: str = "quick", only: list[str] | None = None, out="figures/out",
        store: Store | str | None = None) -> list[Path]:
    """Draw the figures named in ``only`` (default: all) with ``preset``; returns the files."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}; allowed: {', '.join(PRESETS)}")
    names = only or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure {unknown[0]!r}; allowed: {', '.join(FIGURES)}")
    store = store if isinstance(store, Store) else Store(store or "runs/store")
    written = []
    for name in names:
        t0 = time.perf_counter()
        fn = FIGURES[name]
        kwargs = {"store": store} if "store" in inspect.signature(fn).parameters else {}
        paths = fn(preset, out, **kwargs)
        print(f"{name}: {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.1f} s)")
        written += paths
    print(f"results store {store.root}: {store.hits} cached, {store.misses} computed"
          + (f", {len(store.corrupt)} corrupt entries recomputed" if store.corrupt else ""))
    return written
