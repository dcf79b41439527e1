"""Numerical integration (scipy.integrate.solve_ivp) of the derived ODEs.

The right-hand sides are not written here: they are the sympy expressions of
:func:`ldfa.theory.derive` (matrix level) and :func:`ldfa.theory.modes.reduce_to_modes`
(per mode), turned into numpy functions with ``sympy.lambdify``.
"""

from __future__ import annotations

import numpy as np
import sympy as sp
from scipy.integrate import solve_ivp

from .config import TheoryConfig
from .derive import derive
from .modes import reduce_to_modes
from .rules import TopSubspace, get_rule
from .trajectory import Trajectory


def top_subspace(C: np.ndarray, r) -> np.ndarray:
    """r x n matrix whose orthonormal rows are the top-r eigenvectors of symmetric C.

    Signs are fixed (largest-magnitude entry positive) so the map is continuous
    wherever the eigenvalues are distinct.
    """
    r = int(r)
    w, V = np.linalg.eigh((C + C.T) / 2)
    top = V[:, np.argsort(w)[::-1][:r]].T
    idx = np.argmax(np.abs(top), axis=1)
    return top * np.sign(top[np.arange(r), idx])[:, None]


_MODULES = [{"top_subspace": top_subspace}, "numpy"]


def _rates(cfg: TheoryConfig, ode, timescales) -> np.ndarray:
    """1/τ_X for each timescale symbol (τ, τ_B, τ_P, τ_Q) from the configuration."""
    value = {ode.symbols["tau"]: cfg.tau, sp.Symbol("tau_B", positive=True): cfg.tau_b,
             sp.Symbol("tau_P", positive=True): cfg.tau_p, sp.Symbol("tau_Q", positive=True): cfg.tau_q}
    return np.array([1.0 / value[t] for t in timescales])


def _orthonormal_rows(rng, r, n):
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q[:, :r].T


def teacher(cfg: TheoryConfig):
    """(W*, U, V): the project's one teacher, :func:`ldfa.theory.config.teacher_matrices`."""
    return cfg.teacher()


class MatrixSystem:
    """The full matrix ODE of ``cfg`` as numpy: state packing, right-hand side, measures."""

    def __init__(self, cfg: TheoryConfig):
        self.cfg = cfg
        self.ode = ode = derive(get_rule(cfg.rule, cfg.p_rule, cfg.q_rule, cfg.direct),
                                layers=cfg.layers, weight_decay=cfg.weight_decay > 0)
        sym = ode.symbols
        self.Wstar, self.U, self.V = teacher(cfg)
        self.state = ode.state
        self.fixed = ode.fixed
        dims = {n: w for n, w in zip(sym["n"], cfg.widths)}
        dims[sym["r"]] = cfg.rank or 1
        self.shapes = {X: tuple(int(sp.sympify(d).xreplace(dims)) for d in X.shape)
                       for X in [*self.state, *self.fixed]}
        self.rate = _rates(cfg, ode, [ode.timescales[X] for X in self.state])
        args = [*self.state, *self.fixed, sym["E"], sym["Sigma"], sym["r"], sym["lam"]] \
            if cfg.weight_decay > 0 else [*self.state, *self.fixed, sym["E"], sym["Sigma"], sym["r"]]
        self._args = args
        sub = ode.substituted
        self._flows = sp.lambdify(args, [sub(ode.flows[X]) for X in self.state], _MODULES)
        self._feedback = {l: sp.lambdify(args, sub(B), _MODULES) for l, B in ode.feedback.items()}
        self._cov = {l: sp.lambdify(args, sub(next(C for C in ode.definitions
                                                     if C.name in (f"C_{l}", "C"))), _MODULES)
                     for l in ode.feedback}
        self._P = {l: sp.lambdify(args, sub(P), _MODULES) for l, P in self._compressors().items()}
        self.Sigma = cfg.noise**2 * np.eye(cfg.n_out)
        self.sizes = [int(np.prod(self.shapes[X])) for X in self.state]
        # top_r(C) switches (and chatters while eigenvalues of C cross); a low-order
        # method steps through that far more cheaply than DOP853
        switching = any(isinstance(v, TopSubspace) for v in ode.algebraic.values())
        self.method = "RK45" if switching else "DOP853"

    def _compressors(self) -> dict:
        """crossing l -> the P matrix used there (state, fixed or algebraic)."""
        out = {}
        for l in self.ode.feedback:
            name = "P" if self.cfg.direct else f"P_{l + 1}"
            for X in [*self.ode.flows, *self.ode.algebraic, *self.ode.fixed]:
                if X.name == name:
                    out[l] = X
        return out

    # -- initial condition -----------------------------------------------------------
    def initial(self) -> tuple[np.ndarray, list]:
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed + 1)
        widths = cfg.widths
        mats = {}
        if cfg.init == "aligned":
            k = len(cfg.spectrum)
            bases = [self.V] + [_orthonormal_rows(rng, k, widths[l]).T
                                for l in range(1, cfg.layers)] + [self.U]
            for l, W in enumerate(self.ode.weights, start=1):
                mats[W] = cfg.init_scale * bases[l] @ bases[l - 1].T
        else:
            for l, W in enumerate(self.ode.weights, start=1):
                mats[W] = rng.standard_normal(self.shapes[W]) * cfg.init_scale / np.sqrt(widths[l - 1])
            if cfg.init == "first-zero":
                mats[self.ode.weights[0]] = np.zeros(self.shapes[self.ode.weights[0]])
        fixed = []
        for X in [*self.state, *self.fixed]:
            if X in mats:
                continue
            rows, cols = self.shapes[X]
            base = X.name.partition("_")[0]
            if base == "P":
                mats[X] = _orthonormal_rows(rng, rows, cols)
            elif base == "Q":
                mats[X] = rng.standard_normal((rows, cols)) / np.sqrt(cols)
            else:  # B, D: fixed random feedback, entries N(0, 1/n_above)
                mats[X] = rng.standard_normal((rows, cols)) / np.sqrt(cols)
            if X in self.fixed:
                fixed.append(mats[X])
        y0 = np.concatenate([mats[X].ravel() for X in self.state])
        return y0, [mats[X] for X in self.fixed]

    # -- dynamics ----------------------------------------------------------------------
    def unpack(self, y: np.ndarray) -> list[np.ndarray]:
        out, i = [], 0
        for X, n in zip(self.state, self.sizes):
            out.append(y[i:i + n].reshape(self.shapes[X]))
            i += n
        return out

    def error(self, mats) -> np.ndarray:
        Wtot = mats[0]
        for W in mats[1:self.cfg.layers]:
            Wtot = W @ Wtot
        return self.Wstar - Wtot, Wtot

    def _call(self, f, mats, fixed):
        E, _ = self.error(mats)
        extra = [self.cfg.weight_decay] if self.cfg.weight_decay > 0 else []
        return f(*mats, *fixed, E, self.Sigma, self.cfg.rank or 1, *extra)

    def rhs(self, fixed):
        def f(t, y):
            mats = self.unpack(y)
            flows = self._call(self._flows, mats, fixed)
            return np.concatenate([np.asarray(F, dtype=float).ravel() * k
                                   for F, k in zip(flows, self.rate)])
        return f

    # -- measures ----------------------------------------------------------------------
    def measures(self, y: np.ndarray, fixed) -> dict:
        """loss, mode strengths, feedback angles, P overlaps and weight norms at state y."""
        mats = self.unpack(y)
        E, Wtot = self.error(mats)
        out = {"loss": 0.5 * np.sum(E**2) + 0.5 * np.trace(self.Sigma)}
        for a in range(len(self.cfg.spectrum)):
            out[f"mode_{a + 1}"] = self.U[:, a] @ Wtot @ self.V[:, a]
        for l in self.ode.feedback:
            B = np.asarray(self._call(self._feedback[l], mats, fixed))
            Wabove = mats[l]
            if self.cfg.direct:
                for W in mats[l + 1:self.cfg.layers]:
                    Wabove = W @ Wabove
            out[f"angle_{l}"] = _angle(B, Wabove.T)
            if l in self._P:
                P = np.asarray(self._call(self._P[l], mats, fixed))
                C = np.asarray(self._call(self._cov[l], mats, fixed))
                # undefined once the error has vanished (C = 0): reported as NaN
                out[f"overlap_{l}"] = (subspace_overlap(P, top_subspace(C, P.shape[0]))
                                       if np.linalg.norm(C) > 1e-9 else np.nan)
        for l, W in enumerate(mats[:self.cfg.layers], start=1):
            out[f"norm_W{l}"] = float(np.linalg.norm(W))
        return out


def _angle(A: np.ndarray, B: np.ndarray) -> float:
    """Angle in degrees between two matrices seen as vectors."""
    na, nb = np.linalg.norm(A), np.linalg.norm(B)
    if na == 0 or nb == 0:
        return 90.0
    return float(np.degrees(np.arccos(np.clip(np.sum(A * B) / (na * nb), -1.0, 1.0))))


def subspace_overlap(P: np.ndarray, T: np.ndarray) -> float:
    """‖Ô Tᵀ‖²_F / r for the row spaces of P (orthonormalised) and T: 1 when they coincide."""
    Qp, _ = np.linalg.qr(P.T)
    Qt, _ = np.linalg.qr(T.T)
    return float(np.sum((Qp.T @ Qt) ** 2) / Qt.shape[1])


def integrate(cfg: TheoryConfig, t_eval=None, y0=None) -> Trajectory:
    """Integrate the full matrix ODE of ``cfg``; measures on an even grid of cfg.n_points."""
    sysm = MatrixSystem(cfg)
    y_init, fixed = sysm.initial()
    y0 = y_init if y0 is None else y0
    t_end = cfg.t_end
    t_eval = np.linspace(0.0, t_end, cfg.n_points) if t_eval is None else np.asarray(t_eval)
    sol = solve_ivp(sysm.rhs(fixed), (0.0, float(t_eval[-1])), y0, t_eval=t_eval,
                    method=sysm.method, rtol=cfg.rtol, atol=cfg.atol)
    if not sol.success:
        raise RuntimeError(f"integration failed: {sol.message}")
    rows = [sysm.measures(sol.y[:, i], fixed) for i in range(sol.y.shape[1])]
    series = {k: np.array([row[k] for row in rows]) for k in rows[0]}
    traj = Trajectory(sol.t, series, cfg.to_dict(), kind="matrix")
    traj.final = dict(zip([X.name for X in sysm.state], sysm.unpack(sol.y[:, -1])))
    traj.final.update({X.name: M for X, M in zip(sysm.fixed, fixed)})
    traj.teacher = (sysm.Wstar, sysm.U, sysm.V)
    return traj


# -- reduced per-mode system -----------------------------------------------------------

class ModeIntegrator:
    """The per-mode ODEs of ``cfg`` for all teacher modes at once (numpy vectorised)."""

    def __init__(self, cfg: TheoryConfig):
        self.cfg = cfg
        ode = derive(get_rule(cfg.rule, cfg.p_rule, cfg.q_rule, cfg.direct), layers=cfg.layers,
                     weight_decay=cfg.weight_decay > 0)
        self.system = ms = reduce_to_modes(ode)
        self.vars = ms.variables
        self.chis = list(ms.selections)
        lam = [ode.symbols["lam"]] if cfg.weight_decay > 0 else []
        args = [*self.vars, *ms.fixed, *self.chis, ms.s, ms.sigma, *lam]
        self._args_extra = [cfg.weight_decay] if lam else []
        self._rates = sp.lambdify(args, [ms.rates[x] for x in self.vars], "numpy")
        self._sel = sp.lambdify(args, list(ms.selections.values()), "numpy")
        self.rate = _rates(cfg, ode, [ms.timescales[x] for x in self.vars])
        self.s = np.array(cfg.spectrum)
        self.k = len(self.s)

    def initial(self, values: dict | None = None):
        """Per-mode initial values: weights init_scale, P entries 1 on the first r modes."""
        values = dict(values or {})
        k, r = self.k, self.cfg.rank or self.k
        sel = (np.arange(k) < r).astype(float)
        y = []
        for x in self.vars:
            name = x.name.partition("_")[0]
            default = {"a": self.cfg.init_scale, "p": sel}.get(name, 1.0)
            y.append(np.broadcast_to(np.asarray(values.get(x.name, default), float), (k,)))
        fixed = []
        for x in self.system.fixed:
            name = x.name.partition("_")[0]
            default = sel if name == "p" else 1.0
            fixed.append(np.broadcast_to(np.asarray(values.get(x.name, default), float), (k,)))
        return np.concatenate(y), fixed

    def _chi(self, parts, fixed):
        """Selected modes of every svd P. A lower crossing's covariance depends on the
        selections above it, so iterate once per selection (top-down fixed point)."""
        chis = [np.zeros(self.k)] * len(self.chis)
        for _ in self.chis:
            c = self._sel(*parts, *fixed, *chis, self.s, self.cfg.noise, *self._args_extra)
            chis = [_top_r_indicator(np.asarray(ci, float) * np.ones(self.k), self.cfg.rank)
                    for ci in c]
        return chis

    def rhs(self, fixed):
        def f(t, y):
            parts = list(y.reshape(len(self.vars), self.k))
            chis = self._chi(parts, fixed)
            rates = self._rates(*parts, *fixed, *chis, self.s, self.cfg.noise, *self._args_extra)
            return np.concatenate([np.asarray(r, float) * np.ones(self.k) * k
                                   for r, k in zip(rates, self.rate)])
        return f


def _top_r_indicator(c: np.ndarray, r: int) -> np.ndarray:
    """1 on the r largest entries of c (ties broken by mode index), 0 elsewhere."""
    out = np.zeros_like(c)
    out[np.argsort(-c, kind="stable")[:r]] = 1.0
    return out


def integrate_modes(cfg: TheoryConfig, t_eval=None, init: dict | None = None) -> Trajectory:
    """Integrate the reduced per-mode ODEs; series mode_α (strength u_α) and loss."""
    mi = ModeIntegrator(cfg)
    y0, fixed = mi.initial(init)
    t_eval = np.linspace(0.0, cfg.t_end, cfg.n_points) if t_eval is None else np.asarray(t_eval)
    # With svd selections the right-hand side switches (and chatters while two modes'
    # residuals are equal); a low-order method steps through that far more cheaply.
    method = "RK45" if mi.chis else "DOP853"
    sol = solve_ivp(mi.rhs(fixed), (0.0, float(t_eval[-1])), y0, t_eval=t_eval,
                    method=method, rtol=cfg.rtol, atol=cfg.atol)
    if not sol.success:
        raise RuntimeError(f"integration failed: {sol.message}")
    nv = len(mi.vars)
    parts = sol.y.reshape(nv, mi.k, -1)
    iw = [mi.vars.index(w) for w in mi.system.weights]
    u = np.prod(parts[iw], axis=0)  # k x T
    series = {"loss": 0.5 * np.sum((mi.s[:, None] - u) ** 2, axis=0)
              + 0.5 * cfg.noise**2 * cfg.n_out}
    for a in range(mi.k):
        series[f"mode_{a + 1}"] = u[a]
    for j, x in enumerate(mi.vars):
        if x not in mi.system.weights:
            for a in range(mi.k):
                series[f"{x.name}_mode_{a + 1}"] = parts[j, a]
    return Trajectory(sol.t, series, cfg.to_dict(), kind="modes")


def integrate_oja(C: np.ndarray, P0: np.ndarray, t_max: float, tau_p: float = 1.0,
                  rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """P(t_max) under the derived oja flow τ_P dP/dt = P C - P C Pᵀ P with C held fixed.

    Its rows converge to an orthonormal basis of the top-r eigenvectors of C.
    """
    ode = derive(get_rule("ld", p_rule="oja", q_rule="fixed"))
    P = next(X for X in ode.flows if X.name.startswith("P"))
    Csym = next(X for X in ode.definitions if X.name.startswith("C"))
    flow = sp.lambdify([P, Csym], ode.flows[P], "numpy")
    shape = P0.shape
    sol = solve_ivp(lambda t, y: np.ravel(flow(y.reshape(shape), C)) / tau_p, (0.0, t_max),
                    P0.ravel(), method="DOP853", rtol=rtol, atol=atol)
    return sol.y[:, -1].reshape(shape)
