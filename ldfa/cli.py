"""The `ldfa` command line: derive, theory, train, verify, figures, paper, sweep, bench.

Every configuration is validated before any compute starts; a bad value is reported
in one line naming it and what is allowed (exit status 2).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

from ldfa.argtypes import (
    MAX_COUNT,
    MAX_DIM,
    MAX_LAYERS,
    MAX_POINTS,
    MAX_WIDTH,
    MAX_WORKERS,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    THREADS,
    Parser,
    device_name,
    file_stem,
    float_in,
    int_in,
    width_list,
)
from ldfa.errors import ConfigError


def _floats(text: str) -> tuple:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--spectrum {text!r}: expected comma-separated numbers, e.g. 5,4,3") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--spectrum {text!r}: expected finite numbers, e.g. 5,4,3")
    return values


def _writable_file(flag: str, path) -> Path:
    """Check now, before any compute, that a file can be written at ``path`` (one-line error)."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{flag} {path}: part of its folder {path.parent} is a file") from None
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    return path




# library parameter names (in ConfigError messages) -> this command line's flags
_FLAGS = [(r"\bp_rule\b", "--p-rule"), (r"\bq_rule\b", "--q-rule"), (r"\bfactor_init\b", "--factor-init"),
          (r"\blowrank_scale\b", "--lowrank-scale"), (r"\brank r\b", "--rank r"),
          (r"\bclip_rank=True\b", "--clip-rank"), (r"\buse direct=False\b", "drop --direct"),
          (r"\bdirect=True\b", "--direct"), (r"\bscaling\b", "--scaling")]


def _flag_message(message: str) -> str:
    """A library error in the command line's words: p_rule -> --p-rule, rank r -> --rank r, ..."""
    import re

    for pattern, flag in _FLAGS:
        message = re.sub(pattern, flag, message)
    return message


def load_rule_file(path) -> None:
    """Run a Python file that registers rules (ldfa.theory.register_rule). The file is code,
    executed as it is: load only files you trust."""
    import runpy

    if path is None:
        return
    if not Path(path).is_file():
        raise ConfigError(f"--rule-file {path}: no such file")
    runpy.run_path(str(path), run_name="ldfa_rule_file")


def _rule_help() -> str:
    from ldfa.theory.rules import describe_defaults

    return "rule name; defaults: " + describe_defaults() + " (docs/rules.md)"


RULE_FILE_HELP = ("Python file that registers rules with ldfa.theory.register_rule (docs/rules.md, "
                  "'Adding a rule'); it is code and is executed: use only files you trust")


def _factor_flags(p):
    from ldfa.theory.rules import LD_DEFAULTS, P_RULES, Q_RULES

    p.add_argument("--p-rule", help=f"ld compressor rule: {', '.join(P_RULES)} "
                                    f"(default: the rule's; ld: {LD_DEFAULTS['p_rule']})")
    p.add_argument("--q-rule", help=f"ld expander rule: {', '.join(Q_RULES)} "
                                    f"(default: the rule's; ld: {LD_DEFAULTS['q_rule']})")
    p.add_argument("--rule-file", help=RULE_FILE_HELP)


def _rule_args(p):
    p.add_argument("rule", help=_rule_help())
    _factor_flags(p)
    p.add_argument("--layers", type=int_in(2, MAX_LAYERS), default=2,
                   help="number of weight layers L (default 2)")
    p.add_argument("--direct", action="store_true", help="direct variant: e sent to every layer")


def cmd_derive(args) -> None:
    import sympy as sp

    from ldfa.theory import derive
    from ldfa.theory.analysis import conserved_quantities
    from ldfa.theory.modes import reduce_to_modes, strength_ode

    load_rule_file(args.rule_file)
    ode = derive(args.rule, layers=args.layers, weight_decay=args.weight_decay,
                 p_rule=args.p_rule, q_rule=args.q_rule, direct=args.direct)
    modes = reduce_to_modes(ode)
    conserved = conserved_quantities(ode)
    closed = None
    try:
        closed = strength_ode(modes, subs={chi: 1 for chi in modes.selections})
        allowed = {sp.Symbol("u", positive=True), modes.s, modes.sigma, modes.tau}
        if not closed.free_symbols <= allowed:  # does not close on u alone (e.g. fa's β)
            closed = None
    except ValueError:
        closed = None
    if args.latex:
        print(f"% {ode.rule.name}: {ode.rule.description}; L = {ode.layers}")
        print("% gradient-flow matrix ODEs (whitened inputs, teacher W^*, noise covariance Sigma)")
        print(ode.latex())
        print("% per-mode ODEs in the teacher's SVD basis (aligned ansatz), u = "
              + sp.latex(modes.strength))
        print(modes.latex())
        if closed is not None:
            sel = " (selected modes)" if modes.selections else ""
            print(f"% balanced start{sel}:")
            print(r"\begin{equation}")
            print(rf"  \tau \frac{{\mathrm{{d}}u}}{{\mathrm{{d}}t}} = {sp.latex(closed)}")
            print(r"\end{equation}")
        for name, K, cond in conserved:
            print(f"% conserved ({cond}): {name}")
            print(r"\begin{equation}" + "\n  " + r"\frac{\mathrm{d}}{\mathrm{d}t}\left("
                  + sp.latex(K) + r"\right) = 0" + "\n" + r"\end{equation}")
        return
    print(ode)
    print()
    print(modes)
    if closed is not None:
        sel = " (selected modes)" if modes.selections else ""
        print(f"  balanced start{sel}: tau du/dt = {sp.sstr(closed)}")
    for name, _, cond in conserved:
        print(f"conserved ({cond}): {name}")


def _out_dir(path) -> Path:
    """Create the output folder now, before any compute, or fail in one line."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    return out


def _theory_config(args):
    from ldfa.theory.config import TheoryConfig

    return TheoryConfig(
        rule=args.rule, p_rule=args.p_rule, q_rule=args.q_rule, direct=args.direct,
        layers=args.layers, n_in=args.n_in, hidden=args.hidden, n_out=args.n_out,
        rank=args.rank, spectrum=_floats(args.spectrum), noise=args.noise, init=args.init,
        init_scale=args.init_scale, tau=args.tau, tau_b=args.tau_b, tau_p=args.tau_p,
        tau_q=args.tau_q, weight_decay=args.weight_decay, t_max=args.t_max,
        n_points=args.points, seed=args.seed)


def cmd_theory(args) -> None:
    from ldfa.theory.integrate import integrate, integrate_modes

    load_rule_file(args.rule_file)
    cfg = _theory_config(args)  # validated here, before any compute
    out = _out_dir(args.out)
    t0 = time.perf_counter()
    traj = integrate_modes(cfg) if args.modes else integrate(cfg)
    elapsed = time.perf_counter() - t0
    stem = args.name or (f"{cfg.rule}" + (f"-{cfg.p_rule}-{cfg.q_rule}" if cfg.p_rule or cfg.q_rule
                                          else "") + (f"-r{cfg.rank}" if cfg.rank else "")
                         + ("-modes" if args.modes else ""))
    data = traj.to_csv(out / f"{stem}.csv") if args.format == "csv" else \
        traj.to_json(out / f"{stem}.json")
    png = traj.plot(out / f"{stem}.png", title=f"{stem}: {traj.kind} ODE, L={cfg.layers}")
    print(f"integrated {traj.kind} ODE to t = {traj.t[-1]:.3g} tau in {elapsed:.2f} s; "
          f"loss {traj['loss'][0]:.4g} -> {traj['loss'][-1]:.4g}")
    print(f"wrote {data} and {png}")


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: need comma-separated integers, e.g. 5,6,7,8,9") from None


def cmd_train(args) -> None:
    import json

    from ldfa.sim.toast import tuned_parameters
    from ldfa.sim.train import (
        TrainConfig,
        check_model,
        history_to_csv,
        load_checkpoint,
        plot_history,
        save_state,
        strict_json,
        train,
    )

    load_rule_file(args.rule_file)
    model_options = {}
    if args.activation:
        model_options["activation"] = args.activation
    cfg = TrainConfig(
        model=args.model, hidden=args.hidden, data=args.data,
        data_root=args.data_root, rule=args.rule, rank=args.rank, p_rule=args.p_rule,
        q_rule=args.q_rule, direct=args.direct, scaling=args.scaling, factor_init=args.factor_init,
        epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, optimizer=args.optimizer,
        lr=args.lr, weight_decay=args.weight_decay, fb_lr=args.fb_lr, clamp=args.clamp,
        clip_rank=args.clip_rank, strict=args.strict, svd_reinit=args.svd_reinit,
        inverse_iters=args.inverse_iters, tp_beta=args.tp_beta,
        tp_noise=args.tp_noise, tp_normalize=args.tp_normalize,
        classes=_int_list("--classes", args.classes) if args.classes else None,
        transfer=args.transfer, backbone=args.backbone,
        seed=args.seed, device=args.device, log_every=args.log_every, model_options=model_options,
        channels_last=args.channels_last)
    check_model(cfg)  # rank against the layers, size, backbone file: before any data is read
    if args.save_model:
        _writable_file("--save-model", args.save_model)
    if args.checkpoint and Path(args.checkpoint).exists():
        if not Path(args.checkpoint).is_file():
            raise ConfigError(f"--checkpoint {args.checkpoint}: is not a file")
        load_checkpoint(args.checkpoint, cfg)  # checksum, safe content and configuration, now
    elif args.checkpoint:
        _writable_file("--checkpoint", args.checkpoint)
    out = _out_dir(args.out)
    stem = args.name or (f"{cfg.model}-{cfg.data}-{cfg.rule}" + (f"-r{cfg.rank}" if cfg.rank else "")
                         + (f"-{cfg.transfer}" if cfg.transfer else "")
                         + (f"-c{''.join(map(str, cfg.classes))}" if cfg.classes else ""))
    result = train(cfg, log_path=out / f"{stem}.jsonl", progress=not args.quiet,
                   checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    if result["rank"] != 0:  # under torchrun only the first process writes
        return
    log = out / f"{stem}.jsonl"
    if args.format == "csv":
        log = history_to_csv(result["history"], out / f"{stem}.csv")
    png = plot_history(result["history"], out / f"{stem}.png", title=stem)
    if args.save_model:
        save_state(result["model"], args.save_model)
    summary = {k: result[k] for k in ("test_acc", "test_loss", "steps", "seconds") if k in result}
    summary["tuned_parameters"] = tuned_parameters(result["model"])
    from ldfa.theory.trajectory import atomic_write  # the summary marks a finished run: whole or absent

    text = json.dumps(strict_json({**summary, "config": result["config"]}), indent=1, allow_nan=False)
    atomic_write(out / f"{stem}.summary.json", lambda f: f.write(text))
    acc = f"test accuracy {result['test_acc']:.4f}, " if "test_acc" in result else ""
    print(f"{stem}: {acc}test loss {result['test_loss']:.4f}, {result['steps']} steps in "
          f"{result['seconds']:.1f} s")
    print(f"wrote {log}, {png}")


def cmd_verify(args) -> int:
    if args.rule:
        return _verify_rule(args)
    if args.p_rule or args.q_rule or args.rank is not None or args.direct or args.rule_file:
        raise ConfigError("--p-rule/--q-rule/--rank/--direct/--rule-file go with --rule NAME")
    from ldfa.figures import verify

    if args.only:
        unknown = [n for n in args.only if n not in verify.CHECKS]
        if unknown:
            raise ConfigError(f"unknown prediction {unknown[0]!r}; allowed: {', '.join(verify.CHECKS)}")
    out = _out_dir(args.out)
    t0 = time.perf_counter()
    print(verify.HEADER)
    results = verify.run(args.only, quick=args.quick, out=out, bar=not args.no_progress)
    failed = [r.name for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in "
          f"{time.perf_counter() - t0:.1f} s; report {out / 'report.json'}, plots verify_*.png")
    return 1 if failed else 0


def _verify_rule(args) -> int:
    """`ldfa verify --rule NAME`: the rule's ODE against its simulation (ldfa.bridge.verify_rule)."""
    from ldfa.bridge import verify_rule

    load_rule_file(args.rule_file)
    if args.only:
        raise ConfigError("--only selects predictions; it does not go with --rule")
    t0 = time.perf_counter()
    res = verify_rule(args.rule, p_rule=args.p_rule, q_rule=args.q_rule, rank=args.rank, direct=args.direct,
                      layers=args.layers, eta=args.eta, implementation=args.implementation)
    print(res.summary() + f" ({time.perf_counter() - t0:.1f} s)")
    return 0 if res.passed else 1


def cmd_paper(args) -> None:
    from ldfa.figures.make import PRESETS
    from ldfa.figures.paper import generate

    if args.preset not in PRESETS:
        raise ConfigError(f"--preset {args.preset!r}; allowed: {', '.join(PRESETS)}")
    store = Path(args.store)
    if store.exists() and not store.is_dir():
        raise ConfigError(f"--store {store}: exists and is not a folder; give a folder for the results store")
    for path in generate(args.preset, args.store, _out_dir(args.out)):
        print(f"wrote {path}")


def cmd_sweep(args) -> int:
    from ldfa.figures import sweep

    if args.executor not in ("local", "slurm", "submitit-local"):
        raise ConfigError(f"--executor {args.executor!r}; allowed: local, slurm, submitit-local")
    config = sweep.load_config(args.config)
    store = args.store or config.get("store", "runs/store")
    workers = args.workers or config.get("workers", 2)
    sweep.expand(config)  # every run validated before any compute
    results = sweep.sweep(config, store, workers, args.executor, args.retry_failed, args.folder)
    failed = sum(r.get("status") == "failed" for r in results)
    cached = sum(r["cached"] for r in results)
    print(f"{len(results)} runs: {cached} from the store, {len(results) - cached} computed, "
          f"{failed} failed; store {store}")
    return 1 if failed else 0


BENCHES = ("theory", "step", "ode_vs_sim", "memory", "batched", "biotorch")


def cmd_bench(args) -> int:
    import subprocess

    folder = Path(__file__).resolve().parent.parent / "bench"
    if not folder.is_dir():
        raise ConfigError(f"benchmarks live in the source checkout ({folder} not found); run from a clone")
    names = args.only or [n for n in BENCHES if n != "biotorch"]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise ConfigError(f"unknown benchmark {unknown[0]!r}; allowed: {', '.join(BENCHES)}")
    status = 0
    for name in names:
        print(f"== bench/bench_{name}.py", flush=True)
        status |= subprocess.run([sys.executable, str(folder / f"bench_{name}.py")]).returncode
    return status


def cmd_reproduce(args) -> None:
    """The published CIFAR ViT experiment (figures/reproduce.py, docs/reproduce.md)."""
    from ldfa.figures.reproduce import DATASETS, reproduce

    datasets = tuple(d.strip() for d in args.dataset.split(","))
    bad = [d for d in datasets if d not in DATASETS]
    if bad or not datasets:
        raise ConfigError(f"--dataset {args.dataset!r}; allowed: {', '.join(DATASETS)} (comma-separated)")
    ranks = _int_list("--ranks", args.ranks) if args.ranks else None
    seeds = _int_list("--seeds", args.seeds) if args.seeds else None
    if ranks is not None and any(r < 1 for r in ranks):
        raise ConfigError(f"--ranks {args.ranks!r}: ranks are positive integers")
    if seeds is not None and any(x < 0 for x in seeds):
        raise ConfigError(f"--seeds {args.seeds!r}: seeds are integers >= 0")
    if args.epochs is not None and not (0 < args.epochs < 1e6):
        raise ConfigError(f"--epochs {args.epochs}: must be a positive number")
    slurm = {"slurm_partition": args.partition} if args.partition else None
    reproduce(args.data_root, datasets, ranks, seeds, args.epochs, args.device, _out_dir(args.out),
              args.store, args.tiny, args.executor, args.checkpoint_every or 0, args.precision,
              args.channels_last, args.compile, args.augment, args.report_only,
              progress=not args.quiet, slurm=slurm, threads=args.threads or 1)


def cmd_figures(args) -> None:
    store = Path(args.store)
    if store.exists() and not store.is_dir():
        raise ConfigError(f"--store {store}: exists and is not a folder; give a folder for the results store")
    print(f"ldfa figures: preset {args.preset}, {len(args.only) if args.only else 'all'} figures, "
          f"store {store}, output {args.out}; loading ...", flush=True)  # before the imports (seconds)
    from ldfa.figures.make import run

    run(args.preset, args.only, _out_dir(args.out), args.store, workers=args.workers, threads=args.threads)


DESCRIPTION = """\
ldfa: theory and simulation of learning with low-dimensional error feedback.

Every value is checked before any compute starts; a bad one is reported in one line
(exit status 2). `ldfa COMMAND --help` lists a command's options with their defaults;
docs/cli.md has the synopsis of every command."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Ends every option's help with its default, options without a help text included; leaves
    alone a help that already names its default, and options that are off or unset by default."""

    def add_argument(self, action):
        default = self._shown_default(action)
        if action.help is None and default is not None:  # argparse prints no line for help=None
            action = copy.copy(action)
            action.help = f"default: {default}"
        super().add_argument(action)

    @staticmethod
    def _shown_default(action):
        default = action.default
        if not action.option_strings or default is None or default is False or default == argparse.SUPPRESS:
            return None
        text = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else str(default)
        return text.replace("%", "%%")

    def _get_help_string(self, action):
        help_text = (action.help or "").strip()
        default = self._shown_default(action)
        if default is None or "default" in help_text.lower():
            return help_text
        return f"{help_text} (default: {default})" if help_text else f"default: {default}"


class _TopHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The command list with every help on its name's line: argparse measures the indented
    command names one indent (2) short, which pushed a long name's help onto the next line."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            names = [len(self._format_action_invocation(a)) for a in action._get_subactions()]
            longest = max(names, default=0)
            self._action_max_length = max(self._action_max_length, longest + self._current_indent + 2)


def _command_parser(**kwargs) -> argparse.ArgumentParser:
    return Parser(formatter_class=_HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ldfa", description=DESCRIPTION, formatter_class=_TopHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_command_parser)

    p = sub.add_parser("derive", help="print the derived learning dynamics of a rule")
    _rule_args(p)
    p.add_argument("--weight-decay", action="store_true", help="include weight decay λ")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of plain text")
    p.set_defaults(func=cmd_derive)

    p = sub.add_parser("theory", help="integrate the ODEs of one configuration")
    _rule_args(p)
    p.add_argument("--rank", type=int_in(1, MAX_DIM), help="feedback rank r (ld rules), 1 <= r <= d")
    p.add_argument("--n-in", type=int_in(1, MAX_DIM), default=100)
    p.add_argument("--hidden", type=int_in(1, MAX_DIM), default=100)
    p.add_argument("--n-out", type=int_in(1, MAX_DIM), default=10, help="output dimension d")
    p.add_argument("--spectrum", default="5,4,3,2,1", help="teacher singular values, e.g. 5,4,3")
    p.add_argument("--noise", type=NON_NEGATIVE, default=0.0, help="teacher output noise std σ")
    p.add_argument("--init", default="random", help="random, aligned, first-zero")
    p.add_argument("--init-scale", type=NON_NEGATIVE, default=1e-3)
    p.add_argument("--tau", type=POSITIVE, default=1.0)
    p.add_argument("--tau-b", type=POSITIVE, default=1.0)
    p.add_argument("--tau-p", type=POSITIVE, default=0.1)
    p.add_argument("--tau-q", type=POSITIVE, default=1.0)
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0)
    p.add_argument("--t-max", type=float_in(0, 1e9, lo_allowed=False),
                   help="end time in units of τ (default: 3x slowest mode)")
    p.add_argument("--points", type=int_in(2, MAX_POINTS), default=201, help="number of time points")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--modes", action="store_true", help="integrate the reduced per-mode ODEs")
    p.add_argument("--out", default="runs/theory", help="output folder")
    p.add_argument("--name", type=file_stem, help="file stem (default from the rule)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.set_defaults(func=cmd_theory)

    p = sub.add_parser("train", help="train a network with a feedback rule (torch)")
    p.add_argument("--model", default="mlp", help="linear, mlp, cnn, vit")
    p.add_argument("--hidden", type=width_list, default=(256, 256), help="hidden widths of linear/mlp models")
    p.add_argument("--activation", help="mlp activation: relu, tanh, gelu")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, mnist, cifar10, cifar100, linear-teacher, random-teacher")
    p.add_argument("--data-root", help="folder with the data set files")
    p.add_argument("--rule", default="bp",
                   help=_rule_help().replace("rule name;", "rule name (default bp; also dtp, ddtp);"))
    p.add_argument("--rank", type=int_in(1, MAX_WIDTH), help="feedback rank r (ld rules)")
    _factor_flags(p)
    p.add_argument("--direct", action="store_true", help="direct variant (ld)")
    p.add_argument("--clip-rank", action="store_true",
                   help="cut r to each layer's min(n_in, n_out) instead of failing")
    p.add_argument("--svd-reinit", type=POSITIVE, metavar="EPOCHS",
                   help="ld: re-initialise P, Q from the SVD of W every EPOCHS epochs (e.g. 0.5), "
                        "optimizer state kept")
    p.add_argument("--strict", action="store_true",
                   help="strict bottleneck: the error crossing every block boundary (skip paths included) "
                        "is squeezed to r numbers per token/position (vit, resnet)")
    p.add_argument("--scaling", default="usf", help="sign rule scaling: usf, brsf, frsf")
    p.add_argument("--factor-init", help="how ld's factors P, Q start: random or svd (default: the "
                                         "rule's; ldfa, ldfa-local: svd)")
    p.add_argument("--inverse-iters", type=int_in(1, 1000),
                   help="ddtp: iterations k >= 1 of the learned inverse (default 5)")
    p.add_argument("--tp-beta", type=POSITIVE,
                   help="dtp/ddtp output target step β (default 0.5 dtp, 0.01 ddtp)")
    p.add_argument("--tp-noise", type=NON_NEGATIVE, default=0.1, help="dtp/ddtp inverse training noise σ")
    p.add_argument("--tp-normalize", action="store_true",
                   help="dtp/ddtp: scale each layer's error by its influence on the output")
    p.add_argument("--classes", help="keep only these labels, relabelled 0..k-1 (e.g. 5,6,7,8,9)")
    p.add_argument("--transfer", choices=["toast", "probe", "finetune"],
                   help="adapt a pre-trained --backbone (vit for toast/probe): top-down attention "
                        "steering, linear probe, or full fine-tuning")
    p.add_argument("--backbone", help="pre-trained model file (from --save-model)")
    p.add_argument("--save-model", help="write the trained model's weights here (a backbone for --transfer)")
    p.add_argument("--epochs", type=float_in(0, 1e6, lo_allowed=False), default=1.0)
    p.add_argument("--steps", type=int_in(1, MAX_COUNT), help="number of steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int_in(1, MAX_COUNT), default=128)
    p.add_argument("--optimizer", default="adam", help="sgd, adam, adamw")
    p.add_argument("--lr", type=POSITIVE, default=1e-3)
    p.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0)
    p.add_argument("--fb-lr", type=POSITIVE, help="learning rate of B, P, Q (default: 10 x --lr for ld rules "
                   "with a lowrank factor under adam/adamw, else --lr)")
    p.add_argument("--clamp", type=POSITIVE, help="clamp every gradient elementwise to ±value")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads")
    p.add_argument("--channels-last", action="store_true",
                   help="conv weights and image batches in channels-last layout (on a CPU often "
                        "faster for conv nets; docs/benchmarks.md)")
    p.add_argument("--log-every", type=int_in(1, MAX_COUNT), default=100)
    p.add_argument("--out", default="runs/train")
    p.add_argument("--name", type=file_stem, help="file stem")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint", help="checkpoint file: saved during training, resumed from if present")
    p.add_argument("--checkpoint-every", type=int_in(1, MAX_COUNT), default=500,
                   help="steps between checkpoints")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl",
                   help="metrics log format (JSON lines are also written as training runs)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("verify", help="check every analytic prediction against simulation, or one "
                                      "rule's ODE against its simulation (--rule)")
    p.add_argument("--only", nargs="+", help="prediction names (default: all)")
    p.add_argument("--rule", help="check this rule instead: its matrix ODE against the simulated linear net "
                                  "from identical initial matrices (" + _rule_help() + ")")
    _factor_flags(p)
    p.add_argument("--rank", type=int_in(1, MAX_WIDTH),
                   help="feedback rank r (with --rule; rules with a bottleneck)")
    p.add_argument("--direct", action="store_true", help="direct variant (with --rule)")
    p.add_argument("--layers", type=int_in(2, MAX_LAYERS), default=2,
                   help="weight layers L (with --rule; default 2)")
    p.add_argument("--eta", type=POSITIVE, default=0.01, help="time step of the simulation (with --rule)")
    p.add_argument("--implementation", default="auto", help="auto, fast or generic (with --rule)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help="larger steps, smaller data (minutes on a CPU)")
    p.add_argument("--out", default="runs/verify", help="folder for report.json and plots")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("paper", help="write the manuscript's generated inputs (paper/generated)")
    p.add_argument("--preset", default="quick", help="quick or full (must match `ldfa figures`)")
    p.add_argument("--store", default="runs/store", help="results store (cached runs)")
    p.add_argument("--out", default="paper/generated")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads")
    p.set_defaults(func=cmd_paper)

    p = sub.add_parser("sweep", help="run a grid of training runs into the results store")
    p.add_argument("config", help="JSON file: base, grid, include, store, workers")
    p.add_argument("--store", help="results store (default: the config's, else runs/store)")
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS),
                   help="local processes (default: the config's, else 2)")
    p.add_argument("--executor", default="local", help="local, slurm (submitit), submitit-local")
    p.add_argument("--folder", default="runs/submitit", help="submitit log folder")
    p.add_argument("--retry-failed", action="store_true", help="run again what diverged before")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench", help="run the speed and memory benchmarks (from a source checkout)")
    p.add_argument("--only", nargs="+", help="theory, step, ode_vs_sim, memory, batched, biotorch "
                   "(default: all but biotorch, an optional dependency)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("reproduce", help="run the published CIFAR ViT experiment (resumable)")
    p.add_argument("--data-root", help="folder with the unpacked CIFAR python batches (cifar-10-batches-py, "
                   "cifar-100-python)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100 or cifar10,cifar100")
    p.add_argument("--ranks", help="comma-separated ranks r (default 16,24,32,48,64; --tiny: 2,4)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; --tiny: 0)")
    p.add_argument("--epochs", type=float, help="epochs per run (default 250, --tiny 2); warm-up scales")
    p.add_argument("--device", type=device_name, default="cpu",
                   help="cpu, cuda, cuda:N (under torchrun: cuda)")
    p.add_argument("--out", default="runs/reproduce", help="tables, figures, checkpoints, logs")
    p.add_argument("--store", help="results store (default OUT/store)")
    p.add_argument("--tiny", action="store_true", help="small ViT (width 32, depth 2), 2 epochs: a quick "
                   "check of the whole path on a CPU")
    p.add_argument("--executor", default="local", help="local (here; torchrun for several GPUs), slurm or "
                   "submitit-local (submitit)")
    p.add_argument("--partition", help="SLURM partition (executor slurm)")
    p.add_argument("--checkpoint-every", type=int_in(1, 10**9),
                   help="steps between checkpoints (default: one epoch; --tiny: 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory layout (default on cuda)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (eager "
                   "if it fails)")
    p.add_argument("--augment", default="crop-flip", choices=("crop-flip", "flip", "none"),
                   help="training augmentation: random crop (padding 4) + horizontal flip (default)")
    p.add_argument("--report-only", action="store_true", help="only redraw the table and figure from "
                   "the store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads of every run, wherever it runs "
                   "(default 1; recorded in the store key)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("figures", help="regenerate the paper's figures")
    p.add_argument("--preset", default="quick", help="quick (CPU, minutes) or full (paper scale)")
    p.add_argument("--only", nargs="+", help="figure names to draw (default: all)")
    p.add_argument("--out", default="figures/out", help="output folder")
    p.add_argument("--store", default="runs/store", help="results store (cached runs)")
    p.add_argument("--threads", type=THREADS,
                   help="torch CPU threads per run (default 1: small models run fastest on one; "
                        "recorded in the store key)")
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS),
                   help="processes computing runs side by side (default: one per core / threads)")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        status = args.func(args)
    except ConfigError as err:
        print(f"ldfa: error: {_flag_message(str(err))}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a diverged run: what was logged is kept
        print(f"ldfa: stopped: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # e.g. a full disk: files are written whole or not at all (docs/reliability.md)
        where = f" ({err.filename})" if err.filename else ""
        message = f"{err.strerror or err}{where}"
        print(f"ldfa: failed: {message}" + ("" if "kept" in message else "; what was written before is kept"),
              file=sys.stderr)
        return 4
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
