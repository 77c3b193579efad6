"""The optimizers a training step can be named with (``optimizer="adamw"``, ``--optimizer adamw``):
a registry of factories ``params -> torch.optim.Optimizer``, read by the options check, the
training step and the command line."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from inspector.errors import InputError
from inspector.registry import Registry

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
OPTIMIZERS: Registry[str, Factory] = Registry("optimizer")

OPTIMIZERS.register("sgd")(lambda params: torch.optim.SGD(params, lr=1e-3))
OPTIMIZERS.register("momentum")(lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9))
OPTIMIZERS.register("adam")(lambda params: torch.optim.Adam(params, lr=1e-3))
OPTIMIZERS.register("adamw")(lambda params: torch.optim.AdamW(params, lr=1e-3))


def check_optimizer(optimizer: Any) -> None:
    """A registered name, a torch.optim.Optimizer class, or a factory ``params -> optimizer``."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, a torch.optim.Optimizer class or a "
                             f"factory, got {optimizer!r}")
    elif isinstance(optimizer, torch.optim.Optimizer):
        raise InputError("pass the optimizer's class or a factory (params -> optimizer), not an optimizer built on "
                         "the model's own parameters: the step runs on copies")
    elif not callable(optimizer):
        raise InputError(f"optimizer must be a name, a class or a factory, got {optimizer!r}")
