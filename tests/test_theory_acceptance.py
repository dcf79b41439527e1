"""Acceptance of the theory engine: it derives, integrates and predicts correctly."""

import numpy as np
import pytest
import sympy as sp
from scipy.linalg import subspace_angles

from ldfa.theory import derive, get_rule
from ldfa.theory.analysis import (
    conserved_quantities,
    fixed_points,
    jacobian,
    ode_residual,
    saxe_solution,
    stability,
)
from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import integrate, integrate_modes, integrate_oja
from ldfa.theory.modes import reduce_to_modes, strength_ode
from ldfa.theory.predictions import (
    bp_learning_time,
    deep_learning_time,
    fixed_feedback_plateau,
    lambda_balanced_learning_time,
    mode_learning_times,
    saxe_mode_strength,
)

u = sp.Symbol("u", positive=True)
s = sp.Symbol("s", real=True)
lam = sp.Symbol("lambda", positive=True)


# -- symbolic ------------------------------------------------------------------------

def test_bp_mode_ode_is_saxe_logistic():
    modes = reduce_to_modes(derive("bp"))
    assert sp.simplify(strength_ode(modes) - 2 * u * (s - u)) == 0


def test_saxe_closed_form_solves_the_derived_ode():
    rhs = strength_ode(reduce_to_modes(derive("bp")))
    assert ode_residual(rhs.xreplace({s: sp.Symbol("s", positive=True)}), saxe_solution()) == 0
    # and a wrong closed form does not
    wrong = saxe_solution().xreplace({sp.Symbol("tau", positive=True): 2 * sp.Symbol("tau", positive=True)})
    assert ode_residual(rhs.xreplace({s: sp.Symbol("s", positive=True)}), wrong) != 0


@pytest.mark.parametrize("L", [3, 4])
def test_deep_balanced_mode_ode(L):
    rhs = strength_ode(reduce_to_modes(derive("bp", layers=L)))
    assert sp.simplify(rhs - L * u ** (2 - sp.Rational(2, L)) * (s - u)) == 0


def test_lambda_balanced_mode_ode():
    rhs = strength_ode(reduce_to_modes(derive("bp")), balance="lambda")
    assert sp.simplify(rhs - sp.sqrt(lam**2 + 4 * u**2) * (s - u)) == 0


def test_selected_modes_of_svd_aligned_ld_follow_bp():
    modes = reduce_to_modes(derive("ld", p_rule="svd", q_rule="aligned"))
    (chi,) = modes.selections
    assert sp.simplify(strength_ode(modes, subs={chi: 1}) - 2 * u * (s - u)) == 0
    # an unselected mode gets no feedback: W1's component is frozen
    a1 = modes.weights[0]
    assert modes.rates[a1].xreplace({chi: 0}) == 0


def test_diagonal_ansatz_is_checked():
    """Every rule shipped keeps diagonal matrices diagonal; reduction verifies it."""
    for name, kw in [("fa", {}), ("kp", {}), ("dfa", {}), ("ld", dict(p_rule="oja", q_rule="kp")),
                     ("ldfa", {}), ("ld", dict(p_rule="svd", q_rule="aligned", direct=True,
                                               layers=3))]:
        modes = reduce_to_modes(derive(name, **kw))
        assert set(modes.weights) <= set(modes.rates)


def test_conserved_quantities():
    names = lambda rule, **kw: [n for n, _, c in conserved_quantities(derive(rule, **kw))]  # noqa: E731
    assert names("bp") == ["balance W_2^T W_2 - W_1 W_1^T"]
    assert names("fa") == ["alignment B W_2 + W_2^T B^T - W_1 W_1^T"]
    assert names("ld", p_rule="fixed", q_rule="fixed") == ["alignment B W_2 + W_2^T B^T - W_1 W_1^T"]
    assert names("ld", p_rule="oja", q_rule="aligned") == []  # no candidate survives
    assert names("kp", weight_decay=True) == []  # decay breaks B - W^T conservation


def test_conserved_quantities_hold_numerically():
    for rule, key in [("bp", "balance"), ("fa", "alignment")]:
        cfg = TheoryConfig(rule=rule, n_in=8, hidden=6, n_out=4, spectrum=(3, 1), init_scale=0.3,
                           t_max=4, n_points=5, rtol=1e-11, atol=1e-13)
        traj = integrate(cfg)
        (_, K, _), = [c for c in conserved_quantities(derive(rule)) if c[0].startswith(key)]
        f = sp.lambdify(sorted(K.free_symbols, key=str), K, "numpy")
        from ldfa.theory.integrate import MatrixSystem

        sysm = MatrixSystem(cfg)
        y0, fixed = sysm.initial()
        start = dict(zip([X.name for X in sysm.state], sysm.unpack(y0)))
        start.update({X.name: M for X, M in zip(sysm.fixed, fixed)})
        names = [str(x) for x in sorted(K.free_symbols, key=str)]
        K0 = f(*[start[n] for n in names])
        K1 = f(*[traj.final[n] for n in names])
        assert np.abs(K1 - K0).max() < 1e-8 * max(1.0, np.abs(K0).max())
        assert np.abs(traj.final["W_1"] - start["W_1"]).max() > 0.1  # it did learn


def test_fixed_points_and_stability_of_mode_ode():
    rhs = strength_ode(reduce_to_modes(derive("bp")))
    x = sp.Symbol("x", real=True)
    pts = fixed_points({x: rhs.xreplace({u: x})})
    assert {p[x] for p in pts} == {0, s}
    eig = {p[x]: stability({x: rhs.xreplace({u: x})}, p) for p in pts}
    assert eig[0] == {2 * s: 1} and eig[s] == {-2 * s: 1}  # u = 0 unstable, u = s stable


@pytest.mark.parametrize("rule,kw", [("bp", {}), ("fa", {}),
                                     ("ld", dict(p_rule="oja", q_rule="aligned")),
                                     ("ldfa", {})])
def test_symbolic_jacobian_matches_finite_differences(rule, kw):
    modes = reduce_to_modes(derive(rule, **kw))
    xs = modes.variables
    params = sorted((set().union(*(r.free_symbols for r in modes.rates.values())) - set(xs)),
                    key=str)
    rng = np.random.default_rng(1)
    point = dict(zip(xs, rng.uniform(0.2, 1.5, len(xs))))
    pvals = dict(zip(params, rng.uniform(0.3, 2.0, len(params))))
    J = np.array(jacobian(modes.rates, xs).xreplace({**point, **pvals}), dtype=float)
    f = sp.lambdify(xs, [modes.rates[x].xreplace(pvals) for x in xs], "numpy")
    x0, h = np.array([point[x] for x in xs], float), 1e-6
    J_fd = np.column_stack([(np.array(f(*(x0 + h * e))) - np.array(f(*(x0 - h * e)))) / (2 * h)
                            for e in np.eye(len(xs))])
    np.testing.assert_allclose(J, J_fd, rtol=1e-6, atol=1e-8)
    ev, ev_fd = np.sort_complex(np.linalg.eigvals(J)), np.sort_complex(np.linalg.eigvals(J_fd))
    np.testing.assert_allclose(ev, ev_fd, rtol=1e-5, atol=1e-7)
    # symbolic eigenvalues (sympy) at the same point agree too
    sym_ev = sp.Matrix(J.round(12)).eigenvals() if len(xs) <= 3 else None
    if sym_ev is not None:
        got = np.sort_complex(np.array([complex(sp.N(k)) for k, m in sym_ev.items()
                                        for _ in range(m)]))
        np.testing.assert_allclose(got, ev_fd, rtol=1e-5, atol=1e-7)


# -- numerical -----------------------------------------------------------------------

def test_full_matrix_ode_matches_saxe_closed_form():
    cfg = TheoryConfig(rule="bp", init="aligned", init_scale=1e-2, n_in=40, hidden=30, n_out=10,
                       rtol=1e-11, atol=1e-14)
    traj = integrate(cfg)
    u0 = cfg.init_scale**2
    for a, sv in enumerate(cfg.spectrum):
        closed = saxe_mode_strength(traj.t, sv, u0, cfg.tau)
        assert np.max(np.abs(traj[f"mode_{a + 1}"] - closed) / closed) < 1e-6
    assert traj["mode_1"][-1] == pytest.approx(cfg.spectrum[0], rel=1e-6)  # it converged


def test_reduced_mode_ode_matches_closed_form():
    cfg = TheoryConfig(rule="bp", init="aligned", init_scale=1e-2, rtol=1e-11, atol=1e-14)
    traj = integrate_modes(cfg)
    for a, sv in enumerate(cfg.spectrum):
        closed = saxe_mode_strength(traj.t, sv, 1e-4)
        assert np.max(np.abs(traj[f"mode_{a + 1}"] - closed) / closed) < 1e-6


def test_oja_flow_converges_to_top_subspace():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 8))
    C = A @ A.T
    w, V = np.linalg.eigh(C)
    P0 = np.linalg.qr(rng.standard_normal((8, 3)))[0].T
    P = integrate_oja(C, P0, t_max=60 / (w[-3] - w[-4]))
    assert subspace_angles(P.T, V[:, -3:]).max() < 1e-6
    np.testing.assert_allclose(P @ P.T, np.eye(3), atol=1e-8)  # rows orthonormal
    assert subspace_angles(P0.T, V[:, -3:]).max() > 0.1  # it had somewhere to go


@pytest.mark.parametrize("p_rule,tau_p,tol", [("svd", 0.1, 1e-3), ("oja", 1e-3, 1e-3)])
def test_adapting_p_with_aligned_q_recovers_bp(p_rule, tau_p, tol):
    base = dict(n_in=30, hidden=30, n_out=10, spectrum=(5.0, 4.0, 3.0), init_scale=1e-3)
    bp = integrate(TheoryConfig(rule="bp", **base))
    ld = integrate(TheoryConfig(rule="ld", p_rule=p_rule, q_rule="aligned", rank=3, tau_p=tau_p,
                                **base))
    for key in ["loss", "mode_1", "mode_2", "mode_3"]:
        assert np.max(np.abs(ld[key] - bp[key])) / np.max(np.abs(bp[key])) < tol
    # the same rule with fixed P does not
    fixed = integrate(TheoryConfig(rule="ld", p_rule="fixed", q_rule="aligned", rank=3, **base))
    assert np.max(np.abs(fixed["loss"] - bp["loss"])) / bp["loss"].max() > 10 * tol


def test_fixed_random_p_plateaus_at_predicted_loss():
    cfg = TheoryConfig(rule="ld", p_rule="fixed", q_rule="fixed", rank=2, n_in=20, hidden=20,
                       n_out=5, spectrum=(3.0, 2.0, 1.0), init="first-zero", init_scale=1e-2,
                       t_max=200, n_points=11)
    traj = integrate(cfg)
    Wstar = traj.teacher[0]
    B = traj.final["Q_2"] @ traj.final["P_2"]
    predicted = fixed_feedback_plateau(Wstar, B)
    assert traj["loss"][-1] == pytest.approx(predicted, rel=1e-6)
    assert abs(traj["loss"][-2] - traj["loss"][-1]) < 1e-8  # a plateau, not a passing value
    eckart_young = 0.5 * 1.0**2  # best rank-2 loss: random P misassigns credit
    assert predicted > eckart_young + 0.1


def test_fixed_p_spanning_top_modes_reaches_eckart_young():
    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((5, 3)))[0]
    V = np.linalg.qr(rng.standard_normal((20, 3)))[0]
    Wstar = U @ np.diag([3.0, 2.0, 1.0]) @ V.T
    assert fixed_feedback_plateau(Wstar, U[:, :2].T) == pytest.approx(0.5)
    assert fixed_feedback_plateau(Wstar, rng.standard_normal((7, 5))) == pytest.approx(0.0, abs=1e-20)


def test_reduced_modes_match_full_matrix_with_svd_selection():
    cfg = TheoryConfig(rule="ld", p_rule="svd", q_rule="aligned", rank=2, n_in=5, hidden=5,
                       n_out=5, spectrum=(5.0, 4.0, 3.0, 2.0, 1.0), init="aligned",
                       init_scale=1e-2, t_max=12, n_points=121, rtol=1e-7, atol=1e-10)
    full, red = integrate(cfg), integrate_modes(cfg)
    # the selection switches (and chatters while residuals tie), so the difference is the
    # integration error: 3e-4 at rtol 1e-6, 4e-5 at 1e-7, 3e-6 at 1e-8 (measured)
    for a in range(1, 6):
        assert np.max(np.abs(full[f"mode_{a}"] - red[f"mode_{a}"])) < 1e-4


def test_mode_learning_times():
    spectrum = (5.0, 4.0, 3.0, 2.0, 1.0)
    u0 = 1e-3**2
    full = mode_learning_times(spectrum, rank=5, init_scale=1e-3)
    np.testing.assert_allclose(full, [bp_learning_time(sv, u0) for sv in spectrum], rtol=1e-4)
    for r in (1, 2, 3):
        times = mode_learning_times(spectrum, rank=r, init_scale=1e-3)
        assert np.all(np.diff(times) > 0)  # learned in sequence, strongest first
        assert np.all(times >= full - 1e-6)  # a bottleneck never speeds a mode up
        assert times[-1] > full[-1] * 1.1


def test_deep_and_lambda_learning_times():
    assert deep_learning_time(3.0, 1e-6, 2) == pytest.approx(bp_learning_time(3.0, 1e-6))
    assert lambda_balanced_learning_time(3.0, 1e-6, 0.0) == pytest.approx(bp_learning_time(3.0, 1e-6))
    # lazy regime: exponential learning at rate |λ|, t ≈ ln 2 / λ for large λ
    assert lambda_balanced_learning_time(3.0, 1e-6, 300.0) == pytest.approx(np.log(2) / 300, rel=0.02)
    # deeper nets from the same small u0 take longer
    assert deep_learning_time(3.0, 1e-6, 3) > 5 * deep_learning_time(3.0, 1e-6, 2)


def test_deep_matrix_ode_matches_reduced_modes():
    cfg = TheoryConfig(rule="bp", layers=3, init="aligned", init_scale=0.2, n_in=10, hidden=8,
                       n_out=6, spectrum=(3.0, 2.0), rtol=1e-10, atol=1e-12)
    full, red = integrate(cfg), integrate_modes(cfg)
    for a in (1, 2):
        np.testing.assert_allclose(full[f"mode_{a}"], red[f"mode_{a}"], rtol=1e-6, atol=1e-9)


def test_rule_definition_is_data():
    """A user's new rule is one definition, and the engine derives its dynamics."""
    from ldfa.theory import FeedbackRule, Matrix, register_rule
    from ldfa.theory.rules import RULES

    try:
        register_rule(FeedbackRule(
            name="half-kp", description="Kolen-Pollack at half speed",
            matrices={"B": Matrix(flow=lambda c: c.dW.T / 2, needs_dW=True)},
            feedback=lambda c: c.B))
        ode = derive("half-kp")
        B = ode.state[-1]
        assert sp.simplify((ode.flows[B] - ode.flows[ode.weights[1]].T / 2).doit()) == sp.ZeroMatrix(*B.shape)
        modes = reduce_to_modes(ode)
        assert len(modes.variables) == 3
        assert get_rule("half-kp").name == "half-kp"
    finally:
        RULES.pop("half-kp", None)
