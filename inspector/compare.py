"""Side-by-side comparison of models from any source, published figures alongside where a source has them."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from inspector import inspect_spec
from inspector.errors import first_line
from inspector.render import tabulate
from inspector.units import human, size
from inspector.sources import ModelSpec, Published, load


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
    complete: bool | None = None
    published_params: int | None = None
    published_gmacs: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    params_diff: int | None = None
    macs_diff_pct: float | None = None
    active_params: int | None = None       # Mixture-of-experts: what one token touches
    prefill_macs: int | None = None        # with generate=N: the prompt's prefill
    decode_macs: int | None = None         # the last decode step (its cache the longest)
    kv_cache_bytes: int | None = None      # after the last step
    decode_read_bytes: int | None = None   # weights and cache the last decode step reads
    error: str | None = None


COLUMNS = [f.name for f in fields(ComparisonRow)]


class Comparison:
    """Rows of a comparison; sortable by any column, rendered as a table, dicts or CSV."""

    KIND = "comparison"

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
                elif kind.startswith("bool"):
                    values[key] = value == "True"
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
                r.name, f"{r.params:,}", "-" if r.macs is None else f"{r.macs / 1e9:.3f}",
                "-" if r.published_gmacs is None else f"{r.published_gmacs:.3f}",
                "-" if r.macs_diff_pct is None else f"{r.macs_diff_pct:+.2f}",
                size(r.param_bytes), size(r.peak_activation_bytes), str(r.layers),
                "-" if r.metric is None else f"{r.metric} {r.metric_value:g}", r.input_shape or "-",
            ])
        headers, rows = _with_serving(self.rows, headers, rows)
        failures = [f"{r.name} failed: {r.error}" for r in self.rows if r.error]
        failures += [f"{r.name}: INCOMPLETE, some matmul-like ops were not counted (see its summary)"
                     for r in self.rows if r.complete is False]
        return "\n".join([tabulate(rows, headers, tablefmt), *failures])

    def __str__(self) -> str:
        return self.table()


def _spec(item: Any, device: Any, options: dict[str, Any]) -> ModelSpec:
    """A model spec from a name (any source), a module, a ModelSpec, ``(name, module[, inputs])``."""
    if isinstance(item, ModelSpec):
        return item
    if isinstance(item, str):
        return load(item, device=device or "cpu", **options)
    if isinstance(item, nn.Module):
        return ModelSpec(name=type(item).__name__, module=item)
    name, *rest = item
    spec = rest[0] if len(rest) == 1 else tuple(rest)
    if isinstance(spec, tuple):
        module, inputs = spec[0], (spec[1] if len(spec) > 1 else None)
    else:
        module, inputs = spec, None
    args = None if inputs is None else (inputs if type(inputs) is tuple else (inputs,))
    return ModelSpec(name=name, module=module, args=args)


def _name_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, ModelSpec):
        return item.name
    if isinstance(item, nn.Module):
        return type(item).__name__
    return str(item[0])


def _row(item: Any, device: Any, options: dict[str, Any], generate: int | None = None) -> ComparisonRow:
    name = _name_of(item)
    published = Published()
    try:
        spec = _spec(item, device, options)
        published = spec.published
        serving = {} if generate is None else {"generate": generate, "peak": None}
        report = inspect_spec(spec, device=spec.device or device, **serving)
    except Exception as exc:  # noqa: BLE001 - a model that fails gets its row; the others go on
        return ComparisonRow(name=name, error=f"{type(exc).__name__}: {first_line(exc)}", **_published(published))
    diff_pct = None
    if published.gmacs and report.total_macs is not None:
        diff_pct = 100 * (report.total_macs / 1e9 / published.gmacs - 1)
    return ComparisonRow(
        name=name, params=report.total_params, trainable_params=report.trainable_params,
        macs=report.total_macs, flops=report.total_flops, param_bytes=report.param_bytes,
        peak_activation_bytes=report.peak_activation_bytes, layers=report.leaf_calls,
        input_shape="x".join(map(str, report.input_shapes[0])) if report.input_shapes else None,
        device=report.device, complete=report.complete,
        params_diff=None if published.num_params is None else report.total_params - published.num_params,
        macs_diff_pct=diff_pct, **_published(published), **_serving(report))


def _serving(report: Any) -> dict[str, Any]:
    """Active parameters of MoE models; the prefill and the last decode step when generating."""
    out: dict[str, Any] = {}
    if report.experts is not None:
        out["active_params"] = report.active_params
    g = report.generation
    if g is not None:
        out.update(prefill_macs=g.prefill_macs, decode_macs=g.decode_macs[-1] if g.decode_macs else None,
                   kv_cache_bytes=g.kv_cache_bytes, decode_read_bytes=g.decode_read_bytes[-1] if g.decode_macs else None)
    return out


def _published(p: Published) -> dict[str, Any]:
    return {"family": p.family, "published_params": p.num_params, "published_gmacs": p.gmacs, "metric": p.metric,
            "metric_value": p.metric_value}


def compare(models: Iterable[Any] | Mapping[str, Any], *, device: Any = None,
            progress: Callable[[int, int, str], None] | None = None, batch: int | None = None,
            seq_len: int | None = None, input_size: Any = None, generate: int | None = None,
            model_class: str | None = None, last_logits: bool = False) -> Comparison:
    """Inspect each model and line them up.

    ``models``: names from any source (``resnet50``, ``timm:convnext_tiny``, ``hf:dir``, ``net.py:Net``),
    modules, ModelSpecs, ``(name, module)`` or ``(name, module, inputs)`` tuples, or a dict name ->
    module or (module, inputs). A model that fails gets a row with ``error`` set; the others go on.
    ``progress(done, total, name)`` is called after each model. ``generate``: N decode steps after a
    prefill on each model's example input (prefill and decode MACs, KV cache in the rows);
    ``model_class``/``last_logits`` as for ``load``.
    """
    items = [(k, *(v if isinstance(v, tuple) else (v,))) for k, v in models.items()] \
        if isinstance(models, Mapping) else list(models)
    options = {k: v for k, v in (("batch", batch), ("seq_len", seq_len), ("input_size", input_size),
                                 ("model_class", model_class), ("generate", generate)) if v is not None}
    if last_logits:
        options["last_logits"] = True
    rows = []
    for i, item in enumerate(items):
        rows.append(_row(item, device, options, generate))
        if progress is not None:
            progress(i + 1, len(items), _name_of(item))
    return Comparison(rows)


#: Columns a comparison shows only when some row has the figure: (header, field, format).
SERVING_COLUMNS = [("Active params", "active_params", lambda v: f"{v:,}"),
                   ("Prefill GMACs", "prefill_macs", lambda v: f"{v / 1e9:.3f}"),
                   ("Decode MACs (last)", "decode_macs", lambda v: human(v)),
                   ("Decode reads (last)", "decode_read_bytes", size),
                   ("KV cache", "kv_cache_bytes", size)]


def _with_serving(rows: list[ComparisonRow], headers: list[str], cells: list[list[str]]
                  ) -> tuple[list[str], list[list[str]]]:
    shown = [c for c in SERVING_COLUMNS if any(getattr(r, c[1]) is not None for r in rows)]
    if not shown:
        return headers, cells
    extra = [[("-" if getattr(r, f) is None else fmt(getattr(r, f))) for _, f, fmt in shown] for r in rows]
    return [*headers, *(h for h, _, _ in shown)], [c + e for c, e in zip(cells, extra)]
