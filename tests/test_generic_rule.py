"""The generic path (ldfa.sim.generic) equals every hand-written fast path, and trains any rule.

Equality: the error sent down to the input and every .grad, float64, on random matrices, on
an MLP and on a CNN (conv: every position a sample), to 1e-10. The stochastic rules (wm and
the mirror q_rule) draw white noise; here the noise is replaced by an exactly white sample
(ξᵀξ/m = I), for which their estimate equals the theory's mean, on layers whose noise patches
do not overlap (docs/rules.md, "Conventions").
"""

import math

import pytest
import torch
from torch import nn

from ldfa.errors import ConfigError
from ldfa.sim.feedback import LowDim, WeightMirror
from ldfa.sim.generic import GenericRule, evaluate
from ldfa.sim.layers import convert, feedback_parameters
from ldfa.theory import FeedbackRule, Matrix, register_rule, rules

TOL = 1e-10


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()


def cnn_one_patch():
    """Convolutions whose every example has one patch (3x3 kernel on 3x3, 1x1 on 1x1)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4, 4)).double()


def white_noise(shape, like):
    """An exactly white sample: m examples with Σ ξ ξᵀ / m = I (needs m >= the example size)."""
    m, n = shape[0], math.prod(shape[1:])
    g = torch.Generator().manual_seed(11)
    q = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))[0]
    return (q * math.sqrt(m)).reshape(shape).to(like.dtype)


SVD = dict(svd_momentum=0.0, svd_refresh=1)  # the theory's P = top_r(C) of this batch
CASES = [("bp", {}), ("fa", {}), ("kp", {}), ("dfa", {}), ("wm", {}),
         ("ld", dict(rank=2)), ("ldfa", dict(rank=2)), ("ldfa-local", dict(rank=2)), ("raf", dict(rank=2)),
         ("ld", dict(rank=2, direct=True)), ("ld", dict(rank=2, direct=True, p_rule="fixed"))]
CASES += [("ld", dict(rank=2, p_rule=p, q_rule=q, **(SVD if p == "svd" else {})))
          for p in rules.P_RULES for q in rules.Q_RULES]
INPUTS = {mlp: (9, 7), cnn: (5, 2, 6, 6), cnn_one_patch: (6, 2, 3, 3)}


def run(model, x, c):
    x = x.clone().requires_grad_(True)
    (model(x) * c).sum().backward()
    return x.grad, {n: p.grad for n, p in model.named_parameters()}


def compare(make, rule, kw):
    torch.manual_seed(5)
    x = torch.randn(*INPUTS[make], dtype=torch.float64)
    c = torch.randn(x.shape[0], 4, dtype=torch.float64)
    fast = convert(make(), rule, seed=1, implementation="fast", input_shape=x.shape[1:], **kw)
    gen = convert(make(), rule, seed=1, implementation="generic", input_shape=x.shape[1:], **kw)
    assert all(isinstance(m.rule, GenericRule) for m in gen if hasattr(m, "rule"))
    assert not any(isinstance(m.rule, GenericRule) for m in fast if hasattr(m, "rule"))
    for model in (fast, gen):
        for m in model:
            if isinstance(getattr(m, "rule", None), (WeightMirror, LowDim)):
                m.rule.noise = white_noise
    gen.load_state_dict(fast.state_dict(), strict=False)  # aligned Q is a buffer only on the generic path
    (gx_f, grads_f), (gx_g, grads_g) = run(fast, x, c), run(gen, x, c)
    torch.testing.assert_close(gx_g, gx_f, rtol=0, atol=TOL)
    assert set(grads_f) == set(grads_g)
    for name in grads_f:
        scale = max(1.0, float(grads_f[name].abs().max()))
        torch.testing.assert_close(grads_g[name], grads_f[name], rtol=0, atol=TOL * scale, msg=name)
    return grads_f


@pytest.mark.parametrize("rule,kw", CASES, ids=[f"{r}-{sorted(k.items())}" for r, k in CASES])
def test_generic_equals_fast_on_linear(rule, kw):
    grads = compare(mlp, rule, kw)
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("rule,kw", CASES, ids=[f"{r}-{sorted(k.items())}" for r, k in CASES])
def test_generic_equals_fast_on_conv(rule, kw):
    stochastic = rule == "wm" or kw.get("q_rule") == "mirror"
    compare(cnn_one_patch if stochastic else cnn, rule, kw)


def test_same_initial_matrices_on_both_paths():
    for rule, kw in CASES:
        a = convert(mlp(), rule, seed=3, implementation="fast", **kw).state_dict()
        b = convert(mlp(), rule, seed=3, implementation="generic", **kw).state_dict()
        for k in set(a) & set(b):
            assert torch.equal(a[k], b[k]), (rule, kw, k)


def test_lowrank_scale_auto_is_linear_only():
    lin = convert(mlp(), "ldfa", rank=2)[2].rule
    conv = convert(cnn(), "ldfa", rank=2)[2].rule
    assert lin.scale == pytest.approx(1 / math.sqrt(2)) and conv.scale == 1.0
    assert convert(cnn(), "ldfa", rank=2, lowrank_scale=True)[2].rule.scale == pytest.approx(1 / math.sqrt(2))
    assert convert(mlp(), "ldfa", rank=2, lowrank_scale=False)[2].rule.scale == 1.0


KP_HALF = FeedbackRule("kp-half-test", "Kolen-Pollack at half speed",
                       matrices={"B": Matrix(flow=lambda c: c.dW.T / 2 - c.lam * c.B, needs_dW=True)},
                       feedback=lambda c: c.B)


@pytest.fixture
def kp_half():
    register_rule(KP_HALF)
    yield KP_HALF.name
    rules.RULES.pop(KP_HALF.name, None)


def test_a_rule_registered_at_run_time_trains(kp_half):
    """Its .grad is the negative of its flow: half the weight's gradient, in weight orientation."""
    model = convert(mlp(), kp_half, seed=2)
    assert isinstance(model[2].rule, GenericRule) and model[2].rule.learned == ("B",)
    x, c = torch.randn(9, 7, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    gx, grads = run(model, x, c)
    torch.testing.assert_close(grads["2.B"], grads["2.weight"] / 2, rtol=0, atol=1e-15)
    assert feedback_parameters(model) == [model[0].B, model[2].B, model[4].B]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[2].B.detach().clone()
    opt.step()
    assert not torch.equal(before, model[2].B)


def test_rule_state_exists_right_after_convert():
    """dfa and direct ld matrices are created by convert: the same state before and after a step,
    and .to() moves all of it."""
    for make, shape in ((mlp, (7,)), (cnn, (2, 6, 6))):
        for rule, kw in (("dfa", {}), ("ld", dict(rank=2, direct=True))):
            model = convert(make(), rule, input_shape=shape, conv_feedback="full", **kw)
            keys = {k: v.shape for k, v in model.state_dict().items()}
            assert any(k.endswith(".D") or k.endswith(".Q") for k in keys)
            x = torch.randn(3, *shape, dtype=torch.float64)
            model(x).sum().backward()
            assert {k: v.shape for k, v in model.state_dict().items()} == keys
            model.float()
            assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())


def test_conv_direct_without_input_shape_is_created_at_first_use():
    model = convert(cnn(), "dfa", conv_feedback="full")  # d x C_in·H·W: needs the image size
    assert "2.D" not in model.state_dict()
    model(torch.randn(2, 2, 6, 6, dtype=torch.float64)).sum().backward()
    assert model.state_dict()["2.D"].shape == (4, 4 * 6 * 6)


def test_the_generic_path_refuses_what_it_cannot_evaluate():
    with pytest.raises(ConfigError, match="no expressions"):
        convert(mlp(), "sign", implementation="generic")
    with pytest.raises(ConfigError, match="cannot use W"):
        convert(mlp(), "ld", rank=2, direct=True, q_rule="aligned", implementation="generic")(
            torch.randn(2, 7, dtype=torch.float64)).sum().backward()
    import sympy as sp

    A = sp.MatrixSymbol("A", 2, 2)
    with pytest.raises(ConfigError, match="cannot evaluate"):
        evaluate(sp.Adjoint(A), {A: torch.eye(2)})
