"""The output formats of reports and comparisons, registered in ``inspector.output``.

Every report format shows the same rows: ``depth`` (how deep in the call tree) or ``top``/``by``
(the calls doing the most). The tables, CSV and HTML take ``columns`` too, and the tables and HTML
``exact``; JSON always carries every field, as exact numbers, and CSV exact numbers. Each format is
a pure function of the result's data.
"""
from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

from inspector.output import output_format
from inspector.render import Context, all_columns, check_columns, footer, render_report
from inspector.serving_text import generation_html
from inspector.units import shapes_text

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
            elif c in ("input_shape", "output_shape"):
                cells.append("" if row.kind == "own" else shapes_text(r.input_shapes if c == "input_shape"
                                                                      else r.output_shapes))
            else:
                cells.append(col.cell(row, ctx).strip("()"))
        writer.writerow(cells)
    return out.getvalue()


@output_format("html", "report")
def report_html(report: Any, exact: bool = False, **options: Any) -> str:
    table = render_report(report, tablefmt="html", exact=exact, with_footer=False, **options)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in footer(report, exact))
    serving = generation_html(report, exact)
    return (f"<div><p><b>{html.escape(report.summary_line())}</b></p>{table}"
            f"<ul style='font-size:smaller'>{items}</ul>{serving}</div>")


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


@output_format("html", "comparison")
def comparison_html(comparison: Any, **_: Any) -> str:
    return comparison.table("html")
