"""Borrowing the user's model: run it on another device or dtype, in eval or train mode, and give
it back exactly as it was.

Nothing is moved. Where the run needs another device or dtype, parameters and buffers are
substituted for the duration of a call through ``torch.func.functional_call``, so the model's own
tensors never change device, dtype or value. Where it does not, the model runs as it is (no
substitution to pay for) and ``buffers_restored`` puts back any buffer the forward changed, so
BatchNorm statistics updated by a train-mode pass are undone. Training flags are restored in
``finally``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

from inspector.tree import ModelTree

Mode = Literal["eval", "train", "as_is"]


def substitute_state(tree: ModelTree, device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Tensors to run ``model`` with on ``device``/``dtype``: every parameter and buffer that is not
    already there, converted, plus copies of all buffers; empty when nothing needs converting."""
    def cast(t: torch.Tensor) -> torch.dtype | None:
        return dtype if dtype is not None and t.is_floating_point() else None

    def needs(t: torch.Tensor) -> bool:
        return t.device != device or cast(t) not in (None, t.dtype)

    def convert(t: torch.Tensor, copy: bool) -> torch.Tensor:
        return t.detach().to(device=device, dtype=cast(t), copy=copy)

    if tree.devices <= {device} and (dtype is None or tree.float_dtypes <= {dtype}):
        return {}  # everything is already where and what the pass wants (no per-tensor checks)
    state = {name: convert(p, False) for name, p in tree.parameters if needs(p)}
    state.update((name, convert(b, True)) for name, b in tree.buffers)
    return state


@contextmanager
def buffers_restored(tree: ModelTree) -> Iterator[None]:
    """Every buffer as it was before the block: values are copied back from a clone taken on entry
    (kernels such as batch_norm write running statistics without bumping the version counter, so
    every buffer is restored), and a buffer replaced by another tensor is put back. Buffers are small:
    BatchNorm statistics, position indices."""
    saved = []
    for _, module in tree.modules:
        for name, buf in module._buffers.items():
            if buf is None:
                continue
            # Inference tensors cannot be written outside inference mode; meta ones hold no values.
            keep = not buf.is_inference() and buf.device.type != "meta"
            saved.append((module, name, buf, buf.clone() if keep else None))
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, buf, copy in saved:
                if module._buffers.get(name) is not buf:
                    module._buffers[name] = buf
                if copy is not None:
                    buf.copy_(copy)


@contextmanager
def training_mode(tree: ModelTree, mode: Mode) -> Iterator[None]:
    """Put every module in ``mode`` for the block; restore each module's own flag afterwards."""
    if mode not in ("eval", "train", "as_is"):
        raise ValueError(f"mode must be 'eval', 'train' or 'as_is', got {mode!r}")
    flags = [(m, m.training) for _, m in tree.modules]
    wanted = mode == "train"
    changes = mode != "as_is" and any(flag != wanted for _, flag in flags)
    try:
        if changes:
            tree.model.train(wanted)  # train() itself: some modules override it
        yield
    finally:
        if changes:
            for module, flag in flags:
                if module.training != flag:
                    module.training = flag


@contextmanager
def lent(tree: ModelTree, mode: Mode, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model in ``mode`` for calls with ``state``; training flags given back afterwards, and
    buffers too, unless ``state`` substitutes them (then the forward only ever sees copies)."""
    if state:
        with training_mode(tree, mode):
            yield
    else:
        with training_mode(tree, mode), buffers_restored(tree):
            yield


def call(model: torch.nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> object:
    """One forward pass of ``model`` with ``state`` substituted (tied weights stay tied)."""
    if not state:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)
