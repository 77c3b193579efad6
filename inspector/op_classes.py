"""Which operators do matmul-like work: an explicit list, by family, never a pattern on names.

An op that multiplies inputs by weights (or by each other) and sums the products — a convolution, a
matrix product, attention, a recurrent cell, a distance between sets of vectors, a dense linear-algebra
factorisation — has MACs. Such an op without a formula is reported as *uncounted*; every other op
without a formula (elementwise work, reductions, copies, views, weight repacking) counts 0 by
convention. Names are ``namespace.op`` (every overload of the op).

The list is checked against torch's own operator list (tests/test_op_classes.py): every name exists,
and every registered op whose name *looks* matmul-like (``conv``, ``mm``, ``attention``, ...) is either
here or in the test's reviewed list of look-alikes (``cummax``, ``lgamma``, weight-repacking ops), so a
new torch op is classified by a person, not by a substring.
"""
from __future__ import annotations

_CONVOLUTION = (
    "convolution", "_convolution", "_convolution_mode", "convolution_overrideable", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv_tbc", "_conv_depthwise2d", "conv_depthwise3d",
    "cudnn_convolution", "cudnn_convolution_transpose", "cudnn_convolution_relu", "cudnn_convolution_add_relu",
    "miopen_convolution", "miopen_convolution_transpose", "miopen_depthwise_convolution", "miopen_convolution_relu",
    "miopen_convolution_add_relu", "mkldnn_convolution", "_mps_convolution", "_mps_convolution_transpose",
    "_nnpack_spatial_convolution", "thnn_conv2d", "_slow_conv2d_forward", "slow_conv3d", "slow_conv3d_forward",
    "slow_conv_dilated2d", "slow_conv_dilated3d", "slow_conv_transpose2d", "slow_conv_transpose3d",
    # backward
    "convolution_backward", "convolution_backward_overrideable", "_convolution_double_backward",
    "_slow_conv2d_backward", "conv_tbc_backward", "mps_convolution_backward", "mps_convolution_transpose_backward",
)

_MATRIX_PRODUCTS = (
    "mm", "_int_mm", "addmm", "_addmm_activation", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "inner",
    "outer", "ger", "addr", "matmul", "linalg_matmul", "chain_matmul", "linalg_multi_dot", "tensordot", "einsum",
    "bilinear", "_trilinear", "linear", "_grouped_mm", "_scaled_mm", "_scaled_mm_v2", "_scaled_grouped_mm",
    "_scaled_grouped_mm_v2", "_foreach_mm", "_compute_linear_combination", "_mixed_dtypes_linear", "mkldnn_linear",
    "_weight_int4pack_mm", "_weight_int4pack_mm_for_cpu", "_weight_int4pack_mm_with_scales_and_zeros",
    "_weight_int8pack_mm", "_dyn_quant_matmul_4bit", "fbgemm_linear_fp16_weight",
    "fbgemm_linear_fp16_weight_fp32_activation", "fbgemm_linear_int8_weight",
    "fbgemm_linear_int8_weight_fp32_activation", "_wrapped_quantized_linear_prepacked",
    # sparse operands
    "_sparse_mm", "_sparse_addmm", "_sparse_sparse_matmul", "hspmm", "smm", "sspaddmm", "sparse_sampled_addmm",
    "_sparse_mm_reduce_impl", "_sparse_semi_structured_mm", "_sparse_semi_structured_addmm",
    "_sparse_semi_structured_linear", "_cslt_sparse_mm",
    # backward
    "linear_backward", "matmul_backward", "mkldnn_linear_backward", "mkldnn_linear_backward_input",
    "mkldnn_linear_backward_weights", "_sparse_mm_reduce_impl_backward",
)

_ATTENTION = (
    "scaled_dot_product_attention", "_scaled_dot_product_attention_math", "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward", "_efficient_attention_forward",
    "_cudnn_attention_forward", "_flash_attention_forward_no_dropout_inplace", "_native_multi_head_attention",
    "_transformer_encoder_layer_fwd", "_triton_multi_head_attention", "_triton_scaled_dot_attention",
    # backward
    "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward", "_flash_attention_backward",
    "_efficient_attention_backward", "_cudnn_attention_backward",
)

_RECURRENT = (
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "_cudnn_rnn", "miopen_rnn", "mkldnn_rnn_layer", "_lstm_mps",
    "quantized_lstm", "quantized_gru", "quantized_lstm_cell", "quantized_gru_cell", "quantized_rnn_tanh_cell",
    "quantized_rnn_relu_cell",
    # backward
    "_cudnn_rnn_backward", "miopen_rnn_backward", "mkldnn_rnn_layer_backward", "lstm_mps_backward",
    "_thnn_fused_lstm_cell_backward", "_thnn_fused_lstm_cell_backward_impl", "_thnn_fused_gru_cell_backward",
    "_thnn_differentiable_lstm_cell_backward", "_thnn_differentiable_gru_cell_backward",
)

#: Distances between every pair of two sets of vectors: one multiply-accumulate per pair and feature.
_DISTANCES = ("cdist", "_cdist_forward", "_cdist_backward", "_euclidean_dist", "pdist", "_pdist_forward",
              "_pdist_backward")

#: Dense linear algebra (factorisations and solves): cubic multiply-accumulate work, listed so that a
#: model using it is never silently short; none has a formula yet.
_LINEAR_ALGEBRA = (
    "linalg_solve", "_linalg_solve_ex", "linalg_solve_ex", "linalg_solve_triangular", "triangular_solve",
    "cholesky_solve", "_cholesky_solve_helper", "cholesky_inverse", "linalg_cholesky_ex", "linalg_lu_factor_ex",
    "linalg_lu", "lu_solve", "linalg_lu_solve", "_lu_with_info", "linalg_inv_ex", "_linalg_det", "_linalg_slogdet",
    "_linalg_svd", "_linalg_eigh", "linalg_eig", "_linalg_eigvals", "linalg_qr", "geqrf", "orgqr", "ormqr",
    "linalg_householder_product", "linalg_lstsq", "linalg_ldl_factor_ex", "linalg_ldl_solve", "linalg_matrix_exp",
    "_spsolve", "linalg_tensorsolve",
)

_ATEN = (*_CONVOLUTION, *_MATRIX_PRODUCTS, *_ATTENTION, *_RECURRENT, *_DISTANCES, *_LINEAR_ALGEBRA)

#: Ops of other namespaces with matmul-like kernels (quantized and oneDNN kernels, torchvision's
#: deformable convolution).
_OTHER = (
    "torchvision.deform_conv2d", "torchvision._deform_conv2d_backward",
    *(f"quantized.{op}" for op in (
        "conv1d", "conv2d", "conv3d", "conv1d_relu", "conv2d_relu", "conv3d_relu", "conv2d_add", "conv2d_add_relu",
        "conv1d_dynamic", "conv2d_dynamic", "conv3d_dynamic", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "conv_transpose1d_dynamic", "conv_transpose2d_dynamic", "conv_transpose3d_dynamic",
        "linear", "linear_relu", "linear_dynamic", "linear_relu_dynamic", "linear_dynamic_fp16",
        "linear_relu_dynamic_fp16", "linear_dynamic_fp16_unpacked_weight", "linear_leaky_relu", "linear_tanh",
        "linear_with_input_q_dq_qweight_dq_output_fp32", "linear_with_input_q_dq_qweight_dq_relu_output_fp32",
        "matmul", "int4mm_packed_weight_cpu", "quantized_lstm_cell_dynamic", "quantized_gru_cell_dynamic",
        "quantized_rnn_relu_cell_dynamic", "quantized_rnn_tanh_cell_dynamic")),
    *(f"_quantized.{op}" for op in ("conv2d", "conv2d_relu", "conv3d", "conv3d_relu", "conv_transpose1d",
                                    "conv_transpose2d", "linear", "linear_dynamic", "wrapped_quantized_linear",
                                    "wrapped_fbgemm_linear_fp16_weight", "_wrapped_quantized_linear_prepacked")),
    *(f"onednn.{op}" for op in ("qconv1d_pointwise", "qconv2d_pointwise", "qconv3d_pointwise", "qconv_pointwise",
                                "qlinear_pointwise", "linear_dynamic_fp16", "linear_relu_dynamic_fp16")),
    *(f"sparse.{op}" for op in ("qlinear", "qlinear_dynamic", "qlinear_relu", "qlinear_relu_dynamic")),
    "mkldnn._convolution_pointwise", "mkldnn._convolution_pointwise_", "mkldnn._convolution_transpose_pointwise",
    "mkldnn._linear_pointwise", "mkldnn_prepacked.conv2d_run", "mkl._mkl_linear", "inductor._mm_plus_mm",
    "_native._foreach_mm_native_1", "_native.bmm_triton_0", "onnx.Attention",
    *(f"symm_mem.{op}" for op in ("fused_all_gather_matmul", "fused_all_gather_scaled_matmul", "fused_matmul_reduce_scatter",
                                  "fused_scaled_matmul_reduce_scatter", "_async_input_mm")),
)

MATMUL_OPS: frozenset[str] = frozenset((*(f"aten.{op}" for op in _ATEN), *_OTHER))

#: Families, for the tests and the documentation.
FAMILIES: dict[str, tuple[str, ...]] = {
    "convolution": _CONVOLUTION, "matrix products": _MATRIX_PRODUCTS, "attention": _ATTENTION,
    "recurrent": _RECURRENT, "distances": _DISTANCES, "linear algebra": _LINEAR_ALGEBRA,
}


def matmul_like(name: str) -> bool:
    """Whether the op ``namespace.op`` (or ``namespace::op``, an overload suffix allowed; an in-place
    variant ``op_`` as its op) does matmul-like work."""
    qualified = name.replace("::", ".", 1)
    packet = qualified.rsplit(".", 1)[0] if qualified.count(".") > 1 else qualified
    return packet in MATMUL_OPS or (packet.endswith("_") and packet[:-1] in MATMUL_OPS)
