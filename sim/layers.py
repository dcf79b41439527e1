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
from .feedback import BP, DFA, FA, KP, PRESETS, DirectContext, DirectLowDim, LowDim, Rule, Sign, WeightMirror
from .ops import BatchedLinearOps, ConvOps, LinearOps, angle
from .target_prop import TargetBlock, inverse_parameters

RULES = ("bp", "fa", "dfa", "sign", "kp", "wm", "ld", *PRESETS)
BATCHED_RULES = ("bp", "fa", "kp", "ld", *PRESETS)


class BatchedLinear(nn.Module):
    """S independent nn.Linear(n_in, n_out): weight (S, n_out, n_in), bias (S, n_out).

    Inputs are (S, batch, n_in); `convert` gives it every rule in BATCHED_RULES.
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
        return layer.ops.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        layer = ctx.layer
        x, weight = ctx.saved_tensors
        ops, rule = layer.ops, layer.rule
        # under autocast the forward ran in low precision; the backward runs in W's dtype
        x_dtype = x.dtype
        x, g = x.to(weight.dtype), g.to(weight.dtype)
        need_input = ctx.needs_input_grad[0]
        if rule.sends_through_matrix() and hasattr(ops, "fused_backward"):
            # Bᵀg, Σ g xᵀ and Σ g in one call, as autograd's own conv backward does for bp
            gx, gW, gb = ops.fused_backward(x, g, rule.feedback_weight(layer), need_input, ctx.has_bias)
            extra = rule.grads(layer, x, g, gW)
        else:
            gb = ops.bias_grad(g) if ctx.has_bias else None
            gW = ops.weight_grad(x, g, weight.shape)
            gx, extra = rule.backward(layer, x, g, gW, need_input)
        if layer.track:
            layer.record(x, g, gx)
        gx = gx.to(x_dtype) if gx is not None else None
        return (gx, gW, gb, None, *[extra.get(name) for name in rule.learned])


class FeedbackLayer(nn.Module):
    """A linear map with W's forward pass and a feedback rule's backward pass."""

    def __init__(self, weight: nn.Parameter, bias, ops, rule: Rule, generator, is_output=False,
                 direct: DirectContext | None = None):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.ops, self.rule = ops, rule
        self.is_output, self.direct = is_output, direct
        self.track = False
        self.stats = {}
        rule.setup(self, generator)

    def forward(self, x):
        if isinstance(self.rule, BP) and not self.track and self.ops.kind != "batched-linear":
            return self.ops.forward(x, self.weight, self.bias)  # exactly autograd's backprop
        # (batched layers take the Function even for bp: its Σ gᵀx is laid out like W, autograd's
        # is a transposed view that costs a copy per weight per step)
        learned = [getattr(self, name) for name in self.rule.learned]
        return _Feedback.apply(x, self.weight, self.bias, self, *learned)

    @torch.no_grad()
    def record(self, x, g, gx):
        """Per-layer diagnostics of this backward (only when ``track`` is set)."""
        stats = {}
        if gx is not None:
            bp = self.ops.input_grad(g, self.weight, x.shape)
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


def make_rule(rule: str, rank=None, p_rule=None, q_rule=None, out_features=None, **options) -> Rule:
    """A fresh rule object by name (one per layer: rules may hold per-layer settings)."""
    if rule == "bp":
        return BP()
    if rule == "fa":
        return FA()
    if rule == "kp":
        return KP()
    if rule == "wm":
        return WeightMirror(**{k: v for k, v in options.items() if k in ("mirror_batch", "noise_std")})
    if rule == "sign":
        return Sign(options.get("scaling", "usf"))
    if rule == "dfa":
        return DFA(out_features)
    if rule in ("ld", *PRESETS):
        preset = dict(PRESETS.get(rule, {}))
        preset.update({k: v for k, v in (("p_rule", p_rule), ("q_rule", q_rule)) if v})
        if options.get("direct"):
            return DirectLowDim(out_features, rank, preset.get("p_rule", "fixed"))
        preset.setdefault("p_rule", "oja")
        preset.setdefault("q_rule", "kp")
        keep = ("init", "lowrank_scale", "svd_refresh", "svd_momentum", "mirror_batch")
        preset.update({k: v for k, v in options.items() if k in keep})
        return LowDim(rank, **preset)
    raise ConfigError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")


def convert(model: nn.Module, rule: str = "ld", rank: int | None = None, p_rule: str | None = None,
            q_rule: str | None = None, skip=("patch_embed",), rank_scale: dict | None = None,
            clip_rank: bool = False, seed: int = 0, **options) -> nn.Module:
    """Replace every nn.Linear and nn.Conv2d of ``model`` (in place) by a FeedbackLayer.

    rule: bp, fa, dfa, sign, kp, wm, ld, or a preset (ldfa, ldfa-local, raf).
    rank: r for ld rules; a layer's rank is rank·rank_scale[suffix] for a module name ending
      in suffix (default: qkv -> 3r, as in the authors' ViT), and the output layer's is cut
      to min(r, n_out). A rank above another layer's min(n_in, n_out) (conv: n_in = C_in·k·k)
      is an error, unless clip_rank=True cuts it there (the authors' min(r, n_l, n_{l+1})).
    skip: module names (or name suffixes) left with exact backprop (default: patch_embed).
    options: direct=True for direct ld; scaling for sign; init, lowrank_scale, svd_refresh,
      svd_momentum, mirror_batch for ld.
    The weights and biases stay the same nn.Parameter objects.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r}; allowed: {', '.join(RULES)}")
    is_ld = rule in ("ld", *PRESETS)
    if is_ld and rank is None:
        raise ConfigError(f"rule {rule!r} needs a rank r (--rank)")
    if not is_ld and rank is not None:
        raise ConfigError(f"rank applies to ld rules only, not to {rule!r}")
    if not is_ld and (p_rule or q_rule):
        raise ConfigError(f"--p-rule/--q-rule apply to ld rules only, not to {rule!r}")
    rank_scale = {"qkv": 3} if rank_scale is None else rank_scale
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, BatchedLinear))
               and not any(name == s or name.endswith("." + s) for s in skip)]
    if not targets:
        raise ConfigError(f"model {type(model).__name__} has no nn.Linear or nn.Conv2d to convert")
    out_name, out_module = targets[-1]
    out_features = out_module.weight.shape[-2 if isinstance(out_module, BatchedLinear) else 0]
    direct = DirectContext()
    generator = torch.Generator().manual_seed(seed)
    for name, m in targets:
        is_output = name == out_name
        if isinstance(m, nn.Conv2d):
            if is_ld and m.groups != 1:
                raise ConfigError(f"layer {name}: ld needs groups = 1, got {m.groups}")
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ConfigError(f"layer {name}: only numeric zero padding is supported")
            ops = ConvOps(m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, BatchedLinear):
            if rule not in BATCHED_RULES or options.get("direct") or q_rule == "mirror":
                raise ConfigError(f"rule {rule!r} is not available for batched layers; allowed: "
                                  f"{', '.join(BATCHED_RULES)} (layerwise, q_rule not mirror)")
            ops = BatchedLinearOps()
        else:
            ops = LinearOps()
        r = None
        if is_ld:
            n_out, n_in = ops.flat(m.weight).shape[-2:]
            scale = next((v for k, v in rank_scale.items() if name.endswith(k)), 1)
            r = rank * scale
            if is_output:
                r = min(r, n_out)
            elif clip_rank:
                r = min(r, n_out, n_in)
            elif r > min(n_out, n_in):
                raise ConfigError(f"rank r={r} exceeds layer {name!r} ({n_in} -> {n_out}); "
                                  f"allowed: 1..{min(n_out, n_in)}, or clip_rank=True (--clip-rank) "
                                  "to cut it")
        layer_rule = make_rule(rule, r, p_rule, q_rule, out_features, **options)
        new = FeedbackLayer(m.weight, m.bias, ops, layer_rule, generator, is_output, direct)
        _set_submodule(model, name, new)
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
            for name in m.rule.learned] + inverse_parameters(model)


def forward_parameters(model: nn.Module) -> list[nn.Parameter]:
    ids = {id(p) for p in feedback_parameters(model)}
    return [p for p in model.parameters() if id(p) not in ids and p.requires_grad]


def set_tracking(model: nn.Module, on: bool = True) -> None:
    """Record per-layer diagnostics (angles, P overlap, error dimension) in the next backward."""
    for _, m in feedback_layers(model):
        m.track = on
