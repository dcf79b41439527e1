"""Target propagation by iterating approximate inverses (Bengio 2020), the building block.

A layer computes y = f(x); a learned approximate inverse g maps back. To find the input
x* whose output is a target y*, iterate the difference-corrected inverse

    x_{k+1} = x_k + g(y*) - g(f(x_k)).

Its error e_k = x_k - x* obeys e_{k+1} = e_k - (g(f(x_k)) - g(f(x*))), i.e. it is one step
of the map T(x) = x - g(f(x)) + g(y*); where I - J_g J_f is contractive (Lipschitz constant
ρ < 1) the iteration converges exponentially, ‖e_k‖ <= ρ^k ‖e_0‖, and asymptotically at
the spectral radius of I - J_g J_f at x*. (Issue 7 builds the dtp / ddtp rules on this.)
"""

from __future__ import annotations

from typing import Callable

import torch

from ldfa.errors import ConfigError

Map = Callable[[torch.Tensor], torch.Tensor]


def refine_target(f: Map, g: Map, target: torch.Tensor, x0: torch.Tensor, iters: int) -> list[torch.Tensor]:
    """The iterates x_0 .. x_k of x_{k+1} = x_k + g(target) - g(f(x_k))."""
    if not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"inverse iterations k={iters!r}: must be an integer >= 1")
    g_target = g(target)
    xs = [x0]
    for _ in range(iters):
        xs.append(xs[-1] + g_target - g(f(xs[-1])))
    return xs


def contraction(f: Map, g: Map, x: torch.Tensor) -> tuple[float, float]:
    """(spectral norm, spectral radius) of I - J_g(f(x)) J_f(x) at one input vector x.

    The norm bounds the rate of every step near x; the radius is the asymptotic rate.
    """
    n = x.numel()
    Jf = torch.autograd.functional.jacobian(f, x).reshape(-1, n)
    Jg = torch.autograd.functional.jacobian(g, f(x)).reshape(n, -1)
    M = torch.eye(n, dtype=x.dtype) - Jg @ Jf
    return float(torch.linalg.matrix_norm(M, ord=2)), float(torch.linalg.eigvals(M).abs().max())
