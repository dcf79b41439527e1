"""Closed forms, fixed points, stability and conserved quantities of the derived systems."""

from __future__ import annotations

import sympy as sp

from .derive import MatrixODE
from .rules import TopSubspace

t = sp.Symbol("t", nonnegative=True)
u = sp.Symbol("u", positive=True)
u0 = sp.Symbol("u_0", positive=True)
s = sp.Symbol("s", positive=True)
tau = sp.Symbol("tau", positive=True)


def saxe_solution(s=s, u0=u0, tau=tau, t=t) -> sp.Expr:
    """u(t) = s e^{2st/τ} / (e^{2st/τ} - 1 + s/u_0): solves τ du/dt = 2u(s - u), u(0) = u_0."""
    g = sp.exp(2 * s * t / tau)
    return s * g / (g - 1 + s / u0)


def ode_residual(rhs_in_u: sp.Expr, solution: sp.Expr, u=u, tau=tau, t=t) -> sp.Expr:
    """τ du/dt - rhs(u) evaluated on ``solution``, simplified (0 when it solves the ODE)."""
    return sp.simplify(tau * sp.diff(solution, t) - rhs_in_u.xreplace({u: solution}))


def learning_time_symbolic(rhs_in_u: sp.Expr, u_start, u_end, u=u, tau=tau) -> sp.Expr:
    """t = τ ∫ du / rhs(u) from u_start to u_end (the time the mode strength needs)."""
    return sp.simplify(tau * sp.integrate(1 / rhs_in_u, (u, u_start, u_end)))


def fixed_points(rates: dict, variables=None) -> list[dict]:
    """All solutions of rates[x] = 0 for every x (sympy solve); may return manifolds."""
    variables = list(variables or rates)
    return sp.solve([rates[x] for x in variables], variables, dict=True)


def jacobian(rates: dict, variables=None) -> sp.Matrix:
    """J_ij = ∂ rate_i / ∂ x_j (the timescales are not divided out)."""
    variables = list(variables or rates)
    return sp.Matrix([rates[x] for x in variables]).jacobian(variables)


def stability(rates: dict, point: dict, variables=None) -> dict:
    """Jacobian eigenvalues {λ: multiplicity} at ``point``; stable iff all Re λ < 0."""
    J = jacobian(rates, variables).xreplace(point)
    return {sp.simplify(k): v for k, v in J.eigenvals().items()}


# -- conserved quantities of the matrix system -----------------------------------------

def time_derivative(expr: sp.MatrixExpr, ode: MatrixODE, same_timescale: bool = False):
    """d expr / dt by the product rule, using the flows of ``ode`` (fixed matrices: 0).

    With ``same_timescale`` every τ_X is set to τ.
    """
    rates = {X: ode.flows[X] / (ode.symbols["tau"] if same_timescale else ode.timescales[X])
             for X in ode.flows}

    def d(e):
        if isinstance(e, sp.MatrixSymbol):
            return rates.get(e, sp.ZeroMatrix(*e.shape))
        if isinstance(e, sp.MatAdd):
            return sp.MatAdd(*[d(a) for a in e.args])
        if isinstance(e, sp.MatMul):
            args = e.args
            return sp.MatAdd(*[sp.MatMul(*args[:i], d(a), *args[i + 1:])
                               for i, a in enumerate(args) if isinstance(a, sp.MatrixExpr)])
        if isinstance(e, sp.Transpose):
            return d(e.arg).T
        if isinstance(e, sp.MatrixExpr) and not e.free_symbols:
            return sp.ZeroMatrix(*e.shape)
        raise NotImplementedError(f"time derivative of {type(e).__name__}")

    return sp.expand(d(ode.substituted(expr)).doit())


def _is_zero(expr) -> bool:
    return expr == 0 or isinstance(expr, sp.ZeroMatrix) or sp.simplify(expr) == 0


def conserved_quantities(ode: MatrixODE) -> list[tuple[str, sp.MatrixExpr, str]]:
    """Candidates checked symbolically; returns (name, quantity, condition) that are conserved.

    Candidates for each pair of adjacent layers (l, l+1):
      balance     W_{l+1}ᵀ W_{l+1} - W_l W_lᵀ                         (bp)
      alignment   B W_{l+1} + W_{l+1}ᵀ Bᵀ - W_l W_lᵀ, B the feedback   (any fixed B)
      and for each flow matrix X shaped like W_{l+1}ᵀ:  X - W_{l+1}ᵀ  (kp, λ = 0)
    Each is conserved as derived, or only when every τ_X equals τ (the condition says so).
    """
    out = []
    for l in range(1, ode.layers):
        Wl, Wa = ode.weights[l - 1], ode.weights[l]
        cands = [(f"balance W_{l + 1}^T W_{l + 1} - W_{l} W_{l}^T", Wa.T * Wa - Wl * Wl.T)]
        if not ode.rule.direct and l in ode.feedback:
            B = ode.feedback[l]
            if B != Wa.T:
                cands.append((f"alignment B W_{l + 1} + W_{l + 1}^T B^T - W_{l} W_{l}^T",
                              B * Wa + Wa.T * B.T - Wl * Wl.T))
        for X in ode.flows:
            if X not in ode.weights and X.shape == Wa.T.shape:
                cands.append((f"{X.name} - W_{l + 1}^T", X - Wa.T))
        for name, Kq in cands:
            if ode.substituted(Kq).has(TopSubspace):
                continue  # top_r(C) has no derivative in closed form: nothing to prove
            if _is_zero(time_derivative(Kq, ode)):
                out.append((name, Kq, "always"))
            elif _is_zero(time_derivative(Kq, ode, same_timescale=True)):
                out.append((name, Kq, "when every tau_X equals tau"))
    return out
