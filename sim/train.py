"""Training loop: any model, any rule, logged metrics (nanoGPT-style: the step fits one screen)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..theory.errors import ConfigError
from ..theory.trajectory import atomic_write
from . import data as datasets
from . import models
from .feedback import P_RULES, PRESETS, Q_RULES
from .layers import RULES, convert, feedback_layers, feedback_parameters, forward_parameters, set_tracking
from .target_prop import TP_DEFAULTS, TP_RULES, TargetProp, TargetPropMLP

OPTIMIZERS = ("sgd", "adam", "adamw")
TRANSFER = ("toast", "probe", "finetune")
LD_RULES = ("ld", *PRESETS)
ALL_RULES = (*RULES, *TP_RULES)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``steps`` (if set) overrides ``epochs``; fb_* default to the main values."""

    model: str = "mlp"
    hidden: tuple = (256, 256)
    data: str = "fashion-mnist"
    data_root: str | None = None
    rule: str = "bp"
    rank: int | None = None
    p_rule: str | None = None
    q_rule: str | None = None
    direct: bool = False
    scaling: str = "usf"
    init: str | None = None
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    fb_lr: float | None = None
    fb_weight_decay: float | None = None
    clamp: float | None = None
    clip_rank: bool = False
    inverse_iters: int | None = None
    tp_beta: float | None = None
    tp_noise: float = 0.1
    tp_normalize: bool = False
    seed: int = 0
    device: str = "cpu"
    log_every: int = 100
    classes: tuple | None = None
    transfer: str | None = None
    backbone: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    model_options: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.transfer is not None:
            if self.transfer not in TRANSFER:
                raise ConfigError(f"transfer={self.transfer!r}; allowed: {', '.join(TRANSFER)}")
            if not self.backbone:
                raise ConfigError(f"transfer={self.transfer!r} needs a pre-trained backbone (--backbone)")
            if self.rule != "bp":
                raise ConfigError(f"transfer={self.transfer!r} trains with rule bp, not {self.rule!r}")
            if self.model != "vit":
                raise ConfigError(f"transfer={self.transfer!r} adapts a vision transformer: model "
                                  f"{self.model!r} has no attention blocks; use model 'vit'")
        elif self.backbone:
            raise ConfigError("--backbone needs --transfer (toast, probe or finetune)")
        if self.rule not in ALL_RULES:
            raise ConfigError(f"unknown rule {self.rule!r}; allowed: {', '.join(ALL_RULES)}")
        if self.rule in TP_RULES:
            if self.model not in ("mlp", "linear"):
                raise ConfigError(f"rule {self.rule!r} needs model mlp or linear, not {self.model!r}")
            self.target_prop()  # checks k, β and σ now, before any data is loaded
            if self.rule == "dtp" and self.inverse_iters not in (None, 1):
                raise ConfigError(f"inverse_iters={self.inverse_iters}: dtp uses one inverse step; "
                                  "use rule ddtp for k > 1")
        elif (self.inverse_iters is not None or self.tp_beta is not None or self.tp_normalize
              or self.tp_noise != TrainConfig.tp_noise):
            raise ConfigError(f"--inverse-iters/--tp-beta/--tp-noise/--tp-normalize apply to dtp and ddtp "
                              f"only, not to {self.rule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        for name in ("batch_size", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: must be a positive integer")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"steps={self.steps!r}: must be a positive integer")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ConfigError(f"epochs={self.epochs!r}: must be a positive number")
        if not (self.lr > 0):
            raise ConfigError(f"lr={self.lr!r}: must be positive")
        is_ld = self.rule in LD_RULES
        if is_ld and self.rank is None:
            raise ConfigError(f"rule {self.rule!r} needs a rank r (--rank)")
        if not is_ld and self.rank is not None:
            raise ConfigError(f"rank applies to ld rules only, not to {self.rule!r}")
        if not is_ld and (self.p_rule or self.q_rule):
            raise ConfigError(f"--p-rule/--q-rule apply to ld rules only, not to {self.rule!r}")
        if self.p_rule and self.p_rule not in P_RULES:
            raise ConfigError(f"unknown p_rule {self.p_rule!r}; allowed: {', '.join(P_RULES)}")
        if self.q_rule and self.q_rule not in Q_RULES:
            raise ConfigError(f"unknown q_rule {self.q_rule!r}; allowed: {', '.join(Q_RULES)}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"device={self.device!r}; allowed: cpu, cuda, cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={self.device!r}: CUDA is not available on this machine; use cpu")

    def target_prop(self) -> TargetProp:
        """The dtp / ddtp settings (defaults per rule in target_prop.TP_DEFAULTS)."""
        d = TP_DEFAULTS[self.rule]
        iters = d["iters"] if self.inverse_iters is None else self.inverse_iters
        beta = d["beta"] if self.tp_beta is None else self.tp_beta
        return TargetProp(self.rule, iters, beta, self.tp_noise, self.tp_normalize)

    def rule_options(self) -> dict:
        opts = dict(rank=self.rank, p_rule=self.p_rule, q_rule=self.q_rule, seed=self.seed)
        if self.direct:
            opts["direct"] = True
        if self.rule == "sign":
            opts["scaling"] = self.scaling
        if self.init:
            opts["init"] = self.init
        return opts


def build(cfg: TrainConfig):
    """(model, train set, test set), all validated and on cfg.device, before any training."""
    flat = cfg.model in ("linear", "mlp")
    train_set = datasets.load(cfg.data, cfg.data_root, "train", flatten=flat)
    test_set = datasets.load(cfg.data, cfg.data_root, "test", flatten=flat)
    if cfg.classes:
        train_set, test_set = train_set.select_classes(cfg.classes), test_set.select_classes(cfg.classes)
    if cfg.train_subset:
        train_set = train_set.subset(cfg.train_subset)
    if cfg.test_subset:
        test_set = test_set.subset(cfg.test_subset)
    classes = train_set.num_classes or train_set.y.shape[1]
    torch.manual_seed(cfg.seed)
    kw = dict(cfg.model_options)
    if cfg.model in ("linear", "mlp"):
        kw.setdefault("hidden", list(cfg.hidden))
    if cfg.transfer:
        return _transfer_model(cfg, train_set.input_shape, classes, kw).to(cfg.device), \
            train_set.to(cfg.device), test_set.to(cfg.device)
    model = models.build(cfg.model, train_set.input_shape, classes, **kw)
    if cfg.rule in TP_RULES:
        model = TargetPropMLP(model, cfg.target_prop())
    else:
        convert(model, cfg.rule, clip_rank=cfg.clip_rank, **cfg.rule_options())
    return model.to(cfg.device), train_set.to(cfg.device), test_set.to(cfg.device)


def _transfer_model(cfg: TrainConfig, input_shape, classes: int, kw: dict):
    """The pre-trained backbone (its own class count read from the file) wrapped for transfer:
    toast (sim/toast.py), probe (frozen, new linear head) or finetune (all weights, new head)."""
    from .toast import TOAST, LinearProbe

    state = load_state(cfg.backbone)
    if {"model", "optimizer", "step"} <= set(state):
        raise ConfigError(f"backbone {cfg.backbone} is a training checkpoint (--checkpoint), not a model "
                          "file; write one with --save-model")
    head = state.get("head.weight")
    if head is None:
        raise ConfigError(f"backbone {cfg.backbone}: no head.weight, so not a saved vit "
                          f"(keys: {', '.join(list(state)[:4])}, ...); write one with ldfa train --model vit "
                          "--save-model")
    backbone = models.build(cfg.model, input_shape, head.shape[0], **kw)  # a vit: TrainConfig checked
    mismatch = _state_mismatch(backbone.state_dict(), state)
    if mismatch:
        raise ConfigError(f"backbone {cfg.backbone} does not fit model {cfg.model!r} with options {kw}: "
                          f"{mismatch}")
    backbone.load_state_dict(state)
    if cfg.transfer == "toast":
        return TOAST(backbone, classes)
    if cfg.transfer == "probe":
        return LinearProbe(backbone, classes)
    backbone.head = torch.nn.Linear(backbone.head.in_features, classes)
    return backbone


def _state_mismatch(expected: dict, saved: dict) -> str:
    """What keeps ``saved`` from loading into a model whose state is ``expected`` ('' if nothing)."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in saved and saved[k].shape != v.shape]
    parts = [f"{label}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
             for label, items in (("shape (saved vs model)", shapes), ("missing", missing),
                                  ("unexpected", extra)) if items]
    if any(k.rsplit(".", 1)[-1] in ("B", "P", "Q", "D") for k in extra):
        parts.append("the backbone was trained with a feedback rule: train it with bp for --transfer")
    return "; ".join(parts)


def load_state(path) -> dict:
    """A saved state dict (torch.save); a missing or unreadable file is a one-line error."""
    if not Path(path).is_file():
        raise ConfigError(f"backbone file {path} does not exist; train one with --save-model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError("not a state dict")
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ConfigError(f"backbone file {path} is corrupt ({type(err).__name__}: {err})") from None
    return state


def save_state(model, path) -> Path:
    """The model's state dict (or a state dict itself): a backbone for --transfer, written atomically."""
    return _torch_save(model if isinstance(model, dict) else model.state_dict(), path)


def _torch_save(obj, path) -> Path:
    """torch.save through theory's atomic_write: a crash never leaves half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def make_optimizer(cfg: TrainConfig, model):
    """One optimizer, two parameter groups: forward weights, and the rules' own B, P, Q."""
    fb = feedback_parameters(model)
    groups = [dict(params=forward_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if fb:
        groups.append(dict(params=fb, lr=cfg.fb_lr or cfg.lr,
                           weight_decay=cfg.weight_decay if cfg.fb_weight_decay is None
                           else cfg.fb_weight_decay))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW)(groups, lr=cfg.lr)


def loss_fn(out, y):
    return F.cross_entropy(out, y) if y.dtype == torch.long else 0.5 * F.mse_loss(out, y) * out.shape[-1]


@torch.no_grad()
def evaluate(model, dataset, batch_size=1000) -> dict:
    model.eval()
    total, loss, correct = 0, 0.0, 0
    for x, y in dataset.batches(batch_size, shuffle=False):
        out = model(x)
        loss += float(loss_fn(out, y)) * len(x)
        if y.dtype == torch.long:
            correct += int((out.argmax(1) == y).sum())
        total += len(x)
    model.train()
    out = {"test_loss": loss / total}
    if dataset.num_classes:
        out["test_acc"] = correct / total
    return out


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; what was logged up to then is kept."""


def train(cfg: TrainConfig, log_path=None, progress: bool = True, checkpoint=None,
          checkpoint_every: int = 0) -> dict:
    """Train; append a JSON line per logging step to ``log_path``; return the summary.

    With ``checkpoint`` (a path) the full state — model (W, B, P, Q), optimizer, data order
    and RNG states, history — is saved atomically every ``checkpoint_every`` steps, and a run
    started again with the same checkpoint resumes where it stopped, bit-identically on CPU.
    """
    model, train_set, test_set = build(cfg)
    opt = make_optimizer(cfg, model)
    model, rank, world = _distributed(model, cfg)
    core = model.module if world > 1 else model  # the network itself (DDP wraps it)
    log_path = log_path if rank == 0 else None
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = cfg.steps or max(1, round(cfg.epochs * steps_per_epoch))
    gen = torch.Generator(device=train_set.device).manual_seed(cfg.seed)
    history, start, epoch, in_epoch, epoch_gen = [], 1, 0, 0, None
    if checkpoint and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, cfg)
        _load_model_state(core, state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history, start, epoch = state["history"], state["step"] + 1, state["epoch"]
        in_epoch, epoch_gen = state["in_epoch"], state["epoch_gen"]
    batches = iter(())
    if epoch_gen is not None:  # re-enter the interrupted epoch: same permutation, skip what was done
        gen.set_state(epoch_gen)
        batches = train_set.batches(cfg.batch_size, shuffle=True, generator=gen)
        for _ in range(in_epoch):
            next(batches)
    log = open(log_path, "a" if start > 1 else "w") if log_path else None  # noqa: SIM115
    bar, t0 = _progress(total, progress, cfg), time.perf_counter()
    bar.update(start - 1, float("nan"))
    for step in range(start, total + 1):
        try:
            x, y = next(batches)
        except StopIteration:
            epoch_gen, epoch, in_epoch = gen.get_state(), epoch + 1, 0
            batches = train_set.batches(cfg.batch_size, shuffle=True, generator=gen)
            x, y = next(batches)
        in_epoch += 1
        if world > 1:  # every process draws the same batch and trains on its share
            x, y = x[rank::world], y[rank::world]
        track = step % cfg.log_every == 0 or step == total
        set_tracking(model, track)
        out = model(x)
        loss = loss_fn(out, y)
        if not math.isfinite(loss.item()):
            if log:
                log.write(json.dumps({"step": step, "loss": loss.item(), "status": "diverged"}) + "\n")
                log.close()
            bar.close()
            raise TrainingDiverged(f"loss became {loss.item()} at step {step} ({cfg.rule}, lr {cfg.lr}); "
                                   f"{len(history)} logged rows kept; lower the lr or clamp gradients")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clamp:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.clamp_(-cfg.clamp, cfg.clamp)
        opt.step()
        if track:
            row = {"step": step, "epoch": step / steps_per_epoch, "loss": loss.item()}
            if y.dtype == torch.long:
                row["acc"] = float((out.argmax(1) == y).float().mean())
            for name, layer in feedback_layers(core):
                row.update({f"{name}/{k}": v for k, v in layer.stats.items()})
            if step % steps_per_epoch == 0 or step == total:
                row.update(evaluate(model, test_set))
            row["time"] = time.perf_counter() - t0
            history.append(row)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
        if checkpoint and checkpoint_every and rank == 0 and (step % checkpoint_every == 0 or step == total):
            save_checkpoint(checkpoint, cfg, core, opt, step, epoch, in_epoch, epoch_gen, history)
        bar.update(1, loss.item())
    set_tracking(model, False)
    bar.close()
    if log:
        log.close()
    final = evaluate(core, test_set)
    return {"config": dataclasses.asdict(cfg), "history": history, **final, "rank": rank, "world": world,
            "steps": total, "seconds": time.perf_counter() - t0, "model": core}


def _distributed(model, cfg):
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on CUDA)
    and wrap the model in DistributedDataParallel; the rules' updates sit in .grad, so DDP
    averages them with the weight gradients. Returns (model, rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return model, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    rank = dist.get_rank()
    device_ids = [torch.device(cfg.device).index or 0] if cfg.device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids), rank, world


def save_checkpoint(path, cfg, model, opt, step, epoch, in_epoch, epoch_gen, history) -> None:
    """Everything needed to continue bit-identically, written to a temporary file then renamed."""
    state = {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
             "torch_rng": torch.get_rng_state(), "step": step, "epoch": epoch, "in_epoch": in_epoch,
             "epoch_gen": epoch_gen, "history": history}
    _torch_save(state, path)


def load_checkpoint(path, cfg: TrainConfig) -> dict:
    """The saved state; a corrupt file or one from another configuration is a one-line error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        keys = {"model", "optimizer", "torch_rng", "step", "epoch", "in_epoch", "epoch_gen", "history"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError("missing entries")
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ConfigError(f"checkpoint {path} is corrupt ({type(err).__name__}: {err}); "
                          "delete it to start the run over") from None
    if state.get("config") != dataclasses.asdict(cfg):
        raise ConfigError(f"checkpoint {path} was written by another configuration; use a new path "
                          "or delete it")
    return state


def _load_model_state(model, saved: dict) -> None:
    """Load W, B, P, Q; buffers a rule creates lazily (dfa's D, direct ld's Q) come back from
    their fixed seeds, so they may be absent from the fresh model."""
    missing, unexpected = model.load_state_dict(saved, strict=False)
    lazy = [k for k in unexpected if k.rsplit(".", 1)[-1] in ("D", "Q")]
    for k in lazy:
        module = model.get_submodule(k.rsplit(".", 1)[0])
        module.register_buffer(k.rsplit(".", 1)[-1], saved[k].clone())
    if missing or len(lazy) != len(unexpected):
        raise ConfigError(f"checkpoint does not match the model: missing {missing}, unexpected "
                          f"{[k for k in unexpected if k not in lazy]}")


class _progress:
    """A tqdm bar (or nothing), showing the running loss."""

    def __init__(self, total, enabled, cfg):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"{cfg.model}/{cfg.rule}", leave=False)

    def update(self, n, loss):
        if self.bar:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def close(self):
        if self.bar:
            self.bar.close()


def history_to_csv(history: list[dict], path) -> Path:
    """The logged rows as CSV; columns are the union of keys (blank where a row lacks one)."""
    import csv

    keys = list(dict.fromkeys(k for row in history for k in row))
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    return path


def plot_history(history: list[dict], path, title: str = "") -> Path:
    """Loss and test accuracy against steps, and the per-layer error angles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), constrained_layout=True)
    axes[0].plot(steps, [h["loss"] for h in history], color="black")
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    acc = [(h["step"], h["test_acc"]) for h in history if "test_acc" in h]
    if acc:
        axes[1].plot(*zip(*acc), "o-", color="#0072B2")
    axes[1].set(xlabel="step", ylabel="test accuracy", title="accuracy")
    keys = sorted({k for h in history for k in h if k.endswith("/angle_delta")})
    for k in keys:
        axes[2].plot(steps, [h.get(k, float("nan")) for h in history], label=k.split("/")[0])
    axes[2].set(xlabel="step", ylabel="∠(delivered δ, bp δ) (degrees)", title="alignment", ylim=(0, 120))
    if keys:
        axes[2].legend(title="layer", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
