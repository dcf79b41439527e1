"""Figure layout: every figure is drawn (from synthetic numbers, through the same draw_*
functions `ldfa figures` uses) and no legend box may cover a plotted point or line, measured
in display pixels with matplotlib's renderer; the check itself must catch a legend placed over
data. Rank axes carry ticks at exactly the plotted ranks; error bars need >= 3 seeds."""

import numpy as np
import pytest
from matplotlib.legend import Legend

from ldfa.figures import mlp_figs, phase_compute, style, theory_figs
from ldfa.figures.style import legend_overlaps

RNG = np.random.default_rng(0)


def _acc_data(seeds=1, ranks=(1, 2, 5, 10, 20), diverged_at=None):
    runs = lambda base: {"acc": list(base + RNG.normal(0, 0.3, seeds)),  # noqa: E731
                         "diverged": [False] * seeds}
    variants = {}
    for i, label in enumerate(mlp_figs.LD_VARIANTS):
        rows = [runs(70 + 3 * i + 2 * np.log(r)) for r in ranks]
        if diverged_at is not None and i == 0:
            rows[diverged_at] = {"acc": [10.0] * seeds, "diverged": [True] * seeds}
        variants[label] = rows
    return {"title": "MLP 784-256-256-10, Fashion-MNIST, 2 epochs", "ranks": list(ranks),
            "seeds": list(range(seeds)), "classes": 10, "variants": variants,
            "refs": {name: runs(80 + j) for j, name in enumerate(mlp_figs.REFERENCES)}}


def _trajectories():
    t = np.linspace(0, 20, 401)
    ts = np.linspace(0, 20, 101)
    s = np.array(theory_figs.SPECTRUM)
    modes = lambda tt: s / (1 + np.exp(-2 * s * (tt[:, None] - 3)))  # noqa: E731
    theory = {k: {"t": t.tolist(), "loss": (12 * np.exp(-t) + 1e-5).tolist(), "modes": modes(t).tolist()}
              for k in theory_figs.LABELS}
    theory["ld-fixed"]["plateau"] = 0.5
    sims = {k: {"t": ts.tolist(), "loss": (12 * np.exp(-ts) + 1e-5).tolist(), "modes": modes(ts).tolist()}
            for k in theory_figs.LABELS}
    return {"eta": 0.01, "n": 40, "spectrum": theory_figs.SPECTRUM, "theory": theory, "simulation": sims}


def _learning_times():
    ranks = [1, 2, 3, 4, 5]
    th = [[1.5 * (a + 1) + r for a in range(5)] for r in ranks]
    return {"ranks": ranks, "spectrum": theory_figs.SPECTRUM, "eta": 0.01, "init": 1e-3, "theory": th,
            "simulation": [[x * 1.02 for x in row] for row in th], "bp": [1.0, 1.3, 1.7, 2.6, 5.0]}


def _fields(units=6):
    return [{"label": label, "diverged": False, "units": list(range(units)), "change_norm": [1.0] * units,
             "fields": RNG.normal(0, 0.01, (units, 28, 28))} for label in ("ldfa r = 1", "ldfa r = 10", "bp")]


def _alignment():
    steps = list(range(100, 1000, 100))
    return {"seed": 0, "runs": {label: {"steps": steps, "diverged": False,
                                        "layers.1": list(np.linspace(88, 40 + 5 * i, 9)),
                                        "layers.2": list(np.linspace(85, 30 + 5 * i, 9))}
                                for i, label in enumerate(mlp_figs.ALIGNMENT_RUNS)}}


def _phase():
    n = 6
    return {"n": n, "d": 8, "spectrum": phase_compute.phase_spectrum(n),
            "plateau": RNG.uniform(0, 1, (n, n)).tolist(), "learn": RNG.uniform(1, 9, (n, n)).tolist()}


def _compute(spread=0.01):
    ranks = [1, 4, 16, 64, 256, 512]
    out = {"width": 512, "ranks": ranks, "repeats": 9, "steps": 2, "batch": 256, "threads": 1,
           "load_average": [0.2, 0.4], "cores": 2}
    for name, base in (("backward", 0.55), ("step", 0.7)):
        med = np.array([base + 0.05 * np.log2(r) / 9 for r in ranks])
        out[name] = {"median": med.tolist(), "q1": (med - spread).tolist(), "q3": (med + spread).tolist(),
                     "conclusive": (np.abs(med - 1) > 2 * spread).tolist()}
    return out


FIGURES = {
    "theory_trajectories": lambda: theory_figs.draw_theory_trajectories(_trajectories()),
    "learning_times": lambda: theory_figs.draw_learning_times(_learning_times()),
    "phase_diagram": lambda: phase_compute.draw_phase_diagram(_phase()),
    "accuracy_vs_rank_1_seed": lambda: mlp_figs.draw_accuracy_vs_rank(_acc_data(1)),
    "accuracy_vs_rank_3_seeds": lambda: mlp_figs.draw_accuracy_vs_rank(_acc_data(3, diverged_at=2)),
    "accuracy_vs_rank_conv_ranks": lambda: mlp_figs.draw_accuracy_vs_rank(_acc_data(1, ranks=(1, 4, 16))),
    "receptive_fields": lambda: mlp_figs.draw_receptive_fields(_fields()),
    "alignment": lambda: mlp_figs.draw_alignment(_alignment()),
    "compute_vs_rank": lambda: phase_compute.draw_compute_vs_rank(_compute()),
    "compute_vs_rank_inconclusive": lambda: phase_compute.draw_compute_vs_rank(_compute(spread=0.8)),
}


@pytest.mark.parametrize("name", FIGURES)
def test_no_legend_covers_data(name, tmp_path):
    fig = FIGURES[name]()
    assert legend_overlaps(fig) == []
    paths = style.save(fig, tmp_path, name, {"check": 1})  # the same check runs when saving
    assert style.LAYOUT[name] == [] and all(p.stat().st_size > 100 for p in paths if p.suffix != ".json")


def test_the_check_catches_a_legend_over_data():
    fig = mlp_figs.draw_accuracy_vs_rank(_acc_data(1))
    ax = fig.axes[0]
    ax.legend(handles=ax.get_lines()[:2], labels=["a", "b"], loc="center", bbox_to_anchor=(5, 75),
              bbox_transform=ax.transData)  # sabotage: a legend centred on the data
    problems = legend_overlaps(fig)
    assert problems and any("covers" in p for p in problems)


def test_the_check_catches_a_legend_over_a_line_between_markers():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 10], [0, 10], "-")  # two far points; only the segment passes the centre
    ax.plot([0, 10], [10, 0], "o")  # markers only: no segment between them
    ax.legend(["line"], loc="center")
    problems = legend_overlaps(fig)
    assert len(problems) == 1 and "line" in problems[0]
    plt.close(fig)


def test_figure_legends_are_outside_the_axes():
    for name, make in FIGURES.items():
        fig = make()
        fig.canvas.draw()
        for legend in fig.findobj(Legend):
            box = legend.get_window_extent()
            for ax in fig.axes:
                inner = ax.get_window_extent()
                dx = min(box.x1, inner.x1) - max(box.x0, inner.x0)
                dy = min(box.y1, inner.y1) - max(box.y0, inner.y0)
                assert min(dx, dy) <= 0, name


@pytest.mark.parametrize("ranks", [(1, 4, 16), (1, 2, 5, 10, 20), (1, 4, 16, 64, 256, 512)])
def test_rank_axis_ticks_are_the_plotted_ranks(ranks):
    data = _acc_data(1, ranks=ranks)
    fig = mlp_figs.draw_accuracy_vs_rank(data)
    ax = fig.axes[0]
    fig.canvas.draw()
    assert list(ax.get_xticks()) == list(ranks)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(r) for r in ranks]
    assert len(ax.xaxis.get_minorticklocs()) == 0


def test_error_bars_only_from_three_seeds():
    one = mlp_figs.draw_accuracy_vs_rank(_acc_data(1))
    three = mlp_figs.draw_accuracy_vs_rank(_acc_data(3))
    assert not one.axes[0].containers and "1 seed, no error bars" in one.get_suptitle()
    assert three.axes[0].containers and "3 seeds" in three.get_suptitle()


def test_receptive_fields_have_colour_bars():
    fig = mlp_figs.draw_receptive_fields(_fields())
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 3  # one per row


def test_inconclusive_timing_is_marked():
    fig = phase_compute.draw_compute_vs_rank(_compute(spread=0.8))
    assert "not conclusive" in fig.axes[0].get_legend().get_title().get_text()
    assert any(p.get_hatch() for p in fig.axes[0].patches)
    fine = phase_compute.draw_compute_vs_rank(_compute(spread=0.001))
    assert "not conclusive" not in fine.axes[0].get_legend().get_title().get_text()
    assert not fine.axes[0].patches


def test_the_check_catches_a_legend_over_a_title():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    ax.plot([0, 1], [0, 0])
    ax.set_title("a long title that runs well past the right edge of the axes")
    fig.legend(handles=ax.get_lines(), labels=["zero"], loc="upper right", bbox_to_anchor=(1, 1.0))
    assert any("text" in p for p in legend_overlaps(fig))
    plt.close(fig)
