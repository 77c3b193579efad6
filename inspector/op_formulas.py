"""Operator-level MAC formulas: aten op -> multiply-accumulates, from shapes alone.

Each formula receives the op's arguments with every tensor replaced by its shape (a list of
tensors by a tuple of shapes) and ``out``, the output's shape(s). Formulas never see data, so the
same count comes out on CPU, CUDA and the meta device.

Ops we register ourselves come first; any op that ``torch.utils.flop_counter`` knows and we do not
is adopted from there (its FLOPs halved into MACs). Ops with no formula count 0 MACs by
convention (elementwise work, reductions, copies); those whose name looks matmul-like are reported
as *uncounted* instead of being silently zero.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import flop_counter as _torch_flops

from inspector.registry import Registry

Shape = Sequence[int]
OpFormula = Callable[..., int]

OP_FORMULAS: Registry[Any, OpFormula] = Registry("op formula")

#: Names that suggest matmul-like work; such an op without a formula is reported, never silently 0.
MATMUL_LIKE = re.compile(r"conv|mm|matmul|linear|attention|rnn|lstm|gru|einsum|bilinear|\bdot\b|addmv|"
                         r"addr\b|outer|tensordot", re.IGNORECASE)


def _packets(*names: str) -> list[Any]:
    """Resolve ``"aten.mm"``-style names to op overload packets, skipping ones this torch lacks."""
    found = []
    for name in names:
        namespace, op = name.split(".")
        try:
            found.append(getattr(getattr(torch.ops, namespace), op))
        except (AttributeError, RuntimeError):
            continue
    return found


def op_formula(*names: str) -> Callable[[OpFormula], OpFormula]:
    """Register a formula for the named aten ops (those missing from this torch are skipped)."""
    return OP_FORMULAS.register(*_packets(*names))


def _prod(shape: Shape) -> int:
    return math.prod(shape)


# --- matrix products -----------------------------------------------------------------------------

@op_formula("aten.mm", "aten._int_mm")
def mm_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    """(m, k) @ (k, n): m*k*n."""
    return a[0] * a[1] * b[1]


@op_formula("aten.addmm")
def addmm_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return mm_macs(a, b)


@op_formula("aten.bmm")
def bmm_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    """(B, m, k) @ (B, k, n): B*m*k*n."""
    return a[0] * a[1] * a[2] * b[2]


@op_formula("aten.baddbmm", "aten.addbmm")
def baddbmm_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return bmm_macs(a, b)


@op_formula("aten.mv")
def mv_macs(a: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return a[0] * a[1]


@op_formula("aten.addmv")
def addmv_macs(bias: Shape, a: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return mv_macs(a, v)


@op_formula("aten.dot", "aten.vdot")
def dot_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return a[0]


@op_formula("aten.outer", "aten.ger")
def outer_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return a[0] * b[0]


@op_formula("aten.addr")
def addr_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return outer_macs(a, b)


# --- convolution ---------------------------------------------------------------------------------

def conv_macs(x: Shape, w: Shape, out: Shape, transposed: bool) -> int:
    """Multiplies actually performed.

    Direct: every output element takes C_in/groups * kernel volume (``w[1:]``) products.
    Transposed: every *input* element is scattered through C_out/groups * kernel volume products
    (``w`` is (C_in, C_out/groups, *kernel)).
    """
    per_element = _prod(w[1:])
    return (_prod(x) if transposed else _prod(out)) * per_element


@op_formula("aten.convolution", "aten._convolution", "aten.convolution_overrideable")
def convolution_macs(x: Shape, w: Shape, bias: Any, stride: Any, padding: Any, dilation: Any,
                     transposed: bool, *_: Any, out: Shape, **__: Any) -> int:
    return conv_macs(x, w, out, bool(transposed))


@op_formula("aten.mkldnn_convolution", "aten.cudnn_convolution", "aten._slow_conv2d_forward",
            "aten.thnn_conv2d", "aten.slow_conv3d_forward", "aten.slow_conv_dilated2d",
            "aten.slow_conv_dilated3d", "aten._nnpack_spatial_convolution")
def direct_convolution_macs(x: Shape, w: Shape, *_: Any, out: Any, **__: Any) -> int:
    out_shape = out[0] if out and isinstance(out[0], (tuple, list, torch.Size)) else out
    return conv_macs(x, w, out_shape, transposed=False)


@op_formula("aten.slow_conv_transpose2d", "aten.slow_conv_transpose3d", "aten.cudnn_convolution_transpose")
def transposed_convolution_macs(x: Shape, w: Shape, *_: Any, out: Any, **__: Any) -> int:
    return conv_macs(x, w, out, transposed=True)


# --- attention -----------------------------------------------------------------------------------

def attention_macs(batch_heads: int, q_len: int, k_len: int, qk_dim: int, v_dim: int) -> int:
    """softmax(Q K^T) V: L*S*E for the scores plus L*S*Ev for the weighted sum, per batch*head."""
    return batch_heads * q_len * k_len * (qk_dim + v_dim)


@op_formula("aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
            "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
            "aten._scaled_dot_product_fused_attention_overrideable")
def sdpa_macs(q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    """Layout (..., heads, L, E); grouped-query attention reads each k/v head for several q heads."""
    return attention_macs(_prod(q[:-2]), q[-2], k[-2], q[-1], v[-1])


@op_formula("aten._flash_attention_forward", "aten._efficient_attention_forward")
def raw_attention_macs(q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    """Layout (B, L, heads, E)."""
    return attention_macs(q[0] * q[2], q[1], k[1], q[3], v[3])


@op_formula("aten._native_multi_head_attention")
def native_mha_macs(q: Shape, k: Shape, v: Shape, embed_dim: int, num_heads: int, qkv_w: Shape,
                    qkv_b: Any, proj_w: Shape, *_: Any, **__: Any) -> int:
    """nn.MultiheadAttention's inference fast path: q/k/v projections, attention, out projection."""
    batch = _prod(q[:-2]) if len(q) > 2 else 1
    q_len, k_len = q[-2], k[-2]
    projections = batch * (q_len + 2 * k_len) * embed_dim * embed_dim + batch * q_len * _prod(proj_w)
    return projections + attention_macs(batch, q_len, k_len, embed_dim, embed_dim)


@op_formula("aten._transformer_encoder_layer_fwd")
def encoder_layer_macs(src: Shape, embed_dim: int, num_heads: int, qkv_w: Shape, qkv_b: Any,
                       proj_w: Shape, proj_b: Any, use_gelu: Any, norm_first: Any, eps: Any,
                       n1w: Any, n1b: Any, n2w: Any, n2b: Any, ffn1_w: Shape, ffn1_b: Any,
                       ffn2_w: Shape, *_: Any, **__: Any) -> int:
    """nn.TransformerEncoderLayer's fused fast path: attention block plus the two feed-forward matmuls."""
    batch = _prod(src[:-2]) if len(src) > 2 else 1
    tokens = batch * src[-2]
    weights = _prod(qkv_w) + _prod(proj_w) + _prod(ffn1_w) + _prod(ffn2_w)
    return tokens * weights + attention_macs(batch, src[-2], src[-2], embed_dim, embed_dim)


# --- recurrent layers ----------------------------------------------------------------------------

def _rnn_macs(x: Shape, weights: Sequence[Shape]) -> int:
    """Every time step of every sequence multiplies each 2-D weight (W_ih, W_hh, W_hr) once."""
    steps = _prod(x[:-1])
    return steps * sum(_prod(w) for w in weights if len(w) == 2)


@op_formula("aten.mkldnn_rnn_layer")
def mkldnn_rnn_layer_macs(x: Shape, w_ih: Shape, w_hh: Shape, *_: Any, **__: Any) -> int:
    """One layer, one direction of an LSTM on the CPU's oneDNN path."""
    return _rnn_macs(x, (w_ih, w_hh))


@op_formula("aten.lstm", "aten.gru", "aten.rnn_tanh", "aten.rnn_relu", "aten._cudnn_rnn", "aten.miopen_rnn")
def fused_rnn_macs(x: Shape, *args: Any, **__: Any) -> int:
    """A whole multi-layer RNN in one op: its weight list holds every (layer, direction)'s matrices.

    Layers above the first see the previous layer's output, whose step count equals the input's.
    """
    weight_list = next(a for a in args if isinstance(a, tuple) and a and isinstance(a[0], torch.Size))
    return _rnn_macs(x, weight_list)


# --- other linear maps ---------------------------------------------------------------------------

@op_formula("aten._trilinear")
def trilinear_macs(i1: Shape, i2: Shape, i3: Shape, expand1: Sequence[int], expand2: Sequence[int],
                   expand3: Sequence[int], *_: Any, **__: Any) -> int:
    """One MAC per term of the broadcast product (nn.Bilinear: N * out * in1 * in2)."""
    def expanded(shape: Shape, dims: Sequence[int]) -> list[int]:
        full = list(shape)
        for d in sorted(dims):
            full.insert(d, 1)
        return full
    grids = [expanded(i1, expand1), expanded(i2, expand2), expanded(i3, expand3)]
    return _prod(max(sizes) for sizes in zip(*grids))


@op_formula("aten.upsample_linear1d", "aten.upsample_bilinear2d", "aten._upsample_bilinear2d_aa",
            "aten.upsample_bicubic2d", "aten._upsample_bicubic2d_aa", "aten.upsample_trilinear3d",
            "aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
            "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d", "aten._upsample_nearest_exact3d")
def interpolation_macs(*_: Any, **__: Any) -> int:
    """0 by convention: interpolation resamples with fixed weights and is no matmul-like work
    (torchvision's published figures, e.g. lraspp_mobilenet_v3_large, leave it out too)."""
    return 0


@op_formula("aten._embedding_bag", "aten._embedding_bag_forward_only")
def embedding_bag_macs(weight: Shape, indices: Shape, offsets: Any, scale_grad: Any, mode: Any,
                       sparse: Any, per_sample_weights: Any = None, *_: Any, **__: Any) -> int:
    """Lookups are free; per-sample weights multiply each looked-up row once."""
    return _prod(indices) * weight[1] if per_sample_weights is not None else 0


def _adopt_torch_formulas() -> None:
    """Take every formula torch ships for an op we do not cover, converted from FLOPs to MACs."""
    for packet, flops_fn in _torch_flops.flop_registry.items():
        if packet in OP_FORMULAS or "backward" in str(packet):
            continue

        def from_torch(*args: Any, out: Any = None, _fn: Callable = flops_fn, **kwargs: Any) -> int:
            return int(_fn(*args, out_val=out, **kwargs)) // 2

        OP_FORMULAS.register(packet)(from_torch)


_adopt_torch_formulas()


# --- quantized kernels (weights arrive packed; their shapes are read from the packed object) -------

def _packed_weight_shape(packed: Any) -> Shape:
    return tuple(packed.unpack()[0].shape)


@op_formula("quantized.conv1d", "quantized.conv2d", "quantized.conv3d", "quantized.conv1d_relu",
            "quantized.conv2d_relu", "quantized.conv3d_relu", "quantized.conv2d_add", "quantized.conv2d_add_relu")
def quantized_conv_macs(x: Shape, packed: Any, *_: Any, out: Shape, **__: Any) -> int:
    transposed = bool(packed.transpose()) if hasattr(packed, "transpose") else False
    return conv_macs(x, _packed_weight_shape(packed), out, transposed)


@op_formula("quantized.linear", "quantized.linear_relu", "quantized.linear_dynamic",
            "quantized.linear_relu_dynamic")
def quantized_linear_macs(x: Shape, packed: Any, *_: Any, **__: Any) -> int:
    return _prod(x[:-1]) * _prod(_packed_weight_shape(packed))
