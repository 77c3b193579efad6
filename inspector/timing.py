"""Per-layer forward times and the device peak that places each layer on a roofline.

Times come from hooks only (no op counting while timing), as medians over repeats: ``perf_counter``
on CPU; on CUDA, an event recorded on the stream at each hook and read after one synchronise per
pass, so that timing does not stall the GPU between layers. Self-times and their sum are derived
in ``build`` from these per-call times, like every other inclusive/self figure.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from inspector import borrow
from inspector.collect import Collector, Frame
from inspector.errors import InputError
from inspector.report import Timing
from inspector.tree import ModelTree

#: Sizes of the peak probes: a square matmul of side N, and a copy of this many bytes.
_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}
_COPY_BYTES = {"cpu": 128 << 20, "cuda": 2 << 30}
_PEAKS: dict[tuple[str, torch.dtype], tuple[float, float]] = {}


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


def check_peak(peak: Any) -> tuple[float, float] | str | None:
    """``peak`` as ``inspect`` takes it, validated before anything runs: (GFLOP/s, GB/s), "measure"
    or None."""
    if peak is None or (isinstance(peak, str) and peak == "measure"):
        return peak
    try:
        gflops, gbytes = (float(v) for v in peak)
    except (TypeError, ValueError):
        raise InputError(f"peak must be (GFLOP/s, GB/s), 'measure' or None, got {peak!r}") from None
    if not (gflops > 0 and gbytes > 0):
        raise InputError(f"peak figures must be positive, got {peak!r}")
    return gflops, gbytes


def with_peak(timing: Timing, peak: tuple[float, float] | str | None, device: torch.device,
              dtype: torch.dtype | None) -> Timing:
    """``timing`` with the roofline's peak: the given one, or measured on ``device`` in ``dtype``."""
    if peak is None:
        return timing
    source = "measured" if peak == "measure" else "given"
    gflops, gbytes = measure_peak(device, dtype or torch.float32) if peak == "measure" else peak
    return replace(timing, peak_gflops=gflops, peak_gbytes_per_s=gbytes, peak_source=source)


def time_layers(tree: ModelTree, state: dict, args: tuple, kwargs: dict, frames: list[Frame], mode: borrow.Mode,
                repeat: int, warmup: int, device: torch.device) -> Timing:
    """Median per-call times over ``repeat`` hooked forwards (after ``warmup``) on ``device``, written
    onto ``frames``; plus the median of plain forwards, so that the distortion hooks add is visible."""
    if device.type == "meta":
        raise ValueError("timing needs real arithmetic: use device='cpu' or 'cuda', not 'meta'")
    clock = clock_for(device)
    per_call: list[list[float]] = [[] for _ in frames]
    plain: list[float] = []
    model = tree.model
    with borrow.lent(tree, mode, state), torch.no_grad():
        for i in range(warmup + repeat):
            elapsed = _timed(lambda: borrow.call(model, state, args, kwargs), clock)
            if i >= warmup:
                plain.append(elapsed)
        hooked: list[float] = []
        for i in range(warmup + repeat):
            collector = Collector(tree, timer=clock.mark)
            with collector.hooks():
                elapsed = _timed(lambda: borrow.call(model, state, args, kwargs), clock)
            if i < warmup or len(collector.frames) != len(frames):
                continue  # control flow changed the calls: that run cannot be matched
            hooked.append(elapsed)
            for j, f in enumerate(collector.frames):
                per_call[j].append(clock.seconds(f.start, f.end) if f.end is not None else 0.0)
    for frame, times in zip(frames, per_call):
        frame.time_s = statistics.median(times) if times else None
    return Timing(device=str(device), repeat=repeat, warmup=warmup,
                  forward_ms=statistics.median(plain) * 1e3,
                  hooked_forward_ms=statistics.median(hooked) * 1e3 if hooked else float("nan"),
                  layer_sum_ms=float("nan"))
