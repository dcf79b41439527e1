"""`ldfa figures`: regenerate every figure of the paper into one folder."""

from __future__ import annotations

import time
from pathlib import Path

from ldfa.errors import ConfigError

from . import mlp_table, theory_figs

FIGURES = {
    "theory_trajectories": theory_figs.theory_trajectories,
    "learning_times": theory_figs.learning_times,
    "mlp_fashion_table": mlp_table.fashion_mlp_table,
}
PRESETS = ("quick", "full")


def run(preset: str = "quick", only: list[str] | None = None, out="figures/out") -> list[Path]:
    """Draw the figures named in ``only`` (default: all) with ``preset``; returns the files."""
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}; allowed: {', '.join(PRESETS)}")
    names = only or list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure {unknown[0]!r}; allowed: {', '.join(FIGURES)}")
    written = []
    for name in names:
        t0 = time.perf_counter()
        paths = FIGURES[name](preset, out)
        print(f"{name}: {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.1f} s)")
        written += paths
    return written
