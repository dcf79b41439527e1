"""The linear-theory predictions of docs/theory.md (predictions 1-6), as functions.

Closed forms where one exists, numerical integration of the derived ODEs otherwise.
Times are in units of τ = 1/η (so a simulation with learning rate η maps to t = steps·η).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .closed_form import (  # noqa: F401  (re-exported: the predictions of items 1 and 6)
    _check_mode,
    bp_learning_time,
    deep_learning_time,
    deep_mode_rate,
    lambda_balanced_learning_time,
    lambda_balanced_rate,
    learning_time,
    regime,
    saxe_mode_strength,
)
from .config import TheoryConfig
from .errors import ConfigError
from .integrate import integrate, integrate_modes
from .trajectory import Trajectory

# -- items 3 and 8: fixed feedback of low rank -----------------------------------------

def fixed_feedback_plateau(Wstar, B, noise=0.0):
    """Limit loss of a 2-layer net with fixed feedback B (fa, or ld with fixed P, Q), W1(0) = 0.

    W1 moves only in span(B), so at the fixed point B E = 0 and E W1ᵀ = 0. With R an
    orthonormal basis of B's row space (R = P for B = QP), the learned map is
    W* Π, Π the projector onto span(W*ᵀ Rᵀ), and the loss is
        ½ ‖W* (I - Π)‖²_F + ½ σ² d.
    It is 0 iff rank(R W*) = rank W* (Garg & Vempala 2022: enough feedback rank); for
    P spanning the top-r left singular vectors it is Eckart-Young's ½ Σ_{α>r} s_α².
    """
    Wstar, B = np.asarray(Wstar, float), np.asarray(B, float)
    reach = reachable_map(Wstar, B)
    d = Wstar.shape[0]
    return 0.5 * float(np.sum((Wstar - reach) ** 2)) + 0.5 * noise**2 * d


def reachable_map(Wstar, B):
    """W* Π: the map a 2-layer net reaches from W1(0) = 0 with fixed feedback B."""
    U, sv, _ = np.linalg.svd(np.asarray(B, float).T, full_matrices=False)
    R = U[:, sv > 1e-10 * sv.max()].T  # orthonormal basis of B's row space (in output space)
    M = np.asarray(Wstar) .T @ R.T  # n_in x r, spans the reachable input directions
    Qm, sm, _ = np.linalg.svd(M, full_matrices=False)
    Qm = Qm[:, sm > 1e-10 * max(sm.max(), 1e-300)]
    return Wstar @ Qm @ Qm.T


# -- item 2: full-rank feedback alignment -------------------------------------------------

def fa_prediction(cfg: TheoryConfig) -> dict:
    """Full-rank fa learns W*: the loss goes to ½σ²d, the angle ∠(B, W2ᵀ) falls below 90°,
    and B W2 + W2ᵀ Bᵀ - W1 W1ᵀ keeps its initial value (conserved, docs/theory.md, prediction 7)."""
    if cfg.rule != "fa":
        raise ConfigError(f"fa_prediction needs rule 'fa', got {cfg.rule!r}")
    return {"final_loss": 0.5 * cfg.noise**2 * cfg.n_out, "angle_below": 90.0}


# -- item 4: adapting P recovers backprop ------------------------------------------------

def adapting_p_prediction(cfg: TheoryConfig) -> Trajectory:
    """ld with adapting P (oja, svd) and aligned Q with r >= rank W*: the bp trajectory.

    With P spanning the error, Q P δ = Wᵀ Pᵀ P δ = Wᵀ δ, so the prediction is bp's
    trajectory from the same initial weights.
    """
    if cfg.rank is None or cfg.rank < len(cfg.spectrum):
        raise ConfigError(f"rank r={cfg.rank}: the prediction needs r >= rank W* = "
                          f"{len(cfg.spectrum)}")
    return integrate(replace(cfg, rule="bp", p_rule=None, q_rule=None, rank=None, direct=False))


# -- item 5: r < rank W*: modes learned in sequence --------------------------------------

def crossing_time(t, u, target):
    """First time u(t) reaches ``target`` (linear interpolation); NaN if it never does."""
    t, u = np.asarray(t), np.asarray(u)
    hit = np.nonzero(u >= target)[0]
    if len(hit) == 0:
        return float("nan")
    i = hit[0]
    if i == 0:
        return float(t[0])
    return float(t[i - 1] + (target - u[i - 1]) * (t[i] - t[i - 1]) / (u[i] - u[i - 1]))


def mode_learning_times(spectrum, rank, init_scale=1e-3, tau=1.0, frac=0.5, noise=0.0,
                        layers=2, t_max=None, n_points=4001, rtol=1e-7, atol=1e-10) -> np.ndarray:
    """Time each teacher mode needs to reach frac·s_α when P tracks the top-r error
    directions (p_rule svd, q_rule aligned), from balanced aligned init a_l = init_scale.

    Numerical: integrates the derived per-mode ODEs, where a mode receives feedback only
    while its residual power (s_α - u_α)² + σ² is among the r largest. For r >= the
    number of modes this is bp: t_α = τ/(2 s_α) ln[frac (s_α - u0)/((1-frac) u0)].
    While residuals tie, the selection switches at every step (a sliding mode) and the step
    size of a tight ``rtol`` collapses: rtol 1e-5 is 100x faster there than 1e-7.
    """
    spectrum = tuple(float(x) for x in spectrum)
    cfg = TheoryConfig(rule="ld", p_rule="svd", q_rule="aligned", rank=rank,
                       n_out=max(len(spectrum), rank), n_in=len(spectrum),
                       hidden=max(len(spectrum), rank), spectrum=spectrum, noise=noise,
                       layers=layers, init="aligned", init_scale=init_scale, tau=tau,
                       t_max=t_max, n_points=n_points, rtol=rtol, atol=atol)
    if t_max is None:
        u0 = init_scale**layers
        slowest = deep_learning_time(min(spectrum), u0, layers, tau, frac)
        cfg = replace(cfg, t_max=slowest * (2 + math.ceil(len(spectrum) / rank)) * 2)
    traj = integrate_modes(cfg)
    return np.array([crossing_time(traj.t, traj[f"mode_{a + 1}"], frac * s)
                     for a, s in enumerate(spectrum)])
