"""`import ldfa` is light and leads everywhere: subpackages and the first names are attributes,
imported on first use (so importing the package does not import torch or sympy)."""

import subprocess
import sys

import ldfa


def test_import_ldfa_imports_neither_torch_nor_sympy():
    probe = "import sys, ldfa; print('torch' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_subpackages_are_attributes():
    import ldfa.bridge
    import ldfa.figures
    import ldfa.sim
    import ldfa.theory

    assert (ldfa.theory, ldfa.sim, ldfa.bridge, ldfa.figures) == (
        sys.modules["ldfa.theory"], sys.modules["ldfa.sim"], sys.modules["ldfa.bridge"],
        sys.modules["ldfa.figures"])


def test_first_names_are_the_real_functions():
    from ldfa.figures.verify import run
    from ldfa.sim.layers import convert
    from ldfa.sim.train import TrainConfig, train
    from ldfa.theory.config import TheoryConfig
    from ldfa.theory.errors import ConfigError
    from ldfa.theory.integrate import integrate

    assert ldfa.derive is sys.modules["ldfa.theory.derive"].derive
    assert ldfa.integrate is integrate and ldfa.TheoryConfig is TheoryConfig
    assert ldfa.convert is convert and ldfa.train is train and ldfa.TrainConfig is TrainConfig
    assert ldfa.verify is run and ldfa.ConfigError is ConfigError
    assert ldfa.verify_rule is sys.modules["ldfa.bridge.rule_check"].verify_rule
    assert set(ldfa.__all__) <= set(dir(ldfa))


def test_from_ldfa_sim_import_convert():
    from ldfa.sim import TrainConfig, build, convert, feedback_parameters

    assert convert is sys.modules["ldfa.sim.layers"].convert
    assert TrainConfig is sys.modules["ldfa.sim.train"].TrainConfig
    assert build is sys.modules["ldfa.sim.models"].build
    assert feedback_parameters is sys.modules["ldfa.sim.layers"].feedback_parameters


def test_unknown_names_are_attribute_errors():
    for module in (ldfa, ldfa.sim):
        try:
            module.no_such_name  # noqa: B018
        except AttributeError as err:
            assert "no_such_name" in str(err)
        else:
            raise AssertionError(f"{module.__name__}.no_such_name did not fail")
