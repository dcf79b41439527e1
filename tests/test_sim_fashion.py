"""Fashion-MNIST, MLP 784-256-256-10 (tanh), 2 epochs on CPU, >= 84%."""

import pytest
from conftest import needs_fashion_mnist

from ldfa.figures.mlp_figs import SETTINGS
from ldfa.sim.train import TrainConfig, train

pytestmark = needs_fashion_mnist


@pytest.mark.parametrize("kw", [dict(rule="bp"), dict(rule="fa"), dict(rule="dfa"), dict(rule="kp"),
                                dict(rule="ld", rank=10, p_rule="oja", q_rule="kp")],
                         ids=["bp", "fa", "dfa", "kp", "ld-r10-oja-kp"])
def test_two_epochs_reach_84_percent(kw):
    result = train(TrainConfig(**SETTINGS, **kw, seed=0), progress=False)
    assert result["test_acc"] >= 0.84


@pytest.mark.parametrize("kw", [dict(rule="dtp"), dict(rule="ddtp", inverse_iters=5)], ids=["dtp", "ddtp-k5"])
def test_target_propagation_trains_the_mlp(kw):
    """Measured (seed 0, 1 thread): dtp 83.8%, ddtp k = 5 84.2% (bp 86.1%)."""
    result = train(TrainConfig(**SETTINGS, **kw, seed=0), progress=False)
    assert result["test_acc"] >= 0.82
