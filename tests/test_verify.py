"""`ldfa verify`: the prediction registry, the comparison, and that a wrong theory makes every
check fail."""

import json

import numpy as np
import pytest
from conftest import needs_fashion_mnist

from ldfa import cli
from ldfa.figures import verify
from ldfa.theory import predictions as pred


def test_registry_entries_state_their_tolerance():
    assert len(verify.CHECKS) >= 8
    for name, fn in verify.CHECKS.items():
        doc = fn.__doc__ or ""
        assert "prediction" in doc or "section" in doc, name  # names the prediction it checks
        assert "SPEC" not in doc, name
        assert "Tolerance" in doc or "Pass criterion" in doc, name  # and justifies its tolerance


def test_comparison():
    assert verify.relative([2.0, 4.0], [2.1, 4.0]) == pytest.approx(0.05)
    good = verify._result("x", "q", np.array([1.0, 2.0]), np.array([1.01, 2.0]), 0.02, {})
    bad = verify._result("x", "q", np.array([1.0, 2.0]), np.array([1.05, 2.0]), 0.02, {})
    nan = verify._result("x", "q", np.array([1.0]), np.array([np.nan]), 0.02, {})
    assert good.passed and not bad.passed and not nan.passed
    assert bad.deviation == pytest.approx(0.05)


@pytest.mark.parametrize("name", ["saxe", "fa", "fixed-p-plateau", "adapting-p-bp", "sequential-modes",
                                  "deep-balanced", "lambda-balanced"])
def test_linear_predictions_pass(name):
    res = verify.CHECKS[name](quick=True)
    assert res.passed, verify.format_row(res)
    assert res.deviation <= res.tolerance


def test_wrong_theory_fails():
    wrong_time = lambda s, u0, *a, **k: 1.1 * pred.bp_learning_time(s, u0)  # noqa: E731
    assert not verify.check_saxe(quick=True, learning_time=wrong_time).passed
    wrong_plateau = lambda W, B: 1.01 * pred.fixed_feedback_plateau(W, B)  # noqa: E731
    assert not verify.check_fixed_p(quick=True, plateau=wrong_plateau).passed
    # ld with r < rank W* does NOT follow bp's timing: bp's learning times are a wrong theory here
    bp_times = lambda spectrum, r, init_scale: [pred.bp_learning_time(s, init_scale**2)  # noqa: E731
                                                for s in spectrum]
    assert not verify.check_sequential(quick=True, learning_times=bp_times).passed
    assert not verify.check_fa(quick=True, final_loss=0.1).passed


def test_wrong_theory_fails_deep_lambda_adapting():
    slower = lambda f: (lambda *a, **k: 1.1 * f(*a, **k))  # noqa: E731
    assert not verify.check_deep(quick=True, learning_time=slower(pred.deep_learning_time)).passed
    lam_time = slower(pred.lambda_balanced_learning_time)
    assert not verify.check_lambda(quick=True, learning_time=lam_time).passed
    from ldfa.theory.config import TheoryConfig
    from ldfa.theory.integrate import integrate

    t = np.linspace(0.0, 6.0, 601)  # the quick check's times (η = 0.01)
    cfg = TheoryConfig(rule="bp", n_in=12, hidden=10, n_out=6, spectrum=verify.SPECTRUM, init="aligned",
                       init_scale=1e-2, t_max=6.0, n_points=601)
    bp_loss = integrate(cfg, t_eval=t)["loss"]
    assert not verify.check_adapting_p(quick=True, reference=1.1 * bp_loss).passed  # a 10% wrong theory


def test_fa_check_measures_the_conserved_quantity_it_names():
    """The fa check asserts conservation of the theory's K; a quantity that fa does not conserve
    (bp's balance W_2ᵀ W_2 - W_1 W_1ᵀ) makes it fail."""
    from ldfa.theory import derive

    res = verify.check_fa(quick=True)
    assert res.passed and 0 < res.deviation <= res.tolerance
    W1, W2 = derive("fa").weights
    assert not verify.check_fa(quick=True, quantity=("balance W_2^T W_2 - W_1 W_1^T",
                                                     W2.T * W2 - W1 * W1.T)).passed


def test_run_writes_report_and_plots(tmp_path):
    results = verify.run(["saxe", "lambda-balanced"], quick=True, out=tmp_path, progress=None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["results"]] == ["saxe", "lambda-balanced"]
    assert all(r["passed"] for r in report["results"]) and report["quick"] is True
    for r in results:
        assert (tmp_path / f"verify_{r.name}.png").stat().st_size > 5000
        assert (tmp_path / f"verify_{r.name}.pdf").exists()


def test_cli_exit_status(tmp_path, monkeypatch, capsys):
    assert cli.main(["verify", "--quick", "--only", "lambda-balanced", "--out", str(tmp_path)]) == 0
    failing = lambda quick=True: verify._result("fake", "q", np.array([1.0]), np.array([2.0]), 0.1,  # noqa: E731
                                                {"t": np.arange(2.0), "sim": np.ones((2, 1)), "theory": None})
    monkeypatch.setitem(verify.CHECKS, "fake", failing)
    assert cli.main(["verify", "--only", "fake", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed" in out
    assert cli.main(["verify", "--only", "nope"]) == 2


@needs_fashion_mnist
def test_nonlinear_rank_check():
    res = verify.check_nonlinear_rank(quick=True)
    assert res.passed and res.simulation <= 10


@needs_fashion_mnist
def test_nonlinear_rank_check_fails_with_a_wrong_criterion():
    """No rank can satisfy r* <= 0: the check must fail (one rank tried, to keep it short)."""
    assert not verify.check_nonlinear_rank(quick=True, classes=0, ranks=(1,)).passed
