"""Who kept the device busy, and who kept it waiting: one profiled pass attributed to module calls.

A pure function of time intervals (no torch): the module calls' ranges on the host, and the device's
activities (kernels on a GPU; the top-level aten ops on a CPU), each with the host time at which it
was launched and the host thread that launched it. Every activity belongs to the innermost call open
on its thread at its launch (on a thread with no call open, to the innermost call of the pass's own
thread then: the call that handed the work over). The pass spans from the model's call (or the
first launch, if earlier) to the later of the last activity's end and the call's return. Walking
that span, each stretch of time is charged to one call: *busy* while an activity runs (time covered
by several overlapping activities counted once, to the one that started first), *idle* while nothing
runs, charged to the call whose activity ends the wait; after the last activity, to the innermost
call open on the host meanwhile (work with no op after it: Python post-processing). So the calls'
busy and idle times add up to the span exactly, by construction. *Host* time is the time the host
spent in a call's range, its children's ranges taken off.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Activity:
    """Work on the device: ``start``/``end`` on the device's clock, ``launch`` on the host's (the same
    clock on a CPU, and on a GPU as the profiler aligns them)."""

    start: float
    end: float
    launch: float
    thread: int | None = None  # the launching host thread (None: the pass's own)


@dataclass(frozen=True)
class Attribution:
    """Per call (in the order of ``ranges``): busy, idle and host time; and the pass's span."""

    busy: tuple[float, ...]
    idle: tuple[float, ...]
    host: tuple[float, ...]
    span_start: float
    span_end: float
    outside_busy: float = 0.0  # activity launched outside every call (before the first, after the last)
    outside_idle: float = 0.0

    @property
    def span(self) -> float:
        return self.span_end - self.span_start

    @property
    def busy_total(self) -> float:
        return sum(self.busy) + self.outside_busy

    @property
    def idle_total(self) -> float:
        return sum(self.idle) + self.outside_idle


def parents(ranges: Sequence[tuple[float, float]]) -> list[int]:
    """The index of each range's enclosing range (-1: none); ranges nest, as module calls do."""
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], -ranges[i][1]))
    parent = [-1] * len(ranges)
    stack: list[int] = []
    for i in order:
        start = ranges[i][0]
        while stack and ranges[stack[-1]][1] <= start:
            stack.pop()
        parent[i] = stack[-1] if stack else -1
        stack.append(i)
    return parent


def innermost(ranges: Sequence[tuple[float, float]]) -> Callable[[float], int]:
    """``owner(t)``: the index of the innermost range open at host time ``t`` (-1: none). The last
    range started at or before ``t`` holds it, or else the nearest of its ancestors that does."""
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], -ranges[i][1]))
    starts = [ranges[i][0] for i in order]
    parent = parents(ranges)

    def owner(t: float) -> int:
        pos = bisect_right(starts, t) - 1
        i = order[pos] if pos >= 0 else -1
        while i >= 0 and ranges[i][1] < t:
            i = parent[i]
        return i
    return owner


def host_self(ranges: Sequence[tuple[float, float]]) -> list[float]:
    """Each range's duration less its direct children's."""
    own = [end - start for start, end in ranges]
    for i, parent in enumerate(parents(ranges)):
        if parent >= 0:
            own[parent] -= ranges[i][1] - ranges[i][0]
    return own


def attribute(ranges: Sequence[tuple[float, float]], activities: Sequence[Activity],
              threads: Sequence[int | None] | None = None) -> Attribution:
    """Busy, idle and host time of every call (see the module docstring). ``threads``: each range's
    host thread (None, or absent: the pass's own thread); a range with ``end <= start`` never opened."""
    n = len(ranges)
    busy, idle = [0.0] * n, [0.0] * n
    outside = [0.0, 0.0]
    groups = _by_thread(threads if threads is not None else [None] * n)
    owners = {t: _innermost_on(ranges, mine) for t, mine in groups.items()}
    main = owners.get(None) or _innermost_on(ranges, [])

    def owner(act: Activity) -> int:
        mine = owners.get(act.thread)
        who = mine(act.launch) if mine is not None else -1
        return who if who >= 0 else main(act.launch)

    acts = sorted(activities, key=lambda a: (a.start, a.end))
    own = groups.get(None, [])  # the pass's own thread's calls
    opened = [ranges[i] for i in own if ranges[i][1] > ranges[i][0]]
    host_start = min((start for start, _ in opened), default=None)
    host_end = max((end for _, end in opened), default=None)
    host = [0.0] * n  # host_self within each thread's ranges (two threads' ranges overlap without nesting)
    for mine in groups.values():
        for i, value in zip(mine, host_self([ranges[i] for i in mine])):
            host[i] = value
    if not acts and host_start is None:
        return Attribution(tuple(busy), tuple(idle), tuple(host), 0.0, 0.0)
    starts = [a.launch for a in acts] + [a.start for a in acts[:1]] + ([] if host_start is None else [host_start])
    span_start = min(starts)
    cursor = span_start
    for act in acts:
        who = owner(act)
        if act.start > cursor:
            _charge(idle, outside, 1, who, act.start - cursor)
            cursor = act.start
        if act.end > cursor:
            _charge(busy, outside, 0, who, act.end - cursor)
            cursor = act.end
    if host_end is not None and host_end > cursor:  # host work after the last activity: its calls wait
        for start, end, who in _pieces([ranges[i] for i in own], main, cursor, host_end):
            _charge(idle, outside, 1, who, end - start)
        cursor = host_end
    return Attribution(tuple(busy), tuple(idle), tuple(host), span_start, cursor,
                       outside_busy=outside[0], outside_idle=outside[1])


def _by_thread(threads: Sequence[int | None]) -> dict[int | None, list[int]]:
    """The indices of the ranges of each thread."""
    groups: dict[int | None, list[int]] = {}
    for i, thread in enumerate(threads):
        groups.setdefault(thread, []).append(i)
    return groups


def _innermost_on(ranges: Sequence[tuple[float, float]], mine: list[int]) -> Callable[[float], int]:
    """``innermost`` over the ranges ``mine`` (one thread's), answering with indices into ``ranges``."""
    find = innermost([ranges[i] for i in mine])

    def owner(t: float) -> int:
        j = find(t)
        return mine[j] if j >= 0 else -1
    return owner


def _pieces(ranges: Sequence[tuple[float, float]], owner: Callable[[float], int], start: float, end: float
            ) -> list[tuple[float, float, int]]:
    """``start``-``end`` cut where one of ``ranges`` opens or closes, each piece with ``owner`` of its middle."""
    cuts = sorted({t for a, b in ranges for t in (a, b) if start < t < end})
    bounds = [start, *cuts, end]
    return [(a, b, owner((a + b) / 2)) for a, b in zip(bounds, bounds[1:])]


def _charge(figures: list[float], outside: list[float], slot: int, who: int, amount: float) -> None:
    if who >= 0:
        figures[who] += amount
    else:
        outside[slot] += amount
