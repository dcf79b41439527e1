"""Training-batch augmentation on the data's device, batched and seeded.

    x = augment(x, "crop-flip", seed=cfg.seed, step=step, fill=fill)

The random numbers of update ``step`` come from a generator seeded by (seed, step) alone, so a
run resumed from a checkpoint draws exactly what the uninterrupted run drew, and the same seed
gives the same images on the same device.

* ``flip``: each image mirrored left-right with probability ½.
* ``crop-flip``: the image padded by ``padding`` pixels on every side with ``fill`` (per
  channel; pass the standardized value of a black pixel, −mean_c/std_c, to pad with black as
  torchvision's RandomCrop(32, padding=4) does before normalizing), a 32 × 32 window taken at
  a uniform offset in 0..2·padding on each axis, then the flip.
"""

from __future__ import annotations

import hashlib

import torch

from ..theory.errors import ConfigError

AUGMENTS = ("none", "flip", "crop-flip")


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for update ``step`` of the run seeded ``seed`` (SHA-256 of both)."""
    return int.from_bytes(hashlib.sha256(f"augment:{seed}:{step}".encode()).digest()[:8], "big") >> 1


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x[n] mirrored along the width where u_n < ½, u_n ~ U(0, 1)."""
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = 4, fill=None) -> torch.Tensor:
    """out[n, c, i, j] = pad(x)[n, c, i + a_n, j + b_n], a_n, b_n uniform in 0..2·padding."""
    n, c, h, w = x.shape
    if fill is None:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
    else:
        padded = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, c, 1, 1).expand(
            n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding:padding + h, padding:padding + w] = x
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=gen, device=x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=_format(x))


def _format(x: torch.Tensor):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 \
        else torch.contiguous_format


def augment(x: torch.Tensor, kind: str, seed: int, step: int, padding: int = 4, fill=None) -> torch.Tensor:
    """The batch ``x`` (N x C x H x W) augmented by ``kind`` (AUGMENTS) with the draws of (seed, step)."""
    if kind not in AUGMENTS:
        raise ConfigError(f"augment={kind!r}; allowed: {', '.join(AUGMENTS)}")
    if kind == "none":
        return x
    if x.dim() != 4:
        raise ConfigError(f"augment={kind!r} needs image batches N x C x H x W, not shape {tuple(x.shape)}")
    gen = torch.Generator(device=x.device).manual_seed(step_seed(seed, step))
    if kind == "crop-flip":
        x = random_crop(x, gen, padding, fill)
    return flip(x, gen)
