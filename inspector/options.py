"""Every argument of ``inspect`` checked before anything runs, into one frozen description."""
from __future__ import annotations

import inspect as pyinspect
import math
from dataclasses import dataclass
from typing import Any

import torch

from inspector.borrow import MODES
from inspector.conventions import Convention, convention
from inspector.errors import InputError
from inspector.op_formulas import formula_table
from inspector.optimizers import check_optimizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda", "meta")
COUNT_ON = ("auto", "meta", "device")


@dataclass(frozen=True)
class Options:
    """``inspect``'s arguments, validated and resolved."""

    device: torch.device | None       # None: where the model is
    dtype: torch.dtype | None
    mode: str
    timing: bool
    repeat: int
    warmup: int
    peak: tuple[float, float] | str | None
    convention: Convention
    table: dict
    backward: bool = False
    loss_fn: Any = None
    optimizer: Any = None
    autocast: torch.dtype | None = None
    name: str | None = None
    count_on: str = "auto"  # where the forward is counted: "auto", "meta" or "device"
    generate: int | None = None  # decode steps after a prefill (inspector.generation); None: a plain forward


def check_dtype(dtype: Any, what: str = "dtype") -> torch.dtype | None:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise InputError(f"{what} must be a floating dtype ({', '.join(DTYPES)}), got {dtype}: the weights "
                             "are cast to it; integer inputs (token ids) keep their own dtype")
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"{what} must be one of {', '.join(DTYPES)} or a floating torch.dtype, got {dtype!r}")


def check_device(device: Any) -> torch.device | None:
    """A torch.device for cpu, cuda[:N] or meta; anything else (including a CUDA device on a machine
    without CUDA) is refused here, before the model runs."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a device ({exc}); use 'cpu', 'cuda', 'cuda:N' or 'meta'") from None
    if resolved.type not in DEVICE_TYPES:
        raise InputError(f"device {device!r}: inspector runs on {', '.join(DEVICE_TYPES)}, not {resolved.type}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but CUDA is not available on this machine; "
                             "use device='cpu' or 'meta'")
        if resolved.index is None:  # tensors say cuda:0, never bare cuda
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def _count(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{name} must be an int >= {least}, got {value!r}")
    return value


#: Named peaks: "auto" (the datasheet's where the device is known, else measured), "measure", "datasheet".
PEAK_NAMES = ("auto", "measure", "datasheet")


def check_peak(peak: Any) -> tuple[float, float] | str | None:
    """(GFLOP/s, GB/s) given, a name of ``PEAK_NAMES``, or None."""
    if peak is None or (isinstance(peak, str) and peak in PEAK_NAMES):
        return peak
    wanted = f"(GFLOP/s, GB/s), one of {', '.join(map(repr, PEAK_NAMES))} or None"
    if isinstance(peak, (str, bytes)):
        raise InputError(f"peak must be {wanted}, got {peak!r}")
    try:
        gflops, gbytes = (float(v) for v in peak)
    except (TypeError, ValueError):
        raise InputError(f"peak must be {wanted}, got {peak!r}") from None
    if not (math.isfinite(gflops) and math.isfinite(gbytes) and gflops > 0 and gbytes > 0):
        raise InputError(f"peak figures must be finite and positive, got {peak!r}")
    return gflops, gbytes


def validate(*, device: Any, dtype: Any, mode: Any, timing: Any, repeat: Any, warmup: Any, peak: Any, flops: Any,
             formulas: Any, backward: Any = False, loss_fn: Any = None, optimizer: Any = None, autocast: Any = None,
             name: Any = None, count_on: Any = "auto", generate: Any = None) -> Options:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if not isinstance(timing, bool):
        raise InputError(f"timing must be True or False, got {timing!r}")
    if not isinstance(backward, bool):
        raise InputError(f"backward must be True or False, got {backward!r}")
    if not isinstance(flops, str):
        raise InputError(f"flops must be a convention name ('matmul' or 'all'), got {flops!r}")
    if formulas is not None and not isinstance(formulas, dict):
        raise InputError(f"formulas must be a dict op -> formula, got {type(formulas).__name__}")
    if count_on not in COUNT_ON:
        raise InputError(f"count_on must be one of {', '.join(map(repr, COUNT_ON))}, got {count_on!r}")
    if name is not None and not isinstance(name, str):
        raise InputError(f"name must be a string, got {name!r}")
    if not backward and (loss_fn is not None or optimizer is not None or autocast is not None):
        raise InputError("loss_fn, optimizer and autocast apply to a training step: pass backward=True "
                         "(--backward)")
    if loss_fn is not None:
        check_loss(loss_fn)
    if optimizer is not None:
        check_optimizer(optimizer)
    steps = None if generate is None else _count(generate, "generate", 0)
    if steps is not None and (backward or timing):
        raise InputError("generate= counts serving (a prefill and decode steps); a training step (backward) or "
                         "per-layer timing is a separate inspect() call")
    resolved = check_device(device)
    return Options(device=resolved, dtype=check_dtype(dtype), mode=mode, timing=timing,
                   repeat=_count(repeat, "repeat", 1), warmup=_count(warmup, "warmup", 0),
                   peak=check_peak(peak) if timing or steps is not None else None, convention=convention(flops),
                   table=formula_table(formulas), backward=backward, loss_fn=loss_fn, optimizer=optimizer,
                   autocast=check_autocast(autocast), name=name, count_on=count_on, generate=steps)


#: What autocast can run matmuls in: lower precisions (autocast to float32 changes nothing).
AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def check_autocast(autocast: Any) -> torch.dtype | None:
    dtype = check_dtype(autocast, "autocast")
    if dtype is not None and dtype not in AUTOCAST_DTYPES.values():
        raise InputError(f"autocast must be {' or '.join(AUTOCAST_DTYPES)} (it runs matmuls in a lower precision), got "
                         f"{str(dtype).replace('torch.', '')}: drop autocast, or pass dtype=... to run the weights "
                         "in another dtype")
    return dtype


def check_loss(loss_fn: Any) -> None:
    """A callable taking the model's output alone (a loss that needs targets, such as
    ``nn.CrossEntropyLoss()``, is refused here, with the lambda that fits)."""
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable (output -> scalar), got {loss_fn!r}")
    try:  # a module's own __call__ takes anything: its forward says what it needs
        signature = pyinspect.signature(loss_fn.forward if isinstance(loss_fn, torch.nn.Module) else loss_fn)
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return
    try:
        signature.bind(object())
    except TypeError:
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise InputError(f"loss_fn {name}{signature} cannot take the model's output alone: wrap a loss that needs "
                         "targets, e.g. loss_fn=lambda out: F.cross_entropy(out, target)") from None
