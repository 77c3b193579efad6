"""``inspect``: run a model once, count what it did, and return a Report."""
from __future__ import annotations

import inspect as pyinspect
from typing import Any, Literal

import torch
from torch import nn

from inspector import borrow, inputs as inputs_mod, timing as timing_mod
from inspector.build import build_records, static_records
from inspector.collect import Collector, OpCounter
from inspector.errors import InputError, InspectorError, LayerError, NotAModuleError, UnsupportedModelError
from inspector.report import Report
from inspector.tree import ModelTree

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def _unwrap(model: Any) -> tuple[nn.Module, list[str]]:
    """Check the model is something we can inspect; see through ``torch.compile``."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"{type(model).__name__} is a TorchScript module: hooks do not run inside it; "
            "inspect the eager nn.Module it was scripted or traced from")
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"inspect() needs a torch.nn.Module, got {type(model).__name__}")
    notes = []
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        notes.append("torch.compile'd module: counted on its original eager module (compiled kernels "
                     "do the same arithmetic, fused)")
        model = model._orig_mod
    is_container = isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
    if is_container and len(model) == 0:
        raise UnsupportedModelError(f"empty model: {type(model).__name__} has no layers")
    if type(model).forward is nn.Module.forward or isinstance(model, (nn.ModuleList, nn.ModuleDict)):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no forward(); inspect the module whose forward uses it")
    return model, notes


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InputError(f"dtype must be one of {', '.join(_DTYPES)} or a torch.dtype, got {dtype!r}")


def _resolve_device(tree: ModelTree, device: Any) -> torch.device:
    if device is None:
        return inputs_mod.model_device(tree)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a device: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available on this machine")
    if resolved.type == "cuda" and resolved.index is None:  # tensors say cuda:0, never bare cuda
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _layer_error(collector: Collector, exc: Exception, model: nn.Module, args: tuple) -> InspectorError:
    frame = collector.failing_frame()
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if frame is None or (frame.depth == 0 and isinstance(exc, TypeError) and "argument" in first_line):
        signature = pyinspect.signature(type(model).forward)
        return InputError(f"{type(model).__name__}.forward{signature} could not be called with "
                          f"{len(args)} positional input(s): {first_line}")
    shapes = ", ".join(f"{tuple(s)} {str(d).replace('torch.', '')}"
                       for s, d in zip(frame.input_shapes, frame.input_dtypes)) or "no tensors"
    config = frame.module.extra_repr()
    where = f"layer {frame.name or '(model)'!r} ({type(frame.module).__name__}" + (f": {config})" if config else ")")
    return LayerError(f"{where} failed on input {shapes}: {first_line}")


def inspect(model: nn.Module, inputs: Any = None, *, kwargs: dict[str, Any] | None = None,
            input_size: Any = None, device: Any = None, dtype: Any = None, mode: borrow.Mode = "eval",
            timing: bool = False, repeat: int = 10, warmup: int = 2,
            peak: tuple[float, float] | Literal["measure"] | None = "measure") -> Report:
    """Count what ``model`` does on one forward pass, layer by layer.

    ``inputs`` is a tensor, or a tuple of positional inputs (anything else is one positional input);
    ``kwargs`` are keyword inputs; ``input_size`` makes a random float input instead. With none of
    them an input is inferred where possible, else only parameters are counted.
    ``device`` (``"cpu"``, ``"cuda[:N]"``, ``"meta"``, a torch.device, or None for where the model is)
    and ``dtype`` apply to a substituted copy of the weights: the model itself is never moved.
    ``mode`` is ``"eval"`` (default; torchvision's published figures are eval-mode), ``"train"`` or
    ``"as_is"``; buffers (BatchNorm statistics) are never updated. ``timing=True`` adds per-layer
    forward times (``repeat`` timed runs after ``warmup``) and a roofline verdict per layer against
    ``peak``: (GFLOP/s, GB/s) given, ``"measure"`` (a large matmul and copy on the device, once per
    process), or None for no roofline.
    """
    model, notes = _unwrap(model)
    peak = timing_mod.check_peak(peak) if timing else None
    tree = ModelTree(model)
    target = _resolve_device(tree, device)
    cast = _resolve_dtype(dtype)
    args, kw, input_notes = inputs_mod.resolve(model, inputs, kwargs, input_size)
    notes += input_notes
    if args is None:
        return static_records(tree, notes, str(target), str(cast or "model's own").replace("torch.", ""), mode)
    (args, kw), move_notes = inputs_mod.move((args, kw), target, cast)
    notes += move_notes
    state = borrow.substitute_state(tree, target, cast)
    collector = Collector(tree)
    counter = OpCounter(collector.stack)
    with borrow.lent(tree, mode, state), collector.hooks(), torch.no_grad():
        try:
            with counter:
                borrow.call(model, state, args, kw)
        except InspectorError:
            raise
        except Exception as exc:
            raise _layer_error(collector, exc, model, args) from exc
    report_timing = None
    if timing:
        report_timing = timing_mod.time_layers(tree, state, args, kw, collector.frames, mode, repeat, warmup,
                                               target)
        report_timing = timing_mod.with_peak(report_timing, peak, target, cast)
    return build_records(tree, collector.frames, counter, notes, args, kw, target, cast, mode, report_timing)
