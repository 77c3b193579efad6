"""Turning what the user handed over into positional and keyword inputs on the right device."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from inspector.errors import InputError
from inspector.tree import ModelTree

_FIRST_LAYER_SIZES: dict[type, tuple[int, ...]] = {
    nn.Conv1d: (1, -1, 224), nn.Conv2d: (1, -1, 224, 224), nn.Conv3d: (1, -1, 16, 112, 112),
    nn.Linear: (1, -1),
}


def validate_size(input_size: Any) -> tuple[int, ...]:
    """``input_size`` as a tuple of positive ints, or an InputError saying which entry is wrong."""
    if isinstance(input_size, int):
        input_size = (input_size,)
    if not isinstance(input_size, Sequence) or isinstance(input_size, str) or not input_size:
        raise InputError(f"input_size must be a non-empty sequence of positive ints, got {input_size!r}")
    for i, dim in enumerate(input_size):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise InputError(f"input_size[{i}] = {dim!r} in {tuple(input_size)!r}: every dimension must be "
                             "a positive int")
    return tuple(input_size)


def _torchvision_size(model: nn.Module) -> tuple[int, ...] | None:
    """Input size of a torchvision model built elsewhere, from its class's published conventions."""
    module = type(model).__module__
    if not module.startswith("torchvision.models"):
        return None
    side = getattr(model, "image_size", None) or getattr(model, "transform_input", None) and 299
    if type(model).__name__ == "Inception3":
        side = 299
    if ".video" in module:
        return (1, 3, 16, 112, 112) if ".resnet" in module else (1, 3, 16, 224, 224)
    if ".detection" in module or ".optical_flow" in module:
        return None
    return (1, 3, int(side or 224), int(side or 224))


def _first_layer_input(model: nn.Module) -> tuple[tuple[Any, ...], str] | None:
    for name, module in model.named_modules():
        for cls, template in _FIRST_LAYER_SIZES.items():
            if type(module) is cls:
                width = module.in_channels if hasattr(module, "in_channels") else module.in_features
                size = tuple(width if d == -1 else d for d in template)
                return (torch.randn(size),), f"input {size} inferred from the first layer {name or 'model'} " \
                                             f"({type(module).__name__}, {width} in)"
        if isinstance(module, nn.Embedding):
            ids = torch.zeros(1, 16, dtype=torch.long)
            return (ids,), f"input: 16 token ids inferred from the first layer {name} (Embedding)"
    return None


def infer_inputs(model: nn.Module) -> tuple[tuple[Any, ...] | None, str]:
    """Example inputs for a model given without any, and a note saying where they came from."""
    example = getattr(model, "example_input", None)
    if callable(example):
        x = example()
        return (x if isinstance(x, tuple) else (x,)), f"input {tuple(x.shape)} from {type(model).__name__}." \
                                                      "example_input()"
    from models import zoo  # lazy: models imports inspector.errors

    name = zoo.built_as(model)
    if name is not None:
        args = zoo.example_inputs(name)
        return args, f"input {zoo.entry(name).input_size} from {name}'s published weights"
    size = _torchvision_size(model)
    if size is not None:
        return (torch.rand(size),), f"input {size} from torchvision's convention for {type(model).__name__}"
    found = _first_layer_input(model)
    if found is not None:
        return found
    return None, ("no input given and none could be inferred: parameters are counted, MACs are not; "
                  "pass inputs=... or input_size=(...)")


def resolve(model: nn.Module, inputs: Any, kwargs: dict[str, Any] | None,
            input_size: Any) -> tuple[tuple[Any, ...] | None, dict[str, Any], list[str]]:
    """(positional inputs, keyword inputs, notes). A plain tuple is several positional inputs; anything
    else (a tensor, a list of images, a dict, a PackedSequence or other namedtuple) is one input."""
    kwargs = dict(kwargs or {})
    if inputs is not None and input_size is not None:
        raise InputError("give either inputs or input_size, not both")
    if input_size is not None:
        size = validate_size(input_size)
        return (torch.randn(size),), kwargs, [f"random float input of size {size}"]
    if inputs is not None:
        return (inputs if type(inputs) is tuple else (inputs,)), kwargs, []
    if kwargs:
        return (), kwargs, []
    args, note = infer_inputs(model)
    return args, kwargs, [note]


def model_device(tree: ModelTree) -> torch.device:
    """Where the model's parameters and buffers are; an error if they are split across devices."""
    devices = set(tree.devices)
    if len(devices) > 1:
        listed = ", ".join(sorted(str(d) for d in devices))
        raise InputError(f"the model's tensors are on several devices ({listed}); pass device=... to "
                         "inspect it on one")
    return devices.pop() if devices else torch.device("cpu")


def move(tree: Any, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, list[str]]:
    """Tensors in ``tree`` on ``device`` (floating ones cast to ``dtype``); notes on what moved."""
    moved: set[str] = set()

    def to(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        cast = dtype if dtype is not None and t.is_floating_point() else None
        if t.device != device:
            moved.add(str(t.device))
        return t.to(device=device, dtype=cast) if (t.device != device or cast is not None) else t

    out = tree_map(to, tree)
    notes = [f"inputs moved from {d} to {device}" for d in sorted(moved)]
    return out, notes
