"""Periodic SVD re-initialisation of ld's factors (the authors' ViT recipe, an option)."""

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim import models
from ldfa.sim.layers import convert, feedback_layers, refresh_factors
from ldfa.sim.train import TrainConfig, build, loss_fn, make_optimizer


def _best_rank_r(W, r):
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_refresh_sets_the_best_rank_r_factors_and_keeps_the_optimizer_state():
    torch.manual_seed(0)
    model = convert(models.build("mlp", (12,), 4, hidden=(10, 8)), "ldfa", rank=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):  # move W, P and Q away from their SVD start
        opt.zero_grad()
        loss_fn(model(torch.randn(16, 12)), torch.randint(0, 4, (16,))).backward()
        opt.step()
    layers = [m for _, m in feedback_layers(model) if hasattr(m, "P") and m.P.shape[0] == 3]
    before = {id(m.P): opt.state[m.P]["exp_avg"].clone() for m in layers}
    assert all((m.P.mT @ m.Q - _best_rank_r(m.weight, 3)).abs().max() > 1e-4 for m in layers)
    assert refresh_factors(model) == len(feedback_layers(model))
    for m in layers:
        torch.testing.assert_close((m.P.mT @ m.Q).double(), _best_rank_r(m.weight, 3), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[m.P]["exp_avg"], before[id(m.P)])  # state kept


def test_training_refreshes_every_svd_reinit_epochs(monkeypatch):
    import math

    from ldfa.sim import train as training

    base = dict(model="mlp", hidden=(16,), data="linear-teacher", rule="ldfa", rank=2, steps=8, batch_size=32,
                log_every=4)
    _, train_set, _ = build(TrainConfig(**base))
    per_epoch = math.ceil(len(train_set) / 32)
    calls = []
    monkeypatch.setattr(training, "refresh_factors", lambda model: calls.append(model) or 1)
    training.train(TrainConfig(**base, svd_reinit=2 / per_epoch), progress=False)
    assert len(calls) == 4  # steps 2, 4, 6, 8


def test_svd_reinit_is_checked():
    with pytest.raises(ConfigError, match="svd_reinit=-1"):
        TrainConfig(rule="ldfa", rank=2, svd_reinit=-1)
    with pytest.raises(ConfigError, match="layerwise ld rules"):
        TrainConfig(rule="fa", svd_reinit=0.5)
    opt = make_optimizer(TrainConfig(rule="ldfa", rank=2, model="mlp", hidden=(8,), data="linear-teacher"),
                         convert(models.build("mlp", (4,), 2, hidden=(8,)), "ldfa", rank=2))
    assert len(opt.param_groups) == 2
