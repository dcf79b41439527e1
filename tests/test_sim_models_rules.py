"""Every model accepts every rule: one training step changes the weights, gradients are finite."""

import pytest
import torch
import torch.nn.functional as F

from ldfa.sim import models
from ldfa.sim.layers import convert, feedback_layers, set_tracking

RULES = [("bp", {}), ("fa", {}), ("dfa", {}), ("sign", dict(scaling="brsf")), ("kp", {}),
         ("wm", {}), ("ld", dict(rank=2, p_rule="oja", q_rule="kp")),
         ("ld", dict(rank=2, p_rule="svd", q_rule="aligned")),
         ("ld", dict(rank=2, p_rule="fixed", q_rule="mirror")), ("ld", dict(rank=2, direct=True)),
         ("ldfa", dict(rank=2)), ("ldfa-local", dict(rank=2)), ("raf", dict(rank=2))]
MODELS = {
    "linear": lambda: models.build("linear", (1, 8, 8), 4, hidden=[6]),
    "mlp": lambda: models.build("mlp", (1, 8, 8), 4, hidden=[6, 5]),
    "cnn": lambda: models.ConvNet(in_channels=1, image_size=8, channels=(3, 4, 4), hidden=6, classes=4),
    "vit": lambda: models.VisionTransformer(image_size=8, patch=4, in_channels=1, width=8, depth=1,
                                            heads=2, classes=4),
}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("rule,kw", RULES, ids=[r + str(sorted(k.items())) for r, k in RULES])
def test_every_model_every_rule(model_name, rule, kw):
    torch.manual_seed(0)
    model = convert(MODELS[model_name](), rule, clip_rank=True, **kw)
    x = torch.randn(5, 1, 8, 8)
    y = torch.arange(5) % 4
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    before = [p.detach().clone() for p in weights]
    set_tracking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    opt.step()
    # every forward weight learns (P, Q of ldfa start at the SVD split, a critical point of
    # their own loss, so they may rest on the first step)
    assert all(not torch.equal(a, b) for a, b in zip(before, weights))
    stats = [layer.stats for _, layer in feedback_layers(model)]
    assert all("error_dim" in s for s in stats)
    if model_name == "vit":
        assert not hasattr(model.patch_embed, "rule")  # the patch embedding stays bp
        if rule in ("ld", "ldfa", "ldfa-local", "raf") and not kw.get("direct"):
            assert model.blocks[0].attn.qkv.P.shape[0] == 3 * kw["rank"]  # qkv gets rank 3r
