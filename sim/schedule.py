"""Learning-rate schedules as pure functions of the step (nothing to save in a checkpoint).

    factor = lr_factor(step, total, warmup, "cosine")   # η(step) = factor · η₀

The factor multiplies every parameter group's base learning rate (forward weights and the
rules' own B, P, Q alike, as a LambdaLR on one optimizer with two groups does).
"""

from __future__ import annotations

import math

from ..theory.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "cosine") -> float:
    """η(t)/η₀ for update t = 1..total.

    Linear warm-up for t ≤ warmup: t / warmup. After it, ``constant``: 1; ``cosine``:
    ½ (1 + cos(π (t − warmup) / (total − warmup))), falling from 1 to 0 at t = total.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if not (isinstance(total, int) and total >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise ConfigError(f"total={total!r}, warmup={warmup!r}: need integers total >= 1, warmup >= 0")
    if warmup and step <= warmup:
        return step / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / (total - warmup)))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, base_lrs, factor: float) -> None:
    """Group i's lr = base_lrs[i] · factor."""
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


def lambda_lr(optimizer, total: int, warmup: int = 0, schedule: str = "cosine"):
    """The same schedule as a torch LambdaLR (stepped once after every update)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k + 1, total, warmup, schedule))
