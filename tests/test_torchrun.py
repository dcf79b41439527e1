"""torchrun with 2 CPU processes (gloo): one large run split over processes trains like one
process on the whole batch, because the feedback updates are averaged like gradients."""

import json
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["train", "--data", "linear-teacher", "--model", "mlp", "--hidden", "16", "--steps", "30",
        "--batch-size", "32", "--lr", "0.01", "--optimizer", "sgd", "--rule", "ld", "--rank", "3",
        "--p-rule", "oja", "--q-rule", "kp", "--quiet", "--threads", "1", "--name", "run", "--log-every", "1"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_torchrun_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "ldfa.cli", *ARGS, "--out", str(tmp_path / "one")], check=True,
                   env=env, capture_output=True, timeout=300)
    # torchrun as a module of this interpreter: the console script need not be on PATH
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, "-m", "ldfa.cli", *ARGS, "--out", str(tmp_path / "two")], check=True,
                   env=env, capture_output=True, timeout=300)
    one = json.loads((tmp_path / "one" / "run.summary.json").read_text())
    two = json.loads((tmp_path / "two" / "run.summary.json").read_text())
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "one" / "run.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]  # it learned
