"""`ldfa sweep CONFIG`: a grid of training runs, one result per run in the results store.

    {"base": {"model": "mlp", "hidden": [256, 256], "epochs": 2},
     "grid": {"rule": ["bp", "fa", "dfa"], "seed": [0, 1, 2]},
     "include": [{"rule": "ld", "rank": 10, "p_rule": "oja", "q_rule": "kp", "seed": 0}]}

Every grid point is validated before anything runs. Runs already in the store are not
repeated, so a sweep that was killed resumes where it stopped; a run whose loss diverged
is stored as failed (and not retried unless asked). Runs go to a local process pool or,
through submitit, to a SLURM cluster (or submitit's local executor).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

from ..theory.errors import ConfigError
from .store import Store

KIND = "sweep-train"


def load_config(path) -> dict:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep config {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"sweep config {path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or not ({"grid", "include"} & set(config)):
        raise ConfigError(f"sweep config {path}: needs a 'grid' object and/or an 'include' list")
    unknown = set(config) - {"base", "grid", "include", "store", "workers"}
    if unknown:
        raise ConfigError(f"sweep config {path}: unknown key(s) {sorted(unknown)}; allowed: base, grid, "
                          "include, store, workers")
    return config


def expand(config: dict) -> list[dict]:
    """Every run of the sweep as a TrainConfig dict, each validated now (before any compute)."""
    from ..sim.train import TrainConfig

    allowed = {f.name for f in fields(TrainConfig)}
    base, grid = dict(config.get("base", {})), dict(config.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid[{key!r}] = {values!r}: must be a non-empty list")
    runs = [{**base, **dict(zip(grid, combo))} for combo in itertools.product(*grid.values())] if grid else []
    runs += [{**base, **extra} for extra in config.get("include", [])]
    for run in runs:
        bad = set(run) - allowed
        if bad:
            raise ConfigError(f"unknown training option(s) {sorted(bad)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        try:
            TrainConfig(**run)
        except TypeError as err:
            raise ConfigError(f"bad run {run}: {err}") from None
    return runs


def run_one(store_root: str, config: dict, retry_failed: bool = False) -> dict:
    """Train ``config`` unless the store has it; a diverged run is stored as failed."""
    import torch

    from ..sim.train import TrainConfig, TrainingDiverged, train

    torch.set_num_threads(1)
    store = Store(store_root)
    key = store.key(KIND, config)
    entry = store.get(key)
    if entry is not None and not (retry_failed and entry["result"].get("status") == "failed"):
        return {"key": key, "cached": True, **entry["result"]}
    try:
        out = train(TrainConfig(**config), progress=False)
        result = {"status": "done", "test_loss": out["test_loss"], "steps": out["steps"],
                  "seconds": out["seconds"], **({"test_acc": out["test_acc"]} if "test_acc" in out else {})}
    except TrainingDiverged as err:
        result = {"status": "failed", "error": str(err)}
    store.put(key, KIND, config, result)
    return {"key": key, "cached": False, **result}


def sweep(config: dict, store_root="runs/store", workers: int = 2, executor: str = "local",
          retry_failed: bool = False, folder="runs/submitit", progress=print) -> list[dict]:
    """Run every grid point (validated first); returns one summary row per run."""
    runs = expand(config)
    if executor not in ("local", "slurm", "submitit-local"):
        raise ConfigError(f"executor {executor!r}; allowed: local, slurm, submitit-local")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}: must be a positive integer")
    Path(store_root).mkdir(parents=True, exist_ok=True)
    results = []
    if executor == "local":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_one, str(store_root), run, retry_failed) for run in runs]
            for i, fut in enumerate(futures):
                results.append(fut.result())
                if progress:
                    progress(_line(i, len(runs), runs[i], results[-1]))
    else:
        try:
            import submitit
        except ImportError:
            raise ConfigError("executor slurm needs submitit: pip install submitit") from None
        ex = (submitit.AutoExecutor(folder=folder, cluster="slurm") if executor == "slurm"
              else submitit.LocalExecutor(folder=folder))
        jobs = [ex.submit(run_one, str(Path(store_root).resolve()), run, retry_failed) for run in runs]
        for i, job in enumerate(jobs):
            results.append(job.result())
            if progress:
                progress(_line(i, len(runs), runs[i], results[-1]))
    return results


def _line(i, n, run, result) -> str:
    what = ", ".join(f"{k}={v}" for k, v in run.items() if k in ("rule", "rank", "p_rule", "q_rule", "seed"))
    if "test_acc" in result:
        score = f"test_acc {result['test_acc']:.4f}"
    else:
        score = f"test_loss {result['test_loss']:.4g}" if "test_loss" in result else result["status"]
    return f"[{i + 1}/{n}] {what}: {score}{' (cached)' if result['cached'] else ''}"
