"""Checkpoints resume bit-identically for every rule family, and the log then holds each row
once; NaN stops a run cleanly with a strict-JSON log; corrupt checkpoints and data files are
one-line errors."""

import gzip
import json

import pytest
import torch

from ldfa import cli
from ldfa.errors import ConfigError
from ldfa.sim import data as datasets
from ldfa.sim import train as training
from ldfa.sim.train import TrainConfig, TrainingDiverged, train

SMALL = dict(model="mlp", hidden=(16,), data="linear-teacher", steps=24, batch_size=32, log_every=4,
             optimizer="adam", lr=1e-2, train_subset=512)


@pytest.mark.parametrize("rule_kw", [dict(rule="bp"), dict(rule="fa"), dict(rule="dfa"), dict(rule="kp"),
                                     dict(rule="wm"), dict(rule="ld", rank=3, p_rule="oja", q_rule="kp"),
                                     dict(rule="ld", rank=2, p_rule="svd", q_rule="aligned"),
                                     dict(rule="ldfa", rank=3)])
def test_resume_is_bit_identical(tmp_path, monkeypatch, rule_kw):
    cfg = TrainConfig(**SMALL, **rule_kw)
    straight_log = tmp_path / "straight.jsonl"
    straight = train(cfg, progress=False, log_path=straight_log)["model"].state_dict()
    ckpt, log = tmp_path / "run.pt", tmp_path / "run.jsonl"
    calls = {"n": 0}
    original = training.loss_fn

    def crashing(out, y):  # the process "dies" in step 15, after logging step 12
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return original(out, y)

    monkeypatch.setattr(training, "loss_fn", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=5, log_path=log)
    monkeypatch.setattr(training, "loss_fn", original)
    assert training.read_checkpoint(ckpt)["step"] == 10
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [4, 8, 12]
    resumed = train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=5, log_path=log)
    for k, v in straight.items():
        assert torch.equal(resumed["model"].state_dict()[k], v), k
    assert [h["step"] for h in resumed["history"]] == [4, 8, 12, 16, 20, 24]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20, 24]  # step 12 once: cut back, then logged again
    same = [json.loads(line) for line in straight_log.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "time"} for r in same]


def test_nan_stops_the_run_and_keeps_the_log(tmp_path):
    cfg = TrainConfig(**{**SMALL, "lr": 1e6, "optimizer": "sgd", "log_every": 1})
    log = tmp_path / "log.jsonl"
    with pytest.raises(TrainingDiverged, match="loss became .* at step"):
        train(cfg, log_path=log, progress=False)
    def strict(token):
        raise ValueError(f"non-standard JSON {token}")

    rows = [json.loads(line, parse_constant=strict) for line in log.read_text().splitlines()]
    assert rows[-1]["status"] == "diverged" and len(rows) >= 2
    assert rows[-1]["loss"] in ("nan", "inf", "-inf")
    assert all(r["step"] == i + 1 for i, r in enumerate(rows))


def test_nan_through_the_cli(tmp_path, capsys):
    code = cli.main(["train", "--data", "linear-teacher", "--model", "mlp", "--hidden", "8", "--steps",
                     "30", "--optimizer", "sgd", "--lr", "1e6", "--log-every", "1", "--quiet",
                     "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("ldfa: stopped: loss became")


def test_corrupt_or_foreign_checkpoint(tmp_path):
    cfg = TrainConfig(**SMALL, rule="fa")
    ckpt = tmp_path / "run.pt"
    train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=5)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ConfigError, match="is corrupt"):
        train(cfg, progress=False, checkpoint=ckpt)
    ckpt.unlink()
    train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=5)
    with pytest.raises(ConfigError, match="another configuration"):
        train(TrainConfig(**SMALL, rule="bp"), progress=False, checkpoint=ckpt)


def test_corrupt_dataset_file(tmp_path):
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    images.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05"))
    with pytest.raises(datasets.DatasetError, match=str(images)):
        datasets.mnist(tmp_path, "test")


def test_repeatable_kernels_on_cuda_only():
    """On a CUDA device train() runs with cuDNN's deterministic algorithms and no autotuning,
    and the caller's settings come back afterwards, also after an error; on the CPU nothing is
    touched. (The flags can be read and set without a GPU; tests/test_cuda.py checks on a GPU
    that training then repeats bit for bit.)"""
    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        with training.repeatable_kernels("cpu"):
            assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        with training.repeatable_kernels("cuda:1"):
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        with pytest.raises(RuntimeError), training.repeatable_kernels("cuda"):
            raise RuntimeError("inside")
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = before
