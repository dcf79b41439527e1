"""Bad input to the theory engine: one-line ConfigErrors naming the value and what is allowed.

Covers the Python API (TheoryConfig, get_rule, derive, reduce_to_modes) and the CLI
(`ldfa derive`, `ldfa theory`: exit status 2, exactly one stderr line "ldfa: error: ...").
Nothing here integrates an ODE except the few cases that check the CLI's happy path
is not broken by its own checks.
"""

from __future__ import annotations

import math

import pytest

from ldfa import cli
from ldfa.errors import ConfigError
from ldfa.theory import derive, get_rule
from ldfa.theory.config import INITS, TheoryConfig
from ldfa.theory.modes import reduce_to_modes
from ldfa.theory.rules import P_RULES, Q_RULES

# a small valid configuration; every bad case below changes one or two values of it
SMALL = dict(n_in=12, hidden=12, n_out=4, spectrum=(3.0, 2.0), t_max=5.0, n_points=21)
SMALL_ARGS = ["--n-in", "12", "--hidden", "12", "--n-out", "4", "--spectrum", "3,2",
              "--points", "21", "--t-max", "5"]


def config_error(**changes) -> str:
    """The message of the ConfigError that TheoryConfig(**SMALL, **changes) raises."""
    with pytest.raises(ConfigError) as info:
        TheoryConfig(**{**SMALL, **changes})
    msg = str(info.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


# -- the Python API ---------------------------------------------------------------------

def test_small_config_is_valid():
    cfg = TheoryConfig(**SMALL)
    assert cfg.spectrum == (3.0, 2.0) and cfg.widths == [12, 12, 4]
    ld = TheoryConfig(**SMALL, rule="ld", rank=4)
    assert ld.is_ld and ld.rank == 4


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("rule", ["nosuchrule", "BP", "ld-fa", ""])
def test_unknown_rule(rule):
    msg = config_error(rule=rule)
    assert repr(rule) in msg
    for allowed in ("bp", "fa", "kp", "dfa", "ld", "ldfa", "ldfa-local", "raf"):
        assert allowed in msg.split("allowed:")[1]


@pytest.mark.parametrize("bad", ["nope", "Oja", "aligned"])
def test_unknown_p_rule(bad):
    msg = config_error(rule="ld", rank=1, p_rule=bad)
    assert f"p_rule {bad!r}" in msg
    assert all(p in msg for p in P_RULES)


@pytest.mark.parametrize("bad", ["nope", "oja", "svd"])
def test_unknown_q_rule(bad):
    msg = config_error(rule="ld", rank=1, q_rule=bad)
    assert f"q_rule {bad!r}" in msg
    assert all(q in msg for q in Q_RULES)


@pytest.mark.parametrize("rule", ["ld", "ldfa", "ldfa-local", "raf"])
@pytest.mark.parametrize("rank", [0, -1])
def test_rank_below_one(rule, rank):
    msg = config_error(rule=rule, rank=rank)
    assert f"r={rank}" in msg and "1 <= r <= d = 4" in msg


@pytest.mark.parametrize("rank", [5, 100])
def test_rank_above_output_dimension(rank):
    msg = config_error(rule="ld", rank=rank)  # d = n_out = 4
    assert f"r={rank}" in msg and "d = 4" in msg


def test_rank_must_be_an_integer():
    msg = config_error(rule="ld", rank=2.0)
    assert "r=2.0" in msg and "integer" in msg


def test_rank_above_hidden_width():
    msg = config_error(rule="ld", rank=3, hidden=2, spectrum=(1.0,))
    assert "r=3" in msg and "hidden width 2" in msg


@pytest.mark.parametrize("rule", ["bp", "fa", "kp", "dfa"])
def test_rank_for_a_non_ld_rule(rule):
    msg = config_error(rule=rule, rank=2)
    assert "r=2" in msg and repr(rule) in msg and "ld" in msg


@pytest.mark.parametrize("rule", ["ld", "ldfa", "raf"])
def test_ld_without_rank(rule):
    msg = config_error(rule=rule)
    assert "rank" in msg and "1..d" in msg


@pytest.mark.parametrize("name", ["tau", "tau_b", "tau_p", "tau_q", "init_scale", "t_max"])
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf])
def test_non_positive_times_and_scales(name, value):
    msg = config_error(**{name: value})
    assert f"{name}={value!r}" in msg and "positive" in msg


@pytest.mark.parametrize("name", ["n_in", "hidden", "n_out", "n_points"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_sizes_must_be_positive_integers(name, value):
    msg = config_error(**{name: value})
    assert f"{name}={value!r}" in msg and "positive integer" in msg


@pytest.mark.parametrize("n_in, n_out, spectrum", [
    (12, 4, (5, 4, 3, 2, 1)),  # more modes than d
    (3, 4, (4, 3, 2, 1)),  # more modes than n_in
    (2, 2, (1, 1, 1)),
])
def test_more_modes_than_the_teacher_has(n_in, n_out, spectrum):
    msg = config_error(n_in=n_in, n_out=n_out, spectrum=spectrum)
    assert f"{len(spectrum)} modes" in msg and f"at most {min(n_in, n_out)}" in msg


@pytest.mark.parametrize("spectrum", [(), (3.0, -1.0), (0.0,)])
def test_spectrum_values(spectrum):
    msg = config_error(spectrum=spectrum)
    assert f"spectrum={list(spectrum)}" in msg and "> 0" in msg


def test_aligned_init_needs_hidden_at_least_modes():
    msg = config_error(init="aligned", hidden=2, spectrum=(3.0, 2.0, 1.0))
    assert "init='aligned'" in msg and "(3)" in msg and "got 2" in msg
    # hidden = number of modes is enough
    TheoryConfig(**{**SMALL, "init": "aligned", "hidden": 2})


@pytest.mark.parametrize("init", ["svd", "Random", "zeros"])
def test_unknown_init(init):
    msg = config_error(init=init)
    assert f"init={init!r}" in msg and all(i in msg for i in INITS)


@pytest.mark.parametrize("layers", [1, 0, -2, 2.0])
def test_layers_below_two(layers):
    msg = config_error(layers=layers)
    assert f"layers={layers!r}" in msg and ">= 2" in msg


@pytest.mark.parametrize("p_rule, q_rule", [("oja", "kp"), ("kp", "aligned"), ("kp", "kp")])
def test_direct_with_kp(p_rule, q_rule):
    msg = config_error(rule="ld", rank=1, p_rule=p_rule, q_rule=q_rule, direct=True)
    assert "kp" in msg and "direct" in msg and f"q_rule {q_rule!r}" in msg


def test_direct_preset_with_kp():
    msg = config_error(rule="raf", rank=1, direct=True)  # raf = (oja, kp)
    assert "q_rule 'kp'" in msg and "direct" in msg


@pytest.mark.parametrize("rule", ["bp", "fa", "kp"])
def test_no_direct_variant(rule):
    msg = config_error(rule=rule, direct=True)
    assert repr(rule) in msg and "dfa, ld" in msg


@pytest.mark.parametrize("rule", ["bp", "dfa"])
def test_p_q_rules_for_a_non_ld_rule(rule):
    msg = config_error(rule=rule, p_rule="oja")
    assert repr(rule) in msg and "ld rules only" in msg


def test_negative_noise_and_weight_decay():
    assert "noise=-0.1" in config_error(noise=-0.1)
    assert "weight_decay=-1.0" in config_error(weight_decay=-1.0)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_spectrum_is_rejected(value):
    config_error(spectrum=(3.0, value))


@pytest.mark.parametrize("name", ["noise", "weight_decay"])
def test_nan_noise_and_weight_decay_are_rejected(name):
    config_error(**{name: math.nan})


def test_get_rule_and_derive_errors():
    with pytest.raises(ConfigError, match="unknown rule 'nosuch'"):
        get_rule("nosuch")
    with pytest.raises(ConfigError, match="unknown p_rule 'nope'"):
        get_rule("ld", p_rule="nope")
    with pytest.raises(ConfigError, match="unknown q_rule 'nope'"):
        get_rule("ldfa", q_rule="nope")
    with pytest.raises(ConfigError, match="kp needs layerwise feedback"):
        get_rule("ld", q_rule="kp", direct=True)
    with pytest.raises(ConfigError, match=r"layers=1: .*>= 2"):
        derive("bp", layers=1)
    with pytest.raises(ConfigError, match=r"modes=1"):
        reduce_to_modes(derive("bp"), modes=1)


# -- the CLI ------------------------------------------------------------------------------

def run_cli(capsys, argv) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # a value refused while parsing (argparse's range checks)
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *needles):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("ldfa") and ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert out == ""  # nothing printed as if it had worked


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the CLI starts integrating: validation must come first."""
    import ldfa.theory.integrate as integrate_mod

    def boom(*args, **kwargs):
        raise AssertionError("compute started before the configuration was rejected")

    monkeypatch.setattr(integrate_mod, "integrate", boom)
    monkeypatch.setattr(integrate_mod, "integrate_modes", boom)


@pytest.mark.parametrize("argv, needles", [
    (["theory", "ld", "--rank", "0"], ["--rank: 0", "allowed: 1.."]),
    (["theory", "ld", "--rank", "5"], ["r=5", "d = 4"]),
    (["theory", "ld"], ["rank", "1..d"]),
    (["theory", "ldfa"], ["rank"]),
    (["theory", "bp", "--rank", "2"], ["r=2", "'bp'"]),
    (["theory", "bp", "--tau", "-1"], ["--tau: -1", "> 0"]),
    (["theory", "bp", "--tau-p", "0"], ["--tau-p: 0", "> 0"]),
    (["theory", "bp", "--init-scale", "0"], ["init_scale=0.0", "positive"]),
    (["theory", "bp", "--t-max", "-5"], ["--t-max: -5", "> 0"]),
    (["theory", "bp", "--spectrum", "1,x"], ["'1,x'", "comma-separated numbers"]),
    (["theory", "bp", "--spectrum", "5,4,3,2,1"], ["5 modes", "at most 4"]),
    (["theory", "bp", "--spectrum", "3,-2"], ["spectrum=[3.0, -2.0]", "> 0"]),
    (["theory", "bp", "--init", "aligned", "--hidden", "1"], ["init='aligned'", "got 1"]),
    (["theory", "bp", "--init", "ones"], ["init='ones'", "random, aligned, first-zero"]),
    (["theory", "bp", "--layers", "1"], ["--layers: 1", "2..8"]),
    (["theory", "bp", "--points", "0"], ["--points: 0", "2.."]),
    (["theory", "nosuchrule"], ["'nosuchrule'", "allowed: bp"]),
    (["theory", "ld", "--rank", "1", "--p-rule", "nope"], ["--p-rule 'nope'", "oja"]),
    (["theory", "ld", "--rank", "1", "--q-rule", "nope"], ["--q-rule 'nope'", "aligned"]),
    (["theory", "ld", "--rank", "1", "--q-rule", "kp", "--direct"], ["kp", "--direct"]),
    (["theory", "bp", "--direct"], ["'bp'", "dfa, ld"]),
])
def test_cli_theory_rejects(capsys, tmp_path, no_compute, argv, needles):
    out_dir = tmp_path / "out"
    # the small sizes come first so that argv's own values override them
    argv = argv[:2] + SMALL_ARGS + argv[2:] + ["--out", str(out_dir)]
    assert_one_line_error(*run_cli(capsys, argv), *needles)
    assert not out_dir.exists()


@pytest.mark.parametrize("argv, needles", [
    (["derive", "nosuchrule"], ["'nosuchrule'", "allowed:", "ldfa-local"]),
    (["derive", "bp", "--layers", "1"], ["--layers: 1", "2..8"]),
    (["derive", "bp", "--direct"], ["'bp'", "dfa, ld"]),
    (["derive", "fa", "--p-rule", "oja"], ["'fa'", "ld rules only"]),
    (["derive", "ld", "--p-rule", "pca"], ["--p-rule 'pca'", "fixed, oja, svd, kp, lowrank"]),
    (["derive", "ld", "--q-rule", "transpose"], ["--q-rule 'transpose'", "fixed, aligned, kp"]),
    (["derive", "ld", "--p-rule", "kp", "--q-rule", "fixed", "--direct"], ["kp", "--direct"]),
    (["derive", "ldfa-local", "--direct"], ["kp", "--direct"]),
])
def test_cli_derive_rejects(capsys, argv, needles):
    assert_one_line_error(*run_cli(capsys, argv), *needles)


def test_cli_out_is_an_existing_file(capsys, tmp_path, no_compute):
    target = tmp_path / "results"
    original = b"do not touch\x00\xff\n"
    target.write_bytes(original)
    before = target.stat()
    argv = ["theory", "bp", *SMALL_ARGS, "--out", str(target)]
    assert_one_line_error(*run_cli(capsys, argv), str(target), "not a folder")
    assert target.read_bytes() == original
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_cli_valid_call_succeeds(capsys, tmp_path):
    """The same arguments as the rejected calls, minus the bad value, do work."""
    code, out, err = run_cli(capsys, ["theory", "bp", *SMALL_ARGS, "--out", str(tmp_path)])
    assert code == 0 and err == ""
    assert "integrated matrix ODE to t = 5 tau" in out
    assert (tmp_path / "bp.csv").is_file() and (tmp_path / "bp.png").is_file()


def test_cli_single_point_is_handled(capsys, tmp_path):
    argv = ["theory", "bp", *SMALL_ARGS, "--points", "1", "--out", str(tmp_path)]
    code, out, err = run_cli(capsys, argv)
    assert code in (0, 2)
    if code == 2:
        assert_one_line_error(code, out, err, "--points: 1")


def test_cli_out_below_an_existing_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    argv = ["theory", "bp", *SMALL_ARGS, "--out", str(tmp_path / "f" / "sub")]
    assert_one_line_error(*run_cli(capsys, argv), "--out")


def test_bench_rejects_unknown_names(capsys):
    from ldfa import cli

    assert cli.main(["bench", "--only", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
