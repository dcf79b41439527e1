"""ldfa.sim.models: shapes, every linear map a replaceable nn.Linear / nn.Conv2d, gradients, seeding."""

import pytest
import torch
import torch.nn as nn

from ldfa.errors import ConfigError
from ldfa.sim.models import MLP, ConvNet, DeepLinear, VisionTransformer, build

MNIST, MNIST_FLAT, CIFAR = (1, 28, 28), (784,), (3, 32, 32)
SMALL = {"linear": {"hidden": (32, 16)}, "mlp": {"hidden": (32, 16)},
         "cnn": {"channels": (4, 8, 8), "hidden": 16}, "vit": {"width": 32, "depth": 2, "heads": 4}}
# (name, input shape, kwargs) for every model on MNIST- and CIFAR-like inputs
CASES = [("linear", MNIST_FLAT, {}), ("linear", MNIST, {}), ("linear", CIFAR, {}),
         ("mlp", MNIST_FLAT, {}), ("mlp", MNIST, {"activation": "tanh"}), ("mlp", CIFAR, {}),
         ("cnn", MNIST, {}), ("cnn", CIFAR, {}),
         ("vit", MNIST, {}), ("vit", CIFAR, {}), ("vit", CIFAR, {"pool": "mean", "patch": 8})]
IDS = [f"{n}-{'x'.join(map(str, s))}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, s, kw in CASES]


def make(name, shape, classes=10, seed=0, **kw):
    torch.manual_seed(seed)
    return build(name, shape, classes, **{**SMALL[name], **kw})


def batch(shape, n=5, seed=1):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def replace(model, cls, wrap):
    """Replace every `cls` submodule by wrap(module) the way convert() will: setattr on the parent."""
    targets = [name for name, m in model.named_modules() if type(m) is cls]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrap(model.get_submodule(name)))
    return targets


class Scaled(nn.Module):
    """Calls the wrapped module and multiplies its output by `scale`; counts calls."""

    def __init__(self, inner, scale=0.0):
        super().__init__()
        self.inner, self.scale, self.calls = inner, scale, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x) * self.scale


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_output_shape(name, shape, kw):
    model = make(name, shape, classes=7, **kw)
    assert model(batch(shape)).shape == (5, 7)
    assert model.out_features == 7


def test_default_sizes():
    assert build("mlp", MNIST_FLAT, 10)(batch(MNIST_FLAT)).shape == (5, 10)
    assert MLP([784, 256, 256, 10]).widths == [784, 256, 256, 10]
    for shape in (MNIST, CIFAR):
        assert ConvNet(shape[0], shape[1])(batch(shape)).shape == (5, 10)
        vit = VisionTransformer(image_size=shape[1], in_channels=shape[0])
        assert vit(batch(shape)).shape == (5, 10)
        assert vit.pos_embed.shape == (1, (shape[1] // 4) ** 2 + 1, 64)


@pytest.mark.parametrize("name,shape,expected", [
    ("linear", MNIST, (3, 0)), ("mlp", CIFAR, (3, 0)), ("cnn", MNIST, (2, 3)),
    ("vit", CIFAR, (4 * 2 + 1, 1))])  # ViT depth 2: 2 x (qkv, proj, fc1, fc2) + head; patch_embed
def test_every_linear_map_is_linear_or_conv(name, shape, expected):
    model = make(name, shape)
    count = lambda cls: sum(type(m) is cls for m in model.modules())  # noqa: E731
    assert (count(nn.Linear), count(nn.Conv2d)) == expected
    # every parameter belongs to a Linear, Conv2d or LayerNorm, except the ViT's additive embeddings
    owners = {name: type(m) for name, m in model.named_modules()}
    for pname, _ in model.named_parameters():
        owner, _, _ = pname.rpartition(".")
        if owner == "":
            assert pname in ("pos_embed", "cls_token"), pname
        else:
            assert owners[owner] in (nn.Linear, nn.Conv2d, nn.LayerNorm), pname
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def test_vit_names_for_convert():
    model = make("vit", CIFAR)
    assert type(model.patch_embed) is nn.Conv2d and model.patch_embed.stride == (4, 4)
    assert model.patch_embed.kernel_size == (4, 4)
    block = model.blocks[0]
    assert block.attn.qkv.out_features == 3 * block.attn.qkv.in_features == 3 * 32
    assert (block.mlp.fc1.in_features, block.mlp.fc1.out_features, block.mlp.fc2.out_features) == (32, 64, 32)
    assert model.head.out_features == 10


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_linear_maps_are_called_through_submodules(name, shape, kw):
    model = make(name, shape, **kw).eval()
    x = batch(shape)
    with torch.no_grad():
        ref = model(x)
        for cls in (nn.Linear, nn.Conv2d):
            for target in [n for n, m in model.named_modules() if type(m) is cls]:
                # zero one map at a time: the output must change
                original = model.get_submodule(target)
                parent_name, _, child = target.rpartition(".")
                parent = model.get_submodule(parent_name)
                setattr(parent, child, Scaled(original, 0.0))
                assert not torch.allclose(model(x), ref), target
                setattr(parent, child, original)
        assert torch.equal(model(x), ref)
        # wrap all at once with scale 1: same output, every wrapper called exactly once
        targets = replace(model, nn.Linear, lambda m: Scaled(m, 1.0)) + replace(model, nn.Conv2d,
                                                                                   lambda m: Scaled(m, 1.0))
        assert torch.equal(model(x), ref)
        assert all(model.get_submodule(t).calls == 1 for t in targets)
        replace(model, Scaled, lambda m: Scaled(m, 0.0))  # zero them all: the last map (head) gives 0
        assert torch.count_nonzero(model(x)) == 0


@pytest.mark.parametrize("name,shape,kw", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, shape, kw):
    model = make(name, shape, **kw)
    nn.functional.cross_entropy(model(batch(shape)), torch.arange(5)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,shape", [("linear", MNIST), ("mlp", MNIST), ("cnn", CIFAR), ("vit", CIFAR)])
def test_same_seed_same_init(name, shape):
    a, b, c = make(name, shape, seed=3).state_dict(), make(name, shape, seed=3).state_dict(), \
        make(name, shape, seed=4).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_deep_linear_is_the_product():
    torch.manual_seed(0)
    model = DeepLinear([20, 30, 15, 5]).double()
    assert all(layer.bias is None for layer in model.layers)
    W = model.layers[2].weight @ model.layers[1].weight @ model.layers[0].weight  # W_3 W_2 W_1
    assert W.shape == (5, 20)
    x = torch.randn(8, 20, dtype=torch.float64)
    torch.testing.assert_close(model(x), x @ W.T, rtol=1e-12, atol=1e-14)


def test_deep_linear_init_scale():
    torch.manual_seed(0)
    model = DeepLinear([400, 800, 200], bias=True, init_scale=0.5)
    for layer in model.layers:
        std = 0.5 / layer.in_features ** 0.5
        assert abs(layer.weight.std().item() / std - 1) < 0.02 and abs(layer.weight.mean().item()) < 0.1 * std
        assert torch.count_nonzero(layer.bias) == 0
    small = DeepLinear([10, 10], init_scale=0.0)
    assert torch.count_nonzero(small.layers[0].weight) == 0


@pytest.mark.parametrize("call,match", [
    (lambda: build("transformer", MNIST, 10),
     "unknown model 'transformer'; allowed: linear, mlp, cnn, resnet, vit"),
    (lambda: build("vit", (3, 30, 30), 10), "image_size=30 is not divisible by patch=4"),
    (lambda: build("vit", CIFAR, 10, width=30, heads=4), "width=30 is not divisible by heads=4"),
    (lambda: build("vit", (3, 32, 28), 10), "square images"),
    (lambda: build("cnn", MNIST_FLAT, 10), "square images"),
    (lambda: build("cnn", MNIST, 10, in_channels=3), "in_channels is set by input_shape"),
    (lambda: build("mlp", MNIST, 10, activation="sigmoid"), "activation='sigmoid'; allowed: relu, tanh"),
    (lambda: build("mlp", MNIST, 10, depth=3), "takes no option depth; allowed: hidden"),
    (lambda: build("mlp", MNIST, 10, hidden=(32, 0)), r"hidden\[1\]=0"),
    (lambda: build("linear", MNIST, 0), "classes=0"),
    (lambda: build("linear", (1, -28), 10), r"input_shape\[1\]=-28"),
    (lambda: build("vit", CIFAR, 10, pool="max"), "pool='max'; allowed: cls, mean"),
    (lambda: build("vit", CIFAR, 10, dropout=1.0), "dropout=1.0"),
    (lambda: build("cnn", (1, 3, 3), 10), "image_size=3: must be >= 4"),
    (lambda: DeepLinear([784]), "widths"),
    (lambda: DeepLinear([4, 4], init_scale=-1.0), "init_scale=-1.0"),
    (lambda: ConvNet(channels=()), "channels"),
])
def test_bad_inputs_raise_config_error(call, match):
    with pytest.raises(ConfigError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
