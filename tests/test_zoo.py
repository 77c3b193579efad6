"""Every torchvision model against its published metadata (num_params exact, MACs within 1%)."""
import pytest
import torch

from inspector import UnknownModelError, inspect
from inspector.sources import torchvision_source as zoo
from tests.conftest import assert_state_equal, hook_count, state_snapshot

CLASSIFICATION = zoo.list_names("classification")


@pytest.fixture(autouse=True)
def check_fast_meta_kernels(monkeypatch):
    """Every fast meta kernel's output is compared with the real meta kernel's on every model here
    (shape, strides, dtype); any difference fails the test."""
    from inspector import meta_fast

    monkeypatch.setattr(meta_fast, "CHECK", True)
EXACT_FAMILIES = zoo.list_names("segmentation") + zoo.list_names("video")


def _check_against_metadata(name: str, device: str = "meta") -> None:
    published = zoo.entry(name)
    model = zoo.torchvision_model(name, device=device)
    before = state_snapshot(model)
    report = inspect(model, zoo.example_inputs(name, device))
    assert report.total_params == published.num_params
    assert abs(report.total_macs / 1e9 - published.gmacs) <= max(0.01 * published.gmacs, 0.0005)
    assert report.crosscheck() == [], report.crosscheck().summary()
    assert report.uncounted_ops == {}
    assert hook_count(model) == 0
    assert_state_equal(model, before)


def test_registry_has_the_80_classification_models():
    assert len(CLASSIFICATION) == 80


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_model(name):
    _check_against_metadata(name)


@pytest.mark.parametrize("name", EXACT_FAMILIES)
def test_segmentation_and_video_model(name):
    _check_against_metadata(name)


# Models whose counts depend on data or that cannot run on meta: they must run and be accounted
# for; docs/model-coverage.md explains each one's distance from the published figure.
@pytest.mark.parametrize("name", ["quantized_resnet18", "quantized_mobilenet_v3_large", "raft_small",
                                  "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"])
def test_other_families_run(name):
    device = "meta" if zoo.entry(name).family == "optical_flow" else "cpu"
    model = zoo.torchvision_model(name, device=device)
    report = inspect(model, zoo.example_inputs(name, device))
    assert report.total_macs > 0 and report.uncounted_ops == {} and report.crosscheck() == []


def test_quantized_model_counts_the_float_models_macs():
    report = inspect(zoo.torchvision_model("quantized_resnet18"))
    assert abs(report.total_macs / 1e9 - zoo.entry("quantized_resnet18").gmacs) <= 0.01 * 1.814


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0"])
def test_cpu_and_meta_give_identical_counts(name):
    cpu = inspect(zoo.torchvision_model(name, device="cpu"))
    meta = inspect(zoo.torchvision_model(name, device="meta"))
    assert cpu.total_macs == meta.total_macs and cpu.total_params == meta.total_params
    assert [(r.name, r.inclusive_macs) for r in cpu.layers] == [(r.name, r.inclusive_macs) for r in meta.layers]


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError, match="resnet50"):
        zoo.torchvision_model("resnet05")


def test_builder_never_downloads():
    for name in zoo.list_names():
        kwargs = zoo.builder_kwargs(name)
        assert kwargs["weights"] is None and kwargs.get("weights_backbone", None) is None


def test_meta_build_allocates_nothing():
    model = zoo.torchvision_model("regnet_y_128gf", device="meta")  # its constructor computes on tensors
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.parameters()) == zoo.entry("regnet_y_128gf").num_params
    assert torch.device("meta") == next(model.buffers()).device
