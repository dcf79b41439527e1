"""Fashion-MNIST experiments: accuracy vs feedback rank for the MLP (figure d), the conv
net (e) and the vision transformer (f); the MLP's first-layer receptive fields (g),
alignment over training (h) and the results table — all from cached training runs
(figures/store.py), so a re-run only re-plots.

Each figure has a ``*_jobs(preset)`` list of the runs it reads (figures/runner.py computes
them in parallel) and draws from plain numbers (``draw_*``), which are also written as JSON.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from ..sim.train import TrainConfig, TrainingDiverged, build, train
from .runner import Job
from .store import Store
from .style import PALETTE, figure, legend_below, legend_right, rank_axis, save
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
# seed methods beside the ld rules: target propagation with learned inverses
TARGET_PROP = {"dtp (difference target prop.)": dict(rule="dtp"),
               "ddtp, k = 5 inverse iterations": dict(rule="ddtp", inverse_iters=5)}
RANKS = {"quick": [1, 2, 5, 10, 20], "full": [1, 2, 5, 10, 20, 50, 100], "tiny": [1, 10]}
SEEDS = {"quick": [0], "full": [0, 1, 2], "tiny": [0]}
MIN_SEEDS_FOR_BARS = 3  # error bars are drawn only from at least this many seeds
PRESET_SETTINGS = {"quick": {}, "full": {}, "tiny": dict(steps=4, train_subset=512, test_subset=500,
                                                               log_every=2)}
FIELD_RANKS = (1, 2, 10)
DIVERGED_GROWTH = 1.5  # a run whose final test loss exceeds chance level ln(classes) by this factor diverged

# quick preset's ViT: 7x7 patches (16 tokens + class token), 2.4x cheaper a step than 4x4 patches
# and, in 156 steps (10 000 images, 2 epochs), more accurate (bp 77.7% against 72.8%, 2026-12-02)
QUICK_VIT = {"width": 64, "depth": 2, "heads": 4, "patch": 7}
_LEARNED = ("ldfa (lowrank, svd init)", "ldfa-local (kp, svd init)")
_SMALL_CONV = dict(model="cnn", data="fashion-mnist", epochs=2, batch_size=128, optimizer="adam", lr=1e-3,
                   clip_rank=True)
SUITES = {
    "mlp": dict(settings=SETTINGS, variants=LD_VARIANTS, refs=REFERENCES, ranks=RANKS,
                quick={"train_subset": 16000},
                title="MLP 784-256-256-10, Fashion-MNIST, 2 epochs"),
    # quick: 8 000 training images, small models (CPU); full: all images, paper-scale models (GPU)
    "cnn": dict(settings={**_SMALL_CONV, "model_options": {"channels": (16, 32, 32), "hidden": 64}},
                full={"model_options": {}, "epochs": 5},
                quick={"train_subset": 8000, "model_options": {"channels": (8, 16, 16), "hidden": 64}},
                variants={k: LD_VARIANTS[k] for k in _LEARNED},
                refs={k: REFERENCES[k] for k in ("bp", "fa", "dfa")},
                ranks={"quick": [1, 4, 16], "full": [1, 2, 4, 8, 16, 32], "tiny": [1, 4]},
                title="conv net (3 conv + 2 fc), Fashion-MNIST"),
    "vit": dict(settings={**_SMALL_CONV, "model": "vit",
                          "model_options": {"width": 64, "depth": 2, "heads": 4, "patch": 4}},
                full={"model_options": {"width": 128, "depth": 4, "heads": 4, "patch": 4}, "epochs": 10},
                quick={"train_subset": 8000, "model_options": QUICK_VIT},
                variants={k: LD_VARIANTS[k] for k in _LEARNED},
                refs={k: REFERENCES[k] for k in ("bp", "fa", "dfa")},
                ranks={"quick": [1, 4, 16], "full": [1, 2, 4, 8, 16, 32], "tiny": [1, 4]},
                title="vision transformer, Fashion-MNIST"),
}
# estimated seconds of one run on one idle core (progress estimate only)
COST = {"mlp": {"quick": 3.5, "full": 7.0, "tiny": 1.5}, "cnn": {"quick": 8.0, "full": 300.0, "tiny": 1.5},
        "vit": {"quick": 12.0, "full": 900.0, "tiny": 2.0}}
_SLOW_RULES = {"dtp": 2.0, "ddtp": 4.0}


def run_config(preset: str, seed: int, suite: str, rule_kw: dict) -> dict:
    """The training configuration of one run of ``suite`` (settings, preset, rule, seed)."""
    spec = SUITES[suite]
    return {**spec["settings"], **spec.get(preset, {}), **PRESET_SETTINGS[preset], **rule_kw, "seed": seed}


def _label(suite: str, config: dict) -> str:
    parts = [suite, config["rule"]] + [f"{k}={config[k]}" for k in ("p_rule", "q_rule") if k in config]
    if "rank" in config:
        parts.append(f"r={config['rank']}")
    if config.get("strict"):
        parts.append("strict")
    return " ".join(parts + [f"seed {config['seed']}"])


def train_job(preset: str, seed: int, suite: str = "mlp", **rule_kw) -> Job:
    """The training run of ``suite`` with ``rule_kw`` (rule, rank, ...) and ``seed``."""
    config = run_config(preset, seed, suite, rule_kw)
    kind = "mlp-train" if suite == "mlp" else f"{suite}-train"
    cost = COST[suite][preset] * _SLOW_RULES.get(config["rule"], 1.0)
    return Job(kind, config, _train, label=_label(suite, config), cost=cost, fields=("test_acc", "history"))


def _train(config: dict, store: Store):
    """Train; result: test accuracy and loss, the logged history; arrays (MLP only): the first
    layer's weights. A run whose loss became NaN or infinite is stored as failed (not retried)."""
    try:
        out = train(TrainConfig(**config), progress=False)
    except TrainingDiverged as err:
        return {"status": "failed", "error": str(err), "test_acc": float("nan"), "history": []}
    result = {"status": "done", "test_acc": out["test_acc"], "test_loss": out["test_loss"],
              "history": out["history"], "seconds": out["seconds"]}
    if config["model"] != "mlp":
        return result
    return result, {"first_layer": _first_layer(out["model"])}


def _first_layer(model) -> np.ndarray:
    first = next(m for m in model.modules() if hasattr(m, "weight") and m.weight.dim() == 2)
    return first.weight.detach().cpu().numpy()


def init_job(preset: str, seed: int, **rule_kw) -> Job:
    """The MLP's first-layer weights at initialisation for the run ``train_job(preset, seed, **rule_kw)``."""
    config = run_config(preset, seed, "mlp", rule_kw)
    return Job("mlp-init", config, _init, label="init " + _label("mlp", config), cost=1.5)


def _init(config: dict, store: Store):
    """The model as training starts it (same seed, same construction), before any step."""
    model = build(TrainConfig(**config))[0]
    return {"shape": list(_first_layer(model).shape)}, {"first_layer": _first_layer(model)}


def run_cached(store: Store, preset: str, seed: int, suite: str = "mlp", **rule_kw) -> dict:
    """The stored entry of one training run (computed first if the store lacks it)."""
    return store.run(train_job(preset, seed, suite, **rule_kw))


def diverged(result: dict, classes: int = 10) -> bool:
    """True if the run failed (NaN/inf loss), logged a non-finite loss, or ended with a test loss
    above DIVERGED_GROWTH x ln(classes), the cross-entropy of a uniform guess (the loss blew up).

    The final test loss is measured on the whole test set; single-batch training losses are too
    noisy for this (a last, small batch can be 1.5x the first logged one in a healthy run)."""
    test_loss = result.get("test_loss", 0.0)
    if result.get("status") == "failed" or not math.isfinite(test_loss):
        return True
    if not all(math.isfinite(h["loss"]) for h in result.get("history", []) if "loss" in h):
        return True
    return test_loss > DIVERGED_GROWTH * math.log(classes)


def accuracies(store, preset, suite="mlp", **rule_kw) -> list[float]:
    return [run_cached(store, preset, s, suite, **rule_kw)["result"]["test_acc"] for s in SEEDS[preset]]


def _runs(store, preset, suite, **rule_kw) -> dict:
    """Accuracy (%) and divergence of every seed of one configuration."""
    results = [run_cached(store, preset, s, suite, **rule_kw)["result"] for s in SEEDS[preset]]
    return {"acc": [100 * r["test_acc"] for r in results], "diverged": [diverged(r) for r in results]}


def accuracy_vs_rank_jobs(preset: str, suite: str = "mlp") -> list[Job]:
    spec = SUITES[suite]
    jobs = [train_job(preset, s, suite, rank=r, **kw) for kw in spec["variants"].values()
            for r in spec["ranks"][preset] for s in SEEDS[preset]]
    return jobs + [train_job(preset, s, suite, **kw) for kw in spec["refs"].values() for s in SEEDS[preset]]


def accuracy_vs_rank(preset: str, out_dir, store: Store | None = None, suite: str = "mlp") -> list[Path]:
    """Figures d, e, f: test accuracy against r for the ld variants; other rules as lines."""
    store = store or Store()
    spec = SUITES[suite]
    ranks = spec["ranks"][preset]
    subset = run_config(preset, 0, suite, {"rule": "bp"}).get("train_subset")
    title = spec["title"] + (f", {subset:,} training images" if subset else "")
    data = {"title": title, "ranks": ranks, "seeds": SEEDS[preset], "classes": 10,
            "variants": {label: [_runs(store, preset, suite, rank=r, **kw) for r in ranks]
                         for label, kw in spec["variants"].items()},
            "refs": {name: _runs(store, preset, suite, **kw) for name, kw in spec["refs"].items()}}
    return save(draw_accuracy_vs_rank(data), out_dir, f"{suite}_accuracy_vs_rank", data)


def _mean(accs, bad):
    good = [a for a, b in zip(accs, bad) if not b and math.isfinite(a)]
    return (statistics.mean(good), min(good), max(good)) if good else (float("nan"),) * 3


def draw_accuracy_vs_rank(data: dict):
    """Mean test accuracy per rank (error bars min-max only from >= 3 seeds), other rules as
    horizontal lines, diverged runs as crosses on the lower edge."""
    ranks, n_seeds = data["ranks"], len(data["seeds"])
    bars = n_seeds >= MIN_SEEDS_FOR_BARS
    fig, (ax,) = figure(width=5.6, height=3.2)
    colors = ["#CC79A7", "#009E73", "#0072B2", "#D55E00"]
    handles, any_diverged = [], False
    for (label, runs), c in zip(data["variants"].items(), colors):
        stats = np.array([_mean(run["acc"], run["diverged"]) for run in runs])
        if bars:
            ax.errorbar(ranks, stats[:, 0], yerr=[stats[:, 0] - stats[:, 1], stats[:, 2] - stats[:, 0]],
                        fmt="o-", ms=3, color=c, capsize=2)
        else:
            ax.plot(ranks, stats[:, 0], "o-", ms=3, color=c)
        handles.append(Line2D([], [], color=c, marker="o", ms=3, label=label))
        bad = [r for r, run in zip(ranks, runs) if any(run["diverged"])]
        if bad:
            any_diverged = True
            ax.plot(bad, [0.03] * len(bad), "x", ms=6, mew=1.5, color=c, clip_on=False,
                    transform=ax.get_xaxis_transform())
    handles.append(Line2D([], [], color="none", label="other rules (any r):"))
    for name, run in data["refs"].items():
        mean = _mean(run["acc"], run["diverged"])[0]
        text = "diverged" if math.isnan(mean) else f"{mean:.1f}%"
        ls = "-" if name == "bp" else "--"
        if not math.isnan(mean):
            ax.axhline(mean, color=PALETTE[name], lw=0.9, ls=ls)
        handles.append(Line2D([], [], color=PALETTE[name], lw=0.9, ls=ls, label=f"{name} ({text})"))
    d = data["classes"]
    if min(ranks) <= d <= max(ranks):
        ax.axvline(d, color="grey", lw=0.6, ls=":")
        handles.append(Line2D([], [], color="grey", lw=0.6, ls=":", label=f"r = d = {d} classes"))
    if any_diverged:
        handles.append(Line2D([], [], color="grey", marker="x", ls="none", mew=1.5,
                              label="diverged (no accuracy)"))
    rank_axis(ax, ranks)
    seeds = (f"mean of {n_seeds} seeds, bars: min to max" if bars else
             f"{n_seeds} seed{'s' if n_seeds > 1 else ''}, no error bars")
    ax.set(xlabel=r"feedback rank $r$", ylabel="test accuracy (%)")
    fig.suptitle(f"{data['title']}\n({seeds})", fontsize=9)
    legend_right(ax, [Line2D([], [], color="none", label="ld variants:"), *handles])
    return fig


def receptive_fields_jobs(preset: str) -> list[Job]:
    seed = SEEDS[preset][0]
    rows = [kw for _, kw in _field_rows(preset)]
    return [train_job(preset, seed, **kw) for kw in rows] + [init_job(preset, seed, **kw) for kw in rows]


def _field_rows(preset: str) -> list[tuple[str, dict]]:
    ranks = [r for r in FIELD_RANKS if preset != "tiny" or r in RANKS["tiny"]]
    return [(f"ldfa r = {r}", dict(rule="ldfa", rank=r)) for r in ranks] + [("bp", dict(rule="bp"))]


def receptive_fields(preset: str, out_dir, store: Store | None = None, units: int = 6) -> list[Path]:
    """Figure g: what training changed in the first layer, W - W_0 (28 x 28 per hidden unit),
    for ldfa with r = 1, 2, 10 and bp; the ``units`` hidden units whose weights changed most."""
    store = store or Store()
    seed = SEEDS[preset][0]
    rows = []
    for label, kw in _field_rows(preset):
        entry = run_cached(store, preset, seed, **kw)
        if "arrays" not in entry:  # a diverged run has no weights to show
            rows.append({"label": label, "diverged": True})
            continue
        start = store.run(init_job(preset, seed, **kw))["arrays"]["first_layer"]
        delta = entry["arrays"]["first_layer"] - start
        norms = np.linalg.norm(delta, axis=1)
        top = np.argsort(-norms)[:units]
        rows.append({"label": label, "diverged": diverged(entry["result"]), "units": top.tolist(),
                     "change_norm": norms[top].tolist(), "fields": delta[top].reshape(-1, 28, 28)})
    fig = draw_receptive_fields(rows, units)
    summary = [{k: v for k, v in row.items() if k != "fields"} for row in rows]
    return save(fig, out_dir, "receptive_fields", {"rows": summary, "seed": seed})


def draw_receptive_fields(rows: list[dict], units: int = 6):
    """One row per run: the change of each shown unit's weights as a 28 x 28 image, one
    symmetric colour scale per row with its colour bar."""
    fig, axes = figure(ncols=units, nrows=len(rows), width=0.95, height=1.0)
    for i, row in enumerate(rows):
        row_axes = axes[i * units:(i + 1) * units]
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
        row_axes[0].set_ylabel(row["label"], fontsize=7)
        if "fields" not in row:
            row_axes[0].text(0.05, 0.5, "diverged: no weights", transform=row_axes[0].transAxes, fontsize=7)
            continue
        lim = float(np.abs(row["fields"]).max()) or 1.0
        for j, ax in enumerate(row_axes):
            im = ax.imshow(row["fields"][j], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"unit {row['units'][j]}", fontsize=6, pad=2)
        cb = fig.colorbar(im, ax=list(row_axes), shrink=0.9, aspect=8, pad=0.01)
        cb.set_label(r"$W - W_0$", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    fig.suptitle("first-layer weight change over training (units that changed most; red +, blue -)",
                 fontsize=8)
    return fig


ALIGNMENT_RUNS = {"fa": dict(rule="fa"), "dfa": dict(rule="dfa"), "ldfa r = 10": dict(rule="ldfa", rank=10),
                  "raf r = 10": dict(rule="ld", rank=10, p_rule="oja", q_rule="kp")}


def alignment_jobs(preset: str) -> list[Job]:
    return [train_job(preset, SEEDS[preset][0], **kw) for kw in ALIGNMENT_RUNS.values()]


def alignment(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """Figure h: angle between the delivered error and the bp error, per layer, over training."""
    store = store or Store()
    runs = {}
    for label, kw in ALIGNMENT_RUNS.items():
        result = run_cached(store, preset, SEEDS[preset][0], **kw)["result"]
        hist = result["history"]
        runs[label] = {"steps": [h["step"] for h in hist], "diverged": diverged(result),
                       **{layer: [h.get(f"{layer}/angle_delta", float("nan")) for h in hist]
                          for layer in ("layers.1", "layers.2")}}
    data = {"runs": runs, "seed": SEEDS[preset][0]}
    return save(draw_alignment(data), out_dir, "alignment", data)


def draw_alignment(data: dict):
    colors = {"fa": PALETTE["fa"], "dfa": PALETTE["dfa"], "ldfa r = 10": "#CC79A7", "raf r = 10": "#0072B2"}
    fig, axes = figure(ncols=2, width=3.2, height=2.6)
    handles = []
    for label, run in data["runs"].items():
        for ax, layer in zip(axes, ("layers.1", "layers.2")):
            ax.plot(run["steps"], run[layer], color=colors[label])
        handles.append(Line2D([], [], color=colors[label],
                              label=label + (" (diverged)" if run["diverged"] else "")))
    for ax, name in zip(axes, ("error reaching hidden layer 1", "error reaching hidden layer 2")):
        ax.axhline(90, color="grey", lw=0.6, ls=":")
        ax.set(xlabel="training step", ylabel="angle to the bp error (°)", title=name, ylim=(0, 100))
    handles.append(Line2D([], [], color="grey", lw=0.6, ls=":", label="90°: orthogonal to the bp error"))
    legend_below(fig, handles, ncol=3, title=f"seed {data['seed']}")
    return fig


def _table_rows() -> list[tuple[str, dict]]:
    rows = [(name, kw) for name, kw in REFERENCES.items()]
    rows += [(f"{label}, r = 10", dict(rank=10, **kw)) for label, kw in LD_VARIANTS.items()]
    return rows + list(TARGET_PROP.items())


def table_jobs(preset: str) -> list[Job]:
    return [train_job(preset, s, **kw) for _, kw in _table_rows() for s in SEEDS[preset]]


def table(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """The results table (markdown, CSV, LaTeX): every number read from the store; a row with
    diverged seeds says so (their accuracy is left out of mean, min and max)."""
    store = store or Store()
    cells = []
    for label, kw in _table_rows():
        runs = _runs(store, preset, "mlp", **kw)
        mean, lo, hi = _mean(runs["acc"], runs["diverged"])
        bad = sum(runs["diverged"])
        if bad:
            label += f" (diverged: {bad} of {len(runs['acc'])} seeds)"
        cells.append([label, mean, lo, hi, len(runs["acc"])])
    return write_table(out_dir, "mlp_fashion_table", ["rule", "test accuracy (mean)", "min", "max", "seeds"],
                       cells, ["{}", "{:.1f}%", "{:.1f}%", "{:.1f}%", "{}"])
