"""Operator-level counting of work that module hooks alone cannot see; numbers worked by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inspector import inspect
from inspector.op_formulas import fused_rnn_macs

DEVICES = ["cpu", "meta"]


class Scores(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.q(x) @ self.k(x).transpose(-2, -1)


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_in_parent_forward_is_attributed_to_parent(device):
    r = inspect(Scores(), torch.randn(2, 5, 8), device=device)
    assert r.layer("q").macs == 2 * 5 * 8 * 8 == 640
    assert r.layer("").macs == 2 * 5 * 5 * 8 == 400  # q @ k^T, run in the parent's forward
    assert r.total_macs == 640 + 640 + 400


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa(device):
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 16)
    r = inspect(SDPA(), (q, k, v), device=device)
    assert r.total_macs == 2 * 4 * 5 * 6 * (8 + 16) == 5760  # scores L*S*E + weighted sum L*S*Ev


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("device", DEVICES)
def test_multihead_attention(mode, device):
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    r = inspect(SelfAttention(), x, device=device, mode=mode)
    projections = 3 * 2 * 5 * 16 * 16 + 2 * 5 * 16 * 16  # q, k, v and out: 7680 + 2560
    attention = 2 * 2 * 5 * 5 * 16  # scores + weighted sum: 1600
    assert r.total_macs == projections + attention == 11840
    assert r.layer("attn").expected_macs == 11840 and not r.crosscheck()
    if mode == "eval" and device == "cpu":  # the inference fast path runs as one fused op
        assert "aten._native_multi_head_attention" in r.op_totals()


@pytest.mark.parametrize("device", DEVICES)
def test_lstm_multilayer_bidirectional(device):
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    r = inspect(lstm, torch.randn(2, 5, 8), device=device)
    steps = 2 * 5
    layer0 = 2 * 4 * 16 * (8 + 16)  # two directions, 4 gates, H*(I+H): 3072
    layer1 = 2 * 4 * 16 * (32 + 16)  # input is both directions' 16: 6144
    assert r.total_macs == steps * (layer0 + layer1) == 92160
    assert r.total_params == 2 * (4 * 16 * (8 + 16) + 2 * 64) + 2 * (4 * 16 * (32 + 16) + 2 * 64)
    assert not r.crosscheck()


@pytest.mark.parametrize("device", DEVICES)
def test_gru_and_rnn(device):
    assert inspect(nn.GRU(8, 16), torch.randn(5, 2, 8), device=device).total_macs == 10 * 3 * 16 * 24 == 11520
    assert inspect(nn.RNN(8, 16), torch.randn(5, 2, 8), device=device).total_macs == 10 * 16 * 24 == 3840


def test_lstm_with_projection_and_packed_sequence():
    lstm = nn.LSTM(6, 10, proj_size=4)
    r = inspect(lstm, torch.randn(7, 3, 6))
    assert r.total_macs == 7 * 3 * (4 * 10 * (6 + 4) + 10 * 4) and not r.crosscheck()
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(7, 3, 6), [7, 5, 2])
    r = inspect(nn.GRU(6, 10), packed)
    assert r.total_macs == (7 + 5 + 2) * 3 * 10 * (6 + 10) and not r.crosscheck()


def test_fused_rnn_formula_from_weight_list():
    # The single-op form (cuDNN / fused kernels): weights (W_ih, W_hh, b_ih, b_hh) per layer
    weights = (torch.Size([64, 8]), torch.Size([64, 16]), torch.Size([64]), torch.Size([64]))
    assert fused_rnn_macs(torch.Size([5, 2, 8]), None, weights) == 10 * (64 * 8 + 64 * 16)


class Einsum(nn.Module):
    def forward(self, a, b):
        return torch.einsum("bij,bjk->bik", a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_einsum(device):
    assert inspect(Einsum(), (torch.randn(2, 3, 4), torch.randn(2, 4, 5)), device=device).total_macs == 2 * 3 * 4 * 5


class Thrice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(self.fc(x)))


def test_module_called_three_times():
    r = inspect(Thrice(), torch.randn(1, 4))
    calls = [rec for rec in r.layers if rec.name == "fc"]
    assert [c.call for c in calls] == [0, 1, 2]
    assert [c.macs for c in calls] == [16, 16, 16]
    assert [c.params for c in calls] == [20, 0, 0]  # parameters once, MACs per call
    assert r.total_params == 20 and r.total_macs == 48
    assert [c.label for c in calls] == ["fc", "fc#1", "fc#2"]


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_tied_weights_count_once():
    r = inspect(Tied(), torch.tensor([[1, 2, 3]]))
    assert r.total_params == 10 * 4
    assert sum(rec.params for rec in r.layers) == 40
    assert r.total_macs == 3 * 4 * 10


def test_bilinear_and_embedding_bag():
    r = inspect(nn.Bilinear(3, 4, 5), (torch.randn(2, 3), torch.randn(2, 4)))
    assert r.total_macs == 2 * 5 * 3 * 4 and r.total_params == 5 * 3 * 4 + 5 and not r.crosscheck()
    bag = nn.EmbeddingBag(10, 4, mode="sum")
    ids = torch.tensor([1, 2, 3, 4])
    weighted = inspect(bag, (ids, torch.tensor([0, 2]), torch.rand(4)))
    assert weighted.total_macs == 4 * 4 and not weighted.crosscheck()
    assert inspect(bag, (ids, torch.tensor([0, 2]))).total_macs == 0


def test_transposed_convolution_counts_multiplies_performed():
    r = inspect(nn.ConvTranspose2d(2, 3, 3, stride=2), torch.randn(1, 2, 4, 4))
    assert r.total_macs == 4 * 4 * 2 * 3 * 9  # input positions x C_in x C_out x kernel
    assert not r.crosscheck()


def test_transformer_encoder_layer_fast_path():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    r = inspect(layer, torch.randn(2, 5, 16))
    mha = 4 * 2 * 5 * 16 * 16 + 2 * 2 * 5 * 5 * 16
    ffn = 2 * 2 * 5 * 16 * 32
    assert r.total_macs == mha + ffn and not r.crosscheck()


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                  lambda: nn.Linear(16, 7), lambda: Scores()])
def test_agrees_with_flop_counter_mode(make):
    model = make()
    x = torch.randn(2, 3, 9, 9) if isinstance(model, nn.Conv2d) else torch.randn(2, 5, 16 if isinstance(model, nn.Linear) else 8)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert 2 * inspect(model, x).total_macs == counter.get_total_flops()
