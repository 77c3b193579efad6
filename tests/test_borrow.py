"""The model comes back exactly as it was: whatever its forward writes, on every device, also after a
raise, and when two threads inspect it at once. Each case checks a full snapshot (tests/conftest.py)."""
import gc
import threading

import pytest
import torch
import torch.ao.quantization as tq
import torch.nn.utils.prune as prune
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from inspector import LayerError, inspect
from tests.conftest import assert_untouched, snapshot


class MulWeight(nn.Module):
    """Scales a parameter in place under no_grad, through a view and through .data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            self.fc.weight.mul_(2)
            self.fc.weight[0].zero_()
        self.fc.bias.data.add_(1)
        return self.fc(x)


class AssignData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc.weight.data = torch.zeros_like(self.fc.weight)
        return self.fc(x)


class ReplaceParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.fc.weight = nn.Parameter(torch.zeros_like(self.fc.weight))
        return self.fc(x)


class Creates(nn.Module):
    """Adds a submodule, a buffer, a plain attribute and a hook during forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        self.extra = nn.Linear(4, 4, device=x.device, dtype=x.dtype)
        self.register_buffer("made", torch.ones(1))
        self.note = "seen"
        self.fc.register_forward_hook(lambda *a: None)
        return self.extra(self.fc(x))


class TensorAttribute(nn.Module):
    """Keeps plain tensors as attributes (neither parameter nor buffer) and writes them: one in
    place, one re-pointed through .data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = torch.ones(4)
        self.shift = torch.zeros(4)

    def forward(self, x):
        self.scale.mul_(2)
        self.shift.data = torch.full_like(self.shift, 3.0)
        return self.fc(x) * self.scale + self.shift


class ExpandedBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.ones(1, 4).expand(3, 4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + self.offset


class InferenceBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.inference_mode():
            self.register_buffer("offset", torch.ones(4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + self.offset


#: What TrainOverride modules last heard from train(), outside any module (so only train() can put it back).
MODE_SEEN: dict[int, bool] = {}


class TrainOverride(nn.Module):
    """Its train() keeps a cache in step with the mode: eval() fills it, train() clears it; and it
    tells a registry outside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cache = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.cache = None if mode else self.fc.weight.detach().clone()
        MODE_SEEN[id(self)] = mode
        return self

    def forward(self, x):
        return self.fc(x)


def _qat() -> nn.Module:
    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU(), tq.DeQuantStub())
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    model.train()
    return tq.prepare_qat(model)  # per-channel observers resize their buffers on the first forward


def _pruned() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4))
    prune.l1_unstructured(model[0], "weight", 0.5)  # weight becomes a plain attribute set by a pre-hook
    return model


def _with_grads() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model(torch.randn(3, 4)).sum().backward()  # the user's own gradients, mid-training
    return model


def _bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()


CASES = {
    "in-place writes to parameters": (MulWeight, (2, 4)),
    ".data assigned": (AssignData, (2, 4)),
    "parameter replaced": (ReplaceParameter, (2, 4)),
    "modules, buffers, attributes and hooks created": (Creates, (2, 4)),
    "plain tensor attributes written": (TensorAttribute, (2, 4)),
    "expanded (stride 0) buffer": (ExpandedBuffer, (3, 4)),
    "inference-tensor buffer": (InferenceBuffer, (2, 4)),
    "train() override with state": (lambda: TrainOverride().train(), (2, 4)),
    "embedding renormalised (max_norm)": (lambda: nn.Embedding(10, 4, max_norm=1.0), None),
    "QAT observers resize buffers": (_qat, (1, 3, 8, 8)),
    "BatchNorm statistics in train mode": (_bn, (2, 3, 8, 8)),
    "pruning (plain weight attribute)": (_pruned, (2, 4)),
    "gradients of the user's own backward": (_with_grads, (2, 4)),
    "old weight_norm": (lambda: nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(4, 4))), (2, 4)),
    "old spectral_norm (power iteration writes u, v)": (lambda: nn.Sequential(torch.nn.utils.spectral_norm(
        nn.Linear(4, 4))), (2, 4)),
    "parametrized spectral_norm": (lambda: nn.Sequential(parametrizations.spectral_norm(nn.Linear(4, 4))), (2, 4)),
}
RUNS = {"same device": {}, "meta": {"device": "meta"}, "float64": {"dtype": "float64"},
        "train mode": {"mode": "train"}, "timed": {"timing": True, "repeat": 2, "warmup": 1, "peak": None}}


def _input(shape):
    return torch.tensor([[1, 2, 3]]) if shape is None else torch.randn(shape)


#: Combinations the model itself cannot run: fake quantization has float32 kernels only; plain tensor
#: attributes stay on the CPU (as model.to() would leave them), so the forward cannot run on meta.
CANNOT_RUN = {("QAT observers resize buffers", "float64"), ("plain tensor attributes written", "meta")}


@pytest.mark.parametrize("case,run", [(c, r) for c in CASES for r in RUNS if (c, r) not in CANNOT_RUN])
def test_model_comes_back_exactly(case, run):
    make, shape = CASES[case]
    model = make()
    before = snapshot(model)
    report = inspect(model, _input(shape), **RUNS[run])
    assert report.total_macs is not None
    assert_untouched(model, before)


def test_training_flags_are_restored_through_train():
    """A module's own train() runs when its flag is put back, so state it keeps outside the model follows."""
    model = TrainOverride().train()
    inspect(model, torch.randn(2, 4))  # runs in eval: train(False) was called
    assert MODE_SEEN[id(model)] is True and model.training and model.cache is None
    model.eval()
    inspect(model, torch.randn(2, 4), mode="train")
    assert MODE_SEEN[id(model)] is False and not model.training and model.cache is not None


#: What SeesItsFlag modules heard through __setattr__, kept outside the model (a list inside it is the
#: model's own state, and comes back as it was).
FLAG_LOG: dict[int, list[bool]] = {}


class SeesItsFlag(nn.Module):
    """Keeps a log of every ``training`` assignment through its own __setattr__."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    @property
    def log(self) -> list[bool]:
        return FLAG_LOG.setdefault(id(self), [])

    def __setattr__(self, name, value):
        if name == "training" and "fc" in self.__dict__.get("_modules", {}):
            self.log.append(value)
        super().__setattr__(name, value)

    def forward(self, x):
        return self.fc(x)


def test_overrides_deep_in_plain_containers_run_when_the_mode_switches_and_back():
    """Plain modules get their flag set directly; a train() or __setattr__ override anywhere below
    them still runs, as model.train() would run it."""
    inner, seer = TrainOverride().train(), SeesItsFlag().train()
    model = nn.Sequential(nn.Sequential(nn.ReLU(), inner), seer).train()
    seer.log.clear()
    inspect(model, torch.randn(2, 4))
    assert MODE_SEEN[id(inner)] is True and inner.cache is None  # eval() then train() again
    assert seer.log == [False, True]
    assert all(m.training for m in model.modules())
    model.eval()
    seer.log.clear()
    inspect(model, torch.randn(2, 4), mode="train")
    assert MODE_SEEN[id(inner)] is False and inner.cache is not None and seer.log == [True, False]
    assert not any(m.training for m in model.modules())


def _disabled_train(self, mode=True):
    """Latent diffusion's way to freeze a submodule: train() on the instance does nothing (stored on
    the instance, it is called unbound: ``self`` receives the mode)."""
    FLAG_CALLS.append(("disabled_train",))
    return self


FLAG_CALLS: list = []


class FrozenEncoder(nn.Module):
    """Its encoder's train() is replaced on the instance: the encoder stays in eval whatever mode the
    model is switched to, as model.train() would leave it."""

    def __init__(self) -> None:
        super().__init__()
        self.vae = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()
        self.vae.train = _disabled_train  # type: ignore[method-assign]
        self.student = nn.Linear(4, 4)

    def forward(self, x):
        FLAG_CALLS.append(("seen", self.vae.training, self.vae[1].training, self.student.training))
        return self.student(self.vae(x))


class HiddenTeacher(FrozenEncoder):
    """Keeps its teacher out of named_children(), so that model.train() leaves it in eval."""

    def __init__(self) -> None:
        super().__init__()
        del self.vae
        self.vae = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).eval()

    def named_children(self):
        return ((n, m) for n, m in super().named_children() if n != "vae")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", [FrozenEncoder, HiddenTeacher])
def test_a_train_replaced_on_the_instance_or_children_hidden_keep_their_say(kind, mode):
    model = nn.Sequential(kind()).train()
    FLAG_CALLS.clear()
    before = snapshot(model)
    inspect(model, torch.randn(2, 4), mode=mode)
    assert [c for c in FLAG_CALLS if c[0] == "seen"] == [("seen", False, False, mode == "train")]
    if kind is FrozenEncoder:  # called where model.train() calls it: on switching, and back from eval
        assert FLAG_CALLS.count(("disabled_train",)) == (1 if mode == "train" else 2)
    assert_untouched(model, before)


def test_a_process_wide_patch_of_module_train_still_runs(monkeypatch):
    """Libraries patch nn.Module.train (before or after inspector is imported): the patch is an
    override like any other, called where model.train() would call it."""
    calls = []
    original = nn.Module.train

    def patched(self, mode=True):
        calls.append((type(self).__name__, mode))
        return original(self, mode)

    monkeypatch.setattr(nn.Module, "train", patched)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    nn.Module.train(model, True)
    calls.clear()
    inspect(model, torch.randn(2, 4))
    assert calls[:3] == [("Sequential", False), ("Linear", False), ("ReLU", False)]
    assert calls[3:] == [("Sequential", True), ("Linear", True), ("ReLU", True)]


def test_state_restored_when_forward_raises_after_writing():
    class WritesThenRaises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            with torch.no_grad():
                self.fc.weight.add_(1)
            self.leftover = nn.ReLU()
            raise RuntimeError("boom")

    model = WritesThenRaises()
    before = snapshot(model)
    with pytest.raises(LayerError, match="boom"):
        inspect(model, torch.randn(2, 4))
    assert_untouched(model, before)


def test_lazy_module_is_materialised_on_a_copy():
    model = nn.Sequential(nn.LazyLinear(3))
    before = snapshot(model)
    report = inspect(model, torch.randn(2, 4))
    assert report.total_macs == 2 * 4 * 3 and report.total_params == 4 * 3 + 3
    assert any("lazy" in n for n in report.notes)
    assert_untouched(model, before)
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)


def test_parametrize_cache_of_the_caller_is_left_alone():
    """Inside the user's parametrize.cached(), a substituted run must neither read nor fill the cache."""
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 4)))
    x = torch.randn(2, 4)
    with parametrize.cached():
        expected = model(x)
        inspect(model, x, device="meta")
        inspect(model, x, dtype="float64")
        assert torch.equal(model(x), expected)


def test_global_hooks_and_user_hooks_are_kept():
    from torch.nn.modules.module import register_module_forward_hook

    model = nn.Sequential(nn.Linear(4, 4))
    mine = model[0].register_forward_pre_hook(lambda m, a: None)
    global_handle = register_module_forward_hook(lambda m, a, o: None)
    try:
        before = snapshot(model)
        inspect(model, torch.randn(2, 4))
        assert_untouched(model, before)
    finally:
        mine.remove()
        global_handle.remove()


class _RaisesInForward(nn.Module):
    def forward(self, x):
        assert not gc.isenabled(), "the cyclic collector runs during the pass"
        raise ValueError("boom")


#: What _ChecksCollector saw, kept outside the model (its own lists come back as they were).
ENABLED_DURING: list[bool] = []


class _ChecksCollector(nn.Module):
    def forward(self, x):
        ENABLED_DURING.append(gc.isenabled())
        return x * 2


def test_the_garbage_collector_is_paused_for_the_pass_and_given_back():
    """Paused while counting (the forward sees it off), back on afterwards, also after a forward that
    raised; a caller who turned it off finds it off."""
    model = _ChecksCollector()
    assert gc.isenabled()
    ENABLED_DURING.clear()
    inspect(model, torch.randn(2, 3))
    assert ENABLED_DURING == [False] and gc.isenabled()
    with pytest.raises(LayerError, match="boom"):
        inspect(_RaisesInForward(), torch.randn(2, 3))
    assert gc.isenabled()
    gc.disable()
    try:
        inspect(model, torch.randn(2, 3))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_two_threads_inspecting_one_model_are_serialised():
    """Same model from three threads: every report sees exactly the model's calls, and the model's
    BatchNorm statistics and training flags come back."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model.train()
    before = snapshot(model)
    counts, macs, errors = [], [], []

    def work() -> None:
        try:
            for _ in range(8):
                report = inspect(model, torch.randn(2, 3, 8, 8), mode="eval")
                counts.append(len(report.layers))
                macs.append(report.total_macs)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(counts) == {6}  # the Sequential and its five layers
    assert set(macs) == {2 * (4 * 6 * 6 * 27 + 144 * 2)}
    assert_untouched(model, before)


def test_repeated_inspection_keeps_nothing():
    """500 inspections of a small model: no live tensor is left behind, RSS grows < 20 MB."""
    import resource

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    x = torch.randn(2, 3, 8, 8)
    for _ in range(20):
        inspect(model, x).layers
    gc.collect()

    def live_tensors() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    tensors = live_tensors()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(500):
        inspect(model, x).layers
    gc.collect()
    assert live_tensors() <= tensors
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 20


class TransposeData(nn.Module):
    """.data set to a view of the same storage: only the layout changes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        self.w.data = self.w.data.t()
        return x


class SubclassParameter(nn.Parameter):
    pass


class WritesSubclass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = SubclassParameter(torch.ones(3))

    def forward(self, x):
        self.w.data.mul_(2)
        return x * self.w


class Reorders(nn.Module):
    """Pops and re-inserts a submodule: the order a Sequential would run in changes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        a = self._modules.pop("a")
        self._modules["a"] = a
        return self.b(a(x))


class WritesOnlyLater(nn.Module):
    """Writes a buffer from its second forward on: only the timed passes do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("n", torch.zeros(()))
        self.register_buffer("m", torch.zeros(()))
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        if self.n.item() > 0:
            self.m.add_(1)
        self.n.add_(1)
        return self.fc(x)


class OneSignal(nn.Module):
    """A forward that changes exactly one thing about a parameter, which only one of the checks
    before restoring sees: its requires_grad flag, its strides alone (a square weight transposed
    through .data: same storage, same shape) or its .grad."""

    def __init__(self, change: str) -> None:
        super().__init__()
        self.change = change
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        if self.change == "requires_grad":
            self.w.requires_grad_(False)
        elif self.change == "strides":
            self.w.data = self.w.data.t()
        else:
            self.w.grad = torch.ones(3, 3)
        return x @ self.w


@pytest.mark.parametrize("change", ["requires_grad", "strides", "grad"])
def test_a_change_only_one_check_sees_comes_back(change):
    model = OneSignal(change)
    before = snapshot(model)
    inspect(model, torch.randn(2, 3))
    assert_untouched(model, before)
    assert model.w.requires_grad and model.w.stride() == (3, 1) and model.w.grad is None


@pytest.mark.parametrize("make,options", [(TransposeData, {}), (WritesSubclass, {}), (Reorders, {}),
                                          (WritesOnlyLater, {"timing": True, "repeat": 3, "warmup": 1, "peak": None})])
def test_layouts_subclasses_order_and_timed_writes_come_back(make, options):
    model = make()
    x = torch.randn(3) if make is WritesSubclass else torch.randn(2)
    before = snapshot(model)
    inspect(model, x, **options)
    assert_untouched(model, before)


class TrainRaises(nn.Module):
    """A train() override that refuses one direction; the forward writes a buffer."""

    def __init__(self, refuse: bool) -> None:
        super().__init__()
        self.refuse = refuse
        self.fc = nn.Linear(2, 2)
        self.register_buffer("n", torch.zeros(()))

    def train(self, mode: bool = True):
        if mode == self.refuse:
            raise RuntimeError("no, not that mode")
        return super().train(mode)

    def forward(self, x):
        self.n.add_(1)
        return self.fc(x)


@pytest.mark.parametrize("refuse", [True, False])  # refuses giving back train mode; refuses entering eval
def test_a_train_override_that_raises_still_gets_everything_back(refuse):
    model = TrainRaises(refuse)
    nn.Module.train(model, True)
    before = snapshot(model)
    with parametrize.cached():
        with pytest.raises(LayerError, match="no, not that mode"):
            inspect(model, torch.randn(2))
        assert parametrize._cache_enabled == 1
    assert_untouched(model, before)


def test_overrides_after_one_that_raises_still_hear_the_mode_they_go_back_to():
    """Giving the flags back goes on past a train() that raises: a later override still runs."""
    refuses, follows = TrainRaises(refuse=True), TrainOverride()
    model = nn.Sequential(refuses, nn.Linear(2, 4), follows)
    for m in model.modules():
        m.training = True
    follows.train(True)
    with pytest.raises(LayerError, match="no, not that mode"):
        inspect(model, torch.randn(3, 2))
    assert MODE_SEEN[id(follows)] is True and follows.cache is None
    assert all(m.training for m in model.modules())
