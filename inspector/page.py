"""The HTML page of a report (and of a comparison): one self-contained file, nothing fetched.

A report's page holds: the totals as cards; a treemap of where the MACs go (and every other figure
the report measured: time, bytes, backward work, parameters), drawn from the call tree; the call
tree as a table that folds and unfolds, sorts siblings by any column, shows shares as inline bars,
numbers right-aligned and names left; the training step and timing when present; the totals by
layer type; the cross-check and notes. Columns come from the figure registry (``render.all_columns``),
so a new figure shows up here without a change to this module. Every tree row carries ``data-name``
and ``data-parent`` (the layer's label and its parent's) and ``data-index``/``data-pindex``.

``fragment=True`` gives the same page as an element to embed (a notebook's ``_repr_html_``): styles
scoped to ``.insp``, the script wiring every page root it finds not yet wired.
"""
from __future__ import annotations

import html
from dataclasses import fields
from typing import Any

from inspector import treemap
from inspector.figures import Figure, all_figures
from inspector.output import output_format
from inspector.page_static import CSS, JS
from inspector.render import Context, all_columns, by_type_columns, check_columns, footer, formatted, total_cell
from inspector.rows import Row, rows as tree_rows
from inspector.serving_text import generation_html
from inspector.units import human, pct, size

#: The most rows the folded tree shows at first when no depth is asked for.
USEFUL_ROWS = 40
_SECTIONS = {"training": ("Training step", "Step memory"), "timing": ("Timing", "Per call", "Utilisation", "Roofline")}
esc = html.escape


def useful_depth(layers: Any, most: int = USEFUL_ROWS) -> int | None:
    """The deepest level at which the tree shows at most ``most`` rows (at least one level below the
    model when it has children); None when the whole tree fits."""
    deepest = max((r.depth for r in layers), default=0)
    for depth in range(deepest + 1):
        if len(tree_rows(layers, depth)) > most:
            return max(depth - 1, min(1, deepest))
    return None


def page_columns(report: Any, columns: Any, timing: bool | None) -> list[str]:
    """The columns asked for, else the table's defaults with the layer's configuration after its type."""
    chosen = check_columns(report, columns, timing)
    if columns is None and "type" in chosen and "config" not in chosen:
        chosen.insert(chosen.index("type") + 1, "config")
    return chosen


# --- pieces ----------------------------------------------------------------------------------------------

def _attrs(**values: Any) -> str:
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(str(v))}"' for k, v in values.items() if v is not None)


def _numel(shapes: Any) -> Any:
    if not shapes or not isinstance(shapes[0], (tuple, list)) or not all(isinstance(d, int) for d in shapes[0]):
        return ""
    n = 1
    for d in shapes[0]:
        n *= d
    return n


def _cell(name: str, row: Row, ctx: Context, known: dict) -> str:
    col = known[name]
    fig = col.figure
    if fig is not None and col.share:
        value, whole = row.values.get(fig.name), ctx.report.total(fig.name)
        share = value / whole if value is not None and whole else None
        width = 0.0 if share is None else max(0.0, min(100.0, 100 * share))
        return (f'<td class="num share"{_attrs(data_v="" if share is None else f"{share:.6g}")}>'
                f'<span class="bar" style="width:{width:.1f}%"></span>'
                f'<span class="pct">{esc(pct(value, whole))}</span></td>')
    if fig is not None:
        value = row.values.get(fig.name)
        return f'<td class="num"{_attrs(data_v="" if value is None else value)}>' \
               f'{esc(formatted(fig, value, ctx.exact))}</td>'
    if row.kind == "own":
        return '<td data-v=""></td>'
    text = col.cell(row, ctx)
    if name == "config":
        return f'<td class="cfg"{_attrs(data_v=text, title=row.record.config or None)}>{esc(text)}</td>'
    if name in ("input_shape", "output_shape"):
        shapes = row.record.input_shapes if name == "input_shape" else row.record.output_shapes
        return f'<td class="shape"{_attrs(data_v=_numel(shapes))}>{esc(text)}</td>'
    klass = ' class="num"' if col.align == "right" else ""
    value = text.replace(",", "") if col.align == "right" and text not in ("-", "") else text
    return f'<td{klass}{_attrs(data_v="" if text == "-" else value)}>{esc(text)}</td>'


def _table(report: Any, shown: list[Row], chosen: list[str], exact: bool, mode: str, fold: int | None,
           css: str = "tree") -> str:
    """The rows as a table: ``mode`` "tree" (folding, siblings sorted together) or "flat"."""
    known = all_columns()
    ctx = Context(report, exact)
    labels = {r.index: r.label for r in report.layers}
    has_kids = {r.parent for r in report.layers if r.parent is not None}
    head = "".join(f'<th class="{"num" if known[c].align == "right" else "txt"}" data-col="{esc(c)}">'
                   f'{esc(known[c].header)}</th>' for c in chosen)
    body = []
    for order, row in enumerate(shown):
        r = row.record
        own = row.kind == "own"
        parent = r.index if own else r.parent
        folder = mode == "tree" and not own and r.index in has_kids
        closed = folder and fold is not None and row.depth >= fold
        hidden = mode == "tree" and fold is not None and row.depth > fold
        klass = " ".join(k for k in ("own" if own else "", "closed" if closed else "") if k)
        name = "(own)" if own and mode == "tree" else f"{r.label} (own)" if own else r.label
        toggle = '<button class="tog" aria-label="fold or unfold"></button>' if folder else \
            '<span class="leaf"></span>' if mode == "tree" else ""
        indent = f' style="--d:{row.depth}"' if mode == "tree" else ""
        cells = "".join(_cell(c, row, ctx, known) for c in chosen)
        body.append(
            f'<tr{_attrs(class_=klass or None)}'
            f'{_attrs(data_index=r.index, data_pindex="" if parent is None else parent)}'
            f'{_attrs(data_name=r.label, data_parent="" if parent is None else labels[parent])}'
            f'{_attrs(data_depth=row.depth, data_kind=row.kind, data_order=order, data_type=r.type)}'
            f'{" hidden" if hidden else ""}><td class="name"{indent} data-v="{esc(name)}">{toggle}{esc(name)}</td>'
            f'{cells}</tr>')
    total = "".join(f'<td class="{"num" if known[c].align == "right" else "txt"}">'
                    f'{esc(total_cell(report, known[c], exact))}</td>' for c in chosen)
    return (f'<div class="scroll"><table class="{css} sortable" data-mode="{mode}"><thead><tr>'
            f'<th class="txt" data-col="layer">Layer</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f'<tfoot><tr><td>Total</td>{total}</tr></tfoot></table></div>')


def short_label(record: Any) -> str:
    """The last part of a call's name ("conv1"), with its parent's when the last is a number ("layer4.0")."""
    if not record.name:
        return record.label
    parts = record.name.split(".")
    keep = 2 if parts[-1].isdigit() and len(parts) > 1 else 1
    return ".".join(parts[-keep:]) + (f"#{record.call}" if record.call else "")


def map_figures(report: Any) -> list[Figure]:
    """The figures worth a map: those with a share (MACs, time, parameters), a size, and the training
    step's, that add up over the calls (not a peak), that the report measured and that add up to more
    than nothing; MACs first, parameters last."""
    found = [f for f in all_figures() if f.rank and f.column and f.fold == "sum" and (f.derive is None or f.share)
             and report.measured(f.needs) and (f.share or f.unit == "bytes" or f.needs == "training")
             and (report.total(f.name) or 0) > 0]
    order = lambda f: (0 if f.name == "macs" else 1 if f.unit == "ms" else 2 if f.unit == "bytes"  # noqa: E731
                       else 3 if f.needs == "training" else 4)
    return sorted(found, key=order)


def _value_text(fig: Figure, value: float) -> str:
    return size(value) if fig.unit == "bytes" else f"{value:.3f} ms" if fig.unit == "ms" else human(value)


def _map_section(report: Any) -> str:
    figs = map_figures(report)
    if not figs or not report.layers:
        return ""
    by_index = {r.index: r for r in report.layers}
    buttons, maps, legends = [], [], []
    for i, fig in enumerate(figs):
        total = report.total(fig.name)
        boxes = treemap.layout(report.layers, fig.name)

        def tooltip(b: treemap.Box, fig: Figure = fig, total: float = total) -> str:
            r = by_index[b.index]
            what = f"{r.label} (own work)" if b.own else f"{r.label} ({r.type})"
            return f"{what}: {_value_text(fig, b.value)} {fig.header}, {pct(b.value, total)} of the model"

        def label(b: treemap.Box) -> str:
            return "(own)" if b.own else short_label(by_index[b.index])

        legend = (f"Area: each call's share of the model's {fig.header} ({_value_text(fig, total)}); a call's "
                  "children and its own work lie inside it. Click a box to find it in the table.")
        legends.append(legend)
        state = _attrs(class_="on" if i == 0 else None, data_map_button=fig.name, data_legend=legend)
        buttons.append(f"<button{state}>{esc(fig.header)}</button>")
        maps.append(treemap.svg(boxes, label, tooltip, fig.name, hidden=i > 0))
    return (f'<h2>Where the cost goes</h2><div class="controls">{"".join(buttons)}</div>'
            f'<p class="legend map-legend">{esc(legends[0])}</p>{"".join(maps)}')


def _cards(report: Any) -> str:
    items = [("Parameters", human(report.total_params)),
             ("Parameter memory", size(report.param_bytes))]
    if report.frozen_params:
        items.insert(1, ("Trainable", human(report.trainable_params)))
    if report.ran:
        items += [("MACs", human(report.total_macs)), ("FLOPs", human(report.total_flops))]
    tr = report.training
    if tr is not None:
        items += [("Backward MACs", human(tr.total_backward_macs)), ("Backward FLOPs", human(tr.total_backward_flops)),
                  ("Step peak memory", size(tr.memory.peak))]
    elif report.ran and report.peak_activation_bytes is not None:
        items.append(("Peak activations", size(report.peak_activation_bytes)))
    forward_ms = getattr(report.timing, "forward_ms", None)
    if forward_ms is not None:
        items.append(("Forward time", f"{forward_ms:.3f} ms"))
    return '<div class="cards">' + "".join(f'<div class="card"><span>{esc(k)}</span><b>{esc(v)}</b></div>'
                                           for k, v in items) + "</div>"


def _header(report: Any) -> str:
    state = ('<span class="good">complete: every op counted</span>' if report.complete else
             '<span class="bad">INCOMPLETE: some ops were not counted, totals are low</span>' if report.ran else
             '<span class="bad">not run: parameters only</span>')
    shapes = ", ".join("[" + ", ".join(map(str, s)) + f"] {d}" for s, d in zip(report.input_shapes,
                                                                                report.run.input_dtypes))
    sub = f"{shapes or 'no input'} on {report.device} in {report.dtype} ({report.mode} mode) · {state}"
    return f'<h1>{esc(report.model)}</h1><p class="sub">{sub}</p>{_cards(report)}'


def _training_section(report: Any) -> str:
    tr = report.training
    if tr is None:
        return ""
    mem = tr.memory
    parts = [("parameters", mem.parameters, "#7aa6d8"), ("gradients", mem.gradients, "#e3a15c"),
             ("optimizer state", mem.optimizer_state, "#9ccf8f"), ("saved activations", mem.activations, "#c49bd8")]
    whole = max(mem.peak, sum(p[1] for p in parts)) or 1
    stack = "".join(f'<div title="{esc(n)}: {esc(size(v))}" style="width:{100 * v / whole:.2f}%;background:{c}"></div>'
                    for n, v, c in parts if v)
    rows = "".join(f'<tr><td><span style="color:{c}">■</span> {esc(n)}</td><td class="num">{esc(size(v))}</td>'
                   f'<td class="num">{esc(pct(v, mem.peak))}</td></tr>' for n, v, c in parts)
    rows += (f'<tr><td><b>peak of the step</b> (in {esc(mem.peak_phase or "?")}: everything live at once)</td>'
             f'<td class="num"><b>{esc(size(mem.peak))}</b></td><td class="num">100%</td></tr>')
    lines = [line for line in footer(report) if line.startswith(_SECTIONS["training"])]
    return (f'<h2>Training step</h2><ul class="facts">{"".join(f"<li>{esc(x)}</li>" for x in lines)}</ul>'
            f'<div class="stack">{stack}</div><p class="legend">Each part measured; they are not all live at '
            f'the same moment (activations are freed as gradients appear), so they may add up to more than the '
            f'peak.</p><table><thead><tr><th>memory</th><th class="num">bytes</th>'
            f'<th class="num">of the peak</th></tr></thead><tbody>{rows}</tbody></table>')


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    return "-" if value is None else str(value)


def _timing_section(report: Any) -> str:
    t = report.timing
    if t is None:
        return ""
    items = [(f.name, getattr(t, f.name)) for f in fields(t)]
    items += [(name, getattr(t, name)) for name in dir(type(t))
              if isinstance(getattr(type(t), name, None), property) and not name.startswith("_")]
    rows = "".join(f'<tr><td>{esc(k)}</td><td class="num">{esc(_plain(v))}</td></tr>' for k, v in items)
    lines = [line for line in footer(report) if line.startswith(_SECTIONS["timing"])]
    return (f'<h2>Timing</h2><ul class="facts">{"".join(f"<li>{esc(x)}</li>" for x in lines)}</ul>'
            f'<table><tbody>{rows}</tbody></table>')


def _serving_section(report: Any, exact: bool) -> str:
    """The prefill and decode steps of a generation (when the report has one)."""
    text = generation_html(report, exact)
    return f"<h2>Generation</h2>{text}" if text else ""


def _by_type_section(report: Any, exact: bool) -> str:
    if not report.layers:
        return ""
    by_type = report.by_type()
    return (f'<details open><summary>By layer type ({len(by_type)} types)</summary>'
            f'{by_type_table(by_type, exact=exact)}</details>')


def _facts_section(report: Any, exact: bool) -> str:
    skip = _SECTIONS["training"] + _SECTIONS["timing"]
    lines = [line for line in footer(report, exact) if not line.startswith(skip)]
    check = report.crosscheck()
    klass = "good" if not check else "bad"
    checked = "".join(f"<li>{esc(line)}</li>" for line in str(check).splitlines())
    return (f'<h2>Totals and notes</h2><ul class="facts">{"".join(f"<li>{esc(x)}</li>" for x in lines)}</ul>'
            f'<ul class="facts {klass}">{checked}</ul>')


def wrap(body: str, title: str, fragment: bool) -> str:
    """A whole document, or (``fragment``) one element to embed; the style and script inline."""
    if fragment:
        return f'<div class="insp"><style>{CSS}</style>{body}</div><script>{JS}</script>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f'<body><div class="insp">{body}</div><script>{JS}</script></body></html>\n')


# --- the formats -----------------------------------------------------------------------------------------

@output_format("html", "report")
def report_page(report: Any, depth: int | None = None, columns: Any = None, exact: bool = False, top: int | None = None,
                by: str = "macs", timing: bool | None = None, fragment: bool = False, **_: Any) -> str:
    """The report as a page; ``depth`` folds the tree there (default: a depth showing at most
    ``USEFUL_ROWS`` rows), ``top`` lists the calls doing the most of ``by`` instead."""
    chosen = page_columns(report, columns, timing)
    if top is not None:
        table = _table(report, report.shown_rows(depth, top, by), chosen, exact, "flat", None)
        title = f"The {top} calls doing the most {report.figure(by).header} (the Total row: the whole model)"
        controls = ""
    else:
        tree_rows(report.layers, depth)  # checks depth
        fold = depth if depth is not None else useful_depth(report.layers)
        table = _table(report, tree_rows(report.layers, None), chosen, exact, "tree", fold)
        title = "Call tree"
        deepest = max((r.depth for r in report.layers), default=0)
        levels = "".join(f'<button data-depth-button="{d}">{d}</button>' for d in range(min(deepest, 8) + 1))
        controls = (f'<div class="controls">Unfold to depth: {levels}<button data-depth-button="all">all</button>'
                    f'<span class="legend">· click ▸ to fold or unfold a call, a column header to sort siblings; '
                    f"a row's figures include everything below it</span></div>")
    body = "".join([_header(report), _map_section(report), f"<h2>{esc(title)}</h2>{controls}{table}",
                    _training_section(report), _timing_section(report), _serving_section(report, exact),
                    _by_type_section(report, exact),
                    _facts_section(report, exact)])
    return wrap(body, f"inspector: {report.model}", fragment)


def by_type_table(by_type: Any, columns: Any = None, exact: bool = False) -> str:
    """The by-type rows as a sortable table (their figures are the own figures of every call of a type)."""
    report = by_type.report
    chosen = by_type_columns(report, columns)
    known = all_columns()
    ctx = Context(report, exact)
    head = "".join(f'<th class="{"num" if known[c].align == "right" else "txt"}">{esc(known[c].header)}</th>'
                   for c in chosen)
    body = []
    for order, (t, row) in enumerate(zip(by_type, by_type.rows())):
        cells = "".join(_cell(c, row, ctx, known) for c in chosen)
        body.append(f'<tr data-order="{order}" data-type="{esc(t.type)}"><td data-v="{esc(t.type)}">{esc(t.type)}</td>'
                    f'<td class="num" data-v="{t.calls}">{t.calls:,}</td>{cells}</tr>')
    total = "".join(f'<td class="num">{esc(total_cell(report, known[c], exact))}</td>' for c in chosen)
    calls = sum(t.calls for t in by_type)
    return (f'<div class="scroll"><table class="bytype sortable" data-mode="flat"><thead><tr><th class="txt">Type</th>'
            f'<th class="num">Calls</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f'<tfoot><tr><td>Total</td><td class="num">{calls:,}</td>{total}</tr></tfoot></table></div>')


@output_format("html", "by_type")
def by_type_page(by_type: Any, columns: Any = None, exact: bool = False, fragment: bool = False, **_: Any) -> str:
    report = by_type.report
    body = f'{_header(report)}<h2>By layer type</h2>{by_type_table(by_type, columns, exact)}'
    return wrap(body, f"inspector: {report.model} by layer type", fragment)


@output_format("html", "comparison")
def comparison_page(comparison: Any, fragment: bool = False, **_: Any) -> str:
    """The comparison's table (sortable, numbers right-aligned, far rows marked) and its plot."""
    headers, aligns, rows = comparison.cells()
    head = "".join(f'<th class="{"num" if a == "right" else "txt"}">{esc(h)}</th>' for h, a in zip(headers, aligns))
    body = []
    for order, (r, cells) in enumerate(zip(comparison.rows, rows)):
        far = " far" if r.far() else ""
        tds = "".join(f'<td class="{"num" if a == "right" else "txt"}{far if h.startswith(("Δ", "Params")) else ""}"'
                      f'{_attrs(data_v="" if raw is None else raw)}>{esc(text)}</td>'
                      for h, a, (text, raw) in zip(headers, aligns, cells))
        body.append(f'<tr data-order="{order}" data-name="{esc(r.name)}">{tds}</tr>')
    table = (f'<div class="scroll"><table class="compare sortable" data-mode="flat"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    notes = "".join(f"<li>{esc(line)}</li>" for line in comparison.footnotes())
    plot = _comparison_plot(comparison)
    style = "<style>.insp td.far{color:#b42318;font-weight:600}</style>"
    page = (f"{style}<h1>Comparison of {len(comparison)} models</h1>{table}<ul class='facts'>{notes}</ul>"
            f"<h2>Plot</h2>{plot}")
    return wrap(page, "inspector: comparison", fragment)


def _comparison_plot(comparison: Any) -> str:
    from inspector.errors import InspectorError

    try:
        from inspector.plot import pareto_svg

        svg, account = pareto_svg(comparison)
    except InspectorError as exc:
        return f'<p class="legend">No plot: {esc(str(exc))}</p>'
    return f'<div class="plot">{svg}</div><p class="legend">{esc(account)}</p>'
