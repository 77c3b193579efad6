"""The README's promises under attack (issue 22): the model comes back exactly as it was whatever its
forward does or is interrupted by; no count is silently wrong; every failure is one line of ours
naming what failed. Every state check is a full snapshot (tests/conftest.py) of the model, and of
the user's optimizer where the promise is about it."""
from __future__ import annotations

import dataclasses
import gc
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.ao.quantization as tq
from torch import nn
from torch.nn.utils import parametrize

from inspector import InputError, InspectorError, LayerError, UnsupportedModelError, inspect
from inspector import collect as collect_mod
from inspector.borrow import LOCK
from inspector.cli import main
from tests.conftest import assert_untouched, differences, optimizer_snapshot, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the model comes back exactly as it was ----------------------------------------------------------

class Converts(nn.Module):
    """Converts itself in its forward (module.half(), .double(), .to(...)), as some code does to run
    a step in another precision."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc = nn.Linear(4, 4)
        self.register_buffer("scale", torch.full((4,), 0.25))
        self.fc.weight.grad = torch.full((4, 4), 0.5)  # a gradient of the user's: converted with it

    def forward(self, x):
        converted = {"half": self.half, "double": self.double, "bfloat16": self.bfloat16,
                     "to float64": lambda: self.to(torch.float64)}[self.how]()
        dtype = converted.fc.weight.dtype
        return self.fc(x.to(dtype)) * self.scale


@pytest.mark.parametrize("how", ["half", "double", "bfloat16", "to float64"])
@pytest.mark.parametrize("options", [{}, {"mode": "train"}, {"backward": True}], ids=["eval", "train", "backward"])
def test_a_forward_converting_its_own_module_comes_back(how, options):
    model = Converts(how)
    before = snapshot(model)
    weight = model.fc.weight.detach().clone()
    inspect(model, torch.randn(2, 4), **options)
    assert_untouched(model, before)
    assert model.fc.weight.dtype == torch.float32 and torch.equal(model.fc.weight, weight)


class Orthogonal(nn.Module):
    def forward(self, w):
        return torch.linalg.matrix_exp(w - w.T)


class Restructures(nn.Module):
    """On its first call registers a parametrization (which swaps the layer's class and moves its
    weight), or swaps a layer's __class__ itself."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if self.how == "parametrization" and not parametrize.is_parametrized(self.fc):
            parametrize.register_parametrization(self.fc, "weight", Orthogonal())
        elif self.how == "__class__" and type(self.fc) is nn.Linear:
            self.fc.__class__ = type("Patched", (nn.Linear,), {"forward": lambda s, v: nn.Linear.forward(s, v) * 2})
        return self.fc(x)


@pytest.mark.parametrize("how", ["parametrization", "__class__"])
def test_a_forward_restructuring_the_model_comes_back(how):
    model = Restructures(how)
    x = torch.randn(2, 4)
    expected = nn.Linear.forward(model.fc, x)
    before = snapshot(model)
    inspect(model, x)
    assert_untouched(model, before)
    assert type(model.fc) is nn.Linear and "weight" in model.fc._parameters
    assert torch.equal(nn.Linear.forward(model.fc, x), expected)


def _zero_grad(p: torch.Tensor) -> None:
    p.grad.zero_()


class RegistersHooks(nn.Module):
    """Registers every kind of hook a module or a tensor can hold, and marks a buffer non-persistent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        self.register_state_dict_pre_hook(lambda *a: None)
        self._register_state_dict_hook(lambda *a: None)
        self.register_load_state_dict_pre_hook(lambda *a: None)
        self.register_load_state_dict_post_hook(lambda *a: None)
        self.register_full_backward_hook(lambda *a: None)
        self.fc.register_forward_hook(lambda *a: None)
        self._non_persistent_buffers_set.add("steps")
        self.fc.weight.tag = "seen"  # an attribute on the tensor itself
        if self.fc.weight.requires_grad:  # hooks that would zero every later gradient
            self.fc.weight.register_hook(lambda grad: grad * 0)  # beside a hook of the user's
            self.fc.bias.register_hook(lambda grad: grad * 0)  # its first
            self.fc.bias.register_post_accumulate_grad_hook(_zero_grad)
        return self.fc(x)


@pytest.mark.parametrize("options", [{}, {"backward": True}], ids=["forward", "backward"])
def test_hooks_the_forward_registers_are_all_removed(options):
    model = RegistersHooks()
    seen = []
    model.fc.weight.register_hook(lambda grad: seen.append(grad.shape))  # the user's own, kept
    before = snapshot(model)
    inspect(model, torch.randn(2, 4), **options)
    assert_untouched(model, before)
    assert "steps" in model.state_dict()
    model.fc(torch.ones(2, 4)).sum().backward()  # the user's own backward: gradients not zeroed by a leftover hook
    # d(sum(W x + b))/dW = 2 rows of ones summed: every entry 2; d/db = 2 (two samples)
    assert torch.equal(model.fc.weight.grad, torch.full((4, 4), 2.0))
    assert torch.equal(model.fc.bias.grad, torch.full((4,), 2.0))
    assert seen[-1] == (4, 4) and not hasattr(model.fc.weight, "tag")


class Containers(nn.Module):
    """Tensors held in plain containers: a KV-cache list it appends to, a dict of tensors it writes in
    place and adds to, a deque ring buffer, a list of (key, value) tuples written in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cache: list[torch.Tensor] = [torch.zeros(2, 4)]
        self.stats = {"seen": torch.zeros(4), "nested": {"count": torch.zeros(())}}
        self.ring: deque = deque([torch.zeros(4)], maxlen=3)
        self.layers = [(torch.zeros(2), torch.ones(2))]

    def forward(self, x):
        y = self.fc(x)
        self.cache.append(y)
        self.cache[0].add_(1)
        self.stats["seen"] += y.sum(0)
        self.stats["nested"]["count"] += 1
        self.stats["last"] = y
        self.ring.append(y[0])
        self.layers[0][0].fill_(7)
        self.layers.append((y, y))
        return y


@pytest.mark.parametrize("options", [{}, {"backward": True}, {"timing": True, "repeat": 2, "warmup": 1, "peak": None}],
                         ids=["forward", "backward", "timed"])
def test_tensors_in_plain_containers_come_back(options):
    model = Containers()
    before = snapshot(model)
    inspect(model, torch.randn(2, 4), **options)
    assert_untouched(model, before)
    assert len(model.cache) == 1 and model.cache[0].sum() == 0 and set(model.stats) == {"seen", "nested"}


class WritesThroughNumpy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("table", torch.zeros(4))

    def forward(self, x):
        self.table.numpy()[0] = 5.0  # bypasses the dispatcher
        self.fc.weight.detach().numpy()[:] = 0.0
        import numpy as np

        np.asarray(self.fc.bias.detach())[:] = 1.0  # through __array__
        return self.fc(x)


@pytest.mark.parametrize("options", [{}, {"timing": True, "repeat": 2, "warmup": 1, "peak": None}],
                         ids=["forward", "timed"])
def test_writes_through_numpy_views_come_back(options):
    model = WritesThroughNumpy()
    before = snapshot(model)
    inspect(model, torch.randn(2, 4), **options)
    assert_untouched(model, before)
    assert "numpy" not in torch.Tensor.__dict__  # the guard is gone with the borrow


class WritesFromTheSecondCall(nn.Module):
    """Writes a plain tensor attribute only from its second call on: only the timed passes do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.mask = torch.zeros(4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            self.mask.add_(1)
            self.fc.weight.grad = torch.ones(4, 4)
        return self.fc(x) * self.mask


def test_a_tensor_attribute_written_only_from_the_second_call_comes_back_after_timing():
    model = WritesFromTheSecondCall()
    before = snapshot(model)
    inspect(model, torch.randn(2, 4), timing=True, repeat=3, warmup=1, peak=None)
    assert_untouched(model, before)


def test_the_users_own_optimizer_is_never_stepped():
    """A factory handing back the user's optimizer (over the model's own parameters, with state) is
    refused before anything steps it: the optimizer and the model are as they were."""
    model = nn.Linear(4, 4)
    user = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    user.step()  # step 1, exp_avg filled, and .grad left on the parameters
    before, state = snapshot(model), optimizer_snapshot(user)
    with pytest.raises(InputError, match="builds a new one from its argument") as exc:
        inspect(model, torch.randn(2, 4), backward=True, optimizer=lambda params: user)
    assert "\n" not in str(exc.value)
    assert_untouched(model, before)
    assert not differences(state, optimizer_snapshot(user))
    assert user.state[model.weight]["step"] == 1


def test_inputs_never_get_a_gradient():
    """Views of the model's parameters, a parent's parameter and a leaf of the user's that requires
    grad, passed as inputs of a training step: no .grad reaches any of them."""
    parent = nn.Module()
    parent.w = nn.Parameter(torch.randn(2, 4))
    parent.child = nn.Sequential(nn.Linear(4, 4))
    leaf = torch.randn(2, 4, requires_grad=True)
    for given in (parent.w, parent.child[0].weight[:2], leaf):
        before = snapshot(parent)
        report = inspect(parent.child, given, backward=True)
        assert_untouched(parent, before)
        assert leaf.grad is None
        # the step still computed the input's gradient (it required grad): 2 x 4 x 4 = 32 MACs for it
        # and as many for the weight's
        assert report.total_backward_macs == 2 * 32


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_train_mode_inside_inference_mode_keeps_the_batchnorm_statistics():
    """The statistics come back, and the counts are those of the same inspection outside inference
    mode: 2 x 4 x 6 x 6 x 27 = 7,776 MACs for the convolution."""
    model = _bn_model().eval()
    outside = inspect(model, torch.randn(2, 3, 8, 8), mode="train")
    before = snapshot(model)
    with torch.inference_mode():
        report = inspect(model, torch.randn(2, 3, 8, 8), mode="train")
        trained = inspect(model, torch.randn(2, 3, 8, 8), backward=True)
    assert_untouched(model, before)
    assert report.total_macs == outside.total_macs == 2 * 4 * 6 * 6 * 27 and report.complete
    assert trained.total_backward_macs == inspect(model, torch.randn(2, 3, 8, 8), backward=True).total_backward_macs
    with torch.inference_mode():  # built there: its statistics are inference tensors, written in inference mode
        built_inside = _bn_model().eval()
    before = snapshot(built_inside)
    with torch.inference_mode():
        inside = inspect(built_inside, torch.randn(2, 3, 8, 8), mode="train")
    assert_untouched(built_inside, before)
    assert not inside.complete  # counted as it runs there: aten.conv2d whole, said uncounted


def test_a_torchscript_submodule_keeps_its_batchnorm_statistics():
    model = nn.Sequential(torch.jit.script(_bn_model()), nn.Flatten()).train()
    before = snapshot(model)
    report = inspect(model, torch.randn(2, 3, 8, 8), mode="train")
    assert_untouched(model, before)
    assert report.total_macs == 2 * 4 * 6 * 6 * 27
    assert torch.equal(model[0].state_dict()["1.running_mean"], torch.zeros(4))


def test_qat_fake_quant_keeps_its_storages():
    """Per-channel fake quantization grows scale and zero_point from 1 to 4 entries inside its fused
    kernel: the model's own storages (the same memory, at the same address) come back."""
    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.ReLU(), tq.DeQuantStub())
    model.qconfig = tq.get_default_qat_qconfig("fbgemm")
    model = tq.prepare_qat(model.train())
    fake_quant = model[1].weight_fake_quant
    addresses = (fake_quant.scale.data_ptr(), fake_quant.zero_point.data_ptr())
    for options in ({}, {"mode": "train"}, {"backward": True}):
        before = snapshot(model)
        inspect(model, torch.randn(1, 3, 8, 8), **options)
        assert_untouched(model, before)
        assert (fake_quant.scale.data_ptr(), fake_quant.zero_point.data_ptr()) == addresses


class Busy(nn.Module):
    """Writes everything the borrow gives back: weights in place, BatchNorm statistics, a counter, a
    list, a new submodule and attribute, a hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)
        self.cache: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.cache.append(x.sum())
        with torch.no_grad():
            self.fc.weight.mul_(1.5)
        self.extra = nn.ReLU()
        self.fc.register_forward_hook(lambda *a: None)
        return self.fc(self.extra(self.bn(self.conv(x))).flatten(1))


def _lines_run(fn, stop_at: int | None = None) -> int:
    """Run ``fn`` under a trace counting the Python lines run (every frame); with ``stop_at``, a
    KeyboardInterrupt is raised at that line, as Ctrl-C would raise it there. Returns the lines run
    (``stop_at`` when it was interrupted)."""
    count = [0]

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == stop_at:
                raise KeyboardInterrupt
        return local

    sys.settrace(lambda frame, event, arg: local)
    try:
        fn()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return count[0]


def test_interrupted_at_random_points_the_model_comes_back():
    """200 inspections, each interrupted (KeyboardInterrupt) at a random line of all the Python code
    they run (inspector's, torch's, the model's), forward and training step: the model always comes
    back exactly, and the lock, the process-wide hooks and the dispatch modes are free again."""
    model = Busy().eval()
    x = torch.randn(2, 3, 8, 8)
    runs = [lambda: inspect(model, x, mode="train"), lambda: inspect(model, x, backward=True, optimizer="sgd")]
    for run in runs:
        run()  # first uses (torch imports its compiler with the first optimizer) are not counted below
    totals = [_lines_run(run) for run in runs]
    rng = random.Random(22)
    before = snapshot(model)
    interrupted = 0
    for attempt in range(200):
        which = attempt % 2
        stop_at = rng.randint(1, totals[which])
        interrupted += _lines_run(runs[which], stop_at=stop_at) == stop_at
        gc.enable()  # an interruption inside inspect's own exit may leave it paused (not the model's state)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert_untouched(model, before)
        assert not LOCK._is_owned()
    assert interrupted >= 190  # the same lines run each time: nearly every point is reached
    assert inspect(model, x).total_macs == 2 * 4 * 6 * 6 * 27 + 2 * 144 * 2


class SignalsOnTrain(nn.Module):
    """Its train(True) sends the process SIGINT (Ctrl-C) before it switches, every time: Ctrl-C
    pressed again and again while the model is given back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def train(self, mode: bool = True):
        if mode:
            os.kill(os.getpid(), signal.SIGINT)
        return super().train(mode)

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


def test_ctrl_c_while_the_model_is_given_back():
    model = SignalsOnTrain()
    nn.Module.train(model, True)
    before = snapshot(model)
    with pytest.raises(KeyboardInterrupt):  # raised once everything is back
        inspect(model, torch.randn(2, 4))
    assert_untouched(model, before)
    assert not LOCK._is_owned() and signal.getsignal(signal.SIGINT) is signal.default_int_handler


BORROW_FILES = tuple(os.path.join(ROOT, "inspector", f) for f in ("borrow.py", "holdings.py"))


@pytest.mark.parametrize("where", ["__exit__", "give_back", "_restore", "_restore_flags", "_restore_storages",
                                   "restore", "_restore_one", "_put_back", "settle", "__enter__", "_snapshot"])
def test_interrupted_while_lending_or_giving_back_the_model_comes_back(where):
    """Ctrl-C at each of the first lines of every step of lending and giving back (where a random
    point rarely lands): the model comes back all the same."""
    model = Busy().eval()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(model)
    for line in range(1, 6):
        hits = [0]

        def local(frame, event, arg, hits=hits, line=line):
            if event == "line" and frame.f_code.co_name == where and frame.f_code.co_filename in BORROW_FILES:
                hits[0] += 1
                if hits[0] == line:
                    raise KeyboardInterrupt
            return local

        sys.settrace(lambda frame, event, arg: local)
        try:
            inspect(model, x, mode="train")
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
            gc.enable()
            signal.signal(signal.SIGINT, signal.default_int_handler)
        assert hits[0] >= min(line, 1), f"{where} never ran"
        assert_untouched(model, before)
        assert not LOCK._is_owned()


# --- no count silently wrong -------------------------------------------------------------------------

class PoolBranches(nn.Module):
    """Two branches run in a thread pool inside the forward (or one after the other: the same work)."""

    def __init__(self, threaded: bool = True) -> None:
        super().__init__()
        self.threaded = threaded
        self.a = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(16, 16), nn.ReLU())

    def forward(self, x):
        if not self.threaded:
            return self.a(x) + self.b(x)
        with ThreadPoolExecutor(2) as pool:
            ys = list(pool.map(lambda branch: branch(x), [self.a, self.b]))
        return ys[0] + ys[1]


class PoolMatmuls(nn.Module):
    """Bare matmuls (no module call) on a thread pool."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        with ThreadPoolExecutor(2) as pool:
            return torch.cat(list(pool.map(lambda part: part @ self.w, x.split(2))))


class ThreadStarted(nn.Module):
    """A branch, and a bare matmul, run on a thread the forward starts itself."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.w = nn.Parameter(torch.randn(16, 16))

    def forward(self, x):
        out = {}
        worker = threading.Thread(target=lambda: out.update(y=self.a(x), z=x @ self.w))
        worker.start()
        worker.join()
        return out["y"] + out["z"]


class FedThroughAQueue(nn.Module):
    """Hands its input to a worker thread that existed before the forward (a serving loop): what
    it runs there cannot be told from another user of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            x = self.requests.get()
            self.replies.put(self.a(x))

    def forward(self, x):
        self.requests.put(x)
        return self.replies.get()


@pytest.mark.parametrize("options", [{}, {"backward": True}], ids=["forward", "backward"])
def test_work_on_other_threads_is_counted_where_it_belongs(options):
    x = torch.randn(4, 16)
    branches = inspect(PoolBranches(), x, **options)
    assert branches.total_macs == 2 * 4 * 16 * 16  # 2,048: two Linear(16, 16) on 4 rows
    assert branches.layer("a.0").macs == branches.layer("b.0").macs == 4 * 16 * 16
    assert branches.layer("a").parent == 0 and branches.complete and not branches.crosscheck()
    matmuls = inspect(PoolMatmuls(), x, **options)
    assert matmuls.layer("").macs == matmuls.total_macs == 2 * (2 * 16 * 8)  # two (2, 16) @ (16, 8)
    started = inspect(ThreadStarted(), x, **options)
    assert started.layer("a").macs == 4 * 16 * 16 and not started.crosscheck()
    assert started.layer("").macs == 4 * 16 * 16 and started.total_macs == 2 * 4 * 16 * 16  # the bare matmul too
    if options:  # the weights' gradients, computed in the training step's backward: 16 x 16 x 4 each
        assert branches.total_backward_macs == 2 * 16 * 16 * 4
        # each ReLU's output (4 x 16 float32) is saved for its backward, as without threads
        assert branches.training.memory.activations == 2 * 4 * 16 * 4
        assert branches.training == inspect(PoolBranches(threaded=False), x, **options).training


def test_memory_on_other_threads_is_measured_where_it_belongs():
    """A call run on a thread the forward started has its activation peak measured like any other (not
    a quiet 0), and it reaches the call the thread worked for: 4 x 16 float32 per product."""
    started = inspect(ThreadStarted(), torch.randn(4, 16))
    assert started.layer("a").peak_bytes == 4 * 16 * 4  # its output, made on the worker thread
    assert started.layer("").peak_bytes == 3 * 4 * 16 * 4  # y and z (worker) and their sum (the forward's thread)


class BusyOnBothThreads(nn.Module):
    """Calls its own small layers on the forward's thread while a thread it started calls others."""

    def __init__(self, n: int = 60) -> None:
        super().__init__()
        self.mine = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))
        self.theirs = nn.ModuleList(nn.Linear(4, 4) for _ in range(n))

    def forward(self, x):
        out = {}

        def work():
            y = x
            for layer in self.theirs:
                y = layer(y)
            out["y"] = y

        worker = threading.Thread(target=work)
        worker.start()
        z = x
        for layer in self.mine:
            z = layer(z)
        worker.join()
        return z + out["y"]


def test_calls_opened_on_two_threads_at_once_keep_their_places(monkeypatch):
    """The forward's thread and a thread it started open calls at the same time: the forward's
    thread is made to pause while it makes each call's frame (the worst moment for the other thread
    to open one). Every call keeps the index of its place and a parent above it, and every layer's
    4 x 4 x 4 MACs land on its own row."""
    forward_thread = threading.get_ident()

    class SlowFrame(collect_mod.Frame):
        __slots__ = ()

        def __init__(self, *args) -> None:
            super().__init__(*args)
            if threading.get_ident() == forward_thread:
                time.sleep(2e-4)  # the worker runs meanwhile

    monkeypatch.setattr(collect_mod, "Frame", SlowFrame)
    for _ in range(3):
        report = inspect(BusyOnBothThreads(), torch.randn(4, 4))
        assert [r.index for r in report.layers] == list(range(len(report.layers)))
        assert all(r.parent is None or r.parent < r.index for r in report.layers)
        leaves = [r for r in report.layers if r.type == "Linear"]
        assert len(leaves) == 120 and all(r.macs == 4 * 4 * 4 for r in leaves)
        assert report.crosscheck() == [] and report.total_macs == 120 * 64


def test_model_calls_on_threads_the_forward_did_not_start_are_said():
    model = FedThroughAQueue()
    report = inspect(model, torch.randn(4, 16))
    assert not report.complete and report.total_macs == 0
    assert [(u.op, u.calls) for u in report.crosscheck()] == [("(calls on other threads)", 1)]
    assert "did not start" in report.crosscheck()[0].reason


def test_cdist_macs_by_hand():
    """torch.cdist of (B, P, M) against (B, R, M): one MAC per coordinate of every pair, on both its
    paths (matmul above 25 rows, direct below or for p != 2)."""
    class Distances(nn.Module):
        def forward(self, a, b):
            return torch.cdist(a, b)

    big = inspect(Distances(), (torch.randn(1, 32, 20), torch.randn(1, 32, 20)))
    assert big.total_macs == 1 * 32 * 32 * 20 and big.complete  # 20,480 (aten._euclidean_dist)
    small = inspect(Distances(), (torch.randn(2, 8, 20), torch.randn(2, 5, 20)))
    assert small.total_macs == 2 * 8 * 5 * 20  # 1,600 (aten._cdist_forward)
    trained = inspect(Distances(), (torch.randn(2, 8, 20, requires_grad=True), torch.randn(2, 5, 20)),
                      backward=True)
    assert trained.total_backward_macs == 2 * 8 * 5 * 20  # the gradient of a, one MAC per coordinate of a pair


def test_a_dynamically_quantized_lstm_counts_its_packed_weights():
    """LSTM(8, 16): 4 gates x 16 x (8 + 16) weights and 2 x 4 x 16 biases = 1,664, packed; the Linear
    16 -> 4 beside it: 68."""
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.lstm(x)[0])

    model = torch.ao.quantization.quantize_dynamic(Tagger(), {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    report = inspect(model, torch.randn(5, 1, 8))
    assert report.total_params == 4 * 16 * (8 + 16) + 2 * 4 * 16 + 16 * 4 + 4  # 1,732
    assert report.layer("lstm").module_params == 1664 and report.trainable_params == 0
    if not report.complete:  # what it cannot count it says
        assert any(u.op == "aten.quantized_lstm" for u in report.crosscheck())


def test_a_sparse_embedding_gradient_is_measured_as_stored():
    """Embedding(1000, 16, sparse=True) on 8 tokens: its gradient holds 8 int64 indices (64 B) and
    8 x 16 float32 values (512 B), not the dense 1000 x 16 x 4 = 64,000 B."""
    model = nn.Sequential(nn.Embedding(1000, 16, sparse=True))
    report = inspect(model, torch.randint(0, 1000, (1, 8)), backward=True)
    assert report.training.memory.gradients == 8 * 8 + 8 * 16 * 4


# --- every failure is one line of ours, naming what failed -------------------------------------------

def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and isinstance(exc.value, InspectorError)
    return text


def test_fsdp2_sharded_parameters_are_refused_in_one_line():
    dist = pytest.importorskip("torch.distributed")
    fsdp = pytest.importorskip("torch.distributed.fsdp")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        fsdp.fully_shard(model)
        with pytest.raises(UnsupportedModelError, match=r"0\.weight is a DTensor.*before sharding") as exc:
            inspect(model, torch.randn(2, 4))
        _one_line(exc)
    finally:
        dist.destroy_process_group()


class Locked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.LazyLinear(3)
        self.lock = threading.Lock()  # cannot be deep-copied

    def forward(self, x):
        with self.lock:
            return self.fc(x)


@pytest.mark.parametrize("options", [{"dtype": "float64"}, {"device": "meta"}, {"backward": True}, {}])
@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.LazyLinear(3)), Locked], ids=["lazy", "lazy with a lock"])
def test_lazy_modules_count_on_every_device_and_dtype(make, options):
    model = make()
    before = snapshot(model)
    report = inspect(model, torch.randn(2, 4), **options)
    assert report.total_macs == 2 * 4 * 3 and report.total_params == 4 * 3 + 3  # 24 MACs, 15 parameters
    assert any("lazy" in n for n in report.notes)
    assert_untouched(model, before)
    if "backward" in options:  # weight gradient 4 x 3 x 2; the input needs none
        assert report.total_backward_macs == 4 * 3 * 2
    with pytest.raises(InputError, match="lazy modules.*give an input") as exc:
        inspect(make())
    _one_line(exc)


class ConfigDelegating(nn.Module):
    """Delegates unknown attributes to its config dict: a missing name raises KeyError."""

    def __init__(self) -> None:
        super().__init__()
        self.config = {"hidden": 4}
        self.fc = nn.Linear(4, 4)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return self.__dict__["config"][name]

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("options", [{}, {"backward": True}, {"device": "meta"}, {"inputs": None}])
def test_a_config_delegating_getattr_is_no_failure(options):
    x = options.pop("inputs", torch.randn(2, 4))
    report = inspect(ConfigDelegating(), x, **options)
    assert report.total_params == 20 and report.total_macs == (2 if x is not None else 1) * 16


def test_a_sparse_buffer_in_a_matmul():
    class Sparse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("adjacency", torch.eye(4).to_sparse())

        def forward(self, x):
            return torch.sparse.mm(self.adjacency, x) * 2

    report = inspect(Sparse(), torch.randn(4, 3))
    # 4 indices in 2 rows of int64 (64 B) and 4 float32 values (16 B)
    assert report.buffer_bytes == 2 * 4 * 8 + 4 * 4
    assert report.layer("").output_bytes == 4 * 3 * 4


def test_an_input_too_large_for_memory_is_refused_before_it_is_made():
    with pytest.raises(InputError, match=r"needs 120 GB, more than the .* free on cpu.*device='meta'") as exc:
        inspect(nn.Conv2d(3, 4, 3), input_size=(1, 3, 100000, 100000))
    _one_line(exc)
    on_meta = inspect(nn.Conv2d(3, 4, 3), input_size=(1, 3, 1000, 1000), device="meta")
    assert on_meta.total_macs == 4 * 998 * 998 * 27


class Child(nn.Module):
    def forward(self, x):
        raise ValueError("the child fails")


class CatchesThenFails(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = Child()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        try:
            self.child(x)
        except ValueError:
            pass
        return self.fc(x[:, :3])


def test_the_culprit_is_the_call_that_really_raised():
    with pytest.raises(LayerError, match=r"layer 'fc' \(Linear.*on input \(2, 3\).*mat1 and mat2") as exc:
        inspect(CatchesThenFails(), torch.randn(2, 4))
    assert "child" not in _one_line(exc)

    def fails(module, args, output):
        raise RuntimeError("my hook fails")

    hooked = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    handle = hooked[1][0].register_forward_hook(fails)
    with pytest.raises(LayerError, match=r"layer '1\.0' \(Linear.*in its hook .*fails.*my hook fails") as exc:
        inspect(hooked, torch.randn(2, 4))
    _one_line(exc)
    handle.remove()


class FailsWhenTimed(nn.ReLU):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls > 1:
            raise RuntimeError("only on a timed pass")
        return x


def test_a_layer_failing_only_on_a_timed_pass_is_named():
    FailsWhenTimed.calls = 0
    model = nn.Sequential(nn.Linear(4, 4), FailsWhenTimed())
    with pytest.raises(LayerError, match=r"layer '1' \(FailsWhenTimed\) during a timed pass.*\(2, 4\).*only on") as exc:
        inspect(model, torch.randn(2, 4), timing=True, repeat=2, warmup=1, peak=None)
    _one_line(exc)


def test_loss_function_errors_are_the_loss_functions():
    model = nn.Linear(4, 4)
    with pytest.raises(InputError, match=r"loss_fn CrossEntropyLoss.*cannot take the model's output alone.*lambda") as exc:
        inspect(model, torch.randn(2, 4), backward=True, loss_fn=nn.CrossEntropyLoss())
    assert "tuple" not in _one_line(exc)
    with pytest.raises(InputError, match=r"loss_fn <lambda>\(out, target\) cannot take"):
        inspect(model, torch.randn(2, 4), backward=True, loss_fn=lambda out, target: out.sum())
    with pytest.raises(InputError, match=r"the loss function <lambda> failed on the model's output \(Tensor: \(2, 4\)\)"
                       r": boom") as exc:
        inspect(model, torch.randn(2, 4), backward=True, loss_fn=lambda out: (_ for _ in ()).throw(ValueError("boom")))
    assert "model's own code" not in _one_line(exc)


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    note: str = "a dataclass"


class ReturnsDataclass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return Output(self.fc(x))


def test_a_training_step_under_no_grad_inference_mode_or_with_a_dataclass_output_runs():
    """Linear(4, 4) on 2 rows: weight gradient 4 x 4 x 2 = 32 MACs (the input needs none)."""
    plain = inspect(nn.Linear(4, 4), torch.randn(2, 4), backward=True)
    with torch.no_grad():
        under_no_grad = inspect(nn.Linear(4, 4), torch.randn(2, 4), backward=True)
    with torch.inference_mode():
        under_inference = inspect(nn.Linear(4, 4), torch.randn(2, 4), backward=True)
    dataclass = inspect(ReturnsDataclass(), torch.randn(2, 4), backward=True)
    assert plain.total_backward_macs == under_no_grad.total_backward_macs == under_inference.total_backward_macs \
        == dataclass.total_backward_macs == 4 * 4 * 2
    frozen = nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameter"):
        inspect(frozen, torch.randn(2, 4), backward=True)
    detached = nn.Sequential(nn.Linear(4, 4), type("Detach", (nn.Module,), {"forward": lambda s, x: x.detach()})())
    with pytest.raises(InputError, match=r"does not depend on any trainable parameter \(is it detached"):
        inspect(detached, torch.randn(2, 4), backward=True)


@pytest.mark.parametrize("options", [{"device": "meta"}, {"dtype": "bfloat16"}, {"backward": True}])
def test_data_parallel_is_counted_through_the_module_it_wraps(options):
    model = nn.DataParallel(nn.Sequential(nn.Linear(4, 4)))
    before = snapshot(model)
    report = inspect(model, torch.randn(2, 4), **options)
    assert report.total_macs == 2 * 4 * 4 and any("DataParallel" in n for n in report.notes)
    assert_untouched(model, before)


def test_vmap_of_grad_in_forward_with_backward_says_what_cannot_be_done():
    class PerSampleGrads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return torch.func.vmap(torch.func.grad(lambda row: self.fc(row).sum()))(x)

    assert inspect(PerSampleGrads(), torch.randn(2, 4)).total_macs > 0
    with pytest.raises(UnsupportedModelError, match=r"saved-tensor hooks.*torch\.func.*without backward=True") as exc:
        inspect(PerSampleGrads(), torch.randn(2, 4), backward=True)
    _one_line(exc)


def test_a_model_with_one_meta_tensor_counts_on_meta_and_says_why_not_elsewhere():
    class OneOnMeta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("offset", torch.ones(4, device="meta"))

        def forward(self, x):
            return self.fc(x) + self.offset

    assert inspect(OneOnMeta(), torch.randn(2, 4), device="meta").total_macs == 2 * 16
    with pytest.raises(InputError, match="offset is on the meta device.*device='meta'") as exc:
        inspect(OneOnMeta(), torch.randn(2, 4), device="cpu")
    _one_line(exc)


def test_a_forward_calling_sys_exit_is_a_failure_of_the_layer():
    class Exits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            sys.exit(0)

    for options in ({}, {"backward": True}, {"device": "meta"}):
        with pytest.raises(LayerError, match=r"layer '\(model\)' \(Exits\).*\(2, 4\).*sys\.exit\(0\)") as exc:
            inspect(Exits(), torch.randn(2, 4), **options)
        _one_line(exc)


def test_autocast_to_a_dtype_it_cannot_run_in_is_refused():
    with pytest.raises(InputError, match="autocast must be float16 or bfloat16") as exc:
        inspect(nn.Linear(4, 4), torch.randn(2, 4), backward=True, autocast="float32")
    _one_line(exc)
    assert inspect(nn.Linear(4, 4), torch.randn(2, 4), backward=True, autocast="bfloat16").training.autocast == "bfloat16"


def _write(tmp_path, text: str):
    path = tmp_path / "net.py"
    path.write_text(text)
    return path


def test_the_cli_says_when_model_code_exits(tmp_path, capsys):
    path = _write(tmp_path, "import sys\nsys.exit(0)\n")
    assert main(["summary", f"{path}:Net"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "called sys.exit(0) while being imported" in err
    path = _write(tmp_path, "import sys, torch\nfrom torch import nn\n\nclass Net(nn.Module):\n"
                            "    def forward(self, x):\n        sys.exit(0)\n\n"
                            "    def example_input(self):\n        return torch.randn(2, 4)\n")
    assert main(["summary", f"{path}:Net"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sys.exit(0)" in err and "Traceback" not in err


def test_ctrl_c_while_the_cli_imports_torch_prints_one_line(tmp_path):
    """Ctrl-C lands while ``import torch`` runs (a site hook raises KeyboardInterrupt there)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import builtins\n_real = builtins.__import__\n\n"
        "def _interrupting(name, *args, **kwargs):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        builtins.__import__ = _real\n        raise KeyboardInterrupt\n"
        "    return _real(name, *args, **kwargs)\n\nbuiltins.__import__ = _interrupting\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "inspector", "summary", "resnet18"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 130 and done.stderr == "inspector: interrupted\n" and not done.stdout


# --- resources -----------------------------------------------------------------------------------------

class FailingStep(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("the step fails")


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from /proc")
def test_failing_training_steps_leave_nothing_behind():
    """50 failing training steps (25 in the loss, 25 in the optimizer step) with the cyclic collector
    off: every copy of the weights the steps made is freed as soon as the error is dropped, and the
    resident memory stays flat (each step makes 2 MB of copies and 2 MB of gradients)."""
    model = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512))
    x = torch.randn(8, 512)
    copies: list[weakref.ref] = []

    def failing_loss(out):
        raise ValueError("the loss fails")

    def factory(kind):
        def make(params):
            copies.extend(weakref.ref(p) for p in params)
            return FailingStep(params, lr=0.1) if kind == "step" else torch.optim.SGD(params, lr=0.1)
        return make

    before = snapshot(model)
    try:  # once first: torch imports its compiler on the first optimizer built, and keeps that call's frames
        inspect(model, x, backward=True, optimizer=lambda params: FailingStep(params, lr=0.1))
    except InspectorError:
        pass
    gc.collect()
    gc.disable()
    rss = []
    try:
        for attempt in range(50):
            if attempt == 10:
                rss.append(_rss_mb())
            kind = "loss" if attempt % 2 else "step"
            try:
                inspect(model, x, backward=True, optimizer=factory(kind),
                        loss_fn=failing_loss if kind == "loss" else None)
            except InspectorError:
                pass
            else:
                raise AssertionError("the step should fail")
        alive = sum(ref() is not None for ref in copies)
        rss.append(_rss_mb())
    finally:
        gc.enable()
    assert len(copies) == 50 * 4 and alive == 0
    assert rss[1] - rss[0] < 20  # 40 more steps: kept, their copies alone would be 160 MB
    assert_untouched(model, before)
