"""Who kept the device busy, and who kept it waiting: one profiled pass attributed to module calls.

A pure function of time intervals (no torch): the module calls' ranges on the host, and the device's
activities (kernels on a GPU; the top-level aten ops on a CPU), each with the host time at which it
was launched. Every activity belongs to the innermost call open at its launch. Walking the device's
timeline from the first launch to the last activity's end, each stretch of time is charged to one
call: *busy* while an activity runs (time covered by several overlapping activities counted once, to
the one that started first), *idle* while nothing runs, charged to the call whose activity ends the
wait. So the calls' busy and idle times add up to the span exactly, by construction. *Host* time is
the time the host spent in a call's range, its children's ranges taken off.
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


def attribute(ranges: Sequence[tuple[float, float]], activities: Sequence[Activity]) -> Attribution:
    """Busy, idle and host time of every call (see the module docstring)."""
    n = len(ranges)
    busy, idle = [0.0] * n, [0.0] * n
    outside = [0.0, 0.0]
    owner = innermost(ranges)
    acts = sorted(activities, key=lambda a: (a.start, a.end))
    if not acts:
        return Attribution(tuple(busy), tuple(idle), tuple(host_self(ranges)), 0.0, 0.0)
    span_start = min(min(a.launch for a in acts), acts[0].start)
    cursor = span_start
    for act in acts:
        who = owner(act.launch)
        if act.start > cursor:
            _charge(idle, outside, 1, who, act.start - cursor)
            cursor = act.start
        if act.end > cursor:
            _charge(busy, outside, 0, who, act.end - cursor)
            cursor = act.end
    return Attribution(tuple(busy), tuple(idle), tuple(host_self(ranges)), span_start, cursor,
                       outside_busy=outside[0], outside_idle=outside[1])


def _charge(figures: list[float], outside: list[float], slot: int, who: int, amount: float) -> None:
    if who >= 0:
        figures[who] += amount
    else:
        outside[slot] += amount
