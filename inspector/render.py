"""The per-layer table and the lines around it: a pure function of a report's data.

Columns form a registry: one per figure (``inspector.figures``; plus ``<name>_pct`` for figures
with a share), and the descriptive ones registered here with ``@column`` (type, shapes, the
layer's configuration, the roofline). The rows come from ``inspector.rows``: the call tree cut at a
depth, or the calls doing the most of one figure.
"""
from __future__ import annotations

import inspect as pyinspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import tabulate as _tabulate

from inspector.figures import Figure, all_figures, lookup
from inspector.rows import Row
from inspector.serving_text import experts_line, generation_text
from inspector.units import human, milliseconds, number, pct, shapes_text, size

#: tabulate >= 0.10 takes ``preserve_whitespace=``; older releases read a module-wide switch.
_HAS_KWARG = "preserve_whitespace" in pyinspect.signature(_tabulate.tabulate).parameters
NBSP = "\u00a0"


@contextmanager
def _preserve_whitespace() -> Iterator[None]:
    """Keep indentation in cells; tabulate's module-wide switch is restored afterwards."""
    saved = getattr(_tabulate, "PRESERVE_WHITESPACE", False)
    _tabulate.PRESERVE_WHITESPACE = True
    try:
        yield
    finally:
        _tabulate.PRESERVE_WHITESPACE = saved


def tabulate(rows: Sequence[Sequence[Any]], headers: Sequence[str], tablefmt: str = "simple",
             colalign: Sequence[str] | None = None) -> str:
    """tabulate with indentation kept and no number parsing (cells are already formatted)."""
    if tablefmt not in _tabulate.tabulate_formats:
        raise ValueError(f"unknown table format {tablefmt!r}; tabulate knows: {', '.join(_tabulate.tabulate_formats)}")
    if _HAS_KWARG:
        return _tabulate.tabulate(rows, headers=headers, tablefmt=tablefmt, colalign=colalign,
                                  disable_numparse=True, preserve_whitespace=True)
    with _preserve_whitespace():
        return _tabulate.tabulate(rows, headers=headers, tablefmt=tablefmt, colalign=colalign,
                                  disable_numparse=True)


# --- columns -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """What a cell needs besides its row: the report (for totals and the roofline) and the units."""

    report: Any
    exact: bool


Cell = Callable[[Row, Context], str]


@dataclass(frozen=True)
class Column:
    header: str
    align: str
    cell: Cell
    figure: Figure | None = None  # the figure it shows (its total goes in the Total row)
    share: bool = False           # the figure's share of its total
    whole: bool = False           # a descriptive column whose Total is its cell for the whole model
    part: str = ""                # the part of the report its values come from ("timing": timing=True)

    @property
    def needs(self) -> str:
        """The part of the report that must have run for the column to show values ("" for any)."""
        return self.figure.needs if self.figure is not None else self.part


_DESCRIPTIVE: dict[str, Column] = {}


def column(name: str, header: str, align: str = "left", whole: bool = False, part: str = ""
           ) -> Callable[[Cell], Cell]:
    """Register a descriptive column (not a figure: figures get their columns from their registry);
    ``whole``: its Total row shows its value for the whole model (the model's own call); ``part``: the
    part of the report its values need ("timing")."""
    def bind(cell: Cell) -> Cell:
        if name in _DESCRIPTIVE:
            raise ValueError(f"column {name!r} is already registered")
        _DESCRIPTIVE[name] = Column(header, align, cell, whole=whole, part=part)
        return cell
    return bind


def _paren(row: Row, text: str) -> str:
    return f"({text})" if row.kind == "container" and text not in ("-", "") else text


def formatted(fig: Figure, value: Any, exact: bool) -> str:
    """A figure's value in its unit."""
    if value is None:
        return "-"
    if fig.unit == "bytes":
        return f"{value:,}" if exact else size(value)
    if fig.unit == "ms":
        return milliseconds(value)
    return number(value, exact)


def _figure_cell(fig: Figure) -> Cell:
    return lambda row, ctx: _paren(row, formatted(fig, row.values.get(fig.name), ctx.exact))


def _share_cell(fig: Figure) -> Cell:
    return lambda row, ctx: _paren(row, pct(row.values.get(fig.name), ctx.report.total(fig.name)))


def all_columns() -> dict[str, Column]:
    """Every column by name: the descriptive ones, then each figure's (and its share's), in
    registration order; aliases of figures are accepted by ``check_columns``."""
    out = {name: col for name, col in _DESCRIPTIVE.items() if name in ("type", "config", "input_shape", "output_shape")}
    for fig in all_figures():
        if fig.column:
            out[fig.name] = Column(fig.header, "right", _figure_cell(fig), fig)
            if fig.share:
                out[f"{fig.name}_pct"] = Column(f"{fig.header.split(' ')[0]} %", "right", _share_cell(fig), fig, True)
    out.update((name, col) for name, col in _DESCRIPTIVE.items() if name not in out)
    return out


def _resolve(name: str) -> str:
    """A column name, with a figure's alias (``time``, ``time_pct``, ``saved``) turned into its name."""
    base, share = (name[:-4], "_pct") if name.endswith("_pct") else (name, "")
    fig = lookup(base)
    return f"{fig.name}{share}" if fig is not None and fig.column else name


def default_columns(report: Any, timing: bool | None = None) -> list[str]:
    """Type and shapes, then every figure the report measured and marks as default (with its share)."""
    if not report.ran:  # parameters only: the module tree, no call figures
        return ["type", "params", "params_pct"]
    chosen = ["type", "input_shape", "output_shape"]
    with_time = report.timing is not None if timing is None else timing
    for fig in all_figures():
        wanted = fig.default(report) if callable(fig.default) else fig.default
        if not (fig.column and wanted and report.measured(fig.needs)) or (fig.needs == "timing" and not with_time):
            continue
        chosen.append(fig.name)
        if fig.share:
            chosen.append(f"{fig.name}_pct")
    if with_time and report.timing is not None:  # the roofline right after the last time column
        last = max(i for i, c in enumerate(chosen) if (lookup(c.removesuffix("_pct")) or _NONE).needs == "timing")
        roofline = ["gflops"] + (["mfu"] if report.timing.peak_gflops else []) + ["intensity"] + \
            (["bound"] if report.timing.ridge else [])
        chosen[last + 1:last + 1] = roofline
    return chosen


class _NONE:
    needs = ""


def check_columns(report: Any, names: Iterable[str] | str | None, timing: bool | None = None) -> list[str]:
    """The columns asked for (a list, or one string "params,macs"), each checked; the defaults else."""
    if isinstance(names, str):
        names = [c.strip() for c in names.split(",") if c.strip()]
    chosen = [_resolve(c) for c in names] if names is not None else default_columns(report, timing)
    known = all_columns()
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; choose from {', '.join(known)}")
    return chosen


@column("type", "Type")
def _type(row: Row, ctx: Context) -> str:
    return "" if row.kind == "own" else row.record.type


#: Rewrites that shorten a layer's ``extra_repr``: tuples of one repeated value, channel counts as
#: "in → out", the usual keyword names abbreviated, and the defaults that change no cost dropped.
_SHORTER = [
    (re.compile(r"\((\d+)(?:, \1)+\)"), r"\1"),
    (re.compile(r"^in_features=(\d+), out_features=(\d+)"), r"\1 → \2"),
    (re.compile(r"^(\d+), (\d+)(?=, kernel_size=)"), r"\1 → \2"),
    (re.compile(r"\bkernel_size="), "k="), (re.compile(r"\bstride="), "s="), (re.compile(r"\bpadding="), "p="),
    (re.compile(r"(?:^|, )(?:eps=1e-0[56]|momentum=0\.1|affine=True|bias=True|track_running_stats=True|"
                r"elementwise_affine=True|inplace=(?:True|False)|dilation=1|ceil_mode=False|approximate='none'|"
                r"padding_mode='zeros'|groups=1|output_padding=0)(?=,|$)"), ""),
    (re.compile(r"^, "), ""),
]
CONFIG_WIDTH = 40


def short_config(text: str, width: int = CONFIG_WIDTH) -> str:
    """A layer's configuration (its ``extra_repr()``'s first line) in at most ``width`` characters:
    "3, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False" -> "3 → 64, k=7, s=2, p=3, bias=False"."""
    for pattern, replacement in _SHORTER:
        text = pattern.sub(replacement, text)
    return text if len(text) <= width else text[:width - 1] + "…"


@column("config", "Config")
def _config(row: Row, ctx: Context) -> str:
    return "" if row.kind == "own" else short_config(row.record.config)


@column("input_shape", "Input shape")
def _input_shape(row: Row, ctx: Context) -> str:
    return "" if row.kind == "own" else shapes_text(row.record.input_shapes)


@column("output_shape", "Output shape")
def _output_shape(row: Row, ctx: Context) -> str:
    return "" if row.kind == "own" else shapes_text(row.record.output_shapes)


def _timed(row: Row) -> bool:
    return row.kind != "own" and row.record.inclusive.get("time_ms") is not None


@column("gflops", "GFLOP/s", "right", whole=True, part="timing")
def _gflops(row: Row, ctx: Context) -> str:
    value = row.record.achieved_gflops if _timed(row) else None
    return "-" if value is None else f"{value:.1f}"


@column("mfu", "MFU", "right", whole=True, part="timing")
def _mfu(row: Row, ctx: Context) -> str:
    t = ctx.report.timing
    value = row.record.achieved_gflops if _timed(row) else None
    return "-" if value is None or t is None or not t.peak_gflops else f"{100 * value / t.peak_gflops:.1f}%"


@column("intensity", "FLOP/B", "right", whole=True, part="timing")
def _intensity(row: Row, ctx: Context) -> str:
    value = row.record.arithmetic_intensity if _timed(row) else None
    return "-" if value is None else f"{value:.1f}"


@column("bound", "Bound", whole=True, part="timing")
def _bound(row: Row, ctx: Context) -> str:
    t = ctx.report.timing
    if not _timed(row) or t is None or t.ridge is None:
        return "-"
    return row.record.bound(t.peak_gflops, t.peak_gbytes_per_s) or "-"


# --- the table -------------------------------------------------------------------------------------------

def _label(row: Row, markdown: bool, flat: bool = False) -> str:
    """The row's name, indented by its depth in the tree (a top list is flat: full names)."""
    if flat:
        return f"{row.record.label} (own)" if row.kind == "own" else row.record.label
    indent = (NBSP * 2 if markdown else "  ") * row.depth
    return indent + ("(own)" if row.kind == "own" else row.record.label)


def total_cell(report: Any, col: Column, exact: bool) -> str:
    """The Total row's cell of a column: the report's total of its figure (100% for a share), or a
    ``whole`` column's value for the whole model."""
    if col.whole:
        roots = [r for r in report.layers if r.parent is None]
        return col.cell(Row(roots[0], "layer", 0), Context(report, exact)) if len(roots) == 1 else ""
    if col.figure is None or not report.measured(col.figure.needs):
        return ""
    total = report.total(col.figure.name)
    if col.share:
        return "100%" if total else ""
    return formatted(col.figure, total, exact) if total is not None else ""


def render_report(report: Any, depth: int | None = None, tablefmt: str = "simple", columns: Iterable[str] | None = None,
                  exact: bool = False, timing: bool | None = None, with_footer: bool = True, top: int | None = None,
                  by: str = "macs") -> str:
    chosen = check_columns(report, columns, timing)
    known = all_columns()
    markdown = tablefmt in ("github", "pipe")
    ctx = Context(report, exact)
    body = [[_label(row, markdown, flat=top is not None), *(known[c].cell(row, ctx) for c in chosen)]
            for row in report.shown_rows(depth, top, by)]
    body.append(["Total", *(total_cell(report, known[c], exact) for c in chosen)])
    headers = ["Layer", *(known[c].header for c in chosen)]
    align = ["left", *(known[c].align for c in chosen)]
    table = tabulate(body, headers, tablefmt, align)
    lines = footer(report, exact) if with_footer else []
    serving = generation_text(report, tablefmt, exact) if with_footer else []
    if not lines:
        return table
    if markdown:
        return "\n\n".join([table, "\n".join(f"- {line}" for line in lines), *serving])
    return "\n".join([table, *lines, *serving])


# --- the lines around the table --------------------------------------------------------------------------

def _inputs_text(report: Any) -> str:
    dtypes = report.run.input_dtypes
    parts = [f"[{', '.join(map(str, s))}] {d}" for s, d in zip(report.input_shapes, dtypes)]
    return ", ".join(parts[:3]) + (f" +{len(parts) - 3}" if len(parts) > 3 else "") or "-"


def _roofline_summary(report: Any) -> str | None:
    """The leaf calls' roofline verdicts, counted and weighed by time; None without per-call times."""
    t = report.timing
    time_by = {"compute": 0.0, "memory": 0.0}
    count = {"compute": 0, "memory": 0}
    for row in report.roofline():
        if row["bound"] in time_by:
            time_by[row["bound"]] += row["time_ms"]
            count[row["bound"]] += 1
    if not any(count.values()):
        return None
    total = sum(time_by.values()) or 1.0
    return (f"Roofline ({t.peak_source} peak {t.peak_gflops:,.1f} GFLOP/s, {t.peak_gbytes_per_s:,.1f} GB/s; ridge "
            f"{t.ridge:.1f} FLOP/B): {count['compute']} leaf calls compute-bound "
            f"({100 * time_by['compute'] / total:.0f}% of leaf time), {count['memory']} memory-bound "
            f"({100 * time_by['memory'] / total:.0f}%)")


def _timing_lines(report: Any) -> list[str]:
    t = report.timing
    lines = [f"Timing ({t.device}): plain forward {t.forward_ms:.3f} ms (mean of the middle half of {t.repeat})"]
    if t.profiled_ms is not None:
        verdict = "; launch-bound: the device was busy less than half the plain forward" if t.launch_bound else ""
        lines[0] += (f"; profiled pass {t.profiled_ms:.3f} ms ({100 * t.overhead:+.1f}% measuring overhead) = busy "
                     f"{t.busy_ms:.3f} + idle {t.idle_ms:.3f} ms, shared out among the calls{verdict}")
        lines.append("Per call: busy = the device running the call's own ops; idle = the device waiting, charged to "
                     "the call whose op ended the wait (after the last op, to the call the host was in); time = busy "
                     "+ idle; host = the host's time in the call itself")
    if t.note:
        lines.append(f"Timing: {t.note}")
    if report.mfu is not None:
        lines.append(f"Utilisation: {report.achieved_gflops:,.1f} GFLOP/s achieved over the plain forward = "
                     f"{100 * report.mfu:.1f}% of the {t.peak_source} peak {t.peak_gflops:,.1f} GFLOP/s (MFU)"
                     + _utilisation_caveats(report))
    if t.ridge:
        lines += filter(None, [_roofline_summary(report)])
    return lines


def _utilisation_caveats(report: Any) -> str:
    """What the MFU line needs said: the table's rates are over the profiled pass; a peak exceeded."""
    t, said = report.timing, ""
    if t.profiled_ms is not None:
        said += "; the table's GFLOP/s and MFU are over each call's time in the profiled pass (overhead included)"
    if report.mfu > 1:
        said += (f"; above 100%: the {t.peak_source} peak is not this device's for {report.dtype} (give its own: "
                 "peak=(GFLOP/s, GB/s), --peak), or the kernels did less than the FLOPs counted (a fused attention "
                 "skipping masked scores, a Winograd convolution)")
    return said


def footer(report: Any, exact: bool = False) -> list[str]:
    def n(v: int | None) -> str:
        return number(v, True) if exact or (v is not None and abs(v) < 1000) else f"{v:,} ({human(v)})"

    split = ("all trainable" if not report.frozen_params else "all frozen" if not report.trainable_params else
             f"{n(report.trainable_params)} trainable + {n(report.frozen_params)} frozen")
    lines = [f"Params: {n(report.total_params)}{', ' if split.startswith('all') else ' = '}"
             f"{split}; buffers: {report.buffer_elements:,} elements ({size(report.buffer_bytes)}); parameter memory "
             f"{size(report.param_bytes)}"]
    if report.ran:
        flops = "2 x MACs" if report.run.flops == "matmul" else "2 x MACs + elementwise work (flops='all')"
        lines.append(f"MACs: {n(report.total_macs)}; FLOPs = {flops} = {n(report.total_flops)}")
        peak = "" if report.training is not None else f"; peak activations {size(report.peak_activation_bytes)}"
        lines.append(f"Input: {_inputs_text(report)}; ran on {report.device} in {report.dtype} ({report.mode} mode)"
                     + peak)
    lines += experts_line(report)
    if report.training is not None:
        tr, mem = report.training, report.training.memory
        lines.append(f"Training step (loss {tr.loss}, optimizer {tr.optimizer or 'none'}"
                     f"{', autocast ' + tr.autocast if tr.autocast else ''}): backward "
                     f"{n(tr.total_backward_macs)} MACs, {n(tr.total_backward_flops)} FLOPs")
        lines.append(f"Step memory: parameters {size(mem.parameters)}, gradients {size(mem.gradients)}, optimizer "
                     f"state {size(mem.optimizer_state)}, saved activations {size(mem.activations)}; peak of the step "
                     f"{size(mem.peak)}, in {mem.peak_phase or '?'} (everything live at once)")
    if report.timing is not None:
        lines += _timing_lines(report)
    with_params = [(name, p) for name, p in report.uncalled if p]
    without = len(report.uncalled) - len(with_params)
    if with_params:
        listed = ", ".join(f"{name} ({human(p)} params)" for name, p in with_params[:4])
        more = f" and {len(with_params) - 4} more" if len(with_params) > 4 else ""
        lines.append(f"Not called as modules (their params are on the caller's row): {listed}{more}"
                     + (f"; {without} parameterless modules not called either" if without else ""))
    if report.ran and not report.complete:
        problems = [f"{op} x{calls}" for op, calls in report.uncounted_ops.items()]
        problems += [f"{op} (formula failed)" for op in report.formula_errors]
        lines.append("INCOMPLETE: ops whose work was not counted, totals are low: " + ", ".join(problems)
                     + "; give them a formula: inspector.op_formula(...)")
    if not report.ran:
        lines.append("MACs: not counted (the model did not run)")
    lines += [f"Note: {note}" for note in report.notes]
    return lines


# --- totals by layer type ---------------------------------------------------------------------------------

def by_type_columns(report: Any, columns: Iterable[str] | str | None = None) -> list[str]:
    """The figure columns of a by-type table: those asked for, else the report's default figures."""
    known = all_columns()
    return [c for c in check_columns(report, columns) if known[c].figure is not None]


def render_by_type(by_type: Any, tablefmt: str = "simple", columns: Iterable[str] | None = None, exact: bool = False,
                   with_footer: bool = True) -> str:
    """Calls and figures per layer type, a Total row, and the report's footer lines."""
    report = by_type.report
    chosen = by_type_columns(report, columns)
    known = all_columns()
    ctx = Context(report, exact)
    body = [[t.type, f"{t.calls:,}", *(known[c].cell(row, ctx) for c in chosen)]
            for t, row in zip(by_type, by_type.rows())]
    body.append(["Total", f"{sum(t.calls for t in by_type):,}", *(total_cell(report, known[c], exact) for c in chosen)])
    table = tabulate(body, ["Type", "Calls", *(known[c].header for c in chosen)], tablefmt,
                     ["left", "right", *(known[c].align for c in chosen)])
    lines = footer(report, exact) if with_footer else []
    if tablefmt in ("github", "pipe") and lines:
        return table + "\n\n" + "\n".join(f"- {line}" for line in lines)
    return "\n".join([table, *lines])
