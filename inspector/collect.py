"""Collection: run the model once under forward hooks and an aten dispatch mode.

Hooks keep a stack of the module calls in progress; every aten op the forward runs is charged to
the innermost one, with the MACs its registered formula gives. The collector knows nothing about
tables, closed forms or totals: it returns raw frames.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from inspector.op_formulas import MATMUL_LIKE, OP_FORMULAS

Shape = tuple[int, ...]


@dataclass(eq=False)
class Frame:
    """One module call while it is being collected (mutable; frozen into a LayerRecord later)."""

    index: int
    name: str
    module: nn.Module
    depth: int
    parent: int | None
    call: int
    args: tuple[Any, ...] = ()  # shapes (see _shape_of), never the tensors themselves
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_shapes: tuple[Shape, ...] = ()
    input_dtypes: tuple[torch.dtype, ...] = ()
    outputs: tuple[Shape, ...] = ()
    output_bytes: int = 0
    macs: int = 0
    ops: dict[str, list[int]] = field(default_factory=dict)
    start: float = 0.0
    time_s: float | None = None


def _shape_of(value: Any) -> Any:
    """Tensor -> its shape; PackedSequence -> its data's shape; sequences mapped; others kept."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return tuple(value.data.shape)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(tuple(v.shape) for v in value)
    return value if isinstance(value, (int, float, bool, str, type(None))) else None


def _tensor_leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _all_tensors(args: tuple) -> bool:
    return all(isinstance(a, torch.Tensor) for a in args)


def _op_shapes(value: Any) -> Any:
    """Arguments as op formulas see them: tensors become ``torch.Size``, lists of tensors tuples."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return tuple(v.shape for v in value)
    return value


class _Live:
    """Bytes of tensors created during the forward and still alive; shared with weakref finalizers."""

    __slots__ = ("now", "peak")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def free(self, nbytes: int) -> None:
        self.now -= nbytes


@dataclass
class _OpInfo:
    name: str
    formula: Callable[..., int] | None
    allocates: bool
    suspicious: bool


class OpCounter(TorchDispatchMode):
    """Charges every aten op to the innermost module call on ``stack``."""

    def __init__(self, stack: list[Frame], track_memory: bool = True) -> None:
        super().__init__()
        self.stack = stack
        self.track_memory = track_memory
        self.live = _Live()
        self.uncounted: dict[str, int] = {}
        self._info: dict[Any, _OpInfo] = {}
        #: Ops run while no module call was open (charged to the model's own row afterwards).
        self.outside = Frame(-1, "", nn.Identity(), 0, None, 0)

    def _describe(self, func: Any) -> _OpInfo:
        name = f"{func.namespace}.{func._schema.name.split('::')[-1]}"
        formula = OP_FORMULAS.get(func.overloadpacket)
        aliases = func.is_view or any(r.alias_info is not None for r in func._schema.returns)
        info = _OpInfo(name, formula, not aliases, formula is None and bool(MATMUL_LIKE.search(name)))
        self._info[func] = info
        return info

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        info = self._info.get(func) or self._describe(func)
        frame = self.stack[-1] if self.stack else self.outside
        macs = 0
        if info.formula is not None:
            macs = info.formula(*map(_op_shapes, args), out=_out_shapes(out),
                                **{k: _op_shapes(v) for k, v in kwargs.items()})
            frame.macs += macs
        elif info.suspicious:
            self.uncounted[info.name] = self.uncounted.get(info.name, 0) + 1
        stat = frame.ops.get(info.name)
        if stat is None:
            frame.ops[info.name] = [1, macs]
        else:
            stat[0] += 1
            stat[1] += macs
        if self.track_memory and info.allocates:
            self._track(out)
        return out

    def _track(self, out: Any) -> None:
        live = self.live
        for t in (out,) if isinstance(out, torch.Tensor) else out if isinstance(out, (tuple, list)) else ():
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                live.now += nbytes
                weakref.finalize(t, live.free, nbytes)
        if live.now > live.peak:
            live.peak = live.now


def _out_shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.shape
    if isinstance(out, (tuple, list)):
        return tuple(o.shape if isinstance(o, torch.Tensor) else o for o in out)
    return out


@dataclass
class Collection:
    """What one collected forward pass produced."""

    frames: list[Frame]
    output: Any = None
    uncounted: dict[str, int] = field(default_factory=dict)
    peak_activation_bytes: int = 0


class Collector:
    """Forward pre/post hooks on every module, pushing and popping frames on a shared stack."""

    def __init__(self, model: nn.Module, timer: Callable[[], float] | None = None) -> None:
        self.model = model
        self.frames: list[Frame] = []
        self.stack: list[Frame] = []
        self.timer = timer
        self._calls: dict[int, int] = {}

    def _pre(self, name: str, depth: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            parent = self.stack[-1].index if self.stack else None
            call = self._calls.get(id(module), 0)
            self._calls[id(module)] = call + 1
            leaves = _tensor_leaves((args, kwargs)) if kwargs or not _all_tensors(args) else args
            frame = Frame(len(self.frames), name, module, depth, parent, call,
                          tuple(_shape_of(a) for a in args),
                          {k: _shape_of(v) for k, v in kwargs.items()} if kwargs else {},
                          tuple(tuple(t.shape) for t in leaves), tuple(t.dtype for t in leaves))
            self.frames.append(frame)
            self.stack.append(frame)
            if self.timer is not None:
                frame.start = self.timer()
        return hook

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        end = self.timer() if self.timer is not None else 0.0
        stack = self.stack
        while stack:  # a child whose exception the parent caught never popped itself
            frame = stack.pop()
            if frame.module is module:
                break
        else:
            return
        leaves = _tensor_leaves(output)
        frame.outputs = tuple(tuple(t.shape) for t in leaves)
        frame.output_bytes = sum(t.numel() * t.element_size() for t in leaves)
        if self.timer is not None:
            frame.time_s = end - frame.start

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Attach the hooks; they are removed on exit, also when the forward raised."""
        handles = []
        try:
            for name, module in self.model.named_modules():
                depth = name.count(".") + 1 if name else 0
                handles.append(module.register_forward_pre_hook(self._pre(name, depth), with_kwargs=True))
                handles.append(module.register_forward_hook(self._post, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def failing_frame(self) -> Frame | None:
        """The innermost module call still open: where a forward that raised failed."""
        return self.stack[-1] if self.stack else None


