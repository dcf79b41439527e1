"""Trajectories: time series of measures, written as CSV or JSON and plotted as PNG."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Trajectory:
    """t (in units of τ) and one array per measure (loss, mode_α, angle_l, overlap_l, ...)."""

    t: np.ndarray
    series: dict
    config: dict
    kind: str = "matrix"
    final: dict = field(default_factory=dict)
    teacher: tuple | None = None

    def __getitem__(self, key) -> np.ndarray:
        return self.series[key]

    def columns(self) -> list[str]:
        return ["t", *self.series]

    def to_csv(self, path) -> Path:
        rows = [self.columns()] + [[self.t[i], *(self.series[k][i] for k in self.series)]
                                   for i in range(len(self.t))]
        return atomic_write(path, lambda f: csv.writer(f).writerows(rows))

    def to_json(self, path) -> Path:
        data = {"kind": self.kind, "config": self.config, "t": self.t.tolist(),
                "series": {k: np.asarray(v).tolist() for k, v in self.series.items()}}
        return atomic_write(path, lambda f: json.dump(data, f, indent=1))

    @classmethod
    def from_json(cls, path) -> "Trajectory":
        data = json.loads(Path(path).read_text())
        return cls(np.array(data["t"]), {k: np.array(v) for k, v in data["series"].items()},
                   data["config"], data.get("kind", "matrix"))

    def plot(self, path, title: str | None = None) -> Path:
        """Loss (log scale), mode strengths against the teacher's s_α, and feedback measures."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        extra = [k for k in self.series if k.startswith(("angle_", "overlap_"))]
        ncols = 3 if extra else 2
        fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4), constrained_layout=True)
        axes[0].semilogy(self.t, self.series["loss"], color="black")
        axes[0].set(xlabel="time t (units of τ)", ylabel="loss ½‖E‖²", title="loss")
        colors = plt.get_cmap("viridis")
        modes = [k for k in self.series if k.startswith("mode_")]
        for i, k in enumerate(modes):
            c = colors(i / max(1, len(modes) - 1))
            axes[1].plot(self.t, self.series[k], color=c, label=f"α={k[5:]}")
            s = self.config.get("spectrum", [])
            if i < len(s):
                axes[1].axhline(s[i], color=c, lw=0.6, ls=":")
        axes[1].set(xlabel="time t (units of τ)", ylabel="mode strength u_α",
                    title="modes (dotted: teacher s_α)")
        axes[1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside data
        if extra:
            ax = axes[2]
            twin = None
            for k in extra:
                if k.startswith("angle_"):
                    ax.plot(self.t, self.series[k], label=f"∠(B, Wᵀ) layer {k[6:]}")
                else:
                    twin = twin or ax.twinx()
                    twin.plot(self.t, self.series[k], ls="--", label=f"P overlap layer {k[8:]}")
                    twin.set(ylabel="overlap with top-r error subspace", ylim=(-0.05, 1.05))
            ax.set(xlabel="time t (units of τ)", ylabel="angle (degrees)", title="feedback")
            handles = ax.get_legend_handles_labels()[0]
            handles += twin.get_legend_handles_labels()[0] if twin else []
            ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper center",
                      bbox_to_anchor=(0.5, -0.22))  # below the axes, off the data
        if title:
            fig.suptitle(title, fontsize=10)
        try:
            return atomic_write(path, lambda f: fig.savefig(f, dpi=130, format="png"), binary=True)
        finally:
            plt.close(fig)


def atomic_write(path, write, binary: bool = False) -> Path:
    """Write through a temporary file in the same folder, then rename: never a half file.

    The file gets the permissions a plain open() would give (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
