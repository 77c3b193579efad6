"""Borrowing the user's model: run it on another device or dtype, in eval or train mode, and give it
back exactly as it was, whatever its forward writes.

Nothing is moved. Where the run needs another device or dtype, parameters and buffers are
substituted for the duration of a call through ``torch.func.functional_call``; where it does not,
the model runs as it is. Either way one mechanism gives everything back:

- *Tensor values*, copy-on-write: the dispatch mode sees every aten op that writes a tensor (by its
  schema, plus the kernels that write running statistics without saying so) and hands the tensor to
  :meth:`Borrow.guard` first; a storage of the model's is saved once, before its first write, and
  copied back on exit. In-place writes through views, ``.data.mul_()``, ``embedding_renorm_``,
  observers and BatchNorm statistics are all caught there.
- *Tensor identity and layout*: every parameter, buffer and plain tensor attribute keeps its storage,
  shape, strides, ``requires_grad`` and ``.grad`` (``.data =``, ``resize_`` and ``set_`` undone).
- *What bypasses dispatch*: each module's attribute dicts (parameters, buffers, submodules, hooks,
  plain attributes) are put back entry by entry, so replaced Parameters, tensors left on meta by
  pruning or weight_norm, and modules or buffers created in forward all go.
- *Flags*: training flags through each module's own ``train()`` (overrides run), then the dicts.
- *Process state*: the global module hooks and ``torch.nn.utils.parametrize``'s cache.

Inspection is serialised process-wide (``LOCK``): two threads inspecting get one after the other.
A thread running the model *outside* ``inspect`` meanwhile is not stopped; its calls are not counted.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import parametrize

from inspector.tree import ModelTree

Mode = Literal["eval", "train", "as_is"]
MODES = ("eval", "train", "as_is")

#: Held for every inspection (re-entrant: a model whose forward inspects another is fine).
LOCK = threading.RLock()

_HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_load_state_dict_pre_hooks", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                 "_global_forward_hooks_with_kwargs", "_global_buffer_registration_hooks",
                 "_global_module_registration_hooks", "_global_parameter_registration_hooks")


def substitute_state(tree: ModelTree, device: torch.device, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Tensors to run the model with on ``device``/``dtype``: every parameter and buffer that is not
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


def call(model: nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
    """One forward pass of ``model`` with ``state`` substituted (tied weights stay tied)."""
    if not state:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)


class _TensorState:
    """A tensor's identity and layout: enough to undo ``.data =``, ``resize_``, ``set_``."""

    __slots__ = ("tensor", "storage", "nbytes", "size", "stride", "offset", "requires_grad", "grad")

    def __init__(self, t: torch.Tensor) -> None:
        self.tensor = t
        self.storage = t.untyped_storage()
        self.nbytes = self.storage.nbytes()
        self.size = t.size()
        self.stride = t.stride()
        self.offset = t.storage_offset()
        self.requires_grad = t.requires_grad
        self.grad = t.grad if t.is_leaf else None

    def changed(self) -> bool:
        t = self.tensor
        return (t.untyped_storage()._cdata != self.storage._cdata or t.size() != self.size
                or t.stride() != self.stride or t.storage_offset() != self.offset)

    def restore(self) -> None:
        t = self.tensor
        if self.changed() or self.storage.nbytes() != self.nbytes:
            with torch.no_grad():
                if self.storage.nbytes() != self.nbytes:  # resized in place (observers)
                    self.storage.resize_(self.nbytes)
                t.set_(self.storage, self.offset, self.size, self.stride)
        if t.requires_grad != self.requires_grad and t.is_leaf:
            t.requires_grad_(self.requires_grad)
        if t.is_leaf and t.grad is not self.grad:
            t.grad = self.grad


class _ModuleState:
    """A module's attribute dicts, entry by entry."""

    __slots__ = ("module", "attrs", "params", "buffers", "children", "hooks")

    def __init__(self, module: nn.Module) -> None:
        d = module.__dict__
        self.module = module
        self.attrs = d.copy()
        self.params = d["_parameters"].copy()
        self.buffers = d["_buffers"].copy()
        self.children = d["_modules"].copy()
        self.hooks = [(h, h.copy()) for h in (d.get(n) for n in _HOOK_DICTS) if h]  # non-empty ones

    def restore(self) -> None:
        d = self.module.__dict__
        _put_back(d["_parameters"] if "_parameters" in d else self.params, self.params)
        _put_back(d["_buffers"] if "_buffers" in d else self.buffers, self.buffers)
        _put_back(d["_modules"] if "_modules" in d else self.children, self.children)
        for name in _HOOK_DICTS:
            current = d.get(name)
            if current and not any(current is h for h, _ in self.hooks):
                current.clear()  # hooks added to a dict that was empty
        for hooks, saved in self.hooks:
            _put_back(hooks, saved)
        _put_back(d, self.attrs)


def _put_back(current: dict, saved: dict) -> None:
    """Make ``current`` hold exactly ``saved``'s entries (same objects, same order when it matters)."""
    if len(current) == len(saved) and all(current.get(k, _MISSING) is v for k, v in saved.items()):
        return
    for key in [k for k in current if k not in saved]:
        del current[key]
    for key, value in saved.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value


_MISSING = object()


class Borrow:
    """The model lent for a run (``with Borrow(tree, mode):``): everything put back on exit."""

    def __init__(self, tree: ModelTree, mode: Mode) -> None:
        self.tree = tree
        self.mode = mode
        self.saved: dict[int, tuple[Any, Any]] = {}  # storage ptr -> (storage, copy before the first write)
        self._owned: dict[int, Any] = {}

    # --- copy-on-write ----------------------------------------------------------------------------

    def guard(self, t: torch.Tensor) -> None:
        """Called by the dispatch mode before an op writes ``t``: save the model storage it lives in."""
        if t.device.type == "meta":
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested: never model state here
            return
        ptr = storage.data_ptr()
        if ptr in self._owned and ptr not in self.saved:
            self.saved[ptr] = (storage, storage.clone())

    # --- snapshot and restore ----------------------------------------------------------------------

    def __enter__(self) -> Borrow:
        LOCK.acquire()
        try:
            self._snapshot()
            self._enter_mode()
        except BaseException:
            LOCK.release()
            raise
        return self

    def _snapshot(self) -> None:
        self.modules = [_ModuleState(m) for _, m in self.tree.modules if not isinstance(m, torch.jit.ScriptModule)]
        tensors: dict[int, torch.Tensor] = {}
        for state in self.modules:
            for value in (*state.params.values(), *state.buffers.values(), *state.attrs.values()):
                if isinstance(value, torch.Tensor) and id(value) not in tensors:
                    tensors[id(value)] = value
        self.tensors = [s for s in map(_tensor_state, tensors.values()) if s is not None]
        for t in self.tensors:
            if t.tensor.device.type != "meta" and t.storage.nbytes():
                self._owned[t.storage.data_ptr()] = t.storage
        self.globals = {name: getattr(module_mod, name).copy() for name in _GLOBAL_HOOKS
                        if hasattr(module_mod, name)}
        self.cache = (parametrize._cache.copy(), parametrize._cache_enabled)
        parametrize._cache_enabled = 0  # the run neither reads nor fills the user's cached() values
        self.flags = [(m, m.training) for _, m in self.tree.modules]

    def _enter_mode(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "as_is":
            wanted = self.mode == "train"
            if any(flag != wanted for _, flag in self.flags):
                self.tree.model.train(wanted)  # train() itself: some modules override it

    def __exit__(self, *exc: Any) -> None:
        try:
            self._restore()
        finally:
            LOCK.release()

    def _restore(self) -> None:
        for module, flag in self.flags:  # pre-order: a parent's train() first, then its children's own
            if module.training != flag:
                module.train(flag)
        with torch.no_grad():
            for storage, copy in self.saved.values():
                if storage.nbytes() != copy.nbytes():
                    storage.resize_(copy.nbytes())
                storage.copy_(copy)
        for t in self.tensors:
            t.restore()
        for state in self.modules:
            state.restore()
        for name, saved in self.globals.items():
            _put_back(getattr(module_mod, name), saved)
        cache, enabled = self.cache
        _put_back(parametrize._cache, cache)
        parametrize._cache_enabled = enabled
        self.saved.clear()


def _tensor_state(t: torch.Tensor) -> _TensorState | None:
    """The tensor's state, or None for layouts without a plain storage (sparse, nested, ...)."""
    if t.layout != torch.strided or t.is_nested or isinstance(t, nn.parameter.UninitializedTensorMixin):
        return None
    try:
        return _TensorState(t)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None


@contextmanager
def borrowed(tree: ModelTree, mode: Mode) -> Iterator[Borrow]:
    with Borrow(tree, mode) as borrow:
        yield borrow
