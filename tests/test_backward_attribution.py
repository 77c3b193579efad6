"""Backward MACs charged to the layer whose backward ran them, through modules that hand their input
back (nn.Identity, Dropout in eval or with p=0), in-place ops and views. Hand arithmetic next to each
assertion; FlopCounterMode's backward MACs as the oracle of the total."""
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inspector import inspect


def _bw(report, name):
    return report.layer(name).backward_macs


def _flop_counter_backward_macs(model, x):
    """FlopCounterMode's MACs of the backward alone (its total minus its forward)."""
    model = model.train()
    with FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as both:
        model(x).sum().backward()
    return (both.get_total_flops() - fwd.get_total_flops()) // 2


def test_identity_after_the_last_layer():
    """The issue's smallest case. Layer 0: weight gradient only (x needs none) 4*8*16 = 512; layer 1:
    weight and input gradients 2 * 4*16*8 = 1,024; the Identity and the model itself: none."""
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 8), nn.Identity())
    x = torch.randn(4, 8)
    report = inspect(model, x, backward=True)
    assert (_bw(report, "0"), _bw(report, "1"), _bw(report, "2")) == (512, 1024, 0)
    assert report.layer("").backward_macs == 0  # the model's own row: nothing outside its layers
    assert report.total_backward_macs == 512 + 1024 == _flop_counter_backward_macs(model, x)
    assert report.crosscheck() == []


@pytest.mark.parametrize("passthrough", [nn.Identity, lambda: nn.Dropout(0.0), lambda: nn.Dropout1d(0.0)],
                         ids=["identity", "dropout-p0", "dropout1d-p0"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_pass_through_between_and_after_layers(passthrough, mode):
    """Linear(8, 16) -> pass-through -> Linear(16, 8) -> pass-through: 512 and 1,024 as above, in train
    and eval mode (Dropout in eval, or with p=0, hands back its input)."""
    model = nn.Sequential(nn.Linear(8, 16), passthrough(), nn.Linear(16, 8), passthrough())
    report = inspect(model, torch.randn(4, 8), backward=True, mode=mode)
    assert (_bw(report, "0"), _bw(report, "2")) == (512, 1024)
    assert _bw(report, "1") == _bw(report, "3") == report.layer("").backward_macs == 0
    assert report.crosscheck() == []


class ReturnsItsInput(nn.Module):
    """A layer computed for its side effect, handing back its (keyword) input."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = nn.Linear(16, 2)

    def forward(self, x=None):
        self.last = self.probe(x)
        return x


def test_pass_through_with_keyword_input_and_work_of_its_own():
    """The probe's work is its own (forward 4*16*2 = 128; backward through ``last`` is never asked
    for: the loss does not reach it); the handed-back input goes on to layer ``tail`` whose backward
    2 * 4*16*8 = 1,024 is its own."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.head, self.keep, self.tail = nn.Linear(8, 16), ReturnsItsInput(), nn.Linear(16, 8)

        def forward(self, x):
            return self.tail(self.keep(x=self.head(x)))

    report = inspect(Model(), torch.randn(4, 8), backward=True)
    assert report.layer("keep.probe").macs == 4 * 16 * 2
    assert (_bw(report, "head"), _bw(report, "tail"), _bw(report, "keep")) == (512, 1024, 0)
    assert report.crosscheck() == []


def test_in_place_activation_owns_its_backward():
    """ReLU(inplace=True) returns its input, modified: its backward (threshold_backward) is its own;
    the Linears keep theirs (512 and 1,024)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 8))
    report = inspect(model, torch.randn(4, 8), backward=True, flops="all")
    assert (_bw(report, "0"), _bw(report, "2")) == (512, 1024)
    relu_ops = {s.op for s in report.layer("1").backward_ops}
    assert "aten.threshold_backward" in relu_ops
    assert "aten.threshold_backward" not in {s.op for s in report.layer("").backward_ops}
    assert report.crosscheck() == []


class View(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], 2, -1).transpose(1, 2)


class AddInPlaceThroughView(nn.Module):
    def forward(self, x):
        x[:, :4] += 1.0
        return x


def test_views_and_in_place_writes_through_views():
    """Layers around a view and an in-place write through a view keep their backward: 4*8*16 = 512
    for the first (weight only), 2 * 4*8*5 = 320... for Linear(8, 5) on (4, 8, 2) transposed: rows
    4*8 = 32, so 2 * 32*2*5 = 640."""
    model = nn.Sequential(nn.Linear(8, 16), AddInPlaceThroughView(), View(), nn.Linear(2, 5))
    x = torch.randn(4, 8)
    report = inspect(model, x, backward=True)
    assert (_bw(report, "0"), _bw(report, "3")) == (512, 2 * 32 * 2 * 5)
    assert _bw(report, "1") == _bw(report, "2") == report.layer("").backward_macs == 0
    assert report.total_backward_macs == _flop_counter_backward_macs(model, x)
    assert report.crosscheck() == []


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_torchvision_transformers_backward_checked_layer_by_layer(name):
    """Their dropouts (p=0) and identities (stochastic depth off) hand their input back: every
    Linear's backward is its own, so every closed form agrees; the total is FlopCounterMode's."""
    model = getattr(torchvision.models, name)()
    report = inspect(model, input_size=(1, 3, 224, 224), backward=True, device="meta")
    assert report.crosscheck() == []
    linears = [r for r in report.layers if r.type in ("Linear", "NonDynamicallyQuantizableLinear")]
    assert linears and all(r.backward_macs == r.expected_backward_macs for r in linears)


def test_the_loss_backward_is_on_the_model_s_own_row():
    """Work outside every layer call (here the backward of a loss computed from the output) is the
    model's own: loss = sum(out @ out.T) with out 4 x 2, whose mm backward is two 4x4x2 matmuls, 64
    MACs. Layers: Linear(8, 8) weight gradient 4*8*8 = 256; Linear(8, 2) weight and input gradients
    2 * 4*8*2 = 128. Every call's own figures add up to the totals."""
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    report = inspect(model, torch.randn(4, 8), backward=True, loss_fn=lambda out, *_: (out @ out.T).sum())
    assert (_bw(report, "0"), _bw(report, "2"), report.layer("").backward_macs) == (256, 128, 64)
    assert report.total_backward_macs == 256 + 128 + 64 == sum(r.backward_macs for r in report.layers)
    assert report.layer("").inclusive_backward_macs == report.total_backward_macs
    assert report.layer("").backward_flops == 2 * 64
