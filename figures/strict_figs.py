"""The strict bottleneck against the default one: test accuracy against the feedback rank r.

Default ld bottlenecks every nn.Linear / nn.Conv2d, but the skip connections of a residual
network still carry the full error to earlier blocks. With ``strict=True`` (sim/strict.py)
an error boundary of rank r sits at every block input, so no path between blocks carries
more than r numbers per token (ViT) or per position (ResNet). Both are trained with the
ldfa preset on Fashion-MNIST, beside bp.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from . import mlp_figs
from .runner import Job
from .store import Store
from .style import PALETTE, figure, legend_below, rank_axis, save

RANKS = {"quick": [1, 4, 16], "full": [1, 2, 4, 8, 16, 32], "tiny": [1, 4]}
# the residual conv net (sim/models.py ResNet): stem conv, 2x2 max-pool, residual blocks, mean pool
RESNET = dict(model="resnet", data="fashion-mnist", epochs=2, batch_size=128, optimizer="adam", lr=1e-3,
              clip_rank=True, model_options={"width": 16, "depth": 2})
RESNET_PRESET = {"quick": {"train_subset": 8000, "model_options": {"pool": 4}},
                 "full": {"model_options": {"width": 32, "depth": 4}, "epochs": 5},
                 "tiny": mlp_figs.PRESET_SETTINGS["tiny"]}
RESNET_COST = {"quick": 11.0, "full": 400.0, "tiny": 2.0}
MODES = {"default bottleneck (layers only)": False, "strict bottleneck (every block boundary)": True}


def _resnet_job(preset: str, seed: int, **rule_kw) -> Job:
    config = {**RESNET, **RESNET_PRESET[preset], **rule_kw, "seed": seed}
    if "model_options" in RESNET_PRESET[preset]:
        config["model_options"] = {**RESNET["model_options"], **RESNET_PRESET[preset]["model_options"]}
    return Job("resnet-train", config, mlp_figs._train, label=mlp_figs._label("resnet", config),
               cost=RESNET_COST[preset], fields=("test_acc", "history"))


def _job(model: str, preset: str, seed: int, **rule_kw) -> Job:
    if model == "vit":  # the same runs as the ViT accuracy-vs-rank figure (shared store entries)
        return mlp_figs.train_job(preset, seed, "vit", **rule_kw)
    return _resnet_job(preset, seed, **rule_kw)


def _variants(preset: str):
    for model in ("vit", "resnet"):
        for strict in MODES.values():
            for r in RANKS[preset]:
                yield model, dict(rule="ldfa", rank=r, **({"strict": True} if strict else {}))
        yield model, dict(rule="bp")


def strict_bottleneck_jobs(preset: str) -> list[Job]:
    return [_job(model, preset, s, **kw) for model, kw in _variants(preset) for s in mlp_figs.SEEDS[preset]]


def _accuracy(store: Store, model: str, preset: str, **kw) -> dict:
    results = [store.run(_job(model, preset, s, **kw))["result"] for s in mlp_figs.SEEDS[preset]]
    return {"acc": [100 * r["test_acc"] for r in results],
            "diverged": [mlp_figs.diverged(r) for r in results]}


def strict_bottleneck(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """Test accuracy against r, default vs strict bottleneck, for the ViT and the ResNet."""
    store = store or Store()
    ranks = RANKS[preset]
    data = {"ranks": ranks, "seeds": mlp_figs.SEEDS[preset], "panels": {}}
    for model in ("vit", "resnet"):
        data["panels"][model] = {
            "modes": {label: [_accuracy(store, model, preset, rule="ldfa", rank=r,
                                        **({"strict": True} if strict else {})) for r in ranks]
                      for label, strict in MODES.items()},
            "bp": _accuracy(store, model, preset, rule="bp"),
            "title": _title(model, _job(model, preset, 0, rule="bp").config)}
    return save(draw_strict_bottleneck(data), out_dir, "strict_bottleneck", data)


def _title(model: str, config: dict) -> str:
    o = config["model_options"]
    name = "vision transformer" if model == "vit" else "residual conv net"
    return f"{name} (width {o['width']}, {o['depth']} blocks)"


def _mean(run) -> float:
    good = [a for a, bad in zip(run["acc"], run["diverged"]) if not bad and math.isfinite(a)]
    return float(np.mean(good)) if good else float("nan")


def draw_strict_bottleneck(data: dict):
    fig, axes = figure(ncols=2, width=3.4, height=2.8)
    styles = {label: (c, m) for label, c, m in zip(data["panels"]["vit"]["modes"], ("#0072B2", "#D55E00"),
                                                    ("o", "s"))}
    n = len(data["seeds"])
    for ax, panel in zip(axes, data["panels"].values()):
        for label, runs in panel["modes"].items():
            c, m = styles[label]
            ax.plot(data["ranks"], [_mean(run) for run in runs], marker=m, ms=4, color=c, ls="-")
        bp = _mean(panel["bp"])
        if math.isfinite(bp):
            ax.axhline(bp, color=PALETTE["bp"], lw=0.9)
        rank_axis(ax, data["ranks"])
        ax.set(title=panel["title"], xlabel=r"feedback rank $r$")
    axes[0].set_ylabel("test accuracy (%)")
    handles = [Line2D([], [], color=c, marker=m, ms=4, label=f"ldfa, {label}")
               for label, (c, m) in styles.items()]
    handles.append(Line2D([], [], color=PALETTE["bp"], lw=0.9, label="bp"))
    fig.suptitle(f"Fashion-MNIST, {n} seed{'s' if n > 1 else ''}" + ("" if n > 1 else ", no error bars"),
                 fontsize=9)
    legend_below(fig, handles, ncol=3)
    return fig
