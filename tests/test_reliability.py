"""The model is never changed; bad input gets a one-line error naming the layer and shapes."""
import collections
import gc
import tracemalloc

import pytest
import torch
from torch import nn

from inspector import (InputError, InspectorError, LayerError, NotAModuleError, UnknownModelError,
                       UnsupportedModelError, inspect)
from inspector.sources import torchvision_source as zoo
from models import BlogANN, BlogCNN
from tests.conftest import assert_state_equal, hook_count, state_snapshot


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and isinstance(exc.value, InspectorError)
    return text


def test_not_a_module():
    with pytest.raises(NotAModuleError) as exc:
        inspect(lambda x: x)
    assert "torch.nn.Module" in _one_line(exc)


def test_wrong_input_shape_names_layer_config_and_shape():
    with pytest.raises(LayerError) as exc:
        inspect(BlogANN(), torch.randn(1, 1, 5, 5))
    msg = _one_line(exc)
    assert "'net.1'" in msg and "in_features=16" in msg and "(1, 25)" in msg


def test_integer_image_into_conv():
    with pytest.raises(LayerError) as exc:
        inspect(BlogCNN(), torch.ones(1, 1, 4, 4, dtype=torch.long))
    msg = _one_line(exc)
    assert "'net.0'" in msg and "Conv2d" in msg and "int64" in msg


def test_tensor_on_another_device_inside_forward():
    class Stray(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.offset = torch.ones(4)  # a plain attribute, not a buffer: stays on the CPU

        def forward(self, x):
            return self.fc(x) + self.offset

    with pytest.raises(LayerError) as exc:
        inspect(Stray(), torch.randn(1, 4), device="meta")
    assert "(model)" in _one_line(exc) and "(1, 4)" in str(exc.value)


def test_model_split_over_devices():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to("meta"))
    with pytest.raises(InputError, match="several devices"):
        inspect(model, torch.randn(1, 2))


@pytest.mark.parametrize("size", [(1, 0, 4), (1, -3), (1, 2.5), "1,3", ()])
def test_bad_input_size(size):
    with pytest.raises(InputError) as exc:
        inspect(BlogANN(), input_size=size)
    assert "input_size" in _one_line(exc)


def test_missing_forward_argument():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, y):
            return self.fc(x) + y

    with pytest.raises(InputError) as exc:
        inspect(TwoInputs(), torch.randn(1, 4))
    assert "forward(x, y)" in _one_line(exc) and "1 positional" in str(exc.value)


def test_unknown_model_name():
    with pytest.raises(UnknownModelError) as exc:
        zoo.torchvision_model("resnet5O")
    assert "resnet50" in _one_line(exc)


def test_torchscript_module():
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError) as exc:
        inspect(scripted, torch.randn(1, 2))
    assert "TorchScript" in _one_line(exc) and "eager" in str(exc.value)


@pytest.mark.parametrize("model", [nn.Sequential(), nn.Module(), nn.ModuleList([nn.Linear(2, 2)])])
def test_empty_or_forwardless_model(model):
    with pytest.raises(UnsupportedModelError) as exc:
        inspect(model, torch.randn(1, 2))
    _one_line(exc)


def test_bad_dtype_and_device_names():
    with pytest.raises(InputError, match="dtype"):
        inspect(BlogANN(), dtype="float8")
    with pytest.raises(InputError, match="device"):
        inspect(BlogANN(), device="gpu0")


# --- the model is borrowed, never changed ----------------------------------------------------------

def _bn_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 6, 6))
    net[0].weight.requires_grad_(False)
    net[4].eval()  # mixed training flags
    return net


@pytest.mark.parametrize("mode", ["eval", "train", "as_is"])
def test_state_flags_and_grads_restored(mode):
    net = _bn_net()
    before = state_snapshot(net)
    flags = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    report = inspect(net, torch.randn(2, 3, 6, 6), mode=mode)
    assert report.mode == mode
    assert_state_equal(net, before)  # BatchNorm running stats untouched even in train mode
    assert [m.training for m in net.modules()] == flags
    assert [p.requires_grad for p in net.parameters()] == grads
    assert hook_count(net) == 0
    assert report.trainable_params == report.total_params - 4 * 3 * 9


def test_state_restored_when_forward_raises():
    net = _bn_net()
    net.train()
    before = state_snapshot(net)
    with pytest.raises(LayerError):
        inspect(net, torch.randn(2, 3, 9, 9), mode="train")  # wrong size reaches the Linear
    assert hook_count(net) == 0
    assert [m.training for m in net.modules()] == [True, True, True, True, True, True]
    assert_state_equal(net, before)


def test_device_and_dtype_of_model_unchanged():
    net = BlogCNN()
    report = inspect(net, device="meta", dtype="bfloat16")
    assert {p.device.type for p in net.parameters()} == {"cpu"}
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert report.device == "meta" and report.dtype == "bfloat16"
    assert report.param_bytes == 38 * 2


def test_no_autograd_graph_or_activations_kept():
    net = BlogANN()
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    report = inspect(net, x)
    assert x.grad is None and all(p.grad is None for p in net.parameters())
    assert all(not isinstance(v, torch.Tensor) for r in report.layers for v in vars(r).values())


# --- hard models -------------------------------------------------------------------------------------

class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.backbone.requires_grad_(False)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_frozen_subnetwork_split():
    r = inspect(Frozen(), torch.randn(1, 8))
    assert (r.trainable_params, r.frozen_params) == (18, 72)


Out = collections.namedtuple("Out", "logits extra")


class Messy(nn.Module):
    """Several positional and keyword inputs, integer tokens, dict/list/namedtuple/None outputs,
    ModuleList and ModuleDict, and control flow that depends on the input."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 2), "b": nn.Linear(8, 3)})

    def forward(self, tokens, mask=None, *, depth=2, head="a"):
        x = self.embed(tokens)
        steps = depth if x.shape[1] < 10 else 3  # control flow on the input's shape
        for block in self.blocks[:steps]:
            x = block(x)
        if mask is not None:
            x = x * mask.unsqueeze(-1)
        return {"out": Out(self.heads[head](x), [x, None]), "none": None}


def test_messy_model():
    tokens = torch.randint(0, 20, (2, 5))
    r = inspect(Messy(), (tokens, torch.ones(2, 5)), kwargs={"depth": 1, "head": "b"})
    assert r.total_macs == 2 * 5 * (8 * 8 + 8 * 3)  # one block, head b
    assert r.total_params == 20 * 8 + 3 * 72 + 18 + 27
    assert {n for n, _ in r.uncalled} == {"blocks.1", "blocks.2", "heads.a"}
    long = inspect(Messy(), torch.randint(0, 20, (1, 12)))
    assert long.total_macs == 12 * (3 * 64 + 16)


def test_data_parallel_wrapper():
    """Counted on the module it wraps (its replicas do that work; its own forward refuses substituted
    weights), and said so."""
    r = inspect(nn.DataParallel(BlogANN()), torch.randn(1, 1, 4, 4))
    assert r.total_params == 154 and r.total_macs == 144
    assert r.layer("net.1").macs == 128
    assert any("DataParallel" in n for n in r.notes)


def test_compiled_module_is_inspected_through():
    compiled = torch.compile(BlogCNN())
    r = inspect(compiled, torch.randn(1, 1, 4, 4))
    assert r.total_macs == 88 and any("torch.compile" in n for n in r.notes)


def test_model_without_inputs_gets_params_and_a_note():
    class NoHint(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    r = inspect(NoHint())
    assert r.total_params == 3 and r.total_macs is None
    assert "pass inputs" in str(r)


def test_input_inferred_from_first_layer():
    r = inspect(nn.Sequential(nn.Linear(6, 3), nn.ReLU()))
    assert r.input_shapes == ((1, 6),) and r.total_macs == 18
    assert any("first layer" in n for n in r.notes)


def test_no_memory_growth_over_repeated_calls():
    net, x = BlogCNN(), torch.randn(1, 1, 4, 4)
    for _ in range(20):
        inspect(net, x)
    gc.collect()
    tracemalloc.start()
    first, _ = tracemalloc.get_traced_memory()
    for _ in range(300):
        inspect(net, x)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - first
    tracemalloc.stop()
    assert grown < 200_000, f"{grown} bytes kept after 300 inspections"


class _Counter(nn.Module):
    """Writes its buffers during an eval-mode forward: in place, and by replacing one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("seen", torch.zeros(()))
        self.register_buffer("last", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        self.last = x.detach().mean(0)
        return self.lin(x)


@pytest.mark.parametrize("device", [None, "meta"])
def test_buffers_written_or_replaced_in_eval_forward_are_given_back(device):
    """Same device: buffers cloned and written back. Meta: substituted copies (nothing to restore)."""
    net = _Counter().eval()
    seen, last = net.seen, net.last
    before = state_snapshot(net)
    if device is None:
        inspect(net, torch.randn(3, 4), timing=True, repeat=2, warmup=1, peak=None)
    else:
        inspect(net, torch.randn(3, 4), device=device)
    assert net.seen is seen and net.last is last  # the very same tensors, with their old values
    assert_state_equal(net, before)


def test_model_tree_agrees_with_torch_iterators():
    """ModelTree walks once; it must list what named_modules/parameters/buffers list, in order,
    with tied weights and shared modules."""
    from inspector.tree import ModelTree

    shared = nn.Linear(3, 3)
    net = nn.Sequential(nn.Embedding(5, 3), shared, nn.ReLU(), shared, nn.BatchNorm1d(3), nn.Linear(3, 5))
    net[5].weight = net[0].weight  # tied
    tree = ModelTree(net)
    assert [n for n, _ in tree.modules] == [n for n, _ in net.named_modules()]
    assert [n for n, _ in tree.paths] == [n for n, _ in net.named_modules(remove_duplicate=False)]
    assert [(n, id(p)) for n, p in tree.parameters] == [(n, id(p)) for n, p in net.named_parameters()]
    assert ([(n, id(p)) for n, p, _ in tree.param_paths]
            == [(n, id(p)) for n, p in net.named_parameters(remove_duplicate=False)])
    assert [(n, id(b)) for n, b in tree.buffers] == [(n, id(b)) for n, b in net.named_buffers()]
    assert tree.has_tied_params and not ModelTree(BlogCNN()).has_tied_params
    report = inspect(net, torch.randint(0, 5, (2,)))
    assert report.total_params == sum(p.numel() for p in net.parameters())  # tied and shared once
    assert report.layer("1").module_params == 12 and report.layer("5").module_params == 15 + 5


def test_other_models_running_during_collection_are_ignored():
    """The post-hook is process-wide: a module outside the inspected tree, called from inside the
    forward (an unregistered helper), must neither pop frames nor be counted as a layer."""
    helper = nn.Linear(4, 4)  # held in a plain list: not a submodule

    class Host(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)
            self.helpers = [helper]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.helpers[0](x))

    report = inspect(Host(), torch.randn(2, 4))
    assert [r.name for r in report.layers] == ["", "inner"]
    assert report.layer("").macs == 2 * 16  # the helper's matmul runs in the host's own forward
    assert report.total_macs == 2 * 2 * 16 and report.crosscheck() == []
    assert hook_count(helper) == 0
