"""Random layer configurations: the counted MACs, the closed form and torch's FlopCounterMode agree."""
import math

import torch
from hypothesis import assume, given, settings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inspector import inspect

SETTINGS = settings(max_examples=25, deadline=None)


def _reference_macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@st.composite
def conv_case(draw, transposed=False):
    nd = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    side = [draw(st.integers((k - 1) * d + 1, 9)) for k, d in zip(kernel, dilation)]
    batch = draw(st.integers(1, 3))
    bias = draw(st.booleans())
    cls = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d] if transposed else [nn.Conv1d, nn.Conv2d, nn.Conv3d]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    if transposed:
        kwargs["output_padding"] = tuple(min(s, d) - 1 for s, d in zip(stride, dilation))
        assume(all((n - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1 for n, s, p, d, k, op in
                   zip(side, stride, padding, dilation, kernel, kwargs["output_padding"])))
    return cls[nd - 1](c_in, c_out, kernel, **kwargs), torch.randn(batch, c_in, *side)


def _check(model, x, expected_params):
    report = inspect(model, x)
    record = report.layers[0]
    assert report.crosscheck() == []
    assert record.inclusive_macs == record.expected_macs == _reference_macs(model, x)
    assert report.total_params == expected_params == record.expected_params


@SETTINGS
@given(conv_case())
def test_convolution(case):
    m, x = case
    expected_params = m.out_channels * (m.in_channels // m.groups) * math.prod(m.kernel_size) + (
        m.out_channels if m.bias is not None else 0)
    _check(m, x, expected_params)


@SETTINGS
@given(conv_case(transposed=True))
def test_transposed_convolution(case):
    m, x = case
    expected_params = m.in_channels * (m.out_channels // m.groups) * math.prod(m.kernel_size) + (
        m.out_channels if m.bias is not None else 0)
    _check(m, x, expected_params)
    # every input element meets every weight of its group once:
    assert inspect(m, x).total_macs == x.numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


@SETTINGS
@given(st.integers(1, 20), st.integers(1, 20), st.booleans(), st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_linear(n_in, n_out, bias, lead):
    m = nn.Linear(n_in, n_out, bias=bias)
    x = torch.randn(*lead, n_in)
    _check(m, x, n_in * n_out + (n_out if bias else 0))
    assert inspect(m, x).total_macs == math.prod(lead) * n_in * n_out


@SETTINGS
@given(st.sampled_from([nn.MaxPool2d, nn.AvgPool2d]), st.integers(1, 3), st.integers(1, 3), st.integers(3, 9))
def test_pooling_is_free(cls, kernel, stride, side):
    report = inspect(cls(kernel, stride), torch.randn(2, 3, side, side))
    assert report.total_macs == 0 == report.layers[0].expected_macs and report.total_params == 0
