"""ldfa on a conv net trains stably: the lowrank factors learn fast enough to track W."""

import math

import pytest
import torch
from conftest import needs_fashion_mnist

from ldfa.sim.train import FACTOR_LR_SCALE, TrainConfig, build, loss_fn, make_optimizer


def test_factor_lr_defaults():
    assert TrainConfig(rule="ldfa", rank=4).factor_lr() == FACTOR_LR_SCALE * 1e-3
    assert TrainConfig(rule="ld", rank=4, q_rule="lowrank", lr=2e-3).factor_lr() == FACTOR_LR_SCALE * 2e-3
    assert TrainConfig(rule="ldfa", rank=4, fb_lr=5e-4).factor_lr() == 5e-4  # explicit wins
    assert TrainConfig(rule="ldfa", rank=4, optimizer="sgd", lr=0.1).factor_lr() == 0.1
    assert TrainConfig(rule="raf", rank=4).factor_lr() == 1e-3  # oja + kp: no lowrank factor
    assert TrainConfig(rule="kp").factor_lr() == 1e-3


@needs_fashion_mnist
@pytest.mark.parametrize("rank", [16])
def test_ldfa_trains_the_conv_net_without_blowing_up(rank):
    """The figures' small conv net with ldfa at r=16 for 300 Adam steps. With the factors at the
    forward lr the windowed loss climbed from 0.87 (step 75) to 10.1 (step 300); with the
    tracking lr it falls to about 0.45, like bp's."""
    cfg = TrainConfig(model="cnn", rule="ldfa", rank=rank, clip_rank=True, steps=300, seed=0,
                      model_options={"channels": (16, 32, 32), "hidden": 64})
    model, train_set, _ = build(cfg)
    opt = make_optimizer(cfg, model)
    batches = train_set.batches(cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(cfg.steps):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    windows = [sum(losses[i:i + 25]) / 25 for i in range(0, cfg.steps, 25)]
    assert all(math.isfinite(w) for w in windows)
    assert max(windows[4:]) < 1.0, windows  # never climbs back above 1 after step 100
    assert windows[-1] < 0.7, windows
