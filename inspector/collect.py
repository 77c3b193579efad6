"""Collection: run the model under two process-wide module hooks and an aten dispatch mode.

The hooks keep a stack of the module calls in progress (one ``Frame`` per call); every aten op the
forward runs is charged to the innermost call, with the MACs its formula gives. The collector knows
nothing about tables, closed forms or totals: it returns a frozen :class:`Collection`.

Hooks are registered once for the whole process (``register_module_forward_pre_hook`` and an
``always_call`` forward hook), not once per module: attaching costs the same for 10 or 10,000
modules, the pre-hook runs before any hook of the user's (so an error there is charged to the
right layer), and the post-hook also runs when a forward raises (so a parent that catches a child's
exception is charged its own work again). Calls of modules outside the model, or from another
thread, are ignored.
"""
from __future__ import annotations

import operator
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from inspector import meta_fast, op_formulas
from inspector.conventions import Convention
from inspector.op_formulas import MATMUL_LIKE, Nested
from inspector.tree import ModelTree

Shape = tuple[int, ...]
_FAILED = object()
_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")
_nbytes_of = operator.attrgetter("nbytes")
_requires_grad = operator.attrgetter("requires_grad")


class Frame:
    """One module call while it is collected; read-only once the collection is returned.

    ``args``/``kwargs`` hold shapes (see ``shape_of``), never the tensors themselves. A plain class
    with slots: one is made per module call, on the hot path."""

    __slots__ = ("index", "module", "name", "depth", "parent", "call", "args", "kwargs", "input_shapes",
                 "input_dtypes", "input_bytes", "outputs", "output_bytes", "macs", "flops", "ops", "failed",
                 "hook_macs", "grad_input", "bw_macs", "bw_flops", "bw_ops", "saved_bytes", "recompute_macs")

    def __init__(self, index: int, module: nn.Module, name: str, depth: int, parent: int | None, call: int) -> None:
        self.index = index
        self.module = module
        self.name = name
        self.depth = depth
        self.parent = parent
        self.call = call
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.input_shapes: tuple[Shape, ...] = ()
        self.input_dtypes: tuple[torch.dtype, ...] = ()
        self.input_bytes = 0
        self.outputs: tuple[Shape, ...] = ()
        self.output_bytes = 0
        self.macs = 0
        self.flops = 0          # elementwise FLOPs of the convention in force (0 under "matmul")
        self.ops: dict[str, list[int]] = {}
        self.failed = False
        self.hook_macs = 0      # work done by the module's own pre-hooks (not its forward)
        self.grad_input = False  # some tensor input required grad (its gradient is computed in backward)
        self.bw_macs = 0
        self.bw_flops = 0
        self.bw_ops: dict[str, list[int]] = {}
        self.saved_bytes = 0    # activations autograd saved for backward during this call
        self.recompute_macs = 0  # forward work recomputed in backward (activation checkpointing)


def _tensor_shape(t: torch.Tensor) -> Any:
    try:
        return t.shape
    except RuntimeError:  # nested tensors have no single shape
        return Nested(tuple(tuple(s) for s in t._nested_tensor_size().tolist())) if t.device.type != "meta" \
            else Nested(())


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
    """Every tensor in nested tuples, lists, dicts and dataclass-like outputs (ModelOutput is a dict)."""
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
    return out


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(_numel(t) * t.element_size() for t in tensors)


def _op_shapes(value: Any) -> Any:
    """Arguments as op formulas see them: tensors become shapes, lists of tensors tuples of shapes."""
    if isinstance(value, torch.Tensor):
        return _tensor_shape(value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(_tensor_shape(v) for v in value)
    return value


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
    reference whose callback subtracts its bytes when it dies (storages keep their Python object as
    long as they live; ``weakref.finalize`` would cost ten times as much per storage)."""

    __slots__ = ("now", "peak", "phase", "peak_phase", "_refs", "_free", "__weakref__")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.phase = "forward"
        self.peak_phase = "forward"
        self._refs: dict[int, _StorageRef] = {}  # storage address -> its reference
        refs = self._refs

        def free(ref: _StorageRef, owner: weakref.ref = weakref.ref(self)) -> None:
            live = owner()
            if refs.get(ref.key) is ref:
                del refs[ref.key]
                if live is not None:
                    live.now -= ref.nbytes
        self._free = free

    def add(self, tensor: torch.Tensor) -> None:
        """A tensor an op allocated; a storage already counted (an op handing back its input
        without saying so in its schema) is counted once."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # nested or sparse: no single storage
            return
        key = storage._cdata
        if key in self._refs:
            return
        ref = _StorageRef(storage, self._free)
        ref.key, ref.nbytes = key, storage.nbytes()
        self._refs[key] = ref
        self.now += ref.nbytes
        if self.now > self.peak:
            self.peak = self.now
            self.peak_phase = self.phase


class _StorageRef(weakref.ref):
    __slots__ = ("key", "nbytes")


#: Operator namespaces whose ops without a formula are elementwise, copies or views unless their
#: name says matmul-like; an op of any other namespace (``torch.library`` custom ops) without a
#: formula is reported as uncounted: nothing says what it computes.
KNOWN_NAMESPACES = frozenset({"aten", "prims", "quantized", "profiler", "rngprims", "_c10d_functional", "c10d",
                              "torchvision"})  # torchvision: nms and RoI pooling; deform_conv2d is named as a conv

#: Kernels that write running statistics without declaring it in their schema: (training-flag
#: position, written argument positions).
_UNDECLARED_WRITES = {"native_batch_norm": (5, (3, 4)), "cudnn_batch_norm": (5, (3, 4)),
                      "miopen_batch_norm": (5, (3, 4))}


@dataclass(frozen=True)
class OpInfo:
    """What the counter needs to know about one op overload, worked out once per process and table
    (``guarded`` and ``counts`` are derived once, in ``describe``)."""

    name: str
    formula: Callable[..., int] | None
    extra: Callable[..., int] | None   # the convention's elementwise cost
    allocates: bool
    suspicious: bool                   # matmul-like by name, yet no formula
    writes: tuple[Any, ...]            # argument positions (int) and names (str) the op writes
    undeclared: tuple[int, tuple[int, ...]] | None
    data_dependent: bool

    guarded: bool = False  # writes something: the guard sees it first
    counts: bool = False   # has a MAC formula or an elementwise cost
    fast: Callable[..., Any] | None = None  # a fast meta kernel (inspector.meta_fast)


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
                  suspicious=formula is None and (unknown or bool(MATMUL_LIKE.search(name))), writes=writes,
                  undeclared=undeclared,
                  data_dependent=torch.Tag.data_dependent_output in tags or torch.Tag.dynamic_output_shape in tags,
                  guarded=bool(writes or undeclared), counts=formula is not None or extra is not None,
                  fast=meta_fast.lookup(func))


WriteGuard = Callable[[torch.Tensor], None]


class OpCounter(TorchDispatchMode):
    """Charges every aten op to the innermost module call on ``stack`` (forward) or on the backward
    stack (see ``training``), and saves model tensors before the first write to them (``guard``)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in a dynamo-disabling shim, paid on every aten op;
        # we never run under torch.compile (compiled models are inspected through their eager module).
        return False

    def __init__(self, stack: list[Frame], table: dict, convention: Convention, guard: WriteGuard | None = None,
                 track_memory: bool = True, infos: dict | None = None, meta: bool = False, count: bool = True) -> None:
        super().__init__()
        self.meta = meta  # the run is on the meta device: fast meta kernels where there are some
        self.count = count  # False: only guard writes and run fast meta kernels (an uncounted warm-up)
        self.stack = stack
        self.table = table
        self.convention = convention
        self.guard = guard
        self.track_memory = track_memory
        self.live = Live()
        self.uncounted: dict[str, int] = {}
        self.formula_errors: dict[str, str] = {}
        self.failed_op: OpInfo | None = None  # the op that raised, if one did
        self.backward = False
        self.bw_stack: list[Frame] = []
        self.recomputing: set[int] = set()  # frames whose forward is being recomputed (checkpointing)
        self.sink: Frame | None = None  # when set, every op is charged here: the loss, the optimizer step
        self._info: dict[Any, OpInfo] = infos_for(table, convention) if infos is None else infos
        #: Ops run while no module call was open (charged to the model's own row afterwards).
        self.outside = Frame(-1, nn.Identity(), "", 0, None, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        # the hot path: one call per aten op of the forward; kept flat on purpose
        info = self._info.get(id(func))  # op overloads are singletons; their __hash__ is Python-level
        if info is None:
            info = self._info[id(func)] = describe(func, self.table, self.convention)
        if info.guarded and self.guard is not None:
            self._before_write(info, args, kwargs)
        try:
            out = NotImplemented
            if self.meta and info.fast is not None:
                out = meta_fast.run(info.fast, func, args, kwargs)
            if out is NotImplemented:
                out = func(*args, **kwargs) if kwargs else func(*args)
        except Exception:
            self.failed_op = info
            raise
        if not self.count:
            return out
        if self.backward or self.sink is not None:
            self._elsewhere(info, args, kwargs, out)
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
                frame.ops[info.name] = [1, macs]
            else:
                stat[0] += 1
                stat[1] += macs
        if info.allocates and self.track_memory:
            if type(out) is torch.Tensor:
                self.live.add(out)
            elif isinstance(out, (tuple, list)):
                for t in out:
                    if isinstance(t, torch.Tensor):
                        self.live.add(t)
            elif isinstance(out, torch.Tensor):
                self.live.add(out)
        return out

    def _elsewhere(self, info: OpInfo, args: tuple, kwargs: dict | None, out: Any) -> None:
        """An op of the backward pass (charged to the innermost call whose backward runs), or of the
        loss or optimizer step (charged to ``sink``, which is not the model's work)."""
        if self.sink is not None:
            self._charge(self.sink, info, args, kwargs, out, backward=False)
        else:
            self._charge(self.bw_stack[-1] if self.bw_stack else self.outside, info, args, kwargs, out, backward=True)

    def _charge(self, frame: Frame, info: OpInfo, args: tuple, kwargs: dict | None, out: Any, backward: bool) -> None:
        """Count one op on ``frame`` (the forward's own path is inlined in ``__torch_dispatch__``)."""
        macs = 0
        if info.counts:
            macs, flops = self._count(info, args, kwargs, out)
            if backward:
                frame.bw_macs += macs
                frame.bw_flops += flops
                if frame.index in self.recomputing:
                    frame.recompute_macs += macs
            else:
                frame.macs += macs
                frame.flops += flops
        elif info.suspicious:
            self.uncounted[info.name] = self.uncounted.get(info.name, 0) + 1
        ops = frame.bw_ops if backward else frame.ops
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
        shapes = [_op_shapes(a) for a in args]
        kw = {k: _op_shapes(v) for k, v in kwargs.items()} if kwargs else {}
        out_shape = _out_shapes(out)
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

    def _before_write(self, info: OpInfo, args: tuple, kwargs: dict | None) -> None:
        guard = self.guard
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

    def __init__(self, tree: ModelTree, timer: Callable[[], Any] | None = None, capture: bool = True,
                 grads: bool = False) -> None:
        self.tree = tree
        self.names = tree.first_names
        self.shared = tree.shared_ids
        self.frames: list[Frame] = []
        self.stack: list[Frame] = []
        self.timer = timer
        self.capture = capture  # record shapes (counting); off for timed passes
        self.marks: list[tuple[Any, Any]] = []
        self.on_post: list[Callable[[Frame, tuple, dict | None, Any], None]] = []
        self._calls: dict[int, int] = {}
        self._thread = threading.get_ident()
        self.failed: Frame | None = None  # the innermost call a forward raised in
        self.redirect: Any = None  # during backward: recomputed calls go to redirect.pre/post (training)
        self.grads = grads  # record whether inputs require grad (a training step)
        #: id(RNN module) -> its fused-op mode, on the meta device without autograd (see meta_fast)
        self.fused_rnn: dict[int, Any] = {}
        self._fused: list[Any] = []

    def fuse_rnns(self, counter: OpCounter) -> None:
        """Count RNN modules as their fused op (meta device, no autograd): one op, not one per step."""
        from inspector.meta_fast import FusedRNN

        self.fused_rnn = {id(m): FusedRNN(counter.charge_fused) for _, m in self.tree.modules
                          if isinstance(m, nn.RNNBase)}

    def _name(self, module: nn.Module, name: str) -> str:
        """A module reachable under several names is named by the parent that called it."""
        parent = self.stack[-1] if self.stack else None
        if parent is not None:
            for child_name, child in parent.module._modules.items():
                if child is module:
                    return f"{parent.name}.{child_name}" if parent.name else child_name
        return name

    def _pre(self, module: nn.Module, args: tuple) -> None:
        name = self.names.get(id(module))
        if name is None or threading.get_ident() != self._thread:
            return
        if self.redirect is not None:
            self.redirect.pre(module)
            return
        if id(module) in self.shared:
            name = self._name(module, name)
        if id(module) in self.fused_rnn:
            self._fused.append(self.fused_rnn[id(module)].__enter__())
        stack = self.stack
        key = id(module)
        call = self._calls.get(key, 0)
        self._calls[key] = call + 1
        parent = stack[-1] if stack else None
        frame = Frame(len(self.frames), module, name, parent.depth + 1 if parent is not None else 0,
                      parent.index if parent is not None else None, call)
        self.frames.append(frame)
        stack.append(frame)
        if self.timer is not None:
            self.marks.append((self.timer(), None))

    def _post(self, module: nn.Module, args: tuple, *rest: Any) -> None:
        end = self.timer() if self.timer is not None else None
        if len(rest) == 2:
            kwargs, output = rest
        else:  # torch calls always_call hooks without kwargs when the forward raised
            kwargs, output = None, _FAILED
        if id(module) not in self.names or threading.get_ident() != self._thread:
            return
        if self.redirect is not None:
            self.redirect.post(module)
            return
        stack = self.stack
        if not stack or stack[-1].module is not module:
            if not any(f.module is module for f in stack):
                return  # a call claimed elsewhere (recomputation), or never pushed
            while stack[-1].module is not module:  # defensive: calls that never closed
                stack.pop()
        frame = stack.pop()
        if self._fused and id(module) in self.fused_rnn:
            self._fused.pop().__exit__(None, None, None)
        if self.timer is not None:
            start = self.marks[frame.index][0]
            self.marks[frame.index] = (start, end)
        if output is _FAILED:
            frame.failed = True
            if self.failed is None:
                self.failed = frame
            if self.capture:
                self._inputs(frame, args, None)
            return
        if self.failed is not None and self._below(self.failed, frame):
            self.failed = None  # this call caught its descendant's exception and went on
        if self.capture:
            self._inputs(frame, args, kwargs)
            if type(output) is torch.Tensor and not output.is_nested:
                frame.outputs = (output.shape,)
                frame.output_bytes = output.nbytes
            else:
                leaves = tensor_leaves(output)
                frame.outputs = tuple(_tensor_shape(t) for t in leaves)
                frame.output_bytes = _nbytes(leaves)
        for callback in self.on_post:
            callback(frame, args, kwargs, output)

    def _below(self, frame: Frame, ancestor: Frame) -> bool:
        while frame.parent is not None:
            if frame.parent == ancestor.index:
                return True
            frame = self.frames[frame.parent]
        return False

    def _inputs(self, frame: Frame, args: tuple, kwargs: dict | None) -> None:
        if not kwargs:
            try:  # the common case, in C-level loops: every argument a plain tensor
                frame.args = frame.input_shapes = tuple(map(_shape, args))
                frame.input_dtypes = tuple(map(_dtype, args))
                frame.input_bytes = sum(map(_nbytes_of, args))
                if self.grads:
                    frame.grad_input = any(map(_requires_grad, args))
                return
            except (AttributeError, RuntimeError):  # a non-tensor, or a nested tensor
                pass
        leaves = tensor_leaves((args, kwargs or {}))
        frame.args = tuple(shape_of(a) for a in args)
        frame.kwargs = {k: shape_of(v) for k, v in (kwargs or {}).items()}
        frame.input_shapes = tuple(_tensor_shape(t) for t in leaves)
        frame.input_dtypes = tuple(t.dtype for t in leaves)
        frame.input_bytes = _nbytes(leaves)
        frame.grad_input = any(t.requires_grad for t in leaves)

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Attach the two hooks (plus a marker on modules with pre-hooks of their own); removed on
        exit, also when the forward raised."""
        handles = [register_module_forward_pre_hook(self._pre),
                   register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        try:
            for module in self.tree.with_pre_hooks:
                handles.append(module.register_forward_pre_hook(self._forward_starts))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _forward_starts(self, module: nn.Module, args: tuple) -> None:
        """Runs after the module's own pre-hooks: what they computed is not the layer's forward."""
        if self.stack and self.stack[-1].module is module:
            self.stack[-1].hook_macs = self.stack[-1].macs

    def failing_frame(self) -> Frame | None:
        """The innermost module call a forward raised in (or the innermost one still open)."""
        return self.failed if self.failed is not None else (self.stack[-1] if self.stack else None)

    def collection(self, counter: OpCounter, peak_bytes: int | None = None) -> Collection:
        """The frozen result; ``peak_bytes`` (default: the counter's live peak) for a step that went on
        after the forward (training reports the forward's own peak here)."""
        return Collection(frames=tuple(self.frames), outside=counter.outside,
                          peak_bytes=counter.live.peak if peak_bytes is None else peak_bytes,
                          uncounted=dict(counter.uncounted), formula_errors=dict(counter.formula_errors))
