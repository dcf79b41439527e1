"""`ldfa sweep CONFIG`: a grid of training runs, one result per run in the results store.

    {"base": {"model": "mlp", "hidden": [256, 256], "epochs": 2},
     "grid": {"rule": ["bp", "fa", "dfa"], "seed": [0, 1, 2]},
     "include": [{"rule": "ld", "rank": 10, "p_rule": "oja", "q_rule": "kp", "seed": 0}]}

Every grid point is validated before anything runs (types, ranges, the network with its
rank against each layer). Runs already in the store are not repeated, so a sweep that was
killed resumes where it stopped; a run whose loss diverged is stored as failed (and not
retried unless asked). Each run is claimed with a lock file while it is computed, so two
sweeps sharing a store compute it once; local workers die with the sweep's main process. A
full disk stops the sweep with one line, keeping every run stored before. Runs go to a local
process pool or, through submitit, to a SLURM cluster (or submitit's local executor).
See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

from ..theory.errors import ConfigError
from .store import Store

KIND = "sweep-train"
KEYS = ("base", "grid", "include", "store", "workers")
MAX_CONFIG_BYTES = 1 << 20
MAX_RUNS = 100_000
MAX_WORKERS = 256


def load_config(path) -> dict:
    """The sweep's JSON file, its structure checked (one-line ConfigError naming the problem)."""
    path = Path(path)
    where = f"sweep config {path}"
    try:
        if path.is_dir():
            raise ConfigError(f"{where}: is a folder, not a JSON file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes; not a sweep config")
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file (UTF-8 JSON expected)") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"{where}: not valid JSON ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(config, dict) or not ({"grid", "include"} & set(config)):
        raise ConfigError(f"{where}: needs a 'grid' object and/or an 'include' list")
    unknown = set(config) - set(KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(KEYS)}")
    if not isinstance(config.get("base", {}), dict):
        raise ConfigError(f"{where}: 'base' = {config['base']!r} must be an object of training options")
    if not isinstance(config.get("grid", {}), dict):
        raise ConfigError(f"{where}: 'grid' = {config['grid']!r} must be an object: option -> list of values")
    include = config.get("include", [])
    if not isinstance(include, list) or not all(isinstance(x, dict) for x in include):
        raise ConfigError(f"{where}: 'include' = {include!r} must be a list of objects of training options")
    if "store" in config and (not isinstance(config["store"], str) or not config["store"]):
        raise ConfigError(f"{where}: 'store' = {config['store']!r} must be a folder name")
    w = config.get("workers", 1)
    if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WORKERS:
        raise ConfigError(f"{where}: 'workers' = {w!r} must be an integer in 1..{MAX_WORKERS}")
    return config


def _describe(run: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in run.items() if k in ("model", "rule", "rank", "p_rule", "q_rule",
                                                                 "seed", "lr"))


def expand(config: dict) -> list[dict]:
    """Every run of the sweep as a TrainConfig dict, each validated now, before any compute:
    option names, types and ranges (TrainConfig), and the network itself (check_model: rank
    against each layer, model options, size). The first bad run is named in one line."""
    from ..sim.train import TrainConfig, check_model

    allowed = {f.name for f in fields(TrainConfig)}
    base, grid = dict(config.get("base", {})), dict(config.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid[{key!r}] = {values!r}: must be a non-empty list")
    size = 1
    for values in grid.values():
        size *= len(values)
    if size + len(config.get("include", [])) > MAX_RUNS:
        raise ConfigError(f"the sweep has {size + len(config.get('include', []))} runs; at most {MAX_RUNS}")
    runs = [{**base, **dict(zip(grid, combo))} for combo in itertools.product(*grid.values())] if grid else []
    runs += [{**base, **extra} for extra in config.get("include", [])]
    for i, run in enumerate(runs):
        bad = set(run) - allowed
        if bad:
            raise ConfigError(f"unknown training option(s) {sorted(bad)}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        where = f"run {i + 1} of {len(runs)} ({_describe(run)})"
        try:
            check_model(TrainConfig(**run))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
                from None
    return runs


@contextlib.contextmanager
def claim(root: Path, key: str):
    """Hold an exclusive lock on ROOT/.locks/KEY.lock while run KEY is looked up and computed,
    so that sweeps sharing a store compute each run once (the second waits, then finds it
    stored). The lock is an flock(2) on an open file: the kernel releases it when its process
    ends, however it ends, so a killed sweep leaves no stale claim. The file records the PID
    of the holder for inspection. Where flock is unavailable, runs are not claimed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no claim
        yield
        return
    folder = Path(root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # the PID note is informative; a full disk must not stop it
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def run_one(store_root: str, config: dict, retry_failed: bool = False) -> dict:
    """Train ``config`` unless the store has it; a diverged run is stored as failed."""
    import torch

    from ..sim.train import TrainConfig, TrainingDiverged, train

    torch.set_num_threads(1)
    store = Store(store_root)
    key = store.key(KIND, config)
    with claim(store.root, key):
        entry = store.get(key)
        if entry is not None and not (retry_failed and entry["result"].get("status") == "failed"):
            return {"key": key, "cached": True, **entry["result"]}
        try:
            out = train(TrainConfig(**config), progress=False)
            result = {"status": "done", "test_loss": out["test_loss"], "steps": out["steps"],
                      "seconds": out["seconds"]}
            if "test_acc" in out:
                result["test_acc"] = out["test_acc"]
        except TrainingDiverged as err:
            result = {"status": "failed", "error": str(err)}
        store.put(key, KIND, config, result)
    return {"key": key, "cached": False, **result}


PR_SET_PDEATHSIG = 1


def _worker_init(parent: int) -> None:
    """Tie a local worker's life to the sweep's main process ``parent``: on Linux the kernel
    sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); everywhere a watchdog thread
    exits once the parent is gone (the worker's parent PID changes)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watchdog").start()


def _watch_parent(parent: int, every: float = 1.0) -> None:
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(1)


class StoreFull(OSError):
    """A write to the store failed (e.g. no space left); the runs stored before are kept."""


def _stop(err: OSError, store_root, done: int) -> StoreFull:
    reason = err.strerror or str(err)
    return StoreFull(err.errno or errno.EIO, f"{reason} while writing to the store {store_root}: sweep "
                     f"stopped; the {done} run(s) finished before are kept, the rest are not marked done; "
                     "free space and run the sweep again to compute only what is missing")


def sweep(config: dict, store_root="runs/store", workers: int = 2, executor: str = "local",
          retry_failed: bool = False, folder="runs/submitit", progress=print) -> list[dict]:
    """Run every grid point (validated first); returns one summary row per run."""
    runs = expand(config)
    if executor not in ("local", "slurm", "submitit-local"):
        raise ConfigError(f"executor {executor!r}; allowed: local, slurm, submitit-local")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers={workers!r}: must be an integer in 1..{MAX_WORKERS}")
    root = Path(store_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"store {root}: exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"store {root}: cannot create the folder ({err.strerror or err})") from None
    results = []
    if executor == "local":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(run_one, str(store_root), run, retry_failed) for run in runs]
            for i, fut in enumerate(futures):
                try:
                    results.append(fut.result())
                except OSError as err:
                    pool.shutdown(wait=True, cancel_futures=True)
                    done = sum(f.done() and not f.cancelled() and f.exception() is None for f in futures)
                    raise _stop(err, store_root, done) from None
                except BaseException:  # any other failure (or Ctrl-C): queued runs are not started
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
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
