"""Lazy modules (``nn.LazyLinear``...) are materialised on a copy of the model, never on the model.

The copy is a deep copy that shares what cannot be copied (a lock, a file, a process handle); it is
put on the run's device and dtype before its first forward, so that the parameters it creates are
made there (on meta: no memory), then materialised by one forward with the run's inputs.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn

from inspector.errors import UnsupportedModelError, first_line
from inspector.tree import ModelTree


def uninitialized(tree: ModelTree) -> list[nn.Module]:
    """The lazy modules of ``tree`` that have not been materialised yet."""
    if not tree.has(nn.modules.lazy.LazyModuleMixin):
        return []
    return [m for m in tree.module_list if isinstance(m, nn.modules.lazy.LazyModuleMixin)
            and m.has_uninitialized_params()]


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``; attributes that cannot be copied (locks, files) are shared."""
    with contextlib.suppress(Exception):  # else retried below, sharing what cannot be copied
        return copy.deepcopy(model)
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, (torch.Tensor, nn.Module, dict)):
                continue
            try:
                copy.deepcopy(value, {})
            except Exception:  # noqa: BLE001 - not copyable: the copy shares it
                memo[id(value)] = value
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - said in one line
        raise UnsupportedModelError(f"{type(model).__name__} has lazy modules, materialised on a copy of the model, "
                                    f"and the model cannot be copied ({type(exc).__name__}: {first_line(exc)}); "
                                    "run one forward first (model(x)) to materialise them") from None


def place(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
    """Put a copy's tensors on ``device`` in ``dtype`` (floating ones); its uninitialized parameters
    and buffers are told where to be made (``Module.to`` would turn them into empty tensors)."""
    moved: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor) -> torch.Tensor:
        if id(t) in moved:
            return moved[id(t)]
        cast = dtype if dtype is not None and t.is_floating_point() else None
        if isinstance(t, nn.parameter.UninitializedParameter):
            out = nn.parameter.UninitializedParameter(t.requires_grad, device=device, dtype=cast or t.dtype)
        elif isinstance(t, nn.parameter.UninitializedBuffer):
            out = nn.parameter.UninitializedBuffer(t.requires_grad, device=device, dtype=cast or t.dtype)
        elif isinstance(t, nn.Parameter):
            out = nn.Parameter(t.detach().to(device=device, dtype=cast), requires_grad=t.requires_grad)
        else:
            out = t.to(device=device, dtype=cast)
        moved[id(t)] = out
        return out

    with torch.no_grad():
        for module in model.modules():
            for kind in ("_parameters", "_buffers"):
                entries = getattr(module, kind)
                for name, t in list(entries.items()):
                    if t is not None:
                        entries[name] = convert(t)
