"""One rule vocabulary: theory and simulation read every name, factor rule, preset and default
from ldfa.theory.rules, and `ldfa theory X` means the rule `ldfa train --rule X` trains."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ldfa import cli
from ldfa.errors import ConfigError
from ldfa.sim.feedback import DFA, IMPLEMENTATIONS, DirectLowDim, LowDim, Sign, WeightMirror
from ldfa.sim.generic import GenericRule
from ldfa.sim.layers import convert, make_rule
from ldfa.theory import rules
from ldfa.theory.config import TheoryConfig

SIM = Path(__file__).resolve().parent.parent / "sim"


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def sim_defaults(rule_obj) -> dict:
    """The options a simulation rule object actually runs with, in the theory's option names."""
    if isinstance(rule_obj, LowDim):
        return {k: getattr(rule_obj, k) for k in rules.LD_DEFAULTS}
    if isinstance(rule_obj, DirectLowDim):
        return {"p_rule": rule_obj.p_rule, "q_rule": "fixed", "conv_feedback": rule_obj.conv_feedback}
    if isinstance(rule_obj, DFA):
        return {"conv_feedback": rule_obj.conv_feedback}
    if isinstance(rule_obj, WeightMirror):
        return {"mirror_batch": rule_obj.mirror_batch, "noise_std": rule_obj.noise_std}
    if isinstance(rule_obj, Sign):
        return {"scaling": rule_obj.scaling}
    if isinstance(rule_obj, GenericRule):
        return dict(rule_obj.spec.options)
    return {}


@pytest.mark.parametrize("name", rules.rule_names())
def test_theory_and_simulation_defaults_are_equal(name):
    spec = rules.resolve(name, rank=2 if rules.is_ld(name) else None)
    model = convert(tiny(), name, rank=spec.rank)
    layer_rule = model[2].rule
    expected = rules.defaults(name)
    got = sim_defaults(layer_rule)
    assert got == {k: expected[k] for k in got}, (name, got, expected)
    assert set(got) == set(expected), (name, sorted(got), sorted(expected))
    if spec.is_ld:  # the same factor rules as the theory's rule of that name
        assert rules.get_rule(name).name == f"ld[{got['p_rule']},{got['q_rule']}]"


def test_direct_ld_defaults_are_equal():
    model = convert(tiny(), "ld", rank=2, direct=True)
    assert sim_defaults(model[2].rule) == {k: rules.LD_DIRECT_DEFAULTS[k]
                                           for k in ("p_rule", "q_rule", "conv_feedback")}
    assert rules.get_rule("ld", direct=True).name == "ld[oja,fixed]-direct"


def test_every_rule_has_a_fast_path_or_trains_generically():
    for name in rules.rule_names():
        spec = rules.resolve(name, rank=2 if rules.is_ld(name) else None)
        r = make_rule(spec, 3)
        assert (spec.base in IMPLEMENTATIONS) or isinstance(r, GenericRule)
    assert set(IMPLEMENTATIONS) <= set(rules.RULES) | {"ld"}  # registered under theory names only


def test_sim_does_not_relist_names_presets_or_defaults():
    pattern = re.compile(r"^(P_RULES|Q_RULES|PRESETS|SIGN_SCALINGS)\s*=|\"ldfa-local\"|'ldfa-local'", re.M)
    offenders = [p.name for p in SIM.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_presets_carry_their_full_defaults():
    assert rules.defaults("ldfa") | {} == {**rules.LD_DEFAULTS, "p_rule": "lowrank", "q_rule": "lowrank",
                                          "factor_init": "svd"}
    assert rules.defaults("raf")["factor_init"] == "random"
    assert rules.defaults("ldfa-local")["factor_init"] == "svd"
    model = convert(tiny(), "ldfa", rank=2)
    assert model[2].rule.factor_init == "svd" and model[2].rule.lowrank_scale == "auto"


def test_mirror_is_in_the_vocabulary_with_a_theory_flow():
    import sympy as sp

    from ldfa.theory import derive

    ode = derive("ld", p_rule="fixed", q_rule="mirror")
    Q = next(X for X in ode.flows if X.name.startswith("Q"))
    W2 = ode.weights[1]
    P = next(X for X in ode.fixed if X.name.startswith("P"))
    assert sp.simplify((ode.flows[Q] - W2.T * P.T).doit()) == sp.ZeroMatrix(*Q.shape)


def test_sign_is_listed_but_refused_by_the_theory():
    assert "sign" in rules.rule_names()
    with pytest.raises(ConfigError, match="no linear theory"):
        rules.get_rule("sign")
    with pytest.raises(ConfigError, match="no linear theory"):
        TheoryConfig(rule="sign")
    convert(tiny(), "sign")  # the simulation trains it with its own implementation


def test_orientation_round_trip():
    M = torch.arange(6.0).reshape(2, 3)
    for kind in ("feedback", "compress", "expand"):
        assert torch.equal(rules.from_weight_orientation(kind, rules.to_weight_orientation(kind, M)), M)
    assert rules.to_weight_orientation("feedback", M).shape == (3, 2)
    assert rules.to_weight_orientation("compress", M).shape == (2, 3)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="ld", p_rule="nope", rank=1), "p_rule 'nope'"),
    (dict(name="ld", q_rule="nope", rank=1), "q_rule 'nope'"),
    (dict(name="ld", rank=0), "rank r=0"),
    (dict(name="bp", rank=2), "rank r=2"),
    (dict(name="ld", rank=1, factor_init="zeros"), "factor_init 'zeros'"),
    (dict(name="ld", rank=1, lowrank_scale="sometimes"), "lowrank_scale='sometimes'"),
    (dict(name="fa", rank=None, scaling="usf"), "scaling='usf'"),
])
def test_validation_is_written_once_and_names_parameters(kwargs, needle):
    name = kwargs.pop("name")
    for check in (lambda: rules.resolve(name, **kwargs), lambda: convert(tiny(), name, **kwargs)):
        with pytest.raises(ConfigError) as info:
            check()
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_cli_maps_parameters_to_flags(capsys):
    code = cli.main(["train", "--rule", "ld", "--rank", "1", "--p-rule", "nope", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--p-rule 'nope'" in err
    code = cli.main(["theory", "ld", "--rank", "1", "--direct"])
    assert code == 0 or "--direct" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["theory", "--help"], ["train", "--help"], ["derive", "--help"]])
def test_help_prints_the_defaults(command, capsys):
    with pytest.raises(SystemExit):
        cli.main(command)
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    for needle in ("ld (p_rule=oja, q_rule=kp, factor_init=random)",
                   "ldfa (p_rule=lowrank, q_rule=lowrank, factor_init=svd)",
                   "--direct: p_rule=oja, q_rule=fixed"):
        assert needle in out


def test_same_seed_same_teacher_in_theory_and_simulation():
    import numpy as np

    from ldfa.bridge.linear import teacher_tensors
    from ldfa.sim.data import linear_teacher
    from ldfa.theory.integrate import teacher

    cfg = TheoryConfig(n_in=9, hidden=5, n_out=4, spectrum=(3.0, 2.0, 1.0), seed=7)
    W_theory, U, V = teacher(cfg)
    _, (W_sim, U_sim, V_sim) = linear_teacher(9, 4, (3.0, 2.0, 1.0), n_samples=20, seed=7)
    W_bridge = teacher_tensors(9, 4, (3.0, 2.0, 1.0), seed=7)[0]
    np.testing.assert_array_equal(W_theory, W_sim.numpy())
    np.testing.assert_array_equal(W_theory, W_bridge.numpy())
    np.testing.assert_allclose(np.linalg.svd(W_theory, compute_uv=False)[:3], [3.0, 2.0, 1.0], rtol=1e-12)
    assert not np.allclose(W_theory, teacher(TheoryConfig(n_in=9, hidden=5, n_out=4,
                                                          spectrum=(3.0, 2.0, 1.0), seed=8))[0])
