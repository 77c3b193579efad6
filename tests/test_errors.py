"""The error contract: every argument checked before anything runs, every failure one line naming the
layer, its config and the shapes, with a hint for the usual mistakes; the model untouched after."""
import pytest
import torch
from torch import nn

from inspector import InputError, InspectorError, LayerError, MetaDeviceError, NotAModuleError, inspect
from tests.conftest import assert_untouched, snapshot


class Counts(nn.Module):
    """Counts its forwards: an argument error must be raised before the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x)


BAD_ARGUMENTS = {
    "repeat=0": dict(timing=True, repeat=0),
    "repeat=-1": dict(timing=True, repeat=-1),
    "repeat=2.5": dict(timing=True, repeat=2.5),
    "warmup=-1": dict(timing=True, warmup=-1),
    "peak='12'": dict(timing=True, peak="12"),
    "peak=(inf, 1)": dict(timing=True, peak=(float("inf"), 1.0)),
    "peak=(nan, 1)": dict(timing=True, peak=(float("nan"), 1.0)),
    "dtype=int64": dict(dtype=torch.int64),
    "dtype='int8'": dict(dtype="int8"),
    "device='xla'": dict(device="xla"),
    "device='mps'": dict(device="mps"),
    "device='gpu0'": dict(device="gpu0"),
    "mode='bogus'": dict(mode="bogus"),
    "kwargs=['x']": dict(kwargs=["x"]),
    "flops='some'": dict(flops="some"),
    "timing on meta": dict(timing=True, device="meta"),
    "optimizer without backward": dict(optimizer="adam"),
    "formulas=[...]": dict(formulas=["aten::mm"]),
}


@pytest.mark.parametrize("label", list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_before_running(label):
    model = Counts()
    with pytest.raises(InputError) as exc:
        inspect(model, torch.randn(2, 4), **BAD_ARGUMENTS[label])
    assert "\n" not in str(exc.value) and model.calls == 0


def test_mode_is_checked_even_without_an_input():
    class NoHint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    with pytest.raises(InputError, match="mode"):
        inspect(NoHint(), mode="bogus")


def test_meta_input_with_a_cpu_model():
    with pytest.raises(InputError, match="device='meta'"):
        inspect(nn.Linear(4, 4), torch.randn(2, 4, device="meta"))


def test_failure_only_in_a_timed_pass():
    class FailsLater(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.n = 0

        def forward(self, x):
            self.n += 1
            if self.n > 3:
                raise RuntimeError("only fails later")
            return self.fc(x)

    model = FailsLater()
    before = snapshot(model)
    with pytest.raises(LayerError, match="timed pass.*only fails later") as exc:
        inspect(model, torch.randn(2, 4), timing=True, repeat=2, warmup=1, peak=None)
    assert "\n" not in str(exc.value)
    assert_untouched(model, before)


def test_broken_extra_repr_does_not_hide_the_error():
    class BadRepr(nn.Linear):
        def extra_repr(self):
            raise RuntimeError("repr broken")

    with pytest.raises(LayerError, match="mat1 and mat2 shapes cannot be multiplied"):
        inspect(nn.Sequential(BadRepr(4, 4)), torch.randn(2, 5))


def test_type_error_inside_the_root_forward_is_the_model_s():
    class TypeErr(nn.Module):
        def forward(self, x):
            return len(5)

    with pytest.raises(LayerError, match=r"'\(model\)' \(TypeErr\) failed on input \(2, 4\) float32: object of type"):
        inspect(TypeErr(), torch.randn(2, 4))


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        return y if y.sum() > 0 else -y


class NonZero(nn.Module):
    """Positions of values computed from the weights (an input's own values are known on meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).nonzero()


class Item(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x * self.fc(x).max().item()


@pytest.mark.parametrize("model,op", [(Branches(), "aten._local_scalar_dense"), (NonZero(), "aten.nonzero"),
                                      (Item(), "aten._local_scalar_dense")])
def test_data_dependent_code_on_meta_says_so(model, op):
    with pytest.raises(MetaDeviceError) as exc:
        inspect(model, torch.randn(2, 4), device="meta")
    assert op in str(exc.value) and "device='cpu'" in str(exc.value)
    inspect(model, torch.randn(2, 4))  # the same model counts on the CPU


@pytest.mark.parametrize("thing,words", [(nn.Linear, "class Linear"), (nn.Linear(4, 4).state_dict(), "state_dict"),
                                         (lambda x: x, "torch.nn.Module")])
def test_not_a_model_gets_a_hint(thing, words):
    with pytest.raises(NotAModuleError, match=words):
        inspect(thing, torch.randn(2, 4))


HINTS = {
    "missing batch dimension": (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), torch.randn(3, 8, 8),
                                "missing batch dimension"),
    "float token ids": (nn.Embedding(10, 4), torch.randn(2, 3), "token ids must be an integer tensor"),
    "wrong features": (nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), torch.randn(1, 25), "in_features"),
    "integer image": (nn.Conv2d(1, 2, 3), torch.ones(1, 1, 4, 4, dtype=torch.long), "floating input"),
}


@pytest.mark.parametrize("label", list(HINTS))
def test_usual_mistakes_get_a_hint(label):
    model, x, words = HINTS[label]
    with pytest.raises(InspectorError) as exc:
        inspect(model, x)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_list_for_a_tuple_gets_a_hint():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    x = torch.randn(2)
    with pytest.raises(InputError, match="pass a tuple"):
        inspect(Two(), [x, x])
    assert inspect(Two(), (x, x)).total_macs == 0
