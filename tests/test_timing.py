"""Per-call times from the profiler: busy and idle time add up to the profiled pass exactly, each
activity is charged to the call that launched it (checked on hand-made timelines and on a fake GPU
trace), the plain forward and the overhead are reported, and per-call memory peaks are exact."""
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
    assert (a.span_start, a.span_end) == (1.5, 12)  # first launch to last kernel end
    # a: idle 1.5->2 and 3->3.5, busy 2->3 and 3.5->5; c: idle 5->6.2, busy 6.2->6.8; b: idle 6.8->8, busy 8->12
    assert a.busy == pytest.approx((0, 1 + 1.5, 4, 0.6))
    assert a.idle == pytest.approx((0, 0.5 + 0.5, 8 - 6.8, 6.2 - 5))
    assert sum(a.busy) + sum(a.idle) == pytest.approx(a.span) == 10.5
    # host time: each range less its children: 10 - 3 - 4 = 3, 3, 4 - 1 = 3, 1
    assert host_self(ranges) == [3, 3, 3, 1]


def test_attribution_outside_every_call_and_empty():
    a = attribute([(1, 2)], [Activity(0, 0.5, 0), Activity(1.2, 1.5, 1.1), Activity(3, 4, 2.5)])
    assert a.outside_busy == pytest.approx(0.5 + 1) and a.outside_idle == pytest.approx(1.5)
    assert a.busy == pytest.approx((0.3,)) and a.idle == pytest.approx((0.7,))
    assert a.busy_total + a.idle_total == pytest.approx(a.span) == 4
    empty = attribute([(0, 1)], [])
    assert (empty.busy, empty.idle, empty.span) == ((0.0,), (0.0,), 0.0)


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
    # span: first launch 20 us to last kernel end 85 us = 65 us = 0.065 ms
    assert a.span == pytest.approx(0.065)
    # linear: idle 20->30 (waiting for its kernel), busy 30->80; relu: busy 80->85, no idle (the GPU was busy)
    assert a.busy == pytest.approx((0, 0.050, 0.005)) and a.idle == pytest.approx((0, 0.010, 0))
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

    def one_pass(s: float) -> timing.ProfiledPass:  # the model's call (0..s) runs an inner call (0..s/2)
        return timing.ProfiledPass(2, attribute([(0, s), (0, s / 2)], [
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
    times, t = timing.time_calls(None, lambda: None, calls=2, repeat=6, warmup=2, device=torch.device("cpu"))
    assert order == ["plain", "profiled"] * 8  # alternately: both see the machine alike
    mean = (2.0 + 4.0 + 5.0 + 6.0) / 4
    assert t.profiled_ms == pytest.approx(mean)
    assert t.forward_ms == pytest.approx(1e3 * (1.0 + 1.5 + 2.0 + 2.5) / 4)
    assert times.busy_ms == (pytest.approx(mean / 2), pytest.approx(mean / 2))
    assert sum(times.busy_ms) + sum(times.idle_ms) == pytest.approx(t.profiled_ms, rel=1e-12)
    assert (t.busy_ms, t.idle_ms) == (pytest.approx(mean), pytest.approx(0.0))


def test_the_profiler_keeps_quiet(capfd):
    inspect(nn.Linear(8, 8), torch.randn(2, 8), timing=True, repeat=2, warmup=1, peak=None)
    assert capfd.readouterr().err == ""  # Kineto's own start/stop lines are not the user's business


def test_control_flow_that_changes_the_calls_leaves_times_out_and_says_so():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.a(x) if self.calls == 1 else self.b(self.a(x))

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
