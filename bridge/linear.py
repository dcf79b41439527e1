"""The linear net of the theory, simulated in torch from the same start (docs/rules.md, "Theory
and simulation").

Set-up shared with :mod:`ldfa.theory.integrate`:

- teacher W* = U diag(s) Vᵀ from :func:`ldfa.theory.config.teacher_matrices` (the one
  teacher generator of the project);
- inputs: N = max(4 n_in, 64) samples, exactly whitened (XᵀX/N = I); with output noise σ the
  noise is exactly orthogonal to the inputs and has covariance σ² I, so that the sample
  loss ½ mean ‖y - ŷ‖² equals the theory's ½‖E‖² + ½ tr Σ at every step;
- full-batch gradient descent with time step ``eta``: step k sits at t = k·eta, the weights
  move with learning rate eta/τ and each rule matrix X with eta/τ_X, so SGD is Euler's
  method for τ_X dX/dt = f; weight decay λ is the optimizer's (on W, and on every rule
  matrix whose flow has a -λX term);
- orientation: rule matrices go to the simulation with
  :func:`ldfa.theory.rules.to_weight_orientation` (B_w = Bᵀ, Q_w = Qᵀ, P as is).

Euler's global error is O(eta): the deviation of a simulated trajectory from the ODE's is
proportional to the step (halving eta halves it), which the tolerances of ``verify_rule``
and ``ldfa verify`` are built on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..sim import models
from ..sim.layers import convert, feedback_layers
from ..theory.config import TheoryConfig, teacher_matrices
from ..theory.errors import ConfigError
from ..theory.rules import from_weight_orientation, resolve, to_weight_orientation


@dataclass
class LinearRun:
    """A simulated trajectory: times, loss, teacher-mode strengths (steps x k), the model."""

    t: np.ndarray
    loss: np.ndarray
    modes: np.ndarray
    model: torch.nn.Module
    teacher: tuple
    extra: dict = field(default_factory=dict)


def linear_data(n_in: int, Wstar: torch.Tensor, seed: int = 0, noise: float = 0.0):
    """(x, y): N = max(4 n_in, 64) exactly whitened inputs (float64) and y = W* x + n, the noise n
    orthogonal to the inputs with ⟨n nᵀ⟩ = noise² I exactly (needs N >= n_in + d)."""
    d = Wstar.shape[0]
    n = max(4 * n_in, 64, n_in + d)
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, n_in + d, generator=g, dtype=torch.float64))[0]
    x = basis[:, :n_in] * math.sqrt(n)
    y = x @ Wstar.T
    if noise:
        y = y + noise * math.sqrt(n) * basis[:, n_in:]
    return x, y


def teacher_tensors(n_in: int, n_out: int, spectrum, seed: int = 0):
    """(W*, U, V) as float64 torch tensors: :func:`ldfa.theory.config.teacher_matrices`."""
    return tuple(torch.as_tensor(a) for a in teacher_matrices(n_in, n_out, spectrum, seed))


def simulate(widths, spectrum, rule="bp", eta=0.005, t_end=10.0, init="aligned", init_scale=1e-2,
             layer_scales=None, seed=0, record_every=1, observe=None, **rule_kw) -> LinearRun:
    """Train DeepLinear(widths) on the whitened linear teacher with full-batch GD (float64).

    init ``aligned``: W_l = a_l R_l R_{l-1}ᵀ in the teacher's modes (R_0 = V, R_L = U), with
    a_l = init_scale or ``layer_scales[l]``; ``random``: N(0, init_scale²/n_in) entries;
    ``first-zero``: random with W_1 = 0. Loss ½ mean ‖y - ŷ‖², so the gradient is -F E.
    ``rule_kw`` go to :func:`ldfa.sim.layers.convert` (rank, p_rule, q_rule, options);
    ``observe(model)``, if given, is recorded with the loss (run.extra["observed"]).
    """
    n_in, d = widths[0], widths[-1]
    k = len(spectrum)
    Wstar, U, V = teacher_tensors(n_in, d, spectrum, seed)
    x, y = linear_data(n_in, Wstar, seed)
    torch.manual_seed(seed)
    model = models.DeepLinear(widths, init_scale=init_scale if init != "aligned" else None).double()
    with torch.no_grad():
        if init == "aligned":
            gen = torch.Generator().manual_seed(seed + 1)
            bases = [V] + [torch.linalg.qr(torch.randn(w, k, generator=gen, dtype=torch.float64))[0]
                           for w in widths[1:-1]] + [U]
            for l, layer in enumerate(model.layers):
                a = (layer_scales or [init_scale] * len(model.layers))[l]
                layer.weight.copy_(a * bases[l + 1] @ bases[l].T)
        elif init == "first-zero":
            model.layers[0].weight.zero_()
    convert(model, rule, seed=seed, **rule_kw)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    return gradient_descent(model, opt, x, y, eta, t_end, record_every, (Wstar, U, V), observe)


def gradient_descent(model, opt, x, y, eta, t_end, record_every, teacher, observe=None) -> LinearRun:
    """Full-batch GD on ½ mean ‖y - ŷ‖² until t = t_end (step k at t = kη), recording the loss,
    the teacher's mode strengths u_αᵀ W_L⋯W_1 v_α and ``observe(model)`` (if given) every
    ``record_every`` steps."""
    _, U, V = teacher
    steps = int(round(t_end / eta))
    ts, losses, modes, observed = [], [], [], []
    for step in range(steps + 1):
        out = model(x)
        loss = 0.5 * F.mse_loss(out, y, reduction="sum") / len(x)
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                Wtot = torch.eye(x.shape[1], dtype=x.dtype)
                for layer in model.layers:
                    Wtot = layer.weight @ Wtot
                ts.append(step * eta)
                losses.append(loss.item())
                modes.append([float(U[:, a] @ Wtot @ V[:, a]) for a in range(U.shape[1])])
                if observe is not None:
                    observed.append(observe(model))
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    extra = {"observed": observed} if observe is not None else {}
    return LinearRun(np.array(ts), np.array(losses), np.array(modes), model, teacher, extra)


def theory_matrix(layer, name: str) -> np.ndarray:
    """The rule matrix ``name`` of a converted layer in the theory's orientation (numpy);
    ``B`` is the feedback matrix of the layer's crossing (B = Q P for ld)."""
    if name == "B":
        value = layer.rule.feedback_weight(layer)
        kind = "feedback"
    else:
        value = getattr(layer, name)
        kind = {"P": "compress", "Q": "expand"}.get(name, "feedback")
        if name == "Q" and value is None:
            value = layer.rule.q_weight(layer)
    value = value.detach().reshape(value.shape[0], -1)
    return np.asarray(from_weight_orientation(kind, value).cpu().numpy())


def _sim_name(direct: bool, index: int, name: str, shared: bool) -> str:
    """The theory's name of matrix ``name`` held by simulation layer ``index`` (0-based): that
    layer sends the error to layer index (1-based), i.e. crossing l = index."""
    if direct:
        return name if shared else f"{name}_{index}"
    return f"{name}_{index + 1}"


def simulate_config(cfg: TheoryConfig, eta: float, record_every: int = 1, implementation: str = "auto",
                    y0=None, seed_data: int | None = None) -> LinearRun:
    """Simulate exactly the theory configuration ``cfg``: the same teacher, the same initial
    weights and rule matrices as :class:`ldfa.theory.integrate.MatrixSystem` (or the state
    ``y0``), full-batch GD with time step η in float64 (see the module docstring).

    ld rules run with lowrank_scale=False (the theory's flow; the 1/√r of the simulation's
    default is a change of τ_P, τ_Q) and, for p_rule svd, svd_refresh 1 and svd_momentum 0
    (P = top_r of this step's covariance). ``implementation``: auto, fast or generic.
    """
    from ..theory.integrate import MatrixSystem

    system = MatrixSystem(cfg)
    y_init, fixed = system.initial()
    y_init = y_init if y0 is None else y0
    mats = dict(zip([X.name for X in system.state], system.unpack(y_init)))
    mats.update({X.name: M for X, M in zip(system.fixed, fixed)})
    Wstar, U, V = (torch.as_tensor(a) for a in (system.Wstar, system.U, system.V))
    x, y = linear_data(cfg.n_in, Wstar, cfg.seed if seed_data is None else seed_data, cfg.noise)
    model = models.DeepLinear(cfg.widths).double()
    spec = resolve(cfg.rule, cfg.p_rule, cfg.q_rule, cfg.direct, rank=cfg.rank, check_rank=False)
    options = {}
    if spec.is_ld:
        options["lowrank_scale"] = False
        if spec.p_rule == "svd":
            options.update(svd_refresh=1, svd_momentum=0.0)
    convert(model, cfg.rule, rank=cfg.rank, p_rule=cfg.p_rule, q_rule=cfg.q_rule, direct=cfg.direct,
            implementation=implementation, **options)
    rule = spec.rule
    lam = system.ode.symbols["lam"]
    groups = []
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.weight.copy_(torch.as_tensor(mats[f"W_{i + 1}"]))
            groups.append({"params": [layer.weight], "lr": eta / cfg.tau, "weight_decay": cfg.weight_decay})
            for name, m in rule.matrices.items():
                theory_name = _sim_name(spec.direct, i, name, spec.direct and m.shared_direct)
                target = getattr(layer, name, None)
                if theory_name not in mats or target is None:
                    continue  # algebraic (computed every step) or not held by this layer
                value = to_weight_orientation(m.shape, torch.as_tensor(mats[theory_name]))
                target.copy_(value.reshape(target.shape))
                if isinstance(target, torch.nn.Parameter):
                    X = next(X for X in system.ode.flows if X.name == theory_name)
                    tau = {"B": cfg.tau_b, "P": cfg.tau_p, "Q": cfg.tau_q}.get(name, cfg.tau_b)
                    decay = cfg.weight_decay if lam in system.ode.flows[X].free_symbols else 0.0
                    groups.append({"params": [target], "lr": eta / tau, "weight_decay": decay})
    learned = {id(p) for g in groups for p in g["params"]}
    stray = [(n, p) for n, p in model.named_parameters() if id(p) not in learned and p.requires_grad]
    unused = [p for n, p in stray if n.startswith("layers.0.")]  # the first layer sends no error
    if len(unused) < len(stray):
        names = [n for n, _ in stray if not n.startswith("layers.0.")]
        raise ConfigError(f"simulate_config: parameters {names} have no counterpart in the theory state")
    if unused:
        groups.append({"params": unused, "lr": 0.0})
    opt = torch.optim.SGD(groups, lr=eta)
    return gradient_descent(model, opt, x, y, eta, cfg.t_end, record_every, (Wstar, U, V))


def feedback_matrices(model) -> dict:
    """{layer name: the crossing's feedback matrix B in theory orientation} of a converted model."""
    return {name: theory_matrix(layer, "B") for name, layer in feedback_layers(model)
            if not layer.rule.direct}
