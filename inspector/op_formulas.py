"""Operator-level MAC formulas: aten op -> multiply-accumulates, from shapes alone.

A formula receives the op's arguments with every tensor replaced by its shape (a list of tensors
by a tuple of shapes, a nested tensor by a :class:`Nested` of its components' shapes), the op's
keyword arguments the same way, and ``out_shape``, the output's shape(s). Formulas never see data,
so the same count comes out on CPU, CUDA and the meta device.

Ops we register ourselves come first; any forward op that ``torch.utils.flop_counter`` knows and
we do not is adopted from there (its FLOPs halved into MACs). Backward ops have formulas of our own
(convolution, attention, recurrent layers); the rest of backward is matmuls counted by the forward
formulas. Ops with no formula count 0 MACs by convention (elementwise work, reductions, copies);
those whose name looks matmul-like are reported as *uncounted* instead of being silently zero.

Your own operator (a ``torch.library`` custom op, or any aten op) gets a formula with
``@op_formula("mylib::myop")`` globally, or ``inspect(..., formulas={"mylib::myop": fn})`` for
one call.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import flop_counter as _torch_flops

from inspector.errors import RegistryError
from inspector.registry import Registry

Shape = Sequence[int]
OpFormula = Callable[..., int]

OP_FORMULAS: Registry[Any, OpFormula] = Registry("op formula")

#: Names that suggest matmul-like work; such an op without a formula is reported, never silently 0.
MATMUL_LIKE = re.compile(r"conv|mm|matmul|linear|attention|rnn|lstm|gru|einsum|bilinear|\bdot\b|addmv|"
                         r"addr\b|outer|tensordot|gemm|gemv", re.IGNORECASE)


class Nested(tuple):
    """The shape of a nested tensor: one shape per component (sequences of different lengths)."""

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self)


def resolve_op(op: Any) -> Any:
    """An op overload packet or overload from ``"aten.mm"``, ``"aten::mm"``, ``"mylib::op"``,
    ``"aten::add.Tensor"`` or the op object itself; a RegistryError when nothing by that name exists."""
    if isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        return op
    if not isinstance(op, str):
        raise RegistryError(f"an op is named by a string like 'aten::mm' or given as torch.ops.x.y, got {op!r}")
    namespace, sep, rest = op.replace("::", ".", 1).partition(".")
    name, _, overload = rest.partition(".")
    if not sep or not name:
        raise RegistryError(f"op name {op!r} is not 'namespace::name' (like 'aten::mm' or 'mylib::myop')")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
        return getattr(packet, overload) if overload else packet
    except (AttributeError, RuntimeError):
        raise RegistryError(f"no operator {op!r} is registered with torch (is the library that defines it "
                            "imported?)") from None


def op_formula(*ops: Any, optional: bool = False) -> Callable[[OpFormula], OpFormula]:
    """Register a MAC formula for the named ops (see the module docstring for the calling convention).

    An op that does not resolve raises RegistryError, unless ``optional`` (used for ops that some
    torch releases lack)."""
    resolved = []
    for op in ops:
        try:
            resolved.append(resolve_op(op))
        except RegistryError:
            if not optional:
                raise
    return OP_FORMULAS.register(*resolved)


def formula_table(extra: dict[Any, OpFormula] | None = None) -> dict[Any, OpFormula]:
    """The registry, with per-call formulas (resolved by name) taking precedence."""
    if not extra:
        return OP_FORMULAS.table
    resolved = {resolve_op(op): fn for op, fn in extra.items()}
    for fn in resolved.values():
        if not callable(fn):
            raise RegistryError(f"a formula must be callable, got {fn!r}")
    return {**OP_FORMULAS.table, **resolved}


def lookup(table: dict[Any, OpFormula], func: Any) -> OpFormula | None:
    """The formula of an op overload: registered for the overload itself, else for its packet."""
    found = table.get(func)
    return found if found is not None else table.get(func.overloadpacket)


def _prod(shape: Shape) -> int:
    return math.prod(shape)


# --- matrix products -----------------------------------------------------------------------------

@op_formula("aten.mm", "aten._int_mm", optional=True)
def mm_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    """(m, k) @ (k, n): m*k*n."""
    return a[0] * a[1] * b[1]


@op_formula("aten.addmm", optional=True)
def addmm_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return mm_macs(a, b)


@op_formula("aten.bmm", optional=True)
def bmm_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    """(B, m, k) @ (B, k, n): B*m*k*n."""
    return a[0] * a[1] * a[2] * b[2]


@op_formula("aten.baddbmm", "aten.addbmm", optional=True)
def baddbmm_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return bmm_macs(a, b)


@op_formula("aten.mv", optional=True)
def mv_macs(a: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return a[0] * a[1]


@op_formula("aten.addmv", optional=True)
def addmv_macs(bias: Shape, a: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return mv_macs(a, v)


@op_formula("aten.dot", "aten.vdot", optional=True)
def dot_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return a[0]


@op_formula("aten.outer", "aten.ger", optional=True)
def outer_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return a[0] * b[0]


@op_formula("aten.addr", optional=True)
def addr_macs(bias: Shape, a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    return outer_macs(a, b)


@op_formula("aten._grouped_mm", optional=True)
def grouped_mm_macs(a: Shape, b: Shape, *_: Any, **__: Any) -> int:
    """Mixture-of-experts matmuls. 2-D x 3-D (offsets split a's rows among experts): each of a's M
    rows meets one expert's k x n, M*k*n. 3-D x 3-D: a batch, G*m*k*n. 2-D x 2-D (offsets split
    k): m*K*n. 3-D x 2-D (offsets split b's columns): m*k*N. Every row of ``a`` is counted as
    assigned (offsets are data: rows past the last offset, if any, are counted too)."""
    if len(a) == 3 and len(b) == 3:
        return a[0] * a[1] * a[2] * b[2]
    if len(a) == 2 and len(b) == 3:
        return a[0] * a[1] * b[2]
    if len(a) == 3 and len(b) == 2:
        return a[1] * a[2] * b[1]
    return a[0] * a[1] * b[1]


# --- convolution ---------------------------------------------------------------------------------

def conv_macs(x: Shape, w: Shape, out: Shape, transposed: bool) -> int:
    """Multiplies actually performed.

    Direct: every output element takes C_in/groups * kernel volume (``w[1:]``) products.
    Transposed: every *input* element is scattered through C_out/groups * kernel volume products
    (``w`` is (C_in, C_out/groups, *kernel)).
    """
    return (_prod(x) if transposed else _prod(out)) * _prod(w[1:])


@op_formula("aten.convolution", "aten._convolution", "aten.convolution_overrideable", optional=True)
def convolution_macs(x: Shape, w: Shape, bias: Any, stride: Any, padding: Any, dilation: Any,
                     transposed: bool, *_: Any, out_shape: Shape, **__: Any) -> int:
    return conv_macs(x, w, out_shape, bool(transposed))


@op_formula("aten.mkldnn_convolution", "aten.cudnn_convolution", "aten._slow_conv2d_forward",
            "aten.thnn_conv2d", "aten.slow_conv3d_forward", "aten.slow_conv_dilated2d",
            "aten.slow_conv_dilated3d", "aten._nnpack_spatial_convolution", optional=True)
def direct_convolution_macs(x: Shape, w: Shape, *_: Any, out_shape: Any, **__: Any) -> int:
    out = out_shape[0] if out_shape and isinstance(out_shape[0], (tuple, list)) else out_shape
    return conv_macs(x, w, out, transposed=False)


@op_formula("aten.slow_conv_transpose2d", "aten.slow_conv_transpose3d", "aten.cudnn_convolution_transpose",
            optional=True)
def transposed_convolution_macs(x: Shape, w: Shape, *_: Any, out_shape: Any, **__: Any) -> int:
    return conv_macs(x, w, out_shape, transposed=True)


@op_formula("aten.convolution_backward", optional=True)
def convolution_backward_macs(grad_out: Shape, x: Shape, w: Shape, bias_sizes: Any, stride: Any, padding: Any,
                              dilation: Any, transposed: bool, output_padding: Any, groups: Any,
                              output_mask: Sequence[bool], *_: Any, **__: Any) -> int:
    """The input gradient (a transposed convolution of the output gradient) and the weight gradient
    (a correlation of input and output gradient) each perform exactly the forward's multiplies; the
    bias gradient is a sum. ``output_mask`` says which were asked for."""
    forward = conv_macs(x, w, grad_out, bool(transposed))
    return forward * (bool(output_mask[0]) + bool(output_mask[1]))


# --- attention -----------------------------------------------------------------------------------

def attention_macs(batch_heads: int, q_len: int, k_len: int, qk_dim: int, v_dim: int) -> int:
    """softmax(Q K^T) V: L*S*E for the scores plus L*S*Ev for the weighted sum, per batch*head."""
    return batch_heads * q_len * k_len * (qk_dim + v_dim)


def attention_backward_macs(batch_heads: int, q_len: int, k_len: int, qk_dim: int, v_dim: int) -> int:
    """The gradient products of attention: dV = P^T dO and dP = dO V^T (L*S*Ev each), dQ = dS K and
    dK = dS^T Q (L*S*E each): L*S*(2E + 2Ev) per batch*head, twice the forward. Convention: the
    fused kernels (flash, memory-efficient, cuDNN, flash-for-CPU) also recompute the scores Q K^T
    (one more L*S*E), which is not counted, so that every backend (and the meta device, which runs
    the math path: exactly these four products) gives the same count. FlopCounterMode counts the
    recomputation (L*S*(3E + 2Ev))."""
    return 2 * batch_heads * q_len * k_len * (qk_dim + v_dim)


@op_formula("aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
            "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
            "aten._scaled_dot_product_fused_attention_overrideable", optional=True)
def sdpa_macs(q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    """Layout (..., heads, L, E); grouped-query attention reads each k/v head for several q heads."""
    return attention_macs(_prod(q[:-2]), q[-2], k[-2], q[-1], v[-1])


@op_formula("aten._scaled_dot_product_flash_attention_for_cpu_backward",
            "aten._scaled_dot_product_flash_attention_backward",
            "aten._scaled_dot_product_cudnn_attention_backward",
            "aten._scaled_dot_product_fused_attention_overrideable_backward", optional=True)
def sdpa_backward_macs(grad_out: Shape, q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return attention_backward_macs(_prod(q[:-2]), q[-2], k[-2], q[-1], v[-1])


@op_formula("aten._scaled_dot_product_efficient_attention_backward", optional=True)
def sdpa_efficient_backward_macs(grad_out: Shape, q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return attention_backward_macs(_prod(q[:-2]), q[-2], k[-2], q[-1], v[-1])


@op_formula("aten._flash_attention_forward", "aten._efficient_attention_forward", optional=True)
def raw_attention_macs(q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    """Layout (B, L, heads, E)."""
    return attention_macs(q[0] * q[2], q[1], k[1], q[3], v[3])


@op_formula("aten._flash_attention_backward", "aten._efficient_attention_backward", optional=True)
def raw_attention_backward_macs(grad_out: Shape, q: Shape, k: Shape, v: Shape, *_: Any, **__: Any) -> int:
    return attention_backward_macs(q[0] * q[2], q[1], k[1], q[3], v[3])


def _sequences(x: Shape) -> list[tuple[int, int]]:
    """(batch, length) of each group of equal-length sequences: one group for a dense (..., L, E)
    tensor, one per component for a nested tensor (padded sequences given as their real tokens)."""
    if isinstance(x, Nested):
        return [(1, s[-2]) for s in x]
    return [(_prod(x[:-2]) if len(x) > 2 else 1, x[-2])]


@op_formula("aten._native_multi_head_attention", optional=True)
def native_mha_macs(q: Shape, k: Shape, v: Shape, embed_dim: int, num_heads: int, qkv_w: Shape,
                    qkv_b: Any, proj_w: Shape, *_: Any, **__: Any) -> int:
    """nn.MultiheadAttention's inference fast path: q/k/v projections, attention, out projection."""
    total = 0
    for (batch, q_len), (_, k_len) in zip(_sequences(q), _sequences(k)):
        projections = batch * (q_len + 2 * k_len) * embed_dim * embed_dim + batch * q_len * _prod(proj_w)
        total += projections + attention_macs(batch, q_len, k_len, embed_dim, embed_dim)
    return total


@op_formula("aten._transformer_encoder_layer_fwd", optional=True)
def encoder_layer_macs(src: Shape, embed_dim: int, num_heads: int, qkv_w: Shape, qkv_b: Any,
                       proj_w: Shape, proj_b: Any, use_gelu: Any, norm_first: Any, eps: Any,
                       n1w: Any, n1b: Any, n2w: Any, n2b: Any, ffn1_w: Shape, ffn1_b: Any,
                       ffn2_w: Shape, *_: Any, **__: Any) -> int:
    """nn.TransformerEncoderLayer's fused fast path: attention block plus the two feed-forward
    matmuls. On a nested tensor (a padding mask in eval), only each sequence's real tokens."""
    weights = _prod(qkv_w) + _prod(proj_w) + _prod(ffn1_w) + _prod(ffn2_w)
    return sum(batch * length * weights + attention_macs(batch, length, length, embed_dim, embed_dim)
               for batch, length in _sequences(src))


# --- recurrent layers ----------------------------------------------------------------------------

def _rnn_macs(x: Shape, weights: Sequence[Shape]) -> int:
    """Every time step of every sequence multiplies each 2-D weight (W_ih, W_hh, W_hr) once."""
    return _prod(x[:-1]) * sum(_prod(w) for w in weights if len(w) == 2)


@op_formula("aten.mkldnn_rnn_layer", optional=True)
def mkldnn_rnn_layer_macs(x: Shape, w_ih: Shape, w_hh: Shape, *_: Any, **__: Any) -> int:
    """One layer, one direction of an LSTM on the CPU's oneDNN path."""
    return _rnn_macs(x, (w_ih, w_hh))


@op_formula("aten.mkldnn_rnn_layer_backward", optional=True)
def mkldnn_rnn_layer_backward_macs(x: Shape, w_ih: Shape, w_hh: Shape, *_: Any, **__: Any) -> int:
    """Gradients of the inputs and hidden states (each step's gates through W_ih and W_hh) and of
    both weights (each step's gates against its input and hidden state): twice the forward."""
    return 2 * _rnn_macs(x, (w_ih, w_hh))


def _weight_list(args: Sequence[Any]) -> Sequence[Shape]:
    """The flat list of weight shapes: the first list of shapes holding a matrix (an LSTM's (h0, c0)
    state list comes first and holds 3-D shapes only)."""
    return next(a for a in args if isinstance(a, tuple) and a and isinstance(a[0], torch.Size)
                and any(len(w) == 2 for w in a))


@op_formula("aten.lstm", "aten.gru", "aten.rnn_tanh", "aten.rnn_relu", "aten._cudnn_rnn", "aten.miopen_rnn",
            optional=True)
def fused_rnn_macs(x: Shape, *args: Any, **__: Any) -> int:
    """A whole multi-layer RNN in one op: its weight list holds every (layer, direction)'s matrices.

    Layers above the first see the previous layer's output, whose step count equals the input's.
    """
    return _rnn_macs(x, _weight_list(args))


@op_formula("aten._cudnn_rnn_backward", "aten.miopen_rnn_backward", optional=True)
def fused_rnn_backward_macs(x: Shape, weights: Sequence[Shape], *args: Any, **__: Any) -> int:
    """Data gradients (always: the recurrence needs them) plus, when ``output_mask[3]``, the weight
    gradients: each the forward's MACs."""
    mask = args[-1]
    return _rnn_macs(x, weights) * (1 + bool(mask[3]))


# --- other linear maps ---------------------------------------------------------------------------

@op_formula("aten._trilinear", optional=True)
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


@op_formula("aten._euclidean_dist", "aten._cdist_forward", optional=True)
def cdist_macs(x1: Shape, x2: Shape, *_: Any, out_shape: Shape, **__: Any) -> int:
    """torch.cdist of (..., P, M) against (..., R, M): one MAC per coordinate of every pair, the
    (..., P, R) distances times M (the matmul of the Euclidean path; the difference raised to p and
    summed on the direct one). The squared norms it adds are elementwise work."""
    return _prod(out_shape) * x1[-1]


@op_formula("aten._cdist_backward", optional=True)
def cdist_backward_macs(grad: Shape, x1: Shape, x2: Shape, p: Any, cdist: Shape, *_: Any, **__: Any) -> int:
    """The direct path's gradient of x1: every pair's difference weighted into it, once per coordinate."""
    return _prod(cdist) * x1[-1]


@op_formula("aten.upsample_linear1d", "aten.upsample_bilinear2d", "aten._upsample_bilinear2d_aa",
            "aten.upsample_bicubic2d", "aten._upsample_bicubic2d_aa", "aten.upsample_trilinear3d",
            "aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
            "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d", "aten._upsample_nearest_exact3d",
            optional=True)
def interpolation_macs(*_: Any, **__: Any) -> int:
    """0 by convention: interpolation resamples with fixed weights and is no matmul-like work
    (torchvision's published figures, e.g. lraspp_mobilenet_v3_large, leave it out too)."""
    return 0


@op_formula("aten._embedding_bag", "aten._embedding_bag_forward_only", optional=True)
def embedding_bag_macs(weight: Shape, indices: Shape, offsets: Any, scale_grad: Any, mode: Any,
                       sparse: Any, per_sample_weights: Any = None, *_: Any, **__: Any) -> int:
    """Lookups are free; per-sample weights multiply each looked-up row once."""
    return _prod(indices) * weight[1] if per_sample_weights is not None else 0


def _adopt_torch_formulas() -> None:
    """Take every forward formula torch ships for an op we do not cover, converted from FLOPs to MACs."""
    for packet, flops_fn in _torch_flops.flop_registry.items():
        if packet in OP_FORMULAS or "backward" in str(packet):
            continue

        def from_torch(*args: Any, out_shape: Any = None, _fn: Callable = flops_fn, **kwargs: Any) -> int:
            kwargs.pop("out", None)
            return int(_fn(*args, out_val=out_shape, **kwargs)) // 2

        OP_FORMULAS.register(packet)(from_torch)


_adopt_torch_formulas()


# --- quantized kernels (weights arrive packed; their shapes are read from the packed object) -------

def _packed_weight_shape(packed: Any) -> Shape:
    return tuple(packed.unpack()[0].shape)


@op_formula("quantized.conv1d", "quantized.conv2d", "quantized.conv3d", "quantized.conv1d_relu",
            "quantized.conv2d_relu", "quantized.conv3d_relu", "quantized.conv2d_add", "quantized.conv2d_add_relu",
            optional=True)
def quantized_conv_macs(x: Shape, packed: Any, *_: Any, out_shape: Shape, **__: Any) -> int:
    transposed = bool(packed.transpose()) if hasattr(packed, "transpose") else False
    return conv_macs(x, _packed_weight_shape(packed), out_shape, transposed)


@op_formula("quantized.linear", "quantized.linear_relu", "quantized.linear_dynamic",
            "quantized.linear_relu_dynamic", optional=True)
def quantized_linear_macs(x: Shape, packed: Any, *_: Any, **__: Any) -> int:
    return _prod(x[:-1]) * _prod(_packed_weight_shape(packed))
