"""ldfa.theory: learning dynamics of deep linear networks under every feedback rule.

Pure mathematics (sympy, numpy, scipy); nothing here imports torch. The rule vocabulary
(names, factor rules, presets, defaults, orientation) lives in :mod:`ldfa.theory.rules`.
"""

from .derive import MatrixODE, derive
from .rules import (
    LD_DEFAULTS,
    LD_DIRECT_DEFAULTS,
    P_RULES,
    PRESETS,
    Q_RULES,
    RULE_DEFAULTS,
    RULES,
    Crossing,
    FeedbackRule,
    Matrix,
    RuleSpec,
    TopSubspace,
    defaults,
    from_weight_orientation,
    get_rule,
    ld_rule,
    register_rule,
    resolve,
    rule_names,
    to_weight_orientation,
)

__all__ = ["MatrixODE", "derive", "LD_DEFAULTS", "LD_DIRECT_DEFAULTS", "P_RULES", "PRESETS", "Q_RULES",
           "RULE_DEFAULTS", "RULES", "Crossing", "FeedbackRule", "Matrix", "RuleSpec", "TopSubspace",
           "defaults", "from_weight_orientation", "get_rule", "ld_rule", "register_rule", "resolve",
           "rule_names", "to_weight_orientation"]
