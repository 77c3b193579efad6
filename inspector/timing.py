"""Per-call times from the profiler, the plain forward beside them, and the device peak.

The timed passes run under ``torch.profiler``'s engine (Kineto: CPU activity, and CUDA activity on
a GPU) with one range per module call, opened and closed by two process-wide module hooks. Each
kernel (on a GPU; each top-level aten op on a CPU) is linked to the op that launched it and so to
the innermost module call; ``inspector.timeline`` then charges every stretch of the pass to one call
as busy or idle time, so that they add up to the pass exactly. Beside the profiled passes, plain
passes (no hooks, no profiler; synchronised on a GPU) give the forward's own time, and the
difference is the measuring overhead, reported, never hidden. Timing returns data; it never writes
into the counting pass's frames.
"""
from __future__ import annotations

import functools
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from inspector import threads
from inspector.errors import MODEL_FAILURES, InputError
from inspector.peaks import datasheet_peak
from inspector.report import Timing
from inspector.timeline import Activity, Attribution, attribute
from inspector.tree import ModelTree

#: Sizes of the peak probes: a square matmul of side N, and a copy of this many bytes.
_MATMUL_SIDE = {"cpu": 1024, "cuda": 8192}
_COPY_BYTES = {"cpu": 128 << 20, "cuda": 2 << 30}
_PEAKS: dict[tuple[str, torch.dtype], tuple[float, float]] = {}
_RAISED = object()
_RANGE = "inspector#"
_CARRIED = "inspector:carried"  # work a call of the pass handed to another thread
#: What Kineto writes to stderr when a profile starts or stops (said by the profiler, not by us).
_KINETO_NOISE = re.compile(r"^(USDT|STAGE|INFO|WARNING|ERROR):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \S+\.cpp:\d+\]")
_DEVICE_ACTIVITY = ("kernel", "gpu_memcpy", "gpu_memset")


# --- the device peak ----------------------------------------------------------------------------------

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``fn`` with the device's queued work done (synchronised before and after)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def _best(fn: Callable[[], object], device: torch.device, repeat: int = 5) -> float:
    fn()  # warm-up: allocations, kernel selection
    return min(_seconds(fn, device) for _ in range(repeat))  # a peak is the best the device did


def measure_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(GFLOP/s, GB/s) this device reaches: a large square matmul and a large tensor copy, timed
    once per process and device/dtype (later calls return the cached figures)."""
    device = torch.device(device)
    if device.type not in _MATMUL_SIDE:
        raise ValueError(f"no peak probe for device type {device.type!r}; pass peak=(GFLOP/s, GB/s)")
    key = (str(device), dtype)
    if key not in _PEAKS:
        n = _MATMUL_SIDE[device.type]
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        with torch.no_grad():
            gflops = 2 * n**3 / _best(lambda: torch.mm(a, b), device) / 1e9
            nbytes = _COPY_BYTES[device.type]
            if device.type == "cuda":  # source and copy together take at most half the free memory
                nbytes = min(nbytes, torch.cuda.mem_get_info(device)[0] // 4)
            src = torch.empty(nbytes // 4, device=device)
            dst = torch.empty_like(src)
            seconds = _best(lambda: dst.copy_(src), device)
        gbytes = 2 * src.numel() * src.element_size() / seconds / 1e9  # read + write
        _PEAKS[key] = (gflops, gbytes)
    return _PEAKS[key]


def resolve_peak(peak: tuple[float, float] | str | None, device: torch.device,
                 dtype: torch.dtype | None) -> tuple[float | None, float | None, str | None]:
    """(GFLOP/s, GB/s, source): the given peak; "datasheet" (or "auto" on a device the table knows)
    the vendor's dense figures for the dtype; "measure" (or "auto" elsewhere) the probes'."""
    if peak is None:
        return None, None, None
    if not isinstance(peak, str):
        return peak[0], peak[1], "given"
    dtype = dtype or torch.float32
    if peak in ("auto", "datasheet") and device.type == "cuda":
        found = datasheet_peak(torch.cuda.get_device_name(device), dtype)
        if found is not None:
            return found.gflops, found.gbytes_per_s, f"datasheet: {found.name}, {found.precision}"
    if peak == "datasheet":
        raise InputError(_no_datasheet(device, dtype))
    gflops, gbytes = measure_peak(device, dtype)
    return gflops, gbytes, "measured"


def _no_datasheet(device: torch.device, dtype: torch.dtype) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return (f"peak='datasheet': no datasheet peak for {what} in {str(dtype).replace('torch.', '')} (the table in "
            "inspector/peaks.py covers NVIDIA GPUs): pass peak='measure' (--peak measure) or your device's figures, "
            "peak=(GFLOP/s, GB/s)")


def check(peak: tuple[float, float] | str | None, device: torch.device, dtype: torch.dtype | None) -> None:
    """What timing can tell is wrong before anything runs: a profiler already running (the timed
    passes run their own, and torch runs one at a time), or a datasheet peak the table lacks."""
    if torch.autograd._profiler_enabled():
        raise InputError("timing=True runs torch.profiler itself, and a profiler is already running here (inside a "
                         "torch.profiler.profile() block?): call inspect(..., timing=True) outside it, or inspect "
                         "without timing inside it")
    if peak == "datasheet" and (device.type != "cuda" or
                                datasheet_peak(torch.cuda.get_device_name(device), dtype or torch.float32) is None):
        raise InputError(_no_datasheet(device, dtype or torch.float32))


# --- ranges per module call ---------------------------------------------------------------------------

class _Ranges:
    """Two process-wide module hooks opening a profiler range per call of the model's modules (on any
    thread: the forward's work handed to a pool counts where the counted pass puts it), named by the
    call's place in the pass; the modules called, in order, and the module whose call raised are kept."""

    def __init__(self, tree: ModelTree) -> None:
        self.names = tree.first_names
        self.calls = 0
        self.called: list[nn.Module] = []  # every call's module, in the order the calls began
        self.open: dict[int, list[tuple[Any, nn.Module]]] = {}  # thread -> its open calls, innermost last
        self.failed: nn.Module | None = None
        self._lock = threading.Lock()
        self._enter = torch.ops.profiler._record_function_enter_new
        self._exit = torch.ops.profiler._record_function_exit._RecordFunction

    @property
    def innermost(self) -> nn.Module | None:
        """The innermost open call's module on this thread (the one a failure is in)."""
        stack = self.open.get(threading.get_ident())
        return stack[-1][1] if stack else None

    def _pre(self, module: nn.Module, args: tuple) -> None:
        if id(module) not in self.names:
            return
        with self._lock:
            index = self.calls
            self.calls += 1
            self.called.append(module)
        self.open.setdefault(threading.get_ident(), []).append((self._enter(f"{_RANGE}{index}", None), module))

    def _post(self, module: nn.Module, args: tuple, kwargs: Any = None, output: Any = _RAISED) -> None:
        stack = self.open.get(threading.get_ident())
        if id(module) not in self.names or not stack:
            return
        handle, _ = stack.pop()
        self._exit(handle)
        if output is _RAISED and self.failed is None:
            self.failed = module

    def carry(self, fn: Callable[..., Any]) -> Callable[..., Any] | None:
        """``fn`` handed to another thread by a call of the pass, marked with a range there, so that its
        ops (bare ones too) are the pass's work; None for a hand-over from outside every call."""
        if not self.open.get(threading.get_ident()):
            return None
        enter, leave = self._enter, self._exit

        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            handle = enter(_CARRIED, None)
            try:
                return fn(*args, **kwargs)
            finally:
                leave(handle)
        return marked

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = [register_module_forward_pre_hook(self._pre),
                   register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        try:
            with threads.handed_over(self.carry):
                yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Kineto's own start/stop lines on stderr are held back (fd 2 goes to a file while the profiler
    starts or stops); anything else written meanwhile is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (a notebook): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines()
                    if line and not _KINETO_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


@dataclass(frozen=True)
class ProfiledPass:
    """One profiled pass: the module of each call, in order, and its attribution."""

    called: tuple[nn.Module, ...]
    attribution: Attribution


def _profiled(tree: ModelTree, run: Callable[[], object], device: torch.device) -> ProfiledPass:
    from torch.autograd import profiler

    ranges = _Ranges(tree)
    with _quiet_profiler():
        prof = profiler.profile(use_kineto=True, use_cpu=True, use_device="cuda" if device.type == "cuda" else None,
                                experimental_config=_all_threads())
        prof.__enter__()
    try:
        with ranges.hooks():
            run()
            _synchronize(device)
    except MODEL_FAILURES as exc:
        raise _Failed(ranges.failed or ranges.innermost, exc) from exc
    finally:  # whatever ended the pass (an interrupt too), the profiler stops here
        with _quiet_profiler():
            prof.__exit__(None, None, None)
    return ProfiledPass(tuple(ranges.called), _attribution(prof.kineto_results.events(), ranges.calls, device))


@functools.cache
def _all_threads() -> Any:
    """The profiler's option to record every thread (the forward's work handed to a pool), where this
    torch has it; None (the profiling thread only) elsewhere."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError):
        return None


def _attribution(events: list[Any], calls: int, device: torch.device) -> Attribution:
    """Ranges and activities (ms) from the profiler's events, and who they are charged to. The pass's
    own thread is the one of its first call (the model's); ranges and ops of other threads that ran a
    call of the pass, or a task one of its calls handed over, are the forward's work (other threads'
    ops are not the model's)."""
    spans: dict[int, tuple[float, float, int]] = {}
    for e in events:
        name = e.name()
        if e.is_user_annotation() and name.startswith(_RANGE):
            spans[int(name[len(_RANGE):])] = (e.start_ns() / 1e6, e.end_ns() / 1e6, e.start_thread_id())
    main = spans[0][2] if 0 in spans else None
    ranges = [spans[i][:2] if i in spans else (0.0, 0.0) for i in range(calls)]
    threads = [None if i not in spans or spans[i][2] == main else spans[i][2] for i in range(calls)]
    ours = {main, *(tid for _, _, tid in spans.values()),
            *(e.start_thread_id() for e in events if e.is_user_annotation() and e.name() == _CARRIED)}
    ops = [e for e in events if e.activity_type() == "cpu_op" and e.start_thread_id() in ours]

    def thread(e: Any) -> int | None:
        tid = e.start_thread_id()
        return None if tid == main else tid

    if device.type == "cuda":
        launched = {e.correlation_id(): (e.start_ns() / 1e6, thread(e)) for e in ops}
        launched.update({e.linked_correlation_id(): (e.start_ns() / 1e6, thread(e)) for e in events
                         if e.activity_type() == "cuda_runtime" and e.linked_correlation_id() in launched})
        activities = [Activity(e.start_ns() / 1e6, e.end_ns() / 1e6, *launched[e.linked_correlation_id()])
                      for e in events if e.device_type() != torch.autograd.DeviceType.CPU
                      and e.activity_type() in _DEVICE_ACTIVITY and e.linked_correlation_id() in launched]
    else:
        by_thread: dict[int | None, list[Any]] = {}
        for e in ops:
            by_thread.setdefault(thread(e), []).append(e)
        activities = [Activity(start, end, start, tid) for tid, mine in by_thread.items()
                      for start, end in _top_level(mine)]
    return attribute(ranges, activities, threads)


def _top_level(ops: list[Any]) -> list[tuple[float, float]]:
    """The ops not run inside another op (an aten::linear, not the addmm it calls), in ms (one thread's)."""
    spans = sorted(((e.start_ns() / 1e6, e.end_ns() / 1e6) for e in ops), key=lambda s: (s[0], -s[1]))
    out: list[tuple[float, float]] = []
    for start, end in spans:
        if not out or start >= out[-1][1]:
            out.append((start, end))
    return out


class _Failed(Exception):
    def __init__(self, module: nn.Module | None, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.module, self.exc = module, exc


@dataclass(frozen=True)
class CallTimes:
    """Per call of the counted pass (its order), in ms: device busy and idle time, and host time."""

    busy_ms: tuple[float | None, ...]
    idle_ms: tuple[float | None, ...]
    host_ms: tuple[float | None, ...]


def middle_half(values: list[Any], key: Callable[[Any], float]) -> list[Any]:
    """The middle half of ``values`` by ``key`` (a quarter dropped at each end, at least one kept): one
    pass slowed by the machine, or one that ran unusually fast, does not move the figures."""
    ordered = sorted(values, key=key)
    cut = len(ordered) // 4
    return ordered[cut:len(ordered) - cut]


def _mean_pass(passes: list[Attribution]) -> Attribution:
    """The per-call mean of several passes' attributions: means of sums are sums of means, so the calls'
    busy and idle times still add up to the (mean) span."""
    n = len(passes)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n

    def per_call(field: str) -> tuple[float, ...]:
        return tuple(mean(column) for column in zip(*(getattr(p, field) for p in passes)))

    return Attribution(busy=per_call("busy"), idle=per_call("idle"), host=per_call("host"), span_start=0.0,
                       span_end=mean(p.span for p in passes), outside_busy=mean(p.outside_busy for p in passes),
                       outside_idle=mean(p.outside_idle for p in passes))


def time_calls(tree: ModelTree, run: Callable[[], object], called: Sequence[nn.Module], repeat: int, warmup: int,
               device: torch.device, on_error: Callable[[nn.Module | None, BaseException], Exception] | None = None
               ) -> tuple[CallTimes, Timing]:
    """Per-call times averaged over the middle half (by span) of ``repeat`` profiled passes (after
    ``warmup``), and the plain forward, averaged alike over as many plain passes run alternately with
    them (so that the overhead is not the machine's drift between two stretches of passes).
    ``called`` is the module of each call the counted pass made, in order; a profiled pass that called
    other modules (control flow, random routing) cannot be matched call by call: it is left out, and
    said. A pass that raises is turned into ``on_error(module, exc)`` (the module whose call raised)."""
    plain: list[float] = []
    passes: list[Attribution] = []
    calls = len(called)
    try:
        with torch.no_grad():
            for i in range(warmup + repeat):  # alternately, so that both see the machine alike
                elapsed = _seconds(run, device)
                profiled = _profiled(tree, run, device)
                if i >= warmup:
                    plain.append(elapsed * 1e3)
                    if _same_calls(profiled.called, called):
                        passes.append(profiled.attribution)
    except _Failed as failed:
        if on_error is None:
            raise failed.exc from None
        raise on_error(failed.module, failed.exc) from failed.exc
    except MODEL_FAILURES as exc:
        if on_error is None:
            raise
        raise on_error(None, exc) from exc
    forward_ms = statistics.fmean(middle_half(plain, key=float))
    if not passes:
        return CallTimes((None,) * calls, (None,) * calls, (None,) * calls), Timing(
            device=str(device), repeat=repeat, warmup=warmup, forward_ms=forward_ms, profiled_ms=None,
            busy_ms=None, idle_ms=None, note="every profiled pass called other modules than the counted pass "
                                             "(control flow or random routing): no per-call times")
    note = None if len(passes) == repeat else (
        f"{repeat - len(passes)} of {repeat} profiled passes called other modules than the counted pass (control "
        f"flow or random routing) and are left out: per-call times are from the other {len(passes)}; the plain "
        "forwards cannot be told apart (no hooks), so the overhead and MFU may mix such passes")
    chosen = _mean_pass(middle_half(passes, key=lambda p: p.span))
    busy, idle = list(chosen.busy), list(chosen.idle)
    if calls:  # work launched outside every call (before the model's pre-hook, after its post-hook) is its own
        busy[0] += chosen.outside_busy
        idle[0] += chosen.outside_idle
    return CallTimes(tuple(busy), tuple(idle), chosen.host), Timing(
        device=str(device), repeat=repeat, warmup=warmup, forward_ms=forward_ms, profiled_ms=chosen.span,
        busy_ms=chosen.busy_total, idle_ms=chosen.idle_total, note=note)


def _same_calls(these: Sequence[nn.Module], those: Sequence[nn.Module]) -> bool:
    """The same modules called in the same order."""
    return len(these) == len(those) and all(a is b for a, b in zip(these, those))
