"""Borrowing the user's model: run it on another device or dtype, in eval or train mode, and give it
back exactly as it was, whatever its forward writes, raises or is interrupted by.

Nothing is moved. Where the run needs another device or dtype, parameters and buffers are
substituted for the duration of a call through ``torch.func.functional_call``; where it does not,
the model runs as it is. Either way one mechanism gives everything back:

- *Tensor values*, copy-on-write: the dispatch mode sees every aten op that writes a tensor (by its
  schema, plus the kernels that write running statistics without saying so) and hands the tensor to
  :meth:`Borrow.guard` first; a storage of the model's is saved once, before its first write, and
  copied back on exit. In-place writes through views, ``.data.mul_()``, ``embedding_renorm_``,
  observers and BatchNorm statistics are all caught there; so are writes through ``.numpy()`` and
  DLPack views (the tensor is guarded when the view is handed out). A storage the forward grows
  (``resize_``: fake-quant observers) is grown on a copy, so the model keeps its own memory.
- *What a module holds* (``inspector.holdings``): every dict of every module (parameters, buffers,
  submodules, every hook dict, attributes), the lists, sets, deques and tuples nested in them (a
  KV cache), module classes (a parametrization registered in forward), and the identity, class,
  dtype, layout, ``requires_grad``, ``.grad`` and autograd hooks of every tensor found there.
- *Flags*: training flags through ``train()`` wherever a class, an instance or a patch overrides
  it, ``__setattr__`` or the children it walks, so overrides run as ``model.train()`` would run
  them; set directly elsewhere.
- *Process state*: the global module hooks, ``torch.nn.utils.parametrize``'s cache, grad mode and
  the dispatch-mode stack.

Giving back is safe at any interruption: SIGINT is held while it runs (and raised after), and every
step is idempotent: a borrow an interruption kept from its ``__exit__``, or stopped inside it, is
given back by :func:`settle`, which ``inspect`` runs on its way out.

What cannot be given back here: writes through raw pointers (``data_ptr()`` with ctypes), and the
inside of objects other than modules and plain containers. Inspection is serialised process-wide
(``LOCK``): two threads inspecting get one after the other. A thread running the model *outside*
``inspect`` meanwhile is not stopped (its calls are not counted, and said so: inspector.threads).
"""
from __future__ import annotations

import functools
import math
import operator
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules import module as module_mod
from torch.nn.utils import parametrize
from torch.utils import _python_dispatch as dispatch

from inspector.errors import MODEL_FAILURES, InputError, InspectorError, LayerError, first_line
from inspector.holdings import Classes, Containers, Tensors, gradients, put_back, unique
from inspector.tree import ModelTree

Mode = Literal["eval", "train", "as_is"]
MODES = ("eval", "train", "as_is")

#: Held for every inspection (re-entrant: a model whose forward inspects another is fine).
LOCK = threading.RLock()
#: Borrows taken and not yet given back, by thread (see ``settle``).
_OUTSTANDING: list[Borrow] = []
#: Tensor methods that hand out the tensor's memory outside the dispatcher.
_RAW_VIEWS = ("numpy", "__dlpack__")
#: Methods a pass patches while it runs (inspector.threads), put back if an interruption kept it from it.
_PATCHED = ((ThreadPoolExecutor, "submit"), (threading.Thread, "start"))


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

    def convert(name: str, t: torch.Tensor, copy: bool) -> torch.Tensor:
        if t.is_meta and device.type != "meta":
            raise InputError(f"{name} is on the meta device (it holds no values) and cannot run on {device}: "
                             "load the model's weights first, or inspect with device='meta' (counts only, no timing)")
        return t.detach().to(device=device, dtype=cast(t), copy=copy)

    if not copies and tree.devices <= {device} and (dtype is None or tree.float_dtypes <= {dtype}):
        return {}  # everything is already where and what the pass wants (no per-tensor checks)
    state = {name: convert(name, p, copies) for name, p in tree.parameters if copies or needs(p)}
    state.update((name, convert(name, b, True)) for name, b in tree.buffers)
    return state


def call(model: nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
    """One forward pass of ``model`` with ``state`` substituted (tied weights stay tied)."""
    if not state:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)


def counted_call(model: nn.Module, state: dict[str, torch.Tensor], args: tuple, kwargs: dict, collector: Any,
                 counter: Any, fail: Callable[[BaseException], Exception]) -> Any:
    """``call`` without autograd, with ``collector``'s hooks on the modules and ``counter``'s dispatch
    mode around it (see ``inspector.collect``): its output. A failure of the model's own code
    becomes ``fail(exc)`` (raised from it); the tool's own errors pass as they are."""
    with collector.hooks(counter), torch.no_grad():
        try:
            with counter:
                return call(model, state, args, kwargs)
        except InspectorError:
            raise
        except MODEL_FAILURES as exc:
            raise fail(exc) from exc


_TRAINING = operator.attrgetter("training")

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


class ProcessState:
    """What a run may change outside the model: the process-wide module hooks, parametrize's cache,
    grad mode, the dispatch-mode stack, and the tensor methods the borrow guards while it lasts."""

    def __init__(self) -> None:
        self.hooks = {name: dict(value) for name, value in vars(module_mod).items()
                      if name.startswith("_global_") and isinstance(value, dict)}
        self.cache = (parametrize._cache.copy(), parametrize._cache_enabled)
        self.grad = torch.is_grad_enabled()
        self.modes = len(dispatch._get_current_dispatch_mode_stack())
        self.mode_flags = (dispatch._is_in_torch_dispatch_mode, dispatch._is_in_non_infra_torch_dispatch_mode,
                           dispatch._is_in_any_mode_without_ignore_compile_internals)
        self.methods = {(owner, name): owner.__dict__.get(name)
                        for owner, name in (*((torch.Tensor, n) for n in _RAW_VIEWS), *_PATCHED)}

    def guard_raw_views(self, guard: Any) -> None:
        """Until ``restore``, ``Tensor.numpy()`` and ``__dlpack__`` hand ``guard`` the tensor first."""
        for name in _RAW_VIEWS:
            setattr(torch.Tensor, name, _guarded(getattr(torch.Tensor, name), guard))

    def restore(self) -> None:
        for (owner, name), method in self.methods.items():
            if owner.__dict__.get(name) is not method:
                if method is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, method)
        for name, saved in self.hooks.items():
            put_back(getattr(module_mod, name), saved)
        cache, enabled = self.cache
        put_back(parametrize._cache, cache)
        parametrize._cache_enabled = enabled
        while len(dispatch._get_current_dispatch_mode_stack()) > self.modes:  # a mode an interruption left
            dispatch._pop_mode()
        (dispatch._is_in_torch_dispatch_mode, dispatch._is_in_non_infra_torch_dispatch_mode,
         dispatch._is_in_any_mode_without_ignore_compile_internals) = self.mode_flags
        dispatch.set_is_in_mode_without_ignore_compile_internals(self.mode_flags[2])
        torch.set_grad_enabled(self.grad)


def _guarded(method: Any, guard: Any) -> Any:
    @functools.wraps(method)
    def guarded(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        guard(self)
        return method(self, *args, **kwargs)
    return guarded


class Borrow:
    """The model lent for a run (``with Borrow(tree, mode):``): everything put back on exit."""

    def __init__(self, tree: ModelTree, mode: Mode) -> None:
        self.tree = tree
        self.mode = mode
        self.saved: dict[int, tuple[Any, Any]] = {}  # storage ptr -> (storage, copy before the first write)
        self._owned: dict[int, Any] = {}
        self._thread = threading.get_ident()
        self._taken = False  # the snapshot is complete: from here on, giving back restores
        self._locked = False

    # --- copy-on-write ----------------------------------------------------------------------------

    @property
    def owns_data(self) -> bool:
        """Whether some model tensor holds data a write could change (not so for a model on meta)."""
        return bool(self._owned)

    def guard(self, t: torch.Tensor, resize_to: Any = None) -> None:
        """Called by the dispatch mode before an op writes ``t`` (``resize_to``: the size a resize
        asks for): save the model storage it lives in. The storage is found by its base address (no
        storage object made for every activation an in-place op writes)."""
        if not self._owned or t.is_meta:
            return
        try:
            ptr = t.data_ptr() - t.storage_offset() * t.element_size()
        except (RuntimeError, NotImplementedError):  # sparse, nested: never model state here
            return
        storage = self._owned.get(ptr)
        if storage is None:
            return
        if resize_to is not None and self._grow_on_copy(t, storage, resize_to):
            return  # the model's own storage is not written
        if ptr not in self.saved:
            self.saved[ptr] = (storage, storage.clone())

    def _grow_on_copy(self, t: torch.Tensor, storage: Any, size: tuple) -> bool:
        """A model tensor about to outgrow its storage (``size``; ``(-1,)``: a kernel that may resize
        what it writes) is moved to a copy of it first: the resize then reallocates the copy, and the
        model keeps its own memory (given back by ``Tensors``)."""
        if id(t) not in self.tensors.index:
            return False
        if min(size, default=0) >= 0 and (t.storage_offset() + math.prod(size)) * t.element_size() <= storage.nbytes():
            return False
        with torch.no_grad():
            t.set_(storage.clone(), t.storage_offset(), t.size(), t.stride())
        return True

    def keep_values(self, substituted: list[torch.Tensor]) -> None:
        """Save now the storage of every model tensor a pass without the copy-on-write may write:
        all but the ``substituted`` ones (timed passes run on copies of the parameters and buffers;
        tensor attributes, tensors in containers and gradients are the model's own)."""
        skipped = set(map(id, substituted))
        for t in self.tensors.tensors:
            if id(t) not in skipped and not t.is_meta:
                self.guard(t)

    # --- snapshot and restore ----------------------------------------------------------------------

    def __enter__(self) -> Borrow:
        try:  # the lock is taken inside: an interruption anywhere from here gives it back
            self._locked = LOCK.acquire()
            _OUTSTANDING.append(self)
            self._snapshot()
            self.process.guard_raw_views(self.guard)
            parametrize._cache_enabled = 0  # the run neither reads nor fills the user's cached() values
            self._enter_mode()
        except BaseException:
            self.give_back()
            raise
        return self

    def _snapshot(self) -> None:
        modules = self.tree.module_list
        if self.tree.scripted:  # TorchScript modules keep their attributes in C++: their tensors below
            modules = [m for m in modules if not isinstance(m, torch.jit.ScriptModule)]
        tensor_attrs = Containers(list(map(vars, modules)))
        found = unique([*tensor_attrs.tensors, *self.tree.param_tensors, *self.tree.buffer_tensors])
        found = unique(found + gradients(found))
        tensors = Tensors(found)
        # a tensor's own __dict__ and its autograd hook dicts are put back like a module's
        tensor_dicts = [vars(t) for t in tensors.tensors] + tensors.hook_dicts()
        self.containers = [tensor_attrs, Containers(tensor_dicts)]
        self.tensors = tensors
        self.classes = Classes(modules)
        self._owned = tensors.owned()
        self.process = ProcessState()
        self.flag_modules = self.tree.module_list
        self.flags = list(map(_TRAINING, self.flag_modules))
        self._taken = True

    def _enter_mode(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "as_is":
            wanted = self.mode == "train"
            if any(flag != wanted for flag in self.flags):
                try:
                    _set_training(self.tree.model, wanted, {})
                except MODEL_FAILURES as exc:
                    raise _model_error(exc, "switching the model's mode") from exc

    def reset(self) -> None:
        """Give everything back and lend it again: a pass that failed half-way (and may have written
        attributes) before another pass starts."""
        errors = self._restore()
        if errors:
            raise _model_error(errors[0], "giving the model back") from errors[0]
        self.process.guard_raw_views(self.guard)
        parametrize._cache_enabled = 0
        self._enter_mode()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        errors = self.give_back()
        if errors and exc is None:  # the run went well but giving the model back did not
            raise _model_error(errors[0], "giving the model back") from errors[0]

    def give_back(self) -> list[Exception]:
        """Restore everything and release the lock, and return the errors of the steps that raised.
        Idempotent: run again (by ``settle``) after an interruption inside, it finishes the job.
        SIGINT is held meanwhile and raised after."""
        errors: list[Exception] = []
        with _interrupts_held() as held:
            if self._taken:
                errors = self._restore()
                self.saved.clear(); self._taken = False  # one line: no line event between
            if self._locked:
                _forget(self)
                self._locked = False; LOCK.release()
        if held:
            raise KeyboardInterrupt
        return errors

    def _restore(self) -> list[Exception]:
        """Every step runs whatever the others do; the errors are returned (a user's train() that
        raises must not leave the weights, dicts or caches changed)."""
        errors: list[Exception] = []
        for step in (self._restore_flags, self.classes.restore, self._restore_storages, self.tensors.restore,
                     *(c.restore for c in self.containers), self.process.restore):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - collected, raised once everything is back
                errors.append(exc)
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


def _forget(borrow: Borrow) -> None:
    if borrow in _OUTSTANDING:
        _OUTSTANDING.remove(borrow)


def settle() -> None:
    """Give back every borrow of this thread still outstanding: one whose ``__exit__`` an
    interruption kept from running (``inspect`` calls this on its way out)."""
    me = threading.get_ident()
    for borrow in [b for b in reversed(_OUTSTANDING) if b._thread == me]:
        borrow.give_back()


@contextmanager
def _interrupts_held() -> Iterator[list[int]]:
    """SIGINT recorded instead of raised while the block runs (main thread only: signals are
    delivered there); the list says whether one came."""
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous is None:  # another thread, or a handler set from C: nothing to hold
        yield held
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


def _model_error(exc: BaseException, doing: str) -> LayerError:
    return LayerError(f"the model raised while {doing} (its own train() or attribute code): {first_line(exc)}")
