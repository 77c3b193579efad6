"""From a collection to a report: totals at once, per-call records (parameter attribution, inclusive
sums, closed forms) only when a report's layers are first asked for."""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import compress

import torch
from torch import nn
from torch.nn.utils import parametrize

from inspector.closed_forms import evaluate, evaluate_backward
from inspector.collect import NONE, Collection, Frame
from inspector.errors import first_line
from inspector.records import LayerRecord, OpStat
from inspector.tree import ModelTree


_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_NBYTES = operator.attrgetter("nbytes")


@dataclass(frozen=True)
class Run:
    """What was run, as a report states it."""

    model: str
    device: str
    dtype: str
    mode: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtypes: tuple[str, ...] = ()
    flops: str = "matmul"
    notes: tuple[str, ...] = ()
    backward: bool = False


@dataclass(frozen=True)
class ParamTotals:
    params: int
    trainable: int
    buffer_elements: int
    param_bytes: int
    buffer_bytes: int


def sizer(dtype: torch.dtype | None) -> Callable[[torch.Tensor], int]:
    """Bytes of a tensor as the pass holds it: floating ones in ``dtype`` when one is given."""
    cast_size = None if dtype is None else torch.empty((), dtype=dtype).element_size()

    def nbytes(p: torch.Tensor) -> int:
        return p.numel() * (cast_size if cast_size is not None and p.is_floating_point() else p.element_size())
    return nbytes


def param_totals(tree: ModelTree, dtype: torch.dtype | None = None) -> ParamTotals:
    """Totals from the tree's unnamed tensor lists, in C-level loops (packed quantized weights are
    frozen parameters); bytes of floating tensors in ``dtype`` when the pass casts them."""
    params, buffers = tree.param_tensors, tree.buffer_tensors
    packed = {id(t) for _, t, _ in tree.packed}
    trainable = [p for p in compress(params, map(_REQUIRES_GRAD, params)) if id(p) not in packed]
    size = _NBYTES if dtype is None else sizer(dtype)
    param_bytes, buffer_bytes = sum(map(size, params)), sum(map(size, buffers))
    return ParamTotals(params=sum(map(torch.Tensor.numel, params)), trainable=sum(map(torch.Tensor.numel, trainable)),
                       buffer_elements=sum(map(torch.Tensor.numel, buffers)), param_bytes=param_bytes,
                       buffer_bytes=buffer_bytes)


def subtree_params(tree: ModelTree, dtype: torch.dtype | None = None) -> dict[str, tuple[int, int]]:
    """(unique parameter count, bytes) of every module's subtree, by qualified name, in one pass."""
    size = sizer(dtype)
    counts: dict[str, tuple[int, int]] = {}
    if not tree.has_tied_params:  # each tensor has one name: sum each module's own, then fold upwards
        numels: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for pname, p, _ in tree.params:
            owner = pname.rpartition(".")[0]
            numels[owner] = numels.get(owner, 0) + p.numel()
            sizes[owner] = sizes.get(owner, 0) + size(p)
        for name, _ in reversed(tree.modules):  # children come after their parent in pre-order
            if name:
                parent = name.rpartition(".")[0]
                numels[parent] = numels.get(parent, 0) + numels.get(name, 0)
                sizes[parent] = sizes.get(parent, 0) + sizes.get(name, 0)
        return {name: (numels[name], sizes[name]) for name in numels}
    seen: dict[str, set[int]] = {}
    for pname, p, _ in tree.param_paths:
        numel, nbytes = p.numel(), size(p)
        prefix = pname
        while prefix:
            prefix = prefix.rpartition(".")[0]
            ids = seen.setdefault(prefix, set())
            if id(p) not in ids:
                ids.add(id(p))
                n, b = counts.get(prefix, (0, 0))
                counts[prefix] = (n + numel, b + nbytes)
    return counts


def attribute_params(tree: ModelTree, frames: tuple[Frame, ...], subtree: dict[str, tuple[int, int]]
                     ) -> tuple[dict[int, list[int]], list[tuple[str, int]]]:
    """Each unique parameter goes to the first call of a module that holds it, under any of its names
    (so a tied embedding shows on the call that used it, not on an uncalled alias), else to the
    first call of its nearest called ancestor. Returns {frame index: [params, trainable]} and the
    top-most modules that never ran."""
    first_call: dict[int, int] = {}
    for f in frames:
        first_call.setdefault(id(f.module), f.index)
    by_name = dict(tree.paths)
    held_by: dict[int, int] = {}  # id(param) -> earliest call of a module holding it
    if tree.has_tied_params:
        for pname, p, _ in tree.param_paths:
            module = by_name.get(pname.rpartition(".")[0])
            index = first_call.get(id(module)) if module is not None else None
            if index is not None and index < held_by.get(id(p), index + 1):
                held_by[id(p)] = index
    per_frame: dict[int, list[int]] = {}
    for pname, p, trainable in tree.params:  # a tied tensor comes once
        owner = pname.rpartition(".")[0]
        index = held_by.get(id(p))
        while index is None:
            module = by_name.get(owner)
            index = first_call.get(id(module)) if module is not None else None
            if index is None and not owner:
                break
            owner = owner.rpartition(".")[0]
        if index is None:
            continue
        entry = per_frame.setdefault(index, [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if trainable else 0
    live = {name for name, m in tree.modules if id(m) in first_call}
    inside_scripted = set(map(id, tree.inside_scripted))
    uncalled = []
    for name, module in tree.modules:  # containers without a forward are transparent
        parent = name.rpartition(".")[0]
        if not name or id(module) in first_call or parent not in live or id(module) in inside_scripted:
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or type(module).forward is nn.Module.forward:
            live.add(name)
        else:
            uncalled.append((name, subtree.get(name, (0, 0))[0]))
    if held_by and uncalled:  # tied parameters are on the call that used them, not on this caller's row
        prefixes = {name: 0 for name, _ in uncalled}
        for pname, p, _ in tree.params:
            if id(p) in held_by:
                continue
            owner = pname.rpartition(".")[0]
            for name in prefixes:
                if owner == name or owner.startswith(name + "."):
                    prefixes[name] += p.numel()
        uncalled = [(name, prefixes[name]) for name, _ in uncalled]
    return per_frame, uncalled


def _reparametrized(module: nn.Module) -> bool:
    """Parametrized (weight_norm, spectral_norm, orthogonal) or hooked (old weight_norm, pruning):
    its stored parameters are not the layer's plain weight and bias."""
    return parametrize.is_parametrized(module) or bool(module._forward_pre_hooks)


def _stats(ops: dict[str, list[int]]) -> tuple[OpStat, ...]:
    return tuple(OpStat(op, c, m) for op, (c, m) in ops.items())


def merge_outside(collection: Collection) -> None:
    """Ops run outside every module call (before the first hook, after the last) go to the root."""
    if not collection.frames:
        return
    root, outside = collection.frames[0], collection.outside
    for attr in ("macs", "flops", "bw_macs", "bw_flops"):
        setattr(root, attr, getattr(root, attr) + getattr(outside, attr))
    for backward, theirs in ((False, outside.ops), (True, outside.bw_ops)):
        for op, (calls, macs) in theirs.items():
            stat = root.op_stats(backward).setdefault(op, [0, 0])
            stat[0] += calls
            stat[1] += macs
    for attr in ("macs", "flops", "bw_macs", "bw_flops"):
        setattr(outside, attr, 0)
    outside.ops = outside.bw_ops = NONE


@dataclass
class RecordBuilder:
    """Builds the per-call records when a report first needs them, then lets go of the model."""

    tree: ModelTree | None
    collection: Collection | None
    dtype: torch.dtype | None
    times: tuple[float | None, ...] | None = None
    backward: bool = False
    notes: list[str] = field(default_factory=list)

    def build(self) -> tuple[tuple[LayerRecord, ...], tuple[tuple[str, int], ...]]:
        tree, collection = self.tree, self.collection
        assert tree is not None, "records are built once"
        if collection is None:
            self.tree = None
            return static_records(tree, self.dtype), ()
        frames = collection.frames
        module_params = subtree_params(tree, self.dtype)
        per_frame, uncalled = attribute_params(tree, frames, module_params)
        n = len(frames)
        inclusive = {k: [getattr(f, k) for f in frames]
                     for k in ("macs", "flops", "bw_macs", "saved_bytes", "recompute_macs")}
        inclusive_params = [per_frame.get(i, [0])[0] for i in range(n)]
        hooked = [f.hook_macs for f in frames]
        has_children = [False] * n
        for f in reversed(frames):
            if f.parent is not None:
                for values in inclusive.values():
                    values[f.parent] += values[f.index]
                inclusive_params[f.parent] += inclusive_params[f.index]
                hooked[f.parent] += hooked[f.index]
                if isinstance(f.module, parametrize.ParametrizationList):
                    hooked[f.parent] += inclusive["macs"][f.index]
                has_children[f.parent] = True
        names = {id(m): name for name, m in tree.modules}
        records = []
        calls: dict[int, int] = {}  # id(module) -> its calls so far: the call number of each frame
        for f in frames:
            call = calls[id(f.module)] = calls.get(id(f.module), -1) + 1
            form = expected_bw = None
            try:
                form = evaluate(f.module, f.args, f.kwargs, f.outputs) if not f.failed else None
                if self.backward:
                    expected_bw = evaluate_backward(f.module, form, f.grad_input)
            except Exception as exc:  # noqa: BLE001 - a closed form that cannot apply is noted, not fatal
                self.notes.append(f"closed form of {f.name or '(model)'} ({type(f.module).__name__}) not "
                                  f"checked: {first_line(exc)}")
            params, trainable = per_frame.get(f.index, [0, 0])
            own_name = names.get(id(f.module), f.name)
            subtree = module_params.get(own_name, (0, 0))
            reparam = _reparametrized(f.module)
            bw = self.backward
            records.append(LayerRecord.make(
                index=f.index, name=f.name, type=type(f.module).__name__, depth=f.depth, parent=f.parent,
                call=call, is_leaf=not has_children[f.index], input_shapes=f.input_shapes,
                input_dtypes=tuple(str(d).replace("torch.", "") for d in f.input_dtypes),
                output_shapes=f.outputs, output_bytes=f.output_bytes, params=params, trainable_params=trainable,
                inclusive_params=inclusive_params[f.index], macs=f.macs, inclusive_macs=inclusive["macs"][f.index],
                elementwise_flops=f.flops, inclusive_elementwise_flops=inclusive["flops"][f.index],
                expected_macs=None if form is None else form.macs,
                expected_params=None if form is None or reparam else form.params, module_params=subtree[0],
                ops=_stats(f.ops), input_bytes=f.input_bytes, param_bytes=subtree[1], hook_macs=hooked[f.index],
                failed=f.failed, time_ms=None if self.times is None or self.times[f.index] is None
                else self.times[f.index] * 1e3,
                backward_macs=f.bw_macs if bw else None, inclusive_backward_macs=inclusive["bw_macs"][f.index] if bw
                else None, backward_ops=_stats(f.bw_ops), expected_backward_macs=None if reparam else expected_bw,
                saved_bytes=f.saved_bytes if bw else None,
                inclusive_saved_bytes=inclusive["saved_bytes"][f.index] if bw else None,
                recompute_macs=inclusive["recompute_macs"][f.index] if bw else None,
            ))
        if self.times is not None:
            own = self_times([r.parent for r in records], tuple(r.time_ms for r in records))
            records = [replace(r, self_time_ms=t) for r, t in zip(records, own)]
        self.tree = self.collection = None  # the report no longer holds the model
        return tuple(records), tuple(uncalled)


def self_times(parents: list[int | None], times: tuple[float | None, ...]) -> list[float | None]:
    """Each call's time minus its children's (never below zero), in the units given; None where a
    call has no time."""
    children = [0.0] * len(times)
    for i, parent in enumerate(parents):
        if parent is not None and times[i] is not None:
            children[parent] += times[i]  # type: ignore[operator]
    return [None if t is None else max(0.0, t - children[i]) for i, t in enumerate(times)]


def layer_sum_ms(collection: Collection, times: tuple[float | None, ...]) -> float:
    """Sum of every call's self-time, in ms, from per-call seconds."""
    own = self_times([f.parent for f in collection.frames], times)
    return 1e3 * sum(t for t in own if t is not None)


def static_records(tree: ModelTree, dtype: torch.dtype | None = None) -> tuple[LayerRecord, ...]:
    """A record per module of a model that did not run (no input): its place in the module tree and
    its parameters, without any call figure."""
    subtree = subtree_params(tree, dtype)
    own: dict[str, list[int]] = {}
    for pname, p, trainable in tree.params:
        entry = own.setdefault(pname.rpartition(".")[0], [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if trainable else 0
    index = {name: i for i, (name, _) in enumerate(tree.modules)}
    parents = [None if not name else index.get(name.rpartition(".")[0], 0) for name, _ in tree.modules]
    has_children = {p for p in parents if p is not None}
    return tuple(LayerRecord.make(
        index=i, name=name, type=type(module).__name__, depth=name.count(".") + 1 if name else 0, parent=parents[i],
        call=0, is_leaf=i not in has_children, input_shapes=(), output_shapes=(), output_bytes=0,
        params=own.get(name, [0, 0])[0], trainable_params=own.get(name, [0, 0])[1],
        inclusive_params=subtree.get(name, (0, 0))[0], macs=0, inclusive_macs=0, expected_macs=None,
        expected_params=None, module_params=subtree.get(name, (0, 0))[0], ops=(),
        param_bytes=subtree.get(name, (0, 0))[1]) for i, (name, module) in enumerate(tree.modules))
