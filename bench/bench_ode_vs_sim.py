"""Benchmark: integrating the matrix ODE vs simulating small-step gradient descent, at equal
trajectory accuracy.

    python bench/bench_ode_vs_sim.py [--target 1e-3]

Both produce the mode strengths u_α(t) of a 2-layer linear net (100-100-10, bp, teacher
spectrum 5..1, aligned start). Ground truth: the ODE at rtol 1e-11. Accuracy is
max_t,α |u_α - u_α*| / s_max. The simulation (torch, float64, full batch) is Euler's method,
so its error is linear in η: the step that meets ``--target`` is found from a run at
η = 0.01 and then timed; the ODE's tolerance is lowered until it meets the target.
"""

from __future__ import annotations

import time

import numpy as np
import options
import torch

from ldfa.argtypes import float_in
from ldfa.bridge.linear import simulate_config
from ldfa.theory.config import TheoryConfig
from ldfa.theory.integrate import integrate

SPECTRUM = (5.0, 4.0, 3.0, 2.0, 1.0)


def config(**kw):
    return TheoryConfig(rule="bp", n_in=100, hidden=100, n_out=10, spectrum=SPECTRUM, init="aligned",
                        init_scale=1e-2, t_max=6.0, n_points=601, **kw)


def modes(traj):
    return np.stack([traj[f"mode_{a + 1}"] for a in range(len(SPECTRUM))], 1)


def main():
    ap = options.parser(__doc__)
    ap.add_argument("--target", type=float_in(0, 1, lo_allowed=False), default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = np.linspace(0, 6.0, 601)
    truth = modes(integrate(config(rtol=1e-11, atol=1e-13), t_eval=t))

    def sim_error(eta):
        run = simulate_config(config(), eta, record_every=max(1, round(0.01 / eta)))
        ref = np.stack([np.interp(run.t, t, truth[:, a]) for a in range(len(SPECTRUM))], 1)
        return float(np.max(np.abs(run.modes - ref)) / max(SPECTRUM))

    e0 = sim_error(0.01)
    eta = 0.01 * args.target / e0 * 0.9  # Euler: error ∝ η
    t0 = time.perf_counter()
    e_sim = sim_error(eta)
    sim_s = time.perf_counter() - t0
    for rtol in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        t0 = time.perf_counter()
        ode = modes(integrate(config(rtol=rtol, atol=rtol * 1e-3), t_eval=t))
        ode_s = time.perf_counter() - t0
        e_ode = float(np.max(np.abs(ode - truth)) / max(SPECTRUM))
        if e_ode <= args.target:
            break
    print(f"target accuracy {args.target:g} (max |u - u*| / s_max over t in [0, 6], 5 modes)")
    print(f"  simulation: eta = {eta:.2e} ({round(6.0 / eta)} GD steps), error {e_sim:.2e}, {sim_s:.2f} s")
    print(f"  ODE:        rtol = {rtol:g}, error {e_ode:.2e}, {ode_s:.3f} s")
    print(f"  speed-up ODE vs simulation: x{sim_s / ode_s:.0f}")


if __name__ == "__main__":
    main()
