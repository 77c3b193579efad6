"""From what the passes collected to a finished :class:`Report`: parameters attributed to calls, the
figures of every call (``inspector.figures``) and their inclusive sums, the closed forms. Runs
inside the borrow, while the model is still lent; what it returns holds no module and no tensor."""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import compress
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from inspector import experts
from inspector.closed_forms import evaluate, evaluate_backward
from inspector.collect import Collection, Frame, nbytes as tensor_bytes
from inspector.errors import first_line
from inspector.figures import all_figures, fold, per_call
from inspector.records import LayerRecord, OpStat
from inspector.report import Report, Run, Timing, Training
from inspector.tree import ModelTree

_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_NBYTES = operator.attrgetter("nbytes")


@dataclass(frozen=True)
class ParamTotals:
    params: int
    trainable: int
    buffer_elements: int
    param_bytes: int
    buffer_bytes: int


@dataclass(frozen=True)
class Call:
    """One module call as the figures' ``measure`` functions see it: the counting pass's frame (its
    module included: measures run while the model is lent), the parameters attributed to it, and
    what the other passes measured of it."""

    frame: Frame
    params: int
    trainable_params: int
    hook_macs: int
    busy_ms: float | None = None
    idle_ms: float | None = None
    host_ms: float | None = None


def sizer(dtype: torch.dtype | None) -> Callable[[torch.Tensor], int]:
    """Bytes of a tensor as the pass holds it: floating ones in ``dtype`` when one is given."""
    cast_size = None if dtype is None else torch.empty((), dtype=dtype).element_size()

    def nbytes(p: torch.Tensor) -> int:
        if p.layout != torch.strided:  # sparse: its indices and values
            return tensor_bytes(p)
        return p.numel() * (cast_size if cast_size is not None and p.is_floating_point() else p.element_size())
    return nbytes


def param_totals(tree: ModelTree, dtype: torch.dtype | None = None) -> ParamTotals:
    """Totals from the tree's unnamed tensor lists, in C-level loops (packed quantized weights are
    frozen parameters); bytes of floating tensors in ``dtype`` when the pass casts them."""
    params, buffers = tree.param_tensors, tree.buffer_tensors
    packed = {id(t) for _, t, _ in tree.packed}
    trainable = [p for p in compress(params, map(_REQUIRES_GRAD, params)) if id(p) not in packed]
    try:
        size = _NBYTES if dtype is None else sizer(dtype)
        param_bytes, buffer_bytes = sum(map(size, params)), sum(map(size, buffers))
    except RuntimeError:  # a sparse tensor has no nbytes
        size = sizer(dtype)
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


def attribute_params(tree: ModelTree, frames: Sequence[Frame], subtree: dict[str, tuple[int, int]]
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
    return per_frame, _uncalled(tree, first_call, held_by, subtree)


def _uncalled(tree: ModelTree, first_call: dict[int, int], held_by: dict[int, int],
              subtree: dict[str, tuple[int, int]]) -> list[tuple[str, int]]:
    """The top-most modules that never ran (containers without a forward are transparent), with
    the parameters that are on their caller's row."""
    live = {name for name, m in tree.modules if id(m) in first_call}
    inside_scripted = set(map(id, tree.inside_scripted))
    uncalled = []
    for name, module in tree.modules:
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
    return uncalled


def _reparametrized(module: nn.Module) -> bool:
    """Parametrized (weight_norm, spectral_norm, orthogonal) or hooked (old weight_norm, pruning):
    its stored parameters are not the layer's plain weight and bias."""
    children = vars(module).get("_modules")  # not getattr: a __getattr__ may raise anything
    return (isinstance(children, dict) and isinstance(children.get("parametrizations"), nn.ModuleDict)) \
        or bool(module._forward_pre_hooks)


def _stats(ops: dict[str, list[int]]) -> tuple[OpStat, ...]:
    return tuple([OpStat(op, c, m) for op, (c, m) in ops.items()]) if ops else ()


def _merged(ops: dict[str, list[int]], more: dict[str, list[int]]) -> dict[str, list[int]]:
    """Two op tables as one (the model's own row and the ops run outside every call)."""
    out = {op: list(stat) for op, stat in ops.items()}
    for op, (calls, macs) in more.items():
        stat = out.setdefault(op, [0, 0])
        stat[0] += calls
        stat[1] += macs
    return out


@functools.cache
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _config(module: nn.Module) -> str:
    """The module's own description (``extra_repr``), first line; '' when it has none or it fails."""
    try:
        text = module.extra_repr()
    except Exception:  # noqa: BLE001 - a broken extra_repr must not stop the report
        return ""
    return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else ""


def _hook_macs(frames: Sequence[Frame]) -> list[int]:
    """Each call's own work that is not its layer's formula: its pre-hooks', or all of it inside a
    parametrization (the weight computed when the layer reads it)."""
    inside = [False] * len(frames)
    for f in frames:
        inside[f.index] = isinstance(f.module, parametrize.ParametrizationList) or \
            (f.parent is not None and inside[f.parent])
    return [f.macs if inside[f.index] else f.hook_macs for f in frames]


def records(tree: ModelTree, collection: Collection, dtype: torch.dtype | None, has: Callable[[str], bool],
            times: Any = None) -> tuple[tuple[LayerRecord, ...], tuple[tuple[str, int], ...], tuple[str, ...]]:
    """One record per call, the modules that never ran, and the notes of closed forms that could not
    be checked. ``has(part)`` says which parts of the report ran (see ``inspector.figures``)."""
    frames = collection.frames
    module_params = subtree_params(tree, dtype)
    per_frame, uncalled = attribute_params(tree, frames, module_params)
    hooks = _hook_macs(frames)
    none = (None,) * len(frames)
    busy, idle, host = (times.busy_ms, times.idle_ms, times.host_ms) if times is not None else (none, none, none)
    calls = [Call(f, *per_frame.get(f.index, (0, 0)), hook_macs=hooks[f.index], busy_ms=busy[f.index],
                  idle_ms=idle[f.index], host_ms=host[f.index]) for f in frames]
    links = [(f.index, f.parent) for f in frames if f.parent is not None]
    # ops run outside every call (before the first hook, after the last) are the model's own
    own, inclusive = per_call(calls, links, has, outside=Call(collection.outside, 0, 0, 0))
    has_children = [False] * len(frames)
    for _, parent in links:
        has_children[parent] = True
    names = {id(m): name for name, m in tree.modules}
    notes: list[str] = []
    out = []
    numbering: dict[int, int] = {}  # id(module) -> its calls so far: the call number of each frame
    backward = has("training")
    unchecked: dict[tuple[str, str], list[str]] = {}  # (what, why) -> the calls it concerns
    understood: dict[type, str | None] = {}  # layer type -> why its closed form does not describe it
    for f in frames:
        number = numbering[id(f.module)] = numbering.get(id(f.module), -1) + 1
        form = expected_bw = None
        reparam = _reparametrized(f.module)
        try:
            form, why = evaluate(f.module, f.args, f.kwargs, f.outputs, understood) if not f.failed else (None, None)
            if why is not None and not (reparam and form is not None):
                what = f"{'closed form' if form is None else 'parameter count'} of {type(f.module).__name__}"
                unchecked.setdefault((what, why), []).append(f.name or "(model)")
            if backward:
                expected_bw = evaluate_backward(f.module, form, f.grad_input)
                if expected_bw is not None and not f.grad_output:
                    expected_bw = 0  # no gradient reached its outputs (they do not lead to the loss)
        except Exception as exc:  # noqa: BLE001 - a closed form that cannot apply is noted, not fatal
            notes.append(f"closed form of {f.name or '(model)'} ({type(f.module).__name__}) not "
                         f"checked: {first_line(exc)}")
        subtree = module_params.get(names.get(id(f.module), f.name), (0, 0))
        ops, bw_ops = (f.ops, f.bw_ops) if f.index else (_merged(f.ops, collection.outside.ops),
                                                       _merged(f.bw_ops, collection.outside.bw_ops))
        out.append(LayerRecord.make(
            index=f.index, name=f.name, type=type(f.module).__name__, depth=f.depth, parent=f.parent, call=number,
            is_leaf=not has_children[f.index], input_shapes=f.input_shapes,
            input_dtypes=tuple(map(_dtype_name, f.input_dtypes)), output_shapes=f.outputs,
            output_bytes=f.output_bytes, input_bytes=f.input_bytes, module_params=subtree[0], param_bytes=subtree[1],
            config=_config(f.module), expected_macs=None if form is None else form.macs,
            expected_params=None if form is None or reparam else form.params,
            expected_backward_macs=None if reparam else expected_bw, ops=_stats(ops), backward_ops=_stats(bw_ops),
            failed=f.failed, own=own[f.index], inclusive=inclusive[f.index]))
    notes += [_unchecked_note(what, why, calls) for (what, why), calls in unchecked.items()]
    return tuple(out), tuple(uncalled), tuple(notes)


def _unchecked_note(what: str, why: str, calls: list[str]) -> str:
    """One line per layer type and reason: the closed form (or its parameter count) left unchecked."""
    shown = ", ".join(dict.fromkeys(calls[:3])) + (", ..." if len(calls) > 3 else "")
    return f"{what} not checked on {len(calls)} call(s) ({shown}): {why}"


def report(tree: ModelTree, run: Run, collection: Collection, dtype: torch.dtype | None,
           training: Training | None = None, timing: Timing | None = None, times: Any = None) -> Report:
    """The finished report of a model that ran (``times``: ``timing.CallTimes`` of the timed passes)."""
    parts = {"": True, "forward": True, "training": training is not None, "timing": timing is not None}
    layers, uncalled, notes = records(tree, collection, dtype, parts.__getitem__, times)
    totals = param_totals(tree, dtype)
    every = (*collection.frames, collection.outside)
    parents = {f.parent for f in collection.frames} - {None}
    total_macs = sum(f.macs for f in every)
    moe = experts.summary(experts.measure(tree, collection.frames, sizer(dtype)), totals.params, total_macs)
    return Report(run=replace(run, notes=run.notes + notes), total_params=totals.params,
                  trainable_params=totals.trainable, buffer_elements=totals.buffer_elements,
                  param_bytes=totals.param_bytes, buffer_bytes=totals.buffer_bytes,
                  total_macs=total_macs, elementwise_flops=sum(f.flops for f in every),
                  peak_activation_bytes=collection.peak_bytes, uncounted_ops=dict(collection.uncounted),
                  formula_errors=dict(collection.formula_errors), timing=timing, training=training,
                  leaf_calls=len(collection.frames) - len(parents), layers=layers, uncalled=uncalled,
                  experts=moe)


def params_only(tree: ModelTree, run: Run) -> Report:
    """The report of a model that did not run: a record per module of the module tree with its
    parameters, and no call figure (None, never 0)."""
    totals = param_totals(tree)
    subtree = subtree_params(tree)
    own: dict[str, list[int]] = {}
    for pname, p, trainable in tree.params:
        entry = own.setdefault(pname.rpartition(".")[0], [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if trainable else 0
    index = {name: i for i, (name, _) in enumerate(tree.modules)}
    parents = [None if not name else index.get(name.rpartition(".")[0], 0) for name, _ in tree.modules]
    has_children = {p for p in parents if p is not None}
    inclusive: dict[str, list[int]] = {}
    for name, _ in reversed(tree.modules):
        mine = inclusive.setdefault(name, list(own.get(name, [0, 0])))
        if name:
            parent = inclusive.setdefault(name.rpartition(".")[0], list(own.get(name.rpartition(".")[0], [0, 0])))
            parent[0] += mine[0]
            parent[1] += mine[1]
    layers = []
    for i, (name, module) in enumerate(tree.modules):
        mine, under = own.get(name, [0, 0]), inclusive[name]
        layers.append(LayerRecord.make(
            index=i, name=name, type=type(module).__name__, depth=name.count(".") + 1 if name else 0,
            parent=parents[i], call=0, is_leaf=i not in has_children, module_params=subtree.get(name, (0, 0))[0],
            param_bytes=subtree.get(name, (0, 0))[1], config=_config(module),
            own=_unmeasured({"params": mine[0], "trainable_params": mine[1]}),
            inclusive=_unmeasured({"params": under[0], "trainable_params": under[1]})))
    return Report(run=run, total_params=totals.params, trainable_params=totals.trainable,
                  buffer_elements=totals.buffer_elements, param_bytes=totals.param_bytes,
                  buffer_bytes=totals.buffer_bytes, total_macs=None, layers=tuple(layers))


def _unmeasured(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every other figure None (its part did not run)."""
    return fold([{**{f.name: None for f in all_figures() if f.measure is not None}, **values}])
