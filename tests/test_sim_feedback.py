"""Every rule delivers the error it should, on linear and conv layers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldfa.errors import ConfigError
from ldfa.sim.layers import convert, feedback_layers, feedback_parameters, set_tracking


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


def delivered(model, x, c, layer_index):
    """The error arriving at the input of model[layer_index], for the loss Σ out ⊙ c."""
    h = {}

    def keep(_, inp):
        inp[0].retain_grad()
        h["x"] = inp[0]

    handle = model[layer_index].register_forward_pre_hook(keep)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * c).sum().backward()
    handle.remove()
    return h["x"].grad, out


def arriving(model, x, c, layer_index):
    """The error g arriving at the output of model[layer_index] (reference via autograd)."""
    h = {}

    def keep(_, __, out):
        out.retain_grad()
        h["o"] = out

    handle = model[layer_index].register_forward_hook(keep)
    out = model(x)
    (out * c).sum().backward()
    handle.remove()
    return h["o"].grad


X = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
C = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))


def test_bp_delivers_autograd_error_exactly():
    ref = tiny_mlp()
    model = convert(tiny_mlp(), "bp")
    g_ref, _ = delivered(ref, X, C, 2)
    g, _ = delivered(model, X, C, 2)
    assert torch.equal(g, g_ref)


def test_fa_delivers_B_transpose_g():
    model = convert(tiny_mlp(), "fa", seed=3)
    g = arriving(copy.deepcopy(model), X, C, 2)
    got, _ = delivered(model, X, C, 2)
    torch.testing.assert_close(got, g @ model[2].B, rtol=0, atol=1e-7)
    assert not torch.allclose(got, g @ model[2].weight)


@pytest.mark.parametrize("p_rule,q_rule", [("fixed", "fixed"), ("oja", "kp"), ("svd", "aligned"),
                                           ("lowrank", "lowrank"), ("kp", "kp"), ("fixed", "mirror")])
def test_ld_delivers_Q_P_g(p_rule, q_rule):
    model = convert(tiny_mlp(), "ld", rank=2, p_rule=p_rule, q_rule=q_rule, seed=4)
    layer = model[2]
    P = layer.P.detach().clone()
    Qw = layer.rule.q_weight(layer).detach().clone()
    g = arriving(copy.deepcopy(model), X, C, 2)
    got, _ = delivered(model, X, C, 2)
    if p_rule == "svd":  # P was refreshed from the first batch's error covariance
        P = layer.P.detach()
        Qw = layer.rule.q_weight(layer).detach()
    torch.testing.assert_close(got, (g @ P.t()) @ Qw, rtol=1e-6, atol=1e-7)
    assert torch.linalg.matrix_rank(P.t() @ Qw) == 2  # B has rank r


def test_dfa_delivers_D_e():
    model = convert(tiny_mlp(), "dfa", seed=5)
    out_layer = model[4]
    e = C  # the error at the output of the last layer
    got, _ = delivered(model, X, C, 2)
    torch.testing.assert_close(got, e @ model[2].D, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out_layer.direct.e, e)


def test_direct_ld_delivers_Q_P_e():
    model = convert(tiny_mlp(), "ld", rank=2, direct=True, seed=6)
    got, _ = delivered(model, X, C, 2)
    P = model[4].P
    torch.testing.assert_close(got, (C @ P.t()) @ model[2].Q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule,kw", [("bp", {}), ("fa", {}), ("kp", {}), ("sign", {}), ("wm", {}),
                                     ("dfa", {}), ("ld", dict(rank=2)), ("ldfa", dict(rank=2)),
                                     ("raf", dict(rank=2))])
def test_weight_gradient_is_the_local_product(rule, kw):
    """Whatever the rule, ΔW of the top layer is the exact local product e hᵀ."""
    model = convert(tiny_mlp(), rule, **kw)
    ref = tiny_mlp()
    for m in (model, ref):
        (m(X) * C).sum().backward()
    torch.testing.assert_close(model[4].weight.grad, ref[4].weight.grad)
    torch.testing.assert_close(model[4].bias.grad, ref[4].bias.grad)


def _train(model, steps=5, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 7, generator=gen)
        y = torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def test_bp_conversion_trains_bit_identically():
    a = _train(tiny_mlp())
    b = _train(convert(tiny_mlp(), "bp"))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def tiny_conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))


def test_bp_conv_conversion_trains_bit_identically():
    def train(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            x = torch.randn(4, 2, 5, 5, generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), torch.arange(4)).backward()
            opt.step()
        return model

    for pa, pb in zip(train(tiny_conv()).parameters(), train(convert(tiny_conv(), "bp")).parameters()):
        assert torch.equal(pa, pb)


def test_conv_ld_equals_dense_equivalent():
    """The conv ld backward (1x1 conv to r channels, r-channel transposed conv) equals the
    dense matrix of a conv with kernel B_w = Pᵀ Q_w applied to the flattened error."""
    model = convert(tiny_conv(), "ld", rank=2, p_rule="fixed", q_rule="fixed", seed=7)
    layer = model[2]
    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    h = torch.relu(model[0](x)).detach().requires_grad_(True)
    out = layer(h)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    out.backward(g)
    Bw = (layer.P.t() @ layer.Q.reshape(2, -1)).reshape(layer.weight.shape)
    J = torch.autograd.functional.jacobian(lambda v: F.conv2d(v, Bw, None, 2, 1), h.detach())
    dense = g.flatten() @ J.reshape(g.numel(), h.numel())
    torch.testing.assert_close(h.grad.flatten(), dense, rtol=1e-5, atol=1e-6)


def test_conv_fa_and_dfa_run_and_differ_from_bp():
    x = torch.randn(2, 2, 5, 5)
    grads = {}
    for rule in ("bp", "fa", "dfa"):
        m = convert(tiny_conv(), rule)
        xr = x.clone().requires_grad_(True)
        F.cross_entropy(m(xr), torch.tensor([0, 1])).backward()
        grads[rule] = xr.grad
    assert not torch.allclose(grads["bp"], grads["fa"])
    assert not torch.allclose(grads["bp"], grads["dfa"])


def test_oja_P_converges_to_top_error_subspace():
    """Feed errors with a fixed covariance; Oja's rule (via .grad + SGD) finds its top-r span."""
    torch.manual_seed(0)
    layer_model = convert(nn.Sequential(nn.Linear(6, 8)), "ld", rank=2, p_rule="oja",
                          q_rule="fixed", seed=0)
    layer = layer_model[0]
    A = torch.randn(8, 8)
    cov = A @ A.t() / 8
    w, V = torch.linalg.eigh(cov)
    L = torch.linalg.cholesky(cov)
    opt = torch.optim.SGD([layer.P], lr=0.02)
    x = torch.randn(64, 6)
    for _ in range(1500):
        g = (torch.randn(64, 8) @ L.t()) / 64  # per-example error / batch (mean loss)
        opt.zero_grad()
        layer(x.requires_grad_(True)).backward(g)
        opt.step()
    P = layer.P.detach()
    Qp, _ = torch.linalg.qr(P.t())
    overlap = float(((Qp.t() @ V[:, -2:]) ** 2).sum() / 2)
    assert overlap > 0.98
    torch.testing.assert_close(P @ P.t(), torch.eye(2), atol=0.05, rtol=0)


def deep_small_conv():
    """Deep, small maps with more output channels than samples: kp's products are formed on the
    batch side (Q_w x and Σ z xᵀ), and the weight gradients are im2col products."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 120, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(120, 40, 3, padding=1), nn.Flatten(), nn.Linear(40 * 2 * 2, 4))


@pytest.mark.parametrize("make", [tiny_mlp, tiny_conv, deep_small_conv])
def test_ld_kp_grads_are_the_forward_update_seen_through_the_other_factor(make):
    """docs/rules.md, kp factors: ΔQ = ΔWᵀ Pᵀ and ΔP = Qᵀ ΔWᵀ (weight orientation:
    Q_w.grad = P gW, P.grad = Q_w gWᵀ)."""
    model = convert(make(), "ld", rank=2, p_rule="kp", q_rule="kp", seed=3)
    side = 3 if make is deep_small_conv else 5
    x = X if make is tiny_mlp else torch.randn(3, 2, side, side, generator=torch.Generator().manual_seed(5))
    if make is deep_small_conv:
        layer, h = model[2], torch.relu(model[0](x))
        assert layer.ops.im2col_faster(h, layer(h), layer.weight.shape)
        assert layer.weight.shape[0] > layer.ops.n_rows(layer(h))  # the batch side
    (model(x) * C).sum().backward()
    for _, layer in feedback_layers(model)[:-1]:
        gW = layer.weight.grad.reshape(layer.weight.shape[0], -1)
        Qf = layer.Q.detach().reshape(2, -1)
        torch.testing.assert_close(layer.Q.grad.reshape(2, -1), layer.P.detach() @ gW, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.P.grad, Qf @ gW.t(), rtol=1e-5, atol=1e-6)


def test_kp_drives_B_toward_W():
    """ΔB = ΔW with weight decay λ on both: B - W shrinks by exactly (1 - ηλ) per step."""
    model = convert(tiny_mlp(), "kp", seed=1)
    gap0 = [(m.B - m.weight).detach().clone() for _, m in feedback_layers(model)]
    lr, wd, steps = 0.1, 0.05, 600
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 7, generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), torch.randint(0, 4, (32,), generator=gen)).backward()
        opt.step()
    for (_, m), g0 in zip(feedback_layers(model), gap0):
        torch.testing.assert_close(m.B - m.weight, g0 * (1 - lr * wd) ** steps, rtol=1e-3, atol=1e-6)
    assert (1 - lr * wd) ** steps < 0.05


def test_lowrank_tracks_best_rank_r_approximation():
    model = convert(tiny_mlp(), "ld", rank=2, p_rule="lowrank", q_rule="lowrank", seed=2)
    layer = model[2]
    opt = torch.optim.SGD(feedback_parameters(model), lr=0.5)
    for _ in range(3000):
        opt.zero_grad()
        (model(X) * C).sum().backward()
        opt.step()
    Bw = layer.rule.feedback_weight(layer).detach()
    U, S, Vh = torch.linalg.svd(layer.weight.detach())
    best = (U[:, :2] * S[:2]) @ Vh[:2]
    torch.testing.assert_close(Bw, best, atol=1e-3, rtol=0)


def test_tracking_reports_angles():
    model = convert(tiny_mlp(), "ld", rank=2, seed=0)
    set_tracking(model)
    (model(X) * C).sum().backward()
    stats = dict(feedback_layers(model))["2"].stats
    assert 0 <= stats["angle_delta"] <= 180 and 0 <= stats["angle_B_W"] <= 180
    assert 0 <= stats["p_overlap"] <= 1 + 1e-9 and 1 <= stats["error_dim"] <= 5 + 1e-9
    bp = convert(tiny_mlp(), "bp")
    set_tracking(bp)
    (bp(X) * C).sum().backward()
    assert bp[2].stats["angle_delta"] == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rule="ld", rank=6), "rank r=6 exceeds layer"),
    (dict(rule="nope"), "unknown rule 'nope'"),
    (dict(rule="ld", rank=2, p_rule="bad"), "unknown p_rule 'bad'"),
    (dict(rule="ld", rank=2, q_rule="bad"), "unknown q_rule 'bad'"),
    (dict(rule="ld"), "needs a rank"),
    (dict(rule="fa", rank=3), "rank r=3 applies to ld rules only"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        convert(tiny_mlp(), **kwargs)


def test_model_without_convertible_layer():
    with pytest.raises(ConfigError, match="no nn.Linear or nn.Conv2d"):
        convert(nn.Sequential(nn.ReLU(), nn.Tanh()), "fa")


@pytest.mark.parametrize("rule,kw", [("fa", {}), ("ld", dict(rank=2)), ("dfa", {}), ("ldfa", dict(rank=2))])
def test_mixed_precision_autocast(rule, kw):
    """Forward under bfloat16 autocast; the rule's backward runs in float32, grads match W's dtype."""
    model = convert(tiny_mlp(), rule, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(X)
        loss = F.cross_entropy(out, torch.arange(3))
    assert out.dtype == torch.bfloat16
    loss.backward()
    ref = convert(tiny_mlp(), rule, **kw)
    F.cross_entropy(ref(X), torch.arange(3)).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
        assert torch.allclose(p.grad, q.grad, rtol=0.1, atol=2e-2), name  # bf16 forward: ~1e-2


def test_cross_products_equal_the_row_matrices():
    """ops.cross(a, b) = rows(a)ᵀ rows(b) (what Oja's and kp's P updates sum), for conv maps,
    token batches and seed-batched layers, without forming the rows."""
    from ldfa.sim.ops import BatchedLinearOps, ConvOps, LinearOps

    gen = torch.Generator().manual_seed(0)
    conv = ConvOps(1, 1, 1, 1)
    a, b = torch.randn(3, 4, 5, 6, generator=gen), torch.randn(3, 7, 5, 6, generator=gen)
    assert torch.allclose(conv.cross(a, b), conv.rows(a).T @ conv.rows(b), atol=1e-5)
    assert conv.n_rows(a) == conv.rows(a).shape[0] == 90
    lin = LinearOps()
    a, b = torch.randn(3, 5, 4, generator=gen), torch.randn(3, 5, 7, generator=gen)
    assert torch.allclose(lin.cross(a, b), lin.rows(a).T @ lin.rows(b), atol=1e-5)
    assert lin.n_rows(a) == 15
    bat = BatchedLinearOps()
    assert torch.allclose(bat.cross(a, b)[1], a[1].T @ b[1], atol=1e-5) and bat.n_rows(a) == 5


@pytest.mark.parametrize("n,m", [(2048, 784), (512, 4608), (64, 130), (100, 7)])
def test_few_rows_products_equal_the_plain_ones_for_any_thread_count(n, m):
    """few_rows_times(P, W) = P W and few_rows_times(Q, Wᵀ) = Q Wᵀ (lowrank's and Kolen-Pollack's
    skinny products, split over W's column or row blocks where a block size divides W), with the
    same numbers for 1 and 2 threads."""
    from ldfa.sim.ops import few_rows_times

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(n, m, generator=gen, dtype=torch.float64)
    P = torch.randn(3, n, generator=gen, dtype=torch.float64)
    Q = torch.randn(3, m, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(few_rows_times(P, W), P @ W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(few_rows_times(Q, W.T), Q @ W.T, rtol=1e-12, atol=1e-12)
    W32, P32, Q32 = W.float(), P.float(), Q.float()
    threads = torch.get_num_threads()
    try:
        results = []
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append((few_rows_times(P32, W32), few_rows_times(Q32, W32.T)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_im2col_weight_gradient_equals_the_convolution_one(stride, padding, dilation):
    """On deep, small maps (C_in·k·k at least 256 x the output positions) the conv weight
    gradient alone is one im2col product; it equals conv2d_weight, and so does the fused backward
    (autograd's own convolution backward, with Mᵀg and Σ g)."""
    from torch.nn.grad import conv2d_input, conv2d_weight

    from ldfa.sim.ops import ConvOps

    gen = torch.Generator().manual_seed(0)
    ops = ConvOps((stride,) * 2, (padding,) * 2, (dilation,) * 2, 1)
    x = torch.randn(5, 300, 3, 3, generator=gen, dtype=torch.float64)
    W = torch.randn(7, 300, 3, 3, generator=gen, dtype=torch.float64)
    g = torch.randn_like(ops.forward(x, W, None))
    assert ops.im2col_faster(x, g, W.shape)
    want = conv2d_weight(x, W.shape, g, ops.stride, ops.padding, ops.dilation)
    torch.testing.assert_close(ops.weight_grad(x, g, W.shape), want, rtol=1e-12, atol=1e-12)
    gx, gW, gb = ops.fused_backward(x, g, W, True, True)
    torch.testing.assert_close(gW, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, conv2d_input(x.shape, W, g, ops.stride, ops.padding, ops.dilation))
    torch.testing.assert_close(gb, g.sum((0, 2, 3)))
    big = torch.randn(5, 300, 40, 40, dtype=torch.float64)  # large maps: oneDNN's kernel
    assert not ops.im2col_faster(big, torch.randn_like(ops.forward(big, W, None)), W.shape)


@pytest.mark.parametrize("in_channels", [1, 6])
def test_channels_last_weight_gradient_is_channels_last(in_channels):
    """In a channels-last model the weight gradient equals conv2d_weight's and comes out laid out
    like the weight, also on a first layer whose one-channel input is plain and channels-last
    at once (conv2d_weight alone would take the plain layout and copy the error into it)."""
    from torch.nn.grad import conv2d_weight

    from ldfa.sim.ops import ConvOps

    gen = torch.Generator().manual_seed(2)
    ops = ConvOps(1, 1, 1, 1)
    cl = torch.channels_last
    x = torch.randn(4, in_channels, 9, 9, generator=gen).contiguous(memory_format=cl)
    W = torch.randn(8, in_channels, 3, 3, generator=gen)
    g = torch.randn(4, 8, 9, 9, generator=gen).contiguous(memory_format=cl)
    with torch.profiler.profile(record_shapes=True) as prof:
        got = ops.weight_grad(x, g, W.shape)
    assert got.is_contiguous(memory_format=cl)
    torch.testing.assert_close(got, conv2d_weight(x.contiguous(), W.shape, g.contiguous(), 1, 1))
    if torch.backends.mkldnn.is_available():  # oneDNN's kernel takes g as it is laid out
        copies = [e.input_shapes for e in prof.events() if e.name == "aten::copy_"]
        assert not [s for s in copies if s and s[0] == list(g.shape)], copies


@pytest.mark.parametrize("rule", [dict(rule="ld", rank=3, p_rule="oja", q_rule="kp"), dict(rule="fa")])
def test_channels_last_model_has_the_plain_layout_gradients(rule):
    """A conv net converted to channels-last layout gets the same gradients under a feedback rule
    as in plain layout."""
    from ldfa.sim import models
    from ldfa.sim.layers import convert

    grads = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = models.ConvNet(in_channels=1, image_size=12, channels=(6, 8), hidden=16)
        convert(model, **rule)
        model.to(memory_format=layout)
        x = torch.randn(5, 1, 12, 12).contiguous(memory_format=layout)
        torch.nn.functional.cross_entropy(model(x), torch.arange(5)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 4
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("side,kernel,stride,padding,dilation", [
    (9, 3, 2, 1, 1), (10, 3, 2, 1, 1), (7, 1, 2, 0, 1), (11, 3, 1, 2, 2), (12, 7, 2, 3, 1)])
def test_compressed_expansion_equals_the_input_gradient(side, kernel, stride, padding, dilation):
    """Q_wᵀ z for an error z of fewer channels than the layer's input (the transposed convolution
    ld expands with) equals conv2d_input, including sizes where the stride leaves a remainder."""
    from torch.nn.grad import conv2d_input

    from ldfa.sim.ops import ConvOps

    gen = torch.Generator().manual_seed(1)
    ops = ConvOps(stride, padding, dilation, 1)
    x = torch.randn(3, 12, side, side, generator=gen, dtype=torch.float64)
    Q = torch.randn(4, 12, kernel, kernel, generator=gen, dtype=torch.float64)
    z = torch.randn_like(ops.forward(x, Q, None))
    want = conv2d_input(x.shape, Q, z, ops.stride, ops.padding, ops.dilation)
    got = ops.input_grad(z, Q, x)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want)
    x_cl = x.contiguous(memory_format=torch.channels_last)  # a channels-last model: no copy back
    got_cl = ops.input_grad(z, Q, x_cl)
    assert got_cl.is_contiguous(memory_format=torch.channels_last) and not got_cl.is_contiguous()
    torch.testing.assert_close(got_cl, want)


@pytest.mark.parametrize("rule", ["bp", "fa", "kp", "sign"])
def test_fused_conv_backward_equals_the_separate_products(rule):
    """Rules that send Bᵀg through a full matrix get Bᵀg and Σ g xᵀ from one fused call on
    conv layers; it equals conv2d_input(B) and conv2d_weight."""
    from torch.nn.grad import conv2d_input, conv2d_weight

    torch.manual_seed(0)
    layer = convert(nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1)), rule, seed=1)[0]
    assert layer.rule.sends_through_matrix()
    set_tracking(layer, True)  # bp too takes the Function then
    x = torch.randn(4, 3, 9, 9, requires_grad=True)
    g = torch.randn(4, 5, 5, 5)
    layer(x).backward(g)
    B = layer.rule.feedback_weight(layer).detach()
    assert torch.allclose(x.grad, conv2d_input(x.shape, B, g, 2, 1), atol=1e-5)
    gW = conv2d_weight(x.detach(), layer.weight.shape, g, 2, 1)
    assert torch.allclose(layer.weight.grad, gW, atol=1e-4)
    assert torch.allclose(layer.bias.grad, g.sum((0, 2, 3)), atol=1e-4)


def test_low_dimensional_rules_do_not_take_the_fused_path():
    from ldfa.sim.feedback import DFA, LowDim

    assert not LowDim.sends_through_matrix() and not DFA.sends_through_matrix()


def test_lowrank_p_reuses_the_forward_product():
    """lowrank P on a linear layer takes Q_w Wᵀ from the stacked forward [x; Q_w] Wᵀ; every
    gradient (a layer used twice included) equals the one with Q_w Wᵀ formed in the backward."""
    import types

    from ldfa.sim.feedback import Rule
    from ldfa.sim.layers import convert, feedback_layers

    def grads(stacked: bool):
        torch.manual_seed(0)
        layer = torch.nn.Linear(12, 12).double()
        model = torch.nn.Sequential(layer)
        convert(model, "ldfa", rank=3)
        fl = feedback_layers(model)[0][1]
        if not stacked:
            fl.rule.forward = types.MethodType(Rule.forward, fl.rule)
        x = torch.randn(5, 12, dtype=torch.double)
        out = fl(torch.tanh(fl(x)))  # the same layer twice
        products = fl.rule.forward(fl, x, fl.weight, fl.bias)[1]
        (out**2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}, products

    (a, products), (b, none) = grads(True), grads(False)
    assert products is not None and none is None
    assert set(a) == set(b) and {"0.P", "0.Q"} <= set(a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["linear", "conv", "tokens"])
def test_kolen_pollack_factor_gradients_from_dW_equal_the_batch_side_ones(kind):
    """ΔP = Q_w ΔWᵀ and ΔQ_w = P ΔW from W's gradient (used where n_out < samples) equal the
    batch-side sums Σ (Q_w x) gᵀ and Σ (P g) xᵀ (used otherwise)."""
    from ldfa.sim.layers import convert, feedback_layers

    torch.manual_seed(0)
    module = {"linear": torch.nn.Linear(6, 5), "tokens": torch.nn.Linear(6, 5),
              "conv": torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)}[kind].double()
    model = torch.nn.Sequential(module)
    convert(model, "ld", rank=2, p_rule="kp", q_rule="kp")
    layer = feedback_layers(model)[0][1]
    x = torch.randn(*{"linear": (7, 6), "tokens": (3, 4, 6), "conv": (3, 3, 6, 6)}[kind], dtype=torch.double)
    g = torch.randn_like(layer.ops.forward(x, layer.weight, None))
    gW = layer.ops.weight_grad(x, g, layer.weight.shape)
    from_dW, batch_side = layer.rule.grads(layer, x, g, gW), layer.rule.grads(layer, x, g, None)
    assert layer.ops.flat(gW).shape[-2] < layer.ops.n_rows(g)  # the dW path is the one taken
    for name in ("P", "Q"):
        torch.testing.assert_close(from_dW[name], batch_side[name], rtol=1e-12, atol=1e-12)
