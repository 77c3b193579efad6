"""A nested, squarified treemap of a report's call tree: where one figure (MACs, time, bytes...) goes.

Each call gets a rectangle whose area is its inclusive value's share of the whole; a call's
children (and its own work, as "(own)") are laid out inside it, below a strip holding its label.
The layout is pure arithmetic on plain data (``Box`` rectangles, tested for their areas); ``svg``
draws it as inline SVG, with no script and no external resource.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Hues of the top-level branches, in turn (distinct, readable with dark text at high lightness).
HUES = (210, 28, 130, 280, 0, 175, 52, 320, 95, 240)
HEADER = 14.0  # the label strip above a call's children
PAD = 2.0      # the gap between a call's frame and its children
MIN_SIDE = 3.0  # rectangles thinner than this are not subdivided further


@dataclass(frozen=True)
class Box:
    """One drawn rectangle: the call it stands for (``index``; ``own`` for a call's own work)."""

    index: int
    own: bool
    x: float
    y: float
    w: float
    h: float
    value: float
    depth: int
    branch: int  # which top-level child it lies under (for its colour); -1 for the root

    @property
    def area(self) -> float:
        return self.w * self.h


def _worst(row: Sequence[float], side: float) -> float:
    """The worst aspect ratio of a row of areas laid along a side of length ``side``."""
    s = sum(row)
    if s <= 0 or side <= 0:
        return float("inf")
    return max(max(side * side * r / (s * s), s * s / (side * side * r)) for r in row)


Rect = tuple[float, float, float, float]


def squarify(values: Sequence[float], x: float, y: float, w: float, h: float) -> list[Rect]:
    """Rectangles tiling (x, y, w, h), one per value (positive, in the order given: sort them largest
    first for squarer tiles), each with an area proportional to its value (Bruls, Huizing, van Wijk)."""
    total = sum(values)
    if total <= 0 or w <= 0 or h <= 0:
        return [(x, y, 0.0, 0.0) for _ in values]
    areas = [v * w * h / total for v in values]
    out: list[Rect] = []
    i = 0
    while i < len(areas):
        side = min(w, h)
        row = [areas[i]]
        i += 1
        while i < len(areas) and _worst(row + [areas[i]], side) <= _worst(row, side):
            row.append(areas[i])
            i += 1
        s = sum(row)
        if w >= h:  # a column on the left, as wide as the row's area needs
            thick = s / h if h else 0.0
            yy = y
            for a in row:
                out.append((x, yy, thick, a / thick if thick else 0.0))
                yy += a / thick if thick else 0.0
            x, w = x + thick, max(w - thick, 0.0)
        else:  # a row on top
            thick = s / w if w else 0.0
            xx = x
            for a in row:
                out.append((xx, y, a / thick if thick else 0.0, thick))
                xx += a / thick if thick else 0.0
            y, h = y + thick, max(h - thick, 0.0)
    return out


def layout(layers: Sequence[Any], figure: str, width: float = 1000.0, height: float = 440.0,
           max_depth: int = 8) -> list[Box]:
    """The boxes of the call tree for ``figure`` (records' ``inclusive``/``own`` values; negatives
    read as 0): the root fills the whole area, each call's children and own work fill its inside."""
    children: dict[int, list[Any]] = {}
    roots = []
    for r in layers:
        (roots if r.parent is None else children.setdefault(r.parent, [])).append(r)
    value: Callable[[Any, str], float] = lambda r, part: max(float(getattr(r, part).get(figure) or 0), 0.0)  # noqa: E731
    boxes: list[Box] = []
    branch_of: dict[int, int] = {}  # the calls that start a colour of their own

    def place(r: Any, x: float, y: float, w: float, h: float, depth: int, branch: int) -> None:
        boxes.append(Box(r.index, False, x, y, w, h, value(r, "inclusive"), depth, branch))
        kids = [(value(c, "inclusive"), False, c) for c in children.get(r.index, [])]
        if not kids or depth >= max_depth:
            return
        kids.append((value(r, "own"), True, r))
        kids = sorted((k for k in kids if k[0] > 0), key=lambda k: -k[0])
        header = HEADER if h > 3 * HEADER and w > 40 else 0.0
        ix, iy, iw, ih = x + PAD, y + PAD + header, w - 2 * PAD, h - 2 * PAD - header
        if not kids or iw < MIN_SIDE or ih < MIN_SIDE:
            return
        for (v, own, c), (cx, cy, cw, ch) in zip(kids, squarify([k[0] for k in kids], ix, iy, iw, ih)):
            if own:
                boxes.append(Box(c.index, True, cx, cy, cw, ch, v, depth + 1, branch))
            else:
                place(c, cx, cy, cw, ch, depth + 1, branch_of.get(c.index, branch))

    if len(roots) == 1:
        for i, r in enumerate(_branches(roots[0], children, value)):
            branch_of[r.index] = i
        place(roots[0], 0.0, 0.0, width, height, 0, -1)
    return boxes


def _branches(root: Any, children: dict[int, list[Any]], value: Callable[[Any, str], float]) -> list[Any]:
    """The calls that get a colour each: the root's children, with any one of them holding more than
    60% of the rest replaced by its own children (a GPT's transformer by its blocks), again and again."""
    chosen = list(children.get(root.index, []))
    for _ in range(8):
        total = sum(value(r, "inclusive") for r in chosen)
        big = next((r for r in chosen if total and value(r, "inclusive") > 0.6 * total
                    and len(children.get(r.index, [])) > 1), None)
        if big is None:
            break
        at = chosen.index(big)
        chosen[at:at + 1] = children[big.index]
    return chosen


def _colour(box: Box) -> str:
    if box.branch < 0:
        return "hsl(220, 10%, 93%)"
    hue = HUES[box.branch % len(HUES)]
    light = min(52 + 7 * box.depth, 90)
    return f"hsl({hue}, {'20' if box.own else '55'}%, {light}%)"


def svg(boxes: Sequence[Box], label: Callable[[Box], str], tooltip: Callable[[Box], str], figure: str,
        width: float = 1000.0, height: float = 440.0, hidden: bool = False) -> str:
    """The boxes as one inline SVG element; every rectangle carries ``data-index`` (the call's index
    in the report) and a tooltip; labels where they fit."""
    parts = [f'<svg class="map" data-map="{html.escape(figure)}" viewBox="0 0 {width:g} {height:g}" '
             f'role="img"{" hidden" if hidden else ""}>']
    for b in boxes:
        if b.w < 0.5 or b.h < 0.5:
            continue
        own = ' data-own="1"' if b.own else ""
        parts.append(f'<g data-index="{b.index}"{own}><rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" '
                     f'height="{b.h:.1f}" fill="{_colour(b)}"><title>{html.escape(tooltip(b))}</title></rect>')
        text = label(b)
        room = int((b.w - 4) / 6.2)  # characters that fit at 10px
        if b.h >= 12 and room >= 3 and text:
            shown = text if len(text) <= room else text[:max(room - 1, 1)] + "…"
            parts.append(f'<text x="{b.x + 3:.1f}" y="{b.y + 10.5:.1f}">{html.escape(shown)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
