"""The per-call figures: one description each, read by everything that shows or sums a figure.

A :class:`Figure` says how one per-call number is measured (from a call as the passes collected it)
or derived (from the other figures of the same call), which part of a report measures it, how it
folds into the calls above it and into the totals, and how it is shown: header, unit, a share
column, a ranking. The records, the table rows at any depth, the totals, ``columns=``, ``top(by=)``,
the CSV and JSON fields and the command line's choices all read this registry, so adding a figure
is one entry here (or a ``register(Figure(...))`` anywhere) plus the code that measures it.

The parts a report may have measured (``needs``): ``""`` always (parameters), ``"forward"`` (the
model ran), ``"training"`` (a training step) and ``"timing"`` (timed passes). A figure whose part
was not measured is None everywhere, never 0.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inspector.registry import Registry

Value = Any  # int, float or None
Measure = Callable[[Any], Value]
Derive = Callable[[Mapping[str, Value]], Value]
UNITS = ("count", "bytes", "ms")
PARTS = ("", "forward", "training", "timing")


@dataclass(frozen=True)
class Figure:
    """One per-call figure. Exactly one of ``measure`` and ``derive`` is given."""

    name: str
    header: str
    unit: str = "count"
    needs: str = "forward"
    measure: Measure | None = None   # call -> value (see build.Call)
    derive: Derive | None = None     # the call's other figures -> value (never folded: derived again)
    fold: str = "sum"                # "sum": a call's figure adds up over its children and into the totals;
    #                                  "call": measured over the whole call (a peak): not summed, the total is the largest
    share: bool = False              # a "<name>_pct" column: its share of the total
    rank: bool = True                # top(by=name) ranks by it
    column: bool = True              # a table column
    default: bool | Callable[[Any], bool] = False  # in the default table (a function of the report)
    aliases: tuple[str, ...] = ()    # other names accepted for its column and ranking
    description: str = ""

    def __post_init__(self) -> None:
        if (self.measure is None) == (self.derive is None):
            raise ValueError(f"figure {self.name!r}: give exactly one of measure and derive")
        if self.unit not in UNITS:
            raise ValueError(f"figure {self.name!r}: unit must be one of {UNITS}")
        if self.fold not in ("sum", "call"):
            raise ValueError(f"figure {self.name!r}: fold must be 'sum' or 'call'")
        if self.needs not in PARTS:
            raise ValueError(f"figure {self.name!r}: needs must be one of {PARTS}")


FIGURES: Registry[str, Figure] = Registry("figure")


def register(fig: Figure) -> Figure:
    """Add ``fig`` to the registry (a name already taken is refused)."""
    FIGURES.register(fig.name)(fig)  # type: ignore[arg-type]
    return fig


@dataclass(frozen=True)
class _Tables:
    figures: tuple[Figure, ...]
    derived_names: frozenset[str]
    derived: tuple[Figure, ...]
    whole_call: frozenset[str]  # figures folded as "call"
    summed: tuple[str, ...]     # measured figures folded as "sum"


_CACHE: dict[int, _Tables] = {}


def _tables() -> _Tables:
    """The registry's figures sorted out, as it is now (worked out once per change of the registry:
    folding runs once per call of a model)."""
    found = _CACHE.get(FIGURES.version)
    if found is None:
        _CACHE.clear()
        figures = tuple(FIGURES.table.values())
        derived = tuple(f for f in figures if f.derive is not None)
        found = _CACHE[FIGURES.version] = _Tables(
            figures, frozenset(f.name for f in derived), derived,
            frozenset(f.name for f in figures if f.fold == "call"),
            tuple(f.name for f in figures if f.measure is not None and f.fold == "sum"))
    return found


def whole_call() -> frozenset[str]:
    """The names of the figures measured over a whole call (not summed over its children)."""
    return _tables().whole_call


def all_figures() -> tuple[Figure, ...]:
    return _tables().figures


def lookup(name: str) -> Figure | None:
    """The figure called ``name`` or one of its aliases."""
    found = FIGURES.get(name)
    if found is None:
        found = next((f for f in all_figures() if name in f.aliases), None)
    return found


def per_call(calls: Sequence[Any], parents: Sequence[tuple[int, int]], has: Callable[[str], bool],
             outside: Any = None) -> tuple[list[dict[str, Value]], list[dict[str, Value]]]:
    """Each call's figures, its own and with its descendants' (``inclusive``), derived ones included.

    ``parents`` lists (child, parent) index pairs, every child after its parent in the calls, so one
    pass from the end carries every sum up; a figure measured over a whole call is not summed (the
    call measured it already). ``outside``: work done outside every call, folded into the first
    call's own figures. A figure whose part did not run (``has(part)`` false) is None throughout.
    Worked out a figure at a time (one column per figure): this runs once per model call."""
    tables = _tables()
    columns: dict[str, list[Value]] = {}
    unmeasured: dict[str, Value] = {}
    for fig in tables.figures:
        if fig.measure is None:
            continue
        if not has(fig.needs):
            unmeasured[fig.name] = None
            continue
        column = columns[fig.name] = list(map(fig.measure, calls))
        if outside is not None and column:
            column[0] = _folded(fig.name, column[0], fig.measure(outside), tables)
    carried = dict(columns)
    for name in tables.summed:
        column = columns.get(name)
        if column is None:
            continue
        column = carried[name] = list(column)
        for child, parent in reversed(parents):
            value = column[child]
            if value is not None:
                held = column[parent]
                column[parent] = value if held is None else held + value
    names = (*columns, *unmeasured)
    nones = tuple(unmeasured.values())
    own = [_derived(dict(zip(names, (*row, *nones))), tables) for row in zip(*columns.values())]
    inclusive = [_derived(dict(zip(names, (*row, *nones))), tables) for row in zip(*carried.values())]
    return own, inclusive


def _folded(name: str, held: Value, value: Value, tables: _Tables) -> Value:
    """Two calls' values of one figure as one: summed, or the larger for a whole-call figure."""
    if value is None:
        return held
    if held is None:
        return value
    return max(held, value) if name in tables.whole_call else held + value


def _derived(values: dict[str, Value], tables: _Tables) -> dict[str, Value]:
    """``values`` (every measured figure there) with the derived figures added, in place."""
    try:
        for f in tables.derived:
            values[f.name] = f.derive(values)
        return values
    except KeyError:
        return complete(values)


def fold(parts: Iterable[Mapping[str, Value]]) -> dict[str, Value]:
    """The sum of several calls' figures (the largest, for a figure measured over a whole call),
    derived ones derived again from the sums (None where none of the calls has a value)."""
    tables = _tables()
    total: dict[str, Value] = {}
    for values in parts:
        for name, value in values.items():
            if name not in tables.derived_names:
                total[name] = _folded(name, total[name], value, tables) if name in total else value
    return complete(total)


def complete(values: Mapping[str, Value]) -> dict[str, Value]:
    """``values`` with every derived figure added (derived from the measured ones, in registry order)."""
    derived = _tables().derived
    out = dict(values)
    try:  # every figure a derivation reads is there: the common case, one dict
        for f in derived:
            out[f.name] = f.derive(out)
        return out
    except KeyError:
        pass
    slow = _Values(values)
    for f in derived:
        slow[f.name] = f.derive(slow)
    return dict(slow)


class _Values(dict):
    """A figure missing from a mapping reads as None (not measured)."""

    def __missing__(self, key: str) -> None:
        return None


def _add(first: Value, second: Value, scale: int = 1) -> Value:
    """``scale * first + second`` (a missing second term is 0); None when the first is None."""
    if first is None:
        return None
    return scale * first + second if second is not None else scale * first


# --- the built-in figures ----------------------------------------------------------------------------

register(Figure("params", "Params", needs="", measure=lambda call: call.params, share=True, default=True,
                description="parameters first counted at this call (a shared tensor once)"))
register(Figure("trainable_params", "Trainable", needs="", measure=lambda call: call.trainable_params,
                description="the trainable part of params"))
register(Figure("macs", "MACs", measure=lambda call: call.frame.macs, share=True, default=True,
                description="multiply-accumulates of matmul-like ops run inside this call"))
register(Figure("elementwise_flops", "Elementwise FLOPs", measure=lambda call: call.frame.flops, column=False,
                rank=False, description="the FLOP convention's elementwise work (0 under 'matmul')"))
register(Figure("flops", "FLOPs", derive=lambda v: _add(v["macs"], v["elementwise_flops"], scale=2),
                default=lambda report: report.run.flops != "matmul",
                description="2 x MACs, plus elementwise work under flops='all'"))
register(Figure("peak_bytes", "Peak act.", unit="bytes", measure=lambda call: call.frame.peak_bytes
                - call.frame.start_bytes, fold="call", rank=True,
                description="activation memory the call needed at its peak, above what was live when it started"))
register(Figure("hook_macs", "Hook MACs", measure=lambda call: call.hook_macs, column=False, rank=False,
                description="work of pre-hooks and parametrizations: not the layer's own formula"))
register(Figure("time_ms", "Time ms", unit="ms", needs="timing", derive=lambda v: _add(v["busy_ms"], v["idle_ms"]),
                share=True, default=True, aliases=("time",),
                description="the call's share of the profiled pass: its device busy + idle time (children's apart)"))
register(Figure("busy_ms", "Busy ms", unit="ms", needs="timing", measure=lambda call: call.busy_ms, default=True,
                description="device time of the activities the call launched itself (kernels; ops on a CPU)"))
register(Figure("idle_ms", "Idle ms", unit="ms", needs="timing", measure=lambda call: call.idle_ms, default=True,
                description="device idle time that ended with one of the call's own launches"))
register(Figure("host_ms", "Host ms", unit="ms", needs="timing", measure=lambda call: call.host_ms,
                description="host time spent in the call itself (its children's calls taken off)"))
register(Figure("backward_macs", "Bwd MACs", needs="training", measure=lambda call: call.frame.bw_macs,
                default=True, description="multiply-accumulates of the backward ops this call's backward ran"))
register(Figure("backward_elementwise_flops", "Bwd elementwise FLOPs", needs="training",
                measure=lambda call: call.frame.bw_flops, column=False, rank=False,
                description="the FLOP convention's elementwise work in backward"))
register(Figure("backward_flops", "Bwd FLOPs",
                derive=lambda v: _add(v["backward_macs"], v["backward_elementwise_flops"], scale=2),
                description="2 x backward MACs, plus elementwise work under flops='all'"))
register(Figure("saved_bytes", "Saved act.", unit="bytes", needs="training", measure=lambda call: call.frame.saved_bytes,
                default=True, aliases=("saved",), description="activations autograd saved for backward in this call"))
register(Figure("recompute_macs", "Recompute MACs", needs="training", measure=lambda call: call.frame.recompute_macs,
                description="forward work recomputed in backward (activation checkpointing)"))
