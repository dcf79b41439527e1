"""Issue 7 (in progress): iterating an approximate inverse converges exponentially, at the
rate the contraction of I - J_g J_f predicts."""

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim.target_prop import contraction, refine_target


def asymptotic_rate(errors, floor=1e-11, window=5):
    """Geometric rate over the last ``window`` steps before the error reaches ``floor``
    (below that, float64 round-off sets the error, not the iteration)."""
    last = int(torch.nonzero(errors > floor).max())
    return float((errors[last] / errors[last - window]) ** (1 / window)), last


def test_linear_layer_rate_matches_the_spectral_radius():
    gen = torch.Generator().manual_seed(0)
    n = 6
    A = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    B = torch.linalg.inv(A) + 0.08 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    f, g = (lambda x: A @ x), (lambda y: B @ y)
    x_star = torch.randn(n, generator=gen, dtype=torch.float64)
    xs = refine_target(f, g, f(x_star), torch.zeros(n, dtype=torch.float64), iters=60)
    errors = torch.stack([(x - x_star).norm() for x in xs])
    norm, radius = contraction(f, g, x_star)
    assert radius < norm < 1  # contractive
    measured, last = asymptotic_rate(errors)
    assert torch.all(errors[1:last] <= norm * errors[:last - 1] * (1 + 1e-9))  # every step within the bound
    assert measured == pytest.approx(radius, rel=0.05)
    assert last >= 8 and errors[-1] < 1e-12 * errors[0]


def test_nonlinear_layer_converges_within_the_local_bound():
    gen = torch.Generator().manual_seed(1)
    n = 5
    W = torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    Winv = torch.linalg.inv(W)
    f = lambda x: torch.tanh(W @ x)  # noqa: E731
    g = lambda y: Winv @ (1.5 * y)  # an approximate inverse (linear, off by half)  # noqa: E731
    x_star = 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    xs = refine_target(f, g, f(x_star), torch.zeros(n, dtype=torch.float64), iters=120)
    errors = torch.stack([(x - x_star).norm() for x in xs])
    _, radius = contraction(f, g, x_star)
    assert radius < 1
    measured, last = asymptotic_rate(errors)
    assert measured == pytest.approx(radius, rel=0.05)
    assert last >= 8 and errors[-1] < 1e-12


def test_expanding_inverse_diverges():
    A = torch.eye(3, dtype=torch.float64)
    f, g = (lambda x: A @ x), (lambda y: 2.5 * y)  # I - g f = -1.5 I: not contractive
    xs = refine_target(f, g, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 10)
    assert contraction(f, g, torch.ones(3, dtype=torch.float64))[1] == pytest.approx(1.5)
    assert (xs[-1] - 1).norm() > 10 * (xs[0] - 1).norm()


def test_bad_iteration_count():
    with pytest.raises(ConfigError, match="k=0"):
        refine_target(lambda x: x, lambda y: y, torch.ones(2), torch.zeros(2), 0)
