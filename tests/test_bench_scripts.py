"""The benchmark scripts in bench/: bad options are refused in one line before anything is built,
the step benchmark runs end to end and prints every rule's ratio, and its two reference rows
compute what docs/benchmarks.md says they do (the floor: bp without its input products; bp
through ldfa's layers: bp's own gradients). Timings themselves are never asserted."""

import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=BENCH.parent)


@pytest.mark.parametrize("script, args, named", [
    ("bench_step.py", ["--repeats", "0"], "--repeats: 0 is out of range; allowed: 1.."),
    ("bench_step.py", ["--models", "cnn,vgg"], "--models: unknown model 'vgg'; allowed: mlp, cnn, resnet18"),
    ("bench_step.py", ["--threads", "0"], "--threads: 0 is out of range"),
    ("bench_step.py", ["--device", "gpu"], "--device: 'gpu'; allowed: cpu, cuda, cuda:N"),
    ("bench_memory.py", ["--size", "-3"], "--size: -3 is out of range"),
    ("bench_theory.py", ["--repeats", "two"], "--repeats: 'two' is not an integer"),
    ("bench_batched.py", ["--steps", "0"], "--steps: 0 is out of range"),
    ("bench_ode_vs_sim.py", ["--target", "0"], "--target: 0 is out of range; allowed: a finite number > 0"),
    ("bench_biotorch.py", ["--repeats", "0"], "--repeats: 0 is out of range"),
    ("profile_step.py", ["--rules", "floor,ld"], "--rules: 'ld' matches ld r=10 (oja, kp), ld r=10 (fixed"),
    ("profile_step.py", ["--rules", "nope"], "--rules: 'nope' matches no rule; allowed: bp; fa; dfa"),
])
def test_bad_option_is_refused_in_one_line(script, args, named):
    res = _run(script, *args, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""  # refused before any header or timing is printed
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    res = _run("bench_step.py", "--device", "cuda", timeout=120)
    assert res.returncode == 2 and "CUDA is not available on this machine; use cpu" in res.stderr


def test_step_benchmark_prints_every_rule():
    """A short run of the conv net in channels-last layout: one table row per rule, bp at exactly 1,
    every ratio finite and positive."""
    res = _run("bench_step.py", "--models", "cnn", "--repeats", "2", "--steps", "1", "--threads", "1",
               "--channels-last")
    assert res.returncode == 0, res.stderr
    assert "channels-last" in res.stdout.splitlines()[0]
    bench_step = _import("bench_step")
    rows = {}
    for line in res.stdout.splitlines():
        m = re.match(r"\s{2}(.+?)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+x([\d.]+) \[([\d.]+)-([\d.]+)\]", line)
        if m:
            rows[m.group(1).strip()] = [float(v) for v in m.groups()[1:]]
    assert set(rows) == set(bench_step.RULES), res.stdout
    assert rows["bp"] == [1.0, 1.0, 1.0]
    for rule, (ratio, low, high) in rows.items():
        assert math.isfinite(ratio) and ratio > 0 and low <= ratio <= high, (rule, ratio, low, high)


def _import(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def _grads(model, x, y) -> dict:
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_reference_rows_compute_what_they_claim():
    """bp through ldfa's layers gives autograd's bp gradients; the floor gives bp's gradient for
    the output layer and, since every layer below receives a zero error, zero for all others."""
    bench_step = _import("bench_step")
    torch.manual_seed(0)
    model, _, x, y = bench_step.make("cnn", bench_step.RULES["bp"], torch.device("cpu"))
    x, y = x[:8], y[:8]
    bp = _grads(model, x, y)
    through = _grads(bench_step.make("cnn", bench_step.RULES["bp through ldfa's layers"], "cpu")[0], x, y)
    floor = _grads(bench_step.make("cnn", bench_step.RULES["floor: no input product"], "cpu")[0], x, y)
    assert set(through) == set(floor) == set(bp)
    for name, g in bp.items():
        torch.testing.assert_close(through[name], g, rtol=1e-4, atol=1e-6)
        if name.startswith("fc2."):
            torch.testing.assert_close(floor[name], g, rtol=1e-5, atol=1e-7)
        else:
            assert g.abs().max() > 0 and floor[name].abs().max() == 0, name


def test_profile_lists_kernels_and_differences():
    """profile_step.py on the conv net: each rule's kernel groups, then the second rule against the
    first; ld's expansion (a convolution from r = 10 channels) shows up only in ld's profile and
    as time ld adds over the floor."""
    args = ["--model", "cnn", "--rules", "floor,fixed", "--steps", "1", "--threads", "1", "--top", "1000"]
    res = _run("profile_step.py", *args)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    floor_part, ld_part, diff_part = (out.split("\nfloor: no input product:")[1].split("\nld r=10")[0],
                                      out.split("\nld r=10 (fixed, fixed): ")[1].split("\nld r=10")[0],
                                      out.split("against floor: no input product:")[1])
    expansion = re.compile(r"convolution\s+128x10x14x14 10x32x3x3\s+([\d.]+)")
    assert "convolution_backward" in floor_part and not expansion.search(floor_part)
    assert float(expansion.search(ld_part).group(1)) > 0
    assert re.search(r"convolution\s+128x10x14x14 10x32x3x3\s+\+[\d.]+", diff_part), diff_part
