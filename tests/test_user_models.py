"""Models a user brings: torchvision's and timm's (the optional `models` extra; skipped where they
do not import), and two stand-ins that always run here: a replica of torchvision's resnet18
(bench/resnet18.py) and a ViT built on nn.TransformerEncoder (nn.MultiheadAttention inside, the
module torchvision's vit_b_16 uses). For one rule of each family, one training step must give a
gradient to every trainable parameter: the forward weights and the rule's own matrices."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldfa.sim import convert
from ldfa.sim.layers import feedback_layers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from resnet18 import ResNet18  # noqa: E402

RULES = {"bp": dict(rule="bp"), "fa": dict(rule="fa"), "dfa": dict(rule="dfa"), "kp": dict(rule="kp"),
         "ld (oja, kp)": dict(rule="ld", rank=4, p_rule="oja", q_rule="kp"),
         "ldfa": dict(rule="ldfa", rank=4), "direct ld": dict(rule="ld", rank=4, direct=True)}


class EncoderViT(nn.Module):
    """Patch embedding, a class token and nn.TransformerEncoder layers: vit_b_16's structure."""

    def __init__(self, image=32, patch=8, width=32, depth=2, heads=4, classes=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).mT
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.head(self.encoder(t)[:, 0])


def _optional(module: str, build: str, **kw):
    def make():
        try:
            lib = importlib.import_module(module)
        except Exception as err:  # absent, or a build that does not load with this torch
            pytest.skip(f"{module} not usable here ({type(err).__name__}); pip install -e '.[models]'")
        if module == "timm":
            return lib.create_model(build, pretrained=False, **kw)
        return getattr(lib, build)(weights=None, **kw)
    return make


MODELS = {  # name -> (builder, image side)
    "resnet18 replica": (lambda: ResNet18(classes=10), 32),
    "TransformerEncoder ViT": (EncoderViT, 32),
    "torchvision resnet18": (_optional("torchvision.models", "resnet18", num_classes=10), 32),
    "torchvision vit_b_16": (_optional("torchvision.models", "vit_b_16", num_classes=10), 224),
    "timm resnet18": (_optional("timm", "resnet18", num_classes=10), 32),
    "timm vit_tiny_patch16_224": (_optional("timm", "vit_tiny_patch16_224", num_classes=10), 224),
    "timm deit_tiny_patch16_224": (_optional("timm", "deit_tiny_patch16_224", num_classes=10), 224),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_of_a_user_model_gets_a_gradient(name, rule):
    build, side = MODELS[name]
    torch.manual_seed(0)
    model = build()
    n_linear = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.modules())
    x = torch.randn(2, 3, side, side)
    convert(model, **RULES[rule], clip_rank=True, input_shape=tuple(x.shape[1:]), example_input=x)
    layers = feedback_layers(model)
    # every Linear/Conv2d converted, except the patch embedding (kept on bp by default) and, for
    # models built on nn.MultiheadAttention, the packed projections it holds as bare parameters
    # (converted through its feedback-ready replacement: see the attention test below)
    assert len(layers) >= n_linear - 1 - sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    if rule == "ldfa":  # the rule's own matrices are parameters and learned
        assert all(layer.P.grad is not None and layer.Q.grad is not None for _, layer in layers)


@pytest.mark.parametrize("name", ["TransformerEncoder ViT", "torchvision vit_b_16"])
def test_every_attention_projection_is_bottlenecked(name):
    """Under ldfa each attention's packed q/k/v projection gets rank 3r and its output
    projection rank r; the error each sends down has (at most) that rank per token."""
    build, side = MODELS[name]
    torch.manual_seed(0)
    model = build()
    r = 4
    convert(model, rule="ldfa", rank=r, clip_rank=True)
    n_attention = sum(isinstance(m, nn.MultiheadAttention) for m in build().modules())
    attn = [(n, layer) for n, layer in feedback_layers(model) if n.endswith(("in_proj", "out_proj"))]
    assert n_attention > 0 and len(attn) == 2 * n_attention
    for n, layer in attn:
        rank = 3 * r if n.endswith("in_proj") else r
        assert layer.P.shape[0] == rank
        B = layer.rule.feedback_weight(layer).detach()  # float32: matrix_rank uses its eps
        assert torch.linalg.matrix_rank(B) <= rank  # the error sent down: B_wᵀ g, rank <= that
    x = torch.randn(2, 3, side, side)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    for n, layer in attn:
        assert layer.P.grad is not None and layer.Q.grad is not None, n
