"""Turning collected frames into frozen records: parameter attribution, inclusive sums, closed forms."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from inspector.closed_forms import evaluate
from inspector.collect import Frame, OpCounter
from inspector.records import LayerRecord, OpStat
from inspector.report import Report, Timing
from inspector.tree import ModelTree


def _sizer(dtype: torch.dtype | None) -> Callable[[torch.Tensor], int]:
    """Bytes of a parameter as the pass holds it: floating ones in ``dtype`` when one is given."""
    cast_size = None if dtype is None else torch.empty((), dtype=dtype).element_size()

    def nbytes(p: torch.Tensor) -> int:
        return p.numel() * (cast_size if cast_size is not None and p.is_floating_point() else p.element_size())
    return nbytes


def subtree_params(tree: ModelTree, dtype: torch.dtype | None = None) -> dict[str, tuple[int, int]]:
    """(unique parameter count, bytes) of every module's subtree, by qualified name, in one pass;
    floating parameters are sized in ``dtype`` when one is given (the dtype the pass ran in)."""
    size = _sizer(dtype)
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


def _nearest_called(name: str, called: dict[str, int]) -> int | None:
    while True:
        if name in called:
            return called[name]
        if not name:
            return None
        name = name.rpartition(".")[0]


def attribute_params(tree: ModelTree, frames: list[Frame], subtree: dict[str, tuple[int, int]]
                     ) -> tuple[dict[int, list[int]], list[tuple[str, int]]]:
    """Each unique parameter goes to the first call of its module, or of its nearest called ancestor.

    Returns {frame index: [params, trainable]} and the top-most modules that never ran, with their
    parameter counts from ``subtree`` (MultiheadAttention's out_proj, an unused auxiliary head...).
    """
    called: dict[str, int] = {}
    for f in frames:
        called.setdefault(f.name, f.index)
    per_frame: dict[int, list[int]] = {}
    for pname, p, trainable in tree.params:  # a tied tensor comes once
        index = _nearest_called(pname.rpartition(".")[0], called)
        if index is None:
            continue
        entry = per_frame.setdefault(index, [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() if trainable else 0
    # Containers without a forward (ModuleList, ModuleDict) are transparent: their children count
    # as uncalled only when the container's own caller ran.
    live = set(called)
    uncalled = []
    for name, module in tree.modules:
        parent = name.rpartition(".")[0]
        if not name or name in called or parent not in live:
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            live.add(name)
        else:
            uncalled.append((name, subtree.get(name, (0, 0))[0]))
    return per_frame, uncalled


def _model_name(model: nn.Module) -> str:
    from models import zoo

    return zoo.built_as(model) or type(model).__name__


def _param_totals(tree: ModelTree, dtype: torch.dtype | None = None) -> tuple[int, int, int, int, int]:
    """Parameters, trainable ones, buffer elements, parameter bytes (in ``dtype`` when given) and
    buffer bytes."""
    params = tree.params
    buffers = [b for _, b in tree.buffers]
    size = _sizer(dtype)
    return (sum(p.numel() for _, p, _ in params), sum(p.numel() for _, p, t in params if t),
            sum(b.numel() for b in buffers), sum(size(p) for _, p, _ in params),
            sum(b.numel() * b.element_size() for b in buffers))


def build_records(tree: ModelTree, frames: list[Frame], counter: OpCounter, notes: list[str], args: tuple,
                  kwargs: dict, device: torch.device, dtype: torch.dtype | None, mode: str,
                  timing: Timing | None) -> Report:
    if frames and (counter.outside.macs or counter.outside.ops):
        root = frames[0]
        root.macs += counter.outside.macs
        for op, (calls, macs) in counter.outside.ops.items():
            stat = root.ops.setdefault(op, [0, 0])
            stat[0] += calls
            stat[1] += macs
    model = tree.model
    module_params = subtree_params(tree, dtype)
    per_frame, uncalled = attribute_params(tree, frames, module_params)
    inclusive_macs = [f.macs for f in frames]
    inclusive_params = [per_frame.get(f.index, [0])[0] for f in frames]
    has_children = [False] * len(frames)
    for f in reversed(frames):
        if f.parent is not None:
            inclusive_macs[f.parent] += inclusive_macs[f.index]
            inclusive_params[f.parent] += inclusive_params[f.index]
            has_children[f.parent] = True
    records = []
    for f in frames:
        form = evaluate(f.module, f.args, f.kwargs, f.outputs)
        params, trainable = per_frame.get(f.index, [0, 0])
        records.append(LayerRecord.make(
            index=f.index, name=f.name, type=type(f.module).__name__, depth=f.depth, parent=f.parent,
            call=f.call, is_leaf=not has_children[f.index], input_shapes=f.input_shapes,
            output_shapes=f.outputs, output_bytes=f.output_bytes, params=params, trainable_params=trainable,
            inclusive_params=inclusive_params[f.index], macs=f.macs, inclusive_macs=inclusive_macs[f.index],
            expected_macs=None if form is None else form.macs,
            expected_params=None if form is None else form.params, module_params=module_params.get(f.name, (0, 0))[0],
            ops=tuple(OpStat(op, c, m) for op, (c, m) in f.ops.items()),
            input_bytes=f.input_bytes, param_bytes=module_params.get(f.name, (0, 0))[1],
            time_ms=None if f.time_s is None else f.time_s * 1e3,
        ))
    records = _with_self_times(records)
    if timing is not None:
        timing = replace(timing, layer_sum_ms=sum(r.self_time_ms or 0.0 for r in records))
    total, trainable, buf, pbytes, bbytes = _param_totals(tree, dtype)
    leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    eff_dtype = dtype or next((p.dtype for _, p, _ in tree.params), torch.float32)
    return Report(
        model=_model_name(model), layers=tuple(records), total_params=total, trainable_params=trainable,
        buffer_elements=buf, param_bytes=pbytes, buffer_bytes=bbytes,
        total_macs=sum(r.macs for r in records), input_shapes=tuple(tuple(t.shape) for t in leaves),
        device=str(device), dtype=str(eff_dtype).replace("torch.", ""), mode=mode,
        peak_activation_bytes=counter.live.peak, uncounted_ops=dict(counter.uncounted),
        uncalled=tuple(uncalled), notes=tuple(notes), timing=timing,
    )


def _with_self_times(records: list[LayerRecord]) -> list[LayerRecord]:
    """Self time = a call's time minus its children's (never below zero)."""
    if not records or records[0].time_ms is None:
        return records
    children_time = [0.0] * len(records)
    for r in records:
        if r.parent is not None and r.time_ms is not None:
            children_time[r.parent] += r.time_ms
    return [replace(r, self_time_ms=max(0.0, (r.time_ms or 0.0) - children_time[r.index])) for r in records]


def static_records(tree: ModelTree, notes: list[str], device: str, dtype: str, mode: str) -> Report:
    """A parameters-only report, for a model given without inputs that could not be inferred."""
    total, trainable, buf, pbytes, bbytes = _param_totals(tree)
    return Report(model=_model_name(tree.model), layers=(), total_params=total, trainable_params=trainable,
                  buffer_elements=buf, param_bytes=pbytes, buffer_bytes=bbytes, total_macs=None,
                  input_shapes=(), device=device, dtype=dtype, mode=mode, notes=tuple(notes))


__all__ = ["attribute_params", "build_records", "static_records"]
