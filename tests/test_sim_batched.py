"""Batched seeds: S networks in one computation train exactly like S separate networks."""

import pytest
import torch
from torch import nn

from ldfa.errors import ConfigError
from ldfa.sim.batched import BatchedMLP, seed_batches, train_batched
from ldfa.sim.layers import convert, feedback_layers

SEEDS = [3, 7, 11]
WIDTHS = [12, 10, 4]


def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=gen)
    return x, x @ torch.randn(12, 4, generator=gen) / 3


def single(seed, rule, kw):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 4))
    return convert(model, rule, seed=seed, **kw)


@pytest.mark.parametrize("rule,kw", [("bp", {}), ("fa", {}), ("kp", {}),
                                     ("ld", dict(rank=3, p_rule="oja", q_rule="kp")),
                                     ("ldfa", dict(rank=3)),
                                     ("ld", dict(rank=3, p_rule="fixed", q_rule="aligned"))])
def test_batched_equals_separate_runs(rule, kw):
    x, y = data()
    singles = [single(s, rule, kw) for s in SEEDS]
    batched = convert(BatchedMLP.from_models(singles), rule, **kw)
    # give the batched layers the singles' feedback matrices
    for i, (_, layer) in enumerate(feedback_layers(batched)):
        for name in ("B", "P", "Q"):
            if hasattr(layer, name) and getattr(layer, name) is not None:
                with torch.no_grad():
                    getattr(layer, name).copy_(torch.stack([getattr(feedback_layers(m)[i][1], name)
                                                            for m in singles]))
    steps, lr = 30, 0.05
    batched, losses = train_batched(x, y, WIDTHS, rule, seeds=SEEDS, steps=steps, batch_size=16, lr=lr,
                                    log_every=10, model=batched, rank=kw.get("rank"))
    for s, (seed, model) in enumerate(zip(SEEDS, singles)):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for idx in seed_batches(len(x), 16, [seed], steps):
            opt.zero_grad()
            loss = 0.5 * ((model(x[idx[0]]) - y[idx[0]]) ** 2).sum(-1).mean()
            loss.backward()
            opt.step()
        for i, lin in enumerate(m for m in model.modules() if hasattr(m, "weight")
                                and not isinstance(m, nn.Sequential)):
            torch.testing.assert_close(batched.layers[i].weight[s], lin.weight, rtol=1e-4, atol=1e-5)
        assert losses[s, -1] == pytest.approx(loss.item(), rel=1e-3)
    assert (losses[:, -1] < losses[:, 0]).all()  # they learned


def test_seeds_are_independent_and_reproducible():
    x, y = data()
    _, a = train_batched(x, y, WIDTHS, "bp", seeds=[1, 2], steps=10, log_every=5)
    _, b = train_batched(x, y, WIDTHS, "bp", seeds=[1, 2], steps=10, log_every=5)
    _, c = train_batched(x, y, WIDTHS, "bp", seeds=[2], steps=10, log_every=5)
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1], c[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[0], a[1])


def test_classification_targets():
    x, _ = data()
    labels = (x[:, 0] > 0).long()
    _, losses = train_batched(x, labels, [12, 10, 2], "fa", seeds=[0, 1], steps=40, lr=0.2, log_every=40)
    assert losses[:, -1].max() < 0.6


def test_unsupported_batched_rule():
    with pytest.raises(ConfigError, match="not available"):
        train_batched(*data(), WIDTHS, "dfa", seeds=[0], steps=1)
    with pytest.raises(ConfigError, match="not available for batched"):
        convert(BatchedMLP(2, WIDTHS), "ld", rank=2, q_rule="mirror")


def test_init_like_torch_is_nn_linear_init_bit_for_bit_and_leaves_the_global_rng():
    from ldfa.sim.batched import init_like_torch

    state = torch.get_rng_state()
    model = init_like_torch(BatchedMLP(3, [7, 5, 2], None), [4, 9, 11])
    assert torch.equal(torch.get_rng_state(), state)
    for s, seed in enumerate([4, 9, 11]):
        torch.manual_seed(seed)
        for layer in model.layers:
            lin = nn.Linear(layer.weight.shape[2], layer.weight.shape[1])
            assert torch.equal(lin.weight, layer.weight[s]) and torch.equal(lin.bias, layer.bias[s])
