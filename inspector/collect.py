"""Collection: run the model under two process-wide module hooks and an aten dispatch mode.

The hooks keep a stack of the module calls in progress (one ``Frame`` per call); every aten op the
forward runs is charged to the innermost call, with the MACs its formula gives. The collector knows
nothing about tables, closed forms or totals: it returns a frozen :class:`Collection`.

Hooks are registered once for the whole process (``register_module_forward_pre_hook`` and an
``always_call`` forward hook), not once per module: attaching costs the same for 10 or 10,000
modules, the pre-hook runs before any hook of the user's (so an error there is charged to the
right layer), and the post-hook also runs when a forward raises (so a parent that catches a child's
exception is charged its own work again). Calls of modules outside the model are ignored; work the
forward hands to other threads is counted there by a twin of the counter (``inspector.threads``),
and calls of the model on threads that do none of its work are said, not counted.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from inspector import meta_fast, meta_values, op_formulas, threads
from inspector.conventions import Convention
from inspector.culprit import raising_module
from inspector.meta_values import Known
from inspector.op_classes import matmul_like
from inspector.op_formulas import Nested
from inspector.report import OTHER_THREADS
from inspector.tree import ModelTree

Shape = tuple[int, ...]
_get_ident = threading.get_ident
_FAILED = object()
#: The shared empty, read-only mapping of a frame without kwargs or ops: no dict made per module
#: call for what most calls never fill (fewer objects for the cyclic garbage collector to scan).
NONE: Mapping[str, Any] = MappingProxyType({})
_INPUT = operator.attrgetter("shape", "dtype", "nbytes")
_FIRST, _SECOND, _THIRD = map(operator.itemgetter, range(3))
_requires_grad = operator.attrgetter("requires_grad")


class Frame:
    """One module call while it is collected; read-only once the collection is returned.

    ``args``/``kwargs`` hold shapes (see ``shape_of``), never the tensors themselves. A plain class
    with slots: one is made per module call, on the hot path."""

    __slots__ = ("index", "module", "name", "depth", "parent", "inputs", "_args", "kwargs", "outputs",
                 "output_bytes", "macs", "flops", "ops", "failed", "hook_macs", "grad_input", "bw_macs", "bw_flops",
                 "bw_ops", "saved_bytes", "recompute_macs", "start_bytes", "peak_bytes", "grad_output")

    def __init__(self, index: int, module: nn.Module, name: str, depth: int, parent: int | None) -> None:
        self.index = index
        self.module = module
        self.name = name
        self.depth = depth
        self.parent = parent
        #: (shape, dtype, bytes) of each tensor input, read in one C-level call per tensor
        self.inputs: tuple[tuple[Any, torch.dtype, int], ...] = ()
        self._args: tuple[Any, ...] | None = None  # None: the inputs are exactly the positional tensors
        self.kwargs: Mapping[str, Any] = NONE
        self.outputs: tuple[Shape, ...] = ()
        self.output_bytes = 0
        self.macs = 0
        self.flops = 0          # elementwise FLOPs of the convention in force (0 under "matmul")
        self.ops: Mapping[str, list[int]] = NONE  # op name -> [calls, MACs]; a dict from the first op on
        self.failed = False
        self.hook_macs = 0      # work done by the module's own pre-hooks (not its forward)
        self.grad_input = False  # some tensor input required grad (its gradient is computed in backward)
        self.bw_macs = 0
        self.bw_flops = 0
        self.bw_ops: Mapping[str, list[int]] = NONE
        self.saved_bytes = 0    # activations autograd saved for backward during this call
        self.recompute_macs = 0  # forward work recomputed in backward (activation checkpointing)
        self.start_bytes = 0    # live bytes the pass had made when this call started
        self.peak_bytes = 0     # the highest live bytes while it ran
        self.grad_output = False  # the gradient of some output arrived in backward (its backward ran)

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments as closed forms see them (see ``shape_of``)."""
        return self._args if self._args is not None else self.input_shapes

    @property
    def input_shapes(self) -> tuple[Any, ...]:
        return tuple(map(_FIRST, self.inputs))

    @property
    def input_dtypes(self) -> tuple[torch.dtype, ...]:
        return tuple(map(_SECOND, self.inputs))

    @property
    def input_bytes(self) -> int:
        return sum(map(_THIRD, self.inputs))

    def op_stats(self, backward: bool = False) -> dict[str, list[int]]:
        """The writable op table (forward or backward), made on first use."""
        ops = self.bw_ops if backward else self.ops
        if ops is NONE:
            ops = {}
            if backward:
                self.bw_ops = ops
            else:
                self.ops = ops
        return ops  # type: ignore[return-value]


def _tensor_shape(t: torch.Tensor) -> Any:
    try:
        return t.shape
    except RuntimeError:  # nested tensors have no single shape
        return Nested(tuple(tuple(s) for s in t._nested_tensor_size().tolist())) if t.device.type != "meta" \
            else Nested(())


def parts(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The dense tensors holding a sparse tensor's data (indices and values), or ``(t,)``."""
    layout = t.layout
    if layout == torch.sparse_coo:
        return (t._indices(), t._values())
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return (t.crow_indices(), t.col_indices(), t.values())
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return (t.ccol_indices(), t.row_indices(), t.values())
    return (t,)


def nbytes(t: torch.Tensor) -> int:
    """Bytes ``t`` holds: a sparse tensor's indices and values, a nested tensor's components."""
    if t.layout != torch.strided:
        return sum(p.numel() * p.element_size() for p in parts(t))
    return _numel(t) * t.element_size()


def _numel(t: torch.Tensor) -> int:
    try:
        return t.numel()
    except RuntimeError:
        return 0


def shape_of(value: Any) -> Any:
    """Tensor -> its shape; PackedSequence -> its data's shape; sequences of tensors mapped; plain
    scalars and strings kept; anything else None."""
    if isinstance(value, torch.Tensor):
        return _tensor_shape(value)
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return tuple(value.data.shape)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(_tensor_shape(v) for v in value)
    return value if isinstance(value, (int, float, bool, str, type(None))) else None


def tensor_leaves(value: Any, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every tensor in nested tuples, lists, dicts and dataclasses (ModelOutput is a dict)."""
    out = [] if out is None else out
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif v is not None and not isinstance(v, (int, float, str, bool)):
                tensor_leaves(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            tensor_leaves(v, out)
    elif isinstance(value, nn.utils.rnn.PackedSequence):
        out.append(value.data)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            tensor_leaves(getattr(value, f.name, None), out)
    return out


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(map(nbytes, tensors))


def _op_shapes(value: Any) -> Any:
    """Arguments as op formulas see them: tensors become shapes, lists of tensors tuples of shapes."""
    if isinstance(value, torch.Tensor):
        return _tensor_shape(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(_tensor_shape(v) for v in value)
    return value


_PLAIN = frozenset({torch.Tensor, nn.Parameter})
#: Argument types passed to formulas as they are; anything else (tensor subclasses, sequences) goes
#: through ``_op_shapes``.
_SCALARS = frozenset({int, float, bool, type(None), str, torch.dtype, torch.device, torch.layout,
                      torch.memory_format})


def _out_shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return _tensor_shape(out)
    if isinstance(out, (tuple, list)):
        return tuple(_tensor_shape(o) if isinstance(o, torch.Tensor) else o for o in out)
    return out


class Live:
    """Bytes of storages created while counting and still alive, and their peak.

    Storages, not tensors: a view outliving the tensor it was taken from (a flattened activation
    saved for backward) keeps its memory. Each storage is counted once and gets a plain weak
    reference (storages keep their Python object as long as they live; ``weakref.finalize`` would
    cost ten times as much). Its callback is a C-level ``list.append``: the dead are subtracted in
    one go before the next storage is counted (the peak can only rise there), with no Python call
    per death."""

    __slots__ = ("now", "peak", "phase", "peak_phase", "_refs", "_dead")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.phase = "forward"
        self.peak_phase = "forward"
        self._refs: dict[int, _StorageRef] = {}  # storage address -> its reference
        self._dead: list[_StorageRef] = []  # references whose storage died since the last add

    def enter(self, phase: str) -> None:
        """The step goes on to ``phase`` ("backward", "optimizer"): a later peak is said to be there."""
        self.phase = phase

    def add(self, tensor: torch.Tensor) -> None:
        """A tensor an op allocated; a storage already counted (an op handing back its input
        without saying so in its schema) is counted once."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # nested or sparse: no single storage
            if tensor.layout != torch.strided and not tensor.is_meta:
                for part in parts(tensor):
                    self.add(part)
            return
        refs = self._refs
        if self._dead:  # first: a new storage may sit at a dead one's address
            self.settle()
        key = storage._cdata
        if key in refs:
            return
        ref = _StorageRef(storage, self._dead.append)
        ref.key, ref.nbytes = key, storage.nbytes()
        refs[key] = ref
        self.now += ref.nbytes
        if self.now > self.peak:
            self.peak = self.now
            self.peak_phase = self.phase

    def settle(self) -> None:
        """Subtract the storages that died (``now`` is exact after this)."""
        refs = self._refs
        for ref in self._dead:
            if refs.get(ref.key) is ref:
                del refs[ref.key]
                self.now -= ref.nbytes
        self._dead.clear()


class _StorageRef(weakref.ref):
    __slots__ = ("key", "nbytes")


#: Operator namespaces whose ops without a formula are elementwise, copies or views unless
#: ``op_classes`` lists them as matmul-like; an op of any other namespace (``torch.library`` custom ops) without a
#: formula is reported as uncounted: nothing says what it computes.
KNOWN_NAMESPACES = frozenset({"aten", "prims", "quantized", "profiler", "rngprims", "_c10d_functional", "c10d",
                              "torchvision"})  # torchvision: nms and RoI pooling; deform_conv2d is named as a conv

#: Kernels that write running statistics without declaring it in their schema: (training-flag
#: position, written argument positions).
_UNDECLARED_WRITES = {"native_batch_norm": (5, (3, 4)), "cudnn_batch_norm": (5, (3, 4)),
                      "miopen_batch_norm": (5, (3, 4)),
                      # composite ops the dispatch mode sees whole in inference mode and TorchScript
                      "batch_norm": (5, (3, 4)), "_batch_norm_impl_index": (5, (3, 4)),
                      "instance_norm": (5, (3, 4))}
#: Ops that may grow the storage of the tensor they write (the guard is told the size asked for).
_RESIZES = frozenset({"aten.resize_", "aten.resize_as_"})
#: Kernels that resize what they write inside C++ (the guard is told they may): every ``out=``
#: overload, and fake quantization's fused observer (scale and zero_point grow to one per channel).
_RESIZING = frozenset({"aten.fused_moving_avg_obs_fake_quant", "aten._fused_moving_avg_obs_fq_helper"})
#: ``resize_to`` for a write that may reallocate to a size not known beforehand.
MAY_RESIZE = (-1,)


@dataclass(frozen=True)
class OpInfo:
    """What the counter needs to know about one op overload, worked out once per process and table
    (``guarded`` and ``counts`` are derived once, in ``describe``)."""

    name: str
    formula: Callable[..., int] | None
    extra: Callable[..., int] | None   # the convention's elementwise cost
    allocates: bool
    suspicious: bool                   # matmul-like (op_classes) or a custom op, yet no formula
    writes: tuple[Any, ...]            # argument positions (int) and names (str) the op writes
    undeclared: tuple[int, tuple[int, ...]] | None
    data_dependent: bool

    guarded: bool = False  # writes something: the guard sees it first
    counts: bool = False   # has a MAC formula or an elementwise cost
    fast: Callable[..., Any] | None = None  # a fast meta kernel (inspector.meta_fast)
    direct: bool = False  # an OpOverload whose C++ entry (``_op``) can be called without its __call__


#: OpInfo by (id(op), formula table, convention), shared by every counting pass: an op is described once
#: per process. A table is identified by its object and the registry's size (registering a formula
#: makes a new key).
_INFOS: dict[tuple[int, int, str], dict[Any, OpInfo]] = {}


def infos_for(table: dict, convention: Convention) -> dict[Any, OpInfo]:
    key = (id(table), len(table), convention.name)
    found = _INFOS.get(key)
    if found is None:
        if table is not op_formulas.OP_FORMULAS.table:  # a per-call table: not kept beyond this pass
            return {}
        found = _INFOS[key] = {}
    return found


def describe(func: Any, table: dict, convention: Convention) -> OpInfo:
    name = f"{func.namespace}.{func._schema.name.split('::')[-1]}"
    formula = op_formulas.lookup(table, func)
    schema = func._schema
    aliases = func.is_view or any(r.alias_info is not None for r in schema.returns)
    writes = tuple(a.name if a.kwarg_only else i for i, a in enumerate(schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write)
    tags = getattr(func, "tags", ())
    extra = convention.extra(func) if convention.extra else None
    undeclared = _UNDECLARED_WRITES.get(schema.name.split("::")[-1])
    unknown = func.namespace not in KNOWN_NAMESPACES  # a custom operator: what it computes is unknown
    return OpInfo(name=name, formula=formula, extra=extra, allocates=not aliases,
                  suspicious=formula is None and (unknown or matmul_like(name)), writes=writes,
                  undeclared=undeclared,
                  data_dependent=torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags,
                  guarded=bool(writes or undeclared), counts=formula is not None or extra is not None,
                  fast=meta_fast.lookup(func), direct=hasattr(func, "_op") and hasattr(func, "_pyobj_dispatcher"))


WriteGuard = Callable[..., None]  # guard(tensor) before a write; guard(tensor, size) before a resize


class Route(Protocol):
    """Where ops are charged outside the forward (``OpCounter.routed``): the frame ``frame()`` names
    (None: the ops run outside every call), as backward work when ``backward``; ``recomputing(f)``
    says whether ``f``'s forward is being run again in backward (activation checkpointing)."""

    backward: bool

    def frame(self) -> Frame | None: ...

    def recomputing(self, frame: Frame | None) -> bool: ...


@dataclass(frozen=True)
class Sink:
    """A route charging every op to one frame: the loss, the optimizer step (not the model's work)."""

    into: Frame
    backward: bool = False

    def frame(self) -> Frame:
        return self.into

    def recomputing(self, frame: Frame | None) -> bool:
        return False


class OpCounter(TorchDispatchMode):
    """Charges every aten op to the innermost module call on ``stack`` (forward) or on the backward
    stack (see ``training``), and saves model tensors before the first write to them (``guard``)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in a dynamo-disabling shim, paid on every aten op;
        # we never run under torch.compile (compiled models are inspected through their eager module).
        return False

    def __init__(self, stack: list[Frame], table: dict, convention: Convention, guard: WriteGuard | None = None,
                 track_memory: bool = True, infos: dict | None = None, meta: bool = False, count: bool = True,
                 live: Live | None = None, known: Known | None = None) -> None:
        super().__init__()
        self.meta = meta  # the run is on the meta device: fast meta kernels where there are some
        self.known = known  # values known on meta (inspector.meta_values), mirrored on the CPU
        self.count = count  # False: only guard writes and run fast meta kernels (an uncounted warm-up)
        self.stack = stack
        self.table = table
        self.convention = convention
        self.guard = guard
        self.track_memory = track_memory
        self.live = live if live is not None else Live()
        self.uncounted: dict[str, int] = {}
        self.formula_errors: dict[str, str] = {}
        self.failed_op: OpInfo | None = None  # the op that raised, if one did
        self._route: Route | None = None  # see ``routed``
        self._info: dict[Any, OpInfo] = infos_for(table, convention) if infos is None else infos
        #: Ops run while no module call was open (charged to the model's own row afterwards).
        self.outside = Frame(-1, nn.Identity(), "", 0, None)
        #: Set once the forward's work also runs on other threads (``inspector.threads``): every op is
        #: then counted under it, on this thread too.
        self.lock: threading.Lock | None = None

    def quiet(self) -> None:
        """Count and guard nothing more (a twin left on a thread that outlives the pass)."""
        self.count = False
        self.guard = None
        self.track_memory = False

    def for_thread(self, stack: list[Frame]) -> OpCounter:
        """A twin counting another thread's ops into the same frames, tables and memory timeline,
        charged to the innermost call on ``stack`` (that thread's own)."""
        if self.lock is None:
            self.lock = threading.Lock()
        twin = copy.copy(self)
        twin.stack = stack
        return twin

    def __enter__(self) -> OpCounter:
        if self.known is not None:  # constants made from Python data on meta: their values known too
            self._constants = meta_values.Constants(self.known)
            self._constants.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self.known is not None:
                self._constants.__exit__(*exc)

    @contextmanager
    def routed(self, route: Route) -> Iterator[None]:
        """While in this block, every op is charged where ``route`` says (the backward pass, the loss,
        the optimizer step) instead of to the innermost forward call."""
        saved, self._route = self._route, route
        try:
            yield
        finally:
            self._route = saved

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        # the hot path: one call per aten op of the forward; kept flat on purpose
        info = self._info.get(id(func))  # op overloads are singletons; their __hash__ is Python-level
        if info is None:
            info = self._info[id(func)] = describe(func, self.table, self.convention)
        if info.guarded and self.guard is not None:
            self._before_write(info, args, kwargs, func)
        try:
            out = NotImplemented
            if self.known is not None:
                out = self.known.dispatch(func, args, kwargs if kwargs else {})
            if out is NotImplemented and self.meta and info.fast is not None:
                out = meta_fast.run(info.fast, func, args, kwargs)
            if out is NotImplemented:
                # the overload's C++ entry, as its Python __call__ would pick it (one frame less per op)
                call = func._op if info.direct and func._pyobj_dispatcher is None else func
                out = call(*args, **kwargs) if kwargs else call(*args)
        except Exception:
            retried = NotImplemented
            if self.known is not None:  # a CPU scalar a meta kernel refuses: once more with it on meta
                try:
                    retried = self.known.with_scalars_on_meta(func, args, kwargs)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    retried = NotImplemented
            if retried is NotImplemented:
                self.failed_op = info
                raise
            out = retried
        if not self.count:
            return out
        if self.lock is not None:
            return self._locked(info, args, kwargs, out)
        if self._route is not None:
            route = self._route
            frame = route.frame()
            self._charge(frame if frame is not None else self.outside, info, args, kwargs, out, route.backward,
                         route.backward and route.recomputing(frame))
        else:
            stack = self.stack
            frame = stack[-1] if stack else self.outside
            macs = 0
            if info.counts:
                macs, flops = self._count(info, args, kwargs, out)
                frame.macs += macs
                frame.flops += flops
            elif info.suspicious:
                self.uncounted[info.name] = self.uncounted.get(info.name, 0) + 1
            stat = frame.ops.get(info.name)
            if stat is None:
                ops = frame.ops if frame.ops is not NONE else frame.op_stats()
                ops[info.name] = [1, macs]
            else:
                stat[0] += 1
                stat[1] += macs
        if info.allocates and self.track_memory:
            live = self.live
            if type(out) is torch.Tensor:
                live.add(out)
            elif isinstance(out, (tuple, list)):
                for t in out:
                    if isinstance(t, torch.Tensor):
                        live.add(t)
            elif isinstance(out, torch.Tensor):
                live.add(out)
            if self.stack and live.now > self.stack[-1].peak_bytes:
                self.stack[-1].peak_bytes = live.now
        return out

    def _locked(self, info: OpInfo, args: tuple, kwargs: dict | None, out: Any) -> Any:
        """The counting of ``__torch_dispatch__`` under the lock (the forward's work on several threads)."""
        with self.lock:  # type: ignore[union-attr]
            route = self._route
            if route is not None:
                frame = route.frame()
                self._charge(frame if frame is not None else self.outside, info, args, kwargs, out, route.backward,
                             route.backward and route.recomputing(frame))
            else:
                self._charge(self.stack[-1] if self.stack else self.outside, info, args, kwargs, out, False)
            if info.allocates and self.track_memory:
                live = self.live
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        live.add(t)
                if self.stack and live.now > self.stack[-1].peak_bytes:
                    self.stack[-1].peak_bytes = live.now
        return out

    def _charge(self, frame: Frame, info: OpInfo, args: tuple, kwargs: dict | None, out: Any, backward: bool,
                recomputed: bool = False) -> None:
        """Count one op on ``frame`` (the forward's own path is inlined in ``__torch_dispatch__``)."""
        macs = 0
        if info.counts:
            macs, flops = self._count(info, args, kwargs, out)
            if backward:
                frame.bw_macs += macs
                frame.bw_flops += flops
                if recomputed:
                    frame.recompute_macs += macs
            else:
                frame.macs += macs
                frame.flops += flops
        elif info.suspicious:
            self.uncounted[info.name] = self.uncounted.get(info.name, 0) + 1
        ops = frame.op_stats(backward)
        stat = ops.get(info.name)
        if stat is None:
            ops[info.name] = [1, macs]
        else:
            stat[0] += 1
            stat[1] += macs

    def charge_fused(self, func: Any, args: tuple, out: tuple) -> None:
        """A fused op answered outside the dispatcher (``meta_fast.FusedRNN``): described and counted
        like any op, on the innermost call."""
        info = self._info.get(id(func))
        if info is None:
            info = self._info[id(func)] = describe(func, self.table, self.convention)
        self._charge(self.stack[-1] if self.stack else self.outside, info, args, None, out, backward=False)
        if self.track_memory:
            for t in out:
                self.live.add(t)

    def _count(self, info: OpInfo, args: tuple, kwargs: dict | None, out: Any) -> tuple[int, int]:
        try:  # the common arguments (plain tensors, scalars) without a call each; the rest through _op_shapes
            shapes = [a.shape if type(a) in _PLAIN else a if type(a) in _SCALARS else _op_shapes(a) for a in args]
        except RuntimeError:  # a nested tensor has no single shape
            shapes = [_op_shapes(a) for a in args]
        kw = {k: _op_shapes(v) for k, v in kwargs.items()} if kwargs else {}
        out_shape = out.shape if type(out) is torch.Tensor and not out.is_nested else _out_shapes(out)
        macs = flops = 0
        try:
            if info.formula is not None:
                macs = int(info.formula(*shapes, out_shape=out_shape, **kw))
            if info.extra is not None:
                flops = int(info.extra(*shapes, out_shape=out_shape, **kw))
        except Exception as exc:  # noqa: BLE001 - a formula's failure is reported, never the model's
            self.formula_errors.setdefault(info.name, f"{type(exc).__name__}: {exc}")
            return 0, 0
        return macs, flops

    def _before_write(self, info: OpInfo, args: tuple, kwargs: dict | None, func: Any = None) -> None:
        guard = self.guard
        if info.name in _RESIZES and args and isinstance(args[0], torch.Tensor) and len(args) > 1:
            size = args[1].shape if isinstance(args[1], torch.Tensor) else args[1]
            guard(args[0], tuple(size))  # type: ignore[call-arg, misc]
            return
        if info.name in _RESIZING or getattr(func, "_overloadname", "") == "out":
            guard = functools.partial(guard, resize_to=MAY_RESIZE)  # type: ignore[arg-type]
        targets: list[Any] = []
        for w in info.writes:
            if isinstance(w, int):
                if w < len(args):
                    targets.append(args[w])
            elif kwargs and w in kwargs:
                targets.append(kwargs[w])
        if info.undeclared is not None:
            flag, positions = info.undeclared
            if len(args) > flag and args[flag]:
                targets.extend(args[p] for p in positions if p < len(args))
        for target in targets:
            if isinstance(target, torch.Tensor):
                guard(target)  # type: ignore[misc]
            elif isinstance(target, (list, tuple)):
                for t in target:
                    if isinstance(t, torch.Tensor):
                        guard(t)  # type: ignore[misc]


def _pop(stack: list[Frame], module: nn.Module, floor: int = 0) -> Frame | None:
    """Take ``module``'s call off ``stack`` (and any call above it that never closed); None if it is
    not there (at or above ``floor``)."""
    if len(stack) > floor and stack[-1].module is module:
        return stack.pop()
    if not any(f.module is module for f in stack[floor:]):
        return None
    while stack[-1].module is not module:  # defensive: calls that never closed
        stack.pop()
    return stack.pop()


@dataclass(frozen=True)
class Collection:
    """What one counted pass saw: a frame per module call (execution order), the ops run outside
    any call, peak live bytes, and the ops that could not be counted."""

    frames: tuple[Frame, ...]
    outside: Frame
    peak_bytes: int
    uncounted: dict[str, int] = field(default_factory=dict)
    formula_errors: dict[str, str] = field(default_factory=dict)


class Collector:
    """The two process-wide hooks, pushing and popping frames on a stack shared with the counter."""

    def __init__(self, tree: ModelTree, grads: bool = False, live: Live | None = None) -> None:
        self.tree = tree
        self.names = tree.first_names
        self.shared = tree.shared_ids
        self.frames: list[Frame] = []
        self.stack: list[Frame] = []
        self._observers: list[Callable[[Frame, tuple, dict | None, Any], None]] = []  # see ``observing``
        self._starting: list[Callable[[Frame, tuple], None]] = []  # see ``observing``
        #: live bytes, shared with the counter (``OpCounter(..., live=collector.live)``): each call's start and peak
        self.live = live if live is not None else Live()
        self.thread = threading.get_ident()
        #: Other threads doing the forward's work (see inspector.threads), by thread id, and what
        #: each enters when its work starts (a training step's saved-tensor hooks)
        self.threads: dict[int, threads.ThreadCalls] = {}
        self.thread_contexts: list[Callable[[], Any]] = []
        self.counter: OpCounter | None = None  # the counter whose twins run on other threads
        self._lock = threading.Lock()
        #: calls of the model's modules on threads not doing the forward's work (not counted)
        self.foreign_calls = 0
        self.failed: Frame | None = None  # the innermost call a forward raised in
        self._redirect: Any = None  # see ``redirected``
        self.grads = grads  # record whether inputs require grad (a training step)
        #: id(RNN module) -> its fused-op mode, on the meta device without autograd (see meta_fast)
        self.fused_rnn: dict[int, Any] = {}
        self._fused: list[Any] = []
        #: ids of the modules whose calls need more than a frame (shared ones, fused RNNs)
        self.special: frozenset[int] = self.shared

    def fuse_rnns(self, counter: OpCounter) -> None:
        """Count RNN modules as their fused op (meta device, no autograd): one op, not one per step."""
        from inspector.meta_fast import FusedRNN

        self.fused_rnn = {id(m): FusedRNN(counter.charge_fused) for _, m in self.tree.modules
                          if isinstance(m, nn.RNNBase)}
        self.special = self.shared | self.fused_rnn.keys()

    def _name(self, module: nn.Module, name: str, stack: list[Frame] | None = None) -> str:
        """A module reachable under several names is named by the parent that called it."""
        stack = self.stack if stack is None else stack
        parent = stack[-1] if stack else None
        if parent is not None:
            for child_name, child in parent.module._modules.items():
                if child is module:
                    return f"{parent.name}.{child_name}" if parent.name else child_name
        return name

    def _pre(self, module: nn.Module, args: tuple) -> None:
        # the hot path: one call per module call
        key = id(module)
        name = self.names.get(key)
        if name is None:
            return
        if _get_ident() != self.thread:
            self._foreign_pre(module, name)
            return
        if self._redirect is not None:
            self._redirect.pre(module)
            return
        if key in self.special:
            name = self._special_pre(module, name)
        stack = self.stack
        counter = self.counter
        if counter is not None and counter.lock is not None:  # other threads add frames and live bytes too
            frame = self._open_shared(module, name, stack, counter.lock)
        else:
            frames = self.frames
            if stack:
                parent = stack[-1]
                frame = Frame(len(frames), module, name, parent.depth + 1, parent.index)
            else:
                frame = Frame(len(frames), module, name, 0, None)
            frames.append(frame)
            live = self.live
            live.settle()
            frame.start_bytes = frame.peak_bytes = live.now
        stack.append(frame)
        if self._starting:
            for callback in self._starting:
                callback(frame, args)

    def _open_shared(self, module: nn.Module, name: str, stack: list[Frame],
                     live_lock: threading.Lock | None) -> Frame:
        """A call's frame while the forward's work runs on several threads (``stack``: the calling
        thread's open calls): its index taken and the frame listed under the collector's lock, its
        start read from the live timeline under ``live_lock``, the counters' (the two locks are never
        held together)."""
        parent = stack[-1] if stack else None
        with self._lock:
            frame = Frame(len(self.frames), module, name, parent.depth + 1 if parent else 0,
                          parent.index if parent else None)
            self.frames.append(frame)
        if live_lock is not None:
            with live_lock:
                self.live.settle()
                frame.start_bytes = frame.peak_bytes = self.live.now
        return frame

    def _special_pre(self, module: nn.Module, name: str) -> str:
        """A module reachable under several names, or an RNN counted as its fused op."""
        if id(module) in self.shared:
            name = self._name(module, name)
        if id(module) in self.fused_rnn:
            self._fused.append(self.fused_rnn[id(module)].__enter__())
        return name

    def _post(self, module: nn.Module, args: tuple, kwargs: Any = None, output: Any = _FAILED) -> None:
        # torch calls always_call hooks as (module, args, result) when the forward raised: no output
        if id(module) not in self.names:
            return
        if _get_ident() != self.thread:
            self._foreign_post(module, args, kwargs, output)
            return
        if self._redirect is not None:
            self._redirect.post(module)
            return
        stack = self.stack
        frame = _pop(stack, module)
        if frame is None:
            return  # a call claimed elsewhere (recomputation), or never pushed
        if stack and frame.peak_bytes > stack[-1].peak_bytes:
            if self.counter is not None and self.counter.lock is not None:  # other threads raise peaks too
                self._raise_peak(stack[-1], frame.peak_bytes, self.counter.lock)
            else:
                stack[-1].peak_bytes = frame.peak_bytes
        if self._fused and id(module) in self.fused_rnn:
            self._fused.pop().__exit__(None, None, None)
        self._close(frame, args, kwargs, output)

    def _close(self, frame: Frame, args: tuple, kwargs: Any, output: Any) -> None:
        """What a call's end tells: its inputs, outputs, and whether it raised."""
        if output is _FAILED:
            frame.failed = True
            if self.failed is None:
                self.failed = frame
            self._inputs(frame, args, None)
            return
        if self.failed is not None and self._below(self.failed, frame):
            self.failed = None  # this call caught its descendant's exception and went on
        self._inputs(frame, args, kwargs)
        if type(output) is torch.Tensor and not output.is_nested and output.layout == torch.strided:
            frame.outputs = (output.shape,)
            frame.output_bytes = output.nbytes
        else:
            leaves = tensor_leaves(output)
            frame.outputs = tuple(_tensor_shape(t) for t in leaves)
            frame.output_bytes = _nbytes(leaves)
        if self._observers:
            for callback in self._observers:
                callback(frame, args, kwargs, output)

    # --- the forward's work on other threads (see inspector.threads) -------------------------------

    def innermost_here(self) -> Any:
        """The innermost call open on this thread (None: none), or ``threads.NOT_OURS`` on a thread
        that is not doing the forward's work."""
        if _get_ident() == self.thread:
            return self.stack[-1] if self.stack else None
        calls = self.threads.get(_get_ident())
        if calls is None:
            return threads.NOT_OURS
        return calls.stack[-1] if calls.stack else None

    def _foreign_pre(self, module: nn.Module, name: str) -> None:
        if self._redirect is not None:
            return  # backward on autograd's threads: their ops reach the counter through autograd
        calls = self.threads.get(_get_ident())
        if calls is None:  # a thread the forward did not hand work to: not counted, and said so
            with self._lock:
                self.foreign_calls += 1
            return
        stack = calls.stack
        if id(module) in self.shared:
            name = self._name(module, name, stack)
        counter = self.counter
        stack.append(self._open_shared(module, name, stack, counter.lock if counter is not None else None))

    def _foreign_post(self, module: nn.Module, args: tuple, kwargs: Any, output: Any) -> None:
        calls = self.threads.get(_get_ident())
        if calls is None or self._redirect is not None:
            return
        frame = _pop(calls.stack, module, calls.floor)
        if frame is None:
            return
        if calls.stack:  # its caller, or the call it works for
            counter = self.counter
            self._raise_peak(calls.stack[-1], frame.peak_bytes,
                             counter.lock if counter is not None and counter.lock is not None else self._lock)
        with self._lock:
            self._close(frame, args, kwargs, output)

    @staticmethod
    def _raise_peak(caller: Frame, peak: int, lock: threading.Lock) -> None:
        """``caller``'s peak raised to ``peak`` under the lock the counters' twins write peaks under
        (the live timeline's): a call's peak is written from several threads."""
        with lock:
            if peak > caller.peak_bytes:
                caller.peak_bytes = peak

    def _below(self, frame: Frame, ancestor: Frame) -> bool:
        while frame.parent is not None:
            if frame.parent == ancestor.index:
                return True
            frame = self.frames[frame.parent]
        return False

    def _inputs(self, frame: Frame, args: tuple, kwargs: dict | None) -> None:
        if not kwargs:
            try:  # the common case, in one C-level loop: every argument a plain tensor
                frame.inputs = tuple(map(_INPUT, args))
                if self.grads:
                    frame.grad_input = any(map(_requires_grad, args))
                return
            except (AttributeError, RuntimeError):  # a non-tensor, or a nested tensor
                pass
        leaves = tensor_leaves((args, kwargs or {}))
        frame._args = tuple(shape_of(a) for a in args)
        if kwargs:
            frame.kwargs = {k: shape_of(v) for k, v in kwargs.items()}
        frame.inputs = tuple((_tensor_shape(t), t.dtype, nbytes(t)) for t in leaves)
        frame.grad_input = any(t.requires_grad for t in leaves)

    @contextmanager
    def hooks(self, counter: OpCounter | None = None) -> Iterator[None]:
        """Attach the two hooks (plus a marker on modules with pre-hooks of their own); removed on
        exit, also when the forward raised. With ``counter``, work the forward hands to other
        threads is counted too (see inspector.threads)."""
        self.counter = counter
        handles = [register_module_forward_pre_hook(self._pre),
                   register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        try:
            for module in self.tree.with_pre_hooks:
                handles.append(module.register_forward_pre_hook(self._forward_starts))
            with threads.work_carried(self):
                yield
        finally:
            for handle in handles:
                handle.remove()
            self.counter = None

    @contextmanager
    def observing(self, callback: Callable[[Frame, tuple, dict | None, Any], None],
                  starting: Callable[[Frame, tuple], None] | None = None) -> Iterator[None]:
        """``callback(frame, args, kwargs, output)`` after every call that returns, and
        ``starting(frame, args)`` as every call starts (its positional arguments: a global pre-hook
        sees no keyword arguments), in this block."""
        self._observers.append(callback)
        if starting is not None:
            self._starting.append(starting)
        try:
            yield
        finally:
            self._observers.remove(callback)
            if starting is not None:
                self._starting.remove(starting)

    @contextmanager
    def redirected(self, route: Any) -> Iterator[None]:
        """In this block (backward), module calls (activation checkpointing's recomputation) go to
        ``route.pre(module)`` and ``route.post(module)`` instead of opening frames."""
        saved, self._redirect = self._redirect, route
        try:
            yield
        finally:
            self._redirect = saved

    def _forward_starts(self, module: nn.Module, args: tuple) -> None:
        """Runs after the module's own pre-hooks: what they computed is not the layer's forward."""
        if self.stack and self.stack[-1].module is module:
            self.stack[-1].hook_macs = self.stack[-1].macs

    def failing_frame(self, exc: BaseException | None = None) -> Frame | None:
        """The call ``exc`` was raised in: the innermost of the model's module calls its traceback
        passes through (a hook of that module included); else the innermost call a forward raised in,
        or the innermost one still open."""
        found = raising_module(exc, self.names) if exc is not None else None
        if found is not None:
            for frame in reversed(self.frames):
                if frame.module is found.module:
                    if not frame.inputs:  # its call never closed (SystemExit): its arguments from the traceback
                        self._inputs(frame, found.args, found.kwargs)
                    return frame
        return self.failed if self.failed is not None else (self.stack[-1] if self.stack else None)

    def collection(self, counter: OpCounter, peak_bytes: int | None = None) -> Collection:
        """The frozen result; ``peak_bytes`` (default: the counter's live peak) for a step that went on
        after the forward (training reports the forward's own peak here)."""
        uncounted = dict(counter.uncounted)
        if self.foreign_calls:
            uncounted[OTHER_THREADS] = self.foreign_calls
        return Collection(frames=tuple(self.frames), outside=counter.outside,
                          peak_bytes=counter.live.peak if peak_bytes is None else peak_bytes,
                          uncounted=uncounted, formula_errors=dict(counter.formula_errors))
