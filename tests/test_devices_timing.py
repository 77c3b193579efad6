"""Devices, dtypes and timing."""
import pytest
import torch
import torchvision

from inspector import inspect
from models import BlogCNN
from tests.conftest import cuda


@pytest.mark.parametrize("dtype,size", [("float32", 4), ("float16", 2), ("bfloat16", 2)])
def test_dtype_changes_memory_not_counts(dtype, size):
    r = inspect(BlogCNN(), dtype=dtype)
    assert (r.total_params, r.total_macs) == (38, 88)
    assert r.param_bytes == 38 * size and r.dtype == dtype


def test_timing_sums_to_a_whole_forward():
    model = torchvision.models.resnet18(weights=None)
    r = inspect(model, torch.randn(1, 3, 112, 112), timing=True, repeat=5, warmup=2)
    t = r.timing
    assert all(rec.time_ms > 0 for rec in r.layers)
    assert abs(r.layers[0].time_ms - t.hooked_forward_ms) / t.hooked_forward_ms < 0.25
    assert abs(t.layer_sum_ms - t.forward_ms) / t.forward_ms < 0.25
    assert "Time ms" in r.table(depth=1)


def test_timing_refuses_meta():
    with pytest.raises(ValueError, match="meta"):
        inspect(BlogCNN(), device="meta", timing=True)


@cuda
def test_cuda_counts_equal_cpu_and_model_stays_on_cpu():
    model = torchvision.models.resnet18(weights=None)
    cpu = inspect(model)
    gpu = inspect(model, device="cuda", timing=True)
    assert (gpu.total_macs, gpu.total_params) == (cpu.total_macs, cpu.total_params)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert gpu.timing.device.startswith("cuda")
