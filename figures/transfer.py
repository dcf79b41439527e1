"""TOAST beside linear probing and full fine-tuning: a vision transformer is
pre-trained with bp on Fashion-MNIST classes 0-4 (source), then adapted to classes 5-9
(target). Every run is cached in the results store; the pre-trained backbone is stored as
arrays with its run and written to a .pt file next to the store for the transfer runs.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from ..sim.toast import tuned_parameters
from ..sim.train import TrainConfig, save_state, train
from .mlp_figs import QUICK_VIT
from .runner import Job
from .store import Store
from .tables import write_table

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
VIT = dict(model="vit", data="fashion-mnist", batch_size=128, optimizer="adam",
           model_options={"width": 64, "depth": 2, "heads": 4, "patch": 4})
PRESET = {"quick": dict(train_subset=10000, pretrain_epochs=4, epochs=2, model_options=QUICK_VIT),
          "full": dict(train_subset=None, pretrain_epochs=10, epochs=5),
          "tiny": dict(train_subset=512, test_subset=500, steps=4, pretrain_epochs=1, epochs=1)}
SEEDS = {"quick": [0], "full": [0, 1, 2], "tiny": [0]}
SOURCE_LR = 1e-3
# estimated seconds of one run on one idle core (progress estimate only)
COST = {"source": {"quick": 22.0, "full": 600.0, "tiny": 3.0},
        "target": {"quick": 9.0, "full": 200.0, "tiny": 2.0}}
# learning rates: frozen-backbone methods train a few new, small-init parameters and take a
# larger step (chosen from {1e-3, 3e-3, 1e-2} in one quick run, see the README)
METHODS = {"linear probe": dict(transfer="probe", lr=1e-2),
           "TOAST (top-down attention steering)": dict(transfer="toast", lr=1e-2),
           "full fine-tuning": dict(transfer="finetune", lr=1e-3),
           "from scratch (no pre-training)": dict(lr=1e-3)}


def _settings(preset: str) -> tuple[dict, float]:
    p = dict(PRESET[preset])
    pre_epochs = p.pop("pretrain_epochs")
    if p.get("train_subset") is None:
        p.pop("train_subset")
    return {**VIT, **p}, pre_epochs


def _source_config(preset: str, seed: int) -> dict:
    settings, pre_epochs = _settings(preset)
    config = {**settings, "epochs": pre_epochs, "classes": SOURCE, "lr": SOURCE_LR, "seed": seed}
    if "steps" in config:
        config["steps"] *= 2
    return config


def source_job(preset: str, seed: int) -> Job:
    """Pre-training on the source classes with bp; arrays: the whole state dict."""
    return Job("transfer-source", _source_config(preset, seed), _pretrain,
               label=f"transfer source seed {seed}",
               cost=COST["source"][preset], fields=("test_acc",))


def _pretrain(config: dict, store: Store):
    out = train(TrainConfig(**config), progress=False)
    arrays = {k: v.detach().cpu().numpy() for k, v in out["model"].state_dict().items()}
    return {"test_acc": out["test_acc"], "seconds": out["seconds"]}, arrays


def _backbone_file(store: Store, key: str, entry: dict) -> Path:
    """The backbone as a .pt file next to the store (written from the entry if absent)."""
    path = store.root / "backbones" / f"{key}.pt"
    if not path.exists():
        save_state({k: torch.from_numpy(np.asarray(v)) for k, v in entry["arrays"].items()}, path)
    return path


def backbone(store: Store, preset: str, seed: int) -> tuple[Path, float, int]:
    """The source-task backbone file (written from the store), its source test accuracy and its
    number of parameters (all trained)."""
    job = source_job(preset, seed)
    misses = store.misses
    entry = store.run(job)
    key = store.key(job.kind, job.config)
    path = store.root / "backbones" / f"{key}.pt"
    if store.misses > misses and path.exists():  # recomputed: the file follows the entry
        path.unlink()
    path = _backbone_file(store, key, entry)
    size = sum(int(np.asarray(v).size) for v in entry["arrays"].values())
    return path, entry["result"]["test_acc"], size


def adapt_job(store: Store, preset: str, seed: int, method: str) -> Job:
    """One target-task run of ``method`` (a key of METHODS); its key names the source run."""
    settings, _ = _settings(preset)
    kw = dict(METHODS[method])
    needs = ()
    if "transfer" in kw:
        src = source_job(preset, seed)
        kw["backbone"] = store.key(src.kind, src.config)  # the cache key follows pre-training
        needs = (src,)
    config = {**settings, **kw, "classes": TARGET, "seed": seed}
    return Job("transfer-target", config, _adapt, label=f"transfer {method} seed {seed}",
               cost=COST["target"][preset], fields=("test_acc", "tuned"), needs=needs)


def _adapt(config: dict, store: Store) -> dict:
    run = dict(config)
    if "backbone" in config:
        entry = store.get(config["backbone"])
        if entry is None:
            raise RuntimeError(f"transfer run needs source run {config['backbone']} in the store first")
        run["backbone"] = str(_backbone_file(store, config["backbone"], entry))
    out = train(TrainConfig(**run), progress=False)
    return {"test_acc": out["test_acc"], "tuned": tuned_parameters(out["model"]), "seconds": out["seconds"]}


def adapt(store: Store, preset: str, seed: int, method: str) -> dict:
    """One target-task run of ``method`` (a key of METHODS); result: accuracy and tuned parameters."""
    return store.run(adapt_job(store, preset, seed, method))["result"]


def transfer_table_jobs(preset: str, store: Store) -> list[Job]:
    return [adapt_job(store, preset, s, m) for s in SEEDS[preset] for m in METHODS] + \
        [source_job(preset, s) for s in SEEDS[preset]]


def transfer_table(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """The transfer table: target accuracy and tuned parameters per method (markdown, CSV, LaTeX)."""
    store = store or Store()
    seeds = SEEDS[preset]
    sources = [backbone(store, preset, s) for s in seeds]
    source = [100 * acc for _, acc, _ in sources]
    rows = [[f"source task (classes 0-4), bp, lr {SOURCE_LR:g}", statistics.mean(source), min(source),
             max(source), sources[0][2], len(seeds)]]
    for method in METHODS:
        runs = [adapt(store, preset, s, method) for s in seeds]
        accs = [100 * r["test_acc"] for r in runs]
        rows.append([f"target (5-9): {method}, lr {METHODS[method]['lr']:g}", statistics.mean(accs),
                     min(accs), max(accs), runs[0]["tuned"], len(seeds)])
    return write_table(out_dir, "transfer_table",
                       ["run", "test accuracy (mean)", "min", "max", "tuned parameters", "seeds"], rows,
                       ["{}", "{:.1f}%", "{:.1f}%", "{:.1f}%", "{:,}", "{}"])
