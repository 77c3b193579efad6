"""Rendering reports as text tables with ``tabulate``; a pure function of the report's data."""
from __future__ import annotations

import inspect

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import tabulate as _tabulate

from inspector.records import LayerRecord

#: tabulate >= 0.10 takes ``preserve_whitespace=``; older releases read a module-wide switch.
_HAS_KWARG = "preserve_whitespace" in inspect.signature(_tabulate.tabulate).parameters


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
    """1234567 -> '1.23 M'; exact integers are in the table, this is for summaries."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _shape(shapes: tuple[tuple[int, ...], ...]) -> str:
    if not shapes:
        return "-"
    text = ", ".join("[" + ", ".join(map(str, s)) + "]" for s in shapes[:2])
    return text + (f" +{len(shapes) - 2}" if len(shapes) > 2 else "")


def visible_totals(layers: Sequence[LayerRecord], depth: int | None) -> dict[int, tuple[int, int, float | None]]:
    """For each record shown at ``depth``: its own params and MACs plus those of hidden descendants,
    so that the shown column always sums to the model total."""
    shown: dict[int, list[Any]] = {}
    owner: dict[int, int] = {}
    for r in layers:
        if depth is None or r.depth <= depth:
            owner[r.index] = r.index
            shown[r.index] = [0, 0, r.self_time_ms]
        else:
            owner[r.index] = owner[r.parent] if r.parent is not None else r.index
        target = shown[owner[r.index]]
        target[0] += r.params
        target[1] += r.macs
    if depth is not None:  # a cut row's time is its whole inclusive time
        for r in layers:
            if r.index in shown and r.depth == depth and r.time_ms is not None:
                shown[r.index][2] = r.time_ms
    return {i: (v[0], v[1], v[2]) for i, v in shown.items()}


def render_report(report: Any, depth: int | None = None, tablefmt: str = "simple",
                  timing: bool | None = None) -> str:
    with_time = report.timing is not None if timing is None else timing
    timing_ = report.timing if with_time else None
    ridge = timing_.ridge if timing_ is not None else None
    headers = ["Layer", "Type", "Output shape", "Params", "MACs"]
    if with_time:
        headers += ["Time ms", "Time %", "GFLOP/s", "FLOP/B"] + (["Bound"] if ridge else [])
    rows: list[list[Any]] = []
    if report.ran:
        totals = visible_totals(report.layers, depth)
        total_time = sum(t for _, _, t in totals.values() if t) or None
        for r in report.layers:
            if r.index not in totals:
                continue
            params, macs, t = totals[r.index]
            row = ["  " * r.depth + r.label, r.type, _shape(r.output_shapes), f"{params:,}", f"{macs:,}"]
            if with_time:
                row += ["-" if t is None else f"{t:.3f}",
                        "-" if t is None or not total_time else f"{100 * t / total_time:.1f}"]
                row += _roofline_cells(r, r.is_leaf or r.depth == depth, timing_)
            rows.append(row)
    total_row = ["Total", "", "", f"{report.total_params:,}",
                 "-" if report.total_macs is None else f"{report.total_macs:,}"]
    if with_time:
        total_row += [f"{report.timing.layer_sum_ms:.3f}" if report.timing else "-", "", "", ""]
        total_row += [""] if ridge else []
    rows.append(total_row)
    align = ["left", "left", "left", "right", "right"]
    if with_time:
        align += ["right"] * 4 + (["left"] if ridge else [])
    return "\n".join([tabulate(rows, headers, tablefmt, align), *footer(report)])


def _roofline_cells(r: LayerRecord, whole_call: bool, timing: Any) -> list[str]:
    """Achieved GFLOP/s, intensity and bound, for rows whose time is the call's whole time (leaves,
    and rows standing for a folded subtree); "-" on rows that show a parent's self-time."""
    with_bound = timing is not None and timing.ridge is not None
    if not whole_call or r.time_ms is None:
        return ["-", "-"] + (["-"] if with_bound else [])
    gflops, intensity = r.achieved_gflops, r.arithmetic_intensity
    cells = [f"{gflops:.1f}" if gflops is not None else "-", f"{intensity:.1f}" if intensity is not None else "-"]
    if with_bound:
        cells.append(r.bound(timing.peak_gflops, timing.peak_gbytes_per_s) or "-")
    return cells


def _roofline_summary(report: Any) -> str:
    t = report.timing
    rows = report.roofline()
    time_by = {"compute": 0.0, "memory": 0.0}
    count = {"compute": 0, "memory": 0}
    for row in rows:
        if row["bound"] in time_by:
            time_by[row["bound"]] += row["time_ms"]
            count[row["bound"]] += 1
    total = sum(time_by.values()) or 1.0
    return (f"Roofline ({t.peak_source} peak {t.peak_gflops:,.1f} GFLOP/s, {t.peak_gbytes_per_s:,.1f} GB/s; ridge "
            f"{t.ridge:.1f} FLOP/B): {count['compute']} leaf calls compute-bound "
            f"({100 * time_by['compute'] / total:.0f}% of leaf time), {count['memory']} memory-bound "
            f"({100 * time_by['memory'] / total:.0f}%)")


def footer(report: Any) -> list[str]:
    lines = [
        f"Params: {report.total_params:,} total = {report.trainable_params:,} trainable + "
        f"{report.frozen_params:,} frozen; buffers: {report.buffer_elements:,} elements "
        f"({human(report.buffer_bytes, 'B')})",
        f"Parameter memory: {human(report.param_bytes, 'B')}",
    ]
    if report.ran:
        lines.append(f"MACs: {report.total_macs:,} ({human(report.total_macs)}); FLOPs = 2 x MACs = "
                     f"{report.total_flops:,}")
        lines.append(f"Input: {_shape(report.input_shapes)} on {report.device} ({report.dtype}, "
                     f"{report.mode} mode); peak activations: {human(report.peak_activation_bytes, 'B')}")
    if report.timing is not None:
        t = report.timing
        lines.append(f"Timing ({t.device}, median of {t.repeat}): forward {t.forward_ms:.3f} ms, hooked "
                     f"{t.hooked_forward_ms:.3f} ms, sum of layer self-times {t.layer_sum_ms:.3f} ms")
        if t.ridge:
            lines.append(_roofline_summary(report))
    if report.uncalled:
        listed = ", ".join(f"{n} ({p:,} params)" for n, p in report.uncalled[:6])
        more = f" and {len(report.uncalled) - 6} more" if len(report.uncalled) > 6 else ""
        lines.append(f"Not called as modules (params counted in the caller's row): {listed}{more}")
    if report.uncounted_ops:
        lines.append("Matmul-like ops with no formula (counted 0): " +
                     ", ".join(f"{op} x{n}" for op, n in report.uncounted_ops.items()))
    lines += [f"Note: {n}" for n in report.notes]
    return lines
