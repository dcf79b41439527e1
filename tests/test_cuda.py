"""On a GPU: every rule computes on CUDA the gradients it computes on the CPU, training there is
repeatable from the same seed, and the step benchmark runs there in fp32 and bf16.

Skipped where torch sees no CUDA device (the continuous-integration machine has none);
bench/gpu_check.sh runs this file together with the GPU benchmarks. ``LDFA_TEST_DEVICE=cpu``
runs the same checks CPU against CPU, which exercises the tests themselves on any machine."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_sim_models_rules import MODELS, RULES

from ldfa.sim.layers import convert
from ldfa.sim.train import TrainConfig, repeatable_kernels, train

DEVICE = os.environ.get("LDFA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="no CUDA device")


def _draws_noise(rule: str, kw: dict) -> bool:
    """Rules that draw fresh noise on the device every step (the device's own random stream)."""
    return rule == "wm" or kw.get("q_rule") == "mirror" or kw.get("scaling") == "brsf"


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off, so that CUDA's fp32 products and convolutions round like the CPU's (~1e-6)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _step_grads(model, x, y) -> dict:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("rule,kw", RULES, ids=[r + str(sorted(k.items())) for r, k in RULES])
def test_device_gives_the_cpu_gradients(model_name, rule, kw):
    """The same converted network (weights and feedback matrices copied from the CPU) and batch:
    every parameter's gradient on the device equals the CPU's to float32 rounding."""
    torch.manual_seed(0)
    cpu = convert(MODELS[model_name](), rule, clip_rank=True, **kw)
    dev = copy.deepcopy(cpu).to(DEVICE)
    x, y = torch.randn(5, 1, 8, 8), torch.arange(5) % 4
    on_cpu = _step_grads(cpu, x, y)
    on_dev = _step_grads(dev, x.to(DEVICE), y.to(DEVICE))
    assert set(on_dev) == set(on_cpu)
    for name, g in on_cpu.items():
        assert torch.isfinite(on_dev[name]).all(), name
        if not _draws_noise(rule, kw):
            torch.testing.assert_close(on_dev[name], g, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("rule,kw", [("bp", {}), ("ld", dict(rank=2, p_rule="oja", q_rule="kp")),
                                     ("ldfa", dict(rank=2)), ("dfa", {})])
def test_conv_training_is_repeatable(rule, kw):
    """Twenty SGD steps of the conv net from the same seed, twice, with the settings train() uses
    on the device (repeatable_kernels): the same weights bit for bit (what the results store
    assumes of a device: its key names the device, not the run)."""
    def run():
        with repeatable_kernels(DEVICE):
            return steps()

    def steps():
        torch.manual_seed(0)
        model = convert(MODELS["cnn"](), rule, clip_rank=True, **kw).to(DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(DEVICE)), y.to(DEVICE)).backward()
            opt.step()
        return {n: p.detach().cpu() for n, p in model.state_dict().items()}

    first, second = run(), run()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_train_on_the_device_is_repeatable():
    """ldfa.sim.train on the device, twice with the same configuration: the same history (all
    but its wall-clock times)."""
    cfg = TrainConfig(model="mlp", hidden=(32,), data="random-teacher", rule="ld", rank=4,
                      steps=30, batch_size=32, log_every=10, device=DEVICE, train_subset=512,
                      test_subset=256)
    first, second = ([{k: v for k, v in row.items() if k != "time"} for row in run["history"]]
                     for run in (train(cfg, progress=False), train(cfg, progress=False)))
    assert len(first) == 3 and first == second


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_benchmark_runs_on_the_device(precision):
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_step.py"
    args = ["--device", DEVICE, "--models", "cnn", "--repeats", "2", "--steps", "2", "--precision", precision]
    res = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "floor: no input product" in res.stdout and f"device {DEVICE}" in res.stdout
