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
- *Flags*: training flags through ``train()`` wherever a class, an instance or a patch overrides
  it, ``__setattr__`` or the children it walks, so overrides run as ``model.train()`` would run
  them; set directly elsewhere; then the dicts.
- *Process state*: the global module hooks and ``torch.nn.utils.parametrize``'s cache.

Inspection is serialised process-wide (``LOCK``): two threads inspecting get one after the other.
A thread running the model *outside* ``inspect`` meanwhile is not stopped; its calls are not counted.
"""
from __future__ import annotations

import operator
import threading
from itertools import chain, compress, filterfalse
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import parametrize

from inspector.errors import LayerError, first_line
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


def substitute_state(tree: ModelTree, device: torch.device, dtype: torch.dtype | None,
                     copies: bool = False) -> dict[str, torch.Tensor]:
    """Tensors to run the model with on ``device``/``dtype``: every parameter and buffer that is not
    already there, converted, plus copies of all buffers; empty when nothing needs converting, unless
    ``copies`` (timed passes, which run without the dispatch mode's copy-on-write: every parameter
    and buffer copied, so that what they write lands on the copies)."""
    def cast(t: torch.Tensor) -> torch.dtype | None:
        return dtype if dtype is not None and t.is_floating_point() else None

    def needs(t: torch.Tensor) -> bool:
        return t.device != device or cast(t) not in (None, t.dtype)

    def convert(t: torch.Tensor, copy: bool) -> torch.Tensor:
        return t.detach().to(device=device, dtype=cast(t), copy=copy)

    if not copies and tree.devices <= {device} and (dtype is None or tree.float_dtypes <= {dtype}):
        return {}  # everything is already where and what the pass wants (no per-tensor checks)
    state = {name: convert(p, copies) for name, p in tree.parameters if copies or needs(p)}
    state.update((name, convert(b, True)) for name, b in tree.buffers)
    return state


def call(model: nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
    """One forward pass of ``model`` with ``state`` substituted (tied weights stay tied)."""
    if not state:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)


_is = operator.is_
_dict_attrs = operator.itemgetter("_parameters", "_buffers", "_modules", *_HOOK_DICTS)
_requires_grad = operator.attrgetter("requires_grad")
_TRAINING = operator.attrgetter("training")
_is_leaf = operator.attrgetter("is_leaf")
_grad = operator.attrgetter("_grad")
_LAYOUT = operator.attrgetter("layout", "is_nested")
#: What a C-level read of one tensor gives: its version counter (in-place writes, set_, resize_),
#: flags and shape; compared as tuples of plain values.
_STATE = operator.attrgetter("_version", "requires_grad", "is_leaf", "is_meta", "shape")
_REQUIRES_GRAD, _LEAF, _META, _SIZE = map(operator.itemgetter, range(1, 5))

_is_meta = operator.attrgetter("is_meta")


#: What nn.Module.train() runs besides setting the flag; torch's own (unpatched) versions of all of
#: them make train() exactly "set the flag here, then in each child".
_TRAIN_PARTS = {"train": "Module.train", "__setattr__": "Module.__setattr__", "children": "Module.children",
                "named_children": "Module.named_children"}


def _torchs_own(cls: type) -> bool:
    """Whether ``cls`` runs torch's own, unpatched train(), __setattr__, children() and
    named_children() (checked by where each function was defined, so a process-wide patch of
    nn.Module.train counts as an override whenever it was made)."""
    for name, qualname in _TRAIN_PARTS.items():
        fn = getattr(cls, name, None)
        if getattr(fn, "__module__", None) != nn.Module.__module__ or getattr(fn, "__qualname__", None) != qualname \
                or hasattr(fn, "__wrapped__"):
            return False
    return True


def _own_train(module: nn.Module, classes: dict[type, bool]) -> bool:
    """Whether setting ``module.training`` is more than the flag: its class or the instance itself
    overrides train() (a frozen encoder's ``self.vae.train = disabled_train``), __setattr__ or the
    children train() walks; ``classes`` caches the per-class answer for one switch."""
    cls = type(module)
    plain = classes.get(cls)
    if plain is None:
        plain = classes[cls] = _torchs_own(cls)
    if not plain:
        return True
    own = module.__dict__
    return "train" in own or "children" in own or "named_children" in own


def _set_training(module: nn.Module, mode: bool, classes: dict[type, bool]) -> None:
    """``module.train(mode)``, calling every override where train() would, in the same order; on
    modules that keep torch's own train() (see ``_own_train``) the flag is set directly (what it
    would do, at a fraction of the cost: Module.__setattr__ type-checks every value)."""
    if _own_train(module, classes):
        module.train(mode)
        return
    object.__setattr__(module, "training", mode)
    for child in dict.fromkeys(module._modules.values()):  # children(): each once, None skipped
        if child is not None:
            _set_training(child, mode, classes)


def _plain_strided(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and not t.is_nested and not isinstance(t, nn.parameter.UninitializedTensorMixin)


def _all_plain_strided(ts: list[torch.Tensor]) -> bool:
    """``all(map(_plain_strided, ts))`` in C-level loops (and each distinct type checked once)."""
    return (set(map(_LAYOUT, ts)) <= {(torch.strided, False)}
            and not any(issubclass(k, nn.parameter.UninitializedTensorMixin) for k in set(map(type, ts))))


def _put_back(current: dict, saved: dict) -> None:
    """Make ``current`` hold exactly ``saved``'s entries, the same objects in the same order (a
    Sequential runs in its dict's order)."""
    if len(current) == len(saved) and all(map(_is, current.values(), saved.values())) \
            and all(map(_is, current, saved)):
        return
    current.clear()
    current.update(saved)


def _tensor_types(types: set[type]) -> frozenset[type]:
    return frozenset(t for t in types if issubclass(t, torch.Tensor))


def _tensors_among(values: list[Any]) -> list[torch.Tensor]:
    types = list(map(type, values))
    kinds = _tensor_types(set(types))
    return list(compress(values, map(kinds.__contains__, types))) if kinds else []


class _Dicts:
    """Every entry of every module's attribute dicts (its __dict__, parameters, buffers, submodules
    and hook dicts), kept as flat lists, and the dicts that were empty: checking that nothing changed
    is a few C-level loops, with no bytecode per module."""

    def __init__(self, modules: list[nn.Module]) -> None:
        owners = list(map(vars, modules))
        try:
            inner = list(chain.from_iterable(map(_dict_attrs, owners)))
        except KeyError:  # a module unpickled from an old torch: some dicts missing
            names = ("_parameters", "_buffers", "_modules", *_HOOK_DICTS)
            inner = [d[n] for d in owners for n in names if n in d]
        dicts = owners + inner
        self.dicts = list(filter(None, dicts))
        self.empty = list(filterfalse(None, dicts))  # hook dicts, mostly: they must stay empty
        self.sizes = list(map(len, self.dicts))
        self.keys = list(chain.from_iterable(self.dicts))
        self.values = list(chain.from_iterable(map(dict.values, self.dicts)))
        self._owned_values = sum(map(len, owners))  # the __dict__s' values come first

    def tensors(self) -> list[torch.Tensor]:
        """Parameters, buffers and plain tensor attributes (subclasses included), as the dicts hold them.
        Filtered by type, each distinct type checked once (``isinstance`` against torch.Tensor's
        metaclass costs four times a set lookup, for every one of thousands of values). The modules'
        own __dict__s hold most values and rarely a tensor: their types are gathered first, and their
        values filtered only when one is a tensor's."""
        values, n = self.values, self._owned_values
        owned, inner = values[:n], values[n:]
        if _tensor_types(set(map(type, owned))):
            return _tensors_among(owned) + _tensors_among(inner)
        return _tensors_among(inner)

    def restore(self) -> None:
        dicts = self.dicts
        values = list(chain.from_iterable(map(dict.values, dicts)))
        if not any(self.empty) and len(values) == len(self.values) and all(map(_is, values, self.values)) \
                and list(chain.from_iterable(dicts)) == self.keys:
            return
        for d in self.empty:
            d.clear()  # entries added where there were none (new hooks, buffers, submodules)
        start = 0
        for d, size in zip(dicts, self.sizes):
            _put_back(d, dict(zip(self.keys[start:start + size], self.values[start:start + size])))
            start += size


class _Tensors:
    """Identity and layout of the model's tensors (parameters, buffers, plain tensor attributes):
    enough to undo ``.data =``, ``resize_`` and ``set_``, and to put back ``requires_grad`` and
    ``.grad``. Taken and checked with C-level maps; restored one by one only where something moved."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        if not _all_plain_strided(tensors):  # sparse, nested, lazy: no storage to keep
            tensors = [t for t in tensors if _plain_strided(t)]
        ts = tensors
        try:  # version, flags and shape in one C-level read per tensor
            state: list[tuple] | None = list(map(_STATE, ts))
        except RuntimeError:  # an inference tensor keeps no version counter: every tensor checked one by one
            state = None
        self.tensors = ts
        self.state = state
        self.storages = list(map(torch.Tensor.untyped_storage, ts))
        self.nbytes = list(map(torch.UntypedStorage.nbytes, self.storages))
        self.ptrs = list(map(torch.Tensor.data_ptr, ts))
        self.strides = list(map(torch.Tensor.stride, ts))
        self.offsets = list(map(torch.Tensor.storage_offset, ts))
        if state is not None:
            self.sizes = list(map(_SIZE, state))
            self.requires_grad = list(map(_REQUIRES_GRAD, state))
            self.leaves = all(map(_LEAF, state))  # the usual case: .grad read in one C-level loop
            self.meta = list(compress(range(len(ts)), map(_META, state)))
        else:
            self.sizes = list(map(torch.Tensor.size, ts))
            self.requires_grad = list(map(_requires_grad, ts))
            self.leaves = all(map(_is_leaf, ts))
            self.meta = list(compress(range(len(ts)), map(_is_meta, ts)))
        self.grads = self._grads()

    def _grads(self) -> list[torch.Tensor | None]:
        if self.leaves:
            return list(map(_grad, self.tensors))
        return [t._grad if t.is_leaf else None for t in self.tensors]  # ._grad of a non-leaf warns

    def owned(self) -> dict[int, Any]:
        """Data pointer -> storage, for every model storage that holds data (copy-on-write)."""
        owned = dict(zip(map(torch.UntypedStorage.data_ptr, self.storages), self.storages))
        owned.pop(0, None)  # empty storages hold nothing to save
        return owned

    def _unchanged(self) -> bool:
        ts = self.tensors
        return (self.state is not None and self.leaves and list(map(_STATE, ts)) == self.state
                and list(map(torch.Tensor.data_ptr, ts)) == self.ptrs
                and list(map(torch.Tensor.stride, ts)) == self.strides
                and list(map(torch.Tensor.storage_offset, ts)) == self.offsets
                and all(map(_is, map(_grad, ts), self.grads))
                and list(map(torch.UntypedStorage.nbytes, self.storages)) == self.nbytes
                and all(ts[i].untyped_storage()._cdata == self.storages[i]._cdata for i in self.meta))

    def restore(self) -> None:
        if self._unchanged():
            return
        with torch.no_grad():
            for i, t in enumerate(self.tensors):
                storage, nbytes = self.storages[i], self.nbytes[i]
                if storage.nbytes() != nbytes:  # resized in place (observers)
                    storage.resize_(nbytes)
                if t.untyped_storage()._cdata != storage._cdata or t.size() != self.sizes[i] \
                        or t.stride() != self.strides[i] or t.storage_offset() != self.offsets[i]:
                    t.set_(storage, self.offsets[i], self.sizes[i], self.strides[i])
        for t, requires_grad, grad in zip(self.tensors, self.requires_grad, self.grads):
            if t.is_leaf and t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            if t.is_leaf and t._grad is not grad:
                t.grad = grad


class Borrow:
    """The model lent for a run (``with Borrow(tree, mode):``): everything put back on exit."""

    def __init__(self, tree: ModelTree, mode: Mode) -> None:
        self.tree = tree
        self.mode = mode
        self.saved: dict[int, tuple[Any, Any]] = {}  # storage ptr -> (storage, copy before the first write)
        self._owned: dict[int, Any] = {}

    # --- copy-on-write ----------------------------------------------------------------------------

    @property
    def owns_data(self) -> bool:
        """Whether some model tensor holds data a write could change (not so for a model on meta)."""
        return bool(self._owned)

    def guard(self, t: torch.Tensor) -> None:
        """Called by the dispatch mode before an op writes ``t``: save the model storage it lives in.
        The storage is found by its base address (no storage object made for every activation an
        in-place op writes)."""
        if not self._owned or t.is_meta:
            return
        try:
            ptr = t.data_ptr() - t.storage_offset() * t.element_size()
        except (RuntimeError, NotImplementedError):  # sparse, nested: never model state here
            return
        storage = self._owned.get(ptr)
        if storage is not None and ptr not in self.saved:
            self.saved[ptr] = (storage, storage.clone())

    # --- snapshot and restore ----------------------------------------------------------------------

    def __enter__(self) -> Borrow:
        LOCK.acquire()
        try:
            self._snapshot()
        except BaseException:
            LOCK.release()
            raise
        try:
            self._enter_mode()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise _model_error(exc, "switching the model's mode") from exc
        return self

    def _snapshot(self) -> None:
        modules = self.tree.module_list
        if self.tree.scripted:
            modules = [m for m in modules if not isinstance(m, torch.jit.ScriptModule)]
        self.dicts = _Dicts(modules)
        # the dicts hold every parameter, buffer and tensor attribute; packed quantized weights are apart
        every = [*self.dicts.tensors(), *(t for _, t, _ in self.tree.packed)]
        self.tensors = _Tensors(list(dict(zip(map(id, every), every)).values()))  # tied tensors once
        self._owned = self.tensors.owned()
        self.globals = {name: getattr(module_mod, name).copy() for name in _GLOBAL_HOOKS
                        if hasattr(module_mod, name)}
        self.cache = (parametrize._cache.copy(), parametrize._cache_enabled)
        parametrize._cache_enabled = 0  # the run neither reads nor fills the user's cached() values
        self.flag_modules = self.tree.module_list
        self.flags = list(map(_TRAINING, self.flag_modules))

    def _enter_mode(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "as_is":
            wanted = self.mode == "train"
            if any(flag != wanted for flag in self.flags):
                _set_training(self.tree.model, wanted, {})

    def reset(self) -> None:
        """Give everything back and lend it again: a pass that failed half-way (and may have written
        attributes) before another pass starts."""
        errors = self._restore()
        if errors:
            raise _model_error(errors[0], "giving the model back") from errors[0]
        parametrize._cache_enabled = 0
        self._enter_mode()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            errors = self._restore()
        finally:
            LOCK.release()
        if errors and exc is None:  # the run went well but giving the model back did not
            raise _model_error(errors[0], "giving the model back") from errors[0]

    def _restore(self) -> list[BaseException]:
        """Every step runs whatever the others do; the errors are returned (a user's train() that
        raises must not leave the weights, dicts or caches changed)."""
        errors: list[BaseException] = []
        for step in (self._restore_flags, self._restore_storages, self.tensors.restore, self.dicts.restore,
                     self._restore_process_state):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - collected, raised once everything is back
                errors.append(exc)
        self.saved.clear()
        return errors

    def _restore_flags(self) -> None:
        """Each module whose flag differs gets ``train(flag)`` as the user would call it (overrides
        below it run), in pre-order; a flag an override left different, or could not set because it
        raised, is set itself, and every module is still visited (the first error is raised after)."""
        if list(map(_TRAINING, self.flag_modules)) == self.flags:
            return
        classes: dict[type, bool] = {}
        error: Exception | None = None
        for module, flag in zip(self.flag_modules, self.flags):
            if module.training == flag:
                continue
            try:
                _set_training(module, flag, classes)
            except Exception as exc:  # noqa: BLE001 - the other flags still go back
                error = error or exc
            if module.training != flag:
                try:
                    module.training = flag
                except Exception as exc:  # noqa: BLE001
                    error = error or exc
        if error is not None:
            raise error

    def _restore_storages(self) -> None:
        with torch.no_grad():
            for storage, copy in self.saved.values():
                if storage.nbytes() != copy.nbytes():
                    storage.resize_(copy.nbytes())
                storage.copy_(copy)

    def _restore_process_state(self) -> None:
        for name, saved in self.globals.items():
            _put_back(getattr(module_mod, name), saved)
        cache, enabled = self.cache
        _put_back(parametrize._cache, cache)
        parametrize._cache_enabled = enabled


def _model_error(exc: BaseException, doing: str) -> LayerError:
    return LayerError(f"the model raised while {doing} (its own train() or attribute code): {first_line(exc)}")
