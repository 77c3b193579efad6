"""Everything a model holds, taken before a run and put back after it (see ``inspector.borrow``).

- :class:`Containers`: every dict a module holds (its ``__dict__``, parameters, buffers,
  submodules, every hook dict, the user's own dicts, a tensor's ``__dict__``) and every list, set,
  deque and tuple nested in them, entry by entry, by identity; and the class of every module.
- :class:`Tensors`: identity, class, dtype, layout, ``requires_grad``, ``.grad`` and autograd hooks
  of every tensor found there (parameters, buffers, tensor attributes, tensors in containers and
  their gradients). Their *values* are saved by the borrow's copy-on-write, before the first write.

What is not walked: the inside of objects other than modules, tensors and plain containers (a
cache object's own attributes), and modules reachable only through such objects. Checking that
nothing changed is a few C-level loops; restoring touches only what changed, and every restore is
idempotent (run again after an interruption, it finishes the job).
"""
from __future__ import annotations

import operator
from collections import OrderedDict, deque
from itertools import chain, compress, filterfalse, repeat
from typing import Any

import torch
from torch import nn

_is = operator.is_
_not_none = operator.is_not
_requires_grad = operator.attrgetter("requires_grad")
_is_leaf = operator.attrgetter("is_leaf")
_is_meta = operator.attrgetter("is_meta")
_grad = operator.attrgetter("_grad")
_LAYOUT = operator.attrgetter("layout", "is_nested")
_HOOKS = operator.attrgetter("_backward_hooks", "_post_accumulate_grad_hooks")
_KEYS = operator.methodcaller("keys")
_VALUES = operator.methodcaller("values")
#: What a C-level read of one tensor gives: its version counter (in-place writes, set_, resize_),
#: flags, shape and dtype; compared as tuples of plain values.
_STATE = operator.attrgetter("_version", "requires_grad", "is_leaf", "is_meta", "shape", "dtype")
_REQUIRES_GRAD, _LEAF, _META, _SIZE, _DTYPE = map(operator.itemgetter, range(1, 6))
#: How deep containers are walked below a module's attributes (a dict of lists of tuples is 3).
MAX_DEPTH = 6


def _kind(t: type) -> str | None:
    if issubclass(t, torch.Tensor):
        return "tensor"
    if issubclass(t, nn.Module):
        return None  # walked as a module of the tree, or not at all
    if issubclass(t, dict):
        return "dict"
    if issubclass(t, (list, deque)):
        return "seq"
    if issubclass(t, set):
        return "set"
    if issubclass(t, (tuple, frozenset)):
        return "tuple"  # immutable: only what it holds is walked
    return None


class Containers:
    """The dicts, lists, sets and deques reachable from ``owners`` (dicts: modules' and tensors'
    ``__dict__``), walked level by level with C-level filters, and the tensors found in them."""

    def __init__(self, owners: list[dict]) -> None:
        dicts, empty, seqs, sets, tensors = list(filter(None, owners)), list(filterfalse(None, owners)), [], [], []
        values = list(chain.from_iterable(map(_VALUES, dicts)))
        for _ in range(MAX_DEPTH):
            types = list(map(type, values))
            kinds: dict[str, set[type]] = {}
            for t in set(types):
                kind = _kind(t)
                if kind is not None:
                    kinds.setdefault(kind, set()).add(t)
            if not kinds:
                break
            tensors += _of(values, types, kinds.get("tensor"))
            found_dicts, found_seqs, found_sets, tuples = (_of(values, types, kinds.get(k))
                                                           for k in ("dict", "seq", "set", "tuple"))
            full = list(filter(None, found_dicts))  # most are empty hook dicts: walked no further
            empty += filterfalse(None, found_dicts)
            dicts += full
            seqs += found_seqs
            sets += found_sets
            values = list(chain(chain.from_iterable(map(_VALUES, full)), chain.from_iterable(found_seqs),
                                chain.from_iterable(found_sets), chain.from_iterable(tuples)))
        self.tensors: list[torch.Tensor] = tensors
        self.dicts = dicts
        self.empty = empty  # hook dicts, mostly: they must stay empty
        self.sizes = list(map(len, dicts))
        self.keys = list(chain.from_iterable(map(_KEYS, dicts)))
        self.values = list(chain.from_iterable(map(_VALUES, dicts)))
        self.seqs = seqs
        self.seq_items = list(map(list, seqs))
        self.flat_seq_items = list(chain.from_iterable(self.seq_items))
        self.sets = sets
        self.set_items = list(map(list, sets))
        self.set_ids = list(map(frozenset, map(map, repeat(id), sets)))

    def unchanged(self) -> bool:
        dicts = self.dicts
        return (not any(self.empty)
                and list(map(len, dicts)) == self.sizes
                and all(map(_is, chain.from_iterable(map(_VALUES, dicts)), self.values))
                and list(chain.from_iterable(map(_KEYS, dicts))) == self.keys
                and list(map(len, self.seqs)) == list(map(len, self.seq_items))
                and all(map(_is, chain.from_iterable(self.seqs), self.flat_seq_items))
                and list(map(frozenset, map(map, repeat(id), self.sets))) == self.set_ids)

    def restore(self) -> None:
        if self.unchanged():
            return
        for d in self.empty:
            if d:
                _refill(d, {})  # entries added where there were none (new hooks, buffers, submodules)
        start = 0
        for d, size in zip(self.dicts, self.sizes):
            _put_back(d, self.keys[start:start + size], self.values[start:start + size])
            start += size
        for seq, items in zip(self.seqs, self.seq_items):
            if len(seq) != len(items) or not all(map(_is, seq, items)):
                if isinstance(seq, deque):
                    seq.clear()
                    seq.extend(items)
                else:
                    list.__setitem__(seq, slice(None), items)
        for s, items, ids in zip(self.sets, self.set_items, self.set_ids):
            if frozenset(map(id, s)) != ids:
                set.clear(s)
                set.update(s, items)


def _of(values: list, types: list[type], wanted: set[type] | None) -> list:
    """The ``values`` whose type is ``wanted`` (C-level)."""
    return list(compress(values, map(wanted.__contains__, types))) if wanted else []


def _put_back(current: dict, keys: list, values: list) -> None:
    """Make ``current`` hold exactly these entries, the same objects in the same order (a Sequential
    runs in its dict's order)."""
    if len(current) == len(keys) and all(map(_is, current.values(), values)) and all(map(_is, current, keys)):
        return
    _refill(current, dict(zip(keys, values)))


def _refill(current: dict, saved: dict) -> None:
    """``current.clear(); current.update(saved)``, through the base class where a subclass refuses
    (transformers' ModelOutput forbids update)."""
    try:
        current.clear()
        current.update(saved)
    except Exception:  # noqa: BLE001 - a dict subclass that refuses its own methods
        base = OrderedDict if isinstance(current, OrderedDict) else dict
        for key in list(base.keys(current)):
            base.__delitem__(current, key)
        for key, value in saved.items():
            base.__setitem__(current, key, value)


def put_back(current: dict, saved: dict) -> None:
    """Make ``current`` hold exactly ``saved``'s entries (process-wide hook dicts, caches)."""
    _put_back(current, list(saved), list(saved.values()))


class Classes:
    """The class of every module (a forward registering a parametrization, or assigning
    ``__class__``, changes it)."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.classes = list(map(type, modules))

    def restore(self) -> None:
        if all(map(_is, map(type, self.modules), self.classes)):
            return
        for module, cls in zip(self.modules, self.classes):
            if type(module) is not cls:
                object.__setattr__(module, "__class__", cls)


def plain_strided(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and not t.is_nested and not isinstance(t, nn.parameter.UninitializedTensorMixin)


def _all_plain_strided(ts: list[torch.Tensor]) -> bool:
    """``all(map(plain_strided, ts))`` in C-level loops (and each distinct type checked once)."""
    return (set(map(_LAYOUT, ts)) <= {(torch.strided, False)}
            and not any(issubclass(k, nn.parameter.UninitializedTensorMixin) for k in set(map(type, ts))))


def unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(dict(zip(map(id, tensors), tensors)).values())


def gradients(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The ``.grad`` of every leaf among ``tensors`` that has one."""
    if all(map(_is_leaf, tensors)):
        grads = list(map(_grad, tensors))
    else:
        grads = [t._grad if t.is_leaf else None for t in tensors]  # ._grad of a non-leaf warns
    return list(compress(grads, map(_not_none, grads, repeat(None))))


class Tensors:
    """Identity, class, dtype and layout of the model's tensors: enough to undo ``.data =`` (also
    to another dtype: ``self.half()`` in a forward), ``resize_`` and ``set_``, and to put back
    ``requires_grad``, ``.grad`` and the tensor's autograd hooks. Taken and checked with C-level
    maps; restored one by one only where something moved."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        if not _all_plain_strided(tensors):  # sparse, nested, lazy: no storage to keep
            tensors = [t for t in tensors if plain_strided(t)]
        ts = tensors
        try:  # version, flags, shape and dtype in one C-level read per tensor
            state: list[tuple] | None = list(map(_STATE, ts))
        except RuntimeError:  # an inference tensor keeps no version counter: every tensor checked one by one
            state = None
        self.tensors = ts
        self.state = state
        self.classes = list(map(type, ts))
        self.storages = list(map(torch.Tensor.untyped_storage, ts))
        self.nbytes = list(map(torch.UntypedStorage.nbytes, self.storages))
        self.ptrs = list(map(torch.Tensor.data_ptr, ts))
        self.strides = list(map(torch.Tensor.stride, ts))
        self.offsets = list(map(torch.Tensor.storage_offset, ts))
        self.hooks = list(map(_HOOKS, ts))
        if state is not None:
            self.sizes = list(map(_SIZE, state))
            self.dtypes = list(map(_DTYPE, state))
            self.requires_grad = list(map(_REQUIRES_GRAD, state))
            self.is_leaf = list(map(_LEAF, state))
            self.leaves = all(self.is_leaf)  # the usual case: .grad read in one C-level loop
            self.meta = list(compress(range(len(ts)), map(_META, state)))
        else:
            self.sizes = list(map(torch.Tensor.size, ts))
            self.dtypes = [t.dtype for t in ts]
            self.requires_grad = list(map(_requires_grad, ts))
            self.is_leaf = list(map(_is_leaf, ts))
            self.leaves = all(self.is_leaf)
            self.meta = list(compress(range(len(ts)), map(_is_meta, ts)))
        self.grads = self._grads()
        self.index = {id(t): i for i, t in enumerate(ts)}

    def _grads(self) -> list[torch.Tensor | None]:
        if self.leaves:
            return list(map(_grad, self.tensors))
        return [t._grad if t.is_leaf else None for t in self.tensors]

    def hook_dicts(self) -> list[dict]:
        """The autograd hook dicts the tensors hold (their entries are put back with the other dicts)."""
        return [d for pair in self.hooks if pair != (None, None) for d in pair if d is not None]

    def owned(self) -> dict[int, Any]:
        """Data pointer -> storage, for every model storage that holds data (copy-on-write)."""
        owned = dict(zip(map(torch.UntypedStorage.data_ptr, self.storages), self.storages))
        owned.pop(0, None)  # empty storages hold nothing to save
        return owned

    def _unchanged(self) -> bool:
        ts = self.tensors
        return (self.state is not None and self.leaves and list(map(_STATE, ts)) == self.state
                and all(map(_is, map(type, ts), self.classes))
                and list(map(torch.Tensor.data_ptr, ts)) == self.ptrs
                and list(map(torch.Tensor.stride, ts)) == self.strides
                and list(map(torch.Tensor.storage_offset, ts)) == self.offsets
                and all(map(_is, map(_grad, ts), self.grads))
                and list(map(_HOOKS, ts)) == self.hooks
                and list(map(torch.UntypedStorage.nbytes, self.storages)) == self.nbytes
                and all(ts[i].untyped_storage()._cdata == self.storages[i]._cdata for i in self.meta))

    def restore(self) -> None:
        if self._unchanged():
            return
        with torch.no_grad():
            for i, t in enumerate(self.tensors):
                self._restore_one(i, t)
        for t, was_leaf, requires_grad, grad in zip(self.tensors, self.is_leaf, self.requires_grad, self.grads):
            if was_leaf and not t.is_leaf:  # written in place with a tensor that requires grad: a leaf again
                t.detach_()
            if t.is_leaf and t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            if t.is_leaf and t._grad is not grad:
                t.grad = grad
        for t, (backward, post) in zip(self.tensors, self.hooks):
            _put_hooks(t, "_backward_hooks", backward)
            _put_hooks(t, "_post_accumulate_grad_hooks", post)

    def _restore_one(self, i: int, t: torch.Tensor) -> None:
        if type(t) is not self.classes[i]:
            t.__class__ = self.classes[i]
        storage, nbytes = self.storages[i], self.nbytes[i]
        if storage.nbytes() != nbytes:  # resized in place (observers)
            storage.resize_(nbytes)
        if t.dtype != self.dtypes[i] or t.device != storage.device:  # converted in place: module.half()
            t.data = torch.empty(0, dtype=self.dtypes[i], device=storage.device).set_(
                storage, self.offsets[i], self.sizes[i], self.strides[i])
        elif t.untyped_storage()._cdata != storage._cdata or t.size() != self.sizes[i] \
                or t.stride() != self.strides[i] or t.storage_offset() != self.offsets[i]:
            t.set_(storage, self.offsets[i], self.sizes[i], self.strides[i])


def _put_hooks(t: torch.Tensor, name: str, saved: dict | None) -> None:
    """Give ``t`` back the autograd hook dict it had (setting the property re-registers it with
    autograd and drops any other; a dict added meanwhile is emptied first, so that nothing that
    still refers to it calls a hook)."""
    current = getattr(t, name)
    if current is saved:
        return
    if isinstance(current, dict):
        current.clear()
    setattr(t, name, saved)
