"""Exact learning dynamics of a two-layer erf network, online teacher-student, N → ∞.

Student ŷ = v g(λ), λ = w x/√N (K hidden units, D outputs); teacher y* = v* g(ν),
ν = w* x/√N (M hidden units); g(u) = erf(u/√2); inputs x ~ N(0, I_N); one fresh
sample per step; loss ½‖e‖² with e = y* − ŷ. Every feedback rule delivers

    δ = g'(λ) ⊙ (F e),    F (K × D) = the rule's feedback matrix,

and the updates are Δw_k = (η/√N) δ_k x − (ηλ_wd/N) w_k,  Δv = (η_v/N)(e g(λ)ᵀ − λ_wd v),
and τ_X-scaled flows of the rule's own matrices (rate η_X/N per step). With t = steps/N
the order parameters Q = w wᵀ/N, R = w w*ᵀ/N (T = w* w*ᵀ/N fixed) obey, as N → ∞,

    dR_km/dt = η Σ_a Φ_ka I3(k, m̄, a) − ηλ_wd R_km
    dQ_kl/dt = η Σ_a [Φ_ka I3(k, l, a) + Φ_la I3(l, k, a)] + η² Σ_ac Φ_ka Φ_lc I4(k, l, a, c) − 2ηλ_wd Q_kl
    dv/dt    = η_v (G − λ_wd v),      G = ⟨e g(λ)ᵀ⟩ = V I2[:, :K]
    dX/dt    = η_X f_X(v, G, C, P, Q, B, ...)   (the rule's flow, from the registry)

with u = (λ, ν) of covariance Ω = [[Q, R], [Rᵀ, T]], V = [−v, v*] (D × (K+M)) so that
e = V g(u), Φ = F V (K × (K+M)), C = ⟨e eᵀ⟩ = V I2 Vᵀ, and the Gaussian averages
(indices into u; m̄ = K + m)

    I2(a, b)       = ⟨g(u_a) g(u_b)⟩,   I3(a, b, c) = ⟨g'(u_a) u_b g(u_c)⟩,
    I4(a, b, c, d) = ⟨g'(u_a) g'(u_b) g(u_c) g(u_d)⟩

in the closed forms of Saad & Solla (1995) and Goldt et al. (2019) for g = erf(u/√2).
The generalisation error is ε_g = ½ tr C. The rule is taken from the registry
(:mod:`ldfa.theory.rules`): its crossing symbols map to W → v, dW → G, C → ⟨e eᵀ⟩,
and its feedback matrix gives F. At two layers a direct rule (dfa, ld-direct) sees the
same crossing as its layerwise twin (the weight above the hidden layer is v itself),
so dfa and fa have identical equations. See docs/nonlinear.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp
from scipy.integrate import solve_ivp

from .errors import ConfigError
from .integrate import top_subspace
from .rules import Crossing, FeedbackRule, get_rule

# -- the Gaussian averages, written once in sympy and compiled with lambdify ------------------

_c = sp.symbols("c_aa c_bb c_cc c_dd c_ab c_ac c_ad c_bc c_bd c_cd", real=True)
c_aa, c_bb, c_cc, c_dd, c_ab, c_ac, c_ad, c_bc, c_bd, c_cd = _c

#: I2 = ⟨g(u_a) g(u_b)⟩ = (2/π) arcsin(C_ab / √((1 + C_aa)(1 + C_bb)))
I2_EXPR = 2 / sp.pi * sp.asin(c_ab / sp.sqrt((1 + c_aa) * (1 + c_bb)))
_L3 = (1 + c_aa) * (1 + c_cc) - c_ac**2
#: I3 = ⟨g'(u_a) u_b g(u_c)⟩ = (2/π) (C_bc (1 + C_aa) − C_ab C_ac) / ((1 + C_aa) √Λ3)
I3_EXPR = 2 / sp.pi / sp.sqrt(_L3) * (c_bc * (1 + c_aa) - c_ab * c_ac) / (1 + c_aa)
_L4 = (1 + c_aa) * (1 + c_bb) - c_ab**2
_L0 = (_L4 * c_cd - c_bc * c_bd * (1 + c_aa) - c_ac * c_ad * (1 + c_bb)
       + c_ab * c_ac * c_bd + c_ab * c_ad * c_bc)
_L1 = _L4 * (1 + c_cc) - c_bc**2 * (1 + c_aa) - c_ac**2 * (1 + c_bb) + 2 * c_ab * c_ac * c_bc
_L2 = _L4 * (1 + c_dd) - c_bd**2 * (1 + c_aa) - c_ad**2 * (1 + c_bb) + 2 * c_ab * c_ad * c_bd
#: I4 = ⟨g'(u_a) g'(u_b) g(u_c) g(u_d)⟩ = (4/π²) Λ4^{-1/2} arcsin(Λ0 / √(Λ1 Λ2))
I4_EXPR = 4 / sp.pi**2 / sp.sqrt(_L4) * sp.asin(_L0 / sp.sqrt(_L1 * _L2))

# arcsin clipped to [-1, 1]: at c = d the argument is 1 up to rounding
_SAFE = [{"arcsin": lambda x: np.arcsin(np.clip(x, -1.0, 1.0))}, "numpy"]
_i2 = sp.lambdify((c_aa, c_bb, c_ab), I2_EXPR, _SAFE)
_i3 = sp.lambdify((c_aa, c_cc, c_ab, c_ac, c_bc), I3_EXPR, _SAFE)
_i4 = sp.lambdify(_c, I4_EXPR, _SAFE)


def g(u):
    """The activation g(u) = erf(u/√2)."""
    from scipy.special import erf
    return erf(np.asarray(u) / np.sqrt(2.0))


def g_prime(u):
    """g'(u) = √(2/π) exp(−u²/2)."""
    return np.sqrt(2.0 / np.pi) * np.exp(-np.asarray(u) ** 2 / 2)


def i2(O: np.ndarray) -> np.ndarray:
    """I2[a, b] = ⟨g(u_a) g(u_b)⟩ for u ~ N(0, O)."""
    d = np.diag(O)
    return _i2(d[:, None], d[None, :], O)


def i3(O: np.ndarray, rows: int) -> np.ndarray:
    """I3[a, b, c] = ⟨g'(u_a) u_b g(u_c)⟩ for a < rows (the student's units), all b, c."""
    d = np.diag(O)
    a = np.arange(rows)[:, None, None]
    n = len(O)
    b = np.arange(n)[None, :, None]
    c = np.arange(n)[None, None, :]
    return _i3(d[a], d[c], O[a, b], O[a, c], O[b, c])


def i4(O: np.ndarray, rows: int) -> np.ndarray:
    """I4[a, b, c, d] = ⟨g'(u_a) g'(u_b) g(u_c) g(u_d)⟩ for a, b < rows, all c, d."""
    d_ = np.diag(O)
    n = len(O)
    a = np.arange(rows)[:, None, None, None]
    b = np.arange(rows)[None, :, None, None]
    c = np.arange(n)[None, None, :, None]
    d = np.arange(n)[None, None, None, :]
    return _i4(d_[a], d_[b], d_[c], d_[d], O[a, b], O[a, c], O[a, d], O[b, c], O[b, d], O[c, d])


def generalisation_error(Q, R, T, v, vstar) -> float:
    """ε_g = ½ ⟨‖y* − ŷ‖²⟩ = ½ tr(V I2(Ω) Vᵀ), V = [−v, v*], Ω = [[Q, R], [Rᵀ, T]]."""
    O = np.block([[Q, R], [R.T, T]])
    V = np.concatenate([-v, vstar], axis=1)
    return 0.5 * float(np.trace(V @ i2(O) @ V.T))


# -- the rule, from the registry --------------------------------------------------------------

K_, D_, r_ = sp.symbols("K D r", integer=True, positive=True)
LAM = sp.Symbol("lambda", nonnegative=True)
V_SYM = sp.MatrixSymbol("v", D_, K_)  # W: the weight above the hidden layer
G_SYM = sp.MatrixSymbol("G", D_, K_)  # dW: ⟨e g(λ)ᵀ⟩, the gradient part of dv/dt
C_SYM = sp.MatrixSymbol("C", D_, D_)  # ⟨e eᵀ⟩
_MAT_NAMES = {"B": "B", "D": "B_d", "P": "P", "Q": "Q_f"}  # Q_f: not the overlap Q


@dataclass
class FeedbackSystem:
    """A registry rule at the hidden layer of the two-layer net: F and the flows of its matrices."""

    rule: FeedbackRule
    feedback: sp.MatrixExpr  # F (K x D), algebraic matrices substituted
    flows: dict  # name -> (MatrixSymbol, rhs): dX/dt = η_X rhs
    algebraic: dict  # name -> (MatrixSymbol, expr)
    fixed: dict  # name -> MatrixSymbol
    shapes: dict  # name -> "feedback" | "compress" | "expand"
    symbols: dict = field(default_factory=dict)

    def latex(self) -> str:
        """The rule's part of the ODEs as an ``align`` body (F, then the flows)."""
        lines = [rf"F &= {sp.latex(self.feedback)}"]
        for sym, rhs in self.flows.values():
            lines.append(rf"\frac{{\mathrm{{d}}{sp.latex(sym)}}}{{\mathrm{{d}}t}} &= \eta_{{{sp.latex(sym)}}}"
                         rf"\left({sp.latex(rhs)}\right)")
        for sym, expr in self.algebraic.values():
            lines.append(rf"{sp.latex(sym)} &= {sp.latex(expr)}")
        return " \\\\\n".join(lines)


def feedback_system(rule: FeedbackRule | str, **rule_options) -> FeedbackSystem:
    """Map ``rule``'s crossing onto the two-layer teacher-student net: W → v, dW → G, C → ⟨e eᵀ⟩."""
    if isinstance(rule, str):
        rule = get_rule(rule, **rule_options)
    mats, shapes = {}, {}
    for name, spec in rule.matrices.items():
        rows, cols = {"feedback": (K_, D_), "compress": (r_, D_), "expand": (K_, r_)}[spec.shape]
        mats[name] = sp.MatrixSymbol(_MAT_NAMES.get(name, name), rows, cols)
        shapes[name] = spec.shape
    c = Crossing(1, V_SYM, None if rule.direct else G_SYM, C_SYM, mats, LAM, r_)
    flows, algebraic, fixed = {}, {}, {}
    for name, spec in rule.matrices.items():
        if spec.kind == "flow":
            flows[name] = (mats[name], spec.flow(c))
        elif spec.kind == "algebraic":
            algebraic[name] = (mats[name], spec.algebraic(c))
        else:
            fixed[name] = mats[name]
    subs = {sym: expr for sym, expr in algebraic.values()}

    def resolve(expr):
        for _ in range(10):
            new = expr.xreplace(subs)
            if new == expr:
                return expr
            expr = new
        raise RuntimeError("algebraic definitions are cyclic")

    F = resolve(rule.feedback(c))
    flows = {n: (sym, resolve(rhs)) for n, (sym, rhs) in flows.items()}
    return FeedbackSystem(rule, F, flows, algebraic, fixed, shapes,
                          symbols={"v": V_SYM, "G": G_SYM, "C": C_SYM, "lam": LAM, "r": r_, "mats": mats})


@lru_cache(maxsize=64)
def _compiled(rule_key: tuple, rank: int | None):
    """numpy functions for F and the flows of a rule (cached by its registry key and rank)."""
    name, p_rule, q_rule, direct = rule_key
    fs = feedback_system(get_rule(name, p_rule=p_rule, q_rule=q_rule, direct=direct))
    order = [n for n in fs.rule.matrices if n not in fs.algebraic]
    args = [V_SYM, G_SYM, C_SYM, LAM] + [fs.symbols["mats"][n] for n in order]
    rsub = {r_: rank} if rank is not None else {}
    modules = [{"top_subspace": top_subspace}, "numpy"]
    F = sp.lambdify(args, fs.feedback.xreplace(rsub), modules)
    flows = {n: sp.lambdify(args, rhs.xreplace(rsub), modules) for n, (_, rhs) in fs.flows.items()}
    return fs, order, F, flows


# -- the numerical system ---------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    """Sizes, rule and rates of one teacher-student problem.

    eta: first-layer rate η; eta_v: second-layer rate η_v (0 = fixed v, the soft committee
    machine); eta_fb: rate η_X of the rule's flowing matrices (default η_v, which makes
    kp's B track v exactly); lam: weight decay λ on w, v and (through the rule) B, P, Q.
    """

    K: int = 2
    M: int = 2
    D: int = 1
    rule: str = "bp"
    p_rule: str | None = None
    q_rule: str | None = None
    direct: bool = False
    rank: int | None = None
    eta: float = 1.0
    eta_v: float = 1.0
    eta_fb: float | None = None
    lam: float = 0.0

    def __post_init__(self):
        for key in ("K", "M", "D"):
            val = getattr(self, key)
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise ConfigError(f"{key}={val!r}: a positive integer is required")
        for key in ("eta", "eta_v", "lam"):
            if not np.isfinite(getattr(self, key)) or getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: a finite number >= 0 is required")
        rule = get_rule(self.rule, p_rule=self.p_rule, q_rule=self.q_rule, direct=self.direct)
        if rule.uses_rank and (self.rank is None or not 1 <= self.rank <= self.D):
            raise ConfigError(f"rank={self.rank!r}: rule {rule.name} needs an integer rank in 1..D={self.D}")

    @property
    def key(self) -> tuple:
        return (self.rule, self.p_rule, self.q_rule, self.direct)

    @property
    def fb_rate(self) -> float:
        return self.eta_v if self.eta_fb is None else self.eta_fb

    def rule_matrix_shape(self, name: str) -> tuple:
        fs = _compiled(self.key, self.rank)[0]
        return {"feedback": (self.K, self.D), "compress": (self.rank, self.D),
                "expand": (self.K, self.rank)}[fs.shapes[name]]


class TeacherStudentODE:
    """The order-parameter ODEs of :class:`Setup` as numpy: packing, right-hand side, measures."""

    def __init__(self, setup: Setup, T: np.ndarray, vstar: np.ndarray, fixed: dict | None = None):
        self.s = setup
        self.T, self.vstar = np.asarray(T, float), np.asarray(vstar, float)
        if self.T.shape != (setup.M, setup.M) or self.vstar.shape != (setup.D, setup.M):
            raise ConfigError(f"T {self.T.shape} / v* {self.vstar.shape}: expected "
                              f"({setup.M}, {setup.M}) / ({setup.D}, {setup.M})")
        self.fs, self.order, self._F, self._flows = _compiled(setup.key, setup.rank)
        self.fixed = {n: np.asarray(fixed[n], float) for n in self.fs.fixed} if self.fs.fixed else {}
        missing = [n for n in self.fs.fixed if n not in (fixed or {})]
        if missing:
            raise ConfigError(f"rule {self.fs.rule.name} needs the fixed matrix {missing[0]!r}")
        K, M, D = setup.K, setup.M, setup.D
        self.blocks = [("Q", (K, K)), ("R", (K, M)), ("v", (D, K))]
        self.mat_blocks = [(n, setup.rule_matrix_shape(n)) for n in self.fs.flows]

    # state packing: {"Q", "R", "v", "mats": {rule matrix name: array}}
    def pack(self, state: dict) -> np.ndarray:
        parts = [np.asarray(state[n], float).ravel() for n, _ in self.blocks]
        parts += [np.asarray(state["mats"][n], float).ravel() for n, _ in self.mat_blocks]
        return np.concatenate(parts)

    def unpack(self, y: np.ndarray) -> dict:
        out, i = {"mats": {}}, 0
        for j, (n, shape) in enumerate(self.blocks + self.mat_blocks):
            size = int(np.prod(shape))
            (out if j < len(self.blocks) else out["mats"])[n] = y[i:i + size].reshape(shape)
            i += size
        return out

    def _mats(self, st: dict) -> list:
        return [st["mats"][n] if n in st["mats"] else self.fixed[n] for n in self.order]

    def averages(self, st: dict):
        """Ω, V, I2, G = ⟨e g(λ)ᵀ⟩ and C = ⟨e eᵀ⟩ at state ``st``."""
        O = np.block([[st["Q"], st["R"]], [st["R"].T, self.T]])
        V = np.concatenate([-st["v"], self.vstar], axis=1)
        I2 = i2(O)
        G = V @ I2[:, :self.s.K]
        C = V @ I2 @ V.T
        return O, V, I2, G, C

    def feedback(self, st: dict) -> np.ndarray:
        """F (K x D) at state ``st``."""
        _, _, _, G, C = self.averages(st)
        return np.asarray(self._F(st["v"], G, C, self.s.lam, *self._mats(st)), float)

    def rhs(self, t, y):
        s, K = self.s, self.s.K
        st = self.unpack(y)
        O, V, I2, G, C = self.averages(st)
        mats = self._mats(st)
        F = np.asarray(self._F(st["v"], G, C, s.lam, *mats), float)
        Phi = F @ V  # K x (K + M)
        I3 = i3(O, K)
        I4 = i4(O, K)
        A = np.einsum("ka,kla->kl", Phi, I3[:, :K, :])
        dQ = s.eta * (A + A.T) + s.eta**2 * np.einsum("ka,lc,klac->kl", Phi, Phi, I4) \
            - 2 * s.eta * s.lam * st["Q"]
        dR = s.eta * np.einsum("ka,kma->km", Phi, I3[:, K:, :]) - s.eta * s.lam * st["R"]
        dv = s.eta_v * (G - s.lam * st["v"])
        parts = [dQ.ravel(), dR.ravel(), dv.ravel()]
        for n, _ in self.mat_blocks:
            parts.append(s.fb_rate * np.asarray(self._flows[n](st["v"], G, C, s.lam, *mats), float).ravel())
        return np.concatenate(parts)

    def error(self, st: dict) -> float:
        return generalisation_error(st["Q"], st["R"], self.T, st["v"], self.vstar)

    def min_eigenvalue(self, y) -> float:
        """Smallest eigenvalue of Ω = [[Q, R], [Rᵀ, T]] (a Gram matrix: never negative)."""
        st = self.unpack(y)
        return float(np.linalg.eigvalsh(np.block([[st["Q"], st["R"]], [st["R"].T, self.T]]))[0])

    def integrate(self, state0: dict, t_eval, rtol=1e-7, atol=1e-9, partial=False) -> "Solution":
        """Integrate from ``state0`` ({"Q", "R", "v", "mats": {rule matrix: array}}).

        Ω must stay positive semi-definite. Where a student unit converges onto a teacher unit
        Ω approaches the boundary of that cone and the closed forms (square roots, arcsin at
        ±1) stop being smooth; an integration step that crosses the boundary ends the
        solution there. With ``partial`` the remaining times are NaN (``Solution.stopped``
        holds the time); otherwise a RuntimeError is raised.
        """
        t_eval = np.asarray(t_eval, float)
        psd = lambda t, y: self.min_eigenvalue(y) + 1e-6  # noqa: E731
        psd.terminal = True
        sol = solve_ivp(self.rhs, (0.0, float(t_eval[-1])), self.pack(state0), t_eval=t_eval,
                        method="RK45", rtol=rtol, atol=atol, events=psd)
        stopped = None if sol.status == 0 else float(sol.t[-1]) if len(sol.t) else 0.0
        if stopped is not None and not partial:
            why = sol.message if sol.status < 0 else "Ω left the positive semi-definite cone"
            raise RuntimeError(f"ODE integration stopped at t = {stopped:.4g}: {why}")
        states = [self.unpack(y) for y in sol.y.T]
        eps = np.full(len(t_eval), np.nan)
        eps[:len(states)] = [self.error(st) for st in states]
        return Solution(t_eval, states, eps, self, stopped)
@dataclass
class Solution:
    t: np.ndarray
    states: list  # one per time reached
    eps: np.ndarray  # NaN after ``stopped``
    ode: TeacherStudentODE
    stopped: float | None = None

    def feedback_alignment(self) -> np.ndarray:
        """cos∠(vᵀ, F): the overlap of the delivered feedback with the transported weights."""
        out = []
        for st in self.states:
            F = self.ode.feedback(st)
            vt = st["v"].T
            out.append(float(np.sum(F * vt) / (np.linalg.norm(F) * np.linalg.norm(vt) + 1e-300)))
        return np.array(out)


def overlaps(w: np.ndarray, wstar: np.ndarray) -> tuple:
    """(Q, R, T) = (w wᵀ/N, w w*ᵀ/N, w* w*ᵀ/N) of first-layer weights with N columns."""
    N = w.shape[-1]
    return w @ w.T / N, w @ wstar.T / N, wstar @ wstar.T / N


def integrate_from(setup: Setup, w, wstar, v, vstar, mats: dict, t_eval, partial=False) -> Solution:
    """Integrate the ODEs from the order parameters of concrete weights (one seed's init)."""
    Q, R, T = overlaps(np.asarray(w, float), np.asarray(wstar, float))
    ode = TeacherStudentODE(setup, T, vstar, fixed=mats)
    state = {"Q": Q, "R": R, "v": np.asarray(v, float),
             "mats": {n: np.asarray(mats[n], float) for n in ode.fs.flows}}
    return ode.integrate(state, t_eval, partial=partial)


# -- the generic equations as LaTeX -----------------------------------------------------------

def equations_latex(rule: FeedbackRule | str = "bp", **rule_options) -> str:
    """The ODEs in index form plus the rule's F and flows, as an ``align`` environment.

    Weight-decay terms (−ηλ R, −2ηλ Q, −η_v λ v) are left out of the printed form.
    """
    fs = feedback_system(rule, **rule_options)
    eta_v = sp.Symbol("eta_v", positive=True)
    head = [
        r"\frac{\mathrm{d}R_{km}}{\mathrm{d}t} &= \eta \sum_{a} \Phi_{ka}\, I_3(k, \bar m, a)",
        r"\frac{\mathrm{d}Q_{kl}}{\mathrm{d}t} &= \eta \sum_{a} \left[\Phi_{ka} I_3(k, l, a) + "
        r"\Phi_{la} I_3(l, k, a)\right] + \eta^2 \sum_{a,c} \Phi_{ka}\Phi_{lc}\, I_4(k, l, a, c)",
        rf"\frac{{\mathrm{{d}}v}}{{\mathrm{{d}}t}} &= {sp.latex(eta_v)}\, G,\quad "
        r"G = \langle e\, g(\lambda)^\top\rangle,\quad C = V I_2 V^\top,\quad \Phi = F V,"
        r"\quad V = [-v,\ v^*]",
    ]
    return "\\begin{align}\n" + " \\\\\n".join(head + [fs.latex()]) + "\n\\end{align}"


def integral_latex() -> dict:
    """The closed forms I2, I3, I4 as LaTeX strings."""
    return {"I2": sp.latex(I2_EXPR), "I3": sp.latex(I3_EXPR), "I4": sp.latex(I4_EXPR)}
