"""Per-layer forward times: hooks only (no op counting), synchronised clocks, medians over repeats."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from inspector import borrow
from inspector.collect import Collector, Frame
from inspector.report import Timing
from inspector.tree import ModelTree


def _clock(device: torch.device) -> Callable[[], float]:
    """perf_counter, after waiting for queued GPU work when timing on CUDA."""
    if device.type == "cuda":
        def cuda_clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return cuda_clock
    return time.perf_counter


def time_layers(tree: ModelTree, state: dict, args: tuple, kwargs: dict, frames: list[Frame], mode: borrow.Mode,
                repeat: int, warmup: int, peak: tuple[float, float] | None) -> Timing:
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
    children: dict[int, float] = {}
    for f in frames:
        if f.parent is not None and f.time_s is not None:
            children[f.parent] = children.get(f.parent, 0.0) + f.time_s
    self_sum = sum(max(0.0, (f.time_s or 0.0) - children.get(f.index, 0.0)) for f in frames)
    return Timing(device=str(device), repeat=repeat, warmup=warmup,
                  forward_ms=statistics.median(plain) * 1e3,
                  hooked_forward_ms=statistics.median(hooked) * 1e3 if hooked else float("nan"),
                  layer_sum_ms=self_sum * 1e3,
                  peak_gflops=None if peak is None else peak[0], peak_gbytes_per_s=None if peak is None else peak[1])
