"""One figure style for the paper: colour-blind-safe palette, labelled axes, legends outside
the data, rank axes ticked at the plotted ranks; PDF + PNG + the plotted numbers as JSON.

Every saved figure is checked for legends that cover plotted data (``legend_overlaps``); the
findings are kept in ``LAYOUT`` (figure name -> list of problems) and printed as a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from ..theory.trajectory import atomic_write  # noqa: E402
from .store import _plain as plain_json  # noqa: E402

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

LAYOUT: dict[str, list[str]] = {}  # figure name -> legends found over data when it was saved


def figure(ncols=1, nrows=1, width=3.3, height=2.6):
    """A new figure in the paper style: width and height per panel, in inches; panels aligned
    by constrained layout."""
    plt.rcParams.update(RC)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             layout="constrained", squeeze=False)
    return fig, axes.ravel()


def legend_right(ax, handles, title=None, **kw):
    """A legend outside the axes, to its right, top-aligned with it (constrained layout makes
    room; titles above the axes stay clear of it)."""
    return ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     title=title, **kw)


def legend_below(fig, handles, ncol=3, title=None, **kw):
    """The figure's legend outside every axes, below them."""
    return fig.legend(handles=handles, loc="outside lower center", ncol=ncol, title=title, **kw)


def rank_axis(ax, ranks, log=True, axis="x"):
    """Ticks at exactly the plotted ranks, labelled in plain numbers (no 10^k), no minor ticks."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if log:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(FixedLocator(list(ranks)))
    target.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{r:g}" for r in ranks]))
    target.set_minor_locator(NullLocator())
    lo, hi = min(ranks), max(ranks)
    pad = (hi / lo) ** 0.06 if log and hi > lo else None
    if pad:
        (ax.set_xlim if axis == "x" else ax.set_ylim)(lo / pad, hi * pad)


def _densify(pts: np.ndarray, step: float = 2.0) -> np.ndarray:
    """The polyline through ``pts`` (display pixels) sampled every ``step`` pixels."""
    out = [pts[:1]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(math.ceil(np.hypot(*(b - a)) / step)))
        out.append(a + (b - a) * np.linspace(0, 1, n + 1)[1:, None])
    return np.concatenate(out)


def _finite(pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, float).reshape(-1, 2)
    return pts[np.isfinite(pts).all(axis=1)]


def data_points(ax) -> list[tuple[str, np.ndarray]]:
    """Every drawn data point of ``ax`` in display pixels, lines sampled along their segments:
    Line2D data (through its own transform, so axhline/axvline count), collection offsets
    (scatter, markers) and paths (error bars, fills), patches (bars). Points the axes clip
    away are dropped."""
    box = ax.get_window_extent()
    found = []

    def keep(what, pts, clip=True):
        pts = _finite(pts)
        if clip and len(pts):
            pts = pts[(pts[:, 0] >= box.x0 - 0.5) & (pts[:, 0] <= box.x1 + 0.5)
                      & (pts[:, 1] >= box.y0 - 0.5) & (pts[:, 1] <= box.y1 + 0.5)]
        if len(pts):
            found.append((what, pts))

    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = _finite(line.get_transform().transform(np.asarray(line.get_xydata(), float)))
        if len(xy) == 0:
            continue
        connected = line.get_linestyle() not in ("None", "none", "", " ") and len(xy) > 1
        keep(f"line '{line.get_label()}'", _densify(xy) if connected else xy, line.get_clip_on())
    for coll in ax.collections:
        if not coll.get_visible():
            continue
        offsets = np.asarray(coll.get_offsets())
        if offsets.size:
            keep(f"markers '{coll.get_label()}'", coll.get_offset_transform().transform(offsets),
                 coll.get_clip_on())
        for path in coll.get_paths():
            if len(path.vertices):
                xy = _finite(coll.get_transform().transform(path.vertices))
                if len(xy):
                    keep(f"{type(coll).__name__} '{coll.get_label()}'", _densify(xy), coll.get_clip_on())
    for patch in ax.patches:
        if patch.get_visible():
            b = patch.get_window_extent()
            corners = np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]])
            keep(f"patch '{patch.get_label()}'", _densify(corners), patch.get_clip_on())
    return found


def legend_overlaps(fig) -> list[str]:
    """Every legend box (figure or axes legends) that covers a plotted point or line of any
    axes, measured with the renderer after layout; one line per (legend, artist)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [lg for lg in fig.findobj(Legend) if lg.get_visible()]
    problems = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        title = legend.get_title().get_text() or ", ".join(t.get_text() for t in legend.get_texts()[:2])
        for ax in fig.axes:
            for what, pts in data_points(ax):
                inside = ((pts[:, 0] > box.x0) & (pts[:, 0] < box.x1)
                          & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1))
                if inside.any():
                    problems.append(f"legend '{title}' covers {inside.sum()} px of {what} "
                                    f"in axes '{ax.get_title()}'")
        for text in _texts(fig):
            t = text.get_window_extent(renderer)
            if min(box.x1, t.x1) - max(box.x0, t.x0) > 0 and min(box.y1, t.y1) - max(box.y0, t.y0) > 0:
                problems.append(f"legend '{title}' covers the text '{text.get_text()[:40]}'")
    return problems


def _texts(fig) -> list:
    """Titles and annotations of the figure and its axes (the legends' own texts excluded)."""
    found = list(fig.texts) + ([fig._suptitle] if fig._suptitle is not None else [])
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title] + list(ax.texts)
    return [t for t in found if t.get_visible() and t.get_text()]


def save(fig, out_dir, name, data: dict | None = None) -> list[Path]:
    """Write name.pdf and name.png (and name.json with ``data``, the plotted numbers) atomically
    (temporary file, then rename), after checking that no legend covers data."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        LAYOUT[name] = legend_overlaps(fig)
        for problem in LAYOUT[name]:
            warnings.warn(f"{name}: {problem}", stacklevel=2)
        paths = [atomic_write(out_dir / f"{name}.{ext}", lambda f, ext=ext: fig.savefig(f, format=ext),
                              binary=True) for ext in ("pdf", "png")]
        if data is not None:
            text = json.dumps(data, indent=1, sort_keys=True, default=plain_json)
            paths.append(atomic_write(out_dir / f"{name}.json", lambda f: f.write(text + "\n")))
        return paths
    finally:
        plt.close(fig)


