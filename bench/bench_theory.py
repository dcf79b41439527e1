"""Benchmark: wall time to integrate a 2-layer linear net (n0 = n1 = 100, d = 10) to convergence.

Run: python bench/bench_theory.py [--repeats 3]. Prints min / median / max seconds per rule.
"""

import platform
import statistics
import time

import options

from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import integrate

CONFIGS = {
    "bp": dict(rule="bp"),
    "fa": dict(rule="fa"),
    "ld oja+aligned r=5": dict(rule="ld", p_rule="oja", q_rule="aligned", rank=5),
    "ld svd+aligned r=5": dict(rule="ld", p_rule="svd", q_rule="aligned", rank=5),
    "ldfa (lowrank) r=5": dict(rule="ldfa", rank=5),
}


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--repeats", type=options.COUNT, default=3)
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'rule':<22}{'t_end':>8}{'final loss':>12}{'min s':>8}{'median s':>10}{'max s':>8}")
    for name, kw in CONFIGS.items():
        cfg = TheoryConfig(n_in=100, hidden=100, n_out=10, **kw)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            traj = integrate(cfg)
            times.append(time.perf_counter() - t0)
        print(f"{name:<22}{traj.t[-1]:>8.1f}{traj['loss'][-1]:>12.2e}{min(times):>8.2f}"
              f"{statistics.median(times):>10.2f}{max(times):>8.2f}")


if __name__ == "__main__":
    main()
