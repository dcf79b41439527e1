"""Profile: where a training step's time goes, kernel by kernel, for the rules of bench_step.py.

    python bench/profile_step.py --model cnn --rules "bp,floor,oja" [--steps 5] [--channels-last]

Each aten call of ``--steps`` SGD steps (after two untimed ones) is timed on the host's clock as
it returns (a dispatch mode around the step; CPU kernels run synchronously, so a call's time
is its kernel's). Calls are grouped by operator and argument shapes; a group's time is its sum
per step, the median over steps. For every rule the script prints its top groups, then, against
the first rule given, the groups whose time differs most: what a rule adds or saves over, say,
the floor. The timer adds a few microseconds per call (printed as the dispatch overhead); on a
GPU use torch.profiler instead (kernels there run asynchronously).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import allocator
import bench_step
import options
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def rule_list(text: str) -> list[str]:
    """--rules: comma-separated rules of bench_step.RULES, each by its name, its first word (ldfa,
    floor) or a part of its name that no other rule's has (oja, fixed)."""
    names = []
    for part in (p.strip() for p in text.split(",")):
        matches = ([name for name in bench_step.RULES if name == part]
                   or [name for name in bench_step.RULES if name.split()[0].rstrip(":") == part]
                   or [name for name in bench_step.RULES if part and part in name])
        if len(matches) != 1:
            raise argparse.ArgumentTypeError(
                f"{part!r} {'matches ' + ', '.join(matches) if matches else 'matches no rule'}; "
                f"allowed: {'; '.join(bench_step.RULES)} (or its first word, or a part of its name)")
        names.append(matches[0])
    return names


def _shape(arg) -> str:
    return "x".join(map(str, arg.shape)) if isinstance(arg, torch.Tensor) else ""


class KernelTimer(TorchDispatchMode):
    """Records (operator, argument shapes, seconds) of every aten call made under it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - t0
        shapes = " ".join(s for s in map(_shape, args) if s)
        self.calls.append((str(func.overloadpacket.__name__), shapes, seconds))
        return out


def profile(model: str, rule: str, steps: int) -> tuple[dict, float]:
    """{(operator, shapes): median seconds per step} and the median step time under the timer."""
    setup = bench_step.make(model, bench_step.RULES[rule], torch.device("cpu"))
    for _ in range(2):
        bench_step.step(*setup)
    per_step, totals = [], []
    for _ in range(steps):
        timer = KernelTimer()
        t0 = time.perf_counter()
        with timer:
            bench_step.step(*setup)
        totals.append(time.perf_counter() - t0)
        groups = defaultdict(float)
        for op, shapes, seconds in timer.calls:
            groups[(op, shapes)] += seconds
        per_step.append(groups)
    keys = set().union(*per_step)
    return {k: statistics.median(g.get(k, 0.0) for g in per_step) for k in keys}, statistics.median(totals)


def dispatch_overhead(calls: int = 2000) -> float:
    """Seconds the timer adds to one call: a tiny op timed with and without it."""
    x = torch.zeros(1)

    def per_call() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            x.add(1)
        return (time.perf_counter() - t0) / calls

    plain = per_call()
    with KernelTimer():
        per_call()  # the first use of a dispatch mode sets itself up (~0.5 s once)
        return per_call() - plain


def _row(key, ms: float, signed: bool = False) -> str:
    op, shapes = key
    return f"  {op[:34]:<34} {shapes[:58]:<58} {ms:{'+' if signed else ''}8.3f}"


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--model", choices=bench_step.MODELS, default="cnn")
    ap.add_argument("--rules", type=rule_list, default=rule_list("floor,fixed,oja"),
                    help="comma-separated; the first is the reference the others are compared with")
    ap.add_argument("--steps", type=options.COUNT, default=5)
    ap.add_argument("--top", type=options.COUNT, default=15, help="groups listed per rule and per comparison")
    ap.add_argument("--threads", type=options.THREADS, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--channels-last", action="store_true", help="conv models in channels-last layout")
    allocator.add_option(ap)
    args = ap.parse_args()
    heap = allocator.from_option(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_step.LAYOUT["channels_last"] = args.channels_last
    layout = ", channels-last" if args.channels_last else ""
    print(f"{args.model}{layout}, {torch.get_num_threads()} torch threads, {args.steps} steps; {heap}; "
          f"dispatch overhead {1e6 * dispatch_overhead():.1f} µs per call")
    results = {rule: profile(args.model, rule, args.steps) for rule in args.rules}
    for rule, (groups, total) in results.items():
        print(f"\n{rule}: {1e3 * total:.2f} ms per step under the timer, {1e3 * sum(groups.values()):.2f} ms "
              f"of it in aten calls; the top {args.top} (ms per step):")
        for key, s in sorted(groups.items(), key=lambda kv: -kv[1])[:args.top]:
            print(_row(key, 1e3 * s))
    ref, (ref_groups, ref_total) = args.rules[0], results[args.rules[0]]
    for rule, (groups, total) in list(results.items())[1:]:
        diff = {k: groups.get(k, 0.0) - ref_groups.get(k, 0.0) for k in set(groups) | set(ref_groups)}
        print(f"\n{rule} against {ref}: {1e3 * (total - ref_total):+.2f} ms per step; the largest "
              f"differences (ms per step, + where {rule} spends more):")
        for key, s in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
            print(_row(key, 1e3 * s, signed=True))


if __name__ == "__main__":
    main()
