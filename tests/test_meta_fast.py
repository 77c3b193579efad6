"""The meta fast path: outputs identical to the real meta kernels, counts identical to the CPU's,
and fused RNNs counted as one op. (Every torchvision model is checked in tests/test_zoo.py.)"""
import pytest
import torch
from torch import nn

from inspector import inspect, meta_fast


@pytest.fixture(autouse=True)
def check(monkeypatch):
    monkeypatch.setattr(meta_fast, "CHECK", True)


def _meta(*shape, strides=None, dtype=torch.float32):
    if strides is None:
        return torch.empty(shape, device="meta", dtype=dtype)
    return torch.empty_strided(shape, strides, device="meta", dtype=dtype)


CASES = [
    (torch.ops.aten.relu.default, (_meta(2, 8, 5, 5),)),
    (torch.ops.aten.gelu.default, (_meta(2, 8, 5, 5).to(memory_format=torch.channels_last),)),
    (torch.ops.aten.hardswish.default, (_meta(1, 10, strides=(40, 1)),)),  # odd stride on a size-1 dim
    (torch.ops.aten.mul.Tensor, (_meta(1, 16, 1, 1), _meta(1, 16, 56, 56))),  # a scale broadcast into its input
    (torch.ops.aten.add.Tensor, (_meta(2, 8, 5, 5), _meta(8, 1, 1))),
    (torch.ops.aten.add.Tensor, (_meta(1, 1, 49, 512, strides=(49, 49, 1, 49)), _meta(1, 1, 49, 512))),
    (torch.ops.aten.mul.Tensor, (_meta(2, 3, dtype=torch.bfloat16), 0.5)),
    (torch.ops.aten.eq.Scalar, (_meta(4, 4), 0)),
    (torch.ops.aten.add_.Tensor, (_meta(2, 8), _meta(8))),
    (torch.ops.aten.native_batch_norm.default, (_meta(2, 8, 5, 5, dtype=torch.bfloat16), _meta(8, dtype=torch.bfloat16),
                                                _meta(8, dtype=torch.bfloat16), _meta(8), _meta(8), False, 0.1, 1e-5)),
    (torch.ops.aten.native_layer_norm.default, (_meta(7, 2, 16).transpose(0, 1), [16], None, None, 1e-5)),
    (torch.ops.aten.mean.dim, (_meta(2, 8, 5, 5).to(memory_format=torch.channels_last), [-1, -2], True)),
    (torch.ops.aten.addmm.default, (_meta(5), _meta(3, 4), _meta(4, 5))),
    (torch.ops.aten.cat.default, ([_meta(2, 3), _meta(2, 5)], 1)),
    (torch.ops.aten.convolution.default, (_meta(2, 3, 9, 9), _meta(6, 1, 3, 3), None, [2, 2], [1, 1], [1, 1], False,
                                          [0, 0], 3)),
    (torch.ops.aten.convolution.default, (_meta(2, 4, 5, 5), _meta(4, 3, 3, 3), None, [2, 2], [1, 1], [1, 1], True,
                                          [1, 1], 1)),
    (torch.ops.aten.clone.default, (_meta(3, 4).t(),)),
]


@pytest.mark.parametrize("func,args", CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_fast_kernel_matches_the_real_meta_kernel(func, args):
    """run() compares with the real kernel itself (CHECK); a case the fast kernel declines runs the
    real one."""
    out = meta_fast.run(meta_fast.lookup(func), func, args, None)
    real = func(*args)
    if out is not NotImplemented:
        outs, reals = (out, real) if isinstance(out, tuple) else ((out,), (real,))
        assert [(tuple(o.shape), o.stride(), o.dtype) for o in outs] == \
            [(tuple(r.shape), r.stride(), r.dtype) for r in reals]


def test_a_kernel_declines_what_it_does_not_know():
    gappy = _meta(4, 8)[:, ::2]
    assert meta_fast.unary(torch.ops.aten.relu.default, gappy) is NotImplemented
    assert meta_fast.binary(torch.ops.aten.div.Tensor, _meta(2, dtype=torch.int64), 2) is NotImplemented


@pytest.mark.parametrize("make,x", [
    (lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True), torch.randn(2, 5, 8)),
    (lambda: nn.LSTM(6, 10, proj_size=4), torch.randn(7, 3, 6)),
    (lambda: nn.LSTM(6, 10), torch.randn(7, 6)),
    (lambda: nn.GRU(6, 10, batch_first=True, num_layers=3), torch.randn(2, 7, 6)),
    (lambda: nn.RNN(8, 16, nonlinearity="relu"), torch.randn(5, 2, 8)),
    (lambda: nn.GRU(6, 10), nn.utils.rnn.pack_padded_sequence(torch.randn(7, 3, 6), [7, 5, 2])),
    (lambda: nn.LSTM(6, 10, bidirectional=True), nn.utils.rnn.pack_padded_sequence(torch.randn(7, 3, 6), [7, 5, 2])),
])
def test_rnn_on_meta_is_one_fused_op(make, x):
    model = make()
    meta = inspect(model, x, device="meta")
    cpu = inspect(model, x)
    assert meta.total_macs == cpu.total_macs and meta.crosscheck() == []
    fused = [op for op in meta.op_totals() if op in ("aten.lstm", "aten.gru", "aten.rnn_tanh", "aten.rnn_relu")]
    assert len(fused) == 1 and meta.op_totals()[fused[0]].calls == 1
    assert "aten.addmm" not in meta.op_totals()  # no per-step decomposition


def test_sequencer_counts_alike_on_cpu_and_meta():
    timm = pytest.importorskip("timm")
    model = timm.create_model("sequencer2d_s", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    assert inspect(model, x, device="meta").total_macs == inspect(model, x).total_macs
