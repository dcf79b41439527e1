"""Target propagation: iterating an approximate inverse converges exponentially, at the
rate the contraction of I - J_g J_f predicts."""

import pytest
import torch

from ldfa.errors import ConfigError
from ldfa.sim.target_prop import contraction, refine_target


def asymptotic_rate(errors, floor=1e-11, window=5):
    """Geometric rate over the last ``window`` steps before the error reaches ``floor``
    (below that, float64 round-off sets the error, not the iteration)."""
    last = int(torch.nonzero(errors > floor).max())
    return float((errors[last] / errors[last - window]) ** (1 / window)), last


def test_linear_layer_rate_matches_the_spectral_radius():
    gen = torch.Generator().manual_seed(0)
    n = 6
    A = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    B = torch.linalg.inv(A) + 0.08 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    f, g = (lambda x: A @ x), (lambda y: B @ y)
    x_star = torch.randn(n, generator=gen, dtype=torch.float64)
    xs = refine_target(f, g, f(x_star), torch.zeros(n, dtype=torch.float64), iters=60)
    errors = torch.stack([(x - x_star).norm() for x in xs])
    norm, radius = contraction(f, g, x_star)
    assert radius < norm < 1  # contractive
    measured, last = asymptotic_rate(errors)
    assert torch.all(errors[1:last] <= norm * errors[:last - 1] * (1 + 1e-9))  # every step within the bound
    assert measured == pytest.approx(radius, rel=0.05)
    assert last >= 8 and errors[-1] < 1e-12 * errors[0]


def test_nonlinear_layer_converges_within_the_local_bound():
    gen = torch.Generator().manual_seed(1)
    n = 5
    W = torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    Winv = torch.linalg.inv(W)
    f = lambda x: torch.tanh(W @ x)  # noqa: E731
    g = lambda y: Winv @ (1.5 * y)  # an approximate inverse (linear, off by half)  # noqa: E731
    x_star = 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    xs = refine_target(f, g, f(x_star), torch.zeros(n, dtype=torch.float64), iters=120)
    errors = torch.stack([(x - x_star).norm() for x in xs])
    _, radius = contraction(f, g, x_star)
    assert radius < 1
    measured, last = asymptotic_rate(errors)
    assert measured == pytest.approx(radius, rel=0.05)
    assert last >= 8 and errors[-1] < 1e-12


def test_expanding_inverse_diverges():
    A = torch.eye(3, dtype=torch.float64)
    f, g = (lambda x: A @ x), (lambda y: 2.5 * y)  # I - g f = -1.5 I: not contractive
    xs = refine_target(f, g, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 10)
    assert contraction(f, g, torch.ones(3, dtype=torch.float64))[1] == pytest.approx(1.5)
    assert (xs[-1] - 1).norm() > 10 * (xs[0] - 1).norm()


def test_bad_iteration_count():
    with pytest.raises(ConfigError, match="k=0"):
        refine_target(lambda x: x, lambda y: y, torch.ones(2), torch.zeros(2), 0)


# ---------------------------------------------------------------------------- the dtp / ddtp rules

from ldfa.sim.models import MLP, DeepLinear  # noqa: E402
from ldfa.sim.target_prop import TargetProp, TargetPropMLP  # noqa: E402
from ldfa.sim.train import TrainConfig  # noqa: E402


def _errors_after_backward(net, x, grad_out):
    """The error each block receives (∂/∂h_l of the batch loss as the rule delivers it)."""
    hs = [x.requires_grad_(True)]
    for block in net.blocks:
        h = block(hs[-1])
        h.retain_grad()
        hs.append(h)
    hs[-1].backward(grad_out)
    return [h.grad for h in hs[1:-1]]


def _linear_tp(n, depth, iters, beta, perturb, seed=0, normalize=False):
    torch.manual_seed(seed)
    base = DeepLinear([n] * (depth + 1), bias=True).double()
    with torch.no_grad():
        for layer in base.layers:
            layer.weight.copy_(torch.eye(n) + 0.3 * torch.randn(n, n) / n**0.5)
    net = TargetPropMLP(base, TargetProp("ddtp", iters, beta, 0.0, normalize)).double()
    with torch.no_grad():
        for block in net.blocks[1:]:
            W, b = block.linear.weight, block.linear.bias
            Winv = torch.linalg.inv(W)
            block.inverse.weight.copy_(Winv + perturb * torch.randn(n, n, dtype=torch.float64) / n**0.5)
            block.inverse.bias.copy_(-block.inverse.weight @ b)
    return net


def test_exact_inverse_carries_the_gauss_newton_error():
    """g = f⁻¹ (linear, square): one difference-corrected step gives e_{l-1} = W_l⁻¹ e_l exactly,
    for any β (the target reaches exactly)."""
    n = 6
    net = _linear_tp(n, 2, iters=1, beta=0.7, perturb=0.0)
    x, grad = torch.randn(4, n, dtype=torch.float64), torch.randn(4, n, dtype=torch.float64)
    (e1,) = _errors_after_backward(net, x, grad)
    W2 = net.blocks[1].linear.weight.detach()
    assert torch.allclose(e1, torch.linalg.solve(W2, grad.T).T, atol=1e-12)


def test_iterated_inverse_error_shrinks_at_the_contraction_rate():
    """Approximate inverse V = W⁻¹ + noise: the error after k iterations approaches W⁻¹ e as
    ‖(I - V W)^k‖, the same rate refine_target has (measured over k = 1..8)."""
    n = 6
    x, grad = torch.randn(4, n, dtype=torch.float64), torch.randn(4, n, dtype=torch.float64)
    gaps = []
    for k in range(1, 9):
        net = _linear_tp(n, 2, iters=k, beta=0.05, perturb=0.25)
        (e1,) = _errors_after_backward(net, x, grad)
        W, V = net.blocks[1].linear.weight.detach(), net.blocks[1].inverse.weight.detach()
        gaps.append(float((e1 - torch.linalg.solve(W, grad.T).T).norm()))
    M = torch.eye(n, dtype=torch.float64) - V @ W
    radius = float(torch.linalg.eigvals(M).abs().max())
    assert radius < 1
    measured = (gaps[-1] / gaps[-5]) ** (1 / 4)
    assert measured == pytest.approx(radius, rel=0.1)
    assert gaps[-1] < 0.1 * gaps[0]


def test_influence_normalization_is_the_bp_step_projected_on_the_target():
    """normalize, exact inverses: layer l's update uses s_l d_l with s_l = ‖d_L‖²/‖d_l‖², which
    equals the per-example bp error G_l projected on the target direction d_l (docstring)."""
    n, B = 5, 4
    net = _linear_tp(n, 3, iters=1, beta=0.3, perturb=0.0, normalize=True)
    x, grad = torch.randn(B, n, dtype=torch.float64), torch.randn(B, n, dtype=torch.float64)
    out = net(x)
    out.backward(grad)
    Ws = [b.linear.weight.detach() for b in net.blocks]
    hs = [x]
    for W, b in zip(Ws, net.blocks):
        hs.append(hs[-1] @ W.T + b.linear.bias.detach())
    for l in (0, 1):  # blocks 0 and 1 (their outputs h_1, h_2 get targets)
        J = Ws[2] if l == 1 else Ws[2] @ Ws[1]  # ∂h_L/∂h_{l+1}
        G = (B * grad) @ J  # per-example bp error at h_{l+1}
        d = torch.linalg.solve(J, (-0.3 * B * grad).T).T  # exact target direction
        proj = ((G * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True)) * d
        expected = proj.T @ hs[l] / B
        assert torch.allclose(net.blocks[l].linear.weight.grad, expected, atol=1e-10)


def test_weight_updates_are_local_gradients_and_the_top_layer_matches_bp():
    torch.manual_seed(3)
    mlp = MLP([8, 7, 6, 3], "tanh").double()
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    torch.nn.functional.cross_entropy(mlp(x), y).backward()
    bp = [layer.weight.grad.clone() for layer in mlp.layers]
    mlp.zero_grad()
    net = TargetPropMLP(mlp, TargetProp("dtp", 1, 0.5, 0.1, False)).double()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    assert torch.allclose(mlp.layers[-1].weight.grad, bp[-1], atol=1e-14)
    for block in net.blocks[1:]:
        assert block.inverse.weight.grad is not None and block.inverse.weight.grad.abs().sum() > 0
    # the hidden layers do not get bp's gradient: targets through random inverses, not transport
    cos = torch.nn.functional.cosine_similarity(mlp.layers[0].weight.grad.flatten(), bp[0].flatten(), dim=0)
    assert abs(cos) < 1 - 1e-6


def test_inverse_learning_lowers_reconstruction_error():
    torch.manual_seed(0)
    net = TargetPropMLP(MLP([20, 16, 16, 4], "tanh"), TargetProp("dtp", 1, 0.5, 0.1, False))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(256, 20)
    y = torch.randint(0, 4, (256,))

    def rec():
        with torch.no_grad():
            h = net.blocks[0](x)
            return float((net.blocks[1].g(net.blocks[1].f(h)) - h).pow(2).sum(1).mean())

    before = rec()
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert rec() < 0.5 * before


@pytest.mark.parametrize("kw, match", [
    (dict(rule="ddtp", inverse_iters=0), "inverse_iters=0"),
    (dict(rule="ddtp", inverse_iters=-2), "inverse_iters=-2"),
    (dict(rule="dtp", inverse_iters=3), "ddtp"),
    (dict(rule="dtp", model="cnn"), "mlp or linear"),
    (dict(rule="fa", inverse_iters=2), "dtp and ddtp only"),
    (dict(rule="ddtp", tp_beta=-1.0), "beta=-1.0"),
])
def test_bad_target_prop_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg = TrainConfig(**kw)
        cfg.target_prop()


def test_target_prop_needs_a_fully_connected_model():
    from ldfa.sim.models import ConvNet

    with pytest.raises(ConfigError, match="ConvNet"):
        TargetPropMLP(ConvNet(), TargetProp("dtp", 1, 0.5, 0.1, False))


@pytest.mark.parametrize("rule, iters", [("dtp", 1), ("ddtp", 4)])
def test_updates_are_batch_mean_invariant(rule, iters):
    """B identical copies of one example give the same updates as the example alone: the target
    step is β ∂ℓ/∂h_L per example (B · the batch-mean gradient), for nonlinear inverses too."""
    def grads(batch):
        torch.manual_seed(5)
        net = TargetPropMLP(MLP([6, 5, 5, 3], "tanh"), TargetProp(rule, iters, 0.5, 0.0, True)).double()
        x = torch.randn(1, 6, dtype=torch.float64).expand(batch, 6)
        torch.nn.functional.cross_entropy(net(x), torch.zeros(batch, dtype=torch.long)).backward()
        return [p.grad.clone() for p in net.parameters()]

    for a, b in zip(grads(1), grads(7)):
        assert torch.allclose(a, b, atol=1e-12)


def test_wrapping_a_float64_model_keeps_its_dtype():
    net = TargetPropMLP(MLP([4, 3, 3, 2], "tanh").double(), TargetProp("ddtp", 2, 0.1, 0.1, False))
    assert net.blocks[1].inverse.weight.dtype == torch.float64
    net(torch.randn(3, 4, dtype=torch.float64)).sum().backward()


def test_normalize_needs_the_backward_to_start_at_the_output():
    net = TargetPropMLP(MLP([4, 3, 3, 2], "tanh"), TargetProp("dtp", 1, 0.5, 0.1, True))
    state = {}
    h = net.blocks[1](net.blocks[0](torch.randn(2, 4), state), state)
    with pytest.raises(RuntimeError, match="start at the output block"):
        h.sum().backward()


@pytest.mark.parametrize("kw, match", [
    (dict(rule="dtp", tp_beta=0.0), "beta=0.0"),
    (dict(rule="ddtp", tp_noise=-1.0), "tp_noise=-1.0"),
    (dict(rule="bp", tp_normalize=True), "dtp and ddtp only"),
    (dict(rule="fa", tp_noise=0.3), "dtp and ddtp only"),
])
def test_target_prop_settings_are_checked_when_configured(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)
