"""The rows a report shows: its call tree cut at a depth, or the calls doing the most of one figure.

Rows follow the call tree down to ``depth``. A row whose children are shown is a *container*: it
gives its inclusive figures, and its own work (a matmul in its forward, parameters of submodules
that never ran) gets a row of its own, ``own``, just below. Every other row (a ``layer``) gives its
figures with those of its hidden descendants folded in, which are its inclusive figures. So the
layer and own rows always sum to the totals, at every depth. Every format shows these rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inspector.figures import Figure, all_figures, lookup, whole_call
from inspector.records import LayerRecord


@dataclass(frozen=True)
class Row:
    """One line of a table: ``kind`` is "layer" (summable), "container" (inclusive, children shown
    below) or "own" (a container's own work, summable). Figures read as attributes (``row.macs``)."""

    record: LayerRecord
    kind: str
    depth: int

    @property
    def values(self) -> Mapping[str, Any]:
        if self.kind != "own":
            return self.record.inclusive
        whole = whole_call()  # a container's own work has no peak of its own: its call's is on its row
        return {k: None if k in whole else v for k, v in self.record.own.items()}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("record", "kind", "depth"):
            raise AttributeError(name)
        fig = lookup(name)
        if fig is None:
            raise AttributeError(f"Row has no figure {name!r}")
        return self.values.get(fig.name)


def rows(layers: Sequence[LayerRecord], depth: int | None) -> list[Row]:
    """The rows shown at ``depth`` (None: every call)."""
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 0):
        raise ValueError(f"depth must be a non-negative int or None, got {depth!r}")
    shown = [depth is None or r.depth <= depth for r in layers]
    has_shown_child = [False] * len(layers)
    for r in layers:
        if r.parent is not None and shown[r.index]:
            has_shown_child[r.parent] = True
    out = []
    for r in layers:
        if not shown[r.index]:
            continue
        if has_shown_child[r.index]:
            out.append(Row(r, "container", r.depth))
            own = Row(r, "own", r.depth + 1)
            if any(own.values.values()):
                out.append(own)
        else:
            out.append(Row(r, "layer", r.depth))
    return out


def ranked_figure(by: str) -> Figure:
    """The figure a ranking names (by its name or an alias)."""
    fig = lookup(by)
    if fig is None or not fig.rank:
        names = ", ".join(f.name for f in all_figures() if f.rank)
        raise ValueError(f"ranking by {by!r}: choose from {names}")
    return fig


def top_rows(layers: Sequence[LayerRecord], k: int, by: Figure, depth: int | None = None) -> list[Row]:
    """The ``k`` rows doing the most of ``by`` among those shown at ``depth`` (own work, with hidden
    descendants folded in; containers are not ranked, their own-work rows are)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top must be a positive int, got {k!r}")
    summable = [row for row in rows(layers, depth) if row.kind != "container"]
    ranked = sorted((row for row in summable if row.values.get(by.name)), key=lambda row: row.values[by.name],
                    reverse=True)
    return ranked[:k]
