"""The generic simulation path: any rule of :mod:`ldfa.theory.rules` trains, with no torch code.

A :class:`GenericRule` evaluates the rule's own sympy expressions numerically on each
layer's backward pass. The crossing's symbols become torch tensors, in the theory's
orientation (docs/rules.md):

    W   the layer's weight (the weight above the crossing), n_out x n_in (conv: the kernel
        flattened to C_out x C_in·k·k)
    dW  the local weight update, -gW (gW = the weight's .grad, the gradient of the batch-mean
        loss); layerwise rules only
    C   ⟨δ δᵀ⟩ of the arriving error: δ = b·g per example (the loss is a mean over b
        examples), every token and every position of a conv map counting as a sample:
        C = Σ_rows δ δᵀ / rows; for direct rules, of the output error e
    X   the rule's own matrices (B, P, Q, D, or any name), stored on the layer in weight
        orientation (B_w = Bᵀ, Q_w = Qᵀ, P as is) as nn.Parameter (flows) or buffers
        (fixed, algebraic), and transposed into the theory's orientation here

Then, per backward pass:

    algebraic X = g(c)     recomputed and written into its buffer (in dependency order)
    error sent down        B δ with B = feedback(c) (direct: B e)
    X.grad                 -f(c) for every flow τ_X dX/dt = f(c): the negative update, so
                           SGD with lr = η_X is Euler's method with step η_X τ_X

λ is evaluated at 0: weight decay on the rule's matrices is the optimizer's (a flow's
-λ X term is exactly an optimizer weight decay λ at lr η_X). For ld rules the lowrank
factor rule keeps the fast path's gradient scale (ldfa.sim.feedback.lowrank_factor),
so both paths train identically. A direct rule may not use W (the product of the
weights above a layer is not a matrix in a nonlinear network) nor dW.
"""

from __future__ import annotations

import sympy as sp
import torch

from ..theory.errors import ConfigError
from ..theory.rules import (
    Crossing,
    RuleSpec,
    TopSubspace,
    from_weight_orientation,
    to_weight_orientation,
)
from .feedback import (
    Rule,
    _like_weight,
    _orthonormal_rows,
    _to_input_shape,
    direct_matrix,
    direct_signal,
    direct_width,
    init_factors,
    lowrank_factor,
    top_subspace,
)


def evaluate(expr, env: dict):
    """The value of a sympy matrix expression with torch tensors for its symbols (``env``:
    MatrixSymbol or Symbol -> tensor or number). Covers the matrix algebra of rules: sums,
    products with scalar coefficients, transposes, integer powers, inverses, Hadamard
    products, identity and zero matrices, and top_r(C)."""
    if expr in env:
        return env[expr]
    if isinstance(expr, sp.Transpose):
        return evaluate(expr.arg, env).mT
    if isinstance(expr, sp.MatAdd):
        terms = [evaluate(a, env) for a in expr.args]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out
    if isinstance(expr, sp.MatMul):
        coeff, mats = expr.as_coeff_matrices()
        out = evaluate(mats[0], env)
        for M in mats[1:]:
            out = out @ evaluate(M, env)
        c = _scalar(coeff, env)
        return out if c == 1 else c * out
    if isinstance(expr, sp.MatPow):
        return torch.linalg.matrix_power(evaluate(expr.base, env), int(expr.exp))
    if isinstance(expr, sp.Inverse):
        return torch.linalg.inv(evaluate(expr.arg, env))
    if isinstance(expr, sp.HadamardProduct):
        out = evaluate(expr.args[0], env)
        for a in expr.args[1:]:
            out = out * evaluate(a, env)
        return out
    if isinstance(expr, TopSubspace):
        return top_subspace(evaluate(expr.args[0], env), int(_scalar(expr.args[1], env)))
    like = next(v for v in env.values() if isinstance(v, torch.Tensor))
    if isinstance(expr, sp.Identity):
        return torch.eye(int(expr.rows), dtype=like.dtype, device=like.device)
    if isinstance(expr, sp.ZeroMatrix):
        return torch.zeros(int(expr.rows), int(expr.cols), dtype=like.dtype, device=like.device)
    if isinstance(expr, sp.MatrixSymbol):
        raise ConfigError(f"generic path: matrix {expr.name} is not available at this crossing")
    raise ConfigError(f"generic path: cannot evaluate {type(expr).__name__} ({expr}); rules may use "
                      "+, scalar *, matrix products, .T, .inv(), integer powers, Hadamard products, "
                      "Identity, ZeroMatrix and TopSubspace")


def _scalar(expr, env) -> float:
    subs = {k: v for k, v in env.items() if isinstance(k, sp.Symbol)}
    value = sp.sympify(expr).xreplace(subs)
    if value.free_symbols:
        unknown = sorted(map(str, value.free_symbols))
        raise ConfigError(f"generic path: scalar {expr} has unknown symbols {unknown}")
    return float(value)


class GenericRule(Rule):
    """A rule trained by evaluating its theory expressions (see the module docstring)."""

    def __init__(self, spec: RuleSpec, out_features: int | None):
        self.spec, self.theory = spec, spec.rule
        self.out_features = out_features
        self.rank = spec.rank
        self.direct = spec.direct
        self.conv_feedback = spec.options.get("conv_feedback", "full")
        self.name = f"{spec.name} (generic)" + (f" r={spec.rank}" if spec.rank else "")
        if self.theory.feedback is None:
            raise ConfigError(f"rule {spec.name!r} has no expressions to evaluate ({self.theory.no_theory}); "
                              "it trains only through its own implementation")

    # -- symbols and shapes ---------------------------------------------------------------
    def _owned(self, layer) -> dict:
        """The rule's matrices stored on this layer (direct: the shared ones on the output layer)."""
        return {n: m for n, m in self.theory.matrices.items()
                if not (self.direct and m.shared_direct) or layer.is_output}

    def _theory_shape(self, layer, spec) -> tuple:
        n_out, n_in = self._dims(layer)
        r = self.rank or 1
        return {"feedback": (n_in, n_out), "compress": (r, n_out), "expand": (n_in, r)}[spec.shape]

    def _dims(self, layer):
        """(n_above, n_below): the arriving error's width and the width of the error sent down."""
        if self.direct:
            return self.out_features, self._direct_width(layer)
        n_out, n_in = layer.ops.flat(layer.weight).shape[-2:]
        return n_out, n_in

    def _direct_width(self, layer):
        return direct_width(layer)

    def _stored_shape(self, layer, spec) -> tuple:
        W, ops = layer.weight, layer.ops
        r = self.rank or 1
        if self.direct:
            rows, cols = self._theory_shape(layer, spec)
            return (cols, rows) if spec.shape != "compress" else (rows, cols)
        return {"feedback": tuple(W.shape), "compress": tuple(ops.p_shape(W, r)),
                "expand": tuple(ops.q_shape(W, r))}[spec.shape]

    def _crossing(self, layer):
        """The crossing's sympy symbols for this layer (concrete sizes)."""
        n_above, n_below = self._dims(layer)
        n_below = n_below or 1  # conv direct before the input size is known
        W = sp.MatrixSymbol("W", n_above, n_below)
        dW = None if self.direct else sp.MatrixSymbol("dW", n_above, n_below)
        C = sp.MatrixSymbol("C", n_above, n_above)
        r = sp.Integer(self.rank or 1)
        shapes = {"feedback": (n_below, n_above), "compress": (int(r), n_above), "expand": (n_below, int(r))}
        mats = {n: sp.MatrixSymbol(n, *shapes[m.shape]) for n, m in self.theory.matrices.items()}
        return Crossing(0, W, dW, C, mats, sp.Integer(0), r)

    def _expressions(self, layer):
        """(crossing, feedback expr, {name: flow expr}, {name: algebraic expr}) for this layer."""
        key = (self._dims(layer), layer.is_output)
        cache = getattr(self, "_cache", {})
        if key not in cache:
            c = self._crossing(layer)
            owned = self._owned(layer)
            flows = {n: m.flow(c) for n, m in owned.items() if m.kind == "flow"}
            algebraic = {n: m.algebraic(c) for n, m in self.theory.matrices.items() if m.kind == "algebraic"}
            fb = self.theory.feedback(c)
            if self.direct:
                used = set().union(*(e.free_symbols for e in [fb, *flows.values(), *algebraic.values()]))
                if c.W in used:
                    raise ConfigError(f"rule {self.spec.name!r}: a direct rule cannot use W (the product of "
                                      "the weights above a layer is not a matrix in a nonlinear network)")
            cache[key] = (c, fb, flows, algebraic)
            self._cache = cache
        return cache[key]

    # -- set-up ----------------------------------------------------------------------------
    def setup(self, layer, generator):
        """Create every matrix now, in the fast paths' order of random draws."""
        W, ops = layer.weight, layer.ops
        mats = self.theory.matrices
        owned = self._owned(layer)
        self.scales = {}
        if self.direct:
            layer.generator_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        factors = None
        if not self.direct and {"compress", "expand"} <= {m.shape for m in mats.values()}:
            factor_init = self.spec.options.get("factor_init", "random")
            factors = init_factors(W, self.rank, ops, generator, factor_init)
        values = {}
        for name, m in owned.items():
            if self.direct and m.shape == "compress":  # shared: on the output layer
                values[name] = _orthonormal_rows((self.rank, self.out_features), generator, W)
            elif self.direct:
                values[name] = direct_matrix(layer, name, self.out_features if m.shape == "feedback"
                                             else self.rank)
                if values[name] is not None:
                    delattr(layer, name)  # registered again below with its kind
            elif m.shape == "feedback":
                values[name] = _like_weight(W, generator, ops)
            elif factors is not None:
                values[name] = factors[0] if m.shape == "compress" else factors[1]
            elif m.shape == "compress":
                values[name] = _orthonormal_rows(ops.p_shape(W, self.rank), generator, W)
            else:
                values[name] = init_factors(W, self.rank, ops, generator)[1]
            if self.spec.is_ld and self.spec.options.get({"compress": "p_rule", "expand": "q_rule"}
                                                           .get(m.shape, ""), "") == "lowrank":
                self.scales[name] = lowrank_factor(self.spec.options["lowrank_scale"], self.rank, ops)
        self.learned = tuple(n for n, m in owned.items() if m.kind == "flow")
        for name, value in values.items():
            if value is None:
                continue  # conv direct without input_shape: created at the first backward
            if name in self.learned:
                setattr(layer, name, torch.nn.Parameter(value))
            else:
                layer.register_buffer(name, value)
        if self.direct and layer.is_output:
            layer.direct.shared_layer = layer
        with torch.no_grad():
            self._refresh_algebraic(layer, self._env(layer, None, None), initial=True)

    # -- numerics ----------------------------------------------------------------------------
    def _matrix(self, layer, name):
        """The stored matrix ``name`` (shared direct ones from the output layer), or None."""
        m = self.theory.matrices[name]
        holder = layer.direct.shared_layer if (self.direct and m.shared_direct) else layer
        return getattr(holder, name, None) if holder is not None else None

    def _to_theory(self, name, value):
        m = self.theory.matrices[name]
        return from_weight_orientation(m.shape, value.reshape(value.shape[0], -1))

    def _to_stored(self, layer, name, value):
        m = self.theory.matrices[name]
        return to_weight_orientation(m.shape, value).reshape(self._stored_shape(layer, m))

    def _env(self, layer, g, gW):
        c, fb, flows, algebraic = self._expressions(layer)
        env = {c.r: self.rank or 1}
        if not self.direct:
            env[c.W] = layer.ops.flat(layer.weight)
            if gW is not None:
                env[c.dW] = -layer.ops.flat(gW)
        for name in self.theory.matrices:
            value = self._matrix(layer, name)
            if value is not None:
                env[c.mats[name]] = self._to_theory(name, value)
        if g is not None:
            used = set().union(*(e.free_symbols for e in [fb, *flows.values(), *algebraic.values()]))
            if c.C in used:
                env[c.C] = self._covariance(layer, g)
        return env

    def _covariance(self, layer, g):
        """C = Σ δ δᵀ / samples, δ = b·g per example (direct: of the output error e)."""
        if self.direct:
            e = layer.direct.e
            d = e * e.shape[0]
            return d.mT @ d / d.shape[0]
        d = layer.ops.rows(g) * layer.ops.batch_size(g)
        return d.mT @ d / d.shape[-2]

    def _refresh_algebraic(self, layer, env, initial=False):
        """Evaluate X = g(c) for every algebraic matrix, in dependency order, into its buffer
        (a shared direct matrix only on the output layer, which holds it). At set-up
        (``initial``) a matrix whose symbols are not known yet (C, dW) keeps its initial value."""
        c, _, _, algebraic = self._expressions(layer)
        todo = dict(algebraic)
        while todo:
            pending = {c.mats[k] for k in todo}
            ready = [n for n, e in todo.items() if not (e.free_symbols & pending - {c.mats[n]})
                     and all(s in env for s in e.free_symbols if isinstance(s, sp.MatrixSymbol))]
            if not ready:
                if initial:
                    todo.pop(next(iter(todo)))  # keeps its initial value; try the others
                    continue
                raise ConfigError(f"rule {self.spec.name!r}: algebraic matrices {sorted(todo)} depend on "
                                  "each other or on a symbol not available here")
            for n in ready:
                value = evaluate(todo.pop(n), env)
                env[c.mats[n]] = value
                if not (self.direct and self.theory.matrices[n].shared_direct) or layer.is_output:
                    getattr(layer, n).copy_(self._to_stored(layer, n, value))

    # -- the backward pass -----------------------------------------------------------------------
    def feedback_weight(self, layer):
        """B_w (weight orientation) from the stored matrices (layerwise rules)."""
        c, fb, _, _ = self._expressions(layer)
        B = evaluate(fb, self._env(layer, None, None))
        return to_weight_orientation("feedback", B).reshape(layer.weight.shape)

    def signal(self, layer, g):
        return direct_signal(layer, g)

    def _ensure_direct(self, layer, x):
        """Conv layers of a direct rule converted without input_shape: create the matrices now."""
        for name, m in self._owned(layer).items():
            if m.shape != "compress" and getattr(layer, name, None) is None:
                M = direct_matrix(layer, name, self.out_features if m.shape == "feedback" else self.rank, x)
                if name in self.learned:
                    delattr(layer, name)
                    setattr(layer, name, torch.nn.Parameter(M))
                layer.input_numel = x[0].numel()
                self._cache = {}

    def backward(self, layer, x, g, gW, need_input: bool):
        if self.direct:
            self.signal(layer, g)
            if layer.ops.kind == "conv":
                self._ensure_direct(layer, x)
        c, fb, flows, _ = self._expressions(layer)
        env = self._env(layer, g, gW)
        with torch.no_grad():
            self._refresh_algebraic(layer, env)
        gx = None
        if need_input:
            B = evaluate(fb, env)  # n_below x n_above (theory orientation)
            if self.direct:
                gx = _to_input_shape(layer.direct.e @ B.mT, x)
            else:
                Bw = to_weight_orientation("feedback", B).reshape(layer.weight.shape)
                gx = layer.ops.input_grad(g, Bw, x)
        grads = {}
        for name, expr in flows.items():
            value = -evaluate(expr, env) * self.scales.get(name, 1.0)
            grads[name] = self._to_stored(layer, name, value)
        return gx, grads

    def input_grad(self, layer, x, g):
        return self.backward(layer, x, g, None, True)[0]

    def grads(self, layer, x, g, gW):
        return self.backward(layer, x, g, gW, False)[1]


__all__ = ["GenericRule", "evaluate"]
