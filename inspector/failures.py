"""A failure of the model's own code, said in one line: the layer that raised (read from the
exception's traceback: the innermost of the model's module calls it passed through, a hook of that
layer included), its config and input shapes, the phase, and a hint at the usual fix."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from inspector.collect import Collector, Frame, OpCounter, OpInfo
from inspector.culprit import raising_module
from inspector.errors import InspectorError, LayerError, MetaDeviceError, first_line, hinted
from inspector.op_formulas import Nested


def config(module: nn.Module) -> str:
    try:
        return module.extra_repr()
    except Exception:  # noqa: BLE001 - a broken extra_repr must not hide the real error
        return "?"


def message(exc: BaseException) -> str:
    """The first line of ``exc``; a ``SystemExit`` says it was one."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return first_line(exc)


def failure(exc: BaseException, device: torch.device, *, collector: Collector | None = None,
            counter: OpCounter | None = None, names: Mapping[int, str] | None = None, phase: str = "forward",
            frame: Frame | None = None, frames: tuple[Frame, ...] = ()) -> InspectorError:
    """One line naming the layer that failed (``frame``; else the call ``exc`` was raised in, found
    through ``collector``, or through ``names`` (id(module) -> name) and the calls of a counted pass
    ``frames`` for its shapes), its config and input shapes, with a hint; never raises."""
    try:
        if isinstance(exc, InspectorError):
            return exc
        hook = None
        if frame is None:
            known = collector.names if collector is not None else names
            found = raising_module(exc, known) if known is not None else None
            hook = found.hook if found is not None else None
            if collector is not None:
                frame = collector.failing_frame(exc)
            elif found is not None:
                frame = next((f for f in frames if f.module is found.module), None) or \
                    Frame(0, found.module, known.get(id(found.module), ""), 0, None)  # type: ignore[union-attr]
        text = message(exc)
        failed_op = counter.failed_op if counter is not None else None
        op = failed_op.name if failed_op is not None else None
        during = "" if phase == "forward" else f" during {phase}"
        if frame is None:
            where = "the model's own code (outside any submodule)"
        else:
            setting = config(frame.module)
            where = f"layer {frame.name or '(model)'!r} ({type(frame.module).__name__}" + \
                (f": {setting})" if setting else ")") + (f", in its hook {hook}," if hook else "")
        if device.type == "meta" and _data_dependent(failed_op, text):
            return MetaDeviceError(f"{where}{during}: {op or 'an op'} needs tensor values, which the meta device does "
                                   f"not hold (.item(), nonzero, bool(tensor) on a result): inspect on "
                                   f"device='cpu' (or cuda) instead")
        if frame is None and collector is None:
            line = f"the model failed{during}: {text}"
        elif frame is None:
            line = f"{where}{during} failed: {text}"
        else:
            shapes = ", ".join(f"{s if isinstance(s, Nested) else tuple(s)} {str(d).replace('torch.', '')}"
                               for s, d in zip(frame.input_shapes, frame.input_dtypes)) or "no tensors"
            line = f"{where}{during} failed on input {shapes}: {text}"
        return hinted(LayerError, line, text)
    except Exception:  # noqa: BLE001 - the error builder itself never raises
        return LayerError(f"the {phase} pass failed: {type(exc).__name__}")


def _data_dependent(op: OpInfo | None, text: str) -> bool:
    if op is not None and op.data_dependent:
        return True
    lowered = text.lower()
    return "meta" in lowered and any(w in lowered for w in ("item", "data-dependent", "data dependent", "nonzero",
                                                            "cannot copy out", "boolean value", "not implemented"))
