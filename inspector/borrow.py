"""Borrowing the user's model: run it on another device or dtype, in eval or train mode, and give
it back exactly as it was.

Nothing is moved: parameters and buffers are substituted for the duration of one call through
``torch.func.functional_call``, so the model's own tensors never change device, dtype or value.
Buffers are always substituted by copies, so BatchNorm statistics updated by a train-mode pass land
in the copies. Training flags are restored in ``finally``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Mode = Literal["eval", "train", "as_is"]


def substitute_state(model: nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Tensors to run ``model`` with: parameters on ``device``/``dtype`` (the originals where nothing
    changes) and copies of every buffer."""
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        cast = dtype if dtype is not None and p.is_floating_point() else None
        if p.device != device or (cast is not None and p.dtype != cast):
            state[name] = p.detach().to(device=device, dtype=cast)
    for name, b in model.named_buffers():
        cast = dtype if dtype is not None and b.is_floating_point() else None
        state[name] = b.detach().to(device=device, dtype=cast, copy=True)
    return state


@contextmanager
def training_mode(model: nn.Module, mode: Mode) -> Iterator[None]:
    """Put every module in ``mode`` for the block; restore each module's own flag afterwards."""
    if mode not in ("eval", "train", "as_is"):
        raise ValueError(f"mode must be 'eval', 'train' or 'as_is', got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        if mode != "as_is":
            model.train(mode == "train")
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def call(model: nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> object:
    """One forward pass of ``model`` with ``state`` substituted (tied weights stay tied)."""
    if not state:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)
