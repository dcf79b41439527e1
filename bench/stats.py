"""Paired timing ratios and how far to trust their median."""

from __future__ import annotations

import random
import statistics


def paired_ratios(times: list[float], reference: list[float]) -> list[float]:
    """rule / reference within each repeat (both timed back to back, so drift cancels)."""
    return [t / r for t, r in zip(times, reference)]


def median_interval(ratios: list[float], level: float = 0.95, draws: int = 2000, seed: int = 0):
    """(low, high): a percentile-bootstrap interval for the median of ``ratios`` (repeats drawn
    with replacement ``draws`` times, seeded, so the same timings print the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    tail = (1 - level) / 2
    return medians[int(tail * (draws - 1))], medians[int((1 - tail) * (draws - 1))]
