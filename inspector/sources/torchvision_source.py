"""torchvision models as their published weights define them, built without downloading weights.

The weights enum's metadata (available offline) gives the number of classes, the auxiliary heads,
the input size and the published ``num_params``, ``_ops`` and accuracy. torchvision is imported
only when a torchvision name is built or listed.
"""
from __future__ import annotations

import inspect as pyinspect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from inspector.sources import BuildOptions, ModelSpec, Published, closest, model_source

FAMILIES = ("classification", "segmentation", "video", "detection", "optical_flow", "quantization")
_METRIC_ORDER = ("acc@1", "box_map", "miou", "epe", "kp_map", "mask_map")
#: Builder arguments whose published-weights value differs from the weights=None default.
_PUBLISHED_OVERRIDES: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False},
    "quantized_googlenet": {"aux_logits": False},
}
_VIDEO_FRAMES = 16
_DETECTION_SIDE = 800
#: Detection models whose published weights come with a frozen (buffer-only) BatchNorm backbone.
_FROZEN_BN_DETECTION = re.compile(r"^(fasterrcnn|maskrcnn|keypointrcnn|retinanet|fcos)_(resnet50_fpn|mobilenet_v3_large)")


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

    @property
    def metric(self) -> str | None:
        return next((m for m in _METRIC_ORDER if m in self.metrics), next(iter(self.metrics), None))

    def published(self) -> Published:
        metric = self.metric
        return Published(num_params=self.num_params, gmacs=self.gmacs, metric=metric,
                         metric_value=None if metric is None else self.metrics[metric], family=self.family)


def _tvm() -> Any:
    from torchvision import models

    return models


@lru_cache(maxsize=None)
def _family_of() -> dict[str, str]:
    tvm = _tvm()
    modules = {"classification": tvm, "segmentation": tvm.segmentation, "video": tvm.video,
               "detection": tvm.detection, "optical_flow": tvm.optical_flow, "quantization": tvm.quantization}
    out: dict[str, str] = {}
    for family in FAMILIES:
        for name in tvm.list_models(module=modules[family]):
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
    """The registered spelling of ``name`` (matched case-insensitively), else an UnknownModelError
    listing the closest names."""
    if name in _family_of():
        return name
    by_lower = {n.lower(): n for n in _family_of()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise closest(name, list(_family_of()), "torchvision model")


def _input_size(family: str, transforms_kw: dict[str, Any]) -> tuple[int, ...]:
    crop = transforms_kw.get("crop_size") or transforms_kw.get("resize_size") or _DETECTION_SIDE
    h, w = (crop[0], crop[-1]) if isinstance(crop, (tuple, list)) else (int(crop), int(crop))
    if family == "video":
        return (1, 3, _VIDEO_FRAMES, h, w)
    if family == "detection":
        return (3, _DETECTION_SIDE, _DETECTION_SIDE)
    if family == "optical_flow":
        return (1, 3, 520, 960)
    return (1, 3, h, w)


@lru_cache(maxsize=None)
def entry(name: str) -> ZooEntry:
    """Published facts about ``name`` (no model is built)."""
    name = check_name(name)
    weights = _tvm().get_model_weights(name).DEFAULT
    meta = weights.meta
    family = _family_of()[name]
    metrics: dict[str, float] = {}
    for dataset_metrics in meta.get("_metrics", {}).values():
        for key, value in dataset_metrics.items():
            metrics.setdefault(key, float(value))
    categories = meta.get("categories")
    return ZooEntry(name=name, family=family, num_params=int(meta["num_params"]), gmacs=float(meta["_ops"]),
                    metrics=metrics, num_classes=len(categories) if categories else None,
                    input_size=_input_size(family, getattr(weights.transforms, "keywords", {})))


def builder_kwargs(name: str) -> dict[str, Any]:
    """Arguments that build ``name`` with the published architecture and no download."""
    tvm = _tvm()
    name = check_name(name)
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
    if name.startswith("vit_"):  # published ViT weights fix the image size of the position embedding
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


#: In-place ops that write values only (shape, strides and dtype unchanged): all that initialisation
#: does, and nothing on the meta device, which holds no values.
_VALUE_WRITES = frozenset({"normal_", "uniform_", "zero_", "fill_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_",
                           "copy_", "exponential_", "bernoulli_", "random_", "log_normal_", "cauchy_", "geometric_",
                           "masked_fill_", "addcmul_", "addcdiv_"})


class _NoValuesOnMeta(TorchFunctionMode):
    """Skip the value writes of weight initialisation on meta tensors (an in-place op on a meta tensor
    returns it unchanged, but torch runs the ops' Python references to find that out: most of the
    time of building a model on meta)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if (name in _VALUE_WRITES or (getattr(func, "__module__", None) == "torch.nn.init" and name.endswith("_"))) \
                and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]  # (torch.nn.init's functions: the initialisers, which write values only)
        return func(*args, **(kwargs or {}))


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace BatchNorm2d by FrozenBatchNorm2d in place (our own freshly built model only)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.weight.device))
        else:
            _freeze_batchnorm(child)


def build_device(name: str, device: str | torch.device) -> torch.device:
    """Where ``name`` can be built and run: quantized kernels exist on the CPU only, and detection
    models run data-dependent ops (nonzero, NMS) that the meta device cannot."""
    device = torch.device(device)
    family = entry(name).family
    if family == "quantization" or (family == "detection" and device.type == "meta"):
        return torch.device("cpu")
    return device


def _build_raw(name: str, device: torch.device) -> nn.Module:
    builder = _tvm().get_model_builder(name)
    kwargs = builder_kwargs(name)
    if device.type == "meta" and entry(name).family != "quantization":
        try:
            with torch.device("meta"), _NoValuesOnMeta():
                return builder(**kwargs)
        except (NotImplementedError, RuntimeError):  # regnet computes on tensors while building
            with _ParametersOnMeta():
                return builder(**kwargs).to(device)
    model = builder(**kwargs)
    return model if entry(name).family == "quantization" else model.to(device)


def torchvision_model(name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Build ``name`` as its published weights define it, in eval mode, on ``device``."""
    name = check_name(name)
    model = _build_raw(name, torch.device(device))
    if _FROZEN_BN_DETECTION.match(name) and not name.endswith("_v2"):
        _freeze_batchnorm(model.backbone.body if hasattr(model.backbone, "body") else model.backbone)
    return model.eval()


def example_inputs(name: str, device: str | torch.device = "cpu", batch: int | None = None,
                   input_size: tuple[int, ...] | None = None) -> tuple[Any, ...]:
    """Positional inputs matching the published input size of ``name`` (or ``input_size``)."""
    zoo = entry(name)
    size = tuple(input_size or zoo.input_size)
    if batch is not None and input_size is None:
        size = size if zoo.family == "detection" else (batch, *size[1:])
    if zoo.family == "detection":
        return ([torch.rand(size, device=device) for _ in range(batch or 1)],)
    if zoo.family == "optical_flow":
        return (torch.rand(size, device=device), torch.rand(size, device=device))
    return (torch.rand(size, device=device),)


@model_source("tv")
class TorchvisionSource:
    description = "torchvision models as published (no weights downloaded): resnet50, vit_b_16, ..."

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        name = check_name(name)
        device = build_device(name, options.device)
        notes = ()
        if device != torch.device(options.device):
            why = ("quantized kernels exist on the CPU only" if entry(name).family == "quantization" else
                   "detection models run data-dependent ops (nonzero, NMS) that meta cannot")
            notes = (f"ran on {device}, not {options.device}: {why}",)
        module = torchvision_model(name, device)
        family = entry(name).family
        given = options.random(module) if family not in ("detection", "optical_flow") else None
        args = (given,) if given is not None else example_inputs(name, device, options.batch, options.shape)
        return ModelSpec(name=name, module=module, args=args, published=entry(name).published(), device=str(device),
                         notes=notes)

    lists = True
    families = FAMILIES

    def names(self, family: str | None = None) -> list[str]:
        return list_names(family)

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return [{"name": n, "family": entry(n).family, "num_params": entry(n).num_params, "gmacs": entry(n).gmacs,
                 "input": "x".join(map(str, entry(n).input_size))} for n in list_names(family)]


__all__ = ["FAMILIES", "ZooEntry", "build_device", "builder_kwargs", "check_name", "entry", "example_inputs",
           "list_names", "torchvision_model"]
