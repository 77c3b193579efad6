"""The output formats of reports and comparisons, registered in ``inspector.output``.

Every report format shows the same rows: ``depth`` (how deep in the call tree) or ``top``/``by``
(the calls doing the most). The tables, CSV and HTML take ``columns`` too, and the tables and HTML
``exact``; JSON always carries every field, as exact numbers, and CSV exact numbers. Each format is
a pure function of the result's data.
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

from inspector.output import output_format
from inspector.render import Context, all_columns, by_type_columns, check_columns, render_by_type, render_report
from inspector.units import pct, shapes_text

# --- reports --------------------------------------------------------------------------------------------


@output_format("table", "report")
def report_table(report: Any, tablefmt: str = "simple", **options: Any) -> str:
    return render_report(report, tablefmt=tablefmt, **options)


@output_format("markdown", "report")
def report_markdown(report: Any, **options: Any) -> str:
    return render_report(report, tablefmt="github", **options)


@output_format("json", "report")
def report_json(report: Any, depth: int | None = None, top: int | None = None, by: str = "macs", **_: Any) -> str:
    return json.dumps(report.to_dict(depth, top, by), indent=1)


@output_format("csv", "report")
def report_csv(report: Any, depth: int | None = None, columns: Any = None, top: int | None = None, by: str = "macs",
               **_: Any) -> str:
    """One row per table row (layers, containers and their own work), exact numbers; a figure's
    column is headed by the figure's name."""
    chosen = check_columns(report, columns)
    known = all_columns()
    ctx = Context(report, exact=True)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["layer", "kind", "depth", "call", *chosen])
    for row in report.shown_rows(depth, top, by):
        r = row.record
        cells: list[Any] = [r.name or "(model)", row.kind, row.depth, r.call]
        for c in chosen:
            col = known[c]
            if col.figure is not None and not col.share:
                value = row.values.get(col.figure.name)
                cells.append("" if value is None else value)
            elif c == "config":  # the layer's whole configuration, as data (the tables shorten it)
                cells.append("" if row.kind == "own" else r.config)
            elif c in ("input_shape", "output_shape"):
                cells.append("" if row.kind == "own" else shapes_text(r.input_shapes if c == "input_shape"
                                                                      else r.output_shapes))
            else:
                cells.append(col.cell(row, ctx).strip("()"))
        writer.writerow(cells)
    return out.getvalue()


# The report's "html" format is its page: inspector.page.


# --- totals by layer type ---------------------------------------------------------------------------------

@output_format("table", "by_type")
def by_type_table(by_type: Any, tablefmt: str = "simple", **options: Any) -> str:
    return render_by_type(by_type, tablefmt=tablefmt, **_only(options, "columns", "exact"))


@output_format("markdown", "by_type")
def by_type_markdown(by_type: Any, **options: Any) -> str:
    return render_by_type(by_type, tablefmt="github", **_only(options, "columns", "exact"))


@output_format("csv", "by_type")
def by_type_csv(by_type: Any, columns: Any = None, **_: Any) -> str:
    """One row per layer type: its calls and the chosen figures, exact."""
    chosen = by_type_columns(by_type.report, columns)
    known = all_columns()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["type", "calls", *chosen])
    for t in by_type:
        writer.writerow([t.type, t.calls, *(_csv_value(by_type.report, known[c], t.values) for c in chosen)])
    return out.getvalue()


@output_format("json", "by_type")
def by_type_json(by_type: Any, **_: Any) -> str:
    """Every layer type with its calls and every figure, exact."""
    return json.dumps({"model": by_type.report.model, "types": [
        {"type": t.type, "calls": t.calls, **t.values} for t in by_type]}, indent=1)


def _only(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in names}


def _csv_value(report: Any, col: Any, values: Any) -> Any:
    """A figure exactly, a share as the table shows it."""
    value = values.get(col.figure.name)
    if col.share:
        return pct(value, report.total(col.figure.name))
    return "" if value is None else value


# --- comparisons ------------------------------------------------------------------------------------------

@output_format("table", "comparison")
def comparison_table(comparison: Any, **_: Any) -> str:
    return comparison.table("simple")


@output_format("markdown", "comparison")
def comparison_markdown(comparison: Any, **_: Any) -> str:
    return comparison.table("github")


@output_format("json", "comparison")
def comparison_json(comparison: Any, **_: Any) -> str:
    return json.dumps(comparison.to_dict(), indent=1)


@output_format("csv", "comparison")
def comparison_csv(comparison: Any, **_: Any) -> str:
    return comparison.to_csv()

# A comparison's "html" format is its page: inspector.page.
