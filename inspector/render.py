"""The per-layer table and the lines around it; a pure function of a report's data.

Rows follow the call tree down to ``depth``. A row whose children are shown is a *container*: its
cells give its inclusive figures in parentheses, and its own work (a matmul in its forward,
parameters of submodules that never ran) gets a row of its own, ``(own)``, just below. Every other
row gives its own figures plus those of hidden descendants, so that those rows always sum to the
totals, at every depth.
"""
from __future__ import annotations

import inspect as pyinspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import tabulate as _tabulate

from inspector.records import LayerRecord

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
    if _HAS_KWARG:
        return _tabulate.tabulate(rows, headers=headers, tablefmt=tablefmt, colalign=colalign,
                                  disable_numparse=True, preserve_whitespace=True)
    with _preserve_whitespace():
        return _tabulate.tabulate(rows, headers=headers, tablefmt=tablefmt, colalign=colalign,
                                  disable_numparse=True)


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'; below 1000 the number itself."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            value = n / scale
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            return f"{value:.{digits}f} {suffix}{unit}"
    return f"{n:,.0f} {unit}".rstrip() if float(n).is_integer() else f"{n:.3g} {unit}".rstrip()


def size(nbytes: int | None) -> str:
    """Bytes in decimal units (kB, MB, GB), as the summary line gives them."""
    return human(nbytes, "B")


def number(n: int | None, exact: bool) -> str:
    if n is None:
        return "-"
    return f"{n:,}" if exact else human(n)


def shapes_text(shapes: Sequence[Any]) -> str:
    if not shapes:
        return "-"

    def one(s: Any) -> str:
        if isinstance(s, (tuple, list)) and s and isinstance(s[0], (tuple, list)):
            return "nested(" + ", ".join(one(c) for c in s[:2]) + (", ..." if len(s) > 2 else "") + ")"
        return "[" + ", ".join(map(str, s)) + "]"

    text = ", ".join(one(s) for s in shapes[:2])
    return text + (f" +{len(shapes) - 2}" if len(shapes) > 2 else "")


# --- rows ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the table: ``kind`` is "layer" (summable), "container" (inclusive, children shown
    below) or "own" (a container's own work, summable)."""

    record: LayerRecord
    kind: str
    depth: int
    params: int
    macs: int
    flops: int
    time_ms: float | None
    backward_macs: int | None
    saved_bytes: int | None


def rows(layers: Sequence[LayerRecord], depth: int | None) -> list[Row]:
    """The rows shown at ``depth`` (None: every call), with hidden calls folded into their shown
    ancestor."""
    shown = [depth is None or r.depth <= depth for r in layers]
    has_shown_child = [False] * len(layers)
    owner = list(range(len(layers)))
    for r in layers:
        if r.parent is not None:
            if shown[r.index]:
                has_shown_child[r.parent] = True
            else:
                owner[r.index] = owner[r.parent]
    folded: dict[int, list[Any]] = {}
    for r in layers:
        acc = folded.setdefault(owner[r.index], [0, 0, 0, 0, 0])
        acc[0] += r.params
        acc[1] += r.macs
        acc[2] += r.flops
        acc[3] += r.backward_macs or 0
        acc[4] += r.saved_bytes or 0
    bw = bool(layers) and layers[0].backward_macs is not None
    out = []
    for r in layers:
        if not shown[r.index]:
            continue
        own = folded[r.index]
        if has_shown_child[r.index]:
            out.append(Row(r, "container", r.depth, r.inclusive_params, r.inclusive_macs, r.inclusive_flops,
                           r.time_ms, r.inclusive_backward_macs, r.inclusive_saved_bytes))
            if own[0] or own[1] or own[2] or own[3] or own[4]:
                out.append(Row(r, "own", r.depth + 1, own[0], own[1], own[2], r.self_time_ms,
                               own[3] if bw else None, own[4] if bw else None))
        else:
            out.append(Row(r, "layer", r.depth, own[0], own[1], own[2], r.time_ms, own[3] if bw else None,
                           own[4] if bw else None))
    return out


#: What a top list ranks by: the row's own figure (its folded figure at a depth).
RANKS = {"macs": "macs", "flops": "flops", "params": "params", "time": "time_ms", "backward_macs": "backward_macs",
         "saved_bytes": "saved_bytes"}


def check_rank(report: Any, by: str) -> None:
    """``by`` is a rank the report has figures for (times need timing, backward figures a step)."""
    if by not in RANKS:
        raise ValueError(f"ranking by {by!r}: choose from {', '.join(RANKS)}")
    if by == "time" and report.timing is None:
        raise ValueError("ranking by time needs per-layer times: inspect with timing=True (--timing)")
    if by in ("backward_macs", "saved_bytes") and report.training is None:
        raise ValueError(f"ranking by {by} needs a training step: inspect with backward=True (--backward)")


def top_rows(report: Any, k: int, by: str = "macs", depth: int | None = None) -> list[Row]:
    """The ``k`` rows doing the most of ``by`` among those shown at ``depth`` (own work, with hidden
    descendants folded in; containers are not ranked, their own-work rows are)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top must be a positive int, got {k!r}")
    check_rank(report, by)
    attr = RANKS[by]
    summable = [row for row in rows(report.layers, depth) if row.kind != "container"]
    ranked = sorted((row for row in summable if getattr(row, attr)), key=lambda row: getattr(row, attr),
                    reverse=True)
    return ranked[:k]


def table_rows(report: Any, depth: int | None = None, top: int | None = None, by: str = "macs") -> list[Row]:
    """The rows a table, CSV or JSON shows: the call tree to ``depth``, or its ``top`` rows by ``by``."""
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 0):
        raise ValueError(f"depth must be a non-negative int or None, got {depth!r}")
    return top_rows(report, top, by, depth) if top is not None else rows(report.layers, depth)


# --- columns -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    total_params: int
    total_macs: int
    total_time: float | None
    exact: bool
    timing: Any
    markdown: bool


Cell = Callable[[Row, Context], str]


@dataclass(frozen=True)
class Column:
    header: str
    align: str
    cell: Cell


def _paren(row: Row, text: str) -> str:
    return f"({text})" if row.kind == "container" and text not in ("-", "") else text


def _pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return "-"
    share = 100 * part / whole
    if share == 0:
        return "0%"
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def _roofline(row: Row, ctx: Context, what: str) -> str:
    r = row.record
    if row.kind == "own" or r.time_ms is None:
        return "-"
    if what == "gflops":
        return "-" if r.achieved_gflops is None else f"{r.achieved_gflops:.1f}"
    if what == "intensity":
        return "-" if r.arithmetic_intensity is None else f"{r.arithmetic_intensity:.1f}"
    t = ctx.timing
    if t is None or t.ridge is None:
        return "-"
    return r.bound(t.peak_gflops, t.peak_gbytes_per_s) or "-"


COLUMNS: dict[str, Column] = {
    "type": Column("Type", "left", lambda row, ctx: "" if row.kind == "own" else row.record.type),
    "input_shape": Column("Input shape", "left", lambda row, ctx: "" if row.kind == "own"
                          else shapes_text(row.record.input_shapes)),
    "output_shape": Column("Output shape", "left", lambda row, ctx: "" if row.kind == "own"
                           else shapes_text(row.record.output_shapes)),
    "params": Column("Params", "right", lambda row, ctx: _paren(row, number(row.params, ctx.exact))),
    "params_pct": Column("Params %", "right", lambda row, ctx: _paren(row, _pct(row.params, ctx.total_params))),
    "macs": Column("MACs", "right", lambda row, ctx: _paren(row, number(row.macs, ctx.exact))),
    "macs_pct": Column("MACs %", "right", lambda row, ctx: _paren(row, _pct(row.macs, ctx.total_macs))),
    "flops": Column("FLOPs", "right", lambda row, ctx: _paren(row, number(row.flops, ctx.exact))),
    "time": Column("Time ms", "right", lambda row, ctx: _paren(row, "-" if row.time_ms is None
                                                              else f"{row.time_ms:.3f}")),
    "time_pct": Column("Time %", "right", lambda row, ctx: _paren(row, _pct(row.time_ms, ctx.total_time))),
    "gflops": Column("GFLOP/s", "right", lambda row, ctx: _roofline(row, ctx, "gflops")),
    "intensity": Column("FLOP/B", "right", lambda row, ctx: _roofline(row, ctx, "intensity")),
    "bound": Column("Bound", "left", lambda row, ctx: _roofline(row, ctx, "bound")),
    "backward_macs": Column("Bwd MACs", "right", lambda row, ctx: _paren(row, number(row.backward_macs, ctx.exact))),
    "saved": Column("Saved act.", "right", lambda row, ctx: _paren(row, size(row.saved_bytes)
                                                                   if row.saved_bytes is not None else "-")),
}


def default_columns(report: Any, timing: bool | None = None) -> list[str]:
    if not report.ran:  # parameters only: the module tree, no call figures
        return ["type", "params", "params_pct"]
    columns = ["type", "input_shape", "output_shape", "params", "params_pct", "macs", "macs_pct"]
    if report.run.flops != "matmul":
        columns.append("flops")
    with_time = report.timing is not None if timing is None else timing
    if with_time and report.timing is not None:
        columns += ["time", "time_pct", "gflops", "intensity"] + (["bound"] if report.timing.ridge else [])
    if report.training is not None:
        columns += ["backward_macs", "saved"]
    return columns


def _label(row: Row, markdown: bool, flat: bool = False) -> str:
    """The row's name, indented by its depth in the tree (a top list is flat: full names)."""
    if flat:
        return f"{row.record.label} (own)" if row.kind == "own" else row.record.label
    indent = (NBSP * 2 if markdown else "  ") * row.depth
    return indent + ("(own)" if row.kind == "own" else row.record.label)


def check_columns(report: Any, columns: Iterable[str] | str | None, timing: bool | None = None) -> list[str]:
    """The columns asked for (a list, or one string "params,macs"), each checked; the defaults else."""
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    chosen = list(columns) if columns is not None else default_columns(report, timing)
    unknown = [c for c in chosen if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; choose from {', '.join(COLUMNS)}")
    return chosen


def render_report(report: Any, depth: int | None = None, tablefmt: str = "simple", columns: Iterable[str] | None = None,
                  exact: bool = False, timing: bool | None = None, with_footer: bool = True, top: int | None = None,
                  by: str = "macs") -> str:
    chosen = check_columns(report, columns, timing)
    markdown = tablefmt in ("github", "pipe")
    shown = table_rows(report, depth, top, by)
    total_time = report.timing.layer_sum_ms if report.timing is not None else None
    ctx = Context(report.total_params, report.total_macs or 0, total_time, exact, report.timing, markdown)
    body = [[_label(row, markdown, flat=top is not None), *(COLUMNS[c].cell(row, ctx) for c in chosen)]
            for row in shown]
    total = {"params": number(report.total_params, exact), "macs": number(report.total_macs, exact),
             "flops": number(report.total_flops, exact), "params_pct": "100%",
             "macs_pct": "100%" if report.ran else "",
             "backward_macs": number(report.total_backward_macs, exact) if report.training else "",
             "time": f"{total_time:.3f}" if total_time else ""}
    body.append(["Total", *(total.get(c, "") for c in chosen)])
    headers = ["Layer", *(COLUMNS[c].header for c in chosen)]
    align = ["left", *(COLUMNS[c].align for c in chosen)]
    table = tabulate(body, headers, tablefmt, align)
    lines = footer(report, exact) if with_footer else []
    if not lines:
        return table
    if markdown:
        return table + "\n\n" + "\n".join(f"- {line}" for line in lines)
    return "\n".join([table, *lines])


# --- the lines around the table --------------------------------------------------------------------------

def summary_line(report: Any) -> str:
    """"resnet50: 25.6 M params, 4.09 GMACs, 8.18 GFLOPs, 102 MB" (parameter memory)."""
    parts = [f"{human(report.total_params)} params"]
    if report.ran:
        parts += [f"{human(report.total_macs, 'MACs')}", f"{human(report.total_flops, 'FLOPs')}"]
    if report.training is not None:
        parts.append(f"backward {human(report.total_backward_macs, 'MACs')}")
    parts.append(size(report.param_bytes))
    flag = "" if report.complete else " (incomplete: uncounted ops)"
    return f"{report.model}: " + ", ".join(parts) + flag


def _inputs_text(report: Any) -> str:
    dtypes = report.run.input_dtypes
    parts = [f"[{', '.join(map(str, s))}] {d}" for s, d in zip(report.input_shapes, dtypes)]
    return ", ".join(parts[:3]) + (f" +{len(parts) - 3}" if len(parts) > 3 else "") or "-"


def _roofline_summary(report: Any) -> str:
    t = report.timing
    time_by = {"compute": 0.0, "memory": 0.0}
    count = {"compute": 0, "memory": 0}
    for row in report.roofline():
        if row["bound"] in time_by:
            time_by[row["bound"]] += row["time_ms"]
            count[row["bound"]] += 1
    total = sum(time_by.values()) or 1.0
    return (f"Roofline ({t.peak_source} peak {t.peak_gflops:,.1f} GFLOP/s, {t.peak_gbytes_per_s:,.1f} GB/s; ridge "
            f"{t.ridge:.1f} FLOP/B): {count['compute']} leaf calls compute-bound "
            f"({100 * time_by['compute'] / total:.0f}% of leaf time), {count['memory']} memory-bound "
            f"({100 * time_by['memory'] / total:.0f}%)")


def footer(report: Any, exact: bool = False) -> list[str]:
    def n(v: int | None) -> str:
        return number(v, True) if exact or (v is not None and abs(v) < 1000) else f"{v:,} ({human(v)})"

    lines = [f"Params: {n(report.total_params)} = {n(report.trainable_params)} trainable + "
             f"{n(report.frozen_params)} frozen; buffers: {report.buffer_elements:,} elements "
             f"({size(report.buffer_bytes)}); parameter memory {size(report.param_bytes)}"]
    if report.ran:
        flops = "2 x MACs" if report.run.flops == "matmul" else "2 x MACs + elementwise work (flops='all')"
        lines.append(f"MACs: {n(report.total_macs)}; FLOPs = {flops} = {n(report.total_flops)}")
        lines.append(f"Input: {_inputs_text(report)}; ran on {report.device} in {report.dtype} ({report.mode} mode); "
                     f"peak activations {size(report.peak_activation_bytes)}")
    if report.training is not None:
        tr, mem = report.training, report.training.memory
        lines.append(f"Training step (loss {tr.loss}, optimizer {tr.optimizer or 'none'}"
                     f"{', autocast ' + tr.autocast if tr.autocast else ''}): backward {n(tr.total_backward_macs)} MACs")
        lines.append(f"Step memory: parameters {size(mem.parameters)}, gradients {size(mem.gradients)}, optimizer "
                     f"state {size(mem.optimizer_state)}, saved activations {size(mem.activations)}; peak "
                     f"{size(mem.peak)} (in {mem.peak_phase})")
    if report.timing is not None:
        t = report.timing
        lines.append(f"Timing ({t.device}, median of {t.repeat}): forward {t.forward_ms:.3f} ms, hooked "
                     f"{t.hooked_forward_ms:.3f} ms, sum of layer self-times {t.layer_sum_ms:.3f} ms")
        if t.ridge:
            lines.append(_roofline_summary(report))
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
