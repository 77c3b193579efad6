"""torchvision models built as their published weights define them, without downloading weights.

``torchvision_model(name)`` reads the weights enum's metadata (available offline) for the number
of classes, the auxiliary heads and the input size, builds the model with ``weights=None`` (and
``weights_backbone=None``), and returns it in eval mode with the example input it was published for.
"""
from __future__ import annotations

import difflib
import inspect as pyinspect
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision import models as tvm
from torchvision.ops.misc import FrozenBatchNorm2d

from inspector.errors import UnknownModelError

FAMILIES: dict[str, ModuleType] = {
    "classification": tvm,
    "segmentation": tvm.segmentation,
    "video": tvm.video,
    "detection": tvm.detection,
    "optical_flow": tvm.optical_flow,
    "quantization": tvm.quantization,
}

#: Builder arguments whose published-weights value differs from the weights=None default.
_PUBLISHED_OVERRIDES: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False},
    "quantized_googlenet": {"aux_logits": False},
}
_VIDEO_FRAMES = 16
_DETECTION_SIDE = 800


@dataclass(frozen=True)
class ZooEntry:
    """What torchvision publishes about one model, read from its default weights."""

    name: str
    family: str
    num_params: int
    gmacs: float  # torchvision's meta["_ops"], labelled GFLOPS but counting multiply-adds
    metrics: dict[str, float]
    num_classes: int | None
    input_size: tuple[int, ...]

    @property
    def published_macs(self) -> int:
        return round(self.gmacs * 1e9)


def list_families() -> list[str]:
    return list(FAMILIES)


@lru_cache(maxsize=None)
def _family_of() -> dict[str, str]:
    out: dict[str, str] = {}
    for family, module in FAMILIES.items():
        for name in tvm.list_models(module=module):
            out.setdefault(name, family)
    return out


def list_names(family: str | None = None) -> list[str]:
    """Registered torchvision model names, optionally of one family."""
    if family is None:
        return sorted(_family_of())
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return sorted(n for n, f in _family_of().items() if f == family)


def check_name(name: str) -> str:
    """Return ``name`` if torchvision knows it, else raise with the closest known names."""
    if name in _family_of():
        return name
    close = difflib.get_close_matches(name, list(_family_of()), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown torchvision model {name!r}{hint}")


def _input_size(family: str, transforms_kw: dict[str, Any]) -> tuple[int, ...]:
    crop = transforms_kw.get("crop_size") or transforms_kw.get("resize_size") or _DETECTION_SIDE
    if isinstance(crop, (tuple, list)):
        h, w = (crop[0], crop[-1])
    else:
        h = w = int(crop)
    if family == "video":
        return (1, 3, _VIDEO_FRAMES, h, w)
    if family in ("detection", "optical_flow"):
        return (3, _DETECTION_SIDE, _DETECTION_SIDE) if family == "detection" else (1, 3, 520, 960)
    return (1, 3, h, w)


@lru_cache(maxsize=None)
def entry(name: str) -> ZooEntry:
    """Published facts about ``name`` (no model is built)."""
    check_name(name)
    weights = tvm.get_model_weights(name).DEFAULT
    meta = weights.meta
    family = _family_of()[name]
    metrics: dict[str, float] = {}
    for dataset_metrics in meta.get("_metrics", {}).values():
        for key, value in dataset_metrics.items():
            metrics.setdefault(key, float(value))
    categories = meta.get("categories")
    return ZooEntry(
        name=name, family=family, num_params=int(meta["num_params"]), gmacs=float(meta["_ops"]),
        metrics=metrics, num_classes=len(categories) if categories else None,
        input_size=_input_size(family, getattr(weights.transforms, "keywords", {})),
    )


def builder_kwargs(name: str) -> dict[str, Any]:
    """Arguments that build ``name`` with the published architecture and no download."""
    params = pyinspect.signature(tvm.get_model_builder(name)).parameters
    zoo = entry(name)
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    if "aux_loss" in params:
        kwargs["aux_loss"] = True  # every published segmentation weight carries the aux head
    if "quantize" in params:
        kwargs["quantize"] = True
    if zoo.num_classes is not None and zoo.family != "quantization":
        kwargs["num_classes"] = zoo.num_classes
    if zoo.family == "detection" and "num_keypoints" in params:
        kwargs.pop("num_classes", None)
    if "init_weights" in params or name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = False  # weights are never used for counting; skip slow init
    if name.startswith("vit_"):  # published ViT weights fix the image size the position embedding is built for
        kwargs["image_size"] = tvm.get_model_weights(name).DEFAULT.meta["min_size"][0]
    kwargs.update(_PUBLISHED_OVERRIDES.get(name, {}))
    return kwargs


class _ParametersOnMeta(TorchFunctionMode):
    """Allocate ``torch.empty`` (what layers create their parameters with) on the meta device, and
    leave other factories on the CPU: for builders that compute on small tensors (regnet's widths)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


#: Detection models whose published weights come with a frozen (buffer-only) BatchNorm backbone.
_FROZEN_BN_DETECTION = re.compile(r"^(fasterrcnn|maskrcnn|keypointrcnn|retinanet|fcos)_(resnet50_fpn|mobilenet_v3_large)")


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace BatchNorm2d by FrozenBatchNorm2d in place (our own freshly built model only)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.weight.device)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def _build(name: str, device: torch.device) -> nn.Module:
    model = _build_raw(name, device)
    if _FROZEN_BN_DETECTION.match(name) and not name.endswith("_v2"):
        _freeze_batchnorm(model.backbone.body if hasattr(model.backbone, "body") else model.backbone)
    return model


def _build_raw(name: str, device: torch.device) -> nn.Module:
    builder = tvm.get_model_builder(name)
    kwargs = builder_kwargs(name)
    if device.type == "meta" and entry(name).family != "quantization":
        try:
            with torch.device("meta"):
                return builder(**kwargs)
        except (NotImplementedError, RuntimeError):  # regnet computes on tensors while building
            with _ParametersOnMeta():
                return builder(**kwargs).to(device)
    model = builder(**kwargs)
    if entry(name).family != "quantization":
        model = model.to(device)
    return model


def torchvision_model(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build ``name`` as its published weights define it, in eval mode, on ``device``.

    Quantized models exist on the CPU only and are always built there.
    """
    check_name(name)
    model = _build(name, torch.device(device))
    model.eval()
    _BUILT[model] = name
    return model


#: Models this module built -> their zoo name (weak: never keeps a model alive).
_BUILT: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def built_as(model: nn.Module) -> str | None:
    """The zoo name of a model built by :func:`torchvision_model`, else ``None``."""
    return _BUILT.get(model)


def example_inputs(name: str, device: str | torch.device = "cpu") -> tuple[Any, ...]:
    """Positional inputs matching the published input size of ``name``."""
    size = entry(name).input_size
    family = entry(name).family
    if family == "detection":
        return ([torch.rand(size, device=device)],)
    if family == "optical_flow":
        return (torch.rand(size, device=device), torch.rand(size, device=device))
    return (torch.rand(size, device=device),)


__all__ = ["FAMILIES", "UnknownModelError", "ZooEntry", "builder_kwargs", "built_as", "check_name",
           "entry", "example_inputs", "list_families", "list_names", "torchvision_model"]
