"""Benchmark: training-step time of each rule relative to backprop, measured in one run.

    python bench/bench_step.py [--device cpu|cuda] [--precision fp32|bf16] [--repeats 7] [--steps 10]

Models: an MLP 784-2048-2048-2048-10 (batch 256), the conv net (batch 128, 28x28) and
ResNet-18 (bench/resnet18.py: torchvision's when it loads, else a replica of it; random init,
1000 classes, ``--resnet-size`` px, ``--resnet-batch``), chosen with ``--models``.
Each repeat times ``steps`` SGD steps of every rule back to back (interleaved, so slow
drift of the machine hits all rules alike), in an order shuffled anew each repeat (seeded), so
that no rule always follows the same one; the ratio is the median over repeats of
rule / bp within the same repeat (paired, so drift between repeats cancels).
"floor" is bp without its input-gradient products (every layer below gets a zero error):
the least any rule that skips Wᵀg can cost on this machine. The heap is held steady
(bench/allocator.py) unless ``--allocator system``: page faults would otherwise fall on
whichever rule glibc's allocation history picks.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import allocator
import options
import torch
import torch.nn.functional as F
from resnet18 import resnet18, source
from stats import median_interval, paired_ratios

from ldfa.sim import models
from ldfa.sim.feedback import Rule
from ldfa.sim.layers import convert, feedback_layers

RULES = {
    "bp": dict(rule="bp"),
    "fa": dict(rule="fa"),
    "dfa": dict(rule="dfa"),
    "ld r=10 (oja, kp)": dict(rule="ld", rank=10, p_rule="oja", q_rule="kp"),
    "ld r=10 (fixed, fixed)": dict(rule="ld", rank=10, p_rule="fixed", q_rule="fixed"),
    "ldfa r=10 (lowrank)": dict(rule="ldfa", rank=10),
    "ldfa-local r=10 (kp)": dict(rule="ldfa-local", rank=10),
    "floor: no input product": dict(rule="floor"),
    "bp through ldfa's layers": dict(rule="bp-layer"),
}


class NoInputProduct(Rule):
    """Timing floor, not a learning rule: every layer below gets a zero error, so the step is bp
    minus its Wᵀg products: forward, weight gradients, activation and pooling backward, optimizer.
    No rule that skips Wᵀg can be cheaper. The zero error is dense and laid out like the layer's
    input, as any rule's error is (one memset): an expanded scalar would send the pooling and
    activation backward down other kernels, faster than a real error's in plain layout and
    ~5x slower in channels-last."""

    name = "floor"

    def input_grad(self, layer, x, g):
        return torch.zeros_like(x)


class ThroughLayer(Rule):
    """bp computed by ldfa's feedback layers instead of autograd: the same gradients from the same
    kernels (for a convolution, the one fused convolution-backward call), through the layers'
    autograd Function. It shows what the layers' own machinery costs every rule."""

    name = "bp-layer"


RESNET = {"size": 64, "batch": 32}
MODELS = ("mlp", "cnn", "resnet18")


def model_list(text: str) -> list[str]:
    """--models: comma-separated names from MODELS."""
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown model {bad[0]!r}; allowed: {', '.join(MODELS)}")
    return names


def make(name: str, rule_kw: dict, device):
    torch.manual_seed(0)
    if name == "mlp":
        model, classes = models.MLP([784, 2048, 2048, 2048, 10]), 10
        x = torch.randn(256, 784)
    elif name == "cnn":
        model, classes = models.ConvNet(in_channels=1, image_size=28), 10
        x = torch.randn(128, 1, 28, 28)
    elif name == "resnet18":
        model, classes = resnet18(1000)[0], 1000
        x = torch.randn(RESNET["batch"], 3, RESNET["size"], RESNET["size"])
    else:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    y = torch.randint(0, classes, (x.shape[0],))
    if rule_kw["rule"] in ("floor", "bp-layer"):
        convert(model, "fa")
        for _, layer in feedback_layers(model):
            layer.rule = NoInputProduct() if rule_kw["rule"] == "floor" else ThroughLayer()
    else:
        convert(model, **rule_kw, clip_rank="rank" in rule_kw, input_shape=tuple(x.shape[1:]))
    model.to(device)
    if LAYOUT["channels_last"] and x.dim() == 4:  # --channels-last: weights and images NHWC
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return model, opt, x.to(device), y.to(device)


LAYOUT = {"channels_last": False}
AUTOCAST = {"dtype": None}  # --precision bf16: the forward under torch.autocast


def step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=AUTOCAST["dtype"], enabled=AUTOCAST["dtype"] is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def timed(device, run) -> float:
    """Seconds that ``run()`` takes: CUDA events on a GPU (the device's own clock, no host
    overhead in the count), else the host's perf_counter."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def bench(name: str, device, repeats: int, steps: int) -> dict:
    setups = {rule: make(name, kw, device) for rule, kw in RULES.items()}
    for s in setups.values():  # warm-up
        step(*s)
    times = {rule: [] for rule in RULES}
    order = random.Random(0)
    for _ in range(repeats):
        for rule in order.sample(list(setups), len(setups)):
            s = setups[rule]
            times[rule].append(timed(device, lambda s=s: [step(*s) for _ in range(steps)]) / steps)
    return times


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--device", type=options.torch_device, default="cpu")
    ap.add_argument("--repeats", type=options.COUNT, default=7)
    ap.add_argument("--steps", type=options.COUNT, default=10)
    ap.add_argument("--models", type=model_list, default=",".join(MODELS),
                    help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--resnet-size", type=options.COUNT, default=RESNET["size"],
                    help="ResNet-18 image side (px)")
    ap.add_argument("--resnet-batch", type=options.COUNT, default=RESNET["batch"])
    ap.add_argument("--resnet-steps", type=options.COUNT, default=2,
                    help="steps per repeat for ResNet-18 (~0.5 s each)")
    ap.add_argument("--threads", type=options.THREADS, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: forward under torch.autocast (the feedback layers' backward runs in fp32)")
    ap.add_argument("--channels-last", action="store_true",
                    help="conv models' weights and images in channels-last layout (every rule)")
    allocator.add_option(ap)
    args = ap.parse_args()
    LAYOUT["channels_last"] = args.channels_last
    heap = allocator.from_option(args.allocator)
    AUTOCAST["dtype"] = torch.bfloat16 if args.precision == "bf16" else None
    if args.threads:
        torch.set_num_threads(args.threads)
    RESNET.update(size=args.resnet_size, batch=args.resnet_batch)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"machine: {where}, {torch.get_num_threads()} torch threads, device {device}, "
          f"torch {torch.__version__}, {args.precision}"
          f"{', channels-last' if args.channels_last else ''}\n{heap}")
    for name in args.models:
        times = bench(name, device, args.repeats, args.resnet_steps if name == "resnet18" else args.steps)
        if name == "resnet18":
            name = f"resnet18 ({source()}, {RESNET['size']} px, batch {RESNET['batch']})"
        print(f"\n{name}: ms per step (min / median / max); ratio to bp: median over repeats of "
              f"(rule / bp of the same repeat), a 95% bootstrap interval for it, and the range")
        for rule, ts in times.items():
            ratios = paired_ratios(ts, times["bp"])
            low, high = median_interval(ratios)
            print(f"  {rule:<26}{1e3 * min(ts):8.2f}{1e3 * statistics.median(ts):8.2f}"
                  f"{1e3 * max(ts):8.2f}   x{statistics.median(ratios):.3f} [{low:.3f}-{high:.3f}] "
                  f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
