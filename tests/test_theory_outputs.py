"""What the theory engine writes: `ldfa derive` for every rule, `ldfa theory` files,
determinism of the integrators, and atomic trajectory writers.

All sizes are small (n_in = hidden = 12, n_out = 4, two teacher modes, 21 points).
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct

import numpy as np
import pytest

from ldfa import cli
from ldfa.theory import trajectory as trajectory_mod
from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import integrate, integrate_modes
from ldfa.theory.rules import P_RULES, PRESETS, Q_RULES, defaults
from ldfa.theory.trajectory import Trajectory

SMALL = dict(n_in=12, hidden=12, n_out=4, spectrum=(3.0, 2.0), t_max=5.0, n_points=21)
SMALL_ARGS = ["--n-in", "12", "--hidden", "12", "--n-out", "4", "--spectrum", "3,2",
              "--points", "21", "--t-max", "5"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, argv) -> str:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return out


# -- ldfa derive ------------------------------------------------------------------------

class Case:
    """One `ldfa derive` call and what its output must say."""

    def __init__(self, rule, layers=2, p=None, q=None, direct=False):
        self.rule, self.layers, self.direct = rule, layers, direct
        self.argv = ["derive", rule, "--layers", str(layers)]
        self.argv += ["--p-rule", p] if p else []
        self.argv += ["--q-rule", q] if q else []
        self.argv += ["--direct"] if direct else []
        if rule == "ld" or rule in PRESETS:  # the rule's defaults, from the one vocabulary
            d = defaults(rule, direct)
            p, q = p or d["p_rule"], q or d["q_rule"]
        self.p, self.q = p, q
        self.name = f"ld[{p},{q}]" + ("-direct" if direct else "") if p else rule
        self.id = "-".join(self.argv[1:]).replace("--", "")

    @property
    def is_ld(self):
        return self.p is not None


CASES = [Case(rule, layers) for rule in ("bp", "fa", "kp", "dfa") for layers in (2, 3)]
CASES += [Case("ld", 2, p, q) for p in P_RULES for q in Q_RULES]
CASES += [Case(preset) for preset in PRESETS]
CASES += [Case("ld"), Case("ld", 3), Case("ldfa", 3), Case("raf", 3)]
CASES += [Case("dfa", 2, direct=True)]
CASES += [Case("ld", 2, p, q, direct=True) for p in ("fixed", "oja", "svd")
          for q in ("fixed", "aligned")]
CASES += [Case("ld", 3, "oja", "aligned", direct=True), Case("ldfa", 2, direct=True)]


def product(prefix, layers, sep="*", reverse=False):
    idx = range(layers, 0, -1) if reverse else range(1, layers + 1)
    return sep.join(f"{prefix}_{l}" for l in idx)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_derive_plain(capsys, case):
    out = run_cli(capsys, case.argv)
    L = case.layers
    lines = out.splitlines()
    assert lines[0].startswith(f"{case.name}: ") and lines[0].endswith(f"(L = {L})")
    for l in range(1, L + 1):
        assert out.count(f"  tau*Derivative(W_{l}, t) = ") == 1
    assert f"  E = W^* - {product('W', L, reverse=True)}\n" in out
    u = product("a", L)
    assert f"per-mode ODEs of {case.name} (L = {L}), u = {u}\n" in out
    for l in range(1, L + 1):
        assert f"  tau da_{l}/dt = " in out
    # the top layer always learns from the true error, whatever the feedback rule
    assert f"  tau da_{L}/dt = {product('a', L - 1)}*(-{u} + s)\n" in out
    # no raw sympy object reprs leaked into the printout
    assert "MatrixSymbol" not in out and "Symbol(" not in out
    if not case.is_ld:
        return
    # ld: B = Q P, with P and Q each fixed, algebraic or a flow
    # direct: one shared P for fixed/oja/svd, one per layer otherwise
    P = f"P_{L}" if not case.direct else "P" if case.p in ("fixed", "oja", "svd") else "P_1"
    Q = "Q_1" if case.direct else f"Q_{L}"
    fixed = next((line for line in lines if line.startswith("  fixed: ")), "")
    if L == 2:
        assert f"  tau*Derivative(W_1, t) = {Q}*{P}*E\n" in out
    if case.p == "fixed":
        assert P in fixed.removeprefix("  fixed: ").split(", ")
    elif case.p == "svd":
        assert re.search(rf"^  {re.escape(P)} = top_r\(C(_\d)?\)$", out, re.M)
        assert "is among the top r, else 0" in out
    else:
        assert f"  tau_P*Derivative({P}, t) = " in out
    if case.q == "fixed":
        assert Q in fixed.removeprefix("  fixed: ").split(", ")
    elif case.q == "aligned":
        # Q = (weights above)ᵀ Pᵀ
        assert re.search(rf"^  {re.escape(Q)} = .*{re.escape(P)}\.T$", out, re.M)
        if L == 2:
            assert f"  {Q} = W_2.T*{P}.T\n" in out
    else:
        assert f"  tau_Q*Derivative({Q}, t) = " in out
    if case.p == "oja" and L == 2:  # Oja's rule keeps p on the unit circle: p (1 - p²) C
        p = "p" if case.direct else "p_2"
        assert f"-{p}*({p} - 1)*({p} + 1)*(a_1**2*a_2**2 - 2*a_1*a_2*s + s**2 + sigma**2)" in out


BRACES = re.compile(r"\\[{}]|[{}]")


def assert_balanced(text):
    depth = 0
    for m in BRACES.finditer(text):
        tok = m.group()
        if tok in ("{", "}"):
            depth += 1 if tok == "{" else -1
            assert depth >= 0, f"unbalanced '}}' in {text!r}"
    assert depth == 0, f"unbalanced '{{' in {text!r}"
    assert text.count(r"\left") == text.count(r"\right")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_derive_latex(capsys, case):
    out = run_cli(capsys, [*case.argv, "--latex"])
    L = case.layers
    lines = out.splitlines()
    assert lines[0].startswith(f"% {case.name}: ") and lines[0].endswith(f"; L = {L}")
    assert out.count(r"\begin{align}") >= 2
    # environments nest properly
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", out):
        if kind == "begin":
            assert not stack, f"\\begin{{{env}}} inside \\begin{{{stack[-1]}}}"
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    for l in range(1, L + 1):
        assert rf"\frac{{\mathrm{{d}}}}{{\mathrm{{d}}t}} W_{{{l}}}" in out
        assert rf"\tau \frac{{\mathrm{{d}}a_{{{l}}}}}{{\mathrm{{d}}t}} &= " in out
    assert r"\frac{d}{d t}" not in out  # sympy's plain d was replaced
    body = [line for line in lines if not line.lstrip().startswith("%")]
    for line in body:
        assert_balanced(line)
        assert "Derivative" not in line and "**" not in line and ".T" not in line
    assert_balanced(out)
    # inside align: every row has one alignment point, rows separated by \\
    for block in re.findall(r"\\begin\{align\}\n(.*?)\n\\end\{align\}", out, re.S):
        rows = [r for r in block.split("\n") if not r.lstrip().startswith("%")]
        for row in rows[:-1]:
            assert row.count("&=") == 1 and row.endswith(r" \\")
        assert rows[-1].count("&=") == 1 and not rows[-1].endswith("\\")


def test_derive_bp_content(capsys):
    out = run_cli(capsys, ["derive", "bp"])
    assert "  tau*Derivative(W_1, t) = W_2.T*E\n" in out
    assert "  tau*Derivative(W_2, t) = E*W_1.T\n" in out
    assert "  tau da_1/dt = a_2*(-a_1*a_2 + s)\n" in out
    assert "  tau da_2/dt = a_1*(-a_1*a_2 + s)\n" in out
    assert "  balanced start: tau du/dt = 2*u*(s - u)\n" in out
    assert "conserved (always): balance W_2^T W_2 - W_1 W_1^T" in out
    assert "fixed:" not in out


def test_derive_bp_three_layers_content(capsys):
    out = run_cli(capsys, ["derive", "bp", "--layers", "3"])
    assert "  tau*Derivative(W_1, t) = W_2.T*W_3.T*E\n" in out
    assert "  tau da_2/dt = a_1*a_3*(-a_1*a_2*a_3 + s)\n" in out
    assert "  balanced start: tau du/dt = 3*u**(4/3)*(s - u)\n" in out
    assert out.count("conserved (always): balance") == 2


def test_derive_bp_latex_content(capsys):
    out = run_cli(capsys, ["derive", "bp", "--latex"])
    assert r"\tau \frac{\mathrm{d}}{\mathrm{d}t} W_{1} &= W_{2}^{T} E \\" in out
    assert r"\tau \frac{\mathrm{d}a_{1}}{\mathrm{d}t} &= a_{2} \left(- a_{1} a_{2} + s\right)" in out
    assert r"\tau \frac{\mathrm{d}u}{\mathrm{d}t} = 2 u \left(s - u\right)" in out
    assert r"\frac{\mathrm{d}}{\mathrm{d}t}\left(- W_{1} W_{1}^{T} + W_{2}^{T} W_{2}\right) = 0" \
        in out


@pytest.mark.parametrize("argv, expected", [
    (["fa"], ["  tau da_1/dt = beta_2*(-a_1*a_2 + s)\n", "  fixed: B_2\n",
              "conserved (always): alignment B W_2 + W_2^T B^T - W_1 W_1^T"]),
    (["kp"], ["  tau_B*Derivative(B_2, t) = W_1*E.T\n",
              "  tau_B dbeta_2/dt = a_1*(-a_1*a_2 + s)\n",
              "conserved (when every tau_X equals tau): B_2 - W_2^T"]),
    (["dfa", "--layers", "3"], ["  tau*Derivative(W_1, t) = D_1*E\n",
                                "  tau*Derivative(W_2, t) = D_2*E*W_1.T\n", "  fixed: D_2, D_1\n"]),
    (["ld", "--p-rule", "svd", "--q-rule", "aligned"],
     ["  P_2 = top_r(C_1)\n", "  tau da_1/dt = a_2*chi_2*(-a_1*a_2 + s)\n",
      "  balanced start (selected modes): tau du/dt = 2*u*(s - u)\n"]),
    (["ldfa"], ["ld[lowrank,lowrank]: ", "  tau_P dp_2/dt = q_2*(a_2 - p_2*q_2)\n",
                "  tau_Q dq_2/dt = p_2*(a_2 - p_2*q_2)\n"]),
    (["ldfa-local"], ["ld[kp,kp]: ", "  tau_P*Derivative(P_2, t) = Q_2.T*W_1*E.T\n"]),
    (["raf"], ["ld[oja,kp]: ", "  tau_P*Derivative(P_2, t) = P_2*C_1 - P_2*C_1*P_2.T*P_2\n",
               "  C_1 = E*E.T + Sigma\n"]),
    (["ld", "--p-rule", "oja", "--q-rule", "aligned", "--direct"],
     ["  tau_P*Derivative(P, t) = P*C - P*C*P.T*P\n", "  C = E*E.T + Sigma\n"]),
    (["bp", "--weight-decay"], ["  tau*Derivative(W_1, t) = (-lambda)*W_1 + W_2.T*E\n",
                                "  tau da_2/dt = -a_1**2*a_2 + a_1*s - a_2*lambda\n"]),
])
def test_derive_rule_content(capsys, argv, expected):
    out = run_cli(capsys, ["derive", *argv])
    for text in expected:
        assert text in out


def test_derive_weight_decay_breaks_bp_balance(capsys):
    out = run_cli(capsys, ["derive", "bp", "--weight-decay"])
    assert "lambda" in out
    assert "conserved" not in out and "balanced start" not in out


# -- ldfa theory: files -------------------------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) >= min_bytes
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 200 and height >= 100
    assert data[-8:-4] == b"IEND"


def theory_argv(tmp_path, *extra, rule="bp"):
    return ["theory", rule, *SMALL_ARGS, "--out", str(tmp_path), *extra]


def test_theory_writes_csv_and_png(capsys, tmp_path):
    out = run_cli(capsys, theory_argv(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["bp.csv", "bp.png"]  # and no temp files
    assert out.startswith("integrated matrix ODE to t = 5 tau in ")
    assert f"wrote {tmp_path / 'bp.csv'} and {tmp_path / 'bp.png'}" in out
    header, data = read_csv(tmp_path / "bp.csv")
    assert header[:4] == ["t", "loss", "mode_1", "mode_2"]
    assert "mode_3" not in header and len(header) == len(set(header))
    assert data.shape == (21, len(header))
    assert np.all(np.isfinite(data))
    np.testing.assert_allclose(data[:, 0], np.linspace(0.0, 5.0, 21), rtol=0, atol=1e-12)
    loss = data[:, 1]
    assert loss[0] == pytest.approx(0.5 * (3**2 + 2**2), rel=1e-3)  # tiny init: E ≈ W*
    assert loss[-1] < 1e-2 * loss[0]  # bp learns both modes by t = 5 τ
    modes = data[:, 2:4]
    np.testing.assert_allclose(modes[-1], [3.0, 2.0], atol=0.05)
    loss_line = re.search(r"loss (\S+) -> (\S+)$", out.splitlines()[0])
    assert float(loss_line.group(1)) == pytest.approx(loss[0], rel=1e-3)
    assert_png(tmp_path / "bp.png")


def test_theory_writes_json_that_round_trips(capsys, tmp_path):
    run_cli(capsys, theory_argv(tmp_path, "--format", "json", "--name", "run1"))
    assert sorted(os.listdir(tmp_path)) == ["run1.json", "run1.png"]
    raw = json.loads((tmp_path / "run1.json").read_text())
    assert raw["kind"] == "matrix"
    assert raw["config"]["spectrum"] == [3.0, 2.0] and raw["config"]["n_points"] == 21
    traj = Trajectory.from_json(tmp_path / "run1.json")
    assert traj.kind == "matrix" and traj.t.shape == (21,)
    assert traj.columns()[:4] == ["t", "loss", "mode_1", "mode_2"]
    # the CLI ran exactly the configuration the Python API runs for the same values
    direct = integrate(TheoryConfig(**SMALL))
    np.testing.assert_array_equal(traj.t, direct.t)
    assert list(traj.series) == list(direct.series)
    for key, values in direct.series.items():
        np.testing.assert_array_equal(traj[key], values, err_msg=key)
    assert_png(tmp_path / "run1.png")


def test_to_json_from_json_round_trip(tmp_path):
    traj = integrate_modes(TheoryConfig(**SMALL, rule="ld", rank=1))
    path = traj.to_json(tmp_path / "sub" / "t.json")  # creates the folder
    assert path == tmp_path / "sub" / "t.json"
    back = Trajectory.from_json(path)
    assert back.kind == "modes" and back.columns() == traj.columns()
    np.testing.assert_array_equal(back.t, traj.t)
    for key in traj.series:
        np.testing.assert_array_equal(back[key], traj[key], err_msg=key)
    assert back.config["rank"] == 1 and back.config["rule"] == "ld"


def test_csv_matches_json(tmp_path):
    traj = integrate(TheoryConfig(**SMALL))
    header, data = read_csv(traj.to_csv(tmp_path / "t.csv"))
    assert header == traj.columns()
    np.testing.assert_array_equal(data[:, 0], traj.t)
    for j, key in enumerate(header[1:], start=1):
        np.testing.assert_array_equal(data[:, j], traj[key], err_msg=key)


def test_theory_modes(capsys, tmp_path):
    out = run_cli(capsys, theory_argv(tmp_path, "--modes"))
    assert out.startswith("integrated modes ODE to t = 5 tau")
    assert sorted(os.listdir(tmp_path)) == ["bp-modes.csv", "bp-modes.png"]
    header, data = read_csv(tmp_path / "bp-modes.csv")
    assert header == ["t", "loss", "mode_1", "mode_2"]
    assert data.shape == (21, 4)
    u = data[:, 2:4]
    # the per-mode loss is ½ Σ (s_α - u_α)²
    np.testing.assert_allclose(data[:, 1], 0.5 * np.sum((np.array([3.0, 2.0]) - u) ** 2, axis=1),
                               rtol=1e-12)
    assert np.all(np.diff(u, axis=0) >= -1e-12)  # strengths grow monotonically from u_0 > 0
    assert u[0] == pytest.approx([1e-6, 1e-6])  # u_0 = init_scale^L
    assert_png(tmp_path / "bp-modes.png")


def test_theory_modes_ld_names_and_extra_series(capsys, tmp_path):
    argv = theory_argv(tmp_path, "--modes", "--rank", "2", "--format", "json", rule="ld")
    run_cli(capsys, argv)
    assert sorted(os.listdir(tmp_path)) == ["ld-r2-modes.json", "ld-r2-modes.png"]
    traj = Trajectory.from_json(tmp_path / "ld-r2-modes.json")
    assert traj.kind == "modes"
    assert traj.columns() == ["t", "loss", "mode_1", "mode_2", "p_2_mode_1", "p_2_mode_2",
                              "q_2_mode_1", "q_2_mode_2"]  # ld: P oja, Q kp (both move)


def test_modes_match_matrix_from_aligned_start():
    """With an aligned start the matrix ODE stays in the ansatz: both integrators agree."""
    cfg = TheoryConfig(**SMALL, init="aligned", init_scale=0.1)
    full, modes = integrate(cfg), integrate_modes(cfg)
    for key in ("loss", "mode_1", "mode_2"):
        np.testing.assert_allclose(full[key], modes[key], atol=1e-6, err_msg=key)


# -- determinism ----------------------------------------------------------------------------

@pytest.mark.parametrize("rule, extra", [("bp", {}), ("fa", {}), ("ld", {"rank": 1})])
def test_same_seed_same_trajectory_other_seed_differs(rule, extra):
    base = dict(SMALL, rule=rule, **extra)
    a = integrate(TheoryConfig(**base, seed=7))
    b = integrate(TheoryConfig(**base, seed=7))
    c = integrate(TheoryConfig(**base, seed=8))
    assert list(a.series) == list(b.series) == list(c.series)
    np.testing.assert_array_equal(a.t, b.t)
    for key in a.series:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for name in a.final:
        np.testing.assert_array_equal(a.final[name], b.final[name], err_msg=name)
    assert not np.array_equal(a["mode_1"], c["mode_1"])
    assert not np.array_equal(a.teacher[0], c.teacher[0])
    # but the seed only changes the draw: both runs still start from the same loss
    assert a["loss"][0] == pytest.approx(c["loss"][0], rel=1e-3)


def test_cli_same_seed_same_bytes(capsys, tmp_path):
    run_cli(capsys, theory_argv(tmp_path / "a", "--seed", "3"))
    run_cli(capsys, theory_argv(tmp_path / "b", "--seed", "3"))
    run_cli(capsys, theory_argv(tmp_path / "c", "--seed", "4"))
    a, b, c = ((tmp_path / d / "bp.csv").read_bytes() for d in "abc")
    assert a == b
    assert a != c


# -- atomic writers -------------------------------------------------------------------------

@pytest.fixture
def traj():
    t = np.linspace(0.0, 1.0, 5)
    return Trajectory(t, {"loss": 1.0 - 0.5 * t, "mode_1": t}, {"spectrum": [1.0]}, "modes")


class DiskFull(OSError):
    pass


def test_to_json_failure_keeps_previous_file(monkeypatch, tmp_path, traj):
    path = tmp_path / "t.json"
    traj.to_json(path)
    before = path.read_bytes()

    def partial_dump(obj, f, **kwargs):
        f.write('{"kind": "modes", "config": {"spec')  # half a document, then failure
        f.flush()
        raise DiskFull("no space left")

    monkeypatch.setattr(trajectory_mod.json, "dump", partial_dump)
    changed = Trajectory(traj.t, {k: v + 1 for k, v in traj.series.items()}, traj.config, "modes")
    with pytest.raises(DiskFull):
        changed.to_json(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.json"]  # no temp file left
    np.testing.assert_array_equal(Trajectory.from_json(path)["mode_1"], traj["mode_1"])


def test_to_csv_failure_keeps_previous_file(monkeypatch, tmp_path, traj):
    path = tmp_path / "t.csv"
    traj.to_csv(path)
    before = path.read_bytes()

    class PartialWriter:
        def __init__(self, f):
            self.f = f

        def writerows(self, rows):
            self.f.write("t,loss\r\n0.0,")
            raise DiskFull("no space left")

    monkeypatch.setattr(trajectory_mod.csv, "writer", PartialWriter)
    with pytest.raises(DiskFull):
        traj.to_csv(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.csv"]


def test_failed_first_write_leaves_nothing(monkeypatch, tmp_path, traj):
    def failing_dump(obj, f, **kwargs):
        f.write("{")
        raise KeyboardInterrupt  # even an interrupt must not leave a half file

    monkeypatch.setattr(trajectory_mod.json, "dump", failing_dump)
    with pytest.raises(KeyboardInterrupt):
        traj.to_json(tmp_path / "new.json")
    assert os.listdir(tmp_path) == []


def test_writers_replace_existing_content(tmp_path, traj):
    path = tmp_path / "t.json"
    path.write_text("old content that is longer than nothing" * 100)
    traj.to_json(path)
    assert Trajectory.from_json(path).t.shape == (5,)
    assert os.listdir(tmp_path) == ["t.json"]


def _failing_savefig(monkeypatch):
    import matplotlib.figure

    def partial_savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):  # a file object
            fname.write(PNG_MAGIC + b"truncated")
        else:
            with open(fname, "wb") as f:
                f.write(PNG_MAGIC + b"truncated")
        raise DiskFull("no space left")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", partial_savefig)


def test_plot_failure_keeps_previous_png(monkeypatch, tmp_path, traj):
    path = traj.plot(tmp_path / "t.png", title="first")
    before = path.read_bytes()
    assert_png(path)
    _failing_savefig(monkeypatch)
    with pytest.raises(DiskFull):
        traj.plot(path, title="second")
    assert path.read_bytes() == before


def test_plot_failure_leaves_no_temp_file(monkeypatch, tmp_path, traj):
    traj.plot(tmp_path / "t.png")
    _failing_savefig(monkeypatch)
    with pytest.raises(DiskFull):
        traj.plot(tmp_path / "t.png")
    assert os.listdir(tmp_path) == ["t.png"]


def test_data_files_get_the_same_permissions_as_the_png(tmp_path, traj):
    png = traj.plot(tmp_path / "t.png")
    data = traj.to_csv(tmp_path / "t.csv")
    assert (data.stat().st_mode & 0o777) == (png.stat().st_mode & 0o777)
