"""Target propagation with learned, iterated inverses (Lee et al. 2015; Bengio 2020).

Each block of an MLP computes h_l = f_l(h_{l-1}) = φ(W_l h_{l-1} + b_l) (the last block has no
φ); an *inverse* g_l(h_l) = φ(V_l h_l + c_l) maps back (every block but the first has one).
Instead of the gradient, every layer receives a **target**. At the output,

    t_L = h_L - β ∂ℓ/∂h_L                                    (ℓ: the per-example loss)

and a target is carried down by the difference-corrected inverse, iterated k times,

    x_0 = h_{l-1},   x_{j+1} = x_j + g_l(t_l) - g_l(f_l(x_j)),   t_{l-1} = x_k.

k = 1 is difference target propagation (dtp: t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l)); k > 1
refines the inverse (ddtp, ``--inverse-iters k``): where I - J_g J_f is contractive the x_j
converge exponentially to the input whose output is t_l, so the update approaches
Gauss-Newton as β -> 0 (the *differential* regime, small β; in float32 the update is a
difference of O(1) activations divided by β, measured 1e-5 relative round-off at β = 0.01
and 1e-3 at β = 1e-4, so go below 1e-4 only in float64). Each layer then moves toward its
own target with the local loss ½‖f_l(h_{l-1}) - t_l‖², whose gradient is the layer's
ordinary local gradient at the error e_l = (h_l - t_l)/β (so β only sets how far the targets
reach, and the learning rate keeps its meaning).

With ``normalize`` (layer influence, Bengio 2020 section on normalization, in the form of a
public implementation that follows the paper; the paper's body text was not available to us)
every hidden layer's update uses the scaled shift s_l d_l, s_l = ‖d_L‖² / ‖d_l‖² per example,
where d_l = t_l - h_l; the unscaled target keeps travelling down. With exact inverses
d_l = J_l⁻¹ d_L (J_l = ∂h_L/∂h_l), so the bp error G_l = J_lᵀ ∂ℓ/∂h_L has G_l · d_l = -‖d_L‖²/β
and -s_l d_l/β (the error the layer descends) is exactly G_l projected on the target
direction: a layer whose small change moves the output a lot (large influence) takes a large
step, as under gradient descent. It needs one scalar per example, ‖d_L‖², broadcast to every
layer, and no weight transport. s_l is not bounded: where an inverse nearly collapses d_l the
step grows as ‖d_L‖²/‖d_l‖ (logged as influence_scale_median / _max).

The inverses learn at the same time by the local reconstruction loss
½‖g_l(f_l(h̃)) - h̃‖², h̃ = h_{l-1} + σ ε (ε ~ N(0, I)), its gradient put in V_l's and c_l's .grad.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..theory.errors import ConfigError
from .ops import angle

Map = Callable[[torch.Tensor], torch.Tensor]
TP_RULES = ("dtp", "ddtp")
TP_DEFAULTS = {"dtp": dict(iters=1, beta=0.5), "ddtp": dict(iters=5, beta=0.01)}


def refine_target(f: Map, g: Map, target: torch.Tensor, x0: torch.Tensor, iters: int) -> list[torch.Tensor]:
    """The iterates x_0 .. x_k of x_{k+1} = x_k + g(target) - g(f(x_k)).

    Its error e_k = x_k - x* (f(x*) = target) obeys e_{k+1} = e_k - (g(f(x_k)) - g(f(x*))): one
    step of T(x) = x - g(f(x)) + g(target). Where I - J_g J_f is contractive (Lipschitz
    constant ρ < 1), ‖e_k‖ <= ρ^k ‖e_0‖, and asymptotically the rate is the spectral radius
    of I - J_g J_f at x*.
    """
    check_iters(iters)
    g_target = g(target)
    xs = [x0]
    for _ in range(iters):
        xs.append(xs[-1] + g_target - g(f(xs[-1])))
    return xs


def check_iters(iters) -> int:
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"inverse iterations k={iters!r}: must be an integer >= 1 (--inverse-iters)")
    return iters


def contraction(f: Map, g: Map, x: torch.Tensor) -> tuple[float, float]:
    """(spectral norm, spectral radius) of I - J_g(f(x)) J_f(x) at one input vector x.

    The norm bounds the rate of every step near x; the radius is the asymptotic rate. For a
    block that narrows (n_out < n_in) I - J_g J_f keeps eigenvalue 1 on the n_in - n_out
    directions f cannot see, so the radius is >= 1 even for an exact pseudo-inverse: there the
    iterates stop moving in those directions rather than converge, and the rate that matters
    is that of the output residual, I - J_f J_g (call this with f and g swapped).
    """
    n = x.numel()
    Jf = torch.autograd.functional.jacobian(f, x).reshape(-1, n)
    Jg = torch.autograd.functional.jacobian(g, f(x)).reshape(n, -1)
    M = torch.eye(n, dtype=x.dtype, device=x.device) - Jg @ Jf
    return float(torch.linalg.matrix_norm(M, ord=2)), float(torch.linalg.eigvals(M).abs().max())


class TargetBlock(nn.Module):
    """h_l = f_l(h_{l-1}) = φ(W h + b) with a learned inverse g_l(h_l) = φ_in(V h_l + c).

    ``linear`` keeps the original nn.Linear (same W, b Parameters). ``inverse`` is None for the
    first block (nothing below it needs a target); φ_in is the activation of the block below.
    """

    def __init__(self, linear: nn.Linear, act, inverse_act, has_inverse: bool, is_output: bool,
                 tp: TargetProp):
        super().__init__()
        self.linear, self.act, self.inverse_act, self.tp = linear, act, inverse_act, tp
        self.is_output = is_output
        w = linear.weight
        self.inverse = (nn.Linear(linear.out_features, linear.in_features, device=w.device, dtype=w.dtype)
                        if has_inverse else None)
        self.track, self.stats = False, {}

    def f(self, h):
        a = self.linear(h)
        return a if self.act is None else self.act(a)

    def g(self, h):
        return self.inverse_act(self.inverse(h))

    def forward(self, h, state: dict | None = None):
        """``state``: one dict per forward pass of the whole net, where the output block's
        backward leaves ‖d_L‖² for the hidden blocks (influence normalization)."""
        state = {} if state is None else state
        if self.inverse is None:
            return _TargetStep.apply(h, self.linear.weight, self.linear.bias, self, state)
        return _TargetStep.apply(h, self.linear.weight, self.linear.bias, self, state,
                                 self.inverse.weight, self.inverse.bias)

    def extra_repr(self):
        return f"{self.tp}, inverse={'none' if self.inverse is None else tuple(self.inverse.weight.shape)}"


class TargetProp:
    """The rule's settings (read-only, shared by the blocks): k, β, σ, normalize."""

    def __init__(self, name: str, iters: int, beta: float, noise: float, normalize: bool):
        if name not in TP_RULES:
            raise ConfigError(f"unknown target-propagation rule {name!r}; allowed: {', '.join(TP_RULES)}")
        self.name, self.iters = name, check_iters(iters)
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ConfigError(f"target step beta={beta!r}: must be a positive number")
        if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
            raise ConfigError(f"inverse noise sigma={noise!r}: must be a number >= 0")
        self.beta, self.noise, self.normalize = float(beta), float(noise), bool(normalize)

    def __repr__(self):
        return (f"{self.name}(k={self.iters}, beta={self.beta:g}, sigma={self.noise:g}, "
                f"normalize={self.normalize})")


def _local_vjp(fn, inputs, cotangent, params):
    """(J_params fn(inputs))ᵀ cotangent, recomputing fn with autograd on detached inputs."""
    with torch.enable_grad():
        out = fn(inputs.detach())
        return torch.autograd.grad(out, params, cotangent, allow_unused=True)


class _TargetStep(torch.autograd.Function):
    """Forward: f_l. Backward: receives e_l/B (the batch-mean error at h_l), returns W's and b's
    local gradients, the error e_{l-1}/B from the propagated target, and the inverse's
    reconstruction gradient."""

    @staticmethod
    def forward(ctx, h, weight, bias, block, state, *inverse_params):
        out = block.f(h)
        ctx.block, ctx.state = block, state
        ctx.save_for_backward(h, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, out = ctx.saved_tensors
        block, tp = ctx.block, ctx.block.tp
        if block.track:
            block.stats = {}  # this step's diagnostics only
        step = tp.beta * h.shape[0]  # grad = ∂(mean loss)/∂h_l; per example ∂ℓ/∂h_l = B · grad
        with torch.no_grad():
            shift = -step * grad  # d_l = t_l - h_l, one row per example
            if block.is_output:
                ctx.state["output_shift_sq"] = shift.pow(2).sum(1, keepdim=True)
            scale = 1.0
            if tp.normalize and not block.is_output:  # s_l = ‖d_L‖² / ‖d_l‖², per example
                if "output_shift_sq" not in ctx.state:
                    raise RuntimeError("target propagation with normalize needs the backward to start "
                                       "at the output block (the loss of the whole net's output)")
                scale = ctx.state["output_shift_sq"] / shift.pow(2).sum(1, keepdim=True).clamp_min(1e-30)
        lin = block.linear
        params = [lin.weight] + ([lin.bias] if lin.bias is not None else [])
        local = _local_vjp(block.f, h, scale * grad, params)
        gW, gb = local[0], (local[1] if lin.bias is not None else None)
        if block.track and tp.normalize and not block.is_output:
            block.stats["influence_scale_median"] = float(scale.median())
            block.stats["influence_scale_max"] = float(scale.max())
        if block.inverse is None:
            return (None, gW, gb, None, None)
        with torch.no_grad():
            xs = refine_target(block.f, block.g, out + shift, h, tp.iters)
            grad_in = (h - xs[-1]) / step  # the unnormalized target travels on: t_{l-1} = x_k
            if block.track:
                block.stats.update({"angle_delta": angle(grad_in, _input_vjp(block.f, h, grad)),
                                    "reconstruction": float((block.g(out) - h).pow(2).sum(1).mean())})
                if len(xs) > 2:  # measured rate ‖x_k - x_{k-1}‖ / ‖x_{k-1} - x_{k-2}‖ (< 1: contracting),
                    last, prev = (xs[-1] - xs[-2]).norm(), (xs[-2] - xs[-3]).norm()
                    if prev > 1e-6 * (xs[1] - xs[0]).norm():  # unless already converged to round-off
                        block.stats["inverse_rate"] = float(last / prev)
        noisy = h + tp.noise * torch.randn_like(h)
        with torch.enable_grad():
            rec = block.g(block.f(noisy).detach())
            loss = 0.5 * (rec - noisy).pow(2).sum(1).mean()
            gV, gc = torch.autograd.grad(loss, [block.inverse.weight, block.inverse.bias])
        return (grad_in, gW, gb, None, None, gV, gc)


def _input_vjp(fn, h, grad):
    """J_f(h)ᵀ grad: the error backprop would carry through this block."""
    with torch.enable_grad():
        x = h.detach().requires_grad_(True)
        return torch.autograd.grad(fn(x), x, grad)[0]


class TargetPropMLP(nn.Module):
    """An MLP (or deep linear net) whose layers are TargetBlocks: the forward pass is the MLP's,
    the backward pass is target propagation."""

    def __init__(self, net: nn.Module, tp: TargetProp):
        super().__init__()
        from .models import MLP, DeepLinear

        if not isinstance(net, (MLP, DeepLinear)):
            raise ConfigError(f"rule {tp.name!r} needs a fully connected model (mlp or linear), "
                              f"not {type(net).__name__}")
        self.out_features = net.out_features
        act = getattr(net, "act", None)
        identity = nn.Identity()
        n = len(net.layers)
        self.blocks = nn.ModuleList(
            TargetBlock(layer, act if (act is not None and i < n - 1) else None,
                        act if act is not None else identity, i > 0, i == n - 1, tp)
            for i, layer in enumerate(net.layers))

    def forward(self, x):
        x = x.flatten(1) if x.dim() > 2 else x
        state = {}  # this pass's ‖d_L‖², shared by its blocks only
        for block in self.blocks:
            x = block(x, state)
        return x


def inverse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned inverses' V, c (trained by their reconstruction loss)."""
    return [p for m in model.modules() if isinstance(m, TargetBlock) and m.inverse is not None
            for p in m.inverse.parameters()]
