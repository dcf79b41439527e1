"""Benchmark: our fa, dfa and ld against biotorch 0.0.16's, step time relative to bp, in one run.
biotorch is an optional bench dependency, never a runtime one:

    pip install --no-deps biotorch==0.0.16
    python bench/bench_biotorch.py [--repeats 7] [--steps 5]

MLP 784-2048-2048-2048-10, batch 256, SGD; rules interleaved within each repeat, in a shuffled
order; the heap held steady (bench/allocator.py).
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import allocator
import options
import torch
import torch.nn.functional as F
from stats import paired_ratios

from ldfa.sim import models
from ldfa.sim.layers import convert


def mlp():
    torch.manual_seed(0)
    return models.MLP([784, 2048, 2048, 2048, 10])


def ours(rule, **kw):
    model = convert(mlp(), rule, **kw)

    def step(x, y, opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, step


def biotorch_rule(mode):
    from biotorch.module.biomodule import BioModule

    model = BioModule(mlp(), mode=mode, **({"output_dim": 10} if mode == "dfa" else {}))

    def step(x, y, opt):
        opt.zero_grad(set_to_none=True)
        out = model(x, targets=y, loss_function=F.cross_entropy) if mode == "dfa" else model(x)
        F.cross_entropy(out, y).backward()
        opt.step()
    return model, step


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--repeats", type=options.COUNT, default=7)
    ap.add_argument("--steps", type=options.COUNT, default=5)
    allocator.add_option(ap)
    args = ap.parse_args()
    heap = allocator.from_option(args.allocator)
    try:
        import biotorch  # noqa: F401
    except ImportError:
        sys.exit("biotorch is not installed: pip install --no-deps biotorch==0.0.16")
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    setups = {"bp": ours("bp"), "ldfa fa": ours("fa"), "ldfa dfa": ours("dfa"),
              "ldfa ld r=10": ours("ld", rank=10, p_rule="fixed", q_rule="fixed"),
              "biotorch fa": biotorch_rule("fa"), "biotorch dfa": biotorch_rule("dfa")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4) for k, (m, _) in setups.items()}
    for k, (_, step) in setups.items():
        step(x, y, opts[k])  # warm-up
    times = {k: [] for k in setups}
    order = random.Random(0)  # a new order each repeat: no rule always follows the same one
    for _ in range(args.repeats):
        for k in order.sample(list(setups), len(setups)):
            step = setups[k][1]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y, opts[k])
            times[k].append((time.perf_counter() - t0) / args.steps)
    print(f"MLP 784-2048x3-10, batch 256, {torch.get_num_threads()} CPU threads; ms per step "
          "(min / median / max); ratio to bp and to biotorch's fa and dfa: medians over repeats "
          "of the ratio within a repeat (paired)\n" + heap)
    for k, ts in times.items():
        paired = {ref: statistics.median(paired_ratios(ts, times[ref]))
                  for ref in ("bp", "biotorch fa", "biotorch dfa")}
        print(f"  {k:<14}{1e3 * min(ts):8.1f}{1e3 * statistics.median(ts):8.1f}{1e3 * max(ts):8.1f}"
              + "".join(f"   x{v:.3f} of {ref}" for ref, v in paired.items()))


if __name__ == "__main__":
    main()
