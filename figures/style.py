"""One figure style for the paper: colour-blind-safe palette, labelled axes, PDF + PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..theory.trajectory import atomic_write  # noqa: E402

# Okabe-Ito palette (colour-blind safe), one colour per rule family
PALETTE = {
    "bp": "#000000",
    "fa": "#E69F00",
    "dfa": "#56B4E9",
    "kp": "#009E73",
    "sign": "#F0E442",
    "wm": "#0072B2",
    "ld-fixed": "#D55E00",
    "ld-adapting": "#CC79A7",
}

RC = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9,
    "legend.frameon": False,
    "legend.fontsize": 7,
}


def figure(ncols=1, nrows=1, width=3.3, height=2.6):
    """A new figure in the paper style: width and height per panel, in inches."""
    plt.rcParams.update(RC)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             constrained_layout=True, squeeze=False)
    return fig, axes.ravel()


def save(fig, out_dir, name) -> list[Path]:
    """Write name.pdf and name.png atomically (temporary file, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return [atomic_write(out_dir / f"{name}.{ext}", lambda f, ext=ext: fig.savefig(f, format=ext),
                             binary=True) for ext in ("pdf", "png")]
    finally:
        plt.close(fig)
