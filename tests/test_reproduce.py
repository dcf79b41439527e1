"""`ldfa reproduce`: the published CIFAR ViT experiment, checked end to end on a tiny generated
CIFAR-format data set (the standard python pickle batches), with a kill and a resume."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ldfa.cli import main
from ldfa.figures import reproduce as rp
from ldfa.sim.augment import augment, random_crop
from ldfa.sim.schedule import lambda_lr, lr_factor
from ldfa.sim.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_cifar(root: Path, n_train: int = 400, n_test: int = 100, seed: int = 0) -> Path:
    """cifar-10-batches-py as the CIFAR site ships it: data_batch_1..5, test_batch, batches.meta,
    each a pickled dict (bytes keys; b'data' uint8 N x 3072, b'labels' a list of ints)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    protos = rng.integers(0, 256, (10, 3072))

    def batch(n, name):
        y = rng.integers(0, 10, n)
        x = np.clip(0.6 * protos[y] + 0.4 * rng.integers(0, 256, (n, 3072)), 0, 255).astype(np.uint8)
        return {b"batch_label": name.encode(), b"labels": y.tolist(), b"data": x,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5, f"training batch {i} of 5"), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, "testing batch 1 of 1"), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{k}".encode() for k in range(10)],
                     b"num_cases_per_batch": n_train // 5, b"num_vis": 3072}, f)
    return root


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"))


# ----------------------------------------------------------------------------- pieces


def test_schedule_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_factor(5, total, warm) == pytest.approx(0.5)
    assert lr_factor(10, total, warm) == pytest.approx(1.0)
    assert lr_factor(55, total, warm) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(100, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, total, 0, "constant") == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = lambda_lr(opt, total, warm)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2 * lr_factor(t, total, warm) for t in range(1, total + 1)])


def test_augment_seeded_and_a_true_crop_of_the_padded_image():
    x = torch.randn(16, 3, 32, 32)
    a, b = augment(x, "crop-flip", seed=3, step=7), augment(x, "crop-flip", seed=3, step=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, "crop-flip", seed=3, step=8))
    fill = [-1.0, 0.5, 2.0]
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, gen, padding=4, fill=fill)
    padded = torch.tensor(fill).reshape(1, 3, 1, 1).expand(16, 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    for n in range(16):  # every output is one 32x32 window of its padded image
        hits = [(i, j) for i in range(9) for j in range(9)
                if torch.equal(out[n], padded[n, :, i:i + 32, j:j + 32])]
        assert hits, f"image {n} is not a window of the padded image"
    flipped = augment(x, "flip", seed=0, step=1)
    same = [torch.equal(flipped[n], x[n]) for n in range(16)]
    assert all(s or torch.equal(flipped[n], x[n].flip(2)) for n, s in enumerate(same))
    assert 0 < sum(same) < 16


def test_forward_macs_match_torch_flop_counter():
    """The cost estimate's MAC count against torch's FLOP counter on the real model (linear maps
    and the patch convolution; the two attention products are added by hand: 2·T²·w per block)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ldfa.sim import models

    o = rp.VIT
    model = models.build("vit", (3, 32, 32), 10, **o)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    counted = counter.get_total_flops() / 2 / 2  # FLOPs -> MACs, per image
    tokens = 65
    attention = o["depth"] * 2 * tokens * tokens * o["width"]
    macs = rp.forward_macs(o["width"], o["depth"], o["heads"], o["mlp_ratio"], o["patch"])
    assert macs - attention == counted
    cfg = rp.runs("cifar10", (16,), (0,))[0]
    est = rp.estimate(cfg)
    assert est["flops"] == 250 * (6 * macs * 50_000 + 2 * macs * 10_000)
    n = sum(p.numel() for p in model.parameters())
    assert abs(est["weights"] - n) / n < 0.01


def test_recipe_is_the_published_one():
    cfgs = rp.runs("cifar10", rp.RANKS, rp.SEEDS, device="cpu")
    assert len(cfgs) == 3 * 6
    ld = [c for c in cfgs if c["rule"] != "bp"]
    for c in cfgs:
        cfg = TrainConfig(**c)
        assert (cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay) == (256, "adamw", 3e-4, 0.1)
        assert cfg.epochs == 250
        assert (cfg.schedule, cfg.warmup_epochs, cfg.clamp, cfg.augment) == ("cosine", 10, 10.0, "crop-flip")
        assert cfg.model_options == {"width": 384, "depth": 8, "heads": 8, "mlp_ratio": 2, "patch": 4}
    for c in ld:
        cfg = TrainConfig(**c)
        assert (cfg.fb_lr, cfg.fb_weight_decay, cfg.svd_reinit, cfg.rule) == (1.5e-2, 0.0, 0.5, "ldfa")
    assert sorted({c["rank"] for c in ld}) == [16, 24, 32, 48, 64]


def test_ld_ranks_per_layer(cifar):
    """qkv gets 3r, proj/fc1/fc2 r, the head min(r, classes), the patch embedding keeps bp."""
    from ldfa.sim.layers import feedback_layers
    from ldfa.sim.train import _network

    cfg = TrainConfig(**rp.runs("cifar10", (16,), (0,))[-1])
    model = _network(cfg, (3, 32, 32), 10, dict(cfg.model_options))
    ranks = {name: layer.P.shape[0] for name, layer in feedback_layers(model) if hasattr(layer, "P")}
    assert ranks["blocks.0.attn.qkv"] == 48 and ranks["blocks.0.attn.proj"] == 16
    assert ranks["blocks.7.mlp.fc1"] == 16 and ranks["blocks.7.mlp.fc2"] == 16 and ranks["head"] == 10
    assert not any(name.startswith("patch_embed") for name in ranks)


# ----------------------------------------------------------------------------- bad data


def _one_line_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ldfa: error:") and "\n" not in err
    return err


def test_missing_cifar_directory_is_refused(tmp_path, capsys):
    err = _one_line_error(["reproduce", "--data-root", str(tmp_path / "nowhere"), "--tiny", "--out",
                           str(tmp_path / "out")], capsys)
    assert "no such directory" in err
    assert not list((tmp_path / "out").rglob("*.ckpt")) and not (tmp_path / "out" / "store").exists()


def test_corrupt_cifar_directory_is_refused(tmp_path, capsys):
    root = write_tiny_cifar(tmp_path / "data", n_train=50, n_test=10)
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])  # truncated
    argv = ["reproduce", "--data-root", str(root), "--tiny", "--out"]
    err = _one_line_error([*argv, str(tmp_path / "out")], capsys)
    assert "test_batch" in err and "not a readable CIFAR batch" in err
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    err = _one_line_error([*argv, str(tmp_path / "o2")], capsys)
    assert "data_batch_3" in err and "file not found" in err


# ----------------------------------------------------------------------------- end to end


def _cli(cifar, out):
    return [sys.executable, "-m", "ldfa.cli", "reproduce", "--data-root", str(cifar), "--tiny",
            "--out", str(out), "--threads", "1", "--quiet"]


def _entries(store: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.glob("*.json")}


def test_tiny_end_to_end_kill_and_resume(cifar, tmp_path):
    """SIGKILL mid-run, run again: the finished runs come from the store untouched, the killed
    run resumes from its checkpoint and ends exactly where an uninterrupted run ends; the table
    and the figure hold every run."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # children of earlier tests count there too
    first = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_cli(cifar, out), cwd=ROOT, env=env, stdout=first, stderr=subprocess.STDOUT)
    store, ckpts = out / "store", out / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # one run stored, the next one checkpointed
        if list(store.glob("*.json")) and list(ckpts.glob("*.ckpt")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the kill: " + (tmp_path / "first.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first.close()
    before = _entries(store)
    killed = list(ckpts.glob("*.ckpt"))
    assert len(before) >= 1 and len(killed) == 1
    assert len(before) < 3

    done = subprocess.run(_cli(cifar, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    log = done.stdout
    assert "resuming from step" in log
    assert log.count("(stored before)") == len(before)
    after = _entries(store)
    assert len(after) == 3
    for name, value in before.items():  # finished runs were not recomputed
        assert after[name] == value
    assert not list(ckpts.glob("*.ckpt"))  # deleted once the run is stored

    resumed_key = killed[0].stem
    entry = json.loads((store / f"{resumed_key}.json").read_text())
    assert entry["result"]["resumed_from"] > 0
    fresh = train(TrainConfig(**entry["config"]), progress=False)  # uninterrupted, same configuration
    assert fresh["test_acc"] == entry["result"]["test_acc"]
    assert fresh["test_loss"] == entry["result"]["test_loss"]

    rows = list(csv.reader((out / "reproduce_cifar10.csv").open()))
    assert rows[0][:4] == ["feedback", "r", "seeds done", "test acc (mean)"]
    assert [r[:3] for r in rows[1:]] == [["bp", "—", "1/1"], ["ldfa", "2", "1/1"], ["ldfa", "4", "1/1"]]
    stored = sorted(round(100 * json.loads(p.read_text())["result"]["test_acc"], 1)
                    for p in store.glob("*.json"))
    assert sorted(float(r[3].rstrip("%")) for r in rows[1:]) == stored
    assert rows[1][6] == "91.3%"
    for ext in ("md", "tex", "png"):
        assert (out / f"reproduce_cifar10.{ext}").stat().st_size > 0
    assert "cost per run" in log and "GiB" in log
    assert elapsed < 600
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    assert cpu < 90  # both invocations together: the CI budget on a CPU


def test_report_marks_missing_runs(cifar, tmp_path):
    """Only what has finished is drawn: with an empty store every run is 'missing'."""
    out = tmp_path / "out"
    paths = rp.reproduce(str(cifar), tiny=True, out=out, report_only=True, log=lambda s: None)
    text = (out / "reproduce_cifar10.md").read_text()
    assert text.count("missing") == 3 * 3 and text.count("0/1") == 3
    assert any(p.suffix == ".png" for p in paths)
    assert math.isclose(rp.PUBLISHED["cifar10"][48], 0.913)


@pytest.mark.parametrize("bad, message", [
    ({"schedule": "linear"}, "schedule='linear'; allowed: constant, cosine"),
    ({"augment": "mixup"}, "augment='mixup'; allowed: none, flip, crop-flip"),
    ({"precision": "fp16"}, "precision='fp16'; allowed: fp32, bf16"),
    ({"warmup_epochs": -1}, "warmup_epochs=-1"),
    ({"fb_clamp": 0}, "fb_clamp=0"),
    ({"model": "mlp", "augment": "flip"}, "augment='flip' transforms images"),
])
def test_new_training_options_are_checked(bad, message):
    from ldfa.theory.errors import ConfigError

    base = {"model": "vit", "data": "cifar10"}
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{**base, **bad})
    assert message in str(err.value) and "\n" not in str(err.value)
