"""Two-layer erf teacher-student: closed-form averages, registry mapping, ODE against online SGD."""

import numpy as np
import pytest

from ldfa.sim import teacher_student as sim
from ldfa.theory import teacher_student as ts
from ldfa.theory.errors import ConfigError


def _cov(seed=0, n=4):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    return A @ A.T / n + 0.3 * np.eye(n)


def test_closed_forms_match_monte_carlo():
    O = _cov()
    n = 200_000
    u = np.linalg.cholesky(O) @ np.random.default_rng(1).standard_normal((4, n))
    gu, gp = ts.g(u), ts.g_prime(u)
    for exact, samples in ((ts.i2(O), gu[:, None] * gu[None, :]),
                           (ts.i3(O, 2), gp[:2, None, None] * u[None, :, None] * gu[None, None, :]),
                           (ts.i4(O, 2), gp[:2, None, None, None] * gp[None, :2, None, None]
                            * gu[None, None, :, None] * gu[None, None, None, :])):
        se = samples.std(-1) / np.sqrt(n)
        assert np.max(np.abs(samples.mean(-1) - exact) / se) < 5


def test_i2_special_values():
    # ⟨g(u)²⟩ for unit variance: (2/π) arcsin(1/2) = 1/3
    assert ts.i2(np.eye(1))[0, 0] == pytest.approx(1 / 3)
    # independent fields: I3 and I4 factorise to zero where one g(u) stands alone
    O = np.eye(3)
    assert abs(ts.i3(O, 1)[0, 1, 2]) < 1e-15
    assert abs(ts.i4(O, 1)[0, 0, 1, 2]) < 1e-15


def test_generalisation_error_matches_sampled_loss():
    setup = ts.Setup(K=2, M=3, D=2)
    w0 = sim.initial_weights(setup, 100, 0)
    Q, R, T = ts.overlaps(w0["w"], w0["wstar"])
    x = np.random.default_rng(5).standard_normal((50_000, 100))
    e = (w0["vstar"] @ ts.g(w0["wstar"] @ x.T / 10) - w0["v"] @ ts.g(w0["w"] @ x.T / 10))
    sq = 0.5 * (e**2).sum(0)
    assert ts.generalisation_error(Q, R, T, w0["v"], w0["vstar"]) == \
        pytest.approx(sq.mean(), abs=5 * sq.std() / np.sqrt(len(sq)))


@pytest.mark.parametrize("rule,kw,feedback", [
    ("bp", {}, "v.T"), ("fa", {}, "B"), ("dfa", {}, "B_d"), ("kp", {}, "B"),
    ("ld", dict(p_rule="fixed", q_rule="fixed"), "Q_f*P"),
    ("ld", dict(p_rule="oja", q_rule="aligned"), "(v.T*P.T)*P")])
def test_registry_rules_map_to_feedback(rule, kw, feedback):
    fs = ts.feedback_system(rule, **kw)
    assert str(fs.feedback) == feedback
    assert r"\frac{\mathrm{d}R_{km}}" in ts.equations_latex(rule, **kw)


def _init(setup, N=300, seed=0):
    return sim.initial_weights(setup, N, seed)


def test_oja_at_full_rank_with_orthonormal_p_is_bp():
    t = np.linspace(0, 5, 6)
    bp = ts.Setup(K=2, M=2, D=3, rule="bp")
    ld = ts.Setup(K=2, M=2, D=3, rule="ld", p_rule="oja", q_rule="aligned", rank=3)
    w0 = _init(ld)
    a = ts.integrate_from(bp, w0["w"], w0["wstar"], w0["v"], w0["vstar"], {}, t)
    b = ts.integrate_from(ld, w0["w"], w0["wstar"], w0["v"], w0["vstar"], w0["mats"], t)
    assert np.allclose(a.eps, b.eps, rtol=1e-5)
    assert a.eps[-1] < 0.5 * a.eps[0]


def test_dfa_equals_fa_at_two_layers():
    t = np.linspace(0, 4, 5)
    fa, dfa = ts.Setup(K=2, M=2, D=2, rule="fa"), ts.Setup(K=2, M=2, D=2, rule="dfa")
    w0 = _init(fa)
    a = ts.integrate_from(fa, w0["w"], w0["wstar"], w0["v"], w0["vstar"], w0["mats"], t)
    b = ts.integrate_from(dfa, w0["w"], w0["wstar"], w0["v"], w0["vstar"], {"D": w0["mats"]["B"]}, t)
    assert np.array_equal(a.eps, b.eps)


def test_kp_aligns_feedback_with_weights():
    t = np.linspace(0, 30, 4)
    s = ts.Setup(K=2, M=2, D=2, rule="kp", lam=0.1)
    w0 = _init(s)
    sol = ts.integrate_from(s, w0["w"], w0["wstar"], w0["v"], w0["vstar"], w0["mats"], t)
    al = sol.feedback_alignment()
    assert al[-1] > 0.95 and al[-1] > al[0]


def test_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="rank"):
        ts.Setup(K=2, M=2, D=2, rule="ld", p_rule="oja", q_rule="aligned", rank=3)
    with pytest.raises(ConfigError, match="K="):
        ts.Setup(K=0)
    with pytest.raises(ConfigError, match="p_rule"):
        sim.rule_matrix_names(ts.Setup(K=2, M=2, D=2, rule="ld", p_rule="svd", q_rule="aligned", rank=1))
    with pytest.raises(ConfigError, match="N="):
        sim.simulate(ts.Setup(), 1, [0], [0, 1])


def test_simulation_is_deterministic_and_batch_independent():
    s = ts.Setup(K=2, M=2, D=2, rule="ld", p_rule="oja", q_rule="aligned", rank=1)
    t = [0.0, 0.5, 1.0]
    a = sim.simulate(s, 100, [0, 1], t)
    b = sim.simulate(s, 100, [1], t)
    assert np.array_equal(a.Q[1], b.Q[0]) and np.array_equal(a.mats["P"][1], b.mats["P"][0])
    c = sim.simulate_many([ts.Setup(K=2, M=2, D=2, rule="bp"), s], 100, [1], t)[1]
    assert np.array_equal(c.Q[0], b.Q[0])


@pytest.mark.parametrize("rule,kw", [("bp", {}), ("fa", {}),
                                     ("ld", dict(p_rule="oja", q_rule="aligned", rank=1)),
                                     ("ld", dict(p_rule="fixed", q_rule="kp", rank=1, lam=0.05))])
def test_ode_tracks_online_sgd(rule, kw):
    """Seed-mean of (ε_sim − ε_ode)/ε_ode within 4 standard errors of the seed scatter."""
    s = ts.Setup(K=2, M=2, D=2, rule=rule, **kw)
    t = np.linspace(0, 3, 4)
    run = sim.simulate(s, 400, range(4), t)
    ode = np.array([ts.integrate_from(s, i["w"], i["wstar"], i["v"], i["vstar"], i["mats"], t).eps
                    for i in run.inits])
    rel = (run.eps() - ode)[:, 1:] / ode[:, 1:]
    assert np.max(np.abs(rel.mean(0))) <= 4 * np.max(rel.std(0, ddof=1)) / 2
    assert ode[:, -1].mean() < ode[:, 0].mean()


def test_rank_figure_tiny(tmp_path):
    from ldfa.figures import nonlinear_figs
    from ldfa.figures.store import Store

    paths = nonlinear_figs.nonlinear_rank("tiny", tmp_path, Store(tmp_path / "store"))
    names = {p.name for p in paths}
    assert {"nonlinear_rank.png", "nonlinear_rank.json", "nonlinear_rank_numbers.tex"} <= names
    tex = (tmp_path / "nonlinear_rank_numbers.tex").read_text()
    assert r"\newcommand{\TsSimBpTwo}" in tex and r"\TsEquations" in tex
    with pytest.raises(ConfigError, match="preset"):
        nonlinear_figs.compute("huge")
