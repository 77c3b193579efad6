"""Devices, dtypes and timing."""
import pytest
import torch
import torchvision

from inspector import InputError, inspect
from models import BlogCNN
from tests.conftest import cuda


@pytest.mark.parametrize("dtype,size", [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_dtype_changes_memory_not_counts(dtype, size):
    r = inspect(BlogCNN(), dtype=dtype)
    assert (r.total_params, r.total_macs) == (38, 88)
    assert r.param_bytes == 38 * size and r.dtype == dtype


def test_timing_gives_every_call_a_time():
    """Structure only: how times compare with each other depends on the machine's load, so no ratio
    of wall-clock times is asserted here (benchmarks/ measures those)."""
    model = torchvision.models.resnet18(weights=None)
    r = inspect(model, torch.randn(1, 3, 112, 112), timing=True, repeat=3, warmup=1, peak=None)
    t = r.timing
    assert all(rec.inclusive_time_ms is not None and rec.inclusive_time_ms > 0 for rec in r.layers)
    assert t.forward_ms > 0 and t.hooked_forward_ms > 0 and t.repeat == 3
    assert "Time ms" in r.table(depth=1)


def test_timing_refuses_meta():
    with pytest.raises(InputError, match="meta"):
        inspect(BlogCNN(), device="meta", timing=True)


@cuda
def test_cuda_counts_equal_cpu_and_model_stays_on_cpu():
    model = torchvision.models.resnet18(weights=None)
    cpu = inspect(model)
    gpu = inspect(model, device="cuda", timing=True)
    assert (gpu.total_macs, gpu.total_params) == (cpu.total_macs, cpu.total_params)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert gpu.timing.device.startswith("cuda")


@cuda
def test_cuda_timing_roofline_and_no_memory_left_behind():
    import gc

    model = torchvision.models.resnet18(weights=None)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    r = inspect(model, device="cuda", dtype="float16", timing=True, repeat=5, warmup=2)
    assert (r.total_macs, r.dtype, r.device) == (inspect(model, device="meta").total_macs, "float16", "cuda:0")
    assert all(rec.inclusive_time_ms > 0 for rec in r.layers)
    assert r.timing.peak_source == "measured" and r.timing.peak_gflops > 1000 and r.timing.peak_gbytes_per_s > 100
    assert {row["bound"] for row in r.roofline()} <= {"compute", "memory"}
    del r
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before  # substituted weights and activations all freed
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_roofline_figures_by_hand():
    """Linear(1024 -> 1024) on 64 rows: FLOPs 2*64*1024*1024; bytes: input 64*1024, weights
    1024*1024 + bias 1024, output 64*1024, all float32. ReLU moves 2 * 64*1024*4 bytes, no FLOPs."""
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU())
    r = inspect(model, torch.randn(64, 1024), timing=True, repeat=3, warmup=1, peak=(100.0, 10.0))
    linear, relu = r.layer("0"), r.layer("1")
    assert linear.inclusive_flops == 2 * 64 * 1024 * 1024
    assert linear.bytes_moved == 4 * (64 * 1024 + 1024 * 1024 + 1024 + 64 * 1024)
    assert linear.arithmetic_intensity == pytest.approx(2 * 64 * 1024 * 1024 / linear.bytes_moved)
    assert linear.achieved_gflops == pytest.approx(linear.inclusive_flops / (linear.time_ms * 1e-3) / 1e9)
    assert relu.bytes_moved == 2 * 64 * 1024 * 4 and relu.arithmetic_intensity == 0
    # ridge = 100 / 10 = 10 FLOP/B: the linear (about 29 FLOP/B) is compute-bound, the ReLU memory-bound
    assert r.timing.ridge == 10.0 and r.timing.peak_source == "given"
    assert (linear.bound(100, 10), relu.bound(100, 10)) == ("compute", "memory")
    rows = {row["layer"]: row for row in r.roofline()}
    assert rows["0"]["roof_gflops"] == 100.0
    assert rows["1"]["roof_gflops"] == 0.0 and rows["1"]["bound"] == "memory"
    table = r.table()
    assert "Bound" in table and "compute" in table and "ridge 10.0 FLOP/B" in table
    assert r.to_dict()["timing"]["ridge"] == 10.0


def test_roofline_bytes_follow_the_dtype():
    model = torch.nn.Linear(256, 256)
    r32 = inspect(model, torch.randn(8, 256), timing=True, repeat=2, warmup=1, peak=None)
    r16 = inspect(model, torch.randn(8, 256), dtype="bfloat16", timing=True, repeat=2, warmup=1, peak=None)
    assert r16.layers[0].bytes_moved * 2 == r32.layers[0].bytes_moved
    assert r32.timing.ridge is None and "Bound" not in r32.table()


def test_measured_peak_is_positive_and_cached():
    from inspector.timing import measure_peak

    gflops, gbytes = measure_peak("cpu")
    assert gflops > 1 and gbytes > 0.5
    assert measure_peak("cpu") == (gflops, gbytes)  # measured once per process
    r = inspect(torch.nn.Linear(64, 64), torch.randn(4, 64), timing=True, repeat=2, warmup=1)
    assert (r.timing.peak_gflops, r.timing.peak_gbytes_per_s, r.timing.peak_source) == (gflops, gbytes, "measured")


@pytest.mark.parametrize("peak", [(1.0,), (0.0, 5.0), "fast", (-1, 2)])
def test_bad_peak_is_refused_before_running(peak):
    from inspector.errors import InputError

    with pytest.raises(InputError, match="peak"):
        inspect(torch.nn.Linear(4, 4), torch.randn(1, 4), timing=True, peak=peak)


def test_timing_reads_clock_marks_per_call(monkeypatch):
    """The clock protocol the CUDA path uses (marks at hooks, one settle per pass, seconds read
    afterwards), driven by a fake clock whose marks count hook events: each call's time is then the
    number of marks taken inside it, exactly."""
    from inspector import timing

    class CountingClock(timing.Clock):
        def __init__(self, device):
            super().__init__(device)
            self.ticks = 0
            self.settled = 0

        def mark(self):
            self.ticks += 1
            return self.ticks

        def settle(self):
            self.settled += 1

    clocks = []
    monkeypatch.setattr(timing, "clock_for", lambda device: clocks.append(CountingClock(device)) or clocks[-1])
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Tanh()))
    r = inspect(model, torch.randn(2, 3), timing=True, repeat=3, warmup=1, peak=None)
    # marks in one hooked pass: start, pre/post of 5 calls, end. A leaf spans 1 tick (its pre to its
    # post); the inner Sequential spans its two leaves (5 ticks); the model spans 9 ticks.
    assert [rec.inclusive_time_ms for rec in r.layers] == [9e3, 1e3, 5e3, 1e3, 1e3]
    # own times: model 9 - 1 - 5 = 3, inner Sequential 5 - 1 - 1 = 3, leaves 1 each: they sum to 9
    assert [rec.time_ms for rec in r.layers] == [3e3, 1e3, 3e3, 1e3, 1e3]
    assert r.timing.layer_sum_ms == 9e3
    # a plain pass takes 2 marks (1 tick); a hooked one 2 + 10 (11 ticks from first to last)
    assert (r.timing.forward_ms, r.timing.hooked_forward_ms) == (1e3, 11e3)
    assert clocks[0].settled == 2 * (3 + 1)  # once per pass: plain and hooked, warm-up included
