"""Direct rules on conv layers: by default one (d x C_in) matrix, its signal the same at every
position, so the memory does not grow with the image; conv_feedback="full" keeps Nøkland's
(d x C_in·H·W) matrix."""

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim import models
from ldfa.sim.layers import convert, feedback_layers


def _cnn(side):
    torch.manual_seed(0)
    return models.build("cnn", (1, side, side), 10, channels=(4, 6), hidden=8)


@pytest.mark.parametrize("rule,kw,name", [("dfa", {}, "D"), ("ld", dict(rank=3, direct=True), "Q")])
def test_channel_feedback_is_independent_of_image_size(rule, kw, name):
    shapes = {}
    for side in (8, 32):
        model = convert(_cnn(side), rule, input_shape=(1, side, side), **kw)
        shapes[side] = {n: tuple(getattr(m, name).shape) for n, m in feedback_layers(model)
                        if m.ops.kind == "conv" and getattr(m, name, None) is not None}
    assert shapes[8] == shapes[32] and shapes[8]["convs.1"][-1] == 4  # rows x C_in


def test_channel_signal_is_the_same_at_every_position():
    model = convert(_cnn(8), "dfa", input_shape=(1, 8, 8))
    sent = {}
    conv = model.convs[1]
    conv.register_forward_pre_hook(
        lambda m, a: a[0].register_hook(lambda g: sent.setdefault("g", g)) and None)
    x = torch.randn(5, 1, 8, 8)
    out = model(x)
    e = torch.randn_like(out)
    out.backward(e)
    g = sent["g"]  # error sent to the layer below convs.1: e D broadcast over positions
    expected = (e @ conv.D).reshape(5, -1, 1, 1).expand_as(g)
    torch.testing.assert_close(g, expected)


def test_full_feedback_on_request_and_bad_value():
    model = convert(_cnn(8), "dfa", input_shape=(1, 8, 8), conv_feedback="full")
    assert tuple(model.convs[1].D.shape) == (10, 4 * 4 * 4)
    with pytest.raises(ConfigError, match="conv_feedback='pixel'; allowed: channel, full"):
        convert(_cnn(8), "dfa", conv_feedback="pixel")
