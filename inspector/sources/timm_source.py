"""timm models (``timm:convnext_tiny``), never pretrained; the input from the model's pretrained_cfg."""
from __future__ import annotations

from typing import Any

import torch

from inspector.errors import InspectorError
from inspector.sources import BuildOptions, ModelSpec, closest, model_source


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise InspectorError("timm models need the timm package: pip install timm (or the 'timm' extra)") from None
    return timm


@model_source("timm")
class TimmSource:
    description = "timm models, built with pretrained=False: timm:resnet50, timm:convnext_tiny, ..."

    def build(self, name: str, options: BuildOptions) -> ModelSpec:
        timm = _timm()
        if not timm.is_model(name):
            raise closest(name, timm.list_models(), "timm model")
        device = torch.device(options.device)
        with torch.device(device):
            model = timm.create_model(name, pretrained=False)
        model.eval()
        x = options.random(model)
        if x is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            x = torch.randn((options.batch or 1, *cfg.get("input_size", (3, 224, 224))), device=device)
        return ModelSpec(name=f"timm:{name}", module=model, args=(x,), device=str(device))

    lists = True
    families: tuple[str, ...] = ()

    def names(self, family: str | None = None) -> list[str]:
        return list(_timm().list_models())

    def catalogue(self, family: str | None = None) -> list[dict[str, Any]]:
        return [{"name": name} for name in self.names(family)]
