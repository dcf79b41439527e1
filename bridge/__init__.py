"""ldfa.bridge: theory and simulation of the same linear net, side by side (docs/rules.md).

:mod:`ldfa.bridge.linear` simulates the theory's configuration from the theory's initial
matrices; :func:`verify_rule` integrates any registered rule's ODE and simulates it, and
reports the deviation against a tolerance set by Euler's step.
"""

from .linear import LinearRun, gradient_descent, linear_data, simulate, simulate_config, theory_matrix
from .rule_check import RuleCheck, verify_rule

__all__ = ["LinearRun", "gradient_descent", "linear_data", "simulate", "simulate_config", "theory_matrix",
           "RuleCheck", "verify_rule"]
