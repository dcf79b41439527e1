"""Feedback rules for torch layers (SPEC sections 1-2), each written once for every layer type.

A rule decides two things in a layer's backward pass, given the arriving error g
(the gradient w.r.t. the layer's output, shape of the output) and the input x:

    input_grad(layer, x, g)          the error sent down to the layer below
    grads(layer, x, g, gW)           .grad of the rule's own learned matrices (B, P, Q)

The forward weight's gradient gW = Σ g xᵀ is always the local product, whatever the
rule. Matrices are kept in *weight orientation* (the shape of W): the feedback B_w
has W's shape and the error sent down is B_wᵀ g; ld keeps P (r x n_out) and Q_w
(r x n_in; r x C_in x k x k for conv), so B_w = Pᵀ Q_w and the error sent down is
Q_wᵀ (P g): compress to r numbers, then expand. SPEC's B (shape of Wᵀ) is B_wᵀ.

Every learned matrix is an nn.Parameter whose change lands in .grad (the negative
of the update), so any torch optimizer, clipping or DDP applies unchanged.
"""

from __future__ import annotations

import math

import torch

from ..theory.errors import ConfigError

P_RULES = ("fixed", "oja", "svd", "kp", "lowrank")
Q_RULES = ("fixed", "aligned", "kp", "mirror", "lowrank")
SIGN_SCALINGS = ("usf", "brsf", "frsf")
PRESETS = {  # SPEC: the published configurations by name
    "ldfa": dict(p_rule="lowrank", q_rule="lowrank", init="svd"),
    "ldfa-local": dict(p_rule="kp", q_rule="kp", init="svd"),
    "raf": dict(p_rule="oja", q_rule="kp", init="random"),
}


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
        return layer.ops.input_grad(g, self.feedback_weight(layer), x.shape)

    def grads(self, layer, x, g, gW) -> dict:
        return {}

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
    """Weight mirror: ΔB = η ⟨(W ξ) ξᵀ⟩ with noise ξ driving the layer (Akrout et al. 2019).

    Decay toward zero comes from the optimizer's weight decay λ on B.
    """

    name = "wm"

    def __init__(self, mirror_batch: int = 32, noise_std: float = 1.0):
        self.mirror_batch, self.noise_std = mirror_batch, noise_std

    def grads(self, layer, x, g, gW):
        xi = torch.randn((self.mirror_batch, *x.shape[1:]), device=x.device, dtype=x.dtype)
        xi = xi * self.noise_std
        y = layer.ops.forward(xi, layer.weight, None)
        return {"B": -layer.ops.weight_grad(xi, y, layer.weight.shape) / self.mirror_batch}


class Sign(Rule):
    """Sign symmetry: B_w = M ⊙ sign(W), rescaled to ‖W‖_F (Liao et al. 2016).

    usf: M = 1; brsf: M = |N(0,1)| drawn each batch; frsf: M = |N(0,1)| drawn once.
    """

    name = "sign"

    def __init__(self, scaling: str = "usf"):
        if scaling not in SIGN_SCALINGS:
            raise ConfigError(f"sign scaling {scaling!r}; allowed: {', '.join(SIGN_SCALINGS)}")
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


class LowDim(Rule):
    """Low-dimensional feedback B_w = Pᵀ Q_w of rank r (SPEC section 2).

    The error sent down is compress-then-expand: z = P g (r numbers), then Q_wᵀ z;
    the n_out x n_in product is never formed.
    """

    def __init__(self, rank: int, p_rule: str = "oja", q_rule: str = "kp", init: str = "random",
                 lowrank_scale: bool = True, svd_refresh: int = 100, svd_momentum: float = 0.99,
                 mirror_batch: int = 32):
        if p_rule not in P_RULES:
            raise ConfigError(f"unknown p_rule {p_rule!r}; allowed: {', '.join(P_RULES)}")
        if q_rule not in Q_RULES:
            raise ConfigError(f"unknown q_rule {q_rule!r}; allowed: {', '.join(Q_RULES)}")
        if init not in ("random", "svd"):
            raise ConfigError(f"ld init {init!r}; allowed: random, svd")
        if not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"rank r={rank!r}: must be an integer >= 1")
        self.rank, self.p_rule, self.q_rule, self.init = rank, p_rule, q_rule, init
        self.lowrank_scale, self.svd_refresh, self.svd_momentum = lowrank_scale, svd_refresh, svd_momentum
        self.mirror_batch = mirror_batch
        self.name = f"ld[{p_rule},{q_rule}] r={rank}"
        self.learned = tuple(n for n, rule in (("P", p_rule), ("Q", q_rule))
                             if rule in ("oja", "kp", "lowrank", "mirror"))

    # -- set-up ------------------------------------------------------------------------
    def setup(self, layer, generator):
        W, ops = layer.weight, layer.ops
        n_out, n_in = ops.flat(W).shape[-2:]
        r = self.rank
        if self.init == "svd":
            P, Qw = svd_factors(W, r, ops)
        else:
            P = _orthonormal_rows(ops.p_shape(W, r), generator, W)
            # Q_w so that ‖Pᵀ Q_w‖ matches a random matrix with W's default init
            std = math.sqrt(n_out / (3.0 * r * n_in))
            Qw = (torch.randn(ops.q_shape(W, r), generator=generator, dtype=W.dtype) * std).to(W.device)
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

    # -- backward ----------------------------------------------------------------------
    def backward(self, layer, x, g, gW, need_input: bool):
        """z = P g once (r numbers per example); the layer below gets Q_wᵀ z."""
        if self.p_rule == "svd":
            self._track_covariance(layer, g)
        if not need_input:  # the first layer: z only if P's or Q's own update needs it (grads)
            return None, self.grads(layer, x, g, gW)
        z = layer.ops.compress(g, layer.P)
        return layer.ops.input_grad(z, self.q_weight(layer), x.shape), self.grads(layer, x, g, gW, z)

    def input_grad(self, layer, x, g):
        return self.backward(layer, x, g, None, True)[0]

    @torch.no_grad()
    def _track_covariance(self, layer, g):
        """Running ⟨δ δᵀ⟩; P = its top-r eigenvectors, refreshed every svd_refresh steps."""
        d = layer.ops.rows(g) * layer.ops.batch_size(g)  # per-example error (batch-mean loss)
        C = d.mT @ d / d.shape[-2]
        layer.C.mul_(self.svd_momentum).add_(C, alpha=1 - self.svd_momentum)
        if int(layer.steps) % self.svd_refresh == 0:
            w, V = torch.linalg.eigh(layer.C.double())
            layer.P.copy_(V[..., -self.rank:].flip(-1).mT.to(layer.P.dtype))
        layer.steps += 1

    def grads(self, layer, x, g, gW, z=None):
        out, ops = {}, layer.ops
        P, Wf = layer.P, ops.flat(layer.weight)
        scale = 1.0 / math.sqrt(self.rank) if self.lowrank_scale else 1.0
        Qf = ops.flat_q(self.q_weight(layer))
        if z is None and (self.p_rule == "oja" or self.q_rule == "kp"):
            z = ops.compress(g, P)
        if self.p_rule == "oja":
            # ΔP = η ⟨z δᵀ - z zᵀ P⟩ with δ = b·g the per-example error (batch-mean loss over
            # b examples; every position of a conv map and every token counts as a sample)
            out["P"] = oja_grad(P, ops.cross(z, g), ops.cross(z, z), ops.n_rows(g), ops.batch_size(g))
        elif self.p_rule == "kp":
            # ΔP = Q_w ΔWᵀ (SPEC: Qᵀ ΔWᵀ), formed on the batch side: Σ (Q_w x) gᵀ
            y = ops.forward(x, self.q_weight(layer), None)
            out["P"] = ops.cross(y, g)
        elif self.p_rule == "lowrank":
            out["P"] = ((Qf @ Qf.mT) @ P - Qf @ Wf.mT) * scale  # ∇P without forming QP - Wᵀ
        if self.q_rule == "kp":
            # ΔQ_w = P ΔW, formed on the batch side: Σ (P g) xᵀ
            out["Q"] = ops.weight_grad(x, z, layer.Q.shape)
        elif self.q_rule == "lowrank":
            out["Q"] = (((P @ P.mT) @ Qf - P @ Wf) * scale).reshape(layer.Q.shape)
        elif self.q_rule == "mirror":
            xi = torch.randn((self.mirror_batch, *x.shape[1:]), device=x.device, dtype=x.dtype)
            y = layer.ops.compress(layer.ops.forward(xi, layer.weight, None), P)
            out["Q"] = -layer.ops.weight_grad(xi, y, layer.Q.shape) / self.mirror_batch
        return out


def oja_grad(P, zg, zz, rows: int, batch: int):
    """P.grad of Oja's subspace rule, ΔP = η ⟨z δᵀ - z zᵀ P⟩ over ``rows`` samples, from the sums
    zg = Σ z gᵀ and zz = Σ z zᵀ (z = P g), with the per-example error δ = batch·g (the loss is a
    mean over ``batch`` examples)."""
    return -(zg - zz @ P) * (batch**2 / rows)


def svd_factors(W: torch.Tensor, r: int, ops):
    """Truncated SVD W_f ≈ A S Cᵀ split evenly: P = √S Aᵀ (r x n_out), Q_w = √S Cᵀ (r x n_in')."""
    Wf = ops.flat(W).detach()
    r = min(r, *Wf.shape[-2:])
    A, S, Vh = torch.linalg.svd(Wf.double(), full_matrices=False)
    root = S[..., :r].sqrt()[..., None]
    P = (root * A[..., :r].mT).to(W.dtype)
    Qw = ops.unflat_q((root * Vh[..., :r, :]).to(W.dtype), W)
    return P.contiguous(), Qw.contiguous()


# -- direct rules: the output error e goes straight to every layer --------------------

class DirectContext:
    """Shared by the layers of one converted model: the output error e of this backward."""

    def __init__(self):
        self.e = None
        self.z = None


def _to_input_shape(signal, x):
    """(batch x n) direct signal -> x's shape: conv inputs are flattened per example;
    token inputs (batch x tokens x n) get the same signal at every token."""
    if signal.shape[-1] == x[0].numel():
        return signal.reshape(x.shape)
    return signal.reshape(x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1]).expand(x.shape)


class DFA(Rule):
    """Direct feedback alignment: the error sent down is D e, D fixed random (Nøkland 2016)."""

    name = "dfa"
    direct = True

    def __init__(self, out_features: int):
        self.out_features = out_features

    def setup(self, layer, generator):
        layer.generator_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

    def _matrix(self, layer, x, name, rows):
        """Lazily (first backward, shapes known) a fixed random (rows x per-example input)."""
        if getattr(layer, name, None) is None:
            n = x[0].numel() if layer.ops.kind == "conv" else x.shape[-1]
            gen = torch.Generator().manual_seed(layer.generator_seed)
            M = torch.randn(rows, n, generator=gen, dtype=x.dtype) / math.sqrt(rows)
            layer.register_buffer(name, M.to(x.device))
        return getattr(layer, name)

    def signal(self, layer, g):
        """e (batch x d): the output layer records its own arriving error."""
        if layer.is_output:
            layer.direct.e = g.reshape(g.shape[0], -1) if layer.ops.kind == "conv" else g
        if layer.direct.e is None:
            raise RuntimeError("direct feedback: the output layer has not run its backward")
        return layer.direct.e

    def input_grad(self, layer, x, g):
        e = self.signal(layer, g)
        D = self._matrix(layer, x, "D", e.shape[-1])
        return _to_input_shape(e @ D, x)


class DirectLowDim(DFA):
    """Direct ld: z = P e once (P: r x d, on the output layer), every layer gets Q_lᵀ z."""

    def __init__(self, out_features: int, rank: int, p_rule: str = "fixed"):
        super().__init__(out_features)
        if p_rule not in ("fixed", "oja"):
            raise ConfigError(f"direct ld supports p_rule fixed or oja, got {p_rule!r}")
        self.rank, self.p_rule = rank, p_rule
        self.name = f"ld-direct[{p_rule}] r={rank}"

    def setup(self, layer, generator):
        super().setup(layer, generator)
        self.learned = ("P",) if (layer.is_output and self.p_rule == "oja") else ()
        if layer.is_output:
            P = _orthonormal_rows((self.rank, self.out_features), generator, layer.weight)
            if self.p_rule == "oja":
                layer.P = torch.nn.Parameter(P)
            else:
                layer.register_buffer("P", P)

    def input_grad(self, layer, x, g):
        e = self.signal(layer, g)
        if layer.is_output:
            layer.direct.z = e @ layer.P.mT
        Q = self._matrix(layer, x, "Q", layer.direct.z.shape[-1])  # z is shared: one r for all
        return _to_input_shape(layer.direct.z @ Q, x)

    def grads(self, layer, x, g, gW):
        if not (layer.is_output and self.p_rule == "oja"):
            return {}
        z = g @ layer.P.mT
        return {"P": oja_grad(layer.P, z.mT @ g, z.mT @ z, g.shape[0], g.shape[0])}
