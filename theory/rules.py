"""The rule vocabulary of ldfa: every rule name, factor rule, preset and default, as data.

Theory (this package) and simulation (:mod:`ldfa.sim`) read their rules from here and
from nowhere else; docs/rules.md describes every entry.

A rule says two things, and nothing else:

1. ``feedback(c)``: the matrix that carries the error across one crossing, i.e.
   δ_l = feedback · δ_{l+1} (layerwise) or δ_l = feedback · e (direct);
2. how the rule's own matrices (B, P, Q, D) evolve: each is ``fixed``, follows a
   ``flow`` τ_X dX/dt = f(c), or is ``algebraic`` X = g(c).

``c`` is a :class:`Crossing`: the symbols visible at that crossing (the forward weight
above it, its gradient flow, the covariance of the arriving error, the rule's own
matrices). :mod:`ldfa.theory.derive` turns a rule into matrix ODEs for any depth;
:mod:`ldfa.sim.generic` evaluates the same expressions on torch tensors, so a rule
written here also trains.

Orientation (one convention for the whole project)
--------------------------------------------------
The expressions are written in *theory orientation*: W_{l+1} is n_{l+1} x n_l, the
feedback B is n_l x n_{l+1} (the shape of Wᵀ), P is r x n_{l+1} and Q is n_l x r, so
B = Q P. The simulation stores every matrix in *weight orientation* (the shape of the
forward weight W, so that a conv kernel stays a kernel): a matrix of kind ``feedback``
(B, D) and ``expand`` (Q) is stored transposed, B_w = Bᵀ and Q_w = Qᵀ; ``compress``
(P) is stored as it is. :func:`to_weight_orientation` and
:func:`from_weight_orientation` are the only two places the transpose is written.

Adding a rule is one definition (docs/rules.md, "Adding a rule")::

    from ldfa.theory import FeedbackRule, Matrix, register_rule
    register_rule(FeedbackRule(
        name="kp-slow", description="Kolen-Pollack at half speed",
        matrices={"B": Matrix(flow=lambda c: c.dW.T / 2 - c.lam * c.B, needs_dW=True)},
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

    Used by the ``svd`` p_rule. Signs are fixed so that each row's largest-magnitude entry
    is positive (the same convention in numpy and torch). It prints as LaTeX and as numpy
    code that calls :func:`ldfa.theory.integrate.top_subspace`.
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
            product W_L ... W_{l+1}) and the gradient part of τ dW/dt (layerwise only;
            in a simulation dW = -∂loss/∂W, the negative of the weight's .grad).
    C     : covariance ⟨δ δᵀ⟩ of the error arriving at the crossing (per example; every
            position of a conv map counts as an example).
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


SHAPES = ("feedback", "compress", "expand")


@dataclass(frozen=True)
class Matrix:
    """One of a rule's own matrices: fixed, algebraic (X = g(c)) or a flow (τ_X dX/dt = f(c)).

    shape: ``feedback`` n_l x n_above, ``compress`` r x n_above, ``expand`` n_l x r (theory
    orientation), n_above being the width of the arriving error; ``shared_direct``: a single
    matrix for all layers in the direct variant (the compressor P of direct ld);
    ``needs_dW``: uses the forward weight's own update (layerwise only).
    """

    flow: Callable[[Crossing], Expr] | None = None
    algebraic: Callable[[Crossing], Expr] | None = None
    shape: str = "feedback"
    shared_direct: bool = False
    needs_dW: bool = False

    def __post_init__(self):
        if self.flow is not None and self.algebraic is not None:
            raise ConfigError("a matrix is either a flow or algebraic, not both")
        if self.shape not in SHAPES:
            raise ConfigError(f"shape={self.shape!r}; allowed: {', '.join(SHAPES)}")

    @property
    def kind(self) -> str:
        return "flow" if self.flow else "algebraic" if self.algebraic else "fixed"


@dataclass(frozen=True)
class FeedbackRule:
    """A feedback rule: the crossing's feedback matrix and how its matrices change.

    ``no_theory``: empty when the linear theory covers the rule; otherwise the reason it
    cannot, and :func:`get_rule` refuses the rule for derivation (the simulation still
    trains it with its own implementation).
    """

    name: str
    description: str
    feedback: Callable[[Crossing], Expr] | None = None
    matrices: dict = field(default_factory=dict)
    direct: bool = False  # deliver the output error e to every layer
    no_theory: str = ""

    def __post_init__(self):
        if self.feedback is None and not self.no_theory:
            raise ConfigError(f"rule {self.name!r}: needs feedback=lambda c: ... (the matrix that "
                              "carries the error)")

    @property
    def uses_rank(self) -> bool:
        return any(m.shape != "feedback" for m in self.matrices.values())

    @property
    def needs_dW(self) -> bool:
        return any(m.needs_dW for m in self.matrices.values())


# -- orientation ----------------------------------------------------------------------

STORED_TRANSPOSED = {"feedback": True, "compress": False, "expand": True}


def to_weight_orientation(shape: str, M):
    """Theory orientation → weight orientation: B_w = Bᵀ, Q_w = Qᵀ, P as is (numpy or torch)."""
    return M.T if STORED_TRANSPOSED[shape] else M


def from_weight_orientation(shape: str, M):
    """Weight orientation (a 2-d matrix; conv kernels flattened first) → theory orientation."""
    return M.T if STORED_TRANSPOSED[shape] else M


# -- factor rules of low-dimensional feedback: B = Q P --------------------------------------

P_RULES = {
    # random with orthonormal rows, never changes
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
    # random, never changes
    "fixed": Matrix(shape="expand"),
    # weight transport through the bottleneck: Q = Wᵀ Pᵀ
    "aligned": Matrix(algebraic=lambda c: c.W.T * c.P.T, shape="expand"),
    # Kolen-Pollack through the bottleneck: ΔQ = ΔWᵀ Pᵀ - λ Q
    "kp": Matrix(flow=lambda c: c.dW.T * c.P.T - c.lam * c.Q, shape="expand", needs_dW=True),
    # weight mirror through the bottleneck: ΔQ = η ⟨ξ (P W ξ)ᵀ⟩ - λ Q with white noise ξ,
    # ⟨ξ ξᵀ⟩ = I, whose mean is τ_Q dQ/dt = Wᵀ Pᵀ - λ Q
    "mirror": Matrix(flow=lambda c: c.W.T * c.P.T - c.lam * c.Q, shape="expand"),
    # gradient of ½‖QP - Wᵀ‖²: τ_Q dQ/dt = -(Q P Pᵀ - Wᵀ Pᵀ)
    "lowrank": Matrix(flow=lambda c: c.W.T * c.P.T - c.Q * c.P * c.P.T, shape="expand"),
}

FACTOR_INITS = ("random", "svd")  # how P and Q start: random, or the truncated SVD of W
SIGN_SCALINGS = ("usf", "brsf", "frsf")
LOWRANK_SCALES = ("auto", True, False)
# direct rules on conv layers: "channel" sends one (d x C_in) matrix's signal to every position
# (memory independent of the image size); "full" a (d x C_in·H·W) matrix (Nøkland's DFA)
CONV_FEEDBACKS = ("channel", "full")

# Options every ld rule takes, with their defaults (the simulation's implementation
# conventions are here too, so that `--help` and the docs read them from one place).
LD_DEFAULTS = {
    "p_rule": "oja",
    "q_rule": "kp",
    "factor_init": "random",
    "lowrank_scale": "auto",  # ∇P, ∇Q of lowrank scaled by 1/√r on linear layers, not on conv
    "svd_refresh": 100,  # svd p_rule: recompute P every this many steps
    "svd_momentum": 0.99,  # svd p_rule: running average of ⟨δ δᵀ⟩
    "mirror_batch": 32,  # mirror q_rule: noise examples per step
}
# Direct ld sends z = P e to every layer: Q cannot follow kp there (no weight above).
LD_DIRECT_DEFAULTS = {**LD_DEFAULTS, "q_rule": "fixed", "conv_feedback": "channel"}

PRESETS = {  # the published configurations by name
    "ldfa": {"p_rule": "lowrank", "q_rule": "lowrank", "factor_init": "svd"},
    "ldfa-local": {"p_rule": "kp", "q_rule": "kp", "factor_init": "svd"},
    "raf": {"p_rule": "oja", "q_rule": "kp", "factor_init": "random"},
}

# Options of the rules that are not ld, with their defaults.
RULE_DEFAULTS = {
    "bp": {}, "fa": {}, "kp": {}, "dfa": {"conv_feedback": "channel"},
    "wm": {"mirror_batch": 32, "noise_std": 1.0},
    "sign": {"scaling": "usf"},
}


def ld_rule(p_rule: str = LD_DEFAULTS["p_rule"], q_rule: str = LD_DEFAULTS["q_rule"],
            direct: bool = False) -> FeedbackRule:
    """Low-dimensional feedback B = Q P with the named factor rules."""
    _check_factor_rules(p_rule, q_rule, direct)
    P, Q = P_RULES[p_rule], Q_RULES[q_rule]
    return FeedbackRule(
        name=f"ld[{p_rule},{q_rule}]" + ("-direct" if direct else ""),
        description=f"low-dimensional feedback B = Q P, p_rule {p_rule}, q_rule {q_rule}",
        feedback=lambda c: c.Q * c.P,
        matrices={"P": P, "Q": Q},
        direct=direct,
    )


def _check_factor_rules(p_rule, q_rule, direct):
    if p_rule not in P_RULES:
        raise ConfigError(f"unknown p_rule {p_rule!r}; allowed: {', '.join(P_RULES)}")
    if q_rule not in Q_RULES:
        raise ConfigError(f"unknown q_rule {q_rule!r}; allowed: {', '.join(Q_RULES)}")
    if direct and (P_RULES[p_rule].needs_dW or Q_RULES[q_rule].needs_dW):
        raise ConfigError(f"p_rule {p_rule!r} / q_rule {q_rule!r}: kp needs layerwise feedback (it uses "
                          "the update of the weight above); use direct=False")


RULES: dict[str, FeedbackRule] = {}


def register_rule(rule: FeedbackRule) -> FeedbackRule:
    """Make ``rule`` available by name to :func:`get_rule`, ``ldfa derive``, ``ldfa theory``,
    :func:`ldfa.sim.layers.convert`, ``ldfa train`` and ``ldfa verify``."""
    if not isinstance(rule, FeedbackRule):
        raise ConfigError(f"register_rule needs a FeedbackRule, got {type(rule).__name__}")
    if rule.name == "ld" or rule.name in PRESETS:
        raise ConfigError(f"rule name {rule.name!r} is taken by ld; choose another name")
    RULES[rule.name] = rule
    return rule


register_rule(FeedbackRule("bp", "backprop: δ_l = W_{l+1}ᵀ δ_{l+1}", feedback=lambda c: c.W.T))
register_rule(FeedbackRule("fa", "feedback alignment: fixed random B",
                           feedback=lambda c: c.B, matrices={"B": Matrix()}))
register_rule(FeedbackRule("kp", "Kolen-Pollack: ΔB = ΔWᵀ - λB, so B → Wᵀ",
                           feedback=lambda c: c.B,
                           matrices={"B": Matrix(flow=lambda c: c.dW.T - c.lam * c.B,
                                                 needs_dW=True)}))
register_rule(FeedbackRule("wm", "weight mirror: ΔB = η⟨ξ (W ξ)ᵀ⟩ - λB with white noise ξ "
                                 "(⟨ξ ξᵀ⟩ = I), whose mean is τ_B dB/dt = Wᵀ - λB",
                           feedback=lambda c: c.B,
                           matrices={"B": Matrix(flow=lambda c: c.W.T - c.lam * c.B)}))
register_rule(FeedbackRule("dfa", "direct feedback alignment: δ_l = D_l e, D_l fixed random",
                           feedback=lambda c: c.D, matrices={"D": Matrix()}, direct=True))
register_rule(FeedbackRule(
    "sign", "sign symmetry: B = sign(W)ᵀ rescaled to ‖W‖ (scaling usf, brsf or frsf)",
    no_theory="sign(W) acts entry by entry, so it does not commute with the rotations into the "
              "teacher's modes and has no matrix flow in the linear theory; train it with ldfa train"))


def rule_names() -> list[str]:
    """Every rule name: the registered rules, ld, and the presets."""
    return sorted(RULES) + ["ld"] + list(PRESETS)


def is_ld(name: str) -> bool:
    return name == "ld" or name in PRESETS


def defaults(name: str, direct: bool = False) -> dict:
    """The full defaults of rule ``name`` (for ld and the presets: p_rule, q_rule, factor_init, ...)."""
    if is_ld(name):
        return {**(LD_DIRECT_DEFAULTS if direct else LD_DEFAULTS), **PRESETS.get(name, {})}
    if name not in RULES:
        raise ConfigError(f"unknown rule {name!r}; allowed: {', '.join(rule_names())}")
    return dict(RULE_DEFAULTS.get(name, {}))


def describe_defaults() -> str:
    """One line per rule with its defaults (the text of `ldfa theory --help` and `ldfa train --help`)."""
    lines = []
    for name in rule_names():
        d = defaults(name)
        opts = ", ".join(f"{k}={v}" for k, v in d.items() if k in ("p_rule", "q_rule", "factor_init",
                                                                  "scaling"))
        lines.append(f"{name}" + (f" ({opts})" if opts else ""))
    return "; ".join(lines) + f"; ld --direct: p_rule={LD_DIRECT_DEFAULTS['p_rule']}, " \
        f"q_rule={LD_DIRECT_DEFAULTS['q_rule']}"


@dataclass(frozen=True)
class RuleSpec:
    """A rule resolved from its name and options, every default filled in and validated.

    ``base`` is the registered rule behind the name (``ld`` for the presets); ``rule`` the
    :class:`FeedbackRule` whose expressions theory and the generic simulation evaluate.
    """

    name: str
    base: str
    rule: FeedbackRule
    rank: int | None
    direct: bool
    options: dict

    @property
    def p_rule(self):
        return self.options.get("p_rule")

    @property
    def q_rule(self):
        return self.options.get("q_rule")

    @property
    def is_ld(self) -> bool:
        return self.base == "ld"


def resolve(name: str, p_rule: str | None = None, q_rule: str | None = None, direct: bool = False,
            rank=None, check_rank: bool = True, **options) -> RuleSpec:
    """Validate a rule and its options once, for theory and simulation alike.

    Errors name the parameter (rank, p_rule, q_rule, factor_init, ...), never a command-line
    flag; the CLI maps them to its flags. ``check_rank=False`` skips the rank checks (for
    derivation, where r stays a symbol).
    """
    if not isinstance(name, str) or (name not in RULES and not is_ld(name)):
        raise ConfigError(f"unknown rule {name!r}; allowed: {', '.join(rule_names())}")
    if direct not in (True, False):
        raise ConfigError(f"direct={direct!r}: must be True or False")
    unknown_opts = [k for k in options if options[k] is not None
                    and k not in defaults(name, direct)]
    if unknown_opts:
        allowed = ", ".join(defaults(name, direct)) or "none"
        raise ConfigError(f"{unknown_opts[0]}={options[unknown_opts[0]]!r}: not an option of rule "
                          f"{name!r}; its options: {allowed}")
    if is_ld(name):
        opts = defaults(name, direct)
        opts.update({k: v for k, v in options.items() if v is not None})
        opts.update({k: v for k, v in (("p_rule", p_rule), ("q_rule", q_rule)) if v is not None})
        _check_factor_rules(opts["p_rule"], opts["q_rule"], direct)
        if opts["factor_init"] not in FACTOR_INITS:
            raise ConfigError(f"unknown factor_init {opts['factor_init']!r}; allowed: "
                              f"{', '.join(FACTOR_INITS)}")
        if opts["lowrank_scale"] not in LOWRANK_SCALES:
            raise ConfigError(f"lowrank_scale={opts['lowrank_scale']!r}; allowed: auto, True, False")
        for key in ("svd_refresh", "mirror_batch"):
            if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < 1:
                raise ConfigError(f"{key}={opts[key]!r}: must be a positive integer")
        if not (isinstance(opts["svd_momentum"], (int, float)) and 0 <= opts["svd_momentum"] < 1):
            raise ConfigError(f"svd_momentum={opts['svd_momentum']!r}: must be in [0, 1)")
        rule = ld_rule(opts["p_rule"], opts["q_rule"], direct)
        base = "ld"
    else:
        if p_rule is not None or q_rule is not None:
            raise ConfigError(f"p_rule/q_rule apply to ld rules only, not to {name!r}")
        rule = RULES[name]
        opts = defaults(name)
        opts.update({k: v for k, v in options.items() if v is not None})
        if direct and not rule.direct:
            direct_rules = [n for n, r in RULES.items() if r.direct] + ["ld"]
            raise ConfigError(f"rule {name!r} has no direct variant; direct rules: "
                              f"{', '.join(direct_rules)}")
        direct = rule.direct
        base = name
        if name == "sign" and opts["scaling"] not in SIGN_SCALINGS:
            raise ConfigError(f"unknown scaling {opts['scaling']!r}; allowed: {', '.join(SIGN_SCALINGS)}")
    if "conv_feedback" in opts and opts["conv_feedback"] not in CONV_FEEDBACKS:
        raise ConfigError(f"conv_feedback={opts['conv_feedback']!r}; allowed: {', '.join(CONV_FEEDBACKS)}")
    if check_rank:
        if rule.uses_rank:
            if rank is None:
                raise ConfigError(f"rule {name!r} needs a rank r, an integer >= 1")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                raise ConfigError(f"rank r={rank!r}: must be an integer >= 1")
        elif rank is not None:
            raise ConfigError(f"rank r={rank!r} applies to ld rules only (rules with a bottleneck), "
                              f"not to {name!r}")
    return RuleSpec(name, base, rule, rank, bool(direct), opts)


def get_rule(name: str, p_rule: str | None = None, q_rule: str | None = None,
             direct: bool = False) -> FeedbackRule:
    """The rule ``name`` for the theory; ``ld`` (or a preset) is assembled from its p_rule and
    q_rule. A rule the linear theory cannot express (``no_theory``) is refused."""
    rule = resolve(name, p_rule, q_rule, direct, check_rank=False).rule
    if rule.no_theory:
        raise ConfigError(f"rule={name!r}: no linear theory: {rule.no_theory}")
    return rule
