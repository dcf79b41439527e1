"""ldfa.sim: torch training of real networks with every feedback rule.

``convert(model, rule=..., rank=...)`` gives any torch model feedback layers: every
``nn.Linear`` and ``nn.Conv2d`` keeps its forward pass and sends the rule's error backwards
(docs/simulation.md). Modules: ``layers`` (convert), ``feedback`` (the rules), ``ops`` (the layer
operations each rule is written against), ``models``, ``data``, ``train`` (the training loop),
``batched`` (many seeds at once), ``target_prop`` (dtp, ddtp), ``toast`` (attention steering).

The names used most (``convert``, ``TrainConfig``, ``feedback_parameters``, ``build``) are
importable from here: ``from ldfa.sim import convert``. ``ldfa.sim.train`` is the training module;
its function is ``ldfa.sim.train.train`` (also ``ldfa.train``).
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it; imported on first access (keeps `import ldfa.sim` light)
_NAMES = {
    "convert": "layers",
    "feedback_layers": "layers",
    "feedback_parameters": "layers",
    "forward_parameters": "layers",
    "set_tracking": "layers",
    "FeedbackLayer": "layers",
    "TrainConfig": "train",
    "build": "models",
}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
