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

from inspector import output
from inspector.figures import Figure, all_figures, fold, lookup, whole_call
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


# --- totals by layer type ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TypeTotal:
    """Every call of one layer type summed (like DeepSpeed's aggregated profile): ``calls`` and the
    own figures of those calls (``values``; read as attributes: ``t.macs``). Own figures, so that the
    types add up to the model's totals (a container type holds its own work, not its children's)."""

    type: str
    calls: int
    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("type", "calls", "values"):
            raise AttributeError(name)
        fig = lookup(name)
        if fig is None:
            raise AttributeError(f"TypeTotal has no figure {name!r}")
        return self.values.get(fig.name)


class ByType:
    """A report's figures by layer type, largest MACs first (parameters when the model did not run).
    Renders through the formats registry like a report: ``str()``, ``render("csv")``..."""

    KIND = "by_type"

    def __init__(self, report: Any, totals: Sequence[TypeTotal]) -> None:
        self.report = report
        self.totals = list(totals)

    @classmethod
    def of(cls, report: Any) -> ByType:
        groups: dict[str, list[LayerRecord]] = {}
        for r in report.layers:
            groups.setdefault(r.type, []).append(r)
        key = "macs" if report.ran else "params"
        totals = [TypeTotal(t, len(rs), fold(r.own for r in rs)) for t, rs in groups.items()]
        return cls(report, sorted(totals, key=lambda t: (-(t.values.get(key) or 0), -(t.values.get("params") or 0),
                                                         t.type)))

    def __iter__(self):  # noqa: ANN204
        return iter(self.totals)

    def __len__(self) -> int:
        return len(self.totals)

    def __getitem__(self, type_name: str) -> TypeTotal:
        for t in self.totals:
            if t.type == type_name:
                return t
        raise KeyError(f"no layer of type {type_name!r}; types: {', '.join(t.type for t in self.totals)}")

    def rows(self) -> list[Row]:
        """One summable row per type (for the formats: a record named after the type)."""
        return [Row(LayerRecord.make(index=i, name=t.type, type=t.type, depth=0, parent=None, call=0, is_leaf=True,
                                     own=t.values, inclusive=t.values), "layer", 0) for i, t in enumerate(self.totals)]

    def render(self, fmt: str = "table", **options: Any) -> str:
        return output.render(self, fmt, **options)

    def __str__(self) -> str:
        return self.render("table")

    def _repr_html_(self) -> str:
        return self.render("html", fragment=True)
