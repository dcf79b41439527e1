"""ldfa.bridge: the theory's linear net simulated from the theory's own start, verify_rule, and
the docs/rules.md "Adding a rule" example run end to end (derive, integrate, train, verify)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fashion_mnist

from ldfa import cli
from ldfa.bridge import linear_data, simulate_config, theory_matrix, verify_rule
from ldfa.bridge.rule_check import RuleCheck
from ldfa.theory import FeedbackRule, Matrix, rules
from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import MatrixSystem

DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def test_linear_data_is_exactly_white_and_the_noise_orthogonal():
    W = torch.randn(3, 5, dtype=torch.float64)
    x, y = linear_data(5, W, seed=1, noise=0.3)
    n = len(x)
    torch.testing.assert_close(x.T @ x / n, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)
    noise = y - x @ W.T
    torch.testing.assert_close(x.T @ noise, torch.zeros(5, 3, dtype=torch.float64), rtol=0, atol=1e-10)
    expected = 0.09 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(noise.T @ noise / n, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule, kw", [("kp", {}), ("ld", dict(rank=2, p_rule="oja", q_rule="kp")),
                                      ("ld", dict(rank=2, direct=True))])
def test_simulation_starts_from_the_theory_state(rule, kw):
    """Weights and rule matrices after set-up are the theory's initial matrices, oriented by
    ldfa.theory.rules (B_w = Bᵀ, Q_w = Qᵀ)."""
    cfg = TheoryConfig(rule=rule, n_in=6, hidden=5, n_out=4, spectrum=(2.0, 1.0), t_max=0.01, **kw)
    system = MatrixSystem(cfg)
    y0, fixed = system.initial()
    mats = dict(zip([X.name for X in system.state], system.unpack(y0)))
    mats.update({X.name: M for X, M in zip(system.fixed, fixed)})
    run = simulate_config(cfg, eta=0.01, y0=y0)  # one step: compare before it via the recorded loss
    cfg0 = TheoryConfig(**{**cfg.to_dict(), "t_max": 1e-9})
    run0 = simulate_config(cfg0, eta=1.0)  # zero steps: the initial state itself
    model = run0.model
    np.testing.assert_array_equal(model.layers[0].weight.detach().numpy(), mats["W_1"])
    np.testing.assert_array_equal(model.layers[1].weight.detach().numpy(), mats["W_2"])
    top = model.layers[1]
    for name in ("B", "P", "Q"):
        theory_name = f"{name}_2" if not cfg.direct else ("P" if name == "P" else f"{name}_1")
        if theory_name in mats and getattr(top, name, None) is not None:
            np.testing.assert_array_equal(theory_matrix(top, name), mats[theory_name])
    assert abs(run.loss[0] - run0.loss[0]) < 1e-15


def test_verify_rule_passes_for_built_in_rules():
    for name, kw in (("fa", {}), ("ld", dict(rank=2))):
        res = verify_rule(name, **kw)
        assert res.passed, res.summary()
        assert 0.35 <= res.ratio <= 0.65 and res.deviation <= res.tolerance


def test_verify_rule_fails_with_a_wrong_theory():
    wrong = FeedbackRule("kp-too-fast", "Kolen-Pollack at twice the speed",
                         matrices={"B": Matrix(flow=lambda c: 2 * c.dW.T - c.lam * c.B, needs_dW=True)},
                         feedback=lambda c: c.B)
    res = verify_rule("kp", theory=wrong)
    assert not res.passed, res.summary()


def test_cli_verify_rule_exit_status(monkeypatch, capsys):
    import ldfa.bridge as bridge

    bad = RuleCheck("x", 1.0, 1.0, 0.1, 1.0, 0.01, False)
    monkeypatch.setattr(bridge, "verify_rule", lambda *a, **k: bad)
    assert cli.main(["verify", "--rule", "fa"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert cli.main(["verify", "--rule", "ld", "--only", "saxe"]) == 2  # --only goes without --rule


# -- the docs/rules.md example ---------------------------------------------------------------

def doc_rule_file(tmp_path) -> Path:
    text = DOC.read_text()
    m = re.search(r"<!-- rule-file: (\S+) -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/rules.md has no rule-file example"
    path = tmp_path / m.group(1)
    path.write_text(m.group(2))
    return path


@pytest.fixture
def kp_half(tmp_path):
    path = doc_rule_file(tmp_path)
    yield path
    rules.RULES.pop("kp-half", None)


def test_doc_example_is_derived_integrated_and_verified(kp_half, tmp_path, capsys):
    assert cli.main(["derive", "kp-half", "--rule-file", str(kp_half)]) == 0
    out = capsys.readouterr().out
    assert "tau_B*Derivative(B_2, t) = " in out and "kp-half" in out
    assert cli.main(["theory", "kp-half", "--rule-file", str(kp_half), "--n-in", "12", "--hidden", "10",
                     "--n-out", "6", "--spectrum", "3,2,1", "--t-max", "2", "--points", "11",
                     "--out", str(tmp_path / "theory")]) == 0
    assert list((tmp_path / "theory").glob("kp-half*.csv"))
    assert cli.main(["verify", "--rule", "kp-half", "--rule-file", str(kp_half)]) == 0
    assert "pass" in capsys.readouterr().out


@needs_fashion_mnist
def test_doc_example_trains_on_fashion_mnist(kp_half, tmp_path, capsys):
    import json

    assert cli.main(["train", "--rule-file", str(kp_half), "--rule", "kp-half", "--steps", "50",
                     "--threads", "1", "--quiet", "--out", str(tmp_path), "--name", "kp-half"]) == 0
    summary = json.loads((tmp_path / "kp-half.summary.json").read_text())
    # 50 Adam steps of a 784-256-256-10 MLP: the built-in kp reaches 0.43 there (chance 0.1)
    assert summary["test_acc"] > 0.3
    assert summary["tuned_parameters"] > 0


def test_rule_file_must_exist(capsys):
    assert cli.main(["derive", "x", "--rule-file", "/nonexistent/rule.py"]) == 2
    assert "--rule-file" in capsys.readouterr().err
