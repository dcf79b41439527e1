"""Hand-written (fast) torch implementations of the rules of :mod:`ldfa.theory.rules`.

Each class here is registered under the theory's name of the rule it implements
(:data:`IMPLEMENTATIONS`); rule names, factor rules, presets and defaults are not listed
here but read from the theory. A rule without an entry (or an option combination that a
fast path does not cover) trains through :mod:`ldfa.sim.generic`, which evaluates the
theory's expressions themselves. Each fast path is written once for every layer type.

A rule decides two things in a layer's backward pass, given the arriving error g
(the gradient w.r.t. the layer's output, shape of the output) and the input x:

    input_grad(layer, x, g)          the error sent down to the layer below
    grads(layer, x, g, gW)           .grad of the rule's own learned matrices (B, P, Q)

The forward weight's gradient gW = Σ g xᵀ is always the local product, whatever the
rule. Matrices are kept in *weight orientation* (the shape of W): the feedback B_w
has W's shape and the error sent down is B_wᵀ g; ld keeps P (r x n_out) and Q_w
(r x n_in; r x C_in x k x k for conv), so B_w = Pᵀ Q_w and the error sent down is
Q_wᵀ (P g): compress to r numbers, then expand. The theory's B (shape of Wᵀ) is B_wᵀ
(the orientation convention of :mod:`ldfa.theory.rules`).

Every learned matrix is an nn.Parameter whose change lands in .grad (the negative
of the update), so any torch optimizer, clipping or DDP applies unchanged.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..theory.errors import ConfigError
from ..theory.rules import LD_DEFAULTS, SIGN_SCALINGS, RuleSpec
from .ops import few_rows_times

# theory name -> factory(spec, out_features) returning a Rule, or None where this fast path
# does not cover the spec's options (the generic path then takes it)
IMPLEMENTATIONS: dict[str, Callable] = {}


def implements(name: str):
    """Register a fast torch implementation under the theory's rule name ``name``."""
    def register(factory):
        IMPLEMENTATIONS[name] = factory
        return factory
    return register


def gaussian_noise(shape, like: torch.Tensor) -> torch.Tensor:
    """The mirror phase's white noise ξ ~ N(0, I) (one draw per call)."""
    return torch.randn(shape, device=like.device, dtype=like.dtype)


def top_subspace(C: torch.Tensor, r: int) -> torch.Tensor:
    """(..., r, n) orthonormal rows spanning the top-r eigenvectors of symmetric C, each row's
    largest-magnitude entry positive (the convention of ldfa.theory.integrate.top_subspace)."""
    w, V = torch.linalg.eigh(((C + C.mT) / 2).double())
    top = V[..., -r:].flip(-1).mT
    idx = top.abs().argmax(-1, keepdim=True)
    return (top * torch.sign(torch.gather(top, -1, idx))).to(C.dtype)


def _like_weight(W: torch.Tensor, generator: torch.Generator, ops) -> torch.Tensor:
    """A random matrix with W's shape and torch's default layer init, U(±1/√fan_in)."""
    fan_in = ops.fan_in(W)
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(W.shape, generator=generator, dtype=W.dtype) * 2 - 1).mul_(bound).to(W.device)


def _orthonormal_rows(shape, generator, like: torch.Tensor) -> torch.Tensor:
    """Random (..., r, n) with orthonormal rows (one independent draw per leading index)."""
    *lead, r, n = shape
    q, _ = torch.linalg.qr(torch.randn(*lead, n, r, generator=generator, dtype=torch.float64))
    return q[..., :r].mT.contiguous().to(like.device, like.dtype)


class Rule:
    """Base: backprop. Subclasses override what differs."""

    name = "bp"
    direct = False
    learned: tuple = ()  # names of the rule's nn.Parameters on the layer

    def setup(self, layer, generator):
        """Create the rule's matrices on ``layer`` (called once by convert)."""

    def feedback_weight(self, layer) -> torch.Tensor:
        """B_w, the matrix whose transpose carries the error down (shape of W)."""
        return layer.weight

    def input_grad(self, layer, x, g):
        return layer.ops.input_grad(g, self.feedback_weight(layer), x)

    def grads(self, layer, x, g, gW) -> dict:
        return {}

    def forward(self, layer, x, W, b):
        """(W's forward output, products the backward will reuse or None). Rules that need a
        product with W in their backward can form it here, in the same pass over W."""
        return layer.ops.forward(x, W, b), None

    @classmethod
    def sends_through_matrix(cls) -> bool:
        """True if the error sent down is ops.input_grad(g, B_w) with a full matrix B_w (bp, fa,
        kp, wm, sign): the layer can then form it together with the weight gradient."""
        return cls.backward is Rule.backward and cls.input_grad is Rule.input_grad

    def backward(self, layer, x, g, gW, need_input: bool):
        """(error for the layer below or None, {name: .grad of the rule's own matrices})."""
        return (self.input_grad(layer, x, g) if need_input else None), self.grads(layer, x, g, gW)

    def __repr__(self):
        return self.name


class BP(Rule):
    name = "bp"


class FA(Rule):
    """Feedback alignment: B_w fixed random (Lillicrap et al. 2016)."""

    name = "fa"

    def setup(self, layer, generator):
        layer.register_buffer("B", _like_weight(layer.weight, generator, layer.ops))

    def feedback_weight(self, layer):
        return layer.B


class KP(FA):
    """Kolen-Pollack: ΔB = ΔW (weight orientation), both with the optimizer's weight decay."""

    name = "kp"
    learned = ("B",)

    def setup(self, layer, generator):
        layer.B = torch.nn.Parameter(_like_weight(layer.weight, generator, layer.ops))

    def grads(self, layer, x, g, gW):
        return {"B": gW}


class WeightMirror(KP):
    """Weight mirror: ΔB_w = η ⟨(W ξ) ξᵀ⟩ with noise ξ driving the layer (Akrout et al. 2019),
    averaged over the ``mirror_batch`` noise examples; its mean (ξ white, std 1) is η W, the
    theory's τ_B dB/dt = Wᵀ. Decay toward zero comes from the optimizer's weight decay λ on B.
    ``noise`` draws ξ (default :func:`gaussian_noise`)."""

    name = "wm"

    def __init__(self, mirror_batch: int = 32, noise_std: float = 1.0, noise=gaussian_noise):
        self.mirror_batch, self.noise_std, self.noise = mirror_batch, noise_std, noise

    def grads(self, layer, x, g, gW):
        xi = self.noise((self.mirror_batch, *x.shape[1:]), x) * self.noise_std
        y = layer.ops.forward(xi, layer.weight, None)
        return {"B": -layer.ops.weight_grad(xi, y, layer.weight.shape) / self.mirror_batch}


class Sign(Rule):
    """Sign symmetry: B_w = M ⊙ sign(W), rescaled to ‖W‖_F (Liao et al. 2016).

    usf: M = 1; brsf: M = |N(0,1)| drawn each batch; frsf: M = |N(0,1)| drawn once.
    """

    name = "sign"

    def __init__(self, scaling: str = "usf"):
        if scaling not in SIGN_SCALINGS:
            raise ConfigError(f"unknown scaling {scaling!r}; allowed: {', '.join(SIGN_SCALINGS)}")
        self.scaling = scaling
        self.name = f"sign-{scaling}"

    def setup(self, layer, generator):
        if self.scaling == "frsf":
            layer.register_buffer("M", torch.randn(layer.weight.shape, generator=generator).abs()
                                  .to(layer.weight.device, layer.weight.dtype))

    def feedback_weight(self, layer):
        W = layer.weight
        if self.scaling == "usf":
            B = torch.sign(W)
        elif self.scaling == "frsf":
            B = layer.M * torch.sign(W)
        else:
            B = torch.randn_like(W).abs_() * torch.sign(W)
        return B * (W.norm() / B.norm().clamp_min(1e-30))


def lowrank_factor(lowrank_scale, rank: int, ops) -> float:
    """The factor on lowrank's ∇P, ∇Q: 1/√r if lowrank_scale is True, or "auto" on a linear
    layer (the authors' convention: their conv layers omit it); 1 otherwise. A factor c is
    the theory's flow with τ_P, τ_Q multiplied by 1/c."""
    on = lowrank_scale is True or (lowrank_scale == "auto" and ops.kind != "conv")
    return 1.0 / math.sqrt(rank) if on else 1.0


class LowDim(Rule):
    """Low-dimensional feedback B_w = Pᵀ Q_w of rank r.

    The error sent down is compress-then-expand: z = P g (r numbers), then Q_wᵀ z;
    the n_out x n_in product is never formed. Options and defaults: ldfa.theory.rules.LD_DEFAULTS.
    """

    def __init__(self, rank: int, p_rule: str = LD_DEFAULTS["p_rule"], q_rule: str = LD_DEFAULTS["q_rule"],
                 factor_init: str = LD_DEFAULTS["factor_init"],
                 lowrank_scale=LD_DEFAULTS["lowrank_scale"], svd_refresh: int = LD_DEFAULTS["svd_refresh"],
                 svd_momentum: float = LD_DEFAULTS["svd_momentum"],
                 mirror_batch: int = LD_DEFAULTS["mirror_batch"], noise=gaussian_noise):
        self.rank, self.p_rule, self.q_rule, self.factor_init = rank, p_rule, q_rule, factor_init
        self.lowrank_scale, self.svd_refresh, self.svd_momentum = lowrank_scale, svd_refresh, svd_momentum
        self.mirror_batch, self.noise = mirror_batch, noise
        self.name = f"ld[{p_rule},{q_rule}] r={rank}"
        self.learned = tuple(n for n, rule in (("P", p_rule), ("Q", q_rule))
                             if rule in ("oja", "kp", "lowrank", "mirror"))

    # -- set-up ------------------------------------------------------------------------
    def setup(self, layer, generator):
        W, ops = layer.weight, layer.ops
        n_out, n_in = ops.flat(W).shape[-2:]
        r = self.rank
        self.scale = lowrank_factor(self.lowrank_scale, r, ops)
        P, Qw = init_factors(W, r, ops, generator, self.factor_init)
        for name, value, rule in (("P", P, self.p_rule), ("Q", Qw, self.q_rule)):
            if name in self.learned:
                setattr(layer, name, torch.nn.Parameter(value))
            elif rule != "aligned":
                layer.register_buffer(name, value)
        if self.p_rule == "svd":
            layer.register_buffer("C", torch.zeros(*ops.lead(W), n_out, n_out, device=W.device,
                                                   dtype=W.dtype))
            layer.register_buffer("steps", torch.zeros((), dtype=torch.long, device=W.device))

    def q_weight(self, layer):
        """Q_w: the expansion factor (aligned: Q_w = P W, weight transport through P)."""
        if self.q_rule == "aligned":
            return layer.ops.unflat_q(layer.P @ layer.ops.flat(layer.weight), layer.weight)
        return layer.Q

    def feedback_weight(self, layer):
        ops = layer.ops
        return (layer.P.mT @ ops.flat_q(self.q_weight(layer))).reshape(layer.weight.shape)

    def forward(self, layer, x, W, b):
        """lowrank P on a linear layer: Q_w Wᵀ, which ∇P needs, comes out of the forward product
        itself, [x; Q_w] Wᵀ = [x Wᵀ; Q_w Wᵀ] (Q_w stacked under the batch, one read of W), so
        the backward does not read W for it. Only where W is at least as large as the batch of
        inputs that the stacking copies (an MLP's wide layers, not a transformer's token batch),
        and not under autocast (∇P needs W's precision)."""
        if (self.p_rule != "lowrank" or layer.ops.kind != "linear" or W.numel() < x.numel()
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(layer, x, W, b)
        n = x.numel() // x.shape[-1]
        stacked = torch.cat([x.reshape(n, x.shape[-1]), self.q_weight(layer).to(x.dtype)]).mm(W.t())
        y = stacked[:n]
        if b is not None:
            y.add_(b)
        return y.view(*x.shape[:-1], W.shape[0]), {"QWt": stacked[n:]}

    # -- backward ----------------------------------------------------------------------
    def backward(self, layer, x, g, gW, need_input: bool):
        """z = P g once (r numbers per example); the layer below gets Q_wᵀ z."""
        if self.p_rule == "svd":
            self._track_covariance(layer, g)
        if not need_input:  # the first layer: z only if P's or Q's own update needs it (grads)
            return None, self.grads(layer, x, g, gW)
        z = layer.ops.compress(g, layer.P)
        return layer.ops.input_grad(z, self.q_weight(layer), x), self.grads(layer, x, g, gW, z)

    def input_grad(self, layer, x, g):
        return self.backward(layer, x, g, None, True)[0]

    @torch.no_grad()
    def _track_covariance(self, layer, g):
        """Running ⟨δ δᵀ⟩; P = its top-r eigenvectors, refreshed every svd_refresh steps
        (svd_momentum 0, svd_refresh 1: the theory's P = top_r(C) of this batch)."""
        d = layer.ops.rows(g) * layer.ops.batch_size(g)  # per-example error (batch-mean loss)
        C = d.mT @ d / d.shape[-2]
        layer.C.mul_(self.svd_momentum).add_(C, alpha=1 - self.svd_momentum)
        if int(layer.steps) % self.svd_refresh == 0:
            layer.P.copy_(top_subspace(layer.C, self.rank).to(layer.P.dtype))
        layer.steps += 1

    def grads(self, layer, x, g, gW, z=None):
        out, ops = {}, layer.ops
        P, Wf = layer.P, ops.flat(layer.weight)
        scale = self.scale
        Qf = ops.flat_q(self.q_weight(layer))
        # Kolen-Pollack's products with ΔW = Σ g xᵀ are formed from W's gradient itself where that
        # is smaller than the batch (n_out < samples: conv maps, token batches), else on the batch
        # side; the two are equal by linearity
        from_gW = gW is not None and ops.flat(gW).shape[-2] < ops.n_rows(g)
        if z is None and (self.p_rule == "oja" or (self.q_rule == "kp" and not from_gW)):
            z = ops.compress(g, P)
        if self.p_rule == "oja":
            # ΔP = η ⟨z δᵀ - z zᵀ P⟩ with δ = b·g the per-example error (batch-mean loss over
            # b examples; every position of a conv map and every token counts as a sample)
            out["P"] = oja_grad(P, ops.cross(z, g), ops.n_rows(g), ops.batch_size(g))
        elif self.p_rule == "kp" and from_gW:  # ΔP = Q_w ΔWᵀ (theory: Qᵀ ΔWᵀ)
            out["P"] = few_rows_times(Qf, ops.flat(gW).mT)
        elif self.p_rule == "kp":  # the same on the batch side: Σ (Q_w x) gᵀ
            y = ops.forward(x, self.q_weight(layer), None)
            out["P"] = ops.cross(y, g)
        elif self.p_rule == "lowrank":  # ∇P without forming QP - Wᵀ; Q_w Wᵀ from the forward if it made it
            QWt = (getattr(layer, "forward_products", None) or {}).get("QWt")
            out["P"] = ((Qf @ Qf.mT) @ P - (few_rows_times(Qf, Wf.mT) if QWt is None else QWt)) * scale
        if self.q_rule == "kp" and from_gW:  # ΔQ_w = P ΔW
            out["Q"] = few_rows_times(P, ops.flat(gW)).reshape(layer.Q.shape)
        elif self.q_rule == "kp":  # the same on the batch side: Σ (P g) xᵀ
            out["Q"] = ops.weight_grad(x, z, layer.Q.shape)
        elif self.q_rule == "lowrank":
            out["Q"] = (((P @ P.mT) @ Qf - few_rows_times(P, Wf)) * scale).reshape(layer.Q.shape)
        elif self.q_rule == "mirror":
            # ΔQ_w = η ⟨(P W ξ) ξᵀ⟩ over mirror_batch noise examples; mean (ξ white) η P W
            xi = self.noise((self.mirror_batch, *x.shape[1:]), x)
            y = layer.ops.compress(layer.ops.forward(xi, layer.weight, None), P)
            out["Q"] = -layer.ops.weight_grad(xi, y, layer.Q.shape) / self.mirror_batch
        return out


def oja_grad(P, zg, rows: int, batch: int):
    """P.grad of Oja's subspace rule, ΔP = η ⟨z δᵀ - z zᵀ P⟩ over ``rows`` samples, from the sum
    zg = Σ z gᵀ (z = P g), with the per-example error δ = batch·g (the loss is a mean over
    ``batch`` examples). Σ z zᵀ = P (Σ g gᵀ) Pᵀ = zg Pᵀ is formed from zg (r x r), not from
    another pass over the samples."""
    return -(zg - (zg @ P.mT) @ P) * (batch**2 / rows)


def svd_factors(W: torch.Tensor, r: int, ops):
    """Truncated SVD W_f ≈ A S Cᵀ split evenly: P = √S Aᵀ (r x n_out), Q_w = √S Cᵀ (r x n_in')."""
    Wf = ops.flat(W).detach()
    r = min(r, *Wf.shape[-2:])
    A, S, Vh = torch.linalg.svd(Wf.double(), full_matrices=False)
    root = S[..., :r].sqrt()[..., None]
    P = (root * A[..., :r].mT).to(W.dtype)
    Qw = ops.unflat_q((root * Vh[..., :r, :]).to(W.dtype), W)
    return P.contiguous(), Qw.contiguous()


def init_factors(W: torch.Tensor, r: int, ops, generator, factor_init: str = "random"):
    """(P, Q_w) at the start: factor_init ``svd``, the truncated SVD of W (:func:`svd_factors`);
    ``random``, P with orthonormal rows and Q_w Gaussian so that ‖Pᵀ Q_w‖ matches a random
    matrix with W's default init, U(±1/√fan_in)."""
    if factor_init == "svd":
        return svd_factors(W, r, ops)
    n_out, n_in = ops.flat(W).shape[-2:]
    P = _orthonormal_rows(ops.p_shape(W, r), generator, W)
    std = math.sqrt(n_out / (3.0 * r * n_in))
    Qw = (torch.randn(ops.q_shape(W, r), generator=generator, dtype=W.dtype) * std).to(W.device)
    return P, Qw


# -- direct rules: the output error e goes straight to every layer --------------------

class DirectContext:
    """Shared by the layers of one converted model: the output error e of this backward,
    z = P e (direct ld) and the matrices shared by all layers (the output layer's)."""

    def __init__(self):
        self.e = None
        self.z = None
        self.shared_layer = None  # the output layer: holds the matrices shared by all layers


def _to_input_shape(signal, x):
    """(batch x n) direct signal -> x's shape: conv inputs are flattened per example (n = C·H·W),
    or get the same C-channel signal at every position (n = C); token inputs (batch x tokens x n)
    get the same signal at every token."""
    if signal.shape[-1] == x[0].numel():
        return signal.reshape(x.shape)
    if x.dim() == 4 and signal.shape[-1] == x.shape[1]:
        return signal.reshape(*signal.shape, 1, 1).expand(x.shape)
    return signal.reshape(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]).expand(x.shape)


def direct_width(layer) -> int | None:
    """n, the width of the direct signal a layer sends down: in_features for a linear layer,
    the per-example input size C_in·H·W for conv (None while unknown: convert(input_shape=...))."""
    if layer.ops.kind == "conv":
        return layer.weight.shape[1] if conv_feedback(layer) == "channel" else layer.input_numel
    return layer.weight.shape[-1]


def conv_feedback(layer) -> str:
    """How a direct rule reaches a conv layer: "channel" (one d x C_in matrix, its signal the same
    at every position: memory independent of the image size) or "full" (d x C_in·H·W)."""
    return getattr(layer.rule, "conv_feedback", "full")


def direct_matrix(layer, name: str, rows: int, x=None) -> torch.Tensor:
    """The fixed random direct matrix (rows x n), entries N(0, 1/rows), drawn from the layer's
    own seed: created by convert when n is known, else at the first backward (conv without
    input_shape), then kept as a buffer."""
    M = getattr(layer, name, None)
    if M is None:
        n = direct_width(layer) if x is None else (x.shape[-1] if layer.ops.kind != "conv" else
                                                   x.shape[1] if conv_feedback(layer) == "channel"
                                                   else x[0].numel())
        if n is None:
            return None
        gen = torch.Generator().manual_seed(layer.generator_seed)
        W = layer.weight
        M = (torch.randn(rows, n, generator=gen, dtype=W.dtype) / math.sqrt(rows)).to(W.device)
        layer.register_buffer(name, M)
    return M


def direct_signal(layer, g):
    """e (batch x d): the output layer records its own arriving error; the others read it."""
    if layer.is_output:
        layer.direct.e = g.reshape(g.shape[0], -1) if layer.ops.kind == "conv" else g
    if layer.direct.e is None:
        raise RuntimeError("direct feedback: the output layer has not run its backward")
    return layer.direct.e


class DFA(Rule):
    """Direct feedback alignment: the error sent down is D e, D fixed random (Nøkland 2016)."""

    name = "dfa"
    direct = True

    def __init__(self, out_features: int, conv_feedback: str = "channel"):
        self.out_features, self.conv_feedback = out_features, conv_feedback

    def setup(self, layer, generator):
        layer.generator_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        direct_matrix(layer, "D", self.out_features)

    def signal(self, layer, g):
        return direct_signal(layer, g)

    def input_grad(self, layer, x, g):
        e = self.signal(layer, g)
        D = direct_matrix(layer, "D", e.shape[-1], x)
        return _to_input_shape(e @ D, x)


class DirectLowDim(DFA):
    """Direct ld: z = P e once (P: r x d, on the output layer), every layer gets Q_lᵀ z."""

    def __init__(self, out_features: int, rank: int, p_rule: str = "oja", conv_feedback: str = "channel"):
        super().__init__(out_features, conv_feedback)
        self.rank, self.p_rule = rank, p_rule
        self.name = f"ld-direct[{p_rule}] r={rank}"

    def setup(self, layer, generator):
        layer.generator_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        self.learned = ("P",) if (layer.is_output and self.p_rule == "oja") else ()
        if layer.is_output:
            P = _orthonormal_rows((self.rank, self.out_features), generator, layer.weight)
            if self.p_rule == "oja":
                layer.P = torch.nn.Parameter(P)
            else:
                layer.register_buffer("P", P)
        direct_matrix(layer, "Q", self.rank)

    def input_grad(self, layer, x, g):
        e = self.signal(layer, g)
        if layer.is_output:
            layer.direct.z = e @ layer.P.mT
        Q = direct_matrix(layer, "Q", layer.direct.z.shape[-1], x)  # z is shared: one r for all
        return _to_input_shape(layer.direct.z @ Q, x)

    def grads(self, layer, x, g, gW):
        if not (layer.is_output and self.p_rule == "oja"):
            return {}
        z = g @ layer.P.mT
        return {"P": oja_grad(layer.P, z.mT @ g, g.shape[0], g.shape[0])}


# -- the registry: theory name -> fast implementation ----------------------------------

implements("bp")(lambda spec, out_features: BP())
implements("fa")(lambda spec, out_features: FA())
implements("kp")(lambda spec, out_features: KP())
implements("wm")(lambda spec, out_features: WeightMirror(spec.options["mirror_batch"],
                                                          spec.options["noise_std"]))
implements("sign")(lambda spec, out_features: Sign(spec.options["scaling"]))
implements("dfa")(lambda spec, out_features: DFA(out_features, spec.options["conv_feedback"]))


@implements("ld")
def _ld(spec: RuleSpec, out_features: int):
    o = spec.options
    if spec.direct:
        if o["p_rule"] in ("fixed", "oja") and o["q_rule"] == "fixed":
            return DirectLowDim(out_features, spec.rank, o["p_rule"], o["conv_feedback"])
        return None  # other direct factor rules: the generic path
    return LowDim(spec.rank, **{k: o[k] for k in LD_DEFAULTS})
