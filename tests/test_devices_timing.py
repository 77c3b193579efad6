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
    assert t.forward_ms > 0 and t.profiled_ms > 0 and t.repeat == 3
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
    r = inspect(model, device="cuda", dtype="float16", timing=True, repeat=5, warmup=2, peak="measure")
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
    for peak in ("measure", "auto"):  # "auto" on a CPU: no datasheet, the probes
        r = inspect(torch.nn.Linear(64, 64), torch.randn(4, 64), timing=True, repeat=2, warmup=1, peak=peak)
        assert (r.timing.peak_gflops, r.timing.peak_gbytes_per_s, r.timing.peak_source) == (gflops, gbytes, "measured")


@pytest.mark.parametrize("peak", [(1.0,), (0.0, 5.0), "fast", (-1, 2)])
def test_bad_peak_is_refused_before_running(peak):
    from inspector.errors import InputError

    with pytest.raises(InputError, match="peak"):
        inspect(torch.nn.Linear(4, 4), torch.randn(1, 4), timing=True, peak=peak)


def test_counting_on_meta_copies_gives_the_same_counts_and_leaves_the_model():
    """count_on="meta" (the default for a GPU forward) counts on meta copies: the same figures as on
    the device, every closed form agreeing, and the model untouched."""
    from tests.conftest import assert_untouched, snapshot

    model = torchvision.models.mobilenet_v3_small(weights=None)
    x = torch.randn(2, 3, 96, 96)
    before = snapshot(model)
    on_device, on_meta = inspect(model, x), inspect(model, x, count_on="meta")
    assert_untouched(model, before)
    assert (on_meta.total_macs, on_meta.total_params) == (on_device.total_macs, on_device.total_params)
    # batch norm's meta kernel returns its statistics ((C,) each) in eval where the CPU's returns empty ones
    assert on_meta.peak_activation_bytes == pytest.approx(on_device.peak_activation_bytes, rel=1e-3)
    assert [r.macs for r in on_meta.layers] == [r.macs for r in on_device.layers]
    assert on_meta.crosscheck() == [] and on_meta.device == "cpu"
    assert any("counted on meta copies" in note for note in on_meta.notes)


def test_a_forward_that_needs_values_is_counted_on_the_device_instead():
    """A forward that writes an attribute and then asks the value of a result computed from the weights
    (.item()) fails on meta, where only the inputs' values are known: the device pass starts from the model
    as it was (the attribute written on meta taken back) and counts it."""
    from tests.conftest import assert_untouched, snapshot

    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            self.seen = getattr(self, "seen", 0) + 1  # a second pass would see 2 if the first stayed
            assert self.seen == 1, "the model was not given back between passes"
            y = self.fc(x)
            return y if y.sum().item() > -1e9 else x

    model = Gate()
    before = snapshot(model)
    r = inspect(model, torch.randn(4, 8), count_on="meta")
    assert r.total_macs == 4 * 8 * 8 and r.complete
    assert any(note.startswith("counted on cpu: the pass on meta copies failed") for note in r.notes)
    assert_untouched(model, before)


def test_count_on_is_checked():
    with pytest.raises(InputError, match="count_on"):
        inspect(torch.nn.Linear(2, 2), torch.randn(1, 2), count_on="gpu")
