"""Reduced per-mode ODEs under the aligned (decoupled) ansatz, derived from the matrix ODEs.

Ansatz (Saxe et al. 2014): in the teacher's SVD basis W* = U S Vᵀ every matrix of the
system is diagonal, W_l = R_l diag(a_l) R_{l-1}ᵀ with R_0 = V, R_L = U, and so are the
rule's own matrices (B = diag β, P = diag p, Q = diag q, D = diag d). The dynamics are
equivariant under those rotations, so we may take every basis to be the identity.
:func:`reduce_to_modes` substitutes explicit diagonal matrices with ``modes`` entries
into every flow, multiplies out, checks that all off-diagonal entries vanish (the
ansatz is invariant) and that mode 1 depends only on mode-1 variables (the modes
decouple), and returns mode 1's equations in generic symbols. The mode strength is
u = a_1 a_2 ⋯ a_L = u_αᵀ W_L ⋯ W_1 v_α.

``top_r(C)`` (the ``svd`` p_rule) becomes diag(χ): χ = 1 if the mode is among the r
largest diagonal entries of C, else 0; :attr:`ModeSystem.selections` keeps the
expression of that entry so integrators can pick the modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from .derive import MatrixODE
from .errors import ConfigError
from .rules import TopSubspace

_GREEK = {"B": "beta", "P": "p", "Q": "q", "D": "d"}


@dataclass
class ModeSystem:
    """τ_x dx/dt = rates[x] for one teacher mode of strength s (noise variance σ²)."""

    ode: MatrixODE
    variables: list  # per-mode state: a_1..a_L, then the rule's flow matrices
    rates: dict  # variable -> right-hand side
    timescales: dict  # variable -> τ symbol
    fixed: list  # per-mode values of fixed matrices (parameters)
    algebraic: dict  # per-mode algebraic relations (printing only; already substituted)
    selections: dict  # χ symbol -> diagonal entry of the covariance it selects on
    strength: sp.Expr  # u = a_1 ⋯ a_L
    s: sp.Symbol
    sigma: sp.Symbol
    weights: list = field(default_factory=list)

    @property
    def tau(self):
        return self.ode.symbols["tau"]

    def latex(self) -> str:
        rows = []
        for x in self.variables:
            lhs = sp.latex(self.timescales[x]) + r" \frac{\mathrm{d}" + sp.latex(x) + r"}{\mathrm{d}t}"
            rows.append(f"  {lhs} &= {sp.latex(sp.factor(self.rates[x]))}")
        for x, rhs in self.algebraic.items():
            rows.append(f"  {sp.latex(x)} &= {sp.latex(rhs)}")
        for chi, c in self.selections.items():
            rows.append(rf"  {sp.latex(chi)} &= \mathbb{{1}}\left[{sp.latex(c)} \text{{ among the "
                        r"top } r\right]")
        return "\\begin{align}\n" + " \\\\\n".join(rows) + "\n\\end{align}"

    def __str__(self) -> str:
        lines = [f"per-mode ODEs of {self.ode.rule.name} (L = {self.ode.layers}), "
                 f"u = {sp.sstr(self.strength)}"]
        for x in self.variables:
            lines.append(f"  {self.timescales[x]} d{x}/dt = {sp.sstr(sp.factor(self.rates[x]))}")
        for x, rhs in self.algebraic.items():
            lines.append(f"  {x} = {sp.sstr(rhs)}")
        for chi, c in self.selections.items():
            lines.append(f"  {chi} = 1 if {sp.sstr(c)} is among the top r, else 0")
        return "\n".join(lines)


def _diag(name: str, m: int):
    syms = sp.symbols(f"{name}_(1:{m + 1})", real=True) if m > 1 else (sp.Symbol(f"{name}", real=True),)
    return sp.ImmutableMatrix(sp.diag(*syms)), list(syms)


def reduce_to_modes(ode: MatrixODE, modes: int = 2) -> ModeSystem:
    """Per-mode ODEs of ``ode`` under the diagonal ansatz (see module docstring)."""
    if modes < 2:
        raise ConfigError(f"modes={modes}: need at least 2 modes to check decoupling")
    m = modes
    sym = ode.symbols
    s_diag, s_syms = _diag("s^", m)
    sigma = sp.Symbol("sigma", nonnegative=True)
    explicit = {sym["Wstar"]: s_diag, sym["Sigma"]: sigma**2 * sp.eye(m)}
    per_mode = {}  # matrix symbol -> list of its m diagonal symbols
    names = {}
    for l, Wl in enumerate(ode.weights, start=1):
        names[Wl] = f"a_{l}"
    for X in [*ode.flows, *ode.algebraic, *ode.fixed]:
        if X not in names:
            base, _, idx = X.name.partition("_")
            names[X] = _GREEK.get(base, base.lower()) + (f"_{idx}" if idx else "")
    for X, name in names.items():
        if X in ode.algebraic:
            continue
        explicit[X], per_mode[X] = _diag(name + "^", m)

    # P = top_r(C) (svd) -> diag(χ): mode selected or not
    selected = [X for X, rhs in ode.algebraic.items() if isinstance(rhs, TopSubspace)]
    chi_of = {}
    for X in selected:
        tag = X.name.partition("_")[2]
        explicit[X], syms = _diag("chi" + (f"_{tag}" if tag else "") + "^", m)
        chi_of[X] = syms
    E_explicit = s_diag - _product_explicit([explicit[W] for W in ode.weights])

    def expand(expr):
        expr = ode.substituted(expr, keep=selected)
        expr = expr.xreplace({**explicit, sym["E"]: E_explicit})
        return sp.ImmutableMatrix(sp.Matrix(expr.doit()).applyfunc(sp.expand))

    # generic names: mode-1 symbol -> symbol without the mode index
    generic = {}
    for X, syms in per_mode.items():
        generic[syms[0]] = sp.Symbol(names[X], real=True)
    generic[s_syms[0]] = sp.Symbol("s", real=True)
    rates, timescales, inconsistent = {}, {}, []
    for X, rhs in ode.flows.items():
        M = expand(rhs)
        for i in range(m):
            for j in range(m):
                if i != j and sp.simplify(M[i, j]) != 0:
                    inconsistent.append((X, i, j, M[i, j]))
        var = generic[per_mode[X][0]]
        rates[var] = M[0, 0]
        timescales[var] = ode.timescales[X]
    if inconsistent:
        X, i, j, val = inconsistent[0]
        raise ValueError(f"the diagonal ansatz is not invariant for {ode.rule.name}: "
                         f"d{X.name}/dt has off-diagonal entry ({i},{j}) = {val}")
    selections = {}
    for X, syms in chi_of.items():
        chi = sp.Symbol(syms[0].name.replace("^_1", "").replace("^", ""), nonnegative=True)
        generic[syms[0]] = chi
        selections[chi] = expand(ode.algebraic[X].args[0])[0, 0]
    # χ is an indicator: χ² = χ
    chis = list(selections)
    for var in rates:
        expr = _indicator_powers(rates[var].xreplace(generic), chis)
        leftover = sorted(x.name for x in expr.free_symbols if "^" in x.name)
        if leftover:
            raise ValueError(f"modes do not decouple under {ode.rule.name}: {var} depends on "
                             f"other modes' variables {leftover}")
        rates[var] = expr
    selections = {chi: _indicator_powers(sp.expand(c.xreplace(generic)), chis)
                  for chi, c in selections.items()}
    algebraic = {}
    for X in ode.algebraic:
        if X not in selected:
            algebraic[sp.Symbol(names[X], real=True)] = expand(X)[0, 0].xreplace(generic)
    weights = [generic[per_mode[W][0]] for W in ode.weights]
    fixed = [generic[per_mode[X][0]] for X in ode.fixed]
    variables = [generic[per_mode[X][0]] for X in ode.flows]
    return ModeSystem(ode, variables, rates, timescales, fixed, algebraic, selections,
                      sp.Mul(*weights), generic[s_syms[0]], sigma, weights)


def _indicator_powers(expr, chis):
    """χ^k = χ for an indicator χ ∈ {0, 1}."""
    expr = sp.expand(expr)
    return expr.replace(lambda e: e.is_Pow and e.base in chis and e.exp.is_positive,
                        lambda e: e.base)


def _product_explicit(mats):
    out = mats[0]
    for M in mats[1:]:
        out = M * out
    return out


def strength_ode(system: ModeSystem, balance: str = "balanced", lam=None, subs=None) -> sp.Expr:
    """Right-hand side of τ du/dt for the mode strength u = a_1 ⋯ a_L.

    du/dt = Σ_l (∂u/∂a_l) da_l/dt, then the weights are eliminated with
    ``balanced``: a_l = u^{1/L} for every l (small balanced init), or
    ``lambda`` (L = 2 only): a_2² - a_1² = λ (conserved under bp), a_1 a_2 = u,
    so a_1² = (√(λ² + 4u²) - λ)/2.
    ``subs`` fixes other per-mode variables first (e.g. {χ: 1} for a selected mode).
    """
    u = sp.Symbol("u", positive=True)
    tau = system.tau
    ws = system.weights
    L = len(ws)
    for w in ws:
        if system.timescales[w] != tau:
            raise ValueError("all weights must share the timescale τ")
    dudt = sum(sp.diff(system.strength, w) * system.rates[w] for w in ws)
    if subs:
        dudt = dudt.xreplace(subs)
    if balance == "balanced":
        pos = {w: sp.Symbol(w.name, positive=True) for w in ws}
        dudt = dudt.xreplace(pos).xreplace({pos[w]: u ** sp.Rational(1, L) for w in ws})
    elif balance == "lambda":
        if L != 2:
            raise ConfigError(f"lambda-balanced reduction is for L = 2 layers, got L = {L}")
        lam = lam if lam is not None else sp.Symbol("lambda", positive=True)
        a1, a2 = ws
        x = sp.Symbol("x", positive=True)  # x = sqrt(λ² + 4u²) = a_1² + a_2²
        dudt = sp.expand(dudt).subs(a1 * a2, u)
        dudt = dudt.subs({a1**2: (x - lam) / 2, a2**2: (x + lam) / 2})
        if dudt.has(a1) or dudt.has(a2):
            raise ValueError(f"τ du/dt does not close on u under λ-balance: {dudt}")
        dudt = sp.factor(sp.simplify(dudt)).xreplace({x: sp.sqrt(lam**2 + 4 * u**2)})
    else:
        raise ConfigError(f"balance={balance!r}; allowed: balanced, lambda")
    return sp.simplify(sp.factor(dudt))
