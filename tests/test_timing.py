"""Per-call times from the profiler: busy and idle time add up to the profiled pass exactly, each
activity is charged to the call that launched it (checked on hand-made timelines and on a fake GPU
trace), the plain forward and the overhead are reported, and per-call memory peaks are exact."""
import time
from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn

from inspector import inspect
from inspector.peaks import datasheet_peak, precision
from inspector.timeline import Activity, attribute, host_self, innermost
from inspector.timing import _attribution
from tests.conftest import cuda


def test_attribution_by_hand():
    """The model (0-10 ms) calls a (1-4) and b (5-9); b calls c (6-7). Kernels: k1 launched by a at
    1.5, runs 2-3; k2 launched by a at 3, runs 3.5-5; k3 by c at 6.1, runs 6.2-6.8; k4 by b at 8,
    runs 8-12, overlapping k5 (launched by b at 8.5, runs 9-11: already covered, charged nothing)."""
    ranges = [(0, 10), (1, 4), (5, 9), (6, 7)]
    acts = [Activity(2, 3, 1.5), Activity(3.5, 5, 3), Activity(6.2, 6.8, 6.1), Activity(8, 12, 8),
            Activity(9, 11, 8.5)]
    a = attribute(ranges, acts)
    assert (a.span_start, a.span_end) == (0, 12)  # the model's call to the last kernel's end
    # a: idle 0->2 (the wait its first launch ended) and 3->3.5, busy 2->3 and 3.5->5; c: idle 5->6.2,
    # busy 6.2->6.8; b: idle 6.8->8, busy 8->12
    assert a.busy == pytest.approx((0, 1 + 1.5, 4, 0.6))
    assert a.idle == pytest.approx((0, 2 + 0.5, 8 - 6.8, 6.2 - 5))
    assert sum(a.busy) + sum(a.idle) == pytest.approx(a.span) == 12
    # host time: each range less its children: 10 - 3 - 4 = 3, 3, 4 - 1 = 3, 1
    assert host_self(ranges) == [3, 3, 3, 1]


def test_attribution_outside_every_call_and_empty():
    a = attribute([(1, 2)], [Activity(0, 0.5, 0), Activity(1.2, 1.5, 1.1), Activity(3, 4, 2.5)])
    assert a.outside_busy == pytest.approx(0.5 + 1) and a.outside_idle == pytest.approx(1.5)
    assert a.busy == pytest.approx((0.3,)) and a.idle == pytest.approx((0.7,))
    assert a.busy_total + a.idle_total == pytest.approx(a.span) == 4
    empty = attribute([(0, 1)], [])  # a call that ran no op: the pass is still its call, all idle
    assert (empty.busy, empty.idle, empty.span) == ((0.0,), (1.0,), 1.0)
    nothing = attribute([], [])
    assert (nothing.busy, nothing.idle, nothing.span) == ((), (), 0.0)


def test_host_work_after_the_last_activity_is_in_the_pass():
    """The model (0-10) calls a (1-4) and b (5-9); only a launches (at 1.5, runs 2-3). After 3 the host
    works on with no activity until the model returns at 10: each piece of that wait goes to the call
    open on the host then (a 3->4, the model 4->5 and 9->10, b 5->9), so the pass is the whole call."""
    a = attribute([(0, 10), (1, 4), (5, 9)], [Activity(2, 3, 1.5)])
    assert (a.span_start, a.span_end) == (0, 10)
    assert a.busy == pytest.approx((0, 1, 0))
    assert a.idle == pytest.approx((1 + 1, 2 + 1, 4))
    assert sum(a.busy) + sum(a.idle) == pytest.approx(a.span)


def test_work_on_another_thread_goes_to_its_call_or_to_the_call_that_handed_it_over():
    """The model (0-10) hands a pool thread (7) its child c (2-6 on that thread), which runs an op 3-5;
    the pool also runs a bare op 6.5-7 outside any call of its own: charged to the model, open on the
    pass's thread then. The model's own op runs 8-9."""
    ranges, threads = [(0, 10), (2, 6)], [None, 7]
    a = attribute(ranges, [Activity(3, 5, 3, thread=7), Activity(6.5, 7, 6.5, thread=7), Activity(8, 9, 8)],
                  threads)
    assert a.busy == pytest.approx((0.5 + 1, 2))
    assert a.idle == pytest.approx((1.5 + 1 + 1, 3))  # 5->6.5 and 7->8 end at the model's ops, 9->10 its own
    assert sum(a.busy) + sum(a.idle) == pytest.approx(a.span) == 10
    # host time is taken within each thread: two pool threads' calls overlap without nesting
    both = attribute([(0, 10), (2, 6), (3, 8)], [Activity(1, 2, 1)], [None, 7, 8])
    assert both.host == pytest.approx((10, 4, 5))


def test_innermost_range():
    owner = innermost([(0, 10), (1, 4), (5, 9), (6, 7)])
    assert [owner(t) for t in (0.5, 1, 2, 4.5, 5.5, 6.5, 8, 9.5, 11, -1)] == [0, 1, 1, 0, 2, 3, 2, 0, -1, -1]


@dataclass
class FakeEvent:
    """The fields of a Kineto event the timing reads."""

    label: str
    activity: str
    start: int
    end: int
    correlation: int = 0
    linked: int = 0
    device: torch.autograd.DeviceType = torch.autograd.DeviceType.CPU
    thread: int = 1

    def name(self):
        return self.label

    def activity_type(self):
        return self.activity

    def start_ns(self):
        return self.start

    def end_ns(self):
        return self.end

    def correlation_id(self):
        return self.correlation

    def linked_correlation_id(self):
        return self.linked

    def device_type(self):
        return self.device

    def start_thread_id(self):
        return self.thread

    def is_user_annotation(self):
        return self.activity == "user_annotation"


def test_a_gpu_trace_is_charged_through_correlation_ids():
    """A fake CUDA trace (ns): the model (call 0) runs 0-100 us and calls a linear (call 1, 10-40 us)
    and a relu (call 2, 50-60 us). aten::addmm (correlation 7) in the linear launches its kernel
    through cudaLaunchKernel at 20 us; the kernel runs 30-80 us. aten::relu (correlation 9) launches
    at 55 us; its kernel waits for the GPU and runs 80-85 us. A kernel of another process's op
    (linked to an unknown correlation) is ignored."""
    gpu = torch.autograd.DeviceType.CUDA
    us = 1000
    events = [
        FakeEvent("inspector#0", "user_annotation", 0, 100 * us),
        FakeEvent("inspector#1", "user_annotation", 10 * us, 40 * us),
        FakeEvent("inspector#2", "user_annotation", 50 * us, 60 * us),
        FakeEvent("aten::addmm", "cpu_op", 15 * us, 25 * us, correlation=7),
        FakeEvent("cudaLaunchKernel", "cuda_runtime", 20 * us, 22 * us, correlation=70, linked=7),
        FakeEvent("gemm_kernel", "kernel", 30 * us, 80 * us, linked=7, device=gpu),
        FakeEvent("aten::relu", "cpu_op", 54 * us, 58 * us, correlation=9),
        FakeEvent("cudaLaunchKernel", "cuda_runtime", 55 * us, 56 * us, correlation=90, linked=9),
        FakeEvent("relu_kernel", "kernel", 80 * us, 85 * us, linked=9, device=gpu),
        FakeEvent("stray_kernel", "kernel", 90 * us, 95 * us, linked=12345, device=gpu),
    ]
    a = _attribution(events, 3, torch.device("cuda"))
    # span: the model's call (0 us) to its return (100 us), after the last kernel's end (85 us)
    assert a.span == pytest.approx(0.100)
    # linear: idle 0->30 (waiting for its kernel), busy 30->80; relu: busy 80->85, no idle (the GPU was
    # busy); the model: idle 85->100 (the host in its own code, the GPU done)
    assert a.busy == pytest.approx((0, 0.050, 0.005)) and a.idle == pytest.approx((0.015, 0.030, 0))
    assert a.host == pytest.approx((0.100 - 0.030 - 0.010, 0.030, 0.010))


def test_cpu_times_add_up_to_the_profiled_pass_exactly():
    model = torchvision.models.resnet18(weights=None)
    r = inspect(model, torch.randn(1, 3, 64, 64), timing=True, repeat=3, warmup=1, peak=None)
    t = r.timing
    assert sum(rec.time_ms for rec in r.layers) == pytest.approx(t.profiled_ms, rel=1e-9)
    assert sum(rec.busy_ms for rec in r.layers) == pytest.approx(t.busy_ms, rel=1e-9)
    assert sum(rec.idle_ms for rec in r.layers) == pytest.approx(t.idle_ms, rel=1e-9)
    assert r.layer("").inclusive_time_ms == pytest.approx(t.profiled_ms, rel=1e-9)
    assert r.total("time_ms") == pytest.approx(t.profiled_ms, rel=1e-9)
    for rec in r.layers:  # every call ran an op (even a ReLU): it was busy some of the time
        assert rec.busy_ms >= 0 and rec.idle_ms >= 0 and rec.host_ms >= 0
        assert rec.inclusive_busy_ms > 0 or rec.type == "Sequential"
    assert t.forward_ms > 0 and t.overhead == pytest.approx(t.profiled_ms / t.forward_ms - 1)
    footer = r.table(depth=0)
    assert f"plain forward {t.forward_ms:.3f} ms" in footer and "measuring overhead" in footer
    assert r.to_dict()["timing"]["overhead"] == t.overhead


def test_per_call_times_are_the_mean_of_the_middle_passes(monkeypatch):
    """Two warm-ups, then six profiled passes of two calls with spans 1, 5, 2, 6, 4, 7 ms: a quarter at
    each end (1 and 7) is dropped and the middle four (2, 4, 5, 6) are averaged call by call; the means
    add up to the mean span. The plain passes, run alternately with them, are averaged alike (0.1 and
    3.0 dropped)."""
    import inspector.timing as timing

    model, inner = nn.Linear(1, 1), nn.Linear(1, 1)

    def one_pass(s: float) -> timing.ProfiledPass:  # the model's call (0..s) runs an inner call (0..s/2)
        return timing.ProfiledPass((model, inner), attribute([(0, s), (0, s / 2)], [
            Activity(0, s / 2, 0),                 # launched inside the inner call: busy in call 1
            Activity(s / 2, s, 3 * s / 4)]))       # launched after it, by the outer call: busy in call 0

    passes = iter([one_pass(s) for s in (3.0, 80.0, 1.0, 5.0, 2.0, 6.0, 4.0, 7.0)])
    plain = iter([0.5, 50.0, 1.0, 1.5, 2.0, 0.1, 2.5, 3.0])  # seconds, one before each profiled pass
    order: list[str] = []

    def profiled(tree, run, device):
        order.append("profiled")
        return next(passes)

    def plain_pass(run, device):
        order.append("plain")
        return next(plain)

    monkeypatch.setattr(timing, "_profiled", profiled)
    monkeypatch.setattr(timing, "_seconds", plain_pass)
    times, t = timing.time_calls(None, lambda: None, called=(model, inner), repeat=6, warmup=2, device=torch.device("cpu"))
    assert order == ["plain", "profiled"] * 8  # alternately: both see the machine alike
    mean = (2.0 + 4.0 + 5.0 + 6.0) / 4
    assert t.profiled_ms == pytest.approx(mean)
    assert t.forward_ms == pytest.approx(1e3 * (1.0 + 1.5 + 2.0 + 2.5) / 4)
    assert times.busy_ms == (pytest.approx(mean / 2), pytest.approx(mean / 2))
    assert sum(times.busy_ms) + sum(times.idle_ms) == pytest.approx(t.profiled_ms, rel=1e-12)
    assert (t.busy_ms, t.idle_ms) == (pytest.approx(mean), pytest.approx(0.0))
    assert t.note is None  # every pass matched the counted one's calls


def test_the_profiler_keeps_quiet(capfd):
    inspect(nn.Linear(8, 8), torch.randn(2, 8), timing=True, repeat=2, warmup=1, peak=None)
    assert capfd.readouterr().err == ""  # Kineto's own start/stop lines are not the user's business


class Flaky(nn.Module):
    """Its first call (the counted pass) runs a; every later one b after a: no pass after it matches."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.a(x) if self.calls == 1 else self.b(self.a(x))


def test_control_flow_that_changes_the_calls_leaves_times_out_and_says_so():
    r = inspect(Flaky(), torch.randn(1, 4), timing=True, repeat=2, warmup=1, peak=None)
    assert r.timing.profiled_ms is None and "control flow" in r.timing.note
    assert all(rec.time_ms is None for rec in r.layers) and "control flow" in r.table()


def test_datasheet_peaks():
    h100 = datasheet_peak("NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert (h100.name, h100.gflops, h100.gbytes_per_s) == ("NVIDIA H100 SXM", 989.4e3, 3.35e3)
    assert datasheet_peak("NVIDIA H100 PCIe", torch.float16).gflops == 756.0e3
    assert datasheet_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16).gflops == 312.0e3
    assert datasheet_peak("NVIDIA GeForce GTX 1080", torch.float16) is None
    assert datasheet_peak("Tesla T4", torch.bfloat16) is None  # no bf16 units
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert precision(torch.float32) == "fp32" and datasheet_peak("NVIDIA H200", torch.float32).gflops == 67.0e3
        torch.set_float32_matmul_precision("high")
        assert precision(torch.float32) == "tf32" and datasheet_peak("NVIDIA H200", torch.float32).gflops == 494.7e3
    finally:
        torch.set_float32_matmul_precision(saved)


def test_per_call_activation_peaks_by_hand():
    """Linear(1000 -> 1000) on 10 rows, then ReLU: each makes one 10 x 1000 float32 output (40,000 B).
    The linear needs 40,000 B above what was live; the ReLU, its input still alive, 40,000 B more;
    the model's peak above its start holds both: 80,000 B. The same on meta."""
    model = nn.Sequential(nn.Linear(1000, 1000), nn.ReLU())
    for device in ("cpu", "meta"):
        r = inspect(model, torch.randn(10, 1000), device=device)
        assert [rec.peak_bytes for rec in r.layers] == [80_000, 40_000, 40_000]
        assert r.total("peak_bytes") == 80_000 == r.peak_activation_bytes
        assert r.layer("").inclusive_peak_bytes == 80_000  # a peak is measured over the call, not summed


@cuda
def test_cuda_times_add_up_and_a_block_alone_agrees():
    """On a GPU: kernel-busy and idle time add up to the profiled pass; layer4 of resnet18 timed alone
    (its recorded input, CUDA events over 50 runs) agrees with its attribution within 25%."""
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(32, 3, 224, 224)
    r = inspect(model, x, device="cuda", timing=True, repeat=5, warmup=2)
    t = r.timing
    assert sum(rec.time_ms for rec in r.layers) == pytest.approx(t.profiled_ms, rel=1e-9)
    assert t.busy_ms > 0 and abs(t.profiled_ms / t.forward_ms - 1) < 0.5
    block = model.layer4.cuda().eval()
    inputs = torch.randn(32, 256, 14, 14, device="cuda")
    with torch.no_grad():
        for _ in range(5):
            block(inputs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(50):
            block(inputs)
        end.record()
        torch.cuda.synchronize()
    alone = start.elapsed_time(end) / 50
    model.cpu()
    assert r.layer("layer4").inclusive_time_ms == pytest.approx(alone, rel=0.25)


@cuda
def test_cuda_forward_and_call_peaks_against_the_allocator():
    """The counted forward's activation peak against torch.cuda.max_memory_allocated over a plain
    forward (the allocator rounds blocks up to 512 B: within 5%)."""
    model = torchvision.models.resnet18(weights=None).cuda().eval()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    r = inspect(model, x)
    torch.cuda.synchronize()
    with torch.no_grad():
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        model(x)
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - before
    assert r.peak_activation_bytes == pytest.approx(measured, rel=0.05)
    assert r.layer("").peak_bytes == r.peak_activation_bytes


@cuda
def test_cuda_training_step_peak_against_the_allocator():
    """The training step's measured peak (its tensors: parameters, buffers, input, optimizer state,
    and every tensor the step makes) against the allocator's peak over the same step run by hand
    after a warm-up step (the optimizer's state made): within 5%."""
    import copy

    model = torchvision.models.resnet18(weights=None).cuda()
    x = torch.randn(16, 3, 224, 224, device="cuda")
    r = inspect(model, x, backward=True, optimizer="adamw")
    twin = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    twin(x).float().sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    held = sum(t.numel() * t.element_size() for t in [*twin.parameters(), *twin.buffers(), x,
               *(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))])
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    twin(x).float().sum().backward()
    opt.step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before + held
    assert r.training_memory.peak == pytest.approx(measured, rel=0.05)


def _spin(ms: float) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < ms / 1e3:
        pass


def test_host_work_before_the_first_op_and_after_the_last_is_in_the_profiled_pass():
    """5 ms of Python before the first op (in a child with no op) and 5 ms after the last (in the model
    itself): the profiled pass covers both, as the plain forward does; the wait before the first op goes
    to the call whose op ended it, the one after the last to the call the host was in."""
    class Spin(nn.Module):
        def forward(self, x):
            _spin(5)
            return x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.lin = Spin(), nn.Linear(8, 8)

        def forward(self, x):
            y = self.lin(self.pre(x))
            _spin(5)
            return y

    r = inspect(Model(), torch.randn(2, 8), timing=True, repeat=2, warmup=1, peak=None)
    assert r.timing.profiled_ms >= 10 and r.timing.forward_ms >= 10
    assert r.layer("lin").idle_ms >= 5 and r.layer("pre").host_ms >= 5
    assert r.layer("").idle_ms >= 5  # after the last op: the model's own code
    assert sum(rec.time_ms for rec in r.layers) == pytest.approx(r.timing.profiled_ms, rel=1e-9)


def test_passes_that_call_other_modules_are_left_out_and_said():
    """A router picking one of two experts at random makes the same number of calls every pass: a pass
    that took the other expert must not lend its times to this one."""
    class Route(nn.Module):
        def __init__(self):
            super().__init__()
            self.heavy, self.light = nn.Linear(8, 8), nn.Linear(8, 8)
            self.picks = iter([True, False, True, False, False, True, False, True, True, False, True])

        def forward(self, x):
            return self.heavy(x) if next(self.picks) else self.light(x)

    r = inspect(Route(), torch.randn(2, 8), timing=True, repeat=4, warmup=1, peak=None)
    # counted: heavy; then plain/profiled pairs: warm-up (F, T), then (F, F), (T, F), (T, T), (F, T)
    assert [rec.name for rec in r.layers] == ["", "heavy"]
    assert "2 of 4 profiled passes called other modules" in r.timing.note
    assert r.layer("heavy").time_ms > 0


def test_an_interrupt_in_a_timed_pass_stops_the_profiler_and_returns_the_model():
    class Interrupted(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.calls = nn.Linear(4, 4), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:  # the counted pass, the first plain pass, then the first profiled one
                raise KeyboardInterrupt
            return self.lin(x)

    model = Interrupted()
    weight = model.lin.weight.detach().clone()
    with pytest.raises(KeyboardInterrupt):
        inspect(model, torch.randn(2, 4), timing=True, repeat=2, warmup=1, peak=None)
    assert not torch.autograd._profiler_enabled()
    assert model.calls == 0 and torch.equal(model.lin.weight, weight) and model.training  # as it was lent
    assert not model.lin._forward_hooks and not model.lin._forward_pre_hooks


def test_a_call_run_in_a_thread_pool_is_timed_where_it_is_counted():
    """The forward hands its big layer to a pool thread and waits: the layer's ops, on that thread, are
    its busy time (not idle time charged to the next call), as its MACs are counted under it."""
    from concurrent.futures import ThreadPoolExecutor

    import inspector.timing as timing

    if timing._all_threads() is None:
        pytest.skip("this torch's profiler records the profiling thread only")

    class Handed(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.pool, self.big, self.small = pool, nn.Linear(256, 256), nn.Linear(256, 4)

        def forward(self, x):
            return self.small(self.pool.submit(self.big, x).result())

    with ThreadPoolExecutor(1) as pool:
        r = inspect(Handed(pool), torch.randn(64, 256), timing=True, repeat=2, warmup=1, peak=None)
    assert r.timing.note is None and r.layer("big").macs == 64 * 256 * 256
    assert r.layer("big").busy_ms > 0 and r.layer("small").busy_ms > 0
    assert sum(rec.time_ms for rec in r.layers) == pytest.approx(r.timing.profiled_ms, rel=1e-9)


def test_launch_bound_is_judged_on_the_plain_forward():
    """Busy 4 ms in a plain forward of 10 ms: launch-bound, even if the profiled pass (its hooks and
    ranges add idle time) were mostly busy; busy 6 of 10: not, however idle the profiled pass was."""
    from inspector.report import Timing

    assert Timing("cpu", 1, 0, forward_ms=10.0, profiled_ms=5.0, busy_ms=4.0, idle_ms=1.0).launch_bound
    assert not Timing("cpu", 1, 0, forward_ms=10.0, profiled_ms=20.0, busy_ms=6.0, idle_ms=14.0).launch_bound
    assert Timing("cpu", 1, 0, forward_ms=10.0).launch_bound is None


def test_a_forward_mostly_in_python_is_launch_bound():
    """5 ms of Python around a 4 x 4 linear: busy under half the plain forward by construction (the
    other verdict is checked by hand above: a real one would rest on a ratio of two measured times)."""
    class Spun(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            _spin(5)
            return self.lin(x)

    spun = inspect(Spun(), torch.randn(2, 4), timing=True, repeat=2, warmup=1, peak=None)
    assert spun.timing.launch_bound and "launch-bound" in str(spun)


def test_timing_inside_a_profiler_of_yours_is_refused_and_leaves_it_running():
    from inspector.errors import InputError

    model = nn.Linear(4, 4)
    with torch.profiler.profile() as prof:
        model(torch.randn(2, 4))
        with pytest.raises(InputError, match="a profiler is already running"):
            inspect(model, torch.randn(2, 4), timing=True, repeat=1, warmup=0)
        assert torch.autograd._profiler_enabled()
    assert any(e.name == "aten::addmm" for e in prof.events())  # your profile is whole


def test_a_datasheet_peak_the_table_lacks_is_refused_before_any_pass():
    from inspector.errors import InputError

    model = nn.Linear(4, 4)
    runs = []
    model.register_forward_hook(lambda *_: runs.append(1))
    with pytest.raises(InputError, match="no datasheet peak for cpu in float32"):
        inspect(model, torch.randn(2, 4), timing=True, peak="datasheet")
    assert runs == []  # refused before the counted pass


def test_utilisation_says_what_its_figures_are_over_and_when_a_peak_is_exceeded():
    r = inspect(nn.Linear(256, 256), torch.randn(64, 256), timing=True, repeat=2, warmup=1, peak=(1e-3, 1.0))
    text = str(r)
    assert r.mfu > 1 and "above 100%: the given peak is not this device's for float32" in text
    assert "over each call's time in the profiled pass" in text
    assert "Per call: busy = the device running the call's own ops" in text
    modest = inspect(nn.Linear(256, 256), torch.randn(64, 256), timing=True, repeat=2, warmup=1, peak=(1e9, 1e9))
    assert "above 100%" not in str(modest)


def test_no_roofline_tally_without_per_call_times():
    r = inspect(Flaky(), torch.randn(1, 4), timing=True, repeat=2, warmup=1, peak=(100.0, 10.0))
    assert r.timing.profiled_ms is None and "Roofline" not in str(r) and "Per call:" not in str(r)


def test_bare_work_handed_to_a_pool_is_timed_under_the_call_that_handed_it_over():
    """A call submits a bare matmul (no module) to a pool and waits: the matmul's op, on the pool's
    thread, is that call's busy time, where its MACs are counted."""
    from concurrent.futures import ThreadPoolExecutor

    import inspector.timing as timing

    if timing._all_threads() is None:
        pytest.skip("this torch's profiler records the profiling thread only")

    class Hand(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return self.pool.submit(torch.mm, x, x).result()

    class Model(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.hand, self.lin = Hand(pool), nn.Linear(128, 128)

        def forward(self, x):
            return self.lin(self.hand(x))

    with ThreadPoolExecutor(1) as pool:
        r = inspect(Model(pool), torch.randn(128, 128), timing=True, repeat=2, warmup=1, peak=None)
    assert r.layer("hand").macs == 128 ** 3 and r.layer("hand").busy_ms > 0
    assert sum(rec.time_ms for rec in r.layers) == pytest.approx(r.timing.profiled_ms, rel=1e-9)


def test_timing_after_a_meta_count_that_made_up_routing_counts_on_the_device():
    """Top-1 routing by the router's scores: meta cannot know the pick, so a count on meta copies would
    show another expert than the timed passes run; with timing, the count is redone on the device."""
    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(8, 4)
            self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            pick = int(self.router(x).argmax(-1)[0])
            return self.experts[pick](x)

    torch.manual_seed(0)
    model, x = MoE(), torch.randn(1, 8)
    chosen = int(model.router(x).argmax(-1)[0])
    r = inspect(model, x, timing=True, repeat=2, warmup=1, peak=None, count_on="meta")
    assert [rec.name for rec in r.layers] == ["", "router", f"experts.{chosen}"] and r.timing.note is None
    assert any("the timed passes need the calls that really run" in note for note in r.notes)
