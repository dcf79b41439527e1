"""The manuscript's generated inputs (equations from the engine, numbers phrased for their seed
count, an unambiguous verification table) and a LaTeX build of paper/main.tex that must come out
without overfull boxes wider than 5 pt and without undefined references or citations."""

import math
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from ldfa.figures import mlp_figs, paper, transfer, verify
from ldfa.figures.store import Store

PAPER = Path(__file__).resolve().parent.parent / "paper"


def test_equations_come_from_the_engine():
    tex = paper._equations()
    assert r"\newcommand{\EqSaxe}{\tau \frac{\mathrm{d}u}{\mathrm{d}t} = 2 u \left(s - u\right)}" in tex
    assert r"\newcommand{\EqDeep}" in tex and "u^{\\frac{4}{3}}" in tex
    assert r"\sqrt{\lambda^{2} + 4 u^{2}}" in tex
    assert tex.count("{") == tex.count("}")


def test_labels_become_latex():
    assert paper._tex("max |L_ld - L_bp| / L(0), τ, λ, ½, 5%") == \
        r"max $|$L\_ld - L\_bp$|$ / L(0), $\tau$, $\lambda$, $\frac12$, 5\%"
    assert paper._label("t½ per mode (τ), r = 1") == r"$t_{1/2}$ per mode ($\tau$), $r$ = 1"
    assert paper._label("max |L_ld - L_bp| / L(0)") == r"$\max_t |L_\mathrm{ld} - L_\mathrm{bp}| / L(0)$"


def test_every_character_of_the_verify_labels_becomes_ascii_latex():
    """pdflatex stops at a unicode character it has no definition for (the build would fail)."""
    figures = Path(paper.__file__).parent
    chars = {ch for name in ("verify.py", "verify_nonlinear.py")
             for ch in (figures / name).read_text(encoding="utf-8") if not ch.isascii()}
    assert chars  # the labels do use unicode
    assert {ch: paper._label(ch) for ch in chars if not paper._label(ch).isascii()} == {}
    for q, *_ in [(r.quantity,) for r in _report()]:
        assert paper._label(q).isascii(), q


def test_numbers_are_phrased_for_their_seed_count():
    assert paper.seed_phrase(1) == "one seed"
    assert paper.seed_phrase(3) == "the mean of three seeds"
    assert paper.seed_phrase(12) == "the mean of 12 seeds"
    assert paper.percent([0.8534]) == r"85.3\%"
    assert paper.percent([0.80, 0.90]) == r"85.0\%"
    assert paper.percent([float("nan")]) == "diverged"
    assert paper.percent([0.8, float("nan")]) == r"80.0\% (1 of 2 seeds diverged)"
    assert paper.compare(85.3, 85.0) == "within a point of"
    assert paper.compare(80.0, 85.0) == "below" and paper.compare(90.0, 85.0) == "above"
    assert paper.compare(float("nan"), 85.0) == "not comparable with"


def _report(fail: str | None = None) -> list[verify.Result]:
    """A report with every check of `ldfa verify` and its labels; values of realistic size."""
    rows = {"saxe": ("t½ per mode (τ)", 4.605, 4.623, 1.19e-2, 3e-2),
            "fa": ("final loss / initial loss", 0.0, 3.175e-9, 3.175e-9, 1e-6),
            "fixed-p-plateau": ("final loss", 2.45, 2.45, 0.0, 1e-4),
            "adapting-p-bp": ("max |L_ld - L_bp| / L(0)", 0.0, 0.02494, 0.02494, 0.045),
            "sequential-modes": ("t½ per mode (τ), r = 1", 7.176, 7.221, 9.86e-3, 3e-2),
            "deep-balanced": ("t½ per mode (τ), L = 3", 9.145, 9.162, 6.65e-3, 3e-2),
            "lambda-balanced": ("t½ per mode (τ), λ = 1", 0.5468, 0.5451, 3.11e-3, 3e-2),
            "nonlinear-rank": ("smallest r within 1 pt of bp", 10.0, 5.0, -5.0, 0.0),
            # the teacher-student checks' labels as `ldfa verify` writes them (unicode included)
            "ts-integrals": ("max |MC − closed form| / MC s.e.", 0.0, 2.46, 2.46, 5.0),
            "ts-bp": ("(ε_sim−ε_ode)/ε_ode, N=500, 6 seeds", 0.04454, 0.04488, 0.0354, 0.162),
            "ts-scaling": ("std(ε_sim−ε_ode) N=250 / N=1000", 2.0, 1.957, 0.0215, 0.3),
            "ts-plateau": ("plateau ε_g (K=M=2); escape t sim 90 / ode 84", 0.02098, 0.02073, 2.53e-4,
                           6.6e-4),
            "ts-fa-align": ("cos∠(vᵀ,B); t_align/t_learn ode 1.0/2.5, sim 1.0/2.5", 0.9964, 0.9962, 0.0618,
                            0.298)}
    assert set(rows) <= set(verify.CHECKS)
    for name in verify.CHECKS:  # checks added later: a relative deviation of typical size
        rows.setdefault(name, (f"{name} quantity", 1.234, 1.245, 8.9e-3, 5e-2))
    return [verify.Result(name, q, th, sim, dev, tol, name != fail)
            for name, (q, th, sim, dev, tol) in rows.items()]


def test_verify_table_cannot_be_misread():
    tex = paper._verify_table(_report(fail="saxe"))
    rows = {line.split(" & ")[0]: line for line in tex.splitlines() if " & " in line}
    assert rows["saxe"].endswith(r"& $\times$ \\")  # a failure is marked as one
    assert rows["deep-balanced"].endswith(r"& \checkmark \\")
    # absolute deviations carry a dagger, inside the number's math where it has one
    assert r"& $3.2\times10^{-9}{}^\dagger$ &" in rows["fa"]
    assert r"& 0.025$^\dagger$ &" in rows["adapting-p-bp"]
    assert r"\dagger" not in rows["sequential-modes"]
    # the criterion check states what was measured and what was required, with no "deviation"
    nonlinear = rows["nonlinear-rank"]
    assert r"measured $r^* = 5$, required $r^* \le 10$" in nonlinear and "-5" not in nonlinear
    assert nonlinear.endswith(r"& \checkmark \\")
    nan = verify.Result("nonlinear-rank", "smallest r within 1 pt of bp", 10.0, math.nan, math.nan, 0.0,
                        False)
    assert "no tested $r$ came within 1 point" in paper._criterion_row(nan)
    assert paper._num(3.175e-9, 2) == r"$3.2\times10^{-9}$" and paper._num(1e-6, 2) == "$10^{-6}$"


def _fake_runs(monkeypatch, seeds: list[int]):
    """Store lookups answered without training: an accuracy from a hash of the run (the layout, not
    the numbers, is under test), one rule that diverged on seed 0, and the transfer runs."""
    def run_cached(store, preset, seed, suite="mlp", **kw):
        if kw.get("rule") == "fa" and suite == "mlp" and seed == 0:
            return {"result": {"status": "failed", "test_acc": math.nan, "history": []}}
        h = zlib.crc32(repr((suite, sorted(kw.items()), seed)).encode())
        return {"result": {"test_acc": 0.5 + (h % 4000) / 10000, "history": []}}

    monkeypatch.setattr(mlp_figs, "run_cached", run_cached)
    monkeypatch.setattr(mlp_figs, "SEEDS", {**mlp_figs.SEEDS, "tiny": seeds})
    monkeypatch.setattr(transfer, "SEEDS", {**transfer.SEEDS, "tiny": seeds})
    monkeypatch.setattr(transfer, "backbone",
                        lambda store, preset, seed: (Path("b.pt"), 0.9123 - seed / 100, 71749))
    monkeypatch.setattr(transfer, "adapt", lambda store, preset, seed, method: {
        "test_acc": 0.7 + len(method) / 1000 + seed / 100, "tuned": 20869 if "TOAST" in method else 325})


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed (texlive)")
@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_paper_builds_without_overfull_boxes(tmp_path, monkeypatch, seeds):
    """Generated inputs (tiny preset, store lookups faked) + paper/*.tex, *.bib through latexmk;
    figures are absent, so the manuscript's placeholders of the same widths stand in for them."""
    _fake_runs(monkeypatch, seeds)
    build = tmp_path / "paper"
    build.mkdir()
    for path in [*PAPER.glob("*.tex"), *PAPER.glob("*.bib")]:
        shutil.copy(path, build)
    lines = []
    paper.generate("tiny", Store(tmp_path / "store"), build / "generated", report=_report(fail="saxe"),
                   progress=lines.append)
    assert lines[0] == "[1/6] verification checks (given)" and lines[-2] == "[6/6] transfer table"
    assert lines[-1].startswith("results store")
    numbers = (build / "generated" / "numbers.tex").read_text()
    assert "seed(s)" not in numbers and "nan" not in numbers
    phrase = "one seed" if len(seeds) == 1 else "the mean of three seeds"
    assert rf"{{\SeedsMlp}}{{{phrase}}}" in numbers
    assert (r"\newcommand{\AccFa}{diverged}" if len(seeds) == 1 else "(1 of 3 seeds diverged)}") in numbers
    total, passed = paper.in_words(len(verify.CHECKS)), paper.in_words(len(verify.CHECKS) - 1)
    assert rf"{{\VerifySummary}}{{{passed} of {total} pass; saxe fails}}" in numbers
    star = paper.STAR_NOTE in (build / "generated" / "mlp_table.tex").read_text()
    assert star == (len(seeds) > 1)  # the partly diverged mean is starred and the star explained

    proc = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"],
                          cwd=build, capture_output=True, text=True, timeout=240)
    log = (build / "main.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    overfull = [float(w) for w in re.findall(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)", log)]
    assert not [w for w in overfull if w > 5], f"overfull boxes (pt): {overfull}"
    assert not re.search(r"LaTeX Warning: Reference .* undefined", log)
    assert not re.search(r"Citation .* undefined", log)
    assert "There were undefined references" not in log
    bbl = (build / "main.bbl").read_text()
    assert bbl.count(r"\bibitem") >= 15  # the bibliography is printed


def test_every_figure_and_table_is_referenced():
    tex = (PAPER / "main.tex").read_text()
    labels = set(re.findall(r"\\label\{((?:fig|tab):[^}]+)\}", tex))
    refs = set(re.findall(r"\\ref\{([^}]+)\}", tex))
    assert labels and labels <= refs, f"not referenced: {sorted(labels - refs)}"
    assert "seed(s)" not in tex and r"\bibliography{references}" in tex
    keys = set(re.findall(r"@\w+\{([^,]+),", (PAPER / "references.bib").read_text()))
    sources = tex + Path(paper.__file__).read_text()  # the generated tables cite too
    cited = {k.strip() for group in re.findall(r"\\cite\w*\{([^}]+)\}", sources) for k in group.split(",")}
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"
