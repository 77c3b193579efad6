"""Closed forms hold where they describe what the layer did: subclasses with a forward of their own or
parameters the form does not count get no closed form (a note says so) instead of a false alarm, and
a real mistake is still caught."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inspector import inspect, op_formulas
from inspector.report import Mismatch


class SamePadConv(nn.Conv2d):
    """Pads in its forward (TensorFlow's 'SAME'), its ``padding`` attribute 0: timm's Conv2dSame."""

    def forward(self, x):
        pad = self.kernel_size[0] - 1
        return super().forward(F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)))


class CausalConv1d(nn.Conv1d):
    """Pads both sides and cuts the right end off: fewer outputs than the convolution computed."""

    def __init__(self, channels, kernel):
        super().__init__(channels, channels, kernel, padding=kernel - 1)

    def forward(self, x):
        return super().forward(x)[..., : x.shape[-1]]


class GainConv(nn.Conv2d):
    """torch's own forward, one parameter more (a gain the forward never reads here)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))


class ScaledEmbedding(nn.Embedding):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, ids):
        return super().forward(ids) * self.scale


class TimeMajorHead(nn.Linear):
    """A CTC-style head taking (B, C, T) and transposing it itself."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2))


def _notes(report):
    return "\n".join(report.run.notes)


def test_same_padding_in_forward_gets_no_closed_form_and_a_note():
    """8x8 input, 3x3 kernel padded in forward: 8x8 outputs, 1*4*64*2*9 = 4,608 MACs counted (the
    form from ``padding=0`` would say 6x6: 2,592, a false alarm)."""
    report = inspect(nn.Sequential(SamePadConv(2, 4, 3)), torch.randn(1, 2, 8, 8))
    assert report.total_macs == 4 * 8 * 8 * 2 * 9 == 4608
    assert report.layer("0").expected_macs is None and report.crosscheck() == []
    assert "closed form of SamePadConv not checked on 1 call(s) (0): its own forward()" in _notes(report)


def test_causal_conv_cutting_its_output_gets_no_closed_form():
    """Conv1d(3, 3, k=4, padding=3) on length 10 computes 13 outputs (3*13*3*4 = 468 MACs) and keeps 10."""
    report = inspect(nn.Sequential(CausalConv1d(3, 4)), torch.randn(1, 3, 10))
    assert report.total_macs == 3 * 13 * 3 * 4 and report.crosscheck() == []
    assert "closed form of CausalConv1d not checked" in _notes(report)


def test_extra_parameter_skips_the_parameter_count_only():
    """GainConv runs torch's own forward: its MACs are still checked (1*4*6*6*2*9 = 2,592), its
    parameters (weight 72 + bias 4 + gain 4 = 80) are not compared with the form's 76."""
    report = inspect(nn.Sequential(GainConv(2, 4, 3)), torch.randn(1, 2, 8, 8))
    row = report.layer("0")
    assert (row.expected_macs, row.expected_params, row.module_params) == (2592, None, 80)
    assert report.crosscheck() == []
    assert "parameter count of GainConv not checked on 1 call(s) (0): parameters its closed form does not count " \
           "(gain)" in _notes(report)


@pytest.mark.parametrize("make,x", [
    (lambda: ScaledEmbedding(10, 4), torch.randint(0, 10, (2, 5))),
    (lambda: TimeMajorHead(6, 3), torch.randn(2, 6, 7)),
])
def test_subclasses_with_their_own_forward_are_no_false_alarm(make, x):
    report = inspect(nn.Sequential(make()), x)
    assert report.crosscheck() == [] and report.layer("0").expected_macs is None
    assert "not checked on 1 call(s) (0): its own forward()" in _notes(report)


def test_norms_count_the_parameters_they_really_have():
    """GroupNorm and LayerNorm without bias: 4 and 6 scale parameters; BatchNorm without affine: 0."""
    model = nn.Sequential(nn.GroupNorm(2, 4, bias=False), nn.Flatten(), nn.LayerNorm(24, bias=False))
    report = inspect(model, torch.randn(2, 4, 6))
    assert (report.layer("0").expected_params, report.layer("2").expected_params) == (4, 24)
    assert report.crosscheck() == []
    plain = inspect(nn.Sequential(nn.BatchNorm1d(4, affine=False)), torch.randn(2, 4))
    assert plain.layer("0").expected_params == 0 and plain.crosscheck() == []


class PlainSubclass(nn.Conv2d):
    """A subclass that changes nothing: torch's forward, torch's parameters. Still checked."""


def test_a_wrong_count_is_still_caught_on_torch_layers_and_plain_subclasses():
    """The op-level convolution formula made wrong on purpose (one MAC short per output element): the
    closed forms of nn.Conv2d and of a subclass that keeps torch's forward both disagree."""
    real = op_formulas.convolution_macs

    def short(*args, out_shape, **kwargs):
        import math
        return real(*args, out_shape=out_shape, **kwargs) - math.prod(out_shape)

    model = nn.Sequential(nn.Conv2d(2, 4, 3), PlainSubclass(4, 4, 3))
    report = inspect(model, torch.randn(1, 2, 8, 8), formulas={"aten::convolution": short})
    # conv 0: 4*6*6 outputs * 2*9 = 2,592, less 144; conv 1: 4*4*4 outputs * 4*9 = 2,304, less 64
    assert report.crosscheck() == [Mismatch("0", "Conv2d", "macs", 2592 - 144, 2592),
                                   Mismatch("1", "PlainSubclass", "macs", 2304 - 64, 2304)]


@pytest.mark.parametrize("name,subclass", [("tf_efficientnet_b0", "Conv2dSame"), ("nfnet_f0", "ScaledStdConv2d"),
                                           ("poolformerv2_s12", "GroupNorm1NoBias")])
def test_timm_subclasses_no_false_alarm_counts_exact(name, subclass):
    """The issue's timm families: counts equal the model's own parameter count and FlopCounterMode,
    and the cross-check is empty, the subclasses named in the notes."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn((1, *model.pretrained_cfg["input_size"]), device="meta")
    report = inspect(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert report.total_macs == counter.get_total_flops() // 2
    assert report.crosscheck() == [], report.crosscheck()
    assert f"closed form of {subclass} not checked" in _notes(report)
