"""The feedback-rank figure of the two-layer erf teacher-student network.

ε_g(t) for feedback of rank r = 1..D (ld with fixed random factors, and ld with P following
Oja's rule and Q = vᵀPᵀ) against backprop, for a teacher with M < D and M = D hidden
units: theory lines (the order-parameter ODEs of :mod:`ldfa.theory.teacher_student`,
integrated from each seed's initial overlaps and averaged) and finite-N simulation markers.
Writes nonlinear_rank.{pdf,png,json} and nonlinear_rank_numbers.tex (LaTeX macros for the
paper section).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..sim import teacher_student as sim
from ..theory import teacher_student as ts
from ..theory.errors import ConfigError
from ..theory.trajectory import atomic_write
from .runner import Job
from .store import Store
from .style import PALETTE, figure, save

PRESETS = {  # D outputs; teachers with M hidden units (student K = M); N, seeds, time
    "tiny": dict(D=2, Ms=(1, 2), N=100, seeds=(0,), t_end=3.0, n_t=4, eta=0.5),
    "quick": dict(D=4, Ms=(2, 4), N=300, seeds=(0, 1, 2), t_end=80.0, n_t=21, eta=0.5),
    "full": dict(D=4, Ms=(2, 4), N=2000, seeds=(0, 1, 2, 3, 4), t_end=120.0, n_t=41, eta=0.5),
}
VARIANTS = {"fixed": ("fixed", "fixed"), "oja": ("oja", "aligned")}
WORDS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight"]


def _setups(p, M):
    out = {("bp", 0): ts.Setup(K=M, M=M, D=p["D"], rule="bp", eta=p["eta"])}
    for name, (pr, qr) in VARIANTS.items():
        for r in range(1, p["D"] + 1):
            out[(name, r)] = ts.Setup(K=M, M=M, D=p["D"], rule="ld", p_rule=pr, q_rule=qr, rank=r,
                                      eta=p["eta"])
    return out


def _check(preset: str) -> dict:
    if preset not in PRESETS:
        raise ConfigError(f"preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[preset]


def teacher_curves(preset: str, M: int) -> dict:
    """Theory and simulation ε_g(t) of every (variant, r) and bp for a teacher with M hidden
    units; JSON-ready (the summary of :func:`summarise`)."""
    p = _check(preset)
    t = np.linspace(0, p["t_end"], p["n_t"])
    setups = _setups(p, M)
    runs = sim.simulate_many(list(setups.values()), p["N"], p["seeds"], t)
    curves = {}
    for (name, r), s, run in zip(setups, setups.values(), runs):
        sols = [ts.integrate_from(s, i["w"], i["wstar"], i["v"], i["vstar"], i["mats"], t, partial=True)
                for i in run.inits]
        ode = np.array([sol.eps for sol in sols])
        eps = run.eps()
        curves[f"{name}:{r}"] = {"rule": name, "rank": r, "theory": _mean_until_nan(ode).tolist(),
                                 "ode_stopped": [sol.stopped for sol in sols],
                                 "sim": eps.mean(0).tolist(),
                                 "sim_sem": (eps.std(0, ddof=1) / np.sqrt(len(eps))).tolist()
                                 if len(eps) > 1 else [0.0] * len(t)}
    return summarise(t, curves)


def _assemble(preset: str, blocks: dict) -> dict:
    p = _check(preset)
    return {"preset": preset, "t": np.linspace(0, p["t_end"], p["n_t"]).tolist(), "D": p["D"], "N": p["N"],
            "seeds": list(p["seeds"]), "eta": p["eta"], "teachers": {str(M): b for M, b in blocks.items()}}


def compute(preset: str) -> dict:
    """Theory and simulation ε_g(t) for every (M, variant, r); JSON-ready."""
    return _assemble(preset, {M: teacher_curves(preset, M) for M in _check(preset)["Ms"]})


def _job_fn(config: dict, store) -> dict:
    return teacher_curves(config["preset"], config["M"])


COST = {"tiny": 2.0, "quick": 25.0, "full": 600.0}  # seconds per teacher on one idle core (estimate)


def nonlinear_rank_jobs(preset: str) -> list[Job]:
    """One cached job per teacher width M (figures/runner.py spreads them over the workers)."""
    return [Job("nonlinear-rank", {"preset": preset, "M": M}, _job_fn, label=f"teacher-student M = {M}",
                cost=COST[preset], fields=("curves", "threshold")) for M in _check(preset)["Ms"]]


def _mean_until_nan(x):
    """Seed mean at every time at which all seeds' ODEs are still integrated (else NaN)."""
    return x.mean(0)


def summarise(t, curves) -> dict:
    """Add, per curve, the final ε_g and the time to reach 1.5 × backprop's final ε_g."""
    bp_final = curves["bp:0"]["sim"][-1]
    threshold = 1.5 * bp_final
    for c in curves.values():
        th = np.array(c["theory"])
        c["final_theory"] = float(th[-1])
        c["final_sim"] = float(c["sim"][-1])
        c["final_ratio_to_bp"] = float(c["sim"][-1] / bp_final)
        hit = np.nonzero(np.array(c["sim"]) <= threshold)[0]
        c["t_reach"] = float(t[hit[0]]) if len(hit) else None
    return {"threshold": threshold, "curves": curves}


def _plot(data, out_dir):
    Ms = list(data["teachers"])
    fig, axes = figure(ncols=len(VARIANTS), nrows=len(Ms), width=2.9, height=2.3)
    t = np.array(data["t"])
    D = data["D"]
    cmap = __import__("matplotlib").colormaps["viridis"]
    every = max(1, len(t) // 10)
    for row, M in enumerate(Ms):
        curves = data["teachers"][M]["curves"]
        for col, name in enumerate(VARIANTS):
            ax = axes[row * len(VARIANTS) + col]
            bp = curves["bp:0"]
            ax.plot(t, bp["theory"], "-", color=PALETTE["bp"], lw=1.2, label="bp (theory)")
            ax.plot(t[::every], bp["sim"][::every], "o", color=PALETTE["bp"], ms=3, mfc="none",
                    label="bp (simulation)")
            for r in range(1, D + 1):
                c = curves[f"{name}:{r}"]
                color = cmap((r - 1) / max(1, D - 1) * 0.9)
                ax.plot(t, c["theory"], "-", color=color, lw=1, label=f"r = {r} (theory)")
                ax.plot(t[::every], c["sim"][::every], "s", color=color, ms=2.5,
                        label=f"r = {r} (simulation)")
            ax.set_yscale("log")
            ax.set(xlabel="time t = steps/N", ylabel=r"$\epsilon_g$",
                   title=f"{'fixed P, Q' if name == 'fixed' else r'Oja P, Q = $v^TP^T$'}; M = {M}, D = {D}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=D + 1, fontsize=6)
    return save(fig, out_dir, "nonlinear_rank")


def _fmt(x, spec=".3g") -> str:
    return "--" if x is None or not np.isfinite(x) else format(x, spec)


def macros(data) -> str:
    """LaTeX macros with the measured numbers (\\TsEps<variant><M><r>, \\TsEpsBp<M>, ...)."""
    lines = ["% generated by ldfa.figures.nonlinear_figs; do not edit",
             rf"\newcommand{{\TsN}}{{{data['N']}}}", rf"\newcommand{{\TsSeeds}}{{{len(data['seeds'])}}}",
             rf"\newcommand{{\TsD}}{{{data['D']}}}", rf"\newcommand{{\TsT}}{{{data['t'][-1]:g}}}",
             rf"\newcommand{{\TsEta}}{{{data['eta']:g}}}"]
    for M, block in data["teachers"].items():
        Mw = WORDS[int(M)]
        for key, c in block["curves"].items():
            name, r = key.split(":")
            tag = "Bp" + Mw if name == "bp" else name.capitalize() + Mw + WORDS[int(r)]
            lines.append(rf"\newcommand{{\TsEps{tag}}}{{{_fmt(c['final_theory'])}}}")
            lines.append(rf"\newcommand{{\TsSim{tag}}}{{{_fmt(c['final_sim'])}}}")
            lines.append(rf"\newcommand{{\TsRatio{tag}}}{{{_fmt(c['final_ratio_to_bp'], '.2g')}}}")
    lines.append(r"\newcommand{\TsEquations}{" + ts.equations_latex("ld", p_rule="oja", q_rule="aligned")
                 + "}")
    return "\n".join(lines) + "\n"


def nonlinear_rank(preset: str, out_dir, store: Store | None = None) -> list[Path]:
    """Plot and write nonlinear_rank.{pdf,png,json} and nonlinear_rank_numbers.tex from the
    cached per-teacher runs (computed first if the store lacks them)."""
    store = store or Store()
    data = _assemble(preset, {job.config["M"]: store.run(job)["result"]
                              for job in nonlinear_rank_jobs(preset)})
    out_dir = Path(out_dir)
    paths = _plot(data, out_dir)
    paths.append(atomic_write(out_dir / "nonlinear_rank.json", lambda f: f.write(json.dumps(data, indent=1))))
    paths.append(atomic_write(out_dir / "nonlinear_rank_numbers.tex", lambda f: f.write(macros(data))))
    return paths
