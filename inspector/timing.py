"""Per-layer forward times and the device peak that places each layer on a roofline.

Times come from hooks only (no op counting while timing), as medians over repeats: ``perf_counter``
on CPU; on CUDA, an event recorded on the stream at each hook and read after one synchronise per
pass, so that timing does not stall the GPU between layers. Self-times and their sum are derived
in ``build`` from these per-call times, like every other inclusive/self figure. Timing returns
times; it never writes into the counting pass's frames.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from inspector.report import Timing
from inspector.tree import ModelTree

#: Sizes of the peak probes: a square matmul of side N, and a copy of this many bytes.
_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}
_COPY_BYTES = {"cpu": 128 << 20, "cuda": 2 << 30}
_PEAKS: dict[tuple[str, torch.dtype], tuple[float, float]] = {}
_RAISED = object()


class Clock:
    """Marks taken at hooks, turned into seconds once a pass is over. CPU: perf_counter floats."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> Any:
        return time.perf_counter()

    def settle(self) -> None:
        """Wait until every marked moment has happened (queued GPU work done)."""

    def seconds(self, start: Any, end: Any) -> float:
        return end - start


class CudaClock(Clock):
    """CUDA events recorded on the current stream; one synchronise per pass, not per layer."""

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def settle(self) -> None:
        torch.cuda.synchronize(self.device)

    def seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


def clock_for(device: torch.device) -> Clock:
    return CudaClock(device) if device.type == "cuda" else Clock(device)


def _timed(fn: Callable[[], object], clock: Clock) -> float:
    start = clock.mark()
    fn()
    end = clock.mark()
    clock.settle()
    return clock.seconds(start, end)


def _best(fn: Callable[[], object], clock: Clock, repeat: int = 5) -> float:
    fn()  # warm-up: allocations, kernel selection
    return min(_timed(fn, clock) for _ in range(repeat))  # a peak is the best the device did


def measure_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(GFLOP/s, GB/s) this device reaches: a large square matmul and a large tensor copy, timed
    once per process and device/dtype (later calls return the cached figures)."""
    device = torch.device(device)
    if device.type not in _MATMUL_SIDE:
        raise ValueError(f"no peak probe for device type {device.type!r}; pass peak=(GFLOP/s, GB/s)")
    key = (str(device), dtype)
    if key not in _PEAKS:
        clock = clock_for(device)
        n = _MATMUL_SIDE[device.type]
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        with torch.no_grad():
            gflops = 2 * n**3 / _best(lambda: torch.mm(a, b), clock) / 1e9
            nbytes = _COPY_BYTES[device.type]
            if device.type == "cuda":  # source and copy together take at most half the free memory
                nbytes = min(nbytes, torch.cuda.mem_get_info(device)[0] // 4)
            src = torch.empty(nbytes // 4, device=device)
            dst = torch.empty_like(src)
            seconds = _best(lambda: dst.copy_(src), clock)
        gbytes = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
        _PEAKS[key] = (gflops, gbytes)
    return _PEAKS[key]


def with_peak(timing: Timing, peak: tuple[float, float] | str | None, device: torch.device,
              dtype: torch.dtype | None) -> Timing:
    """``timing`` with the roofline's peak: the given one, or measured on ``device`` in ``dtype``."""
    if peak is None:
        return timing
    source = "measured" if peak == "measure" else "given"
    gflops, gbytes = measure_peak(device, dtype or torch.float32) if peak == "measure" else peak
    return replace(timing, peak_gflops=gflops, peak_gbytes_per_s=gbytes, peak_source=source)


def time_calls(tree: ModelTree, run: Callable[[], object], calls: int, repeat: int, warmup: int,
               device: torch.device, on_error: Callable[[nn.Module | None, Exception], Exception] | None = None
               ) -> tuple[tuple[float | None, ...], Timing]:
    """Median per-call times (seconds, in collection order) over ``repeat`` hooked passes of
    ``run`` after ``warmup``, and the median of plain passes beside them, so that the distortion the
    hooks add is visible. ``calls`` is the number of calls the counted pass made; a timed pass whose
    calls differ (control flow) cannot be matched and is left out. A pass that raises is turned into
    ``on_error(module, exc)`` (the module whose call raised, in a hooked pass)."""
    clock = clock_for(device)
    per_call: list[list[float]] = [[] for _ in range(calls)]
    plain: list[float] = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeat):
                elapsed = _timed(run, clock)
                if i >= warmup:
                    plain.append(elapsed)
            hooked = _hooked(tree, run, clock, calls, repeat, warmup, per_call)
    except _Failed as failed:
        if on_error is None:
            raise failed.exc from None
        raise on_error(failed.module, failed.exc) from failed.exc
    except Exception as exc:
        if on_error is None:
            raise
        raise on_error(None, exc) from exc
    times = tuple(statistics.median(t) if t else None for t in per_call)
    return times, Timing(device=str(device), repeat=repeat, warmup=warmup,
                         forward_ms=statistics.median(plain) * 1e3,
                         hooked_forward_ms=statistics.median(hooked) * 1e3 if hooked else float("nan"),
                         layer_sum_ms=float("nan"))


class _Failed(Exception):
    def __init__(self, module: nn.Module | None, exc: Exception) -> None:
        super().__init__(str(exc))
        self.module, self.exc = module, exc


class _Marks:
    """Two process-wide module hooks taking a clock mark at the start and end of every call of the
    model's modules (this thread only), in call order: what a timed pass records, nothing more."""

    def __init__(self, tree: ModelTree, clock: Clock) -> None:
        self.names = tree.first_names
        self.clock = clock
        self.marks: list[list[Any]] = []
        self.open: list[list[Any]] = []
        self.stack: list[Any] = []  # the innermost call, for a failure's name
        self.failed: Any = None
        self._thread = threading.get_ident()

    def _pre(self, module: nn.Module, args: tuple) -> None:
        if id(module) in self.names and threading.get_ident() == self._thread:
            mark = [self.clock.mark(), None, module]
            self.marks.append(mark)
            self.open.append(mark)

    def _post(self, module: nn.Module, args: tuple, kwargs: Any = None, output: Any = _RAISED) -> None:
        end = self.clock.mark()
        if id(module) not in self.names or threading.get_ident() != self._thread or not self.open:
            return
        mark = self.open.pop()
        mark[1] = end
        if output is _RAISED and self.failed is None:
            self.failed = module

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = [register_module_forward_pre_hook(self._pre),
                   register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _hooked(tree: ModelTree, run: Callable[[], object], clock: Clock, calls: int, repeat: int, warmup: int,
            per_call: list[list[float]]) -> list[float]:
    hooked: list[float] = []
    for i in range(warmup + repeat):
        marks = _Marks(tree, clock)
        try:
            with marks.hooks():
                elapsed = _timed(run, clock)
        except Exception as exc:
            raise _Failed(marks.failed or (marks.open[-1][2] if marks.open else None), exc) from exc
        if i < warmup or len(marks.marks) != calls:
            continue
        hooked.append(elapsed)
        for j, (start, end, _) in enumerate(marks.marks):
            per_call[j].append(clock.seconds(start, end) if end is not None else 0.0)
    return hooked
