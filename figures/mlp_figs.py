"""Fashion-MNIST experiments: accuracy vs feedback rank for the MLP (figure d), the conv
net (e) and the vision transformer (f); the MLP's first-layer receptive fields (g),
alignment over training (h) and the results table — all from cached training runs
(figures/store.py), so a re-run only re-plots.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from ..sim.train import TrainConfig, TrainingDiverged, train
from .store import Store
from .style import PALETTE, figure, save
from .tables import write_table

SETTINGS = dict(model="mlp", hidden=(256, 256), data="fashion-mnist", epochs=2, batch_size=128,
                optimizer="adam", lr=1e-3, model_options={"activation": "tanh"})
REFERENCES = {"bp": dict(rule="bp"), "fa": dict(rule="fa"), "dfa": dict(rule="dfa"),
              "kp": dict(rule="kp"), "wm": dict(rule="wm"), "sign": dict(rule="sign")}
LD_VARIANTS = {
    "ldfa (lowrank, svd init)": dict(rule="ldfa"),
    "ldfa-local (kp, svd init)": dict(rule="ldfa-local"),
    "raf (oja P, kp Q)": dict(rule="ld", p_rule="oja", q_rule="kp"),
    "fixed P, Q": dict(rule="ld", p_rule="fixed", q_rule="fixed"),
}
# seed methods beside the ld rules (issue 7): target propagation with learned inverses
TARGET_PROP = {"dtp (difference target prop.)": dict(rule="dtp"),
               "ddtp, k = 5 inverse iterations": dict(rule="ddtp", inverse_iters=5)}
RANKS = {"quick": [1, 2, 5, 10, 20], "full": [1, 2, 5, 10, 20, 50, 100], "tiny": [1, 10]}
SEEDS = {"quick": [0], "full": [0, 1, 2], "tiny": [0]}
PRESET_SETTINGS = {"quick": {}, "full": {}, "tiny": dict(steps=4, train_subset=512, test_subset=500,
                                                               log_every=2)}
FIELD_RANKS = (1, 2, 10)

_LEARNED = ("ldfa (lowrank, svd init)", "ldfa-local (kp, svd init)")
_SMALL_CONV = dict(model="cnn", data="fashion-mnist", epochs=2, batch_size=128, optimizer="adam", lr=1e-3,
                   clip_rank=True)
SUITES = {
    "mlp": dict(settings=SETTINGS, variants=LD_VARIANTS, refs=REFERENCES, ranks=RANKS,
                title="MLP 784-256-256-10, Fashion-MNIST, 2 epochs"),
    # quick: 10 000 training images, small models (CPU); full: all images, paper-scale models (GPU)
    "cnn": dict(settings={**_SMALL_CONV, "model_options": {"channels": (16, 32, 32), "hidden": 64}},
                full={"model_options": {}, "epochs": 5},
                quick={"train_subset": 10000},
                variants={k: LD_VARIANTS[k] for k in _LEARNED},
                refs={k: REFERENCES[k] for k in ("bp", "fa", "dfa")},
                ranks={"quick": [1, 4, 16], "full": [1, 2, 4, 8, 16, 32], "tiny": [1, 4]},
                title="conv net (3 conv + 2 fc), Fashion-MNIST"),
    "vit": dict(settings={**_SMALL_CONV, "model": "vit",
                          "model_options": {"width": 64, "depth": 2, "heads": 4, "patch": 4}},
                full={"model_options": {"width": 128, "depth": 4, "heads": 4, "patch": 4}, "epochs": 10},
                quick={"train_subset": 10000},
                variants={k: LD_VARIANTS[k] for k in _LEARNED},
                refs={k: REFERENCES[k] for k in ("bp", "fa", "dfa")},
                ranks={"quick": [1, 4, 16], "full": [1, 2, 4, 8, 16, 32], "tiny": [1, 4]},
                title="vision transformer, Fashion-MNIST"),
}


def run_cached(store: Store, preset: str, seed: int, suite: str = "mlp", **rule_kw) -> dict:
    """One training run of ``suite``; result: test accuracy and the logged history; arrays
    (MLP only): the first layer's weights, for receptive fields."""
    spec = SUITES[suite]
    config = {**spec["settings"], **spec.get(preset, {}), **PRESET_SETTINGS[preset], **rule_kw,
              "seed": seed}

    def compute():
        try:
            out = train(TrainConfig(**config), progress=False)
        except TrainingDiverged as err:  # stored as failed: plotted as a gap, not retried
            return {"status": "failed", "error": str(err), "test_acc": float("nan"), "history": []}
        result = {"test_acc": out["test_acc"], "test_loss": out["test_loss"], "history": out["history"],
                  "seconds": out["seconds"]}
        if suite != "mlp":
            return result
        first = next(m for m in out["model"].modules() if hasattr(m, "weight") and m.weight.dim() == 2)
        return result, {"first_layer": first.weight.detach().cpu().numpy()}

    return store.cached("mlp-train" if suite == "mlp" else f"{suite}-train", config, compute)


def accuracies(store, preset, suite="mlp", **rule_kw) -> list[float]:
    return [run_cached(store, preset, s, suite, **rule_kw)["result"]["test_acc"] for s in SEEDS[preset]]


def accuracy_vs_rank(preset: str, out_dir, store: Store | None = None, suite: str = "mlp") -> list[Path]:
    """Figures d, e, f: test accuracy against r for the ld variants; other rules as lines."""
    store = store or Store()
    spec = SUITES[suite]
    ranks = spec["ranks"][preset]
    fig, (ax,) = figure(width=4.6, height=3.2)
    colors = ["#CC79A7", "#009E73", "#0072B2", "#D55E00"]
    for (label, kw), c in zip(spec["variants"].items(), colors):
        means, spreads = [], []
        for r in ranks:
            accs = accuracies(store, preset, suite, rank=r, **kw)
            means.append(100 * statistics.mean(accs))
            spreads.append(100 * (max(accs) - min(accs)) / 2)
        ax.errorbar(ranks, means, yerr=spreads, fmt="o-", ms=3, color=c, label=label, capsize=2)
    handles = []
    for name, kw in spec["refs"].items():
        acc = 100 * statistics.mean(accuracies(store, preset, suite, **kw))
        handles.append(ax.axhline(acc, color=PALETTE[name], lw=0.9, ls="-" if name == "bp" else "--",
                                  label=f"{name} ({acc:.1f}%)"))
    ax.axvline(10, color="grey", lw=0.6, ls=":")
    ax.set(xscale="log", xlabel=r"feedback rank $r$ (dotted: $d$ = 10 classes)",
           ylabel="test accuracy (%)", title=spec["title"])
    lines = [h for h in ax.get_legend_handles_labels()[0] if h not in handles]
    first = ax.legend(handles=lines, loc="lower right", title="ld variants")
    ax.add_artist(first)
    ax.legend(handles=handles, loc="center right", title="other rules", ncol=2)
    return save(fig, out_dir, f"{suite}_accuracy_vs_rank")


def receptive_fields(preset: str, out_dir, store: Store | None = None, units: int = 6) -> list[Path]:
    """Figure g: first-layer weights of hidden units (28 x 28) for ldfa with r = 1, 2, 10 and bp."""
    store = store or Store()
    ranks = [r for r in FIELD_RANKS if preset != "tiny" or r in RANKS["tiny"]]
    rows = [(f"ldfa r = {r}", dict(rule="ldfa", rank=r)) for r in ranks] + [("bp", dict(rule="bp"))]
    fig, axes = figure(ncols=units, nrows=len(rows), width=0.9, height=0.95)
    for i, (label, kw) in enumerate(rows):
        entry = run_cached(store, preset, SEEDS[preset][0], **kw)
        if "arrays" not in entry:  # a diverged run has no weights to show
            continue
        W = entry["arrays"]["first_layer"]
        for j in range(units):
            ax = axes[i * units + j]
            img = W[j].reshape(28, 28)
            lim = np.abs(img).max()
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    return save(fig, out_dir, "receptive_fields")


def alignment(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """Figure h: angle between the delivered error and the bp error, per layer, over training."""
    store = store or Store()
    runs = {"fa": dict(rule="fa"), "dfa": dict(rule="dfa"), "ldfa r = 10": dict(rule="ldfa", rank=10),
            "raf r = 10": dict(rule="ld", rank=10, p_rule="oja", q_rule="kp")}
    fig, axes = figure(ncols=2, width=3.4)
    colors = {"fa": PALETTE["fa"], "dfa": PALETTE["dfa"], "ldfa r = 10": "#CC79A7", "raf r = 10": "#0072B2"}
    for label, kw in runs.items():
        hist = run_cached(store, preset, SEEDS[preset][0], **kw)["result"]["history"]
        steps = [h["step"] for h in hist]
        for ax, layer in zip(axes, ("layers.1", "layers.2")):
            ax.plot(steps, [h.get(f"{layer}/angle_delta", np.nan) for h in hist], color=colors[label],
                    label=label)
    for ax, name in zip(axes, ("error reaching hidden layer 1", "error reaching hidden layer 2")):
        ax.axhline(90, color="grey", lw=0.6, ls=":")
        ax.set(xlabel="training step", ylabel="∠(delivered δ, bp δ) (degrees)", title=name, ylim=(0, 100))
    axes[0].legend(loc="lower left")
    return save(fig, out_dir, "alignment")


def table(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """The results table (markdown, CSV, LaTeX): every number read from the store."""
    store = store or Store()
    rows = [(name, kw) for name, kw in REFERENCES.items()]
    rows += [(f"{label}, r = 10", dict(rank=10, **kw)) for label, kw in LD_VARIANTS.items()]
    rows += list(TARGET_PROP.items())
    cells = []
    for label, kw in rows:
        accs = [100 * a for a in accuracies(store, preset, **kw)]
        cells.append([label, statistics.mean(accs), min(accs), max(accs), len(accs)])
    return write_table(out_dir, "mlp_fashion_table", ["rule", "test accuracy (mean)", "min", "max", "seeds"],
                       cells, ["{}", "{:.1f}%", "{:.1f}%", "{:.1f}%", "{}"])
