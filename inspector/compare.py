"""Side-by-side comparison of many models, torchvision's published figures alongside."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from inspector.api import inspect
from inspector.errors import InspectorError
from inspector.render import human, tabulate

_METRIC_ORDER = ("acc@1", "box_map", "miou", "epe", "kp_map", "mask_map")


@dataclass(frozen=True)
class ComparisonRow:
    """One model's figures; ``error`` is set (and figures are None) when it could not be inspected."""

    name: str
    family: str | None = None
    params: int | None = None
    trainable_params: int | None = None
    macs: int | None = None
    flops: int | None = None
    param_bytes: int | None = None
    peak_activation_bytes: int | None = None
    layers: int | None = None
    input_shape: str | None = None
    device: str | None = None
    published_params: int | None = None
    published_gmacs: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    params_diff: int | None = None
    macs_diff_pct: float | None = None
    error: str | None = None


COLUMNS = [f.name for f in fields(ComparisonRow)]


class Comparison:
    """Rows of a comparison; sortable by any column, rendered as a table, dicts or CSV."""

    def __init__(self, rows: Iterable[ComparisonRow]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> ComparisonRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def failed(self) -> list[ComparisonRow]:
        return [r for r in self.rows if r.error]

    def sorted(self, by: str, descending: bool = False) -> Comparison:
        if by not in COLUMNS:
            raise ValueError(f"cannot sort by {by!r}; columns: {', '.join(COLUMNS)}")
        present = [r for r in self.rows if getattr(r, by) is not None]
        missing = [r for r in self.rows if getattr(r, by) is None]
        return Comparison(sorted(present, key=lambda r: getattr(r, by), reverse=descending) + missing)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": 1, "columns": COLUMNS, "rows": [asdict(r) for r in self.rows]}

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
        return out.getvalue()

    @staticmethod
    def from_csv(text: str) -> Comparison:
        types = {f.name: f.type for f in fields(ComparisonRow)}
        rows = []
        for raw in csv.DictReader(io.StringIO(text)):
            values: dict[str, Any] = {}
            for key, value in raw.items():
                kind = str(types[key])
                if value == "":
                    values[key] = None
                elif kind.startswith("int"):
                    values[key] = int(value)
                elif kind.startswith("float"):
                    values[key] = float(value)
                else:
                    values[key] = value
            rows.append(ComparisonRow(**values))
        return Comparison(rows)

    def table(self, tablefmt: str = "simple") -> str:
        headers = ["Model", "Params", "GMACs", "Published GMACs", "Δ MACs %", "Param mem", "Peak act.",
                   "Layers", "Metric", "Input"]
        rows = []
        for r in self.rows:
            if r.error:
                rows.append([r.name, "failed", *["-"] * 8])
                continue
            rows.append([
                r.name, f"{r.params:,}", f"{r.macs / 1e9:.3f}",
                "-" if r.published_gmacs is None else f"{r.published_gmacs:.3f}",
                "-" if r.macs_diff_pct is None else f"{r.macs_diff_pct:+.2f}",
                human(r.param_bytes, "B"), human(r.peak_activation_bytes, "B"), str(r.layers),
                "-" if r.metric is None else f"{r.metric} {r.metric_value:g}", r.input_shape or "-",
            ])
        failures = [f"{r.name} failed: {r.error}" for r in self.rows if r.error]
        return "\n".join([tabulate(rows, headers, tablefmt), *failures])

    def __str__(self) -> str:
        return self.table()


def _published(name: str) -> dict[str, Any]:
    from models import zoo

    e = zoo.entry(name)
    metric = next((m for m in _METRIC_ORDER if m in e.metrics), next(iter(e.metrics), None))
    return {"family": e.family, "published_params": e.num_params, "published_gmacs": e.gmacs,
            "metric": metric, "metric_value": None if metric is None else e.metrics[metric]}


def _zoo_device(name: str, device: Any) -> str:
    from models import zoo

    family = zoo.entry(name).family
    if family == "quantization":
        return "cpu"  # quantized kernels exist on the CPU only
    if family == "detection" and str(device) == "meta":
        return "cpu"  # data-dependent ops (nonzero, NMS) cannot run on meta
    return str(device or "cpu")


def _row(name: str, model: nn.Module | None, inputs: Any, device: Any) -> ComparisonRow:
    from models import zoo

    published: dict[str, Any] = {}
    try:
        if model is None:
            zoo.check_name(name)
            published = _published(name)
            device = _zoo_device(name, device)
            model = zoo.torchvision_model(name, device=device)
            inputs = zoo.example_inputs(name, device)
        report = inspect(model, inputs, device=device)
    except (InspectorError, RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        return ComparisonRow(name=name, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             **published)
    diff_pct = None
    if published.get("published_gmacs"):
        diff_pct = 100 * (report.total_macs / 1e9 / published["published_gmacs"] - 1)
    return ComparisonRow(
        name=name, params=report.total_params, trainable_params=report.trainable_params,
        macs=report.total_macs, flops=report.total_flops, param_bytes=report.param_bytes,
        peak_activation_bytes=report.peak_activation_bytes, layers=sum(r.is_leaf for r in report.layers),
        input_shape="x".join(map(str, report.input_shapes[0])) if report.input_shapes else None,
        device=report.device,
        params_diff=None if "published_params" not in published else report.total_params - published["published_params"],
        macs_diff_pct=diff_pct, **published)


def compare(models: Iterable[Any] | Mapping[str, Any], *, device: Any = None,
            progress: Callable[[int, int, str], None] | None = None) -> Comparison:
    """Inspect each model and line them up.

    ``models``: torchvision names, modules, ``(name, module)`` or ``(name, module, inputs)`` tuples,
    or a dict name -> module or (module, inputs). A model that fails gets a row with ``error`` set;
    the others go on. ``progress(done, total, name)`` is called after each model.
    """
    items = list(models.items()) if isinstance(models, Mapping) else list(models)
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            name, model, inputs = item, None, None
        elif isinstance(item, nn.Module):
            name, model, inputs = type(item).__name__, item, None
        else:
            name, spec = item[0], item[1:] if len(item) > 2 else item[1]
            if isinstance(spec, tuple):
                model, inputs = spec[0], (spec[1] if len(spec) > 1 else None)
            else:
                model, inputs = spec, None
        rows.append(_row(name, model, inputs, device))
        if progress is not None:
            progress(i + 1, len(items), name)
    return Comparison(rows)
