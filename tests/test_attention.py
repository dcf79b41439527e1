"""nn.MultiheadAttention made feedback-ready: the same function, the projections as modules."""

import copy

import pytest
import torch
from torch import nn

from ldfa.errors import ConfigError
from ldfa.sim.attention import FeedbackReadyAttention, replace_attention

E, H, L, S, N = 8, 2, 5, 7, 3


def _pair(**kw):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, **kw).double()
    with torch.no_grad():  # non-zero biases, so a dropped or misplaced bias shows
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
        if mha.out_proj.bias is not None:
            mha.out_proj.bias.normal_()
    ref = copy.deepcopy(mha)
    return ref, FeedbackReadyAttention(mha)


def _inputs(batch_first, cross, kdim=E, vdim=E, unbatched=False):
    g = torch.Generator().manual_seed(1)

    def t(length, width):
        shape = (length, width) if unbatched else (N, length, width) if batch_first else (length, N, width)
        return torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)

    q = t(L, E)
    if not cross:
        return q, q, q
    return q, t(S, kdim), t(S, vdim)


def _check(ref, new, args, **kw):
    out_ref, w_ref = ref(*args, **kw)
    out_new, w_new = new(*[a for a in args], **kw)
    torch.testing.assert_close(out_new, out_ref, rtol=1e-12, atol=1e-12)
    if w_ref is None:
        assert w_new is None
    else:
        torch.testing.assert_close(w_new, w_ref, rtol=1e-12, atol=1e-12)
    # same function => same gradients for the weights (exact autograd on both sides)
    (out_ref.sum() + (0 if w_ref is None else w_ref.sum())).backward()
    grads_ref = {n: p.grad.clone() for n, p in ref.named_parameters()}
    for a in args:
        a.grad = None
    (out_new.sum() + (0 if w_new is None else w_new.sum())).backward()
    torch.testing.assert_close(new.out_proj.weight.grad, grads_ref["out_proj.weight"], rtol=1e-10, atol=1e-12)
    if new._qkv_same_embed_dim:
        torch.testing.assert_close(new.in_proj.weight.grad, grads_ref["in_proj_weight"], rtol=1e-10,
                                   atol=1e-12)
    else:
        torch.testing.assert_close(new.k_proj.weight.grad, grads_ref["k_proj_weight"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("need_weights", [True, False])
def test_same_function_without_masks(batch_first, cross, need_weights):
    ref, new = _pair(batch_first=batch_first)
    _check(ref, new, _inputs(batch_first, cross), need_weights=need_weights)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_same_function_with_masks(batch_first, need_weights):
    ref, new = _pair(batch_first=batch_first)
    args = _inputs(batch_first, cross=True)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -2:] = True
    pad[2, 0] = True
    bool_mask = torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=3)
    _check(ref, new, args, key_padding_mask=pad, attn_mask=bool_mask, need_weights=need_weights)
    ref, new = _pair(batch_first=batch_first)
    float_mask = torch.randn(N * H, L, S, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _check(ref, new, _inputs(batch_first, cross=True), attn_mask=float_mask, need_weights=need_weights,
           average_attn_weights=False)


@pytest.mark.parametrize("need_weights", [True, False])
def test_causal_hint_and_unbatched(need_weights):
    ref, new = _pair(batch_first=True)
    causal = nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    _check(ref, new, _inputs(True, cross=False), attn_mask=causal, is_causal=True, need_weights=need_weights)
    ref, new = _pair()
    _check(ref, new, _inputs(False, cross=False, unbatched=True), need_weights=need_weights)


def test_separate_key_value_widths_and_no_bias():
    ref, new = _pair(kdim=5, vdim=6, batch_first=True)
    assert not new._qkv_same_embed_dim and new.q_proj.weight is not None
    _check(ref, new, _inputs(True, cross=True, kdim=5, vdim=6))
    ref, new = _pair(bias=False)
    assert new.in_proj.bias is None and new.in_proj_bias is None
    _check(ref, new, _inputs(False, cross=False))


def test_parameters_are_shared_and_unsupported_options_refused():
    mha = nn.MultiheadAttention(E, H)
    new = FeedbackReadyAttention(mha)
    assert new.in_proj.weight is mha.in_proj_weight and new.out_proj is mha.out_proj
    with pytest.raises(ConfigError, match="add_bias_kv"):
        FeedbackReadyAttention(nn.MultiheadAttention(E, H, add_bias_kv=True))


def test_replace_attention_in_a_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, dropout=0.0, batch_first=True).double()
    ref = copy.deepcopy(layer)
    assert replace_attention(layer) == ["self_attn"]
    x = torch.randn(N, L, E, dtype=torch.float64)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-12, atol=1e-12)
    layer.eval(), ref.eval()
    with torch.no_grad():  # torch's inference fast path reads in_proj_weight: still the same function
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-12, atol=1e-12)


# -- convert on models built from nn.MultiheadAttention -------------------------------------

class _EncoderBlock(nn.Module):
    """The block of torchvision's vit_b_16: x + attn(ln(x)), then x + mlp(ln(x)), with
    nn.MultiheadAttention(batch_first=True) called as self_attention(x, x, x, need_weights=False)."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _TinyViT(nn.Module):
    def __init__(self, width=16, heads=2, depth=2, classes=3):
        super().__init__()
        self.embed = nn.Linear(6, width)
        self.layers = nn.Sequential(*[_EncoderBlock(width, heads) for _ in range(depth)])
        self.heads = nn.Linear(width, classes)

    def forward(self, x):
        return self.heads(self.layers(self.embed(x))[:, 0])


def _error_ranks(model, x):
    """{layer name: numerical rank of the error its backward sends down (rows: tokens)}."""
    from ldfa.sim.layers import feedback_layers

    errors = {}
    for name, layer in feedback_layers(model):
        layer.register_forward_pre_hook(
            lambda m, args, name=name: args[0].register_hook(lambda g: errors.__setitem__(name, g))
            and None)
    model(x).square().sum().backward()
    out = {}
    for name, g in errors.items():
        s = torch.linalg.svdvals(g.reshape(-1, g.shape[-1]).double())
        out[name] = int((s > 1e-6 * s[0]).sum())
    return out


def test_convert_bottlenecks_every_attention_projection():
    from ldfa.sim.layers import FeedbackLayer, convert

    torch.manual_seed(0)
    model = _TinyViT()
    x = torch.randn(8, 5, 6, requires_grad=True)
    r = 2
    convert(model, "ldfa", rank=r, skip=("embed",), example_input=x)
    for block in model.layers:
        attn = block.self_attention
        assert isinstance(attn, FeedbackReadyAttention)
        assert isinstance(attn.in_proj, FeedbackLayer) and attn.in_proj.P.shape[0] == 3 * r
        assert isinstance(attn.out_proj, FeedbackLayer) and attn.out_proj.P.shape[0] == r
    ranks = _error_ranks(model, x)
    for i in range(2):
        assert ranks[f"layers.{i}.self_attention.in_proj"] <= 3 * r
        assert ranks[f"layers.{i}.self_attention.out_proj"] <= r
    # every rule matrix got a gradient from that backward
    for name, p in model.named_parameters():
        if name.endswith((".P", ".Q")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_convert_refuses_a_layer_the_model_bypasses():
    from ldfa.sim.layers import convert

    class ReadsWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return torch.nn.functional.linear(self.a(x), self.b.weight, self.b.bias)

    with pytest.raises(ConfigError, match="layers b: the model reads their weights"):
        convert(ReadsWeight(), "fa", example_input=torch.randn(3, 4))
    convert(ReadsWeight(), "fa", skip=("b",), example_input=torch.randn(3, 4))  # named in skip: fine
