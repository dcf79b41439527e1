"""Feedback rules as data.

A rule says two things, and nothing else (SPEC sections 1-2):

1. ``feedback(c)``: the matrix that carries the error across one crossing, i.e.
   δ_l = feedback · δ_{l+1} (layerwise) or δ_l = feedback · e (direct);
2. how the rule's own matrices (B, P, Q, D) evolve: each is ``fixed``, follows a
   ``flow`` τ_X dX/dt = f(c), or is ``algebraic`` X = g(c).

``c`` is a :class:`Crossing`: the sympy symbols visible at that crossing (the
forward weight above it, its gradient flow, the covariance of the arriving error,
the rule's own matrices). The engine in :mod:`ldfa.theory.derive` turns a rule into
matrix ODEs for any depth; :mod:`ldfa.theory.modes` reduces those to per-mode ODEs.

Adding a rule is one definition::

    from ldfa.theory import FeedbackRule, Matrix, register_rule
    register_rule(FeedbackRule(
        name="kp-slow", description="Kolen-Pollack at half speed",
        matrices={"B": Matrix(flow=lambda c: c.dW.T / 2 - c.lam * c.B)},
        feedback=lambda c: c.B))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import sympy as sp

from .errors import ConfigError

Expr = sp.MatrixExpr


class TopSubspace(sp.MatrixExpr):
    """top_r(C): an r x n matrix whose orthonormal rows span the top-r eigenvectors of C.

    Used by the ``svd`` p_rule. It prints as LaTeX and as numpy code that calls
    :func:`ldfa.theory.integrate.top_subspace`.
    """

    def __new__(cls, C, r):
        return super().__new__(cls, C, sp.sympify(r))

    @property
    def shape(self):
        return (self.args[1], self.args[0].shape[0])

    def _latex(self, printer):
        return r"\operatorname{top}_{%s}\!\left(%s\right)" % (
            printer._print(self.args[1]), printer._print(self.args[0]))

    def _sympystr(self, printer):
        return "top_%s(%s)" % (printer._print(self.args[1]), printer._print(self.args[0]))

    def _numpycode(self, printer):
        return "top_subspace(%s, %s)" % (printer._print(self.args[0]), printer._print(self.args[1]))

    _pythoncode = _numpycode


@dataclass(frozen=True)
class Crossing:
    """The symbols at the crossing that delivers error to layer ``l`` (1 <= l < L).

    W, dW : forward weight above the crossing (W_{l+1}, or for direct feedback the
            product W_L ... W_{l+1}) and the gradient part of τ dW/dt (layerwise only).
    C     : covariance ⟨δ δᵀ⟩ of the error arriving at the crossing.
    mats  : the rule's own matrices at this crossing, by name (B, P, Q, D).
    lam   : weight decay λ;  r : the feedback rank.
    """

    l: int
    W: Expr
    dW: Expr | None
    C: Expr
    mats: dict
    lam: sp.Symbol
    r: sp.Symbol

    def __getattr__(self, name):  # c.B, c.P, c.Q, c.D
        mats = self.__dict__.get("mats", {})
        if name in mats:
            return mats[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class Matrix:
    """One of a rule's own matrices: fixed, algebraic (X = g(c)) or a flow (τ_X dX/dt = f(c)).

    rows/cols: its shape as a function of (n_l, n_above, r) where n_above is the width
    of the arriving error; ``shared_direct``: a single matrix for all layers in the
    direct variant (the compressor P of direct ld).
    """

    flow: Callable[[Crossing], Expr] | None = None
    algebraic: Callable[[Crossing], Expr] | None = None
    shape: str = "feedback"  # "feedback": n_l x n_above; "compress": r x n_above; "expand": n_l x r
    shared_direct: bool = False
    needs_dW: bool = False  # uses the forward weight's own update (layerwise only)

    def __post_init__(self):
        if self.flow is not None and self.algebraic is not None:
            raise ValueError("a matrix is either a flow or algebraic, not both")

    @property
    def kind(self) -> str:
        return "flow" if self.flow else "algebraic" if self.algebraic else "fixed"


@dataclass(frozen=True)
class FeedbackRule:
    """A feedback rule: the crossing's feedback matrix and how its matrices change."""

    name: str
    description: str
    feedback: Callable[[Crossing], Expr]
    matrices: dict = field(default_factory=dict)
    direct: bool = False  # deliver the output error e to every layer

    @property
    def uses_rank(self) -> bool:
        return any(m.shape != "feedback" for m in self.matrices.values())


# -- factor rules of low-dimensional feedback: B = Q P (SPEC section 2) ---------------

P_RULES = {
    "fixed": Matrix(shape="compress", shared_direct=True),
    # Oja's subspace rule: ΔP = η_P ⟨z δᵀ - z zᵀ P⟩, z = P δ  =>  τ_P dP/dt = P C - P C Pᵀ P
    "oja": Matrix(flow=lambda c: c.P * c.C - c.P * c.C * c.P.T * c.P,
                  shape="compress", shared_direct=True),
    # P = top-r principal directions of ⟨δ δᵀ⟩
    "svd": Matrix(algebraic=lambda c: TopSubspace(c.C, c.r), shape="compress", shared_direct=True),
    # Kolen-Pollack through the bottleneck: ΔP = Qᵀ ΔWᵀ - λ P
    "kp": Matrix(flow=lambda c: c.Q.T * c.dW.T - c.lam * c.P, shape="compress", needs_dW=True),
    # gradient of ½‖QP - Wᵀ‖²: τ_P dP/dt = -(QᵀQ P - (W Q)ᵀ)
    "lowrank": Matrix(flow=lambda c: (c.W * c.Q).T - c.Q.T * c.Q * c.P, shape="compress"),
}

Q_RULES = {
    "fixed": Matrix(shape="expand"),
    # weight transport through the bottleneck: Q = Wᵀ Pᵀ
    "aligned": Matrix(algebraic=lambda c: c.W.T * c.P.T, shape="expand"),
    # Kolen-Pollack through the bottleneck: ΔQ = ΔWᵀ Pᵀ - λ Q
    "kp": Matrix(flow=lambda c: c.dW.T * c.P.T - c.lam * c.Q, shape="expand", needs_dW=True),
    # gradient of ½‖QP - Wᵀ‖²: τ_Q dQ/dt = -(Q P Pᵀ - Wᵀ Pᵀ)
    "lowrank": Matrix(flow=lambda c: c.W.T * c.P.T - c.Q * c.P * c.P.T, shape="expand"),
}

PRESETS = {  # published configurations by name (SPEC section 2); theory ignores init=svd
    "ldfa": ("lowrank", "lowrank"),
    "ldfa-local": ("kp", "kp"),
    "raf": ("oja", "kp"),
}


def ld_rule(p_rule: str = "oja", q_rule: str = "aligned", direct: bool = False) -> FeedbackRule:
    """Low-dimensional feedback B = Q P with the named factor rules (SPEC section 2)."""
    if p_rule not in P_RULES:
        raise ConfigError(f"unknown p_rule {p_rule!r}; allowed: {', '.join(P_RULES)}")
    if q_rule not in Q_RULES:
        raise ConfigError(f"unknown q_rule {q_rule!r}; allowed: {', '.join(Q_RULES)}")
    P, Q = P_RULES[p_rule], Q_RULES[q_rule]
    if direct and (P.needs_dW or Q.needs_dW):
        raise ConfigError(f"p_rule {p_rule!r} / q_rule {q_rule!r}: kp needs layerwise feedback "
                          "(it uses the update of the weight above); drop --direct")
    return FeedbackRule(
        name=f"ld[{p_rule},{q_rule}]" + ("-direct" if direct else ""),
        description=f"low-dimensional feedback B = Q P, p_rule {p_rule}, q_rule {q_rule}",
        feedback=lambda c: c.Q * c.P,
        matrices={"P": P, "Q": Q},
        direct=direct,
    )


RULES: dict[str, FeedbackRule] = {}


def register_rule(rule: FeedbackRule) -> FeedbackRule:
    """Make ``rule`` available by name to :func:`get_rule`, ``ldfa derive`` and ``ldfa theory``."""
    RULES[rule.name] = rule
    return rule


register_rule(FeedbackRule("bp", "backprop: δ_l = W_{l+1}ᵀ δ_{l+1}", feedback=lambda c: c.W.T))
register_rule(FeedbackRule("fa", "feedback alignment: fixed random B",
                           feedback=lambda c: c.B, matrices={"B": Matrix()}))
register_rule(FeedbackRule("kp", "Kolen-Pollack: ΔB = ΔWᵀ - λB, so B → Wᵀ",
                           feedback=lambda c: c.B,
                           matrices={"B": Matrix(flow=lambda c: c.dW.T - c.lam * c.B,
                                                 needs_dW=True)}))
register_rule(FeedbackRule("dfa", "direct feedback alignment: δ_l = D_l e, D_l fixed random",
                           feedback=lambda c: c.D, matrices={"D": Matrix()}, direct=True))


def rule_names() -> list[str]:
    return sorted(RULES) + ["ld"] + sorted(PRESETS)


def get_rule(name: str, p_rule: str | None = None, q_rule: str | None = None,
             direct: bool = False) -> FeedbackRule:
    """Look a rule up by name; ``ld`` (or a preset) is assembled from its p_rule and q_rule."""
    if name in PRESETS:
        p_default, q_default = PRESETS[name]
        return ld_rule(p_rule or p_default, q_rule or q_default, direct)
    if name == "ld":
        return ld_rule(p_rule or "oja", q_rule or "aligned", direct)
    if name not in RULES:
        raise ConfigError(f"unknown rule {name!r}; allowed: {', '.join(rule_names())}")
    if p_rule or q_rule:
        raise ConfigError(f"--p-rule/--q-rule apply to ld rules only, not to {name!r}")
    rule = RULES[name]
    if direct and not rule.direct:
        raise ConfigError(f"rule {name!r} has no direct variant; direct rules: dfa, ld")
    return rule
