"""Plain torch models for the simulations (docs/simulation.md).

Every linear map in these models is a real ``nn.Linear`` or ``nn.Conv2d`` submodule,
called as ``self.fc(x)``, so that ``convert(model, rule=...)`` can swap each one for a
feedback-aware version by walking ``model.named_modules()`` and replacing children in
place. Everything else is parameter-free (activations, pooling, flatten, dropout,
softmax attention) or an ``nn.LayerNorm``; the only other parameters are the ViT's
additive position embedding and class token. There is no ``nn.MultiheadAttention``
(its projections are not ``nn.Linear`` calls) and no ``F.linear`` on a raw parameter.

    DeepLinear([784, 256, 10])             y = W_2 W_1 x
    MLP([784, 256, 256, 10], "relu")       y = W_3 f(W_2 f(W_1 x + b_1) + b_2) + b_3
    ConvNet(in_channels=3, image_size=32)  3 x (conv 3x3, ReLU), max-pool after the first two, 2 fc
    ResNet(in_channels=1, image_size=28)   stem conv, residual blocks x + conv(relu(conv(x))), head
    VisionTransformer(image_size=32, in_channels=3)   pre-LN ViT, fused qkv, class token
    build("vit", (3, 32, 32), 10, width=128)          the same, by name, with checks

Inputs are batches: (B, features) or (B, C, H, W); the fully connected models flatten
(B, C, H, W) to (B, C*H*W) themselves. Outputs are logits (B, classes).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..theory.errors import ConfigError

MODELS = ("linear", "mlp", "cnn", "resnet", "vit")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}
POOLS = ("cls", "mean")


# ---------------------------------------------------------------------------- checks


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r}: must be a positive integer")
    return value


def _widths(widths) -> list[int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise ConfigError(
            f"widths={widths!r}: need a list of at least 2 positive integers (input, ..., output)")
    return [_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths)]


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation={name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) if x.dim() > 2 else x


# ---------------------------------------------------------------------------- models


class DeepLinear(nn.Module):
    """Deep linear network y = W_L ⋯ W_1 x (+ biases if ``bias``), no nonlinearity.

    ``widths = [n_0, n_1, ..., n_L]``; layer l is ``self.layers[l-1] = nn.Linear(n_{l-1}, n_l)``,
    so W_l = ``self.layers[l-1].weight`` has shape n_l x n_{l-1} as in docs/notation.md.
    ``init_scale`` (if given) draws every W_l ~ N(0, init_scale² / n_{l-1}) entrywise and
    zeroes the biases; otherwise torch's default nn.Linear init is kept.
    """

    def __init__(self, widths: Sequence[int], bias: bool = False, init_scale: float | None = None):
        super().__init__()
        self.widths = _widths(widths)
        self.out_features = self.widths[-1]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(self.widths, self.widths[1:]))
        if init_scale is not None:
            if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or init_scale < 0:
                raise ConfigError(f"init_scale={init_scale!r}: must be a number >= 0")
            with torch.no_grad():
                for layer in self.layers:
                    layer.weight.normal_(0.0, init_scale / math.sqrt(layer.in_features))
                    if layer.bias is not None:
                        layer.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _flatten(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(nn.Module):
    """Fully connected net: ``widths = [n_0, ..., n_L]``, h_l = f(W_l h_{l-1} + b_l), output a_L (no f).

    Layer l is ``self.layers[l-1] = nn.Linear(n_{l-1}, n_l)``; f is ``activation``
    ("relu", "tanh" or "gelu"), applied after every layer but the last. Default torch init.
    """

    def __init__(self, widths: Sequence[int], activation: str = "relu", bias: bool = True):
        super().__init__()
        self.widths = _widths(widths)
        self.out_features = self.widths[-1]
        self.activation = activation
        self.act = _activation(activation)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(self.widths, self.widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _flatten(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class ConvNet(nn.Module):
    """Small conv net for (B, C, H, W) images with H = W = ``image_size``.

    ``self.convs[i]``: nn.Conv2d(c_{i-1}, c_i, 3x3, padding 1) then ReLU, for c_i in ``channels``
    (c_{-1} = ``in_channels``); a 2x2 max-pool follows each of the first two convs, so the
    spatial size goes s -> s//2 -> s//4 and stays there (28 -> 14 -> 7 -> 7, 32 -> 16 -> 8 -> 8).
    Then flatten, ``fc1`` = nn.Linear(c_last·(s//4)², hidden), ReLU, ``fc2`` = nn.Linear(hidden, classes).
    """

    n_pool = 2

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: Sequence[int] = (32, 64, 64),
                 hidden: int = 128, classes: int = 10):
        super().__init__()
        _positive_int("in_channels", in_channels)
        _positive_int("image_size", image_size)
        _positive_int("hidden", hidden)
        self.out_features = _positive_int("classes", classes)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) < 1:
            raise ConfigError(f"channels={channels!r}: need a list of at least 1 positive integer")
        channels = [_positive_int(f"channels[{i}]", c) for i, c in enumerate(channels)]
        n_pool = min(self.n_pool, len(channels))
        if image_size < 2**n_pool:
            raise ConfigError(f"image_size={image_size}: must be >= {2**n_pool} for {n_pool} 2x2 max-pools")
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=3, padding=1)
                                   for a, b in zip([in_channels, *channels], channels))
        side = image_size // 2**n_pool
        self.fc1 = nn.Linear(channels[-1] * side * side, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i < self.n_pool:
                x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class ResidualBlock(nn.Module):
    """x + conv2(relu(norm1(conv1(x)))), then ReLU; both convs 3x3, padding 1, ``channels`` wide."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


class ResNet(nn.Module):
    """Small residual conv net for (B, C, H, W) images with H = W = ``image_size``.

    ``stem`` = nn.Conv2d(in_channels, width, 3x3, padding 1), BatchNorm, ReLU, ``pool`` x ``pool``
    max-pool (default 2: the blocks see image_size/2 x image_size/2 maps; 4: a quarter of the
    positions, for quick runs); then ``blocks``: ``depth`` residual blocks of ``width`` channels (the
    skip connection carries the error past each block's two convs); global average pool; ``head`` =
    nn.Linear(width, classes).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, width: int = 32, depth: int = 3,
                 classes: int = 10, pool: int = 2):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("image_size", image_size), ("width", width),
                            ("depth", depth), ("classes", classes), ("pool", pool)]:
            _positive_int(name, value)
        if image_size < pool:
            raise ConfigError(f"image_size={image_size}: must be >= pool={pool} for the stem's max-pool")
        self.pool = pool
        self.out_features = classes
        self.stem = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.stem_norm = nn.BatchNorm2d(width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_norm(self.stem(x))), self.pool)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class SelfAttention(nn.Module):
    """Multi-head self-attention (no mask): fused ``qkv`` = nn.Linear(width, 3·width), softmax(q kᵀ/√d_h) v
    per head (F.scaled_dot_product_attention, exact autograd), heads concatenated, ``proj`` nn.Linear."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, top_down: torch.Tensor | None = None) -> torch.Tensor:
        """``top_down`` (B, T, C), if given, is added to the values only: v = W_v (x + top_down) + b_v
        (TOAST's steering; queries and keys are untouched)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        if top_down is not None:
            v = v + top_down @ self.qkv.weight[2 * C:].T
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    """Transformer MLP block: ``fc1`` = nn.Linear(width, mlp_ratio·width), GELU, ``fc2`` back to width."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = FeedForward(width, int(mlp_ratio * width), dropout)

    def forward(self, x: torch.Tensor, top_down: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), top_down)
        return x + self.mlp(self.ln2(x))


class VisionTransformer(nn.Module):
    """Vision transformer for (B, C, H, W) images with H = W = ``image_size``.

    ``patch_embed`` = nn.Conv2d(in_channels, width, kernel = stride = patch) cuts the image into
    (image_size/patch)² tokens (docs/simulation.md: the patch embedding keeps bp; convert skips it by this
    name). With ``pool="cls"`` (default) a learned class token is prepended; a learned position
    embedding ``pos_embed`` (one per token, class token included) is added, then dropout,
    ``depth`` pre-LN ``blocks`` (attention with fused ``qkv`` and ``proj``; MLP ``fc1``, GELU,
    ``fc2``), the final LayerNorm ``norm``, and ``head`` = nn.Linear(width, classes) on the class
    token (``pool="cls"``) or on the mean over the patch tokens (``pool="mean"``, no class token).
    nn.Linear count: 4·depth + 1; nn.Conv2d: 1 (patch_embed). Default torch init for the linear
    maps and LayerNorms; class token and position embedding ~ N(0, 0.02²).
    """

    def __init__(self, image_size: int = 28, patch: int = 4, in_channels: int = 1, width: int = 64,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 2, classes: int = 10,
                 dropout: float = 0.0, pool: str = "cls"):
        super().__init__()
        for name, value in [("image_size", image_size), ("patch", patch), ("in_channels", in_channels),
                            ("width", width), ("depth", depth), ("heads", heads), ("classes", classes)]:
            _positive_int(name, value)
        if image_size % patch:
            raise ConfigError(f"image_size={image_size} is not divisible by patch={patch}")
        if width % heads:
            raise ConfigError(f"width={width} is not divisible by heads={heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio * width < 1:
            raise ConfigError(f"mlp_ratio={mlp_ratio!r}: must be a number with mlp_ratio * width >= 1")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"dropout={dropout!r}: must be a number with 0 <= dropout < 1")
        if pool not in POOLS:
            raise ConfigError(f"pool={pool!r}; allowed: {', '.join(POOLS)}")
        self.pool = pool
        self.out_features = classes
        n_tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens, width))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def tokens(self, x: torch.Tensor, top_down: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The final-LayerNorm tokens (B, T, width); ``top_down[l]`` steers block l's values."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, T, width)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.drop(x + self.pos_embed)
        for l, block in enumerate(self.blocks):
            x = block(x, None if top_down is None else top_down[l])
        return self.norm(x)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(self.tokens(x)))


# ---------------------------------------------------------------------------- factory


def _hidden(value) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"hidden={value!r}: must be a positive integer or a list of them")
    return [_positive_int(f"hidden[{i}]", h) for i, h in enumerate(value)]


def _check_kwargs(name: str, kwargs: dict, allowed: Sequence[str]) -> None:
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise ConfigError(f"model {name!r} takes no option {', '.join(bad)}; allowed: {', '.join(allowed)}")


def _image_shape(name: str, input_shape: tuple[int, ...], kwargs: dict) -> tuple[int, int]:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ConfigError(f"input_shape={input_shape}: model {name!r} needs square images (C, H, W), H = W")
    c, s, _ = input_shape
    for key, value in (("in_channels", c), ("image_size", s)):
        if key in kwargs and kwargs.pop(key) != value:
            raise ConfigError(f"{key} is set by input_shape={input_shape} to {value}; do not pass another")
    return c, s


def build(name: str, input_shape: int | Sequence[int], classes: int, **kwargs) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (one example, no batch) and ``classes`` outputs.

    - ``"linear"``: DeepLinear([prod(input_shape), *hidden, classes]); options hidden=(256,), bias,
      init_scale.
    - ``"mlp"``: MLP([prod(input_shape), *hidden, classes]); options hidden=(256, 256), activation, bias.
    - ``"cnn"``: ConvNet on (C, S, S) images; options channels, hidden.
    - ``"resnet"``: ResNet on (C, S, S) images; options width, depth, pool.
    - ``"vit"``: VisionTransformer on (C, S, S) images; options patch, width, depth, heads, mlp_ratio,
      dropout, pool.

    Any bad name, shape or option raises ConfigError (one line, saying what is allowed).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
        raise ConfigError(f"input_shape={input_shape!r}: must be a non-empty tuple of positive integers")
    input_shape = tuple(_positive_int(f"input_shape[{i}]", n) for i, n in enumerate(input_shape))
    _positive_int("classes", classes)
    kwargs = dict(kwargs)

    if name in ("linear", "mlp"):
        cls = DeepLinear if name == "linear" else MLP
        allowed = ["hidden"] + [p for p in inspect.signature(cls).parameters if p != "widths"]
        _check_kwargs(name, kwargs, allowed)
        hidden = _hidden(kwargs.pop("hidden", (256,) if name == "linear" else (256, 256)))
        return cls([math.prod(input_shape), *hidden, classes], **kwargs)

    cls = {"cnn": ConvNet, "resnet": ResNet, "vit": VisionTransformer}[name]
    allowed = [p for p in inspect.signature(cls).parameters if p != "classes"]
    _check_kwargs(name, kwargs, allowed)
    c, s = _image_shape(name, input_shape, kwargs)
    return cls(in_channels=c, image_size=s, classes=classes, **kwargs)
