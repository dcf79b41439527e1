"""torch.nn.MultiheadAttention with its projections as ordinary child modules.

``nn.MultiheadAttention`` keeps its packed q/k/v projection as a bare Parameter
(``in_proj_weight``) and reads ``out_proj.weight`` directly instead of calling
``out_proj``: a feedback rule attached to those weights would never see the error.
:class:`FeedbackReadyAttention` computes exactly the same function,

    [q; k; v] = W_in [x_q; x_k; x_v] + b_in                 (``in_proj``: E -> 3E, one nn.Linear)
    a_h = softmax(q_h k_hᵀ / √d_h + M) v_h                  (per head h, mask M, exact autograd)
    y = W_out [a_1 … a_H] + b_out                           (``out_proj``: E -> E, nn.Linear)

but calls its projections as modules, so that ``convert`` gives the packed projection
rank 3r (like a fused ``qkv`` Linear) and the output projection rank r. The weights
stay the same nn.Parameter objects, so an optimizer built before the swap keeps working.
When the key/value widths differ from the query's (``kdim``/``vdim``), the three
projections are separate modules ``q_proj``, ``k_proj``, ``v_proj`` (rank r each).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..theory.errors import ConfigError


def _float_mask(mask, dtype, name):
    """A boolean mask (True = not allowed) as an additive float mask; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise ConfigError(f"{name} has dtype {mask.dtype}; allowed: bool or a floating-point dtype")
    return mask.to(dtype)


class FeedbackReadyAttention(nn.Module):
    """The function of a given nn.MultiheadAttention, with ``in_proj`` (or ``q_proj``, ``k_proj``,
    ``v_proj``) and ``out_proj`` called as modules. Built from the original by :func:`from_mha`."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ConfigError("nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported; "
                              "allowed: the default add_bias_kv=False, add_zero_attn=False")
        self.embed_dim, self.kdim, self.vdim = mha.embed_dim, mha.kdim, mha.vdim
        self.num_heads, self.head_dim = mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first
        self._qkv_same_embed_dim = mha._qkv_same_embed_dim
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        E, bias = mha.embed_dim, mha.in_proj_bias
        if self._qkv_same_embed_dim:
            self.in_proj = nn.Linear(E, 3 * E, bias=bias is not None, device="meta")
            self.in_proj.weight = mha.in_proj_weight
            self.in_proj.bias = bias
        else:  # separate weights; the packed bias is split into three new Parameters (values kept)
            for name, width, i in (("q", E, 0), ("k", mha.kdim, 1), ("v", mha.vdim, 2)):
                proj = nn.Linear(width, E, bias=bias is not None, device="meta")
                proj.weight = getattr(mha, f"{name}_proj_weight")
                proj.bias = None if bias is None else nn.Parameter(bias.detach()[i * E:(i + 1) * E].clone())
                setattr(self, f"{name}_proj", proj)
        self.out_proj = mha.out_proj
        self.train(mha.training)

    # the attribute names torch's own fast paths and users read on nn.MultiheadAttention
    merge_masks = nn.MultiheadAttention.merge_masks

    @property
    def in_proj_weight(self):
        return self.in_proj.weight if self._qkv_same_embed_dim else None

    @property
    def in_proj_bias(self):
        if self._qkv_same_embed_dim:
            return self.in_proj.bias
        if self.q_proj.bias is None:
            return None
        return torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])

    def _project(self, query, key, value):
        E = self.embed_dim
        if not self._qkv_same_embed_dim:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:  # self-attention: one call of the packed projection
            return self.in_proj(query).split(E, dim=-1)
        # cross-attention: the packed projection on each input, keeping its own third
        return (self.in_proj(query)[..., :E], self.in_proj(key)[..., E:2 * E],
                self.in_proj(value)[..., 2 * E:])

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """Same arguments and results as nn.MultiheadAttention.forward."""
        unbatched = query.dim() == 2
        if unbatched:  # (L, E) -> (1, L, E)
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value)
        N, L, E = q.shape
        S, H, Dh = k.shape[1], self.num_heads, self.head_dim
        q, k, v = (t.reshape(N, -1, H, Dh).transpose(1, 2) for t in (q, k, v))  # (N, H, len, Dh)

        if is_causal and attn_mask is None:
            raise ConfigError("is_causal=True needs attn_mask (as nn.MultiheadAttention does)")
        if is_causal and key_padding_mask is None and not need_weights:
            mask = None  # SDPA applies the causal mask itself
        else:
            is_causal = False
            mask = _float_mask(attn_mask, q.dtype, "attn_mask")
            if mask is not None and mask.dim() == 3:  # (N·H, L, S)
                mask = mask.reshape(N, H, L, S)
            pad = _float_mask(key_padding_mask, q.dtype, "key_padding_mask")
            if pad is not None:
                pad = pad.reshape(N, 1, 1, S)
                mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q * (1.0 / math.sqrt(Dh))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if p > 0:
                weights = F.dropout(weights, p=p)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(N, L, E))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


def replace_attention(model: nn.Module) -> list[str]:
    """Swap every nn.MultiheadAttention in ``model`` (in place) for a FeedbackReadyAttention that
    computes the same function; returns the swapped modules' names."""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            if not name:
                raise ConfigError("convert the model that holds the nn.MultiheadAttention, "
                                  "not the module itself")
            new = FeedbackReadyAttention(module)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, new)
            swapped.append(name)
    return swapped
