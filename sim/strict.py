"""The strict bottleneck: at most r numbers per example cross every block boundary backward.

With ld feedback on each nn.Linear / nn.Conv2d only, a residual network still sends the
full-width error to earlier blocks through its skip connections. The strict bottleneck
closes that path: at the input of every block sits a boundary whose forward pass is the
identity and whose backward pass compresses the arriving error to r numbers per example
(per token for a transformer, per position for a conv map) and expands it again,

    z = P g            (P: r x C, C the residual stream's width)
    g_below = Pᵀ z     (the expansion of an identity crossing, Q = Wᵀ Pᵀ with W = I)

so that both the block's branch and its skip connection receive only what passes P.
Because the map being crossed is the identity, the factor rules of docs/rules.md reduce
to two meaningful choices here: ``p_rule="oja"`` (default) learns P by Oja's subspace rule,
ΔP = η ⟨z δᵀ - z zᵀ P⟩, so P tracks the top-r principal subspace of the error crossing
the boundary; ``p_rule="fixed"`` keeps a random P with orthonormal rows. (kp moves P only
by weight decay when W = I never changes, and lowrank's target, the best rank-r
approximation of I, is every rank-r projector, so neither selects a subspace.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..theory.errors import ConfigError

STRICT_P_RULES = ("oja", "fixed")


class _Boundary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, P, boundary):
        ctx.boundary = boundary
        ctx.save_for_backward(P)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        (P,) = ctx.saved_tensors
        b = ctx.boundary
        rows = g.movedim(b.channel_dim, -1)  # (..., C): every example, token and position a row
        z = rows @ P.mT.to(rows.dtype)  # r numbers per row
        g_below = (z @ P.to(rows.dtype)).movedim(-1, b.channel_dim)
        grad_P = None
        if ctx.needs_input_grad[1]:  # Oja: ΔP = η ⟨z δᵀ - z zᵀ P⟩ with δ = batch·g per example
            zf, gf = z.reshape(-1, z.shape[-1]).to(P.dtype), rows.reshape(-1, rows.shape[-1]).to(P.dtype)
            batch = g.shape[0]
            grad_P = -(zf.mT @ gf - (zf.mT @ zf) @ P) * (batch**2 / zf.shape[0])
        return g_below, grad_P, None


class ErrorBoundary(nn.Module):
    """Identity forward; backward g ↦ Pᵀ(P g) over the channel dimension ``channel_dim``."""

    def __init__(self, width: int, rank: int, p_rule: str = "oja", channel_dim: int = -1,
                 generator: torch.Generator | None = None):
        super().__init__()
        if p_rule not in STRICT_P_RULES:
            raise ConfigError(f"strict bottleneck p_rule {p_rule!r}; allowed: {', '.join(STRICT_P_RULES)}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= width:
            raise ConfigError(f"strict bottleneck rank r={rank!r}: must be an integer in 1..{width} "
                              "(the residual stream's width)")
        q, _ = torch.linalg.qr(torch.randn(width, rank, generator=generator, dtype=torch.float64))
        P = q.mT.contiguous().float()
        self.p_rule, self.channel_dim = p_rule, channel_dim
        if p_rule == "oja":
            self.P = nn.Parameter(P)
        else:
            self.register_buffer("P", P)

    def forward(self, x):
        return _Boundary.apply(x, self.P, self)

    def extra_repr(self):
        return f"rank={self.P.shape[0]}, width={self.P.shape[1]}, p_rule={self.p_rule}"


def _width(block: nn.Module, channel_dim: int) -> int:
    """The residual stream's width at a block's input (its first LayerNorm or conv tells it)."""
    for m in block.modules():
        if channel_dim == -1 and isinstance(m, nn.LayerNorm):
            return m.normalized_shape[-1]
        if channel_dim == 1 and isinstance(m, nn.Conv2d):
            return m.in_channels
        if channel_dim == 1 and hasattr(m, "weight") and getattr(m, "ops", None) is not None \
                and m.ops.kind == "conv":
            return m.weight.shape[1]
    raise ConfigError(f"cannot tell the width of block {type(block).__name__}")


def add_strict_bottleneck(model: nn.Module, rank: int, p_rule: str = "oja", seed: int = 0) -> nn.Module:
    """Put an :class:`ErrorBoundary` of rank ``rank`` at the input of every block of ``model``
    (``model.blocks``: a ViT's transformer blocks, channels last; a ResNet's residual blocks,
    channels at dim 1). The boundary is ``block.boundary``; a forward pre-hook routes the block's
    input through it, so the block's own code is unchanged. Returns ``model``."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(f"the strict bottleneck needs a model with residual blocks (.blocks), such as "
                          f"vit or resnet; {type(model).__name__} has none")
    is_conv = any(isinstance(m, nn.Conv2d) or getattr(getattr(m, "ops", None), "kind", "") == "conv"
                  for m in blocks[0].modules())
    channel_dim = 1 if is_conv else -1
    generator = torch.Generator().manual_seed(seed + 7919)  # its own stream: the rule's draws unchanged
    device = next(model.parameters()).device
    for block in blocks:
        width = _width(block, channel_dim)
        if getattr(block, "boundary", None) is not None:
            raise ConfigError("the model already has a strict bottleneck")
        block.boundary = ErrorBoundary(width, rank, p_rule, channel_dim, generator).to(device)
        block.register_forward_pre_hook(lambda m, args: (m.boundary(args[0]), *args[1:]))
    return model

