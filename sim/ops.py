"""The linear maps of one layer type, so that a feedback rule is written once for all types.

A rule only needs five operations of a layer with weight W (weight orientation:
n_out x n_in for nn.Linear, C_out x C_in x k x k for nn.Conv2d):

    forward(x, W, b)         a = W x + b
    weight_grad(x, g)        Σ_batch g xᵀ                  (the local update ΔW = -η δ hᵀ)
    input_grad(g, M, x)      Mᵀ g: the error sent down through a matrix shaped like W
    compress(g, P)           z = P g: r numbers per example (per position for conv)
    flat(W)                  W as an n_out x n_in' matrix (conv: C_out x C_in·k·k)

Expansion through a factor Q_w (r x n_in, or r x C_in x k x k) is ``input_grad(z, Q_w, x)``:
for a conv layer that is the r-channel transposed convolution with the forward layer's
kernel size, stride and padding.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight
from torch.nn.modules.utils import _pair


def _channels_last(x: torch.Tensor) -> bool:
    """True if x is laid out channels-last (and not also plain contiguous, as a 1-channel
    or 1x1 map is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@functools.lru_cache(maxsize=None)
def _column_block(m: int) -> int | None:
    """The widest block of at most 512 columns that splits m into two or more equal blocks
    (at least 64 wide), or None."""
    return next((b for b in range(min(512, m // 2), 63, -1) if m % b == 0), None)


def few_rows_times(P, W):
    """P W for a few rows P (r x n) and a large 2-D W (n x m), e.g. lowrank's P W or
    Kolen-Pollack's P ΔW; W may be a transposed view (Q Wᵀ is ``few_rows_times(Q, W.mT)``).
    MKL's matrix product for r ≈ 10 rows runs far below memory bandwidth on CPU; the same
    product as one batched product over W's column blocks (views, no copy) takes 0.55-0.7 of
    its time (r = 10, 2 threads, W 2048 x 2048 or 512 x 4608, either orientation). Each output
    entry is still one dot product over all n rows, so the result does not depend on the thread
    count."""
    laid_out = W.is_contiguous() or W.mT.is_contiguous()
    b = _column_block(W.shape[-1]) if P.dim() == W.dim() == 2 and laid_out else None
    if b is None or W.device.type != "cpu":
        return P @ W
    m = W.shape[1]
    blocks = W.unflatten(1, (m // b, b)).transpose(0, 1)  # (m/b, n, b)
    return torch.bmm(P.expand(m // b, *P.shape), blocks).transpose(0, 1).reshape(P.shape[0], m)


class LinearOps:
    """nn.Linear: inputs (..., n_in); every leading dimension is a batch dimension."""

    kind = "linear"

    def forward(self, x, W, b):
        return F.linear(x, W, b)

    def weight_grad(self, x, g, shape=None):
        return g.reshape(-1, g.shape[-1]).t().mm(x.reshape(-1, x.shape[-1]))

    def bias_grad(self, g):
        return g.reshape(-1, g.shape[-1]).sum(0)

    def input_grad(self, g, M, x):
        return g.matmul(M)

    def compress(self, g, P):
        return g.matmul(P.t())

    def rows(self, g):
        """The error as a (samples x n_out) matrix: one row per example (and token)."""
        return g.reshape(-1, g.shape[-1])

    def cross(self, a, b):
        """Σ over samples of a bᵀ (n_a x n_b): rows(a)ᵀ rows(b)."""
        return self.rows(a).mT @ self.rows(b)

    def n_rows(self, g):
        """How many samples rows(g) has (examples, times tokens or positions)."""
        return g.numel() // g.shape[-1]

    def flat(self, W):
        return W

    # shapes of the ld factors, and the leading (seed) dimensions of a weight
    def lead(self, W):
        return W.shape[:-2]

    def fan_in(self, W):
        return W.shape[-1]

    def batch_size(self, g):
        """Examples in the batch (the loss is a mean over them)."""
        return g.shape[0]

    def p_shape(self, W, r):
        return (*self.lead(W), r, W.shape[-2])

    def q_shape(self, W, r):
        return (*self.lead(W), r, W.shape[-1])

    def flat_q(self, Q):
        return Q

    def unflat_q(self, Qf, W):
        return Qf


class BatchedLinearOps(LinearOps):
    """S independent linear layers at once: W (S, n_out, n_in), inputs (S, batch, n_in).

    Used to train many seeds or configurations in one batched computation; every rule
    written with ``@``, ``.mT`` and these ops runs unchanged on it.
    """

    kind = "batched-linear"

    def forward(self, x, W, b):
        return x @ W.mT if b is None else torch.baddbmm(b[:, None, :], x, W.mT)  # bias in the product

    def weight_grad(self, x, g, shape=None):
        return g.mT @ x

    def bias_grad(self, g):
        return g.sum(1)

    def compress(self, g, P):
        return g @ P.mT

    def rows(self, g):
        return g

    def n_rows(self, g):
        return g.shape[-2]

    def batch_size(self, g):
        return g.shape[1]


class ConvOps:
    """nn.Conv2d with the layer's stride, padding, dilation and groups (groups = 1 for ld)."""

    kind = "conv"

    def __init__(self, stride, padding, dilation, groups):
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups

    def forward(self, x, W, b):
        return F.conv2d(x, W, b, self.stride, self.padding, self.dilation, self.groups)

    def weight_grad(self, x, g, shape):
        """Σ over examples and positions of g xᵀ (the im2col product where that is faster). In a
        channels-last model the kernel runs channels-last and the result is laid out so:
        torch's conv2d_weight would otherwise pick the plain layout from its placeholder weight
        (a first layer's one-channel input is both) and copy g into it."""
        if self.im2col_faster(x, g, shape):
            return self.im2col_weight_grad(x, g, shape)
        if _channels_last(x) or _channels_last(g):
            like = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=torch.channels_last)
            return self.fused_backward(x, g, like, need_input=False, need_bias=False)[1]
        return conv2d_weight(x, shape, g, self.stride, self.padding, self.dilation, self.groups)

    # an output position's patch (C_in·k·k numbers) this many times larger than the number of
    # output positions: there oneDNN's CPU weight-gradient kernel was up to 5x slower than im2col
    # on one machine (ResNet-18's last stage at 64 px, 512 channels on 2x2 maps) and about as fast
    # on another; on large maps it is faster everywhere
    IM2COL_PATCH_PER_POSITION = 256

    def im2col_faster(self, x, g, shape) -> bool:
        """True on CPU where the patch size C_in·k·k is at least IM2COL_PATCH_PER_POSITION times
        the number of output positions (deep, small feature maps)."""
        patch = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 0
        return (x.device.type == "cpu" and self.groups == 1 and g.dim() == 4
                and patch >= self.IM2COL_PATCH_PER_POSITION * g.shape[2] * g.shape[3])

    def im2col_weight_grad(self, x, g, shape):
        """Σ_b g_b colsᵀ_b as one matrix product: cols (B, C_in·k·k, L) are the unfolded input
        patches, g (B, C_out, L); (C_out x B·L) @ (B·L x C_in·k·k), reshaped to W's shape."""
        cols = F.unfold(x, shape[2:], self.dilation, self.padding, self.stride)
        rows = g.flatten(2).transpose(0, 1).reshape(g.shape[1], -1)
        return rows.mm(cols.transpose(1, 2).reshape(-1, cols.shape[1])).view(shape)

    def fused_backward(self, x, g, M, need_input: bool, need_bias: bool):
        """(Mᵀg or None, Σ g xᵀ, Σ g or None) in one convolution-backward call, autograd's own
        for bp (the weight and bias gradients do not depend on M). Always fused: split into
        conv2d_input and the im2col weight gradient, a pair of 512-channel layers on 2x2 maps
        cost 1.15x autograd's bp (1.03x fused) and a pair of 256-channel ones 1.43x (1.06x)."""
        return torch.ops.aten.convolution_backward(
            g, x, M, [M.shape[0]] if need_bias else None, self.stride, self.padding, self.dilation,
            False, [0, 0], self.groups, [need_input, True, need_bias])

    def bias_grad(self, g):
        return g.sum((0, 2, 3))

    def input_grad(self, g, M, x):
        """Mᵀg as a transposed convolution, shaped like the layer's input x. An error compressed to
        fewer channels than the layer has inputs (ld: z = P g with r channels, M = Q_w) is expanded
        on CPU by oneDNN's forward transposed convolution in channels-last layout, ~1.3x faster
        than the convolution's input-gradient kernel at ResNet-18 sizes with r = 10; the result
        keeps x's layout (a channels-last model gets it as it is, others after one copy)."""
        if g.device.type == "cpu" and g.dim() == 4 and g.shape[1] < M.shape[1]:
            cl = torch.channels_last
            extra = [x.shape[i + 2] - ((g.shape[i + 2] - 1) * self.stride[i] - 2 * self.padding[i]
                                       + self.dilation[i] * (M.shape[i + 2] - 1) + 1) for i in (0, 1)]
            gx = F.conv_transpose2d(g.contiguous(memory_format=cl), M.contiguous(memory_format=cl), None,
                                    self.stride, self.padding, extra, self.groups, self.dilation)
            return gx if _channels_last(x) else gx.contiguous()
        return conv2d_input(x.shape, M, g, self.stride, self.padding, self.dilation, self.groups)

    def compress(self, g, P):
        """z = P g at every position (a 1x1 convolution), as one batched matrix product
        (B, r, C) @ (B, C, H·W): ~2x faster on CPU than conv2d with a 1x1 kernel. (Plain
        ``P @ g`` may instead fold g into a transposed (B·H·W, C) copy when P requires grad.)"""
        B = g.shape[0]
        return torch.bmm(P.expand(B, *P.shape), g.flatten(2)).view(B, P.shape[0], *g.shape[2:])

    def rows(self, g):
        """The error as (samples·positions x C_out): every position is a sample."""
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])

    def cross(self, a, b):
        """Σ over examples and positions of a bᵀ (C_a x C_b), without the permuted copy of rows()."""
        return (a.flatten(2) @ b.flatten(2).mT).sum(0)

    def n_rows(self, g):
        return g.numel() // g.shape[1]

    def flat(self, W):
        return W.reshape(W.shape[0], -1)

    def lead(self, W):
        return ()

    def fan_in(self, W):
        return W[0].numel()

    def batch_size(self, g):
        return g.shape[0]

    def p_shape(self, W, r):
        return (r, W.shape[0])

    def q_shape(self, W, r):
        return (r, *W.shape[1:])

    def flat_q(self, Q):
        return Q.reshape(Q.shape[0], -1)

    def unflat_q(self, Qf, W):
        return Qf.reshape(Qf.shape[0], *W.shape[1:])


@torch.no_grad()
def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two tensors seen as vectors (90 if either is zero)."""
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 90.0
    c = (a @ b) / (na * nb)
    return float(torch.rad2deg(torch.arccos(c.clamp(-1.0, 1.0))))
