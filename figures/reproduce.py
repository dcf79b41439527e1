"""`ldfa reproduce`: the published CIFAR vision-transformer experiment as one resumable command.

    ldfa reproduce --data-root DIR                         # CIFAR-10, bp and r = 16..64, seeds 0, 1, 2
    ldfa reproduce --data-root DIR --dataset cifar100      # the second table
    ldfa reproduce --data-root DIR --tiny --device cpu     # the whole path in about a minute on a CPU

Every run (bp, and ldfa at each rank r, for each seed) is a TrainConfig (RECIPE below) keyed in
the results store like an `ldfa sweep` run; a run already stored is not recomputed, and a run
that was stopped resumes from its checkpoint (saved every ``checkpoint_every`` steps). The
table (Markdown, CSV, LaTeX) and the figure are drawn from whatever has finished, missing runs
marked missing. Runs go one after the other in this process (one GPU, or several under
torchrun, each run then data-parallel), or to SLURM through submitit. See docs/reproduce.md.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ..theory.errors import ConfigError
from ..theory.trajectory import atomic_write
from .store import Store
from .sweep import KIND, claim
from .tables import write_table

# the published recipe (docs/reproduce.md gives the source of each number)
VIT = {"width": 384, "depth": 8, "heads": 8, "mlp_ratio": 2, "patch": 4}
RECIPE = {"model": "vit", "batch_size": 256, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.1,
          "epochs": 250, "schedule": "cosine", "warmup_epochs": 10, "fb_lr": 1.5e-2, "fb_weight_decay": 0.0,
          "clamp": 10.0, "augment": "crop-flip"}
LD = {"rule": "ldfa", "svd_reinit": 0.5}  # P, Q descend ½‖QP − Wᵀ‖², SVD re-initialised every half epoch
RANKS = (16, 24, 32, 48, 64)
SEEDS = (0, 1, 2)
# published CIFAR-10 test accuracy: bp and ldfa at each r; none are published for CIFAR-100
PUBLISHED = {"cifar10": {"bp": 0.913, 16: 0.894, 24: 0.902, 32: 0.908, 48: 0.913, 64: 0.911}, "cifar100": {}}
# --tiny: the same recipe on a small network for a few hundred images (a CPU check of the whole path)
TINY_VIT = {"width": 32, "depth": 2, "heads": 2, "mlp_ratio": 2, "patch": 4}
TINY = {"epochs": 2, "batch_size": 50, "lr": 1e-3}
TINY_RANKS = (2, 4)
TINY_SEEDS = (0,)
DATASETS = ("cifar10", "cifar100")
EXECUTORS = ("local", "slurm", "submitit-local")
GPUS = {"A100": 312e12, "H100": 989e12}  # dense bf16 peak FLOP/s (SXM)
MFU = 0.25  # assumed fraction of peak a width-384 ViT reaches (docs/reproduce.md)


def runs(dataset: str, ranks, seeds, device: str = "cpu", epochs: float | None = None, tiny: bool = False,
         precision: str = "fp32", channels_last: bool = False, compile: bool = False,
         augment: str = "crop-flip", data_root: str | None = None) -> list[dict]:
    """Every run as a TrainConfig dict: bp, then ldfa at each rank, each for every seed.

    ``epochs`` (default 250, 2 with ``tiny``) also scales the warm-up: warmup = 10 · epochs / 250."""
    if dataset not in DATASETS:
        raise ConfigError(f"dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    base = {**RECIPE, **(TINY if tiny else {}), "data": dataset, "data_root": data_root, "device": device,
            "model_options": dict(TINY_VIT if tiny else VIT), "precision": precision,
            "channels_last": channels_last, "compile": compile, "augment": augment}
    if epochs is not None:
        base["epochs"] = epochs
    base["warmup_epochs"] = RECIPE["warmup_epochs"] * base["epochs"] / RECIPE["epochs"]
    steps_per_log = 1 if tiny else 50
    out = []
    for r in (None, *ranks):
        for seed in seeds:
            cfg = {**base, "seed": seed, "log_every": steps_per_log}
            if r is None:
                cfg["rule"] = "bp"
            else:
                cfg.update(LD, rank=r)
            out.append(cfg)
    return out


def label(cfg: dict) -> str:
    return f"{cfg['data']} {'bp' if cfg['rule'] == 'bp' else 'ldfa r=' + str(cfg['rank'])} seed {cfg['seed']}"


# ----------------------------------------------------------------------------- data and cost


def check_data(root, dataset: str) -> None:
    """Both splits of ``dataset`` under ``root`` are readable CIFAR batches (else one-line ConfigError)."""
    from ..sim import data as datasets

    if root is None:
        raise ConfigError(f"--data-root is required: the folder holding the unpacked {dataset} "
                          f"python batches (see {datasets.CIFAR_URL})")
    classes = 10 if dataset == "cifar10" else 100
    for split in ("train", "test"):
        datasets.cifar(root, split, classes)


def forward_macs(width: int, depth: int, heads: int, mlp_ratio: float, patch: int, image: int = 32,
                 classes: int = 10, channels: int = 3) -> int:
    """Multiply-accumulates of one image's forward pass through the ViT.

    T = (image/patch)² + 1 tokens; per block and token: qkv 3w², proj w², fc1 + fc2 2·ρ·w²
    (ρ = mlp_ratio), attention q·kᵀ and p·v 2·T·w; plus the patch embedding (T−1)·c·p²·w
    and the head w·classes. LayerNorm, softmax and GELU are not counted (a few % of the total)."""
    t = (image // patch) ** 2 + 1
    hidden = int(mlp_ratio * width)
    block = t * (3 * width * width + width * width + 2 * width * hidden) + 2 * t * t * width
    return depth * block + (t - 1) * channels * patch * patch * width + width * classes


def estimate(cfg: dict, n_train: int = 50_000, n_test: int = 10_000) -> dict:
    """FLOPs, time and memory of one run. Training an image costs ≈ 3 forward passes (forward,
    and backward for inputs and weights), 2 FLOPs a MAC: 6·MACs per image per epoch, plus 2·MACs
    per test image per epoch (evaluation each epoch). The ld feedback replaces each Wᵀδ by
    Q(Pδ) (r·(n_in + n_out) instead of n_in·n_out MACs a token) and adds the P, Q updates
    (O(r·n_in·n_out) a step, not an image): no more than bp's count, so not added. Memory: fp32
    weights, gradients and two AdamW moments (16 bytes a weight), the stored activations of a
    batch (≈ (9 + 2ρ)·w + 2·h·T values per token and block, at 2 bytes in bf16, 4 in fp32) and
    the data set on the device (fp32)."""
    o = cfg["model_options"]
    classes = 10 if cfg["data"] == "cifar10" else 100
    macs = forward_macs(o["width"], o["depth"], o["heads"], o["mlp_ratio"], o["patch"], classes=classes)
    flops = cfg["epochs"] * (6 * macs * n_train + 2 * macs * n_test)
    w, t = o["width"], (32 // o["patch"]) ** 2 + 1
    weights = o["depth"] * (4 + 2 * o["mlp_ratio"]) * w * w + t * w + 48 * w + w * classes
    act_bytes = 2 if cfg.get("precision") == "bf16" else 4
    acts = cfg["batch_size"] * t * o["depth"] * ((9 + 2 * o["mlp_ratio"]) * w + 2 * o["heads"] * t)
    memory = 16 * weights + act_bytes * acts + 4 * 3072 * (n_train + n_test)
    return {"macs_per_image": macs, "flops": flops, "weights": int(weights), "memory_bytes": int(memory),
            "seconds": {gpu: flops / (peak * MFU) for gpu, peak in GPUS.items()}}


def describe_cost(cfgs: list[dict], todo: int) -> str:
    e = estimate(cfgs[0])
    per = ", ".join(f"{gpu} {s / 60:.1f} min" for gpu, s in e["seconds"].items())
    total = ", ".join(f"{gpu} {todo * s / 3600:.1f} h" for gpu, s in e["seconds"].items())
    return (f"cost per run (50 000 training images, {cfgs[0]['epochs']:g} epochs): "
            f"{_si(e['macs_per_image'])}MAC forward per image, {_si(e['flops'])}FLOP to train; "
            f"at {MFU:.0%} of bf16 peak: {per}; memory ≈ {e['memory_bytes'] / 2**30:.1f} GiB. "
            f"{todo} run(s) to compute: {total} on one GPU")


def _si(x: float) -> str:
    """x with an SI prefix: 1.28e9 -> '1.28 G'."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {prefix}"
    return f"{x:.3g} "


# ----------------------------------------------------------------------------- running


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_one(store_root: str, config: dict, checkpoints: str, checkpoint_every: int = 0,
            progress: bool = False, log=print, threads: int = 1) -> dict:
    """Train ``config`` unless the store has it, checkpointing every ``checkpoint_every`` steps
    (0: once a CIFAR epoch, 50 000 images) to CHECKPOINTS/KEY.ckpt and resuming from it; the
    result goes to the store (as `ldfa sweep` stores runs) and the checkpoint is then deleted. Under torchrun
    every process calls this for the same run; the first decides, stores and logs."""
    import torch

    from ..sim.train import TrainConfig, TrainingDiverged, read_checkpoint, train

    rank, world = _world()
    torch.set_num_threads(threads)  # in the key: the same on a login node, a worker, a GPU node
    store = Store(store_root, threads=threads)
    key = store.key(KIND, config)
    folder = Path(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"{key}.ckpt"
    with claim(store.root, key) if rank == 0 else _nothing():
        entry = store.get(key) if rank == 0 else None
        if world > 1:
            import torch.distributed as dist

            flag = [entry is not None]
            dist.broadcast_object_list(flag, src=0)
            if flag[0]:
                return {"key": key, "cached": True}
        elif entry is not None:
            return {"key": key, "cached": True, **entry["result"]}
        cfg = TrainConfig(**config)
        start = read_checkpoint(ckpt)["step"] if ckpt.exists() else 0
        if rank == 0 and start:
            log(f"  {label(config)}: resuming from step {start} ({ckpt})")
        try:
            out = train(cfg, log_path=folder / f"{key}.jsonl", progress=progress, checkpoint=ckpt,
                        checkpoint_every=checkpoint_every or math.ceil(50_000 / cfg.batch_size))
            result = {"status": "done", "test_acc": out["test_acc"], "test_loss": out["test_loss"],
                      "steps": out["steps"], "seconds": out["seconds"], "resumed_from": start}
        except TrainingDiverged as err:
            result = {"status": "failed", "error": str(err), "resumed_from": start}
        if rank == 0:
            store.put(key, KIND, config, result)
            ckpt.unlink(missing_ok=True)
    return {"key": key, "cached": False, **result}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _init_distributed(device: str) -> None:
    """Under torchrun: this process's GPU is LOCAL_RANK, and the process group is joined now
    (the runs' train() finds it joined)."""
    if _world()[1] <= 1:
        return
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def execute(cfgs: list[dict], store_root, checkpoints, executor: str = "local", checkpoint_every: int = 0,
            progress: bool = True, log=print, slurm: dict | None = None, threads: int = 1) -> list[dict]:
    """Compute every run the store lacks: here, one after the other, or as SLURM jobs (submitit)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    results = []
    if executor == "local":
        _init_distributed(cfgs[0]["device"])
        for i, cfg in enumerate(cfgs):
            t0 = time.perf_counter()
            res = run_one(str(store_root), cfg, str(checkpoints), checkpoint_every, progress, log, threads)
            results.append(res)
            if _world()[0] == 0:
                log(_line(i, len(cfgs), cfg, res, time.perf_counter() - t0))
        return results
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"executor {executor} needs submitit: pip install submitit") from None
    folder = Path(checkpoints).parent / "submitit"
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        ex.update_parameters(**{"gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8,
                                "timeout_min": 24 * 60, **(slurm or {})})
    else:
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=24 * 60)
    jobs = [ex.submit(_Job(), str(Path(store_root).resolve()), cfg, str(Path(checkpoints).resolve()),
                      checkpoint_every, False, print, threads) for cfg in cfgs]
    for i, (cfg, job) in enumerate(zip(cfgs, jobs)):
        results.append(job.result())
        log(_line(i, len(cfgs), cfg, results[-1], None))
    return results


class _Job:
    """run_one as a submitit job that is requeued when SLURM preempts it or its time runs out
    (submitit calls ``checkpoint``); the requeued job resumes from the run's own checkpoint."""

    def __call__(self, *args):
        return run_one(*args)

    def checkpoint(self, *args):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def _line(i, n, cfg, res, seconds) -> str:
    what = f"test_acc {res['test_acc']:.4f}" if "test_acc" in res else res.get("status", "")
    when = "" if seconds is None else f", {seconds:.1f} s"
    return f"[{i + 1}/{n}] {label(cfg)}: {what}{' (stored before)' if res.get('cached') else ''}{when}"


# ----------------------------------------------------------------------------- table and figure


def collect(cfgs: list[dict], store_root, threads: int = 1) -> dict:
    """{"bp" or r: [test accuracy of each stored, finished seed]} (missing runs absent)."""
    store = Store(store_root, threads=threads)
    acc: dict = {}
    for cfg in cfgs:
        entry = store.get(store.key(KIND, cfg))
        key = "bp" if cfg["rule"] == "bp" else cfg["rank"]
        acc.setdefault(key, [])
        if entry is not None and entry["result"].get("status") == "done":
            acc[key].append(entry["result"]["test_acc"])
    return acc


def table(dataset: str, acc: dict, seeds: int, out_dir) -> list[Path]:
    """Rows bp, r = ...: seeds finished, mean, min, max test accuracy, the published number."""
    pub = PUBLISHED.get(dataset, {})
    rows = []
    for key, values in acc.items():
        cells = [f"{100 * min(values):.1f}%", f"{100 * max(values):.1f}%"] if values else ["missing"] * 2
        mean = f"{100 * sum(values) / len(values):.1f}%" if values else "missing"
        rows.append(["bp" if key == "bp" else "ldfa", "—" if key == "bp" else str(key),
                     f"{len(values)}/{seeds}", mean, *cells,
                     f"{100 * pub[key]:.1f}%" if key in pub else "—"])
    cols = ["feedback", "r", "seeds done", "test acc (mean)", "min", "max", "published"]
    return write_table(out_dir, f"reproduce_{dataset}", cols, rows, ["{}"] * len(cols))


def figure(dataset: str, acc: dict, out_dir) -> Path:
    """Test accuracy against r: measured mean with the min–max range over seeds (≥ 3 seeds; else
    each seed a point), published values as open markers, bp as horizontal lines (measured
    solid with its range shaded, published dashed). Ranks not yet run are named, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pub = PUBLISHED.get(dataset, {})
    ranks = sorted(k for k in acc if k != "bp")
    fig, ax = plt.subplots(figsize=(5.2, 3.6), constrained_layout=True)
    done = [r for r in ranks if acc[r]]
    for r in done:
        v = [100 * a for a in acc[r]]
        m = sum(v) / len(v)
        if len(v) >= 3:
            ax.errorbar([r], [m], yerr=[[m - min(v)], [max(v) - m]], fmt="none", color="#0072B2", capsize=3)
        elif len(v) == 2:
            ax.plot([r] * len(v), v, ".", color="#0072B2", ms=4)
    if done:
        ax.plot(done, [100 * sum(acc[r]) / len(acc[r]) for r in done], "o-", color="#0072B2",
                label="ldfa, measured" + (" (mean, min–max)" if min(len(acc[r]) for r in done) >= 3 else ""))
    pr = sorted(k for k in pub if k != "bp")
    if pr:
        ax.plot(pr, [100 * pub[r] for r in pr], "s", mfc="none", color="#D55E00", label="ldfa, published")
    if acc.get("bp"):
        v = [100 * a for a in acc["bp"]]
        ax.axhline(sum(v) / len(v), color="black", lw=1.2, label="bp, measured")
        if len(v) >= 2:
            ax.axhspan(min(v), max(v), color="black", alpha=0.08, lw=0)
    if "bp" in pub:
        ax.axhline(100 * pub["bp"], color="#D55E00", ls="--", lw=1.2, label="bp, published")
    missing = [("bp" if k == "bp" else f"r={k}") for k in acc if not acc[k]]
    if missing:
        ax.text(0.02, 0.02, "not yet run: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                color="0.4", va="bottom")
    ticks = sorted(set(ranks) | set(pr))
    if ticks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    name = dataset.upper().replace("CIFAR", "CIFAR-")
    ax.set(xlabel="rank r", ylabel="test accuracy (%)", title=f"ViT on {name}")
    ax.legend(fontsize=7, frameon=False, loc="best")
    path = Path(out_dir) / f"reproduce_{dataset}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, dpi=150, format="png"), binary=True)
    plt.close(fig)
    return path


def report(cfgs: list[dict], store_root, out_dir, seeds: int, threads: int = 1) -> list[Path]:
    """The table and the figure of each data set in ``cfgs`` from what the store holds."""
    paths = []
    for dataset in dict.fromkeys(c["data"] for c in cfgs):
        acc = collect([c for c in cfgs if c["data"] == dataset], store_root, threads)
        paths += [*table(dataset, acc, seeds, out_dir), figure(dataset, acc, out_dir)]
    return paths


def reproduce(data_root, datasets=("cifar10",), ranks=None, seeds=None, epochs=None, device="cpu",
              out="runs/reproduce", store=None, tiny=False, executor="local", checkpoint_every=0,
              precision=None, channels_last=None, compile=False, augment="crop-flip", report_only=False,
              progress=True, log=print, slurm=None, threads=1) -> list[Path]:
    """Check the data, print the cost, run what is missing, write the tables and figures.
    Returns the paths written. bf16 and channels-last default on for CUDA, off on CPU.
    ``threads``: torch CPU threads of every run, wherever it runs (recorded in the store key)."""
    cuda = str(device).startswith("cuda")
    precision = precision or ("bf16" if cuda else "fp32")
    channels_last = cuda if channels_last is None else channels_last
    ranks = tuple(ranks or (TINY_RANKS if tiny else RANKS))
    seeds = tuple(SEEDS if seeds is None and not tiny else seeds or TINY_SEEDS)
    out = Path(out)
    store = Path(store) if store else out / "store"
    checkpoint_every = checkpoint_every or (1 if tiny else 0)
    for dataset in datasets:
        check_data(data_root, dataset)
    root = str(Path(data_root).resolve())
    cfgs = [c for d in datasets for c in runs(d, ranks, seeds, device, epochs, tiny, precision, channels_last,
                                                compile, augment, root)]
    from .sweep import expand

    expand({"include": cfgs})  # every run validated (options, network, rank against each layer) first
    rank, _ = _world()
    if not report_only:
        st = Store(store, threads=threads)
        todo = sum(st.get(st.key(KIND, c)) is None for c in cfgs)
        if rank == 0:
            log(f"{len(cfgs)} runs ({', '.join(datasets)}: bp and r = {', '.join(map(str, ranks))}; seeds "
                f"{', '.join(map(str, seeds))}), {len(cfgs) - todo} in the store {store}")
            log(describe_cost(cfgs, todo))
        execute(cfgs, store, out / "checkpoints", executor, checkpoint_every, progress, log, slurm, threads)
    if rank != 0:
        return []
    paths = report(cfgs, store, out, len(seeds), threads)
    for p in paths:
        log(f"wrote {p}")
    return paths
