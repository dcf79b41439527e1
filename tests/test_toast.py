"""TOAST (top-down attention steering) on a frozen vision transformer, linear probing,
fine-tuning, and the class-split transfer task."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import needs_fashion_mnist

from ldfa.errors import ConfigError
from ldfa.sim.data import Dataset
from ldfa.sim.models import MLP, VisionTransformer
from ldfa.sim.toast import TOAST, LinearProbe, tuned_parameters
from ldfa.sim.train import TrainConfig, save_state


def _vit(**kw):
    torch.manual_seed(0)
    return VisionTransformer(image_size=8, patch=4, in_channels=1, width=16, depth=2, heads=2,
                             classes=3, **kw)


def test_value_steering_adds_top_down_to_the_value_input_only():
    torch.manual_seed(1)
    attn = _vit().blocks[0].attn
    x, td = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    C = 16
    Wq, Wk, Wv = attn.qkv.weight.split(C)
    bq, bk, bv = attn.qkv.bias.split(C)
    q, k, v = x @ Wq.T + bq, x @ Wk.T + bk, (x + td) @ Wv.T + bv
    heads = lambda t: t.view(2, 5, 2, 8).transpose(1, 2)  # noqa: E731
    y = torch.softmax(heads(q) @ heads(k).mT / 8**0.5, -1) @ heads(v)
    expected = attn.proj(y.transpose(1, 2).reshape(2, 5, C))
    assert torch.allclose(attn(x, td), expected, atol=1e-5)
    assert not torch.allclose(attn(x), expected, atol=1e-3)


def test_zero_feedback_is_the_plain_backbone_and_only_the_new_modules_train():
    backbone = _vit()
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = TOAST(backbone, classes=4)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        for dec in model.decoders:
            dec.out.weight.zero_()
        plain = model.head(backbone.pooled(backbone.tokens(x)))
        assert torch.allclose(model(x), plain, atol=1e-6)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"prompt", "select.weight", "head.weight", "head.bias",
                     *(f"decoders.{i}.{m}.weight" for i in range(2) for m in ("down", "out"))}
    width = 16
    assert tuned_parameters(model) == width + width**2 + 2 * 2 * width**2 + width * 4 + 4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.randint(0, 4, (6,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())
    assert all(p.grad is None for p in backbone.parameters())
    assert model.decoders[0].out.weight.abs().sum() > 0  # the feedback path learned


def test_linear_probe_trains_the_head_only():
    probe = LinearProbe(_vit(), classes=5)
    assert tuned_parameters(probe) == 16 * 5 + 5


@pytest.mark.parametrize("make", [TOAST, LinearProbe])
def test_models_without_attention_are_refused(make):
    with pytest.raises(ConfigError, match="no attention blocks.*vit"):
        make(MLP([4, 3, 2]), 2)


def test_select_classes_relabels_in_the_given_order():
    data = Dataset(torch.arange(10.0)[:, None], torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), num_classes=5)
    sub = data.select_classes((3, 1))
    assert sub.num_classes == 2 and sub.y.tolist() == [1, 0, 1, 0] and sub.x[:, 0].tolist() == [1, 3, 6, 8]
    for bad in [(5,), (1, 1), (), (-1,)]:
        with pytest.raises(ConfigError, match="classes="):
            data.select_classes(bad)


def test_bad_transfer_settings(tmp_path):
    with pytest.raises(ConfigError, match="needs a pre-trained backbone"):
        TrainConfig(model="vit", transfer="toast")
    with pytest.raises(ConfigError, match="allowed: toast, probe, finetune"):
        TrainConfig(model="vit", transfer="lora", backbone="x.pt")
    with pytest.raises(ConfigError, match="rule bp"):
        TrainConfig(model="vit", transfer="toast", backbone="x.pt", rule="fa")
    with pytest.raises(ConfigError, match="--backbone needs --transfer"):
        TrainConfig(model="vit", backbone="x.pt")
    with pytest.raises(ConfigError, match="model 'cnn' has no attention blocks"):
        TrainConfig(model="cnn", transfer="finetune", backbone="x.pt")


@needs_fashion_mnist
def test_backbone_file_errors(tmp_path):
    from ldfa.sim.train import build

    tiny = dict(train_subset=64, test_subset=64, classes=(5, 6))
    with pytest.raises(ConfigError, match="does not exist"):
        build(TrainConfig(model="vit", transfer="toast", backbone=str(tmp_path / "none.pt"), **tiny))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="corrupt"):
        build(TrainConfig(model="vit", transfer="toast", backbone=str(tmp_path / "bad.pt"), **tiny))
    save_state(VisionTransformer(width=32, heads=4, classes=2), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"does not fit model 'vit'.*shape.*pos_embed \(1, 50, 32\) vs "
                                          r"\(1, 50, 64\)"):
        build(TrainConfig(model="vit", transfer="toast", backbone=str(tmp_path / "wide.pt"), **tiny))
    save_state(MLP([784, 8, 2]), tmp_path / "mlp.pt")
    with pytest.raises(ConfigError, match="no head.weight, so not a saved vit"):
        build(TrainConfig(model="vit", transfer="toast", backbone=str(tmp_path / "mlp.pt"), **tiny))
    from ldfa.sim.layers import convert

    save_state(convert(VisionTransformer(classes=2), "fa"), tmp_path / "fa.pt")
    with pytest.raises(ConfigError, match="unexpected: .*B.*trained with a feedback rule"):
        build(TrainConfig(model="vit", transfer="probe", backbone=str(tmp_path / "fa.pt"), **tiny))
    torch.save({"model": {}, "optimizer": {}, "step": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match="training checkpoint"):
        build(TrainConfig(model="vit", transfer="toast", backbone=str(tmp_path / "ckpt.pt"), **tiny))


@needs_fashion_mnist
def test_pretrain_then_steer_from_the_command_line(tmp_path):
    common = [sys.executable, "-m", "ldfa.cli", "train", "--model", "vit", "--steps", "3", "--quiet",
              "--threads", "1", "--out", str(tmp_path)]
    subprocess.run([*common, "--classes", "0,1,2,3,4", "--save-model", str(tmp_path / "pre.pt")],
                   check=True, capture_output=True)
    subprocess.run([*common, "--classes", "5,6,7,8,9", "--transfer", "toast", "--backbone",
                    str(tmp_path / "pre.pt")], check=True, capture_output=True)
    # the default names keep the two runs apart
    assert (tmp_path / "vit-fashion-mnist-bp-c01234.summary.json").exists()
    summary = json.loads((tmp_path / "vit-fashion-mnist-bp-toast-c56789.summary.json").read_text())
    assert summary["tuned_parameters"] == 64 + 64**2 + 2 * 2 * 64**2 + 64 * 5 + 5
    bad = subprocess.run([*common, "--model", "mlp", "--transfer", "toast", "--backbone",
                          str(tmp_path / "pre.pt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no attention blocks" in bad.stderr
    bad = subprocess.run([*common, "--classes", "5,,6"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--classes '5,,6': need comma-separated integers" in bad.stderr
