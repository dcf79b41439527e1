"""TOAST: top-down attention steering of a frozen vision transformer (Shi et al. 2023).

A backbone pre-trained on a source task stays frozen. For a new task:

1. first pass: tokens z = backbone.tokens(x) (final LayerNorm), no gradient;
2. feature selection: each token is kept in proportion to its cosine similarity with a
   learned task vector ξ, s_i = P (m_i z_i), m_i = clamp(cos(z_i, ξ), 0, 1), P learned (init I);
3. feedback path: one decoder per block, run top-down, u_{L+1} = s, u_l = D1_l u_{l+1},
   td_l = D2_l u_l (bias-free d x d maps, token-wise);
4. second pass: the same frozen backbone with td_l added to block l's attention *values*,
   v = W_v (LN(x) + td_l) + b_v; a new head reads the pooled second-pass tokens.

Only ξ, P, the decoders and the head train. Both decoder maps start small (std 0.02), so the
steering starts near zero and grows; with plain SGD the feedback path learns slowly (ξ's
gradient at init is ~1e-4 of the head's), so the experiments use Adam. In the authors' code
P is left at I for the standard variant; we train it, and count it among the tuned
parameters. The decoders' reconstruction pre-tuning loss of the original is not used: as in
the authors' visual fine-tuning, the task loss alone trains the feedback path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..theory.errors import ConfigError
from .models import SelfAttention, VisionTransformer


class Decoder(nn.Module):
    """The top-down step of one block: u -> D1 u (carried down), td = D2 D1 u (sent in)."""

    def __init__(self, width: int, std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(width, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)
        for lin in (self.down, self.out):
            nn.init.normal_(lin.weight, std=std)

    def forward(self, u):
        u = self.down(u)
        return u, self.out(u)


def check_backbone(model: nn.Module) -> VisionTransformer:
    attn = [m for m in model.modules() if isinstance(m, SelfAttention)]
    if not isinstance(model, VisionTransformer) or not attn:
        raise ConfigError(f"model {type(model).__name__} has no attention blocks: TOAST and the probe "
                          "need a vision transformer backbone (model 'vit')")
    return model


class TOAST(nn.Module):
    """Frozen ``backbone`` + feature selection (ξ, P) + feedback decoders + a new head."""

    def __init__(self, backbone: nn.Module, classes: int):
        super().__init__()
        self.backbone = check_backbone(backbone).requires_grad_(False)
        width = backbone.pos_embed.shape[-1]
        self.prompt = nn.Parameter(torch.randn(width))  # ξ
        self.select = nn.Linear(width, width, bias=False)  # P
        nn.init.eye_(self.select.weight)
        self.decoders = nn.ModuleList(Decoder(width) for _ in backbone.blocks)
        self.head = nn.Linear(width, classes)

    def top_down(self, z: torch.Tensor) -> list[torch.Tensor]:
        """td_1 .. td_L from the first-pass tokens z (B, T, d)."""
        mask = F.cosine_similarity(z, self.prompt.expand_as(z), dim=-1).clamp(0, 1).unsqueeze(-1)
        u, tds = self.select(mask * z), []
        for decoder in reversed(self.decoders):
            u, td = decoder(u)
            tds.append(td)
        return tds[::-1]

    def forward(self, x):
        self.backbone.eval()  # frozen: no dropout in either pass
        with torch.no_grad():
            z = self.backbone.tokens(x)
        z2 = self.backbone.tokens(x, self.top_down(z))
        return self.head(self.backbone.pooled(z2))


class LinearProbe(nn.Module):
    """Frozen ``backbone``; only a new linear head on its pooled tokens trains."""

    def __init__(self, backbone: nn.Module, classes: int):
        super().__init__()
        self.backbone = check_backbone(backbone).requires_grad_(False)
        self.head = nn.Linear(backbone.pos_embed.shape[-1], classes)

    def forward(self, x):
        self.backbone.eval()
        with torch.no_grad():
            z = self.backbone.pooled(self.backbone.tokens(x))
        return self.head(z)


def tuned_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
