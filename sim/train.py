"""Training loop: any model, any rule, logged metrics (nanoGPT-style: the step fits one screen)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..theory.errors import ConfigError
from ..theory.rules import resolve, rule_names
from ..theory.trajectory import atomic_write
from . import data as datasets
from . import models
from .augment import AUGMENTS, augment
from .layers import (
    convert,
    feedback_layers,
    feedback_parameters,
    forward_parameters,
    refresh_factors,
    set_tracking,
)
from .schedule import SCHEDULES, lr_factor, set_lr
from .strict import add_strict_bottleneck
from .target_prop import TP_DEFAULTS, TP_RULES, TargetProp, TargetPropMLP

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16")
TRANSFER = ("toast", "probe", "finetune")


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
    factor_init: str | None = None  # ld factors: random or svd (default: the rule's, ldfa.theory.rules)
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
    svd_reinit: float | None = None  # ld: P, Q from the SVD of W every this many epochs
    strict: bool = False  # strict bottleneck: rank-r error boundaries at every block input (sim/strict.py)
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
    schedule: str = "constant"  # lr: constant or cosine, after warmup_epochs of linear warm-up (schedule.py)
    warmup_epochs: float = 0.0
    augment: str = "none"  # training batches: none, flip, crop-flip, on the device (sim/augment.py)
    fb_clamp: float | None = None  # elementwise clamp of the rules' own gradients (B, P, Q); default: clamp
    precision: str = "fp32"  # fp32, or bf16: forward and loss under torch.autocast (weights stay fp32)
    channels_last: bool = False  # conv weights and image batches in channels-last memory layout
    compile: bool = False  # torch.compile the training forward (eager if compiling fails)

    def __post_init__(self):
        _check_values(self)  # types and ranges of every field, before the cross-field checks
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
        if self.rule not in (*rule_names(), *TP_RULES):
            raise ConfigError(f"unknown rule {self.rule!r}; allowed: {', '.join((*rule_names(), *TP_RULES))}")
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
        if self.rule not in TP_RULES:  # names, p_rule, q_rule, rank, options: the shared checks
            opts = self.rule_options()
            resolve(self.rule, opts.pop("p_rule"), opts.pop("q_rule"), opts.pop("direct", False),
                    rank=opts.pop("rank"), **{k: v for k, v in opts.items() if k != "seed"})
        check_device(self.device)
        if self.svd_reinit is not None:
            if not (isinstance(self.svd_reinit, (int, float)) and not isinstance(self.svd_reinit, bool)
                    and math.isfinite(self.svd_reinit) and self.svd_reinit > 0):
                raise ConfigError(f"svd_reinit={self.svd_reinit!r}: must be a positive number of epochs")
            if self.rank is None or self.direct:
                raise ConfigError(f"svd_reinit applies to layerwise ld rules (with a rank), "
                                  f"not to {self.rule!r}")
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES),
                                     ("augment", self.augment, AUGMENTS),
                                     ("precision", self.precision, PRECISIONS)):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}; allowed: {', '.join(allowed)}")
        if self.augment != "none" and self.model in ("linear", "mlp"):
            raise ConfigError(f"augment={self.augment!r} transforms images: model {self.model!r} reads "
                              "flattened inputs; use cnn, resnet or vit, or augment='none'")
        if self.strict and (self.model not in ("vit", "resnet") or self.rank is None):
            raise ConfigError(f"strict=True needs a model with residual blocks (vit, resnet) and a rank r; "
                              f"got model {self.model!r}, rank {self.rank!r}")

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
        if self.factor_init:
            opts["factor_init"] = self.factor_init
        return opts

    def factor_lr(self) -> float:
        """The learning rate of the rules' own matrices: ``fb_lr`` if set; else, under Adam or
        AdamW, FACTOR_LR_SCALE·lr for ld rules with a lowrank factor (P, Q descending
        ½‖QP − Wᵀ‖² must move faster than W to track it, as in the authors' separate factor
        optimizer; at the same lr the conv net's ldfa feedback lags W and training diverges,
        see docs/simulation.md); else lr."""
        if self.fb_lr is not None:
            return self.fb_lr
        if self.optimizer in ("adam", "adamw") and self.rule not in TP_RULES:
            opts = self.rule_options()
            spec = resolve(self.rule, opts.pop("p_rule"), opts.pop("q_rule"), opts.pop("direct", False),
                           check_rank=False, **{k: v for k, v in opts.items() if k not in ("seed", "rank")})
            if "lowrank" in (spec.options.get("p_rule"), spec.options.get("q_rule")):
                return FACTOR_LR_SCALE * self.lr
        return self.lr


FACTOR_LR_SCALE = 10.0       # lowrank factors under Adam: lr of P, Q = 10 × lr of W (TrainConfig.factor_lr)
MAX_SEED = 2**63 - 1          # torch.manual_seed takes a 64-bit integer
MAX_WIDTH = 1 << 16           # widest layer, and largest rank
MAX_COUNT = 10**9             # steps, samples, logging intervals
MAX_PARAMETERS = 2 * 10**9    # weights of one network (8 GB in float32)
DEFAULT_HIDDEN = (256, 256)
# (input shape, outputs) of each data set as load() returns it, so that the network can be
# checked before any data is read; teachers use their default sizes
DATA_SHAPES = {"fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
               "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100),
               "linear-teacher": ((100,), 10), "random-teacher": ((100,), 10)}
_STRINGS = ("model", "data", "rule", "scaling", "optimizer", "device", "schedule", "augment", "precision")
_OPTIONAL_STRINGS = ("data_root", "p_rule", "q_rule", "factor_init", "transfer", "backbone")
_BOOLS = ("direct", "clip_rank", "tp_normalize", "strict", "channels_last", "compile")
_INTS = {"rank": (1, MAX_WIDTH), "steps": (1, MAX_COUNT), "batch_size": (1, MAX_COUNT),
         "inverse_iters": (1, 1000), "seed": (0, MAX_SEED), "log_every": (1, MAX_COUNT),
         "train_subset": (1, MAX_COUNT), "test_subset": (1, MAX_COUNT)}
# name: (lowest, lowest allowed itself, below this)
_FLOATS = {"epochs": (0, False, 1e6), "lr": (0, False, math.inf), "momentum": (0, True, 1),
           "weight_decay": (0, True, math.inf), "fb_lr": (0, False, math.inf),
           "fb_weight_decay": (0, True, math.inf), "clamp": (0, False, math.inf),
           "tp_beta": (0, False, math.inf), "tp_noise": (0, True, math.inf),
           "warmup_epochs": (0, True, 1e6), "fb_clamp": (0, False, math.inf)}
_OPTIONAL = {"rank", "steps", "inverse_iters", "train_subset", "test_subset", "fb_lr", "fb_weight_decay",
             "clamp", "tp_beta", "fb_clamp"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_values(cfg) -> None:
    """Every field of a TrainConfig has the right type and lies in its range (one-line ConfigError)."""
    for name in _STRINGS + _OPTIONAL_STRINGS:
        v = getattr(cfg, name)
        if not (isinstance(v, str) or (v is None and name in _OPTIONAL_STRINGS)):
            raise ConfigError(f"{name}={v!r}: must be a string")
    for name in _BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be true or false")
    for name, (lo, hi) in _INTS.items():
        v = getattr(cfg, name)
        if v is None and name in _OPTIONAL:
            continue
        if not _is_int(v) or not lo <= v <= hi:
            raise ConfigError(f"{name}={v!r}: must be an integer in {lo}..{hi}")
    for name, (lo, closed, hi) in _FLOATS.items():
        v = getattr(cfg, name)
        if v is None and name in _OPTIONAL:
            continue
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                or not (v >= lo if closed else v > lo) or not v < hi):
            where = f"{'>=' if closed else '>'} {lo}" + (f" and < {hi:g}" if math.isfinite(hi) else "")
            raise ConfigError(f"{name}={v!r}: must be a finite number {where}")
    if cfg.model not in models.MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; allowed: {', '.join(models.MODELS)}")
    if cfg.data not in DATA_SHAPES:
        raise ConfigError(f"data set {cfg.data!r}: must be one of {', '.join(DATA_SHAPES)}")
    h = cfg.hidden
    if (isinstance(h, (str, bytes)) or not isinstance(h, (list, tuple)) or len(h) > 64
            or not all(_is_int(w) and 1 <= w <= MAX_WIDTH for w in h)):
        raise ConfigError(f"hidden={h!r}: must be a list of at most 64 integers in 1..{MAX_WIDTH}")
    if cfg.model not in ("linear", "mlp") and tuple(h) != DEFAULT_HIDDEN:
        raise ConfigError(f"hidden={tuple(h)}: applies to models linear and mlp, not {cfg.model!r} "
                          "(its sizes are model options)")
    c = cfg.classes
    outputs = DATA_SHAPES[cfg.data][1]
    if c is not None and (isinstance(c, (str, bytes)) or not isinstance(c, (list, tuple)) or not c
                          or not all(_is_int(k) and 0 <= k < outputs for k in c) or len(set(c)) != len(c)):
        raise ConfigError(f"classes={c!r}: need distinct labels in 0..{outputs - 1}")
    if not isinstance(cfg.model_options, dict) or not all(isinstance(k, str) for k in cfg.model_options):
        raise ConfigError(f"model_options={cfg.model_options!r}: must be an object of named options")


def check_device(device: str) -> None:
    """cpu, cuda or cuda:N with N an existing GPU."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"device={device!r}; allowed: cpu, cuda, cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; use cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def check_model(cfg: TrainConfig) -> int:
    """Build the network of ``cfg`` before any data is read, so that the size, the model options
    and the rank against each layer's widths are checked before any compute: first without
    memory on the meta device (size), then, up to CHECK_BUILD_LIMIT weights, on the CPU with its
    rule in place. Returns the number of weights. A transfer run's backbone file is checked instead.
    The data set's files are checked to exist (datasets.check_files) without being read."""
    if cfg.transfer:
        load_state(cfg.backbone)
        datasets.check_files(cfg.data, cfg.data_root)
        return 0
    datasets.check_files(cfg.data, cfg.data_root)
    kw = dict(cfg.model_options)
    if cfg.model in ("linear", "mlp"):
        kw.setdefault("hidden", list(cfg.hidden))
    key = json.dumps([cfg.model, cfg.data, cfg.classes and len(cfg.classes), kw, cfg.rule, cfg.rank,
                      cfg.p_rule, cfg.q_rule, cfg.direct, cfg.clip_rank, cfg.scaling, cfg.factor_init,
                      cfg.strict],
                     default=str)
    if key not in _CHECKED:
        _CHECKED[key] = _check_network(cfg)
    return _CHECKED[key]


CHECK_BUILD_LIMIT = 20_000_000
_CHECKED: dict[str, int] = {}  # networks already checked (a grid repeats them across seeds and lrs)


def _check_network(cfg: TrainConfig) -> int:
    shape, outputs = DATA_SHAPES[cfg.data]
    if cfg.model in ("linear", "mlp"):
        shape = (math.prod(shape),)
    classes = len(cfg.classes) if cfg.classes else outputs
    kw = dict(cfg.model_options)
    if cfg.model in ("linear", "mlp"):
        kw.setdefault("hidden", list(cfg.hidden))
    with torch.device("meta"):
        n = sum(p.numel() for p in models.build(cfg.model, shape, classes, **kw).parameters())
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model {cfg.model!r} with {kw or 'default options'} has {n:.3g} weights; "
                          f"at most {MAX_PARAMETERS:.0e} are allowed")
    if n <= CHECK_BUILD_LIMIT:
        with torch.random.fork_rng(devices=[]):
            _network(cfg, shape, classes, kw)
    return n


def _network(cfg: TrainConfig, input_shape, classes: int, kw: dict):
    """The model of ``cfg`` with its feedback rule (or target propagation) in place."""
    model = models.build(cfg.model, input_shape, classes, **kw)
    if cfg.rule in TP_RULES:
        return TargetPropMLP(model, cfg.target_prop())
    convert(model, cfg.rule, clip_rank=cfg.clip_rank, input_shape=tuple(input_shape), **cfg.rule_options())
    if cfg.strict:
        add_strict_bottleneck(model, cfg.rank, seed=cfg.seed)
    return model


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
    model = _network(cfg, train_set.input_shape, classes, kw)
    return model.to(cfg.device), train_set.to(cfg.device), test_set.to(cfg.device)


def _transfer_model(cfg: TrainConfig, input_shape, classes: int, kw: dict):
    """The pre-trained backbone (its own class count read from the file) wrapped for transfer:
    toast (sim/toast.py), probe (frozen, new linear head) or finetune (all weights, new head)."""
    from .toast import TOAST, LinearProbe

    state = load_state(cfg.backbone)  # a checkpoint, or anything but tensors, is refused there
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


def safe_torch_load(source, what: str):
    """torch.load with weights_only=True: tensors, numbers, strings and containers only, so
    opening a file never runs code from it; any other content is a one-line ConfigError naming
    ``what`` (the file)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL [\w.]+", text)
        if found or "reduce" in text:
            raise ConfigError(f"{what} is refused: it holds more than tensors and plain values, and loading "
                              f"it could run code ({found.group(0) if found else 'a reduce call'})") from None
        detail = re.search(r"Unsupported operand \d+", text)
        raise ConfigError(f"{what} is corrupt or not a torch file "
                          f"({detail.group(0) if detail else 'UnpicklingError'})") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{what} is corrupt ({type(err).__name__}: {line})") from None


def load_state(path) -> dict:
    """A saved state dict (torch.save, read with weights_only=True); a missing, unreadable or
    unsafe file is a one-line error."""
    if not Path(path).is_file():
        raise ConfigError(f"backbone file {path} does not exist; train one with --save-model")
    checkpoint = (f"backbone {path} is a training checkpoint (--checkpoint), not a model file; "
                  "write one with --save-model")
    with open(path, "rb") as f:
        if f.read(len(CHECKPOINT_MAGIC)) == CHECKPOINT_MAGIC:
            raise ConfigError(checkpoint)
    state = safe_torch_load(path, f"backbone file {path}")
    if isinstance(state, dict) and {"model", "optimizer", "step"} <= set(state):
        raise ConfigError(checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"backbone file {path} is not a state dict of tensors; write one with --save-model")
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
        groups.append(dict(params=fb, lr=cfg.factor_lr(),
                           weight_decay=cfg.weight_decay if cfg.fb_weight_decay is None
                           else cfg.fb_weight_decay))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return (torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW)(groups, lr=cfg.lr)


def loss_fn(out, y):
    return F.cross_entropy(out, y) if y.dtype == torch.long else 0.5 * F.mse_loss(out, y) * out.shape[-1]


@torch.no_grad()
def evaluate(model, dataset, batch_size=256) -> dict:
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


@contextmanager
def repeatable_kernels(device: str):
    """On CUDA, cuDNN restricted to deterministic algorithms and no autotuning, so that the same
    seed gives the same numbers on the same GPU (cuDNN's default convolution-backward algorithms
    may add partial sums in a different order from one run to the next); the previous settings
    come back on exit. The CPU's kernels repeat as they are: nothing changes there."""
    if not str(device).startswith("cuda"):
        yield
        return
    cudnn = torch.backends.cudnn
    old = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = old


def train(cfg: TrainConfig, log_path=None, progress: bool = True, checkpoint=None,
          checkpoint_every: int = 0) -> dict:
    """Train; append a JSON line per logging step to ``log_path``; return the summary.

    With ``checkpoint`` (a path) the full state — model (W, B, P, Q), optimizer, data order
    and RNG states, history — is saved atomically every ``checkpoint_every`` steps, and a run
    started again with the same checkpoint resumes where it stopped, bit-identically on CPU;
    the log is then cut back to the checkpoint's rows before new rows are appended. On a GPU
    the run uses :func:`repeatable_kernels`.
    """
    if not _is_int(checkpoint_every) or checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every={checkpoint_every!r}: must be an integer >= 0 (0: never)")
    with repeatable_kernels(cfg.device):
        return _train(cfg, log_path, progress, checkpoint, checkpoint_every)


def _train(cfg: TrainConfig, log_path, progress: bool, checkpoint, checkpoint_every: int) -> dict:
    model, train_set, test_set = build(cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    base_lrs = [g["lr"] for g in opt.param_groups]
    fb_ids = {id(p) for p in feedback_parameters(model)}
    model, rank, world = _distributed(model, cfg)
    core = model.module if world > 1 else model  # the network itself (DDP wraps it)
    forward = _Forward(model, cfg)
    fill = _black(train_set)
    log_path = log_path if rank == 0 else None
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    reinit_every = max(1, round(cfg.svd_reinit * steps_per_epoch)) if cfg.svd_reinit else 0
    total = cfg.steps or max(1, round(cfg.epochs * steps_per_epoch))
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
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
    if log_path and start > 1:  # the log as of the checkpoint: rows written after it are dropped
        atomic_write(log_path, lambda f: f.writelines(json_line(row) for row in history))
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
        if cfg.augment != "none":  # the draws of (seed, step): a resumed run sees the same images
            x = augment(x, cfg.augment, cfg.seed, step, fill=fill)
        if world > 1:  # every process draws the same batch and trains on its share
            x, y = x[rank::world], y[rank::world]
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.schedule != "constant" or warmup:
            set_lr(opt, base_lrs, lr_factor(step, total, warmup, cfg.schedule))
        track = step % cfg.log_every == 0 or step == total
        set_tracking(model, track)
        bf16 = cfg.precision == "bf16"
        with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
            loss = loss_fn(out, y)
        if not math.isfinite(loss.item()):
            if log:
                log.write(json_line({"step": step, "loss": loss.item(), "status": "diverged"}))
                log.close()
            bar.close()
            raise TrainingDiverged(f"loss became {loss.item()} at step {step} ({cfg.rule}, lr {cfg.lr}); "
                                   f"{len(history)} logged rows kept; lower the lr or clamp gradients")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clamp or cfg.fb_clamp:  # elementwise: W, b at clamp; B, P, Q at fb_clamp (default clamp)
            for p in model.parameters():
                c = (cfg.fb_clamp or cfg.clamp) if id(p) in fb_ids else cfg.clamp
                if c and p.grad is not None:
                    p.grad.clamp_(-c, c)
        opt.step()
        if reinit_every and step % reinit_every == 0:
            refresh_factors(core)
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
                log.write(json_line(row))
                log.flush()
        if checkpoint and checkpoint_every and rank == 0 and (step % checkpoint_every == 0 or step == total):
            save_checkpoint(checkpoint, cfg, core, opt, step, epoch, in_epoch, epoch_gen, history)
        bar.update(1, loss.item())
    set_tracking(model, False)
    bar.close()
    if log:
        log.close()
    last = history[-1] if history else {}
    # the last step was evaluated already (same weights, eval mode): not a second pass
    final = ({k: last[k] for k in ("test_loss", "test_acc") if k in last}
             if last.get("step") == total and "test_loss" in last else evaluate(core, test_set))
    return {"config": dataclasses.asdict(cfg), "history": history, **final, "rank": rank, "world": world,
            "steps": total, "seconds": time.perf_counter() - t0, "model": core}


class _Forward:
    """The training forward pass: the model itself, or torch.compile of it (cfg.compile); a
    compile that fails at the first call falls back to the eager model with one warning line."""

    def __init__(self, model, cfg: TrainConfig):
        self.model, self.fn = model, model
        if cfg.compile:
            self.fn = torch.compile(model)

    def __call__(self, x):
        if self.fn is self.model:
            return self.model(x)
        try:
            return self.fn(x)
        except Exception as err:  # noqa: BLE001 - any compiler failure: train eagerly instead
            import sys

            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            print(f"ldfa: torch.compile failed ({line}); training without it", file=sys.stderr)
            self.fn = self.model
            return self.model(x)


def _black(dataset):
    """The standardized value of a black pixel per channel, −mean_c/std_c (padding of random crops)."""
    if not dataset.mean:
        return None
    return [-m / max(s, 1e-12) for m, s in zip(dataset.mean, dataset.std)]


def strict_json(value):
    """``value`` with every NaN or infinite float replaced by its name ("nan", "inf", "-inf"),
    so that it can be written as strict JSON (json.dumps(..., allow_nan=False))."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def json_line(row: dict) -> str:
    """One strict-JSON log line (non-finite numbers as strings, see strict_json)."""
    return json.dumps(strict_json(row), allow_nan=False) + "\n"


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
    index = torch.device(cfg.device).index if cfg.device.startswith("cuda") else None
    device_ids = [torch.cuda.current_device() if index is None else index] if cfg.device.startswith("cuda") \
        else None  # "cuda": the process's current device (torch.cuda.set_device(LOCAL_RANK) under torchrun)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids), rank, world


CHECKPOINT_MAGIC = b"LDFA-CHECKPOINT-1\n"


def save_checkpoint(path, cfg, model, opt, step, epoch, in_epoch, epoch_gen, history) -> None:
    """Everything needed to continue bit-identically, written to a temporary file then renamed.

    File layout: CHECKPOINT_MAGIC, the SHA-256 (hex) of the payload and a newline, then the
    payload, a torch.save of plain values and tensors (read back with weights_only=True).
    """
    state = {"config": dataclasses.asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
             "torch_rng": torch.get_rng_state(), "step": step, "epoch": epoch, "in_epoch": in_epoch,
             "epoch_gen": epoch_gen, "history": history}
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    header = CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    atomic_write(path, lambda f: (f.write(header), f.write(payload)), binary=True)


def read_checkpoint(path) -> dict:
    """The state saved by save_checkpoint, its checksum verified; loading runs no code from the file.
    A changed byte anywhere, a truncated file or unsafe content is a one-line ConfigError."""
    hint = "delete it to start the run over"
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"checkpoint {path} cannot be read ({err.strerror or err})") from None
    head = len(CHECKPOINT_MAGIC)
    if not raw.startswith(CHECKPOINT_MAGIC) or raw[head + 64: head + 65] != b"\n":
        raise ConfigError(f"checkpoint {path} is not an ldfa checkpoint (no checksum header); {hint}")
    payload = raw[head + 65:]
    if hashlib.sha256(payload).hexdigest().encode() != raw[head: head + 64]:
        raise ConfigError(f"checkpoint {path} is corrupt (its SHA-256 checksum does not match); {hint}")
    state = safe_torch_load(io.BytesIO(payload), f"checkpoint {path}")
    keys = {"model", "optimizer", "torch_rng", "step", "epoch", "in_epoch", "epoch_gen", "history"}
    if not isinstance(state, dict) or not keys <= set(state):
        raise ConfigError(f"checkpoint {path} is corrupt (missing entries); {hint}")
    return state


def load_checkpoint(path, cfg: TrainConfig) -> dict:
    """The saved state (read_checkpoint); one from another configuration is a one-line error."""
    state = read_checkpoint(path)
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

    def write(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    return atomic_write(path, write)


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
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"), binary=True)
    plt.close(fig)
    return path
