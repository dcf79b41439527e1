"""Closed-form learning curves and learning times of single modes (no configs, no ODEs).

Times are in units of τ = 1/η. These formulas are what :mod:`.predictions` and
:class:`.config.TheoryConfig` build on, so this module imports neither.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad

from .errors import ConfigError


def _check_mode(s, u0, frac):
    if not s > 0:
        raise ConfigError(f"singular value s={s}: must be > 0")
    if not 0 < u0 < s:
        raise ConfigError(f"initial strength u0={u0}: must satisfy 0 < u0 < s = {s}")
    if not 0 < frac < 1:
        raise ConfigError(f"frac={frac}: must lie in (0, 1)")


# -- item 1: backprop, balanced small init (Saxe et al. 2014) ---------------------------

def saxe_mode_strength(t, s, u0, tau=1.0):
    """u(t) = s e^{2st/τ} / (e^{2st/τ} - 1 + s/u0), the solution of τ du/dt = 2u(s - u)."""
    t = np.asarray(t, float)
    x = np.exp(-2 * s * t / tau)  # written with e^{-2st/τ} so it never overflows
    return s / (1 - x + x * s / u0)


def bp_learning_time(s, u0, tau=1.0, frac=0.5):
    """Time for u to reach frac·s from u0 under bp: t = τ/(2s) ln[frac (s - u0) / ((1-frac) u0)]."""
    _check_mode(s, u0, frac)
    return tau / (2 * s) * math.log(frac * (s - u0) / ((1 - frac) * u0))


# -- item 6: depth and init scale ---------------------------------------------------------

def deep_mode_rate(u, s, n_layers):
    """τ du/dt = N u^{2-2/N} (s - u) for N weight layers, balanced start (N = N_l - 1)."""
    return n_layers * u ** (2 - 2 / n_layers) * (s - u)


def lambda_balanced_rate(u, s, lam):
    """τ du/dt = √(λ² + 4u²) (s - u) for W_2ᵀW_2 - W_1W_1ᵀ = λI (two layers)."""
    return np.sqrt(lam**2 + 4 * u**2) * (s - u)


def learning_time(rate, s, u0, tau=1.0, frac=0.5):
    """t = τ ∫_{u0}^{frac·s} du / rate(u): the time a mode with τ du/dt = rate(u) needs."""
    _check_mode(s, u0, frac)
    # in x = ln u (dt = u du/rate): smooth even when u0 is many decades below s
    val, _ = quad(lambda x: math.exp(x) / rate(math.exp(x)), math.log(u0), math.log(frac * s),
                  limit=200, epsabs=0.0, epsrel=1e-10)
    return tau * val


def deep_learning_time(s, u0, n_layers, tau=1.0, frac=0.5):
    """Learning time of a mode in a balanced deep linear net with N weight layers."""
    if n_layers == 2:
        return bp_learning_time(s, u0, tau, frac)
    return learning_time(lambda u: deep_mode_rate(u, s, n_layers), s, u0, tau, frac)


def lambda_balanced_learning_time(s, u0, lam, tau=1.0, frac=0.5):
    """Learning time under λ-balance: λ → 0 is the rich (sigmoidal) regime, with
    t ≈ τ/(2s) ln(s/u0); |λ| ≫ s is the lazy (exponential) regime, t ≈ τ/|λ| ln 2."""
    return learning_time(lambda u: lambda_balanced_rate(u, s, lam), s, u0, tau, frac)


def regime(s, lam) -> str:
    """'lazy' when the imbalance |λ| exceeds the mode strength s, 'rich' otherwise."""
    return "lazy" if abs(lam) > s else "rich"
