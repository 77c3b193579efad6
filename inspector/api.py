"""``inspect``: check the arguments, borrow the model, count one pass, and return a Report.

The data flows one way: options -> inputs -> collect (hooks + dispatch mode) -> [backward step]
-> [timing] -> build. Each step returns data; none writes into another's.
"""
from __future__ import annotations

import functools
import gc
import inspect as pyinspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from inspector import adapters, build
from inspector import inputs as inputs_mod
from inspector import lazy as lazy_mod
from inspector.borrow import Borrow, call, counted_call, settle, substitute_state
from inspector.collect import Collection, Collector, Frame, OpCounter, tensor_leaves
from inspector.culprit import raising_module
from inspector.errors import (MODEL_FAILURES, InputError, InspectorError, MetaDeviceError, NotAModuleError,
                              UnsupportedModelError, first_line)
from inspector.failures import failure
from inspector.meta_values import Known
from inspector.options import Options, validate
from inspector.report import Report, Run
from inspector.tree import ModelTree

P = ParamSpec("P")
R = TypeVar("R")


#: Wrappers counted through the module they wrap: replicas do that module's work on their share of
#: the batch, and their own forward refuses substituted weights (``functional_call``).
_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def _unwrap(model: Any) -> tuple[nn.Module, list[str]]:
    """Check the model is something we can inspect; see through ``torch.compile`` and DataParallel."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"{type(model).__name__} is a TorchScript module: hooks do not run inside it; "
            "inspect the eager nn.Module it was scripted or traced from")
    if isinstance(model, type) and issubclass(model, nn.Module):
        raise NotAModuleError(f"inspect() got the class {model.__name__}, not a model: build one first, "
                              f"e.g. inspect({model.__name__}(...), x)")
    if isinstance(model, Mapping) and model and all(isinstance(v, torch.Tensor) for v in model.values()):
        raise NotAModuleError("inspect() got a state_dict (names -> tensors), not a model: build the model and "
                              "load it with model.load_state_dict(state_dict)")
    if (pyinspect.isroutine(model) or isinstance(model, functools.partial)) and not isinstance(model, nn.Module):
        name = getattr(model, "__name__", None) or getattr(getattr(model, "func", None), "__name__", "factory")
        raise NotAModuleError(f"inspect() got the function {name}, not a torch.nn.Module: call it to build the model "
                              f"first, e.g. inspect({name}(), x)")
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"inspect() needs a torch.nn.Module, got {type(model).__name__}")
    notes = []
    if type(model).__name__ == "OptimizedModule" and isinstance(vars(model).get("_modules", {}).get("_orig_mod"),
                                                               nn.Module):
        notes.append("torch.compile'd module: counted on its original eager module (compiled kernels "
                     "do the same arithmetic, fused)")
        model = model._orig_mod
    while isinstance(model, _WRAPPERS):
        notes.append(f"{type(model).__name__}: counted on the module it wraps (each replica does this work on its "
                     "share of the batch)")
        model = model.module
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and len(model) == 0:
        raise UnsupportedModelError(f"empty model: {type(model).__name__} has no layers")
    if type(model).forward is nn.Module.forward or isinstance(model, (nn.ModuleList, nn.ModuleDict)):
        raise UnsupportedModelError(f"{type(model).__name__} has no forward(); inspect the module whose forward "
                                    "uses it")
    return model, notes


def _check_lendable(tree: ModelTree) -> None:
    """Refuse, in one line, tensors whose memory the borrow cannot reach to give back: tensor
    subclasses that hold no storage of their own (DTensor: FSDP2's fully_shard, tensor parallelism)."""
    named = [*tree.parameters, *tree.buffers]
    for name, t in named:
        if type(t) in (torch.Tensor, nn.Parameter) or t.is_meta or isinstance(t, nn.parameter.UninitializedTensorMixin):
            continue
        if is_traceable_wrapper_subclass(t) or not torch._C._has_storage(t):
            raise UnsupportedModelError(
                f"{name} is a {type(t).__name__}, a tensor subclass holding no storage of its own (FSDP2 fully_shard, "
                "tensor parallelism): inspector cannot lend it and give it back; inspect the model before sharding "
                "it (built on device='meta' if it is large)")


def _materialised(tree: ModelTree, args: tuple, kw: dict, target: torch.device, dtype: torch.dtype | None,
                  notes: list[str]) -> ModelTree:
    """Lazy modules materialised on a copy of the model, on the run's device and dtype, by one forward."""
    lazy = lazy_mod.uninitialized(tree)
    if not lazy:
        return tree
    notes.append(f"{len(lazy)} lazy module(s) ({type(lazy[0]).__name__}...) materialised on a copy of the "
                 "model: the model's own stay uninitialized")
    copied = lazy_mod.copy_model(tree.model)
    lazy_mod.place(copied, target, dtype)
    names = ModelTree(copied).first_names
    try:
        with torch.no_grad():
            copied(*args, **kw)
    except MODEL_FAILURES as exc:
        raise failure(exc, target, names=names, phase="materialising its lazy modules") from exc
    return ModelTree(copied)


def _check_call(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """The inputs fit forward's signature (so that a TypeError inside forward is the model's, not ours)."""
    try:
        signature = pyinspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        given = f"{len(args)} positional input(s)" + (f" and keywords {sorted(kwargs)}" if kwargs else "")
        list_hint = " (a list is one input: pass a tuple for several)" if len(args) == 1 and isinstance(args[0], list) \
            else ""
        raise InputError(f"{type(model).__name__}.forward{signature} cannot take {given}: {exc}{list_hint}") from None


def _collector_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """Python's cyclic garbage collector paused while ``fn`` runs, as ``timeit`` does: a pass makes a
    few thousand lasting objects (a frame per module call) while the model's forward allocates, and
    every collection the allocations trigger would scan them all again. Reference counting frees
    everything as usual meanwhile; the next collection after the call sees what the caller kept of
    the report, as it would for any object the caller keeps. A caller's disabled collector stays so.

    On the way out the model is given back even where an interruption kept the borrow's own exit
    from running (``borrow.settle``)."""
    @functools.wraps(fn)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            try:
                settle()
            finally:
                if enabled:
                    gc.enable()
    return paused


@_collector_paused
def inspect(model: nn.Module, inputs: Any = None, *, kwargs: Mapping[str, Any] | None = None, input_size: Any = None,
            device: Any = None, dtype: Any = None, mode: str | None = None, flops: str = "matmul",
            formulas: dict[Any, Any] | None = None, timing: bool = False, repeat: int = 10, warmup: int = 2,
            peak: Any = "auto", backward: bool = False, loss_fn: Any = None, optimizer: Any = None,
            autocast: Any = None, name: str | None = None, count_on: str = "auto", generate: int | None = None
            ) -> Report:
    """Count what ``model`` does on one pass, layer by layer (see the README for every argument).

    ``inputs``: a tensor, a tuple of positional inputs, or a mapping of keyword inputs; ``kwargs``
    more keyword inputs; ``input_size`` a random input instead (``((1, 128), "int64")`` for token
    ids). With none, an input is inferred where the model says what it takes, else parameters only.
    ``device``/``dtype`` apply to substituted copies of the weights: the model is never moved.
    ``mode``: "eval" (default; "train" with ``backward``) or "as_is". ``flops``: "matmul" (2 x MACs)
    or "all" (plus elementwise work). ``formulas``: per-call MAC formulas for ops, by name.
    ``timing``: per-layer times from the profiler (``repeat`` after ``warmup``), the plain forward,
    MFU and a roofline against ``peak``. ``count_on``: "auto" (meta copies for a forward on a GPU,
    the device elsewhere), "meta" or "device".
    ``backward``: also a training step (``loss_fn``, ``optimizer``, ``autocast``) with backward
    MACs and its memory. ``name``: the report's model name. ``generate``: N decode steps after a
    prefill on the inputs, with the model's KV cache (``report.generation``; see inspector.generation).
    """
    if input_size is not None:
        inputs_mod.parse_size(input_size)  # checked before anything is built or run
    opts = validate(device=device, dtype=dtype, mode=mode or ("train" if backward else "eval"), timing=timing,
                    repeat=repeat, warmup=warmup, peak=peak, flops=flops, formulas=formulas, backward=backward,
                    loss_fn=loss_fn, optimizer=optimizer, autocast=autocast, name=name, count_on=count_on,
                    generate=generate)
    model, notes = _unwrap(model)
    tree = ModelTree(model)
    _check_lendable(tree)
    if tree.scripted:
        notes.append(f"TorchScript submodule(s) {', '.join(tree.scripted[:3])}: each counted as one call (its "
                     "inside runs in the TorchScript interpreter, out of reach of module hooks)")
    notes += filter(None, [adapters.note(tree)])
    model_at, split = inputs_mod.model_device(tree, opts.device)
    if split is not None and (opts.device is None or opts.device.type == "meta"):
        notes.append(split)
    target = opts.device or model_at
    if opts.timing and target.type == "meta":
        if model_at.type == "meta":
            raise InputError("timing needs real arithmetic, and the model's weights are on the meta device (they hold "
                             "no values): give it weights first (model.to_empty(device='cpu'), then load_state_dict), "
                             "or inspect without timing to count on meta")
        raise InputError("timing needs real arithmetic: use device='cpu' or 'cuda' (--device cpu), not 'meta'")
    if opts.timing:
        from inspector.timing import check as check_timing

        check_timing(opts.peak, target, opts.dtype)
    ins = inputs_mod.resolve(tree, inputs, kwargs, input_size, target, opts.dtype)
    notes += ins.notes
    dtype_name = str(opts.dtype or next((p.dtype for p in tree.param_tensors if p.is_floating_point()),
                                        torch.float32)).replace("torch.", "")
    run = Run(model=opts.name or type(model).__name__, device=str(target), dtype=dtype_name, mode=opts.mode,
              flops=opts.convention.name, notes=tuple(notes), backward=opts.backward)
    if ins.args is None:
        lazy = lazy_mod.uninitialized(tree)
        if lazy:
            raise InputError(f"{type(model).__name__} has lazy modules ({type(lazy[0]).__name__}...) whose parameters "
                             "are made by their first forward: give an input (inputs=... or input_size=...) to count "
                             "them")
        return build.params_only(tree, run)
    given = tensor_leaves((ins.args, ins.kwargs))
    if opts.device is None and any(t.device.type == "meta" for t in given) and model_at.type != "meta":
        raise InputError(f"the inputs are on meta but the model is on {model_at}: pass device='meta' to count "
                         "without computing, or give inputs on the model's device")
    moved: set[str] = set()
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # values of inputs moved onto meta
    args, kw = inputs_mod.move((ins.args, ins.kwargs), target, opts.dtype, moved, kept)
    if moved and not ins.invented:
        notes += [f"inputs moved from {d} to {target}" for d in sorted(moved)]
    _check_call(model, args, kw)
    tree = _materialised(tree, args, kw, target, opts.dtype, notes)
    leaves = tensor_leaves((args, kw))
    run = replace(run, input_shapes=tuple(tuple(t.shape) for t in leaves),
                  input_dtypes=tuple(str(t.dtype).replace("torch.", "") for t in leaves), notes=tuple(notes))
    try:
        return _inspect(tree, run, args, kw, target, opts, kept)
    except InspectorError as exc:
        if not ins.invented or isinstance(exc, InputError):
            raise
        note = (f"the invented input failed, so only parameters are counted: {exc}; pass inputs=... or "
                "input_size=(...) (--input-size) to count MACs")
        return build.params_only(tree, replace(run, input_shapes=(), input_dtypes=(), notes=(*notes, note)))


def _inspect(tree: ModelTree, run: Run, args: tuple, kw: dict, target: torch.device, opts: Options,
             kept: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> Report:
    """Count (and train, and time) inside the borrow, and build the report there: what leaves the
    borrow is plain data. A forward on a GPU is counted on meta copies (see ``_count_on_meta``); on
    meta, a count that made up routing is counted again with another routing."""
    training = times = timing = None
    with Borrow(tree, opts.mode) as borrow, _usual_autograd(tree, opts.backward) as left:
        if left:  # the user's inference tensors copied, as tensors outside inference mode can be written
            args, kw, kept = _outside_inference(args, kw, kept)
        if opts.generate is not None:
            from inspector.generation import generate as generation

            return generation(tree, run, substitute_state(tree, target, opts.dtype), args, kw, target, opts,
                              borrow.guard if borrow.owns_data else None,
                              lambda col, ctr, exc, phase: failure(exc, target, collector=col, counter=ctr,
                                                                   phase=phase), kept)
        collection = None
        if _count_on_meta(target, opts):
            meta = torch.device("meta")
            meta_kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            try:
                meta_args, meta_kw = inputs_mod.move((args, kw), meta, opts.dtype, set(), meta_kept)
                collection, training, run = _counted(tree, run, meta_args, meta_kw, meta, opts, borrow, meta_kept)
                run = replace(run, notes=(*run.notes, f"counted on meta copies of the weights and inputs (the counts "
                                                      f"do not depend on the device); timed on {target}"))
            except InspectorError as exc:
                borrow.reset()  # the meta pass may have written attributes: the device pass starts afresh
                run = replace(run, notes=(*run.notes, f"counted on {target}: the pass on meta copies failed "
                                                      f"({first_line(exc)})"))
        if collection is None:
            collection, training, run = _counted(tree, run, args, kw, target, opts, borrow, kept)
        if opts.timing:
            borrow.keep_values([*tree.param_tensors, *tree.buffer_tensors])  # timed passes: no copy-on-write
            times, timing = _timed(tree, args, kw, collection.frames, target, opts)
        return build.report(tree, run, collection, opts.dtype, training, timing, times)


def _outside_inference(args: tuple, kw: dict, kept: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple:
    """The inputs with inference tensors copied (usable outside ``torch.inference_mode()``), and the
    known values of meta inputs following their copies."""
    copies: dict[int, torch.Tensor] = {}

    def copied(t: torch.Tensor) -> torch.Tensor:
        out = inputs_mod.outside_inference(t)
        copies[id(t)] = out
        return out

    args, kw = inputs_mod.map_tensors((args, kw), copied)
    return args, kw, [(copies.get(id(meta), meta), value) for meta, value in kept]


def _count_on_meta(target: torch.device, opts: Options) -> bool:
    """Whether the forward is counted on meta copies: asked for (``count_on="meta"``), or by default on
    a GPU, where a Python dispatch per op costs several times the kernel it launches. The counts are
    the same on every device; a forward that needs values (data-dependent shapes) or fails on meta is
    counted on the device instead. A training step is always counted where it runs."""
    if opts.backward or target.type == "meta":
        return False
    return opts.count_on == "meta" or (opts.count_on == "auto" and target.type == "cuda")


def _collector(tree: ModelTree, opts: Options, device: torch.device, borrow: Borrow,
               known: Known | None = None) -> tuple[Collector, OpCounter]:
    collector = Collector(tree, grads=opts.backward)
    counter = OpCounter(collector.stack, opts.table, opts.convention, guard=borrow.guard if borrow.owns_data else None,
                        meta=device.type == "meta", live=collector.live, known=known)
    if device.type == "meta" and not opts.backward:
        collector.fuse_rnns(counter)
    return collector, counter


def _counted(tree: ModelTree, run: Run, args: tuple, kw: dict, device: torch.device, opts: Options, borrow: Borrow,
             kept: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Collection, Any, Run]:
    """The counted pass on ``device`` (the inputs already there), with the notes of what meta assumed:
    routing made up (and checked by a second count), assertions on values from the weights."""
    collection, training, known = _count(tree, args, kw, device, opts, borrow, kept, "balanced")
    if known is not None and known.made_up and opts.timing:
        raise MetaDeviceError(f"{known.decisions} routing choice(s) made up on meta, and the timed passes need the "
                              "calls that really run")
    if known is not None and known.made_up:
        run = replace(run, notes=(*run.notes, _routing_checked(tree, args, kw, device, opts, borrow, kept,
                                                                collection, training, known.decisions)))
    if known is not None and known.assumed:
        run = replace(run, notes=(*run.notes, f"{known.assumed} assertion(s) on values computed from the weights "
                                  "(torch._check_tensor_all) taken to hold on meta: they raise or pass, they "
                                  "choose no path"))
    return collection, training, run


def _count(tree: ModelTree, args: tuple, kw: dict, device: torch.device, opts: Options, borrow: Borrow,
           kept: Any, routing: str) -> tuple[Collection, Any, Known | None]:
    """One counted pass on ``device`` (forward on copies of the weights there, or a training step):
    what it collected, the training figures, and the values it knew on meta."""
    known = None
    if device.type == "meta":
        known = Known(routing)
        for meta, value in kept:
            known.add(meta, value)
    collector, counter = _collector(tree, opts, device, borrow, known)
    if opts.backward:
        from inspector.training import train_step

        collection, training = train_step(
            tree, args, kw, collector, counter, opts, device,
            lambda exc, phase, frame: failure(exc, device, collector=collector, counter=counter, phase=phase,
                                              frame=frame))
        return collection, training, known
    state = substitute_state(tree, device, opts.dtype)
    return _forward(tree.model, state, args, kw, collector, counter, device), None, known


def _routing_checked(tree: ModelTree, args: tuple, kw: dict, device: torch.device, opts: Options, borrow: Borrow,
                     kept: Any, collection: Collection, training: Any, decisions: int) -> str:
    """The note of a count whose routing was made up, after counting again with every row routed to
    the same k candidates; a MetaDeviceError when the two totals differ (the count needs the values)."""
    def totals(c: Collection, t: Any) -> tuple[int, int | None]:
        return sum(f.macs for f in (*c.frames, c.outside)), None if t is None else t.total_backward_macs

    try:
        again, again_training, _ = _count(tree, args, kw, device, opts, borrow, kept, "skewed")
        other = totals(again, again_training)
    except InspectorError as exc:
        other = (f"an error: {exc}", None)  # type: ignore[assignment]
    balanced = totals(collection, training)
    if other != balanced:
        raise MetaDeviceError(
            f"the forward routes by values computed from the weights ({decisions} top-k/arg-max choice(s)), which "
            f"the meta device does not hold, and its count depends on the routing ({balanced[0]:,} MACs with the "
            f"choices spread evenly, {other[0] if isinstance(other[0], str) else format(other[0], ',')} with every "
            f"row on the same ones): inspect on device='cpu' (or cuda) instead")
    return (f"{decisions} routing choice(s) (top-k or arg-max of scores computed from the weights) made up on meta, "
            "every row meeting k candidates spread evenly: the total is the same with every row on the same k "
            "(counted again to check), so it holds for any routing; per-expert rows show the even one")


@contextmanager
def _usual_autograd(tree: ModelTree, backward: bool) -> Iterator[bool]:
    """Autograd as outside ``torch.inference_mode()``: there, composite ops reach the counter whole
    (``aten.conv2d``, ``aten.batch_norm``) instead of as the kernels they run. Says whether it left
    inference mode: always for a training step; for a forward, unless a model tensor is an inference
    tensor (written in place outside inference mode, it would fail)."""
    if not torch.is_inference_mode_enabled():
        yield False
        return
    if not backward and any(t.is_inference() for t in (*tree.param_tensors, *tree.buffer_tensors)):
        yield False
        return
    with torch.inference_mode(False):
        yield True


def _timed(tree: ModelTree, args: tuple, kw: dict, frames: tuple[Frame, ...], target: torch.device,
           opts: Options) -> tuple:
    """Per-call times of the timed passes (on copies of the weights) and the whole-model timing."""
    from inspector import timing as timing_mod

    timed_state = substitute_state(tree, target, opts.dtype, copies=True)
    names = tree.first_names

    def failed(module: nn.Module | None, exc: BaseException) -> InspectorError:
        frame = None
        if module is not None and raising_module(exc, names) is None:
            frame = next((f for f in frames if f.module is module), None) or \
                Frame(0, module, names.get(id(module), ""), 0, None)
        return failure(exc, target, names=names, phase="a timed pass", frame=frame, frames=frames)

    times, timing = timing_mod.time_calls(tree, lambda: call(tree.model, timed_state, args, kw),
                                          [f.module for f in frames],
                                          opts.repeat, opts.warmup, target, on_error=failed)
    gflops, gbytes, source = timing_mod.resolve_peak(opts.peak, target, opts.dtype)
    return times, replace(timing, peak_gflops=gflops, peak_gbytes_per_s=gbytes, peak_source=source)


def _forward(model: nn.Module, state: dict, args: tuple, kw: dict, collector: Collector, counter: OpCounter,
             target: torch.device) -> Collection:
    counted_call(model, state, args, kw, collector, counter,
                 lambda exc: failure(exc, target, collector=collector, counter=counter))
    return collector.collection(counter)
