"""Many seeds (or configurations) of a linear net or small MLP in one batched computation.

Every weight carries a leading seed dimension S: W (S, n_out, n_in), inputs (S, batch, n_in).
The loss is the sum over seeds of each seed's mean loss, so each seed's gradient is exactly
its own; `convert` gives the layers the same feedback rules as single networks
(:class:`~ldfa.sim.ops.BatchedLinearOps`).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..theory.errors import ConfigError
from ..theory.rules import PRESETS
from .layers import BatchedLinear, FeedbackLayer, convert

# the rules whose fast paths run on BatchedLinear (ldfa.sim.layers.batched_capable)
BATCHED_RULES = ("bp", "fa", "kp", "ld", *PRESETS)


class BatchedMLP(nn.Module):
    """S copies of MLP(widths) (activation None: a deep linear net), trained side by side."""

    def __init__(self, seeds: int, widths, activation: str | None = "tanh", bias: bool = True):
        super().__init__()
        acts = {None: nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ConfigError(f"activation {activation!r}; allowed: relu, tanh, None (linear)")
        self.layers = nn.ModuleList(BatchedLinear(seeds, a, b, bias) for a, b in zip(widths, widths[1:]))
        self.act = acts[activation]()
        self.seeds, self.widths = seeds, list(widths)

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x

    @classmethod
    def from_models(cls, models, activation="tanh"):
        """Stack the weights of S single models (their nn.Linear or linear FeedbackLayers, in
        module order) into one BatchedMLP; feedback matrices are not copied."""
        linears = [[m for m in model.modules() if isinstance(m, nn.Linear)
                    or (isinstance(m, FeedbackLayer) and m.ops.kind == "linear")] for model in models]
        widths = [linears[0][0].weight.shape[1]] + [lin.weight.shape[0] for lin in linears[0]]
        out = cls(len(models), widths, activation, bias=linears[0][0].bias is not None)
        with torch.no_grad():
            for i, layer in enumerate(out.layers):
                layer.weight.copy_(torch.stack([ls[i].weight for ls in linears]))
                if layer.bias is not None:
                    layer.bias.copy_(torch.stack([ls[i].bias for ls in linears]))
        return out


@torch.no_grad()
def init_like_torch(model: BatchedMLP, seeds) -> BatchedMLP:
    """Give seed s the weights torch.manual_seed(s) + nn.Linear's default init would give: the
    same init calls as nn.Linear.reset_parameters, in the same order, on seed s's slices, from
    a generator seeded like the global one (same stream; the global RNG is left alone, and
    torch.manual_seed's own cost, ~0.7 ms a call here, is avoided)."""
    for s, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(int(seed))
        for layer in model.layers:
            nn.init.kaiming_uniform_(layer.weight[s], a=math.sqrt(5), generator=gen)
            if layer.bias is not None:
                bound = 1 / math.sqrt(layer.weight.shape[2])
                nn.init.uniform_(layer.bias[s], -bound, bound, generator=gen)
    return model


def seed_batches(n: int, batch_size: int, seeds, steps: int, device="cpu") -> torch.Tensor:
    """(steps, S, batch) sample indices; seed s draws its own epochs of permutations, so a
    seed sees the same batches whether it is trained alone or with others."""
    epochs = math.ceil(steps * batch_size / n)
    streams = []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
        streams.append(order[: steps * batch_size].view(steps, batch_size))
    return torch.stack(streams, 1).to(device)


def train_batched(x, y, widths, rule="bp", seeds=range(8), steps=100, batch_size=64, lr=0.05,
                  activation="tanh", rank=None, p_rule=None, q_rule=None, log_every=10,
                  model: BatchedMLP | None = None):
    """Train len(seeds) networks at once with SGD; returns (model, losses (S x logged steps)).

    Targets: class labels (cross-entropy) or real vectors (½ squared error, summed over outputs).
    """
    if rule not in BATCHED_RULES:
        raise ConfigError(f"rule {rule!r} is not available batched; allowed: {', '.join(BATCHED_RULES)}")
    seeds = list(seeds)
    if model is None:
        model = init_like_torch(BatchedMLP(len(seeds), widths, activation), seeds)
        convert(model, rule, rank=rank, p_rule=p_rule, q_rule=q_rule, seed=seeds[0])
    model.to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, foreach=True)  # one fused update for all weights
    losses = []
    for step, idx in enumerate(seed_batches(len(x), batch_size, seeds, steps, x.device), start=1):
        xb, yb = x[idx], y[idx]
        out = model(xb)
        if yb.dtype == torch.long:
            per_seed = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            per_seed = per_seed.view(len(seeds), -1).mean(1)
        else:
            per_seed = 0.5 * ((out - yb) ** 2).sum(-1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_seed.sum().backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            losses.append(per_seed.detach())
        if not math.isfinite(per_seed.sum().item()):
            raise FloatingPointError(f"loss became non-finite at step {step}; lower the lr")
    return model, torch.stack(losses, 1)


def time_batched_vs_loop(x, y, widths, seeds=64, steps=50, repeats=3, **kw) -> dict:
    """Seconds for len(seeds) runs batched vs one after another (same work, same results),
    ``repeats`` times, interleaved; the speed-up of each repeat is loop / batched."""
    train_batched(x, y, widths, seeds=range(2), steps=2, **kw)  # warm-up (first-call costs)
    batched, loop = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_batched(x, y, widths, seeds=range(seeds), steps=steps, **kw)
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in range(seeds):
            train_batched(x, y, widths, seeds=[s], steps=steps, **kw)
        loop.append(time.perf_counter() - t0)
    speedups = [lo / b for lo, b in zip(loop, batched)]
    return {"batched_s": statistics.median(batched), "loop_s": statistics.median(loop),
            "speedup": statistics.median(speedups), "speedup_min": min(speedups),
            "speedup_max": max(speedups)}
