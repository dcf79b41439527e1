"""Sweeps survive SIGKILL, keep one result per run, and validate the whole grid first."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ldfa import cli
from ldfa.figures import sweep
from ldfa.figures.store import Store

BASE = {"model": "mlp", "hidden": [16], "data": "linear-teacher", "steps": 60, "batch_size": 32,
        "train_subset": 512}


def write(tmp_path, config):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(config))
    return path


def results(store_dir):
    return {p.name: p.stat().st_mtime_ns for p in store_dir.glob("sweep-train-*.json")}


def test_killed_sweep_resumes_without_losing_or_repeating_runs(tmp_path):
    config = {"base": BASE, "grid": {"rule": ["bp", "fa", "kp"], "seed": [0, 1, 2]}}
    path, store = write(tmp_path, config), tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "ldfa.cli", "sweep", str(path), "--store", str(store),
                             "--workers", "1"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(results(store)) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = results(store)
    assert 3 <= len(before) < 9, "the sweep should be killed midway"
    assert not [p for p in store.glob("*.json") if p.stat().st_size == 0]
    out = sweep.sweep(config, store, workers=2, progress=None)
    after = results(store)
    assert len(after) == 9 and len(out) == 9
    assert all(after[name] == mtime for name, mtime in before.items())  # finished runs not repeated
    assert sum(r["cached"] for r in out) == len(before)
    for r in out:
        assert Store(store).get(r["key"])["result"]["status"] == "done"


def test_diverged_run_is_marked_failed_and_not_retried(tmp_path):
    config = {"base": {**BASE, "optimizer": "sgd", "lr": 1e6}, "grid": {"seed": [0]}}
    first = sweep.sweep(config, tmp_path, workers=1, progress=None)
    assert first[0]["status"] == "failed" and "loss became" in first[0]["error"]
    again = sweep.sweep(config, tmp_path, workers=1, progress=None)
    assert again[0]["cached"] and again[0]["status"] == "failed"


def test_truncated_result_is_recomputed(tmp_path):
    config = {"base": BASE, "grid": {"seed": [0, 1]}}
    sweep.sweep(config, tmp_path, workers=1, progress=None)
    victim = sorted(tmp_path.glob("sweep-train-*.json"))[0]
    victim.write_text(victim.read_text()[:30])
    out = sweep.sweep(config, tmp_path, workers=1, progress=None)
    assert sorted(r["cached"] for r in out) == [False, True]
    assert json.loads(victim.read_text())["result"]["status"] == "done"


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    config = {"base": BASE, "grid": {"rule": ["bp", "fa"]}}
    out = sweep.sweep(config, tmp_path / "store", executor="submitit-local", folder=tmp_path / "logs",
                      progress=None)
    assert [r["status"] for r in out] == ["done", "done"] and len(results(tmp_path / "store")) == 2


@pytest.mark.parametrize("config,match", [
    ({"grid": {"rule": ["bp", "nope"]}}, "unknown rule 'nope'"),
    ({"grid": {"rule": ["fa"], "rank": [3]}}, "applies to ld rules only"),
    ({"grid": {"learning_rate": [0.1]}}, "unknown training option"),
    ({"grid": {"seed": []}}, "non-empty list"),
    ({"base": BASE}, "needs a 'grid'"),
    ({"base": {**BASE, "rule": "ld"}, "grid": {"rank": [1, 2, 3, 4, 10**9]}}, "run 5 of 5"),
    ({"base": {**BASE, "rule": "ld"}, "grid": {"rank": [1, 2, 3, 4, 17]}}, "rank r=17 exceeds layer"),
    ({"base": BASE, "grid": {"seed": [0, 1]}, "include": [{"model": "nope"}]}, "run 3 of 3"),
    ({"base": "mlp", "grid": {"seed": [0]}}, "'base' = 'mlp' must be an object"),
    ({"include": [1, 2]}, "'include' = [1, 2] must be a list of objects"),
])
def test_bad_sweep_config_fails_before_any_run(tmp_path, capsys, config, match):
    path = write(tmp_path, config)
    code = cli.main(["sweep", str(path), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0]
    assert not list((tmp_path / "store").glob("*.json")) if (tmp_path / "store").exists() else True
