"""The strict bottleneck: every error path between blocks carries at most r numbers per row."""

import copy

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim import models
from ldfa.sim.strict import ErrorBoundary, add_strict_bottleneck


def _input_error_rank(model, x, grab):
    """Numerical rank of the error arriving at ``grab(model)``'s output (rows: tokens or positions)."""
    captured = {}

    def keep_error(module, args, out):
        out.register_hook(lambda g: captured.setdefault("g", g))

    grab(model).register_forward_hook(keep_error)
    model(x).square().sum().backward()
    g = captured["g"]
    rows = g.flatten(2).transpose(1, 2) if g.dim() == 4 else g  # conv: (B, HW, C)
    s = torch.linalg.svdvals(rows.reshape(-1, rows.shape[-1]).double())
    return int((s > 1e-6 * s[0]).sum()), rows.shape[-1]


@pytest.mark.parametrize("name,shape,grab", [
    ("vit", (1, 8, 8), lambda m: m.blocks[0]),
    ("resnet", (1, 8, 8), lambda m: m.blocks[0]),
])
def test_error_below_every_boundary_has_rank_r(name, shape, grab):
    torch.manual_seed(0)
    opts = dict(width=16, depth=2, heads=2, patch=2) if name == "vit" else dict(width=8, depth=2)
    model = models.build(name, shape, 5, **opts)
    x = torch.randn(6, *shape)
    full_rank, width = _input_error_rank(copy.deepcopy(model), x, grab)
    assert full_rank > 3  # without the bottleneck the skip path carries the full error
    strict = add_strict_bottleneck(copy.deepcopy(model), rank=3)
    r, _ = _input_error_rank(strict, x, grab)
    assert r <= 3
    torch.testing.assert_close(strict(x), model(x))  # forward unchanged


def test_oja_boundary_learns_the_error_subspace():
    torch.manual_seed(0)
    C, r = 12, 3
    basis = torch.linalg.qr(torch.randn(C, C))[0]
    scales = torch.tensor([5.0, 4.0, 3.0] + [0.3] * (C - 3))
    boundary = ErrorBoundary(C, r, "oja", channel_dim=-1)
    opt = torch.optim.SGD(boundary.parameters(), lr=0.002)
    for _ in range(1500):
        x = torch.zeros(32, C, requires_grad=True)
        g = (torch.randn(32, C) * scales) @ basis.T / 32  # batch-mean loss: per-example error = 32 g
        opt.zero_grad()
        boundary(x).backward(g)
        opt.step()
    P = boundary.P.detach()
    Qp = torch.linalg.qr(P.T)[0]
    overlap = float((Qp.T @ basis[:, :r]).square().sum() / r)
    assert overlap > 0.98


def test_fixed_boundary_does_not_move_and_errors_are_one_line():
    boundary = ErrorBoundary(8, 2, "fixed")
    assert "P" in dict(boundary.named_buffers()) and not list(boundary.parameters())
    with pytest.raises(ConfigError, match="rank r=9"):
        ErrorBoundary(8, 9)
    with pytest.raises(ConfigError, match="p_rule 'kp'"):
        ErrorBoundary(8, 2, "kp")
    with pytest.raises(ConfigError, match="residual blocks"):
        add_strict_bottleneck(models.build("mlp", (4,), 2), rank=1)
