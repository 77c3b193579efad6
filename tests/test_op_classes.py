"""The matmul-like classification (inspector/op_classes.py), checked against torch's own operator list.

Two independent nets find the ops that must be classified: what the op *is* by its schema (a
convolution takes a weight with stride/padding/dilation, attention takes query/key/value, a matrix
product takes mat1/mat2/batch1/..., a recurrent op takes hx or w_ih), and what its name looks like
(the old substring pattern). Every op either net catches is listed as matmul-like or reviewed here as
a look-alike with a reason; ops are then run both ways through ``inspect``.
"""
import re

import pytest
import torch
import torchvision  # noqa: F401 - registers torchvision's operators
from torch import nn

import inspector
from inspector.op_classes import FAMILIES, MATMUL_OPS, matmul_like
from inspector.op_formulas import OP_FORMULAS

#: Ops a net catches that do no matmul-like work, each with the reason (reviewed by hand).
REVIEWED_NOT_MATMUL = {
    **dict.fromkeys(["aten.cummax", "aten.cummin", "aten._cummax_helper", "aten._cummin_helper",
                     "aten.cummaxmin_backward"], "running max/min: comparisons"),
    **dict.fromkeys(["aten.lgamma", "aten.digamma", "aten.polygamma", "aten.mvlgamma", "aten.igamma", "aten.igammac",
                     "aten._foreach_lgamma", "aten._foreach_lgamma_", "aten._standard_gamma",
                     "aten._standard_gamma_grad", "aten.special_digamma", "aten.special_gammainc",
                     "aten.special_gammaincc", "aten.special_gammaln", "aten.special_multigammaln",
                     "aten.special_polygamma"], "gamma functions: elementwise ('mm' in 'gamma')"),
    "aten.hamming_window": "a window of constants ('mm' in 'hamming')",
    **dict.fromkeys(["aten._convert_indices_from_coo_to_csr", "aten._convert_indices_from_csr_to_coo",
                     "aten._nested_get_jagged_dummy"], "index bookkeeping"),
    **dict.fromkeys(["aten.mkldnn_reorder_conv2d_weight", "aten.mkldnn_reorder_conv3d_weight",
                     "aten._cudnn_rnn_flatten_weight", "aten._use_cudnn_rnn_flatten_weight",
                     "aten._convert_weight_to_int4pack", "aten._convert_weight_to_int4pack_for_cpu",
                     "aten.fbgemm_linear_quantize_weight", "aten.fbgemm_pack_gemm_matrix_fp16",
                     "aten.fbgemm_pack_quantized_matrix", "aten._wrapped_linear_prepack",
                     "_quantized._wrapped_linear_prepack", "_quantized.conv2d_prepack", "_quantized.conv3d_prepack",
                     "_quantized.conv_transpose1d_prepack", "_quantized.conv_transpose2d_prepack",
                     "_quantized.conv_transpose3d_prepack", "onednn.qconv_prepack", "quantized.conv1d_prepack",
                     "quantized.conv2d_prepack", "quantized.conv3d_prepack", "quantized.conv_prepack",
                     "quantized.conv_transpose1d_prepack", "quantized.conv_transpose2d_prepack",
                     "quantized.conv_transpose3d_prepack", "quantized.make_quantized_cell_params",
                     "quantized.make_quantized_cell_params_dynamic", "quantized.make_quantized_cell_params_fp16"],
                    "weight repacking: a layout change, no products"),
    **dict.fromkeys(["_quantized.linear_prepack", "_quantized.linear_prepack_fp16", "_quantized.linear_prepack_legacy",
                     "_quantized.linear_prepack_fp16_legacy", "_quantized.wrapped_fbgemm_pack_gemm_matrix_fp16",
                     "mkl._mkl_reorder_linear_weight", "mkldnn._reorder_convolution_transpose_weight",
                     "mkldnn._reorder_convolution_weight", "mkldnn._reorder_linear_weight",
                     "mkldnn._reorder_mkldnn_rnn_layer_weight", "mkldnn_prepacked.conv2d_prepack",
                     "onednn.linear_prepack_fp16", "onednn.qlinear_prepack", "sparse.qlinear_prepack",
                     "sparse.qlinear_unpack", "quantized.linear_prepack", "quantized.linear_prepack_fp16",
                     "quantized.linear_prepack_legacy", "quantized.linear_prepack_fp16_legacy",
                     "quantized.linear_unpack", "quantized.linear_unpack_fp16", "quantized.conv_unpack",
                     "quantized.conv1d_unpack", "quantized.conv2d_unpack", "quantized.conv3d_unpack",
                     "quantized.conv2d_unpack_sizes", "quantized.conv_transpose1d_unpack",
                     "quantized.conv_transpose2d_unpack", "quantized.conv_transpose3d_unpack"],
                    "weight packing or unpacking: a layout change, no products"),
    **{f"quantized.{kind}_{field}": "reads a field of a packed convolution's configuration"
       for kind in ("conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d")
       for field in ("stride", "padding", "dilation", "groups", "output_padding", "transpose")},
    **dict.fromkeys(["prims.digamma", "prims.igamma", "prims.igammac", "prims.lgamma"], "gamma functions"),
    "prims.convert_element_type": "a dtype conversion ('conv' in 'convert')",
    **dict.fromkeys(["aten.resolve_conj", "aten.resolve_neg"], "materialises a conjugate/negative view ('solve')"),
    "aten.is_distributed": "a flag ('dist')",
    **dict.fromkeys(["aten.dist", "aten.pairwise_distance"], "the norm of one elementwise difference, not pairs of "
                                                             "vectors: elementwise work and a reduction"),
    "aten._cslt_sparse_mm_search": "searches for a kernel configuration (returns an int)",
    "aten._fused_sdp_choice": "returns which attention kernel to use (an int)",
    "prim.mkldnn_convolution": "TorchScript's prim namespace: never reaches the dispatcher",
    **dict.fromkeys(["aten.upsample_bilinear2d", "aten.upsample_bilinear2d_backward", "aten.upsample_linear1d",
                     "aten.upsample_linear1d_backward", "aten.upsample_trilinear3d",
                     "aten.upsample_trilinear3d_backward", "aten._upsample_bilinear2d_aa",
                     "aten._upsample_bilinear2d_aa_backward"], "interpolation: fixed weights, 0 by convention"),
}


#: torch's and torchvision's own operator namespaces (custom operators elsewhere are reported whatever
#: their name: nothing says what they compute)
TORCH_NAMESPACES = {"aten", "prims", "prim", "quantized", "_quantized", "onednn", "mkldnn", "mkldnn_prepacked", "mkl",
                    "sparse", "symm_mem", "_native", "inductor", "onnx", "torchvision"}


def _schema_nets() -> dict[str, set[str]]:
    """Ops by what their schema says they take (the names of their arguments), namespace.op."""
    nets: dict[str, set[str]] = {"convolution": set(), "attention": set(), "matrix products": set(),
                                 "recurrent": set()}
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.split("::")[0] not in TORCH_NAMESPACES:
            continue
        args = {a.name for a in schema.arguments}
        name = schema.name.replace("::", ".")
        if "weight" in args and ({"stride", "padding"} <= args or {"stride", "dilation"} <= args):
            nets["convolution"].add(name)
        if {"query", "key", "value"} <= args:
            nets["attention"].add(name)
        if args & {"mat1", "mat2", "batch1", "batch2", "vec", "vec1", "vec2", "mat"}:
            nets["matrix products"].add(name)
        if "hx" in args or "w_ih" in args:
            nets["recurrent"].add(name)
    return nets


NETS = _schema_nets()
ALL_OPS = sorted({n.split(".")[0].replace("::", ".") for n in torch._C._dispatch_get_all_op_names()
                  if n.split("::")[0] in TORCH_NAMESPACES})
_LOOKS = re.compile(r"conv|mm|matmul|linear|attention|rnn|lstm|gru|einsum|bilinear|\bdot\b|addmv|addr\b|outer|"
                    r"tensordot|gemm|gemv|dist|solve", re.IGNORECASE)


@pytest.mark.parametrize("op", sorted(NETS["convolution"] - REVIEWED_NOT_MATMUL.keys()))
def test_every_convolution_by_schema_is_matmul_like(op):
    assert matmul_like(op), f"{op} takes a weight with stride/padding: a convolution, not classified matmul-like"


@pytest.mark.parametrize("op", sorted((NETS["attention"] | NETS["matrix products"] | NETS["recurrent"])
                                      - REVIEWED_NOT_MATMUL.keys()))
def test_every_product_attention_and_recurrent_op_by_schema_is_matmul_like(op):
    assert matmul_like(op), f"{op}: its schema says matrix product / attention / recurrent cell"


def test_the_schema_nets_find_the_families():
    """The nets are not empty by accident (a torch that renamed its arguments): each finds its family's
    core ops."""
    assert {"aten.convolution", "aten.conv2d", "aten.convolution_backward", "aten.mkldnn_convolution"} <= NETS["convolution"]
    assert {"aten._scaled_dot_product_flash_attention_for_cpu", "aten._native_multi_head_attention"} <= NETS["attention"]
    assert {"aten.mm", "aten.bmm", "aten.addmm", "aten._grouped_mm"} <= NETS["matrix products"]
    assert {"aten.lstm", "aten.gru_cell"} <= NETS["recurrent"]


@pytest.mark.parametrize("op", [op for op in ALL_OPS if _LOOKS.search(op.split(".", 1)[1])])
def test_every_matmul_looking_name_is_reviewed(op):
    """A new torch op whose name looks matmul-like must be classified by a person: listed as
    matmul-like, or reviewed as a look-alike (an in-place variant ``op_`` goes with ``op``)."""
    assert matmul_like(op) or op in REVIEWED_NOT_MATMUL or op.removesuffix("_") in REVIEWED_NOT_MATMUL, f"{op}: classify it in op_classes.py or review it here"


@pytest.mark.parametrize("op", sorted(MATMUL_OPS))
def test_every_listed_op_exists(op):
    """No typo in the list: every name is an operator this torch (or torchvision) registers."""
    namespace, name = op.split(".", 1)
    if namespace in ("onednn", "mkldnn", "mkldnn_prepacked", "mkl", "inductor", "sparse", "_quantized") \
            and f"{namespace}.{name}" not in ALL_OPS:
        pytest.skip(f"{namespace} ops are built into some torch builds only")
    assert op in ALL_OPS


@pytest.mark.parametrize("op", sorted(REVIEWED_NOT_MATMUL))
def test_reviewed_look_alikes_are_not_matmul_like(op):
    assert not matmul_like(op)


def test_families_cover_the_list():
    in_families = {f"aten.{op}" for ops in FAMILIES.values() for op in ops}
    assert in_families <= MATMUL_OPS and len(in_families) > 180


# --- both ways through inspect ------------------------------------------------------------------------

class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


NOT_MATMUL_RUNS = {
    "cummax": (lambda x: torch.cummax(x, 1).values, (torch.randn(3, 5),)),
    "cummin": (lambda x: torch.cummin(x, 1).values, (torch.randn(3, 5),)),
    "lgamma": (torch.lgamma, (torch.rand(3, 5) + 1,)),
    "digamma": (torch.digamma, (torch.rand(3, 5) + 1,)),
    "polygamma": (lambda x: torch.polygamma(1, x), (torch.rand(3, 5) + 1,)),
    "mvlgamma": (lambda x: torch.mvlgamma(x, 2), (torch.rand(3, 5) + 2,)),
    "igamma": (lambda x: torch.igamma(x, x), (torch.rand(3, 5) + 1,)),
    "hamming_window": (lambda x: x * torch.hamming_window(5), (torch.randn(3, 5),)),
    "cumsum": (lambda x: x.cumsum(1), (torch.randn(3, 5),)),
    "fft": (lambda x: torch.fft.rfft(x).abs(), (torch.randn(3, 8),)),
}


@pytest.mark.parametrize("name", sorted(NOT_MATMUL_RUNS))
def test_look_alikes_count_zero_and_complete(name):
    fn, args = NOT_MATMUL_RUNS[name]
    report = inspector.inspect(Fn(fn), args)
    assert report.total_macs == 0 and report.complete and report.crosscheck() == [], report.crosscheck()


MATMUL_RUNS = {  # op -> (function, inputs, MACs by hand)
    "aten.mm": (torch.mm, (torch.randn(3, 4), torch.randn(4, 5)), 3 * 4 * 5),
    "aten.bmm": (torch.bmm, (torch.randn(2, 3, 4), torch.randn(2, 4, 5)), 2 * 3 * 4 * 5),
    "aten.convolution": (lambda x, w: nn.functional.conv2d(x, w), (torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)),
                         3 * 3 * 3 * 2 * 3 * 3),  # 3 out channels * 3x3 outputs * 2 in channels * 3x3 kernel
    "aten._euclidean_dist": (torch.cdist, (torch.randn(32, 10), torch.randn(64, 10)), 32 * 64 * 10),
    "aten._cdist_forward": (lambda a, b: torch.cdist(a, b, p=1), (torch.randn(4, 10), torch.randn(6, 10)), 4 * 6 * 10),
    "aten._pdist_forward": (torch.pdist, (torch.randn(7, 10),), 7 * 6 // 2 * 10),
    # a 5x5 triangle has 15 entries, one MAC each for each of 3 right-hand sides, in a batch of 2
    "aten.linalg_solve_triangular": (lambda a, b: torch.linalg.solve_triangular(a, b, upper=False),
                                     (torch.randn(2, 5, 5).tril() + 5 * torch.eye(5), torch.randn(2, 5, 3)),
                                     2 * 3 * 15),
    "aten.triangular_solve": (lambda b, a: torch.triangular_solve(b, a, upper=False).solution,
                              (torch.randn(5, 3), torch.randn(5, 5).tril() + 5 * torch.eye(5)), 3 * 15),
}


@pytest.mark.parametrize("op", sorted(MATMUL_RUNS))
def test_matmul_like_ops_are_counted(op):
    fn, args, macs = MATMUL_RUNS[op]
    report = inspector.inspect(Fn(fn), args)
    assert matmul_like(op)
    assert dict((s.op, s.macs) for s in report.layers[0].ops)[op] == macs
    assert report.total_macs == macs and report.complete


@pytest.mark.parametrize("op", sorted(MATMUL_RUNS))
def test_matmul_like_op_without_its_formula_is_reported(op):
    """Take the op's formula away: the op is matmul-like, so the count says it is incomplete instead
    of a quiet 0 (turns red if the op is dropped from the classification)."""
    fn, args, _ = MATMUL_RUNS[op]
    packet = getattr(getattr(torch.ops, op.split(".")[0]), op.split(".")[1])
    formula = OP_FORMULAS.remove(packet)
    try:
        report = inspector.inspect(Fn(fn), args)
    finally:
        OP_FORMULAS.register(packet)(formula)
    assert not report.complete and op in report.uncounted_ops
    assert "matmul-like op with no formula" in str(report.crosscheck())


def test_linear_algebra_is_reported_not_silently_zero():
    report = inspector.inspect(Fn(torch.linalg.solve), (torch.randn(4, 4) + 4 * torch.eye(4), torch.randn(4, 2)))
    assert not report.complete and any(op.startswith("aten._linalg_solve") or op.startswith("aten.linalg_solve")
                                       for op in report.uncounted_ops), report.uncounted_ops


def test_in_place_products_are_counted():
    def fn(c, a, b):
        c = c.clone()
        c.addmm_(a, b)
        return c.expand(2, 3, 5).clone().baddbmm_(a.expand(2, 3, 4), b.expand(2, 4, 5))
    report = inspector.inspect(Fn(fn), (torch.randn(3, 5), torch.randn(3, 4), torch.randn(4, 5)))
    assert report.total_macs == 3 * 4 * 5 + 2 * 3 * 4 * 5 and report.complete  # addmm_ + baddbmm_


def test_conv_tbc():
    x, w, b = torch.randn(10, 2, 3), torch.randn(4, 3, 5), torch.randn(5)
    report = inspector.inspect(Fn(lambda x, w, b: torch.conv_tbc(x, w, b, 1)), (x, w, b))
    assert report.total_macs == 9 * 2 * 5 * 4 * 3 and report.complete  # (10 + 2 - 4 + 1) steps * B 2 * C_out 5 * K 4 * C_in 3
