"""Feedback-aware nn.Linear and nn.Conv2d, and `convert` for any torch model.

The forward pass is the ordinary one. The backward pass is a custom autograd
Function: the weight and bias get the local gradients (Σ g xᵀ, Σ g), the layer below
gets ``rule.input_grad`` instead of Wᵀ g, and the rule's own matrices get
``rule.grads``. Everything lands in .grad.
"""

from __future__ import annotations

import torch
from torch import nn

from ..theory.errors import ConfigError
from ..theory.rules import RuleSpec, resolve
from .attention import replace_attention
from .feedback import BP, FA, IMPLEMENTATIONS, KP, DirectContext, LowDim, Rule, svd_factors
from .ops import BatchedLinearOps, ConvOps, LinearOps, angle
from .probe import find_bypassed
from .strict import ErrorBoundary
from .target_prop import TargetBlock, inverse_parameters

IMPLEMENTATION_CHOICES = ("auto", "fast", "generic")


def batched_capable(rule: Rule) -> bool:
    """Fast paths written with ``@``/``.mT`` only run on BatchedLinear: bp, fa, kp, layerwise ld
    (except the mirror q_rule, which drives the layer with noise)."""
    if isinstance(rule, LowDim):
        return rule.q_rule != "mirror"
    return type(rule) in (BP, FA, KP)


class BatchedLinear(nn.Module):
    """S independent nn.Linear(n_in, n_out): weight (S, n_out, n_in), bias (S, n_out).

    Inputs are (S, batch, n_in); `convert` gives it the rules of :func:`batched_capable`.
    """

    def __init__(self, seeds: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seeds, n_out, n_in))
        self.bias = nn.Parameter(torch.empty(seeds, n_out)) if bias else None

    def forward(self, x):
        return BatchedLinearOps().forward(x, self.weight, self.bias)


class _Feedback(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer, *learned):
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        y, ctx.forward_products = layer.rule.forward(layer, x, weight, bias)
        return y

    @staticmethod
    def backward(ctx, g):
        layer = ctx.layer
        x, weight = ctx.saved_tensors
        ops, rule = layer.ops, layer.rule
        # under autocast the forward ran in low precision; the backward runs in W's dtype
        x_dtype = x.dtype
        x, g = x.to(weight.dtype), g.to(weight.dtype)
        need_input = ctx.needs_input_grad[0]
        layer.forward_products = ctx.forward_products  # this call's products (a layer may run twice)
        if rule.sends_through_matrix() and hasattr(ops, "fused_backward"):
            # Bᵀg, Σ g xᵀ and Σ g in one call, as autograd's own conv backward does for bp
            gx, gW, gb = ops.fused_backward(x, g, rule.feedback_weight(layer), need_input, ctx.has_bias)
            extra = rule.grads(layer, x, g, gW)
        else:
            gb = ops.bias_grad(g) if ctx.has_bias else None
            gW = ops.weight_grad(x, g, weight.shape)
            gx, extra = rule.backward(layer, x, g, gW, need_input)
        layer.forward_products = None
        if layer.track:
            layer.record(x, g, gx)
        gx = gx.to(x_dtype) if gx is not None else None
        return (gx, gW, gb, None, *[extra.get(name) for name in rule.learned])


class FeedbackLayer(nn.Module):
    """A linear map with W's forward pass and a feedback rule's backward pass."""

    def __init__(self, weight: nn.Parameter, bias, ops, rule: Rule, generator, is_output=False,
                 direct: DirectContext | None = None, input_numel: int | None = None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.ops, self.rule = ops, rule
        self.is_output, self.direct = is_output, direct
        self.input_numel = input_numel  # per-example input size (conv: C_in·H·W), if known
        self.track = False
        self.stats = {}
        rule.setup(self, generator)

    def forward(self, x):
        if not torch.is_grad_enabled() or (isinstance(self.rule, BP) and not self.track
                                           and self.ops.kind != "batched-linear"):
            return self.ops.forward(x, self.weight, self.bias)  # no backward, or exactly autograd's bp
        # (batched layers take the Function even for bp: its Σ gᵀx is laid out like W, autograd's
        # is a transposed view that costs a copy per weight per step)
        learned = [getattr(self, name) for name in self.rule.learned]
        return _Feedback.apply(x, self.weight, self.bias, self, *learned)

    @torch.no_grad()
    def record(self, x, g, gx):
        """Per-layer diagnostics of this backward (only when ``track`` is set)."""
        stats = {}
        if gx is not None:
            bp = self.ops.input_grad(g, self.weight, x)
            stats["angle_delta"] = angle(gx, bp)  # delivered error vs the bp error, this layer
        B = self.rule.feedback_weight(self) if not self.rule.direct else None
        if B is not None:
            stats["angle_B_W"] = angle(B, self.weight)
        rows = self.ops.rows(g).double()
        C = rows.t() @ rows
        eig = torch.linalg.eigvalsh(C).clamp_min(0)
        stats["error_dim"] = float(eig.sum() ** 2 / (eig**2).sum().clamp_min(1e-300))
        P = getattr(self, "P", None)
        if P is not None and P.shape[1] == C.shape[0]:
            r = P.shape[0]
            top = torch.linalg.eigh(C).eigenvectors[:, -r:]
            Qp, _ = torch.linalg.qr(P.t().double())
            stats["p_overlap"] = float(((Qp.t() @ top) ** 2).sum() / r)
        self.stats = stats

    def extra_repr(self):
        return f"{self.ops.kind}, weight={tuple(self.weight.shape)}, rule={self.rule}"


def make_rule(spec: RuleSpec, out_features: int | None = None, implementation: str = "auto") -> Rule:
    """A fresh rule object for one layer (rules may hold per-layer settings).

    ``auto``: the fast implementation registered under the theory's name (ldfa.sim.feedback
    IMPLEMENTATIONS) where it covers the spec's options, else the generic path
    (ldfa.sim.generic), which evaluates the theory's expressions; ``fast`` or ``generic``
    force one (``fast`` fails where none exists).
    """
    if implementation not in IMPLEMENTATION_CHOICES:
        raise ConfigError(f"unknown implementation {implementation!r}; allowed: "
                          f"{', '.join(IMPLEMENTATION_CHOICES)}")
    if implementation != "generic":
        factory = IMPLEMENTATIONS.get(spec.base)
        rule = factory(spec, out_features) if factory else None
        if rule is not None:
            return rule
        if implementation == "fast":
            raise ConfigError(f"rule {spec.name!r} with {spec.options}: no fast implementation; "
                              "use implementation='generic'")
    from .generic import GenericRule

    return GenericRule(spec, out_features)


def _conv_input_sizes(model: nn.Module, input_shape) -> dict:
    """{module: per-example input numel} of every nn.Conv2d, from one probe forward pass of a
    zero example (eval mode, no grad; the model's mode is restored)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if input_shape is None or not convs:
        return {}
    sizes, hooks = {}, []
    for m in convs:
        hooks.append(m.register_forward_pre_hook(lambda mod, inp: sizes.__setitem__(mod, inp[0][0].numel())))
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sizes


def convert(model: nn.Module, rule: str = "ld", rank: int | None = None, p_rule: str | None = None,
            q_rule: str | None = None, skip=("patch_embed",), rank_scale: dict | None = None,
            clip_rank: bool = False, seed: int = 0, direct: bool = False, input_shape=None,
            implementation: str = "auto", example_input=None, **options) -> nn.Module:
    """Replace every nn.Linear and nn.Conv2d of ``model`` (in place) by a FeedbackLayer.

    Every nn.MultiheadAttention is first swapped for a module computing the same function
    whose projections are called as modules (sim/attention.py), so that its packed q/k/v
    projection ``in_proj`` gets rank 3r and ``out_proj`` rank r like any other layer.

    rule: any name of ldfa.theory.rules.rule_names(), including rules registered at run time
      (they train through the generic path). Defaults: ldfa.theory.rules (docs/rules.md).
    rank: r for ld rules (direct: min(r, n_out), one for all layers); a layer's rank is
      rank·rank_scale[suffix] for a module name ending
      in suffix (default: qkv -> 3r, as in the authors' ViT), and the output layer's is cut
      to min(r, n_out). A rank above another layer's min(n_in, n_out) (conv: n_in = C_in·k·k)
      is an error, unless clip_rank=True cuts it there (the authors' min(r, n_l, n_{l+1})).
    skip: module names (or name suffixes) left with exact backprop (default: patch_embed).
    direct: the direct variant (ld). input_shape: the per-example input shape (e.g. (1, 28, 28));
      direct rules on conv layers need it to create their matrices here rather than at the
      first backward (one probe forward pass of a zero example).
    implementation: auto (fast path where one exists, else generic), fast, or generic.
    example_input: if given (a batch, or a tuple of the model's positional inputs), one probe
      forward and backward pass on a copy checks that every converted layer's backward runs;
      a layer whose weight the model reads without calling it (it would silently train with
      backprop) is a ConfigError naming it.
    options: the rule's options (ldfa.theory.rules: scaling for sign; mirror_batch, noise_std
      for wm; factor_init, lowrank_scale, svd_refresh, svd_momentum, mirror_batch for ld).
    Every matrix of the rule exists when convert returns. The weights and biases stay the
    same nn.Parameter objects.
    """
    spec = resolve(rule, p_rule, q_rule, direct, rank=rank, **options)
    rank_scale = {"qkv": 3, "in_proj": 3} if rank_scale is None else rank_scale
    replace_attention(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, BatchedLinear))
               and not any(name == s or name.endswith("." + s) for s in skip)]
    if not targets:
        raise ConfigError(f"model {type(model).__name__} has no nn.Linear or nn.Conv2d to convert")
    out_name, out_module = targets[-1]
    out_features = out_module.weight.shape[-2 if isinstance(out_module, BatchedLinear) else 0]
    sizes = _conv_input_sizes(model, input_shape) if spec.direct else {}
    context = DirectContext()
    generator = torch.Generator().manual_seed(seed)
    for name, m in targets:
        is_output = name == out_name
        if isinstance(m, nn.Conv2d):
            if spec.rule.uses_rank and m.groups != 1:
                raise ConfigError(f"layer {name}: ld needs groups = 1, got {m.groups}")
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ConfigError(f"layer {name}: only numeric zero padding is supported")
            ops = ConvOps(m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, BatchedLinear):
            if spec.direct:
                raise ConfigError(f"rule {rule!r}: direct feedback is not available for batched layers")
            ops = BatchedLinearOps()
        else:
            ops = LinearOps()
        r = None
        if spec.rule.uses_rank and spec.direct:
            r = min(rank, out_features)  # one bottleneck z = P e of r numbers, shared by every layer
        elif spec.rule.uses_rank:
            n_out, n_in = ops.flat(m.weight).shape[-2:]
            scale = next((v for k, v in rank_scale.items() if name.endswith(k)), 1)
            r = rank * scale
            if is_output:
                r = min(r, n_out)
            elif clip_rank:
                r = min(r, n_out, n_in)
            elif r > min(n_out, n_in):
                raise ConfigError(f"rank r={r} exceeds layer {name!r} ({n_in} -> {n_out}); "
                                  f"allowed: 1..{min(n_out, n_in)}, or clip_rank=True to cut it")
        layer_spec = RuleSpec(spec.name, spec.base, spec.rule, r, spec.direct, spec.options)
        layer_rule = make_rule(layer_spec, out_features, implementation)
        if isinstance(ops, BatchedLinearOps) and not batched_capable(layer_rule):
            raise ConfigError(f"rule {rule!r} ({layer_rule}) is not available for batched layers; "
                              "allowed: bp, fa, kp and layerwise ld (q_rule not mirror)")
        new = FeedbackLayer(m.weight, m.bias, ops, layer_rule, generator, is_output, context,
                            input_numel=sizes.get(m))
        _set_submodule(model, name, new)
    if example_input is not None:
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        bypassed = find_bypassed(model, *inputs, layer_type=FeedbackLayer)
        if bypassed:
            raise ConfigError(f"layers {', '.join(bypassed)}: the model reads their weights without calling "
                              "them, so their feedback rule would never run; allowed: convert a model "
                              "that calls its layers, or name them in skip=")
    return model


def _set_submodule(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def feedback_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every layer with its own backward rule and per-layer stats (FeedbackLayer, TargetBlock)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (FeedbackLayer, TargetBlock))]


def feedback_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The rules' own learned matrices (B, P, Q; target propagation's inverses V, c), for their
    own optimizer settings."""
    return [getattr(m, name) for _, m in feedback_layers(model) if isinstance(m, FeedbackLayer)
            for name in m.rule.learned] + inverse_parameters(model) + [
        m.P for m in model.modules() if isinstance(m, ErrorBoundary) and isinstance(m.P, nn.Parameter)]


@torch.no_grad()
def refresh_factors(model: nn.Module) -> int:
    """Re-initialise every layerwise ld layer's stored P and Q_w from the truncated SVD of its
    current weight, W_f ≈ A S Cᵀ: P = √S Aᵀ, Q_w = √S Cᵀ (the authors' periodic re-initialisation;
    the tensors are overwritten in place, so an optimizer's state for them is kept). Layers whose
    Q is aligned (computed from W) refresh P only. Returns the number of layers refreshed."""
    count = 0
    for _, m in feedback_layers(model):
        if isinstance(m, FeedbackLayer) and isinstance(m.rule, LowDim) and getattr(m, "P", None) is not None:
            P, Qw = svd_factors(m.weight, m.P.shape[-2], m.ops)
            m.P.copy_(P)
            if isinstance(getattr(m, "Q", None), torch.Tensor):
                m.Q.copy_(Qw)
            count += 1
    return count


def forward_parameters(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in feedback_parameters(model)}
    return [p for p in model.parameters() if id(p) not in ids and p.requires_grad]


def set_tracking(model: nn.Module, on: bool = True) -> None:
    """Record per-layer diagnostics (angles, P overlap, error dimension) in the next backward."""
    for _, m in feedback_layers(model):
        m.track = on
