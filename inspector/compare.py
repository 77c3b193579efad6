"""Side-by-side comparison of models from any source, published figures alongside where a source has them.

A row whose parameters or MACs lie more than ``FAR_PCT`` percent from the published figure is marked
FAR (the command line then exits 1); a model that ran somewhere else than asked (detection models
on meta, quantized ones anywhere but the CPU) gets a note; the libraries' warnings while building
and counting are kept in ``Comparison.warnings`` instead of printed."""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from inspector import inspect_spec, output
from inspector.errors import first_line, kept_warnings
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
    note: str | None = None  # what differs from what was asked (the device it ran on, and why)

    def far(self, threshold: float = None) -> list[str]:  # type: ignore[assignment]
        """The figures more than ``threshold`` percent (default ``FAR_PCT``) from the published ones,
        as "MACs +299.57%"; empty when all agree or nothing is published."""
        threshold = FAR_PCT if threshold is None else threshold
        out = []
        if self.params_diff is not None and self.published_params:
            params_pct = 100 * self.params_diff / self.published_params
            if abs(params_pct) > threshold:
                out.append(f"params {params_pct:+.2f}%")
        if self.macs_diff_pct is not None and abs(self.macs_diff_pct) > threshold:
            out.append(f"MACs {self.macs_diff_pct:+.2f}%")
        return out

    @property
    def check(self) -> str:
        """"failed", "FAR" (see ``far``), "ok" (published figures agree) or "" (nothing published)."""
        if self.error:
            return "failed"
        if self.far():
            return "FAR"
        return "ok" if self.published_params is not None or self.published_gmacs else ""


#: Percent from a published figure beyond which a row is marked FAR. Counting conventions differ
#: by well under 1% on every classification, segmentation and video model torchvision publishes
#: (the largest, shufflenet_v2_x0_5, +1.19%); detection and optical-flow models whose work depends
#: on the image (proposals kept, refinement iterations) land far outside it on random inputs.
FAR_PCT = 5.0
COLUMNS = [f.name for f in fields(ComparisonRow)]
_HEADERS = [("Model", "left"), ("Params", "right"), ("GMACs", "right"), ("Published GMACs", "right"),
            ("Δ MACs %", "right"), ("Param mem", "right"), ("Peak act.", "right"), ("Layers", "right"),
            ("Metric", "left"), ("Input", "left"), ("Check", "left")]


class Comparison:
    """Rows of a comparison; sortable by any column, rendered as a table, dicts or CSV."""

    KIND = "comparison"

    def __init__(self, rows: Iterable[ComparisonRow], warnings: Iterable[str] = ()) -> None:
        self.rows = list(rows)
        self.warnings = list(warnings)  # the libraries' warnings while building and counting, once each

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
        return Comparison(sorted(present, key=lambda r: getattr(r, by), reverse=descending) + missing, self.warnings)

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

    def cells(self) -> tuple[list[str], list[str], list[list[tuple[str, Any]]]]:
        """Headers, alignments and, per row, each cell as (text, value to sort by)."""
        out = []
        for r in self.rows:
            if r.error:
                out.append([(r.name, r.name), ("failed", None), *[("-", None)] * 8, ("failed", "failed")])
                continue
            out.append([
                (r.name, r.name), (f"{r.params:,}", r.params),
                ("-" if r.macs is None else f"{r.macs / 1e9:.3f}", r.macs),
                ("-" if r.published_gmacs is None else f"{r.published_gmacs:.3f}", r.published_gmacs),
                ("-" if r.macs_diff_pct is None else f"{r.macs_diff_pct:+.2f}", r.macs_diff_pct),
                (size(r.param_bytes), r.param_bytes), (size(r.peak_activation_bytes), r.peak_activation_bytes),
                (str(r.layers), r.layers),
                ("-" if r.metric is None else f"{r.metric} {r.metric_value:g}", r.metric_value),
                (r.input_shape or "-", r.input_shape), (r.check, r.check)])
        return _with_serving(self.rows, [h for h, _ in _HEADERS], [a for _, a in _HEADERS], out)

    def footnotes(self) -> list[str]:
        """The lines under the table: failures, incomplete counts, rows far from their published
        figures, and notes (grouped: one line per note, naming its models)."""
        lines = [f"{r.name} failed: {r.error}" for r in self.rows if r.error]
        lines += [f"{r.name}: INCOMPLETE, some matmul-like ops were not counted (see its summary)"
                  for r in self.rows if r.complete is False]
        far = [f"{r.name} ({', '.join(r.far())})" for r in self.rows if not r.error and r.far()]
        if far:
            lines.append(f"FAR: more than {FAR_PCT:g}% from the published figure: " + "; ".join(far))
        grouped: dict[str, list[str]] = {}
        for r in self.rows:
            if r.note:
                grouped.setdefault(r.note, []).append(r.name)
        lines += [f"Note: {note}: {', '.join(names)}" for note, names in grouped.items()]
        return lines

    def table(self, tablefmt: str = "simple") -> str:
        headers, aligns, rows = self.cells()
        body = tabulate([[text for text, _ in row] for row in rows], headers, tablefmt, aligns)
        return "\n".join([body, *self.footnotes()])

    def render(self, fmt: str = "table", **options: Any) -> str:
        """The comparison in an output format: ``table``, ``markdown``, ``json``, ``csv``, ``html`` (a page
        with the table and its plot)."""
        return output.render(self, fmt, **options)

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the comparison to ``path`` (format from the suffix, as ``Report.save``)."""
        path = Path(path)
        fmt = fmt or {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv", ".md": "markdown"}.get(
            path.suffix.lower(), "table")
        text = self.render(fmt)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        return path

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        return self.render("html", fragment=True)


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
        macs_diff_pct=diff_pct, note="; ".join(spec.notes) or None, **_published(published), **_serving(report))


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
            model_class: str | None = None, last_logits: bool = False, trust_pickle: bool = False) -> Comparison:
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
                                 ("model_class", model_class), ("generate", generate),
                                 ("trust_pickle", trust_pickle or None)) if v is not None}
    if last_logits:
        options["last_logits"] = True
    rows = []
    heard: list[str] = []
    for i, item in enumerate(items):
        with kept_warnings(heard):
            rows.append(_row(item, device, options, generate))
        if progress is not None:
            progress(i + 1, len(items), _name_of(item))
    return Comparison(rows, heard)


#: Columns a comparison shows only when some row has the figure: (header, field, format).
SERVING_COLUMNS = [("Active params", "active_params", lambda v: f"{v:,}"),
                   ("Prefill GMACs", "prefill_macs", lambda v: f"{v / 1e9:.3f}"),
                   ("Decode MACs (last)", "decode_macs", lambda v: human(v)),
                   ("Decode reads (last)", "decode_read_bytes", size),
                   ("KV cache", "kv_cache_bytes", size)]


def _with_serving(rows: list[ComparisonRow], headers: list[str], aligns: list[str],
                  cells: list[list[tuple[str, Any]]]) -> tuple[list[str], list[str], list[list[tuple[str, Any]]]]:
    """The serving columns some row has figures for, after the others."""
    shown = [c for c in SERVING_COLUMNS if any(getattr(r, c[1]) is not None for r in rows)]
    extra = [[("-" if getattr(r, f) is None else fmt(getattr(r, f)), getattr(r, f)) for _, f, fmt in shown]
             for r in rows]
    return [*headers, *(h for h, _, _ in shown)], [*aligns, *("right" for _ in shown)], \
        [c + e for c, e in zip(cells, extra)]
