"""FLOP conventions: what ``flops`` counts besides 2 x MACs.

``"matmul"`` (the default, torchvision's): FLOPs = 2 x MACs of matmul-like work, nothing else.
``"all"``: also elementwise work, normalisation, softmax, activations, pooling, reductions and
bias additions, at the per-op costs below (one elementary arithmetic or transcendental operation
= 1 FLOP). MACs are the same under every convention.

| work | FLOPs |
|---|---|
| elementwise op PyTorch tags ``pointwise`` (add, mul, relu, exp, ...) | 1 per output element |
| sigmoid / hardsigmoid / softplus / elu | 3 per element |
| silu / hardswish | 4 per element |
| gelu / mish | 5 per element |
| addcmul / addcdiv / leaky_relu | 2 per element; lerp 3 |
| bias of addmm / baddbmm / addmv / convolution | 1 per output element |
| batch norm (eval) | 2 per element (subtract mean, times 1/std) + 2 with affine |
| batch norm (training) | the above + 4 per element (mean: 1; variance: 3) |
| layer norm / group norm | 6 per element + 2 with affine |
| softmax / log_softmax | 5 per element (max, subtract, exp, sum, divide) |
| attention (fused kernels) | 6 per score (scale + softmax) |
| max pool | kernel volume - 1 per output element |
| avg pool | kernel volume per output element (adds + divide) |
| adaptive pools, reductions (sum, mean, amax, ...) | 1 per input element (+1 per output for a mean) |
| bilinear / linear / trilinear interpolation | 9 / 3 / 21 per output element (3 FLOPs a lerp) |
| dropout (training) | 2 per element |
| views, copies, embedding lookups, nearest interpolation | 0 |
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from inspector.registry import Registry

FlopFn = Callable[..., int]


@dataclass(frozen=True)
class Convention:
    """A named way of counting FLOPs: ``flops = 2 * macs + extra`` where ``extra(func)`` gives the
    elementwise cost function of an op (or None: 0)."""

    name: str
    description: str
    extra: Callable[[Any], FlopFn | None] | None = None


CONVENTIONS: Registry[str, Convention] = Registry("FLOP convention")


def convention(name: str) -> Convention:
    found = CONVENTIONS.get(name)
    if found is None:
        from inspector.errors import InputError

        raise InputError(f"flops must be one of {', '.join(CONVENTIONS)}, got {name!r}")
    return found


CONVENTIONS.register("matmul")(Convention("matmul", "2 x MACs of matmul-like work (torchvision's _ops x 2)"))

# --- "all": elementwise costs ----------------------------------------------------------------------

ELEMENTWISE: dict[str, FlopFn] = {}


def _numel(shape: Any) -> int:
    if isinstance(shape, (tuple, list)) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]  # several outputs: the first is the result
    return math.prod(shape) if shape is not None else 0


def _cost(*names: str) -> Callable[[FlopFn], FlopFn]:
    def bind(fn: FlopFn) -> FlopFn:
        for name in names:
            ELEMENTWISE[name] = fn
        return fn
    return bind


def _per_element(cost: int, *names: str) -> None:
    _cost(*names)(lambda *_, out_shape=None, **__: cost * _numel(out_shape))


_per_element(3, "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "softplus", "elu", "elu_")
_per_element(4, "silu", "silu_", "hardswish", "hardswish_")
_per_element(5, "gelu", "gelu_", "mish", "mish_")
_per_element(2, "addcmul", "addcmul_", "addcdiv", "addcdiv_", "leaky_relu", "leaky_relu_", "native_dropout")
_per_element(3, "lerp", "lerp_")
_per_element(5, "_softmax", "_log_softmax")
_per_element(9, "upsample_bilinear2d", "_upsample_bilinear2d_aa")
_per_element(3, "upsample_linear1d")
_per_element(21, "upsample_trilinear3d")
for _zero in ("embedding", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
              "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d"):
    _per_element(0, _zero)


@_cost("addmm", "addmv", "baddbmm", "addbmm")
def _bias_add(*_: Any, out_shape: Any = None, **__: Any) -> int:
    return _numel(out_shape)


@_cost("convolution", "_convolution", "mkldnn_convolution", "cudnn_convolution")
def _conv_bias(x: Any, w: Any, bias: Any = None, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return _numel(out_shape) if bias is not None else 0


@_cost("native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm", "_native_batch_norm_legit")
def _batch_norm(x: Any, weight: Any = None, bias: Any = None, *rest: Any, out_shape: Any = None, **__: Any) -> int:
    training = next((r for r in rest if isinstance(r, bool)), False)
    return _numel(x) * (2 + 2 * (weight is not None) + 4 * bool(training))


@_cost("_batch_norm_with_update")
def _batch_norm_update(x: Any, weight: Any = None, *_: Any, **__: Any) -> int:
    return _numel(x) * (6 + 2 * (weight is not None))


@_cost("_native_batch_norm_legit_no_training")
def _batch_norm_eval(x: Any, weight: Any = None, *_: Any, **__: Any) -> int:
    return _numel(x) * (2 + 2 * (weight is not None))


@_cost("native_layer_norm")
def _layer_norm(x: Any, shape: Any, weight: Any = None, *_: Any, **__: Any) -> int:
    return _numel(x) * (6 + 2 * (weight is not None))


@_cost("native_group_norm")
def _group_norm(x: Any, weight: Any = None, *_: Any, **__: Any) -> int:
    return _numel(x) * (6 + 2 * (weight is not None))


@_cost("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool(x: Any, kernel: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return (math.prod(kernel) - 1) * _numel(out_shape)


@_cost("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(x: Any, kernel: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return math.prod(kernel) * _numel(out_shape)


@_cost("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool3d", "mean")
def _input_plus_output(x: Any, *_: Any, out_shape: Any = None, **__: Any) -> int:
    return _numel(x) + _numel(out_shape)


@_cost("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
       "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
def _attention_softmax(q: Any, k: Any, *_: Any, **__: Any) -> int:
    return 6 * math.prod(q[:-1]) * k[-2]


def _reduction(x: Any, *_: Any, **__: Any) -> int:
    return _numel(x)


def _pointwise(*_: Any, out_shape: Any = None, **__: Any) -> int:
    return _numel(out_shape)


def elementwise_cost(func: Any) -> FlopFn | None:
    """The "all" convention's cost function for an aten op, or None when it costs nothing."""
    name = func._schema.name.split("::")[-1]
    found = ELEMENTWISE.get(name)
    if found is not None:
        return found
    tags = getattr(func, "tags", ())
    if torch.Tag.pointwise in tags:
        return _pointwise
    if torch.Tag.reduction in tags:
        return _reduction
    return None


CONVENTIONS.register("all")(Convention("all", "2 x MACs + elementwise, normalisation, softmax, activations, "
                                              "pooling and bias additions (see inspector.conventions)",
                                       elementwise_cost))
