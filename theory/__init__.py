"""ldfa.theory: learning dynamics of deep linear networks under every feedback rule.

Pure mathematics (sympy, numpy, scipy); nothing here imports torch.
"""

from .derive import MatrixODE, derive
from .rules import (
                    P_RULES,
                    PRESETS,
                    Q_RULES,
                    RULES,
                    Crossing,
                    FeedbackRule,
                    Matrix,
                    TopSubspace,
                    get_rule,
                    ld_rule,
                    register_rule,
                    rule_names,
)

__all__ = ["MatrixODE", "derive", "P_RULES", "PRESETS", "Q_RULES", "RULES", "Crossing",
           "FeedbackRule", "Matrix", "TopSubspace", "get_rule", "ld_rule", "register_rule",
           "rule_names"]
