"""The step benchmark's summary of paired ratios (bench/stats.py)."""

import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from stats import median_interval, paired_ratios  # noqa: E402


def test_paired_ratios_divide_within_each_repeat():
    assert paired_ratios([2.0, 3.0, 8.0], [1.0, 2.0, 4.0]) == [2.0, 1.5, 2.0]


def test_median_interval_holds_the_median_and_narrows_with_less_spread():
    rng = random.Random(1)
    tight = [0.8 + rng.gauss(0, 0.01) for _ in range(15)]
    loose = [0.8 + rng.gauss(0, 0.1) for _ in range(15)]
    widths = []
    for ratios in (tight, loose):
        low, high = median_interval(ratios)
        assert low <= statistics.median(ratios) <= high
        assert min(ratios) <= low and high <= max(ratios)
        widths.append(high - low)
    assert widths[0] < widths[1] / 2, widths
    assert median_interval([0.75] * 9) == (0.75, 0.75)
    assert median_interval(loose) == median_interval(loose)  # seeded: the same timings, the same interval
