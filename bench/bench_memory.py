"""Benchmark: peak memory of a training step, ld vs bp.

    python bench/bench_memory.py [--device cpu|cuda]

MLP 784-2048-2048-2048-10, batch 256, SGD (``--model mlp``), or ResNet-18 (bench/resnet18.py,
1000 classes, ``--model resnet18 --size 224 --batch 4``). On CUDA: torch.cuda.max_memory_allocated
around the steps. On CPU: each rule runs in a fresh process; the step's working memory is
the peak resident size (VmHWM, reset just before) during 3 steps minus the resident size
before them (set-up peaks such as ldfa's SVD at conversion are excluded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import options

RULES = {"bp": dict(rule="bp"), "fa": dict(rule="fa"), "dfa": dict(rule="dfa"),
         "ld r=10 (fixed, fixed)": dict(rule="ld", rank=10, p_rule="fixed", q_rule="fixed"),
         "ld r=10 (oja, kp)": dict(rule="ld", rank=10, p_rule="oja", q_rule="kp"),
         "ldfa r=10": dict(rule="ldfa", rank=10)}


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(rule_kw: dict, device: str, model_name: str = "mlp", size: int = 224, batch: int = 4) -> int:
    """Bytes of working memory of 3 training steps."""
    import torch
    import torch.nn.functional as F

    from ldfa.sim import models
    from ldfa.sim.layers import convert

    torch.manual_seed(0)
    if model_name == "resnet18":
        from resnet18 import resnet18

        net, shape, classes = resnet18(1000)[0], (batch, 3, size, size), 1000
        rule_kw = {**rule_kw, "clip_rank": "rank" in rule_kw, "input_shape": shape[1:]}
    else:
        net, shape, classes = models.MLP([784, 2048, 2048, 2048, 10]), (256, 784), 10
    model = convert(net, **rule_kw).to(device)
    x, y = torch.randn(*shape, device=device), torch.randint(0, classes, (shape[0],), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current size
            f.write("5")
        base = _status("VmRSS")
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _status("VmHWM") - base


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--device", type=options.torch_device, default="cpu")
    ap.add_argument("--repeats", type=options.COUNT, default=5)
    ap.add_argument("--model", choices=("mlp", "resnet18"), default="mlp")
    ap.add_argument("--size", type=options.COUNT, default=224, help="ResNet-18 image side (px)")
    ap.add_argument("--batch", type=options.COUNT, default=4, help="ResNet-18 batch")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one rule in this process
    args = ap.parse_args()
    model = (args.model, args.size, args.batch)
    if args.one:
        print(measure(json.loads(args.one), args.device, *model))
        return
    out = {name: [] for name in RULES}
    for _ in range(args.repeats):  # interleaved fresh processes; the median is reported
        for name, kw in RULES.items():
            cmd = [sys.executable, __file__, "--device", args.device, "--model", args.model,
                   "--size", str(args.size), "--batch", str(args.batch), "--one", json.dumps(kw)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[name].append(int(res.stdout.strip().splitlines()[-1]))
    med = {name: statistics.median(v) for name, v in out.items()}
    what = ("MLP 784-2048x3-10, batch 256" if args.model == "mlp" else
            f"ResNet-18, {args.size} px, batch {args.batch}")
    print(f"working memory of 3 SGD steps, {what}, {args.device} "
          f"(median of {args.repeats} processes; min-max in brackets):")
    for name, v in out.items():
        print(f"  {name:<24}{med[name] / 2**20:8.1f} MiB [{min(v) / 2**20:.0f}-{max(v) / 2**20:.0f}]"
              f"   x{med[name] / med['bp']:.2f} of bp")


if __name__ == "__main__":
    main()
