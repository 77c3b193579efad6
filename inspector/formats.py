"""Output formats, one registry for the Python API and the command line alike.

``render(report_or_comparison, "table" | "markdown" | "json" | "csv" | "html", **options)``. Every
format takes the same rows: ``depth`` (how deep in the call tree) or ``top``/``by`` (the calls doing
the most). The tables, CSV and HTML take ``columns`` too, and the tables and HTML ``exact``; JSON
always carries every field, as exact numbers, and CSV exact numbers. Register a new format with
``@output_format("name", "report")`` (or ``"comparison"``).
"""
from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable
from typing import Any

from inspector.registry import Registry
from inspector.render import COLUMNS, check_columns, render_report, shapes_text, summary_line, table_rows

FormatFn = Callable[..., str]
FORMATS: Registry[tuple[str, str], FormatFn] = Registry("output format")


def output_format(name: str, kind: str) -> Callable[[FormatFn], FormatFn]:
    """Register ``fn(obj, **options) -> str`` as format ``name`` for ``kind`` ("report"/"comparison")."""
    return FORMATS.register((kind, name))


def names(kind: str) -> list[str]:
    return [name for k, name in FORMATS if k == kind]


def _kind(obj: Any) -> str:
    from inspector.report import Report

    return "report" if isinstance(obj, Report) else "comparison"


def render(obj: Any, fmt: str = "table", **options: Any) -> str:
    kind = _kind(obj)
    fn = FORMATS.get((kind, fmt))
    if fn is None:
        raise ValueError(f"unknown {kind} format {fmt!r}; choose from {', '.join(names(kind))}")
    return fn(obj, **options)


# --- reports --------------------------------------------------------------------------------------------

@output_format("table", "report")
def report_table(report: Any, **options: Any) -> str:
    return render_report(report, tablefmt="simple", **options)


@output_format("markdown", "report")
def report_markdown(report: Any, **options: Any) -> str:
    return render_report(report, tablefmt="github", **options)


@output_format("html", "report")
def report_html(report: Any, exact: bool = False, **options: Any) -> str:
    from inspector.render import footer

    table = render_report(report, tablefmt="html", exact=exact, with_footer=False, **options)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in footer(report, exact))
    return (f"<div><p><b>{html.escape(summary_line(report))}</b></p>{table}"
            f"<ul style='font-size:smaller'>{items}</ul></div>")


def report_dict(report: Any, depth: int | None = None, top: int | None = None, by: str = "macs") -> dict[str, Any]:
    """JSON-serialisable form; see docs/json-schema.md."""
    from inspector.report import SCHEMA_VERSION

    shown = table_rows(report, depth, top, by)
    folded = {row.record.index: row for row in shown if row.kind == "layer"}
    own = {row.record.index: row for row in shown if row.kind == "own"}
    layers = []
    for row in shown:
        if row.kind == "own":
            continue
        entry = row.record.to_dict()
        r = folded.get(row.record.index) or own.get(row.record.index)
        entry["row_kind"] = row.kind
        entry["folded_params"] = r.params if r is not None else 0
        entry["folded_macs"] = r.macs if r is not None else 0
        layers.append(entry)
    training = None
    if report.training is not None:
        tr = report.training
        training = {"loss": tr.loss, "optimizer": tr.optimizer, "autocast": tr.autocast,
                    "backward_macs": tr.total_backward_macs, "backward_flops": tr.total_backward_flops,
                    "memory": tr.memory.to_dict()}
    t = report.timing
    return {
        "schema_version": SCHEMA_VERSION,
        "model": report.model,
        "summary": summary_line(report),
        "device": report.device,
        "dtype": report.dtype,
        "mode": report.mode,
        "flops_convention": report.run.flops,
        "input_shapes": [list(s) for s in report.input_shapes],
        "input_dtypes": list(report.run.input_dtypes),
        "depth": depth,
        "top": None if top is None else {"k": top, "by": by},
        "complete": report.complete,
        "totals": {
            "params": report.total_params, "trainable_params": report.trainable_params,
            "frozen_params": report.frozen_params, "buffer_elements": report.buffer_elements,
            "param_bytes": report.param_bytes, "buffer_bytes": report.buffer_bytes,
            "macs": report.total_macs, "flops": report.total_flops,
            "elementwise_flops": report.elementwise_flops,
            "peak_activation_bytes": report.peak_activation_bytes,
            "backward_macs": report.total_backward_macs,
        },
        "layers": layers,
        "uncounted_ops": dict(report.uncounted_ops),
        "formula_errors": dict(report.formula_errors),
        "uncalled_modules": [{"name": n, "params": p} for n, p in report.uncalled],
        "notes": list(report.notes),
        "timing": None if t is None else {**vars(t), "ridge": t.ridge, "distortion": t.distortion},
        "training": training,
    }


@output_format("json", "report")
def report_json(report: Any, depth: int | None = None, top: int | None = None, by: str = "macs", **_: Any) -> str:
    return json.dumps(report_dict(report, depth, top, by), indent=1)


@output_format("csv", "report")
def report_csv(report: Any, depth: int | None = None, columns: Any = None, top: int | None = None, by: str = "macs",
               **_: Any) -> str:
    """One row per table row (layers, containers and their own work), exact numbers."""
    chosen = check_columns(report, columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    numeric = {"params": "params", "macs": "macs", "flops": "flops", "backward_macs": "backward_macs",
               "saved": "saved_bytes", "time": "time_ms"}
    header = ["layer", "kind", "depth", "call"]
    for c in chosen:
        header.append(numeric.get(c, c))
    writer.writerow(header)
    ctx = _csv_context(report)
    for row in table_rows(report, depth, top, by):
        r = row.record
        cells: list[Any] = [r.name or "(model)", row.kind, row.depth, r.call]
        for c in chosen:
            if c in numeric:
                value = getattr(row, numeric[c])
                cells.append("" if value is None else value)
            elif c in ("input_shape", "output_shape"):
                cells.append("" if row.kind == "own" else shapes_text(r.input_shapes if c == "input_shape"
                                                                      else r.output_shapes))
            else:
                cells.append(COLUMNS[c].cell(row, ctx).strip("()"))
        writer.writerow(cells)
    return out.getvalue()


def _csv_context(report: Any) -> Any:
    from inspector.render import Context

    return Context(report.total_params, report.total_macs or 0, None, True, report.timing, False)


# --- comparisons ------------------------------------------------------------------------------------------

@output_format("table", "comparison")
def comparison_table(comparison: Any, **_: Any) -> str:
    return comparison.table("simple")


@output_format("markdown", "comparison")
def comparison_markdown(comparison: Any, **_: Any) -> str:
    return comparison.table("github")


@output_format("html", "comparison")
def comparison_html(comparison: Any, **_: Any) -> str:
    return comparison.table("html")


@output_format("json", "comparison")
def comparison_json(comparison: Any, **_: Any) -> str:
    return json.dumps(comparison.to_dict(), indent=1)


@output_format("csv", "comparison")
def comparison_csv(comparison: Any, **_: Any) -> str:
    return comparison.to_csv()
