"""ResNet-50 against torchvision's published metadata, and the model left untouched."""
import torch
import torchvision

from inspector import inspect
from tests.conftest import assert_state_equal, hook_count, state_snapshot

META = torchvision.models.get_model_weights("resnet50").DEFAULT.meta


def test_resnet50_matches_published_metadata():
    model = torchvision.models.resnet50(weights=None)
    model.train()
    before = state_snapshot(model)
    flags = [m.training for m in model.modules()]
    report = inspect(model, torch.randn(1, 3, 224, 224))
    assert report.total_params == META["num_params"] == 25_557_032
    assert abs(report.total_macs / 1e9 - META["_ops"]) <= 0.001 * META["_ops"]
    assert report.crosscheck() == []
    assert hook_count(model) == 0
    assert [m.training for m in model.modules()] == flags
    assert_state_equal(model, before)


def test_per_layer_column_sums_to_total():
    report = inspect(torchvision.models.resnet50(weights=None), input_size=(1, 3, 224, 224), device="meta")
    assert sum(r.macs for r in report.layers) == report.total_macs
    assert sum(r.params for r in report.layers) == report.total_params
    assert report.layers[0].inclusive_macs == report.total_macs
    conv1 = report.layer("conv1")
    assert conv1.macs == 112 * 112 * 64 * 3 * 7 * 7  # 118,013,952
