"""A probe pass that finds converted layers a model bypasses.

A module that reads a child's ``.weight`` directly, instead of calling the child
(as ``nn.MultiheadAttention`` does with ``out_proj``), computes the right forward
pass, but the feedback rule attached to that child never runs: the weight trains
with exact backprop and the rule's own matrices get no gradient. A probe sees it:
the weight receives a gradient although the layer's forward never ran.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _scalar(out) -> torch.Tensor | None:
    """Σ of every floating-point tensor in a model's output (tensor, tuple, list or dict)."""
    if isinstance(out, torch.Tensor):
        return out.sum() if out.is_floating_point() and out.requires_grad else None
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else ()
    parts = [s for s in (_scalar(o) for o in items) if s is not None]
    return torch.stack(parts).sum() if parts else None


def find_bypassed(model: nn.Module, *example_inputs, layer_type: type) -> list[str]:
    """Names of the ``layer_type`` modules whose weight gets a gradient from one forward and
    backward pass on ``example_inputs`` although their own forward did not run.

    The probe runs on a deep copy with the RNG state restored afterwards, so ``model``, its
    gradients, buffers and every random stream are left exactly as they were.
    """
    probe = copy.deepcopy(model)
    ran, hooks = set(), []
    for name, m in probe.named_modules():
        if isinstance(m, layer_type):
            hooks.append(m.register_forward_pre_hook(lambda mod, args, name=name: ran.add(name)))
    for p in probe.parameters():
        p.grad = None
    with torch.random.fork_rng(devices=[]):
        total = _scalar(probe(*example_inputs))
        if total is not None:
            total.backward()
    for h in hooks:
        h.remove()
    return [name for name, m in probe.named_modules()
            if isinstance(m, layer_type) and name not in ran and m.weight.grad is not None]
