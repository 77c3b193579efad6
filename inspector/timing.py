"""Per-layer forward times and the device peak that places each layer on a roofline.

Times come from hooks only (no op counting while timing), with synchronised clocks, as medians over
repeats. Self-times and their sum are derived in ``build`` from these per-call times, like every
other inclusive/self figure.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from inspector import borrow
from inspector.collect import Collector, Frame
from inspector.report import Timing
from inspector.tree import ModelTree

#: Sizes of the peak probes: a square matmul of side N, and a copy of this many bytes.
_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}
_COPY_BYTES = {"cpu": 128 << 20, "cuda": 2 << 30}
_PEAKS: dict[tuple[str, torch.dtype], tuple[float, float]] = {}


def _clock(device: torch.device) -> Callable[[], float]:
    """perf_counter, after waiting for queued GPU work when timing on CUDA."""
    if device.type == "cuda":
        def cuda_clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return cuda_clock
    return time.perf_counter


def _best(fn: Callable[[], object], clock: Callable[[], float], repeat: int = 5) -> float:
    fn()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)  # a peak is the best the device did, not its typical run


def measure_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(GFLOP/s, GB/s) this device reaches: a large square matmul and a large tensor copy, timed
    once per process and device/dtype (later calls return the cached figures)."""
    device = torch.device(device)
    if device.type not in _MATMUL_SIDE:
        raise ValueError(f"no peak probe for device type {device.type!r}; pass peak=(GFLOP/s, GB/s)")
    key = (str(device), dtype)
    if key not in _PEAKS:
        clock = _clock(device)
        n = _MATMUL_SIDE[device.type]
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        with torch.no_grad():
            gflops = 2 * n**3 / _best(lambda: torch.mm(a, b), clock) / 1e9
            src = torch.empty(_COPY_BYTES[device.type] // 4, device=device)
            dst = torch.empty_like(src)
            seconds = _best(lambda: dst.copy_(src), clock)
        gbytes = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
        _PEAKS[key] = (gflops, gbytes)
    return _PEAKS[key]


def time_layers(tree: ModelTree, state: dict, args: tuple, kwargs: dict, frames: list[Frame], mode: borrow.Mode,
                repeat: int, warmup: int) -> Timing:
    """Median per-call times over ``repeat`` hooked forwards (after ``warmup``), written onto ``frames``;
    plus the median of plain forwards, so that the distortion hooks add is visible."""
    device = next((t.device for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    if device.type == "meta":
        raise ValueError("timing needs real arithmetic: use device='cpu' or 'cuda', not 'meta'")
    clock = _clock(device)
    per_call: list[list[float]] = [[] for _ in frames]
    plain: list[float] = []
    model = tree.model
    with borrow.lent(tree, mode), torch.no_grad():
        for i in range(warmup + repeat):
            start = clock()
            borrow.call(model, state, args, kwargs)
            if i >= warmup:
                plain.append(clock() - start)
        hooked: list[float] = []
        for i in range(warmup + repeat):
            collector = Collector(tree, timer=clock)
            with collector.hooks():
                start = clock()
                borrow.call(model, state, args, kwargs)
                elapsed = clock() - start
            if i < warmup or len(collector.frames) != len(frames):
                continue  # control flow changed the calls: that run cannot be matched
            hooked.append(elapsed)
            for j, f in enumerate(collector.frames):
                per_call[j].append(f.time_s or 0.0)
    for frame, times in zip(frames, per_call):
        frame.time_s = statistics.median(times) if times else None
    return Timing(device=str(device), repeat=repeat, warmup=warmup,
                  forward_ms=statistics.median(plain) * 1e3,
                  hooked_forward_ms=statistics.median(hooked) * 1e3 if hooked else float("nan"),
                  layer_sum_ms=float("nan"))
