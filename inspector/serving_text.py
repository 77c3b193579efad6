"""Text of what serving costs: the prefill/decode table of ``report.generation`` and the line on
experts (``report.experts``), drawn under a report's layer table. Pure functions of the data."""
from __future__ import annotations

from typing import Any

from tabulate import tabulate

from inspector.units import human, size

DECODE_ROWS = 3  # decode steps shown one by one: the first, the middle and the last (all when fewer)


def _shown_steps(n: int) -> list[int]:
    if n <= DECODE_ROWS + 1:
        return list(range(1, n + 1))
    return sorted({1, (n + 1) // 2, n})


def _n(value: float | None, exact: bool, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,}" if exact and isinstance(value, int) else human(value, unit)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def generation_rows(g: Any, exact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: the prefill, chosen decode steps, and all decode steps together."""
    roofed = g.peak_gflops is not None
    headers = ["Phase", "Tokens", "Keys", "MACs", "MACs/token", "Weights read", "Cache", "Bound tokens/s", "Bound by"]
    prefill_tokens = g.prefill_tokens
    rows = [["prefill", f"{prefill_tokens:,}", f"{g.prompt_len:,}", _n(g.prefill_macs, exact),
             human(g.prefill_macs / prefill_tokens), size(g.prefill_weight_bytes),
             f"{size(g.prefill_cache_bytes)} written", _rate(g.prefill_tokens_per_s),
             g.bound(g.prefill_macs, g.prefill_weight_bytes + g.prefill_cache_bytes) or "-"]]
    seconds = g.decode_seconds
    for i in _shown_steps(len(g.decode_macs)):
        macs, read = g.decode_macs[i - 1], g.decode_read_bytes[i - 1]
        rows.append([f"decode {i}", f"{g.batch:,}", f"{g.cache_lens[i - 1]:,}", _n(macs, exact),
                     human(macs / g.batch), size(g.decode_weight_bytes[i - 1]), f"{size(g.cache_bytes[i - 1])} read",
                     _rate(g.batch / seconds[i - 1]) if seconds else "-", g.bound(macs, read) or "-"])
    if g.decode_macs:
        steps = len(g.decode_macs)
        total = g.decode_total_macs
        rows.append([f"decode (all {steps})", f"{g.batch * steps:,}", f"{g.cache_lens[0]:,}-{g.cache_lens[-1]:,}",
                     _n(total, exact), human(total / (g.batch * steps)), size(sum(g.decode_weight_bytes)),
                     f"{size(sum(g.cache_bytes))} read", _rate(g.decode_tokens_per_s), ""])
    if not roofed:
        headers, rows = headers[:-2], [r[:-2] for r in rows]
    return headers, rows


def generation_text(report: Any, tablefmt: str = "simple", exact: bool = False) -> list[str]:
    """The generation table with the lines around it (nothing when the report has no generation)."""
    g = report.generation
    if g is None:
        return []
    encoder = "" if g.encoder_macs is None else \
        f"; the encoder ran once in the prefill over {g.encoder_len:,} tokens ({_n(g.encoder_macs, exact)} MACs)"
    tokens = "token" if g.prompt_len == 1 else "tokens"
    lines = [f"Generation: batch {g.batch}, prompt {g.prompt_len:,} {tokens}, {g.new_tokens:,} decode steps of one token "
             f"fed back with the KV cache; decode step i attends over {g.prompt_len:,} + i keys, its own "
             f"included{encoder}"]
    headers, rows = generation_rows(g, exact)
    lines.append(tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                          colalign=["left", *["right"] * (len(headers) - 1)]))
    cross = f", of which {size(g.cross_cache_bytes)} cross-attention (fixed)" if g.cross_cache_bytes else ""
    lines.append(f"KV cache: {size(g.kv_cache_bytes)} after the last step ({size(g.kv_cache_bytes_per_token)} per "
                 f"token of each sequence{cross}); a decode step reads the weights it uses and the whole cache")
    if g.peak_gflops is not None:
        lines.append(f"Roofline bounds at the {g.peak_source} peak {g.peak_gflops:,.1f} GFLOP/s, "
                     f"{g.peak_gbytes_per_s:,.1f} GB/s: a pass takes at least its FLOPs (2 x MACs) at peak compute or "
                     "its bytes at peak bandwidth, whichever is longer")
    lines += [f"Note: {note}" for note in g.notes]
    return lines


def experts_line(report: Any) -> list[str]:
    e = report.experts
    if e is None:
        return []
    share = ", ".join(sorted({f"{100 * s:.1f}%" for s in e.shares}))
    per_token = "" if e.macs_per_token is None else f"; {human(e.macs_per_token)} MACs per token"
    return [f"Experts: {len(e.containers)} expert containers; one token touches {e.active_params:,} "
            f"({human(e.active_params)}) of {report.total_params:,} ({human(report.total_params)}) parameters "
            f"(active: all but the experts it was not routed to; it used {share} of the expert weights, "
            f"measured){per_token}"]


def generation_html(report: Any, exact: bool = False) -> str:
    """The generation table and its lines as HTML ('' without a generation)."""
    import html

    lines = generation_text(report, "html", exact)
    if not lines:
        return ""
    return "".join(line if line.lstrip().startswith("<table") else f"<p>{html.escape(line)}</p>" for line in lines)
