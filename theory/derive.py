"""Gradient-flow matrix ODEs of a deep linear network under any feedback rule.

Network ŷ = W_L ⋯ W_1 x with whitened inputs ⟨x xᵀ⟩ = I and teacher y = W* x + n,
⟨n nᵀ⟩ = Σ. With E = W* - W_L ⋯ W_1 the output error is e = -E x - n, and every rule
delivers δ_l = F_l e to layer l, with

    F_L = I,   F_l = B_{l+1} F_{l+1}  (layerwise),   F_l = B_l  (direct),

where B is the rule's feedback matrix. The local update ΔW_l = -η ⟨δ_l h_{l-1}ᵀ⟩ then
becomes, with τ = 1/η and H_{l-1} = W_{l-1} ⋯ W_1,

    τ dW_l/dt = F_l E H_{l-1}ᵀ  (- λ W_l with weight decay).

The covariance of the error arriving at the crossing above layer l is
C_l = F_{l+1} (E Eᵀ + Σ) F_{l+1}ᵀ (C_l = E Eᵀ + Σ for direct feedback).
:func:`derive` builds these expressions from a :class:`~ldfa.theory.rules.FeedbackRule`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from .errors import ConfigError
from .rules import Crossing, FeedbackRule, get_rule


@dataclass
class MatrixODE:
    """The derived system. Every flow reads τ_X dX/dt = flows[X]."""

    rule: FeedbackRule
    layers: int
    weights: list  # W_1..W_L (MatrixSymbol)
    flows: dict  # MatrixSymbol -> MatrixExpr (right-hand side)
    timescales: dict  # MatrixSymbol -> Symbol (τ, τ_B, τ_P, τ_Q)
    algebraic: dict  # MatrixSymbol -> MatrixExpr (X = g)
    fixed: list  # matrices that never change
    definitions: dict  # E, C_l -> their definitions
    feedback: dict  # l -> feedback matrix at the crossing to layer l
    symbols: dict = field(default_factory=dict)  # named scalars and matrices: tau, lam, r, Wstar, Sigma, E

    @property
    def state(self) -> list:
        """Matrices that are integrated: the weights, then the rule's flow matrices."""
        return list(self.flows)

    def substituted(self, expr, keep=()):
        """``expr`` with algebraic matrices and C_l replaced by their definitions.

        E and the matrices in ``keep`` stay as symbols.
        """
        subs = {k: v for k, v in {**self.algebraic, **self.definitions}.items()
                if k is not self.symbols["E"] and k not in keep}
        for _ in range(10):
            new = expr.xreplace(subs)
            if new == expr:
                return expr
            expr = new
        raise RuntimeError("algebraic definitions are cyclic")

    def equations(self) -> list:
        """(lhs, rhs) pairs in print order: flows, algebraic relations, definitions."""
        t = sp.Symbol("t")
        out = []
        for X, rhs in self.flows.items():
            out.append((sp.Mul(self.timescales[X], sp.Derivative(sp.Symbol(X.name), t),
                               evaluate=False), rhs))
        for X, rhs in self.algebraic.items():
            out.append((X, rhs))
        used = set().union(*(e.free_symbols for e in [*self.flows.values(),
                                                     *self.algebraic.values()]))
        for X, rhs in self.definitions.items():
            if X in used or X is self.symbols["E"]:
                out.append((X, rhs))
        return out

    def latex(self) -> str:
        """An ``align`` environment ready to paste into a paper."""
        lines = []
        for lhs, rhs in self.equations():
            left = sp.latex(lhs).replace(r"\frac{d}{d t}", r"\frac{\mathrm{d}}{\mathrm{d}t}")
            lines.append(f"  {left} &= {sp.latex(rhs)}")
        fixed = ", ".join(sp.latex(X) for X in self.fixed)
        tail = [rf"  % fixed in time: {fixed}"] if fixed else []
        return "\\begin{align}\n" + " \\\\\n".join(lines) + "\n" + "\n".join(tail) + \
            ("\n" if tail else "") + "\\end{align}"

    def __str__(self) -> str:
        lines = [f"{self.rule.name}: {self.rule.description}  (L = {self.layers})"]
        for lhs, rhs in self.equations():
            lines.append(f"  {sp.sstr(lhs)} = {sp.sstr(rhs)}")
        if self.fixed:
            lines.append("  fixed: " + ", ".join(X.name for X in self.fixed))
        return "\n".join(lines)


def _product(mats):
    """W_k ⋯ W_j as one MatMul (mats given bottom-up); None for the empty product (= I)."""
    mats = list(mats)
    if not mats:
        return None
    out = mats[-1]
    for M in reversed(mats[:-1]):
        out = out * M
    return out


def derive(rule: FeedbackRule | str, layers: int = 2, weight_decay: bool = False,
           **rule_options) -> MatrixODE:
    """Derive the matrix ODEs of an L-layer linear network trained with ``rule``."""
    if isinstance(rule, str):
        rule = get_rule(rule, **rule_options)
    if not isinstance(layers, int) or layers < 2:
        raise ConfigError(f"layers={layers!r}: a network needs an integer number of layers >= 2")
    L = layers
    n = sp.symbols(f"n_0:{L + 1}", integer=True, positive=True)
    r = sp.Symbol("r", integer=True, positive=True)
    tau = sp.Symbol("tau", positive=True)
    lam = sp.Symbol("lambda", nonnegative=True) if weight_decay else sp.Integer(0)
    W = [sp.MatrixSymbol(f"W_{l}", n[l], n[l - 1]) for l in range(1, L + 1)]
    Wstar = sp.MatrixSymbol("W^*", n[L], n[0])
    Sigma = sp.MatrixSymbol("Sigma", n[L], n[L])
    E = sp.MatrixSymbol("E", n[L], n[0])
    Sigma_e = E * E.T + Sigma

    flows, timescales, algebraic, fixed = {}, {}, {}, []
    definitions = {E: Wstar - _product(W)}
    feedback, F = {}, {L: None}  # F_l: matrix taking e to δ_l; None = identity
    dW = {}

    def grad_flow(l):  # τ dW_l/dt without weight decay: F_l E H_{l-1}ᵀ
        H = _product(W[: l - 1])
        out = E if F[l] is None else F[l] * E
        return out if H is None else out * H.T

    dW[L] = grad_flow(L)
    for l in range(L - 1, 0, -1):
        above = n[L] if rule.direct else n[l + 1]
        C = sp.MatrixSymbol("C" if rule.direct else f"C_{l}", above, above)
        if rule.direct:
            definitions[C] = Sigma_e
            W_above = _product(W[l:])
        else:
            definitions[C] = Sigma_e if F[l + 1] is None else F[l + 1] * Sigma_e * F[l + 1].T
            W_above = W[l]
        mats = {}
        for name, spec in rule.matrices.items():
            shape = {"feedback": (n[l], above), "compress": (r, above), "expand": (n[l], r)}
            rows, cols = shape[spec.shape]
            if rule.direct and spec.shared_direct:
                mats[name] = sp.MatrixSymbol(name, rows, cols)
            else:
                mats[name] = sp.MatrixSymbol(f"{name}_{l + 1 if not rule.direct else l}", rows, cols)
        c = Crossing(l, W_above, None if rule.direct else dW[l + 1], C, mats, lam, r)
        for name, spec in rule.matrices.items():
            X = mats[name]
            if X in flows or X in algebraic or X in fixed:
                continue  # shared across layers (direct P)
            if spec.kind == "flow":
                flows[X] = spec.flow(c)
                timescales[X] = sp.Symbol(f"tau_{name}", positive=True)
            elif spec.kind == "algebraic":
                algebraic[X] = spec.algebraic(c)
            else:
                fixed.append(X)
        feedback[l] = rule.feedback(c)
        F[l] = feedback[l] if (rule.direct or F[l + 1] is None) else feedback[l] * F[l + 1]
        dW[l] = grad_flow(l)

    weight_flows = {W[l - 1]: dW[l] - lam * W[l - 1] for l in range(1, L + 1)}
    flows = {**weight_flows, **flows}
    for Wl in W:
        timescales[Wl] = tau
    return MatrixODE(rule, L, W, flows, timescales, algebraic, fixed, definitions, feedback,
                     symbols={"tau": tau, "lam": lam, "r": r, "Wstar": Wstar, "Sigma": Sigma,
                              "E": E, "n": n})

