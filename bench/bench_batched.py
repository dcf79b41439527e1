"""Benchmark: 64 seeds of a 2-layer linear net (100-100-10) trained in one batched computation
vs a Python loop over the seeds, for several mini-batch sizes.

    python bench/bench_batched.py [--steps 50]
"""

from __future__ import annotations

import options
import torch

from ldfa.sim.batched import time_batched_vs_loop


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--steps", type=options.COUNT, default=50)
    ap.add_argument("--repeats", type=options.COUNT, default=3)
    args = ap.parse_args()
    x, y = torch.randn(2000, 100), torch.randn(2000, 10)
    print(f"64 seeds, 100-100-10 linear, bp, SGD, {args.steps} steps, {torch.get_num_threads()} threads")
    for batch in (8, 32, 128):
        r = time_batched_vs_loop(x, y, [100, 100, 10], seeds=64, steps=args.steps, activation=None,
                                 lr=0.01, batch_size=batch, repeats=args.repeats)
        print(f"  batch {batch:>4}: batched {r['batched_s']:.3f} s, loop {r['loop_s']:.2f} s (medians), "
              f"speed-up x{r['speedup_min']:.1f} / x{r['speedup']:.1f} / x{r['speedup_max']:.1f} "
              f"(min / median / max of {args.repeats})")


if __name__ == "__main__":
    main()
