"""ldfa: theory and simulation of learning with low-dimensional error feedback.

Subpackages, each built on the one before it:

- ``ldfa.theory``: learning dynamics of deep linear networks under every feedback rule
  (sympy, numpy, scipy; no torch): derive the ODEs, reduce them to modes, integrate them,
  state the predictions.
- ``ldfa.sim``: torch training of real networks with every rule (``convert`` any model).
- ``ldfa.bridge``: theory and simulation of the same linear net, side by side.
- ``ldfa.figures``: experiments, plots, ``ldfa verify`` and the paper's generated inputs.
- ``ldfa.cli``: the ``ldfa`` command line; ``ldfa.errors.ConfigError``: the one error type.

The names a user reaches for first are available here directly:

- ``derive(rule, layers=2, ...)``: the gradient-flow matrix ODEs of a rule (ldfa.theory.derive).
- ``integrate(TheoryConfig(...))``: integrate them numerically (ldfa.theory.integrate).
- ``convert(model, rule=..., rank=...)``: give a torch model feedback layers (ldfa.sim.layers).
- ``train(TrainConfig(...))``: train a network with a rule (ldfa.sim.train).
- ``verify(only=None, quick=False)``: check the predictions against simulation
  (ldfa.figures.verify.run).
- ``verify_rule(name, ...)``: check any rule's ODE against the simulated linear net
  (ldfa.bridge.rule_check).

Everything is imported on first use, so ``import ldfa`` is fast and does not import torch.
See docs/index.md for the documentation and docs/api.md for the API reference.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

SUBPACKAGES = ("theory", "sim", "bridge", "figures", "cli", "errors")

# name -> (module, attribute): imported on first access
SHORTCUTS = {
    "derive": ("ldfa.theory.derive", "derive"),
    "integrate": ("ldfa.theory.integrate", "integrate"),
    "TheoryConfig": ("ldfa.theory.config", "TheoryConfig"),
    "convert": ("ldfa.sim.layers", "convert"),
    "train": ("ldfa.sim.train", "train"),
    "TrainConfig": ("ldfa.sim.train", "TrainConfig"),
    "verify": ("ldfa.figures.verify", "run"),
    "verify_rule": ("ldfa.bridge.rule_check", "verify_rule"),
    "ConfigError": ("ldfa.theory.errors", "ConfigError"),
}

__all__ = ["__version__", *SUBPACKAGES, *SHORTCUTS]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    if name in SHORTCUTS:
        module, attribute = SHORTCUTS[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
