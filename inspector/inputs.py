"""Turning what the user handed over into positional and keyword inputs on the right device.

Inputs as users hold them: a tensor, a tuple of positional inputs, a mapping of keyword inputs
(what a tokenizer returns), or nothing. With nothing, an input is inferred only where the model
says what it takes: its own ``example_input()``, torchvision's published conventions, or a first
layer whose input is fixed by its configuration (``Linear``, or a convolution at 224 pixels). An
inferred input is marked as such, and if it fails the report counts parameters only and says why.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inspector.errors import InputError
from inspector.tree import ModelTree, attribute
from inspector.units import size

_INT_DTYPES = {"int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32}
_FLOAT_DTYPES = {"float32": torch.float32, "float": torch.float32, "float16": torch.float16,
                 "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_CONV_SIDES = {nn.Conv1d: (224,), nn.Conv2d: (224, 224), nn.Conv3d: (16, 112, 112)}
#: Layers whose cost depends on a length only the caller knows: no input is invented for them.
_SEQUENCE_FIRST = (nn.RNNBase, nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                   nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)


@dataclass(frozen=True)
class Inputs:
    """Positional and keyword inputs, where they came from, and whether the tool invented them."""

    args: tuple[Any, ...] | None     # None: nothing to run (parameters only)
    kwargs: dict[str, Any]
    notes: tuple[str, ...] = ()
    invented: bool = False


def parse_size(input_size: Any) -> tuple[tuple[int, ...], torch.dtype | None]:
    """``input_size`` as (shape, dtype): ``(1, 3, 224, 224)``, or ``((1, 128), "int64")`` for token ids."""
    dtype = None
    if (isinstance(input_size, tuple) and len(input_size) == 2 and isinstance(input_size[0], (tuple, list))
            and isinstance(input_size[1], (str, torch.dtype))):
        input_size, dtype = input_size
        dtype = _dtype(dtype)
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        raise InputError(f"input_size={input_size} is one number: give the whole input shape, batch first: "
                         f"(1, {input_size}) for {input_size} features, (1, 3, {input_size}, {input_size}) for an "
                         f"image, or ((1, {input_size}), 'int64') for {input_size} token ids")
    if not isinstance(input_size, Sequence) or isinstance(input_size, str) or not input_size:
        raise InputError(f"input_size must be a non-empty sequence of positive ints (optionally with a dtype: "
                         f"((1, 128), 'int64')), got {input_size!r}")
    for i, dim in enumerate(input_size):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise InputError(f"input_size[{i}] = {dim!r} in {tuple(input_size)!r}: every dimension must be "
                             "a positive int")
    return tuple(input_size), dtype


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    found = _INT_DTYPES.get(str(dtype)) or _FLOAT_DTYPES.get(str(dtype))
    if found is None:
        raise InputError(f"input dtype {dtype!r} is not one of {', '.join([*_FLOAT_DTYPES, *_INT_DTYPES])}")
    return found


def takes_token_ids(model: nn.Module) -> bool:
    """Whether the model's first layer (in registration order) is an embedding: its input is token ids."""
    found = _first_layer(model.named_modules())
    return found is not None and isinstance(found[1], (nn.Embedding, nn.EmbeddingBag))


def random_input(shape: tuple[int, ...], dtype: torch.dtype | None, device: torch.device, model: nn.Module,
                 float_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Random floats, or token ids below the first embedding's vocabulary (for an integer ``dtype``, or
    no dtype and a model whose first layer is an embedding), made on ``device`` directly."""
    if dtype is None and takes_token_ids(model):
        dtype = torch.int64
    if dtype is not None and not dtype.is_floating_point:
        vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))), 2)
        # (model.modules(): only for token-id inputs, once)
        return torch.randint(0, vocab, shape, dtype=dtype, device=device)
    return torch.randn(shape, dtype=dtype or float_dtype, device=device)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new tensor on ``device`` (None: unknown, or no memory needed: meta)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """An input of ``shape`` is refused before it is allocated where it would not fit in memory."""
    needed = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    free = free_bytes(device)
    if free is not None and needed > free:
        raise InputError(f"input_size {shape} in {str(dtype).replace('torch.', '')} needs {size(needed)}, more than the "
                         f"{size(free)} free on {device}: give a smaller size, or device='meta' to count without "
                         "computing")


def _torchvision_size(model: nn.Module) -> tuple[int, ...] | None:
    """Input size of a torchvision model built elsewhere, from its class's published conventions."""
    module = type(model).__module__
    if not module.startswith("torchvision.models"):
        return None
    if ".detection" in module or ".optical_flow" in module:
        return None
    if ".video" in module:
        return (1, 3, 16, 112, 112) if ".resnet" in module else (1, 3, 16, 224, 224)
    side = attribute(model, "image_size") or (299 if type(model).__name__ == "Inception3" else 224)
    return (1, 3, int(side), int(side))


def _first_layer(modules: Iterable[tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    """The first layer in registration order that holds parameters or is a sequence layer."""
    for name, module in modules:
        if isinstance(module, _SEQUENCE_FIRST):
            return name, module
        if module._parameters and any(p is not None for p in module._parameters.values()):
            return name, module
    return None


def infer(tree: ModelTree, device: torch.device, dtype: torch.dtype | None) -> Inputs:
    """Example inputs for a model given without any, and a note saying where they came from."""
    model = tree.model
    example = attribute(model, "example_input")
    if callable(example):
        try:
            x = example()
        except Exception as exc:  # noqa: BLE001 - the model's own helper: its error, in one line
            raise InputError(f"{type(model).__name__}.example_input() raised {type(exc).__name__}: {exc}") from None
        args = x if isinstance(x, tuple) else (x,)
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        return Inputs(args, {}, (f"input {shapes} from {type(model).__name__}.example_input()",))
    size = _torchvision_size(model)
    if size is not None:
        return Inputs((torch.rand(size, device=device, dtype=dtype),), {},
                      (f"input {size} from torchvision's convention for {type(model).__name__}",), invented=True)
    first = _first_layer(tree.modules)
    if first is not None:
        name, layer = first
        label = f"{name or '(model)'} ({type(layer).__name__})"
        if isinstance(layer, _SEQUENCE_FIRST):
            return Inputs(None, {}, (f"no input given: the first layer {label} takes sequences whose length "
                                     "sets the cost; pass inputs=... (token ids, or (batch, length, features)); on the command line --seq-len or "
                                     "--input-size",))
        size = None
        if type(layer) in _CONV_SIDES:
            size = (1, layer.in_channels, *_CONV_SIDES[type(layer)])
        elif type(layer) is nn.Linear:
            size = (1, layer.in_features)
        if size is not None:
            return Inputs((torch.randn(size, device=device, dtype=dtype),), {},
                          (f"input {size} invented from the first layer {label}",), invented=True)
    return Inputs(None, {}, ("no input given and none could be inferred: parameters are counted, MACs are not; "
                             "pass inputs=... or input_size=(...) (--input-size)",))


def resolve(tree: ModelTree, inputs: Any, kwargs: Mapping[str, Any] | None, input_size: Any,
            device: torch.device, dtype: torch.dtype | None) -> Inputs:
    """The run's inputs. A plain tuple is several positional inputs; a mapping is keyword inputs;
    anything else (a tensor, a list of images, a PackedSequence) is one input."""
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InputError(f"kwargs must be a mapping of keyword inputs, got {type(kwargs).__name__}")
    kw = dict(kwargs or {})
    if any(not isinstance(k, str) for k in kw):
        raise InputError(f"kwargs keys must be argument names (str), got {[k for k in kw if not isinstance(k, str)]}")
    if inputs is not None and input_size is not None:
        raise InputError("give either inputs or input_size, not both")
    if input_size is not None:
        shape, in_dtype = parse_size(input_size)
        check_fits(shape, in_dtype or dtype or torch.get_default_dtype(), device)
        x = random_input(shape, in_dtype, device, tree.model, dtype)
        kind = "token ids" if not x.is_floating_point() else "random float input"
        why = " (the first layer is an embedding)" if in_dtype is None and not x.is_floating_point() else ""
        return Inputs((x,), kw, (f"{kind} of size {shape}{why}",))
    if isinstance(inputs, Mapping):
        if any(not isinstance(k, str) for k in inputs):
            raise InputError("a mapping passed as inputs holds keyword inputs: its keys must be argument names")
        overlap = set(inputs) & set(kw)
        if overlap:
            raise InputError(f"keyword inputs given twice (in inputs and kwargs): {sorted(overlap)}")
        return Inputs((), {**inputs, **kw})
    if inputs is not None:
        return Inputs(inputs if type(inputs) is tuple else (inputs,), kw)
    if kw:
        return Inputs((), kw)
    return infer(tree, device, dtype)


def model_device(tree: ModelTree, given: torch.device | None = None) -> tuple[torch.device, str | None]:
    """Where the model's parameters and buffers are, and a note when a few are elsewhere: a model
    built under ``torch.device("meta")`` keeps the tensors its code made on the CPU explicitly (a
    random mask embedding, an index table); with 90% of its elements or more on meta it is counted
    there. Split otherwise, it needs ``given`` (``device=``)."""
    devices = set(tree.devices)
    if len(devices) <= 1:
        return (devices.pop() if devices else torch.device("cpu")), None
    if torch.device("meta") in devices:
        named = [*tree.parameters, *tree.buffers]
        stray = [(name, t) for name, t in named if not t.is_meta]
        stray_elements = sum(t.numel() for _, t in stray)
        if stray_elements * 10 <= sum(t.numel() for _, t in named):
            shown = ", ".join(name for name, _ in stray[:3]) + (", ..." if len(stray) > 3 else "")
            where = ", ".join(sorted({str(t.device) for _, t in stray}))
            return torch.device("meta"), (f"{len(stray)} tensor(s) of a model on meta are on {where} ({shown}: "
                                          f"{stray_elements:,} elements): counted on meta with the rest")
    if given is not None:
        return given, None
    listed = ", ".join(sorted(str(d) for d in devices))
    raise InputError(f"the model's tensors are on several devices ({listed}); pass device=... to "
                     "inspect it on one")


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor, containers rebuilt (namedtuples and
    PackedSequence kept whole)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return value._replace(data=fn(value.data))
    if isinstance(value, dict):
        out = {k: map_tensors(v, fn) for k, v in value.items()}
        return out if type(value) is dict else type(value)(out)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(v, fn) for v in value)
    return value


def outside_inference(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it usable outside ``torch.inference_mode()`` if it is an inference tensor."""
    return t.clone() if t.is_inference() else t


def move(value: Any, device: torch.device, dtype: torch.dtype | None, moved: set[str],
         kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Any:
    """``value`` with every tensor on ``device`` (floating ones cast to ``dtype``), containers rebuilt
    (namedtuples and PackedSequence kept whole); the devices tensors came from are added to ``moved``.
    Tensors moved onto meta lose their values: ``kept`` gets (moved tensor, its value on the CPU)."""
    if isinstance(value, torch.Tensor):
        cast = dtype if dtype is not None and value.is_floating_point() else None
        if value.device != device:
            moved.add(str(value.device))
        if value.device == device and (cast is None or cast == value.dtype):
            return value
        out = value.to(device=device, dtype=cast)
        if kept is not None and device.type == "meta" and not value.is_meta and value.layout == torch.strided:
            kept.append((out, value.detach().to(device="cpu", dtype=cast)))
        return out
    if isinstance(value, nn.utils.rnn.PackedSequence):  # .to() keeps batch_sizes on the CPU
        cast = dtype if dtype is not None and value.data.is_floating_point() else None
        if value.data.device != device:
            moved.add(str(value.data.device))
        return value.to(device=device, dtype=cast or value.data.dtype)
    if isinstance(value, dict):
        out = {k: move(v, device, dtype, moved, kept) for k, v in value.items()}
        return out if type(value) is dict else type(value)(out)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(move(v, device, dtype, moved, kept) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(move(v, device, dtype, moved, kept) for v in value)
    return value
