"""Numbers as people read them: 4.09 G, 102 MB, 52.6%. Pure functions, no inspector imports."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def human(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'; below 1000 the number itself; None -> '-'."""
    if n is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            value = n / scale
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            return f"{value:.{digits}f} {suffix}{unit}"
    return f"{n:,.0f} {unit}".rstrip() if float(n).is_integer() else f"{n:.3g} {unit}".rstrip()


def size(nbytes: float | None) -> str:
    """Bytes in decimal units (kB, MB, GB), as the summary line gives them."""
    return human(nbytes, "B")


def number(n: float | None, exact: bool) -> str:
    """``n`` with thousands separators when ``exact``, else in readable units."""
    if n is None:
        return "-"
    return f"{n:,}" if exact else human(n)


def milliseconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.3f}"


def pct(part: float | None, whole: float | None) -> str:
    """``part`` as a share of ``whole``: '52.6%', '<0.1%', '0%', or '-' when either is missing."""
    if part is None or not whole:
        return "-"
    share = 100 * part / whole
    if share == 0:
        return "0%"
    return "<0.1%" if 0 < share < 0.05 else f"{share:.1f}%"


def shapes_text(shapes: Sequence[Any]) -> str:
    """'[1, 3, 224, 224]', two shapes at most and '+N' for the rest; nested tensors as nested(...)."""
    if not shapes:
        return "-"

    def one(s: Any) -> str:
        if isinstance(s, (tuple, list)) and s and isinstance(s[0], (tuple, list)):
            return "nested(" + ", ".join(one(c) for c in s[:2]) + (", ..." if len(s) > 2 else "") + ")"
        return "[" + ", ".join(map(str, s)) + "]"

    text = ", ".join(one(s) for s in shapes[:2])
    return text + (f" +{len(shapes) - 2}" if len(shapes) > 2 else "")
