"""Fast meta kernels: output tensors for ops on the meta device, made from their inputs' shapes.

On the meta device many ops run Python reference implementations (``torch._refs``, decompositions)
to find their output's shape, dtype and strides: 0.3-1.3 ms an op for batch norm, layer norm,
hardswish or addmm, against 1.5 us for ``torch.empty_strided``. The counter already sees every op;
for the ops below it makes the output itself. Each kernel handles the cases whose result it knows
for certain (dense inputs, simple broadcasting) and returns ``NotImplemented`` otherwise, so that
the real meta kernel runs. ``CHECK`` (the tests turn it on for every torchvision model) runs both
and raises on any difference in shape, strides or dtype.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from inspector import op_formulas

MetaFn = Callable[..., Any]  # fn(op overload, *args, **kwargs) -> output(s) or NotImplemented
FAST: dict[Any, MetaFn] = {}
#: When set, every fast result is compared with the real meta kernel's (tests, debugging).
CHECK = False

_HALF = (torch.float16, torch.bfloat16)


#: Kernels with no real meta twin to compare with (the real meta kernel refuses what the CPU computes).
NO_TWIN: set[MetaFn] = set()


def fast(*names: str, twin: bool = True) -> Callable[[MetaFn], MetaFn]:
    """Register a fast meta kernel for op overloads (``"aten.relu.default"``) or whole packets;
    ``twin=False`` where the real meta kernel refuses the case (``CHECK`` then has nothing to compare)."""
    def bind(fn: MetaFn) -> MetaFn:
        if not twin:
            NO_TWIN.add(fn)
        for name in names:
            try:
                FAST[op_formulas.resolve_op(name)] = fn
            except Exception:  # noqa: BLE001 - an op this torch does not have
                continue
        return fn
    return bind


def lookup(func: Any) -> MetaFn | None:
    return op_formulas.lookup(FAST, func)


def _empty(shape: Any, stride: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


def _channels_last_strides(shape: Any) -> tuple[int, ...]:
    """(N, C, *spatial) laid out channels-last: C fastest, then the spatial dims, N slowest."""
    n, c, *spatial = shape
    strides = [0] * len(shape)
    acc = 1
    for i in [1, *range(len(shape) - 1, 1, -1), 0]:
        strides[i] = acc
        acc *= max(shape[i], 1)
    return tuple(strides)


def _dense(t: torch.Tensor) -> bool:
    """Strides exactly those of a contiguous or channels-last tensor of its shape, size-1 dimensions
    included. Elementwise kernels keep such a layout; any other (a slice, a permutation, odd strides
    on size-1 dimensions) is left to the real kernel."""
    strides = t.stride()
    if strides == _contiguous_strides(t.shape):
        return True
    return t.dim() in (4, 5) and strides == _channels_last_strides(t.shape)


def _contiguous_strides(shape: Any) -> tuple[int, ...]:
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(size, 1)
    return tuple(reversed(strides))


# --- elementwise ---------------------------------------------------------------------------------------

def _like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """A new tensor with a dense ``x``'s shape and strides (elementwise kernels keep them)."""
    return _empty(x.shape, x.stride(), dtype) if _dense(x) else None


@fast("aten.relu.default", "aten.gelu.default", "aten.hardswish.default", "aten.hardsigmoid.default",
      "aten.sigmoid.default", "aten.silu.default", "aten.tanh.default", "aten.exp.default", "aten.neg.default",
      "aten.sqrt.default", "aten.rsqrt.default", "aten.clamp_min.default", "aten.clamp.default",
      "aten.hardtanh.default", "aten.elu.default", "aten.leaky_relu.default", "aten.mish.default",
      "aten.softplus.default", "aten.abs.default", "aten.erf.default", "aten.log.default", "aten.reciprocal.default",
      "aten.square.default", "aten.pow.Tensor_Scalar")
def unary(func: Any, x: Any, *rest: Any, **kwargs: Any) -> Any:
    """Same shape, strides and dtype as a dense floating input."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or kwargs.get("dtype") is not None:
        return NotImplemented
    if any(isinstance(r, torch.Tensor) for r in rest):
        return NotImplemented  # tensor bounds: broadcasting rules apply
    out = _like(x, x.dtype)
    return NotImplemented if out is None else out


@fast("aten._softmax.default", "aten._log_softmax.default", "aten.masked_fill.Scalar")
def dense_unary(func: Any, x: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: D401
    """Softmax in its own dtype and masked_fill keep a dense input's strides."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not _dense(x):
        return NotImplemented
    if len(rest) >= 2 and rest[1] is True and x.dtype in _HALF:
        return NotImplemented  # softmax's half_to_float
    if len(rest) >= 1 and isinstance(rest[0], torch.Tensor) and torch.broadcast_shapes(x.shape, rest[0].shape) != x.shape:
        return NotImplemented  # a mask wider than the input
    return _empty(x.shape, x.stride(), x.dtype)


@fast("aten.relu_.default", "aten.hardswish_.default", "aten.hardsigmoid_.default", "aten.hardtanh_.default",
      "aten.silu_.default", "aten.sigmoid_.default", "aten.clamp_.default", "aten.clamp_min_.default",
      "aten.gelu_.default", "aten.elu_.default", "aten.leaky_relu_.default", "aten.tanh_.default",
      "aten.mish_.default", "aten.neg_.default", "aten.exp_.default")
def unary_inplace(func: Any, x: Any, *rest: Any, **kwargs: Any) -> Any:
    """An in-place op returns its input."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or any(isinstance(r, torch.Tensor) for r in rest):
        return NotImplemented
    return x


_COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}


@fast("aten.add.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.div.Tensor", "aten.add.Scalar",
      "aten.sub.Scalar", "aten.mul.Scalar", "aten.div.Scalar", "aten.eq.Scalar", "aten.ne.Scalar", "aten.lt.Scalar",
      "aten.le.Scalar", "aten.gt.Scalar", "aten.ge.Scalar", "aten.eq.Tensor", "aten.ne.Tensor")
def binary(func: Any, a: Any, b: Any, *rest: Any, **kwargs: Any) -> Any:
    """Broadcast shape and promoted dtype (bool for comparisons); strides where they are certain:
    a scalar or a 0-dim tensor, two operands of one shape and layout, or a contiguous operand
    broadcast into a dense one (a bias, a squeeze-excitation scale). Otherwise the real kernel."""
    if not isinstance(a, torch.Tensor) or (isinstance(b, torch.Tensor) and b.device.type != "meta" and b.dim() > 0):
        return NotImplemented
    name = _name(func)
    dtype = torch.bool if name in _COMPARISONS else torch.result_type(a, b)
    if name == "div" and not dtype.is_floating_point and not dtype.is_complex:
        return NotImplemented  # true division of integers: the default float dtype
    if not isinstance(b, torch.Tensor) or b.dim() == 0:
        out = _like(a, dtype)
        return NotImplemented if out is None else out
    if b.dim() != a.dim():
        return NotImplemented
    if b.shape == a.shape:
        return _empty(a.shape, a.stride(), dtype) if b.stride() == a.stride() and _dense(a) else NotImplemented
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return NotImplemented
    for full, other in ((a, b), (b, a)):
        if shape == full.shape and other.is_contiguous() and _dense(full):
            return _empty(full.shape, full.stride(), dtype)
    return NotImplemented


@fast("aten.add_.Tensor", "aten.sub_.Tensor", "aten.mul_.Tensor", "aten.div_.Tensor", "aten.add_.Scalar",
      "aten.mul_.Scalar", "aten.div_.Scalar", "aten.sub_.Scalar")
def binary_inplace(func: Any, a: Any, b: Any, *rest: Any, **kwargs: Any) -> Any:
    if not isinstance(a, torch.Tensor) or not a.is_floating_point():
        return NotImplemented
    if isinstance(b, torch.Tensor):
        if b.dim() > a.dim() or (b.is_floating_point() and b.dtype != a.dtype and b.dim() > 0):
            return NotImplemented
        try:
            if torch.broadcast_shapes(a.shape, b.shape) != a.shape:
                return NotImplemented
        except RuntimeError:
            return NotImplemented
    return a


def _name(func: Any) -> str:
    return func._schema.name.split("::")[-1]


# --- normalisation and reductions --------------------------------------------------------------------

def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


@fast("aten.native_batch_norm.default")
def batch_norm(func: Any, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool, momentum: float,
               eps: float, **_: Any) -> Any:
    """The output like a dense input; mean and inverse std per channel, in the op-math dtype."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point() or not _dense(x):
        return NotImplemented
    channels = x.shape[1]
    stat = _opmath(x.dtype)
    return (_empty(x.shape, x.stride(), x.dtype), _empty((channels,), (1,), stat), _empty((channels,), (1,), stat))


@fast("aten.native_layer_norm.default")
def layer_norm(func: Any, x: Any, normalized_shape: Any, weight: Any, bias: Any, eps: float, **_: Any) -> Any:
    """A contiguous output; mean and 1/std over the normalised dims, kept as size 1, op-math dtype."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return NotImplemented
    axis = x.dim() - len(normalized_shape)
    if axis < 0 or tuple(x.shape[axis:]) != tuple(normalized_shape):
        return NotImplemented
    stat_shape = (*x.shape[:axis], *([1] * len(normalized_shape)))
    stat = _opmath(x.dtype)
    return (_empty(x.shape, _contiguous_strides(x.shape), x.dtype),
            _empty(stat_shape, _contiguous_strides(stat_shape), stat),
            _empty(stat_shape, _contiguous_strides(stat_shape), stat))


@fast("aten.mean.dim")
def mean_dim(func: Any, x: Any, dims: Any = None, keepdim: bool = False, dtype: Any = None, **_: Any) -> Any:
    if not isinstance(x, torch.Tensor) or dtype is not None or not x.is_floating_point() or not dims:
        return NotImplemented
    rank = x.dim()
    reduced = {d % rank for d in dims}
    shape = [1 if i in reduced else s for i, s in enumerate(x.shape)] if keepdim else \
        [s for i, s in enumerate(x.shape) if i not in reduced]
    return _empty(shape, _contiguous_strides(shape), x.dtype)


# --- matrix products and shape ops --------------------------------------------------------------------

@fast("aten.addmm.default")
def addmm(func: Any, bias: Any, a: Any, b: Any, *rest: Any, **_: Any) -> Any:
    if not all(isinstance(t, torch.Tensor) for t in (bias, a, b)) or a.dim() != 2 or b.dim() != 2:
        return NotImplemented
    if a.shape[1] != b.shape[0] or len({bias.dtype, a.dtype, b.dtype}) != 1:
        return NotImplemented
    try:
        if torch.broadcast_shapes(bias.shape, (a.shape[0], b.shape[1])) != (a.shape[0], b.shape[1]):
            return NotImplemented
    except RuntimeError:
        return NotImplemented
    return _empty((a.shape[0], b.shape[1]), (b.shape[1], 1), a.dtype)


@fast("aten._grouped_mm.default", twin=False)
def grouped_mm(func: Any, a: Any, b: Any, offs: Any = None, bias: Any = None, out_dtype: Any = None, **_: Any) -> Any:
    """Mixture-of-experts matmuls in float32/float64. The real meta kernel insists on bfloat16 (the
    CUDA kernel's rule) although the CPU computes float32, and on meta nothing is computed: the
    output's shape and dtype are the CPU kernel's (contiguous). Half types go to the real kernel."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or bias is not None \
            or a.dtype not in (torch.float32, torch.float64) or b.dtype != a.dtype or out_dtype not in (None, a.dtype):
        return NotImplemented
    groups = offs.shape[0] if isinstance(offs, torch.Tensor) else None
    if a.dim() == 2 and b.dim() == 3 and groups == b.shape[0] and a.shape[1] == b.shape[1]:
        shape = (a.shape[0], b.shape[2])  # offsets split a's rows among the experts
    elif a.dim() == 3 and b.dim() == 3 and offs is None and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1]:
        shape = (a.shape[0], a.shape[1], b.shape[2])
    elif a.dim() == 2 and b.dim() == 2 and groups is not None and a.shape[1] == b.shape[0]:
        shape = (groups, a.shape[0], b.shape[1])  # offsets split k
    elif a.dim() == 3 and b.dim() == 2 and groups == a.shape[0] and a.shape[2] == b.shape[0]:
        shape = (a.shape[1], b.shape[1])  # offsets split b's columns
    else:
        return NotImplemented  # the real kernel says what is wrong
    return _empty(shape, _contiguous_strides(shape), a.dtype)


@fast("aten.cat.default")
def cat(func: Any, tensors: Any, dim: int = 0, **_: Any) -> Any:
    """Contiguous, same-dtype, same-rank inputs: a contiguous output."""
    if not tensors or not all(isinstance(t, torch.Tensor) and t.is_contiguous() and t.numel() for t in tensors):
        return NotImplemented
    first = tensors[0]
    rank = first.dim()
    if rank == 0 or any(t.dim() != rank or t.dtype != first.dtype for t in tensors):
        return NotImplemented
    dim %= rank
    if any(t.shape[:dim] != first.shape[:dim] or t.shape[dim + 1:] != first.shape[dim + 1:] for t in tensors):
        return NotImplemented
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return _empty(shape, _contiguous_strides(shape), first.dtype)


@fast("aten.convolution.default")
def convolution(func: Any, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
                transposed: bool, output_padding: Any, groups: int, **_: Any) -> Any:
    """Contiguous batched input and weight: a contiguous output of the convolution's size."""
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.dim() != weight.dim() \
            or not x.is_contiguous() or not weight.is_contiguous() or x.dtype != weight.dtype:
        return NotImplemented
    kernel = weight.shape[2:]
    if not (len(kernel) == len(stride) == len(padding) == len(dilation)):
        return NotImplemented
    in_channels = weight.shape[0] if transposed else weight.shape[1] * groups
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    if x.shape[1] != in_channels or (bias is not None and tuple(bias.shape) != (out_channels,)):
        return NotImplemented  # a mismatch: the real kernel says what is wrong
    if transposed:
        spatial = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op
                   in zip(x.shape[2:], kernel, stride, padding, dilation, output_padding)]
    else:
        spatial = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                   zip(x.shape[2:], kernel, stride, padding, dilation)]
    if any(n <= 0 for n in spatial):
        return NotImplemented  # let the real kernel say what is wrong
    shape = (x.shape[0], out_channels, *spatial)
    return _empty(shape, _contiguous_strides(shape), x.dtype)


@fast("aten.clone.default")
def clone(func: Any, x: Any, memory_format: Any = None, **_: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return NotImplemented
    if memory_format in (None, torch.preserve_format) and _dense(x):
        return _empty(x.shape, x.stride(), x.dtype)
    if memory_format is torch.contiguous_format:
        return _empty(x.shape, _contiguous_strides(x.shape), x.dtype)
    return NotImplemented


def run(fn: MetaFn, func: Any, args: tuple, kwargs: dict | None) -> Any:
    """The fast result, or NotImplemented; with ``CHECK``, compared with the real kernel's. Only for
    ops on meta tensors: a meta run still meets real ones (an optimizer's step counter on the CPU)."""
    first = args[0] if args else None
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if not isinstance(first, torch.Tensor) or first.device.type != "meta":
        return NotImplemented
    out = fn(func, *args, **kwargs) if kwargs else fn(func, *args)
    if CHECK and out is not NotImplemented and fn not in NO_TWIN:
        _compare(func, out, func(*args, **(kwargs or {})))
    return out


def _compare(func: Any, fast_out: Any, real: Any) -> None:
    fast_list = fast_out if isinstance(fast_out, (tuple, list)) else (fast_out,)
    real_list = real if isinstance(real, (tuple, list)) else (real,)
    if len(fast_list) != len(real_list):
        raise AssertionError(f"fast meta kernel of {func}: {len(fast_list)} outputs, the real one {len(real_list)}")
    for i, (f, r) in enumerate(zip(fast_list, real_list)):
        if (tuple(f.shape), f.stride(), f.dtype) != (tuple(r.shape), r.stride(), r.dtype):
            raise AssertionError(f"fast meta kernel of {func}, output {i}: {tuple(f.shape)} {f.stride()} {f.dtype} "
                                 f"!= real {tuple(r.shape)} {r.stride()} {r.dtype}")


# --- recurrent layers: the fused op instead of its per-step decomposition ------------------------------

class FusedRNN(TorchFunctionMode):
    """Active during an RNN module's call on the meta device (without autograd): ``torch._VF``'s
    fused lstm/gru/rnn functions, which on meta decompose into one small op per time step, are
    answered with their outputs' shapes and counted as one fused op with the registry's formula."""

    def __init__(self, charge: Callable[[Any, tuple, tuple], None]) -> None:
        super().__init__()
        self.charge = charge  # charge(op overload, args, outputs): count it on the current call

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _RNN_GATES and not kwargs:
            out = _rnn_outputs(name, args)
            if out is not None:
                if CHECK:  # the real decomposition, neither counted nor intercepted
                    from torch.utils._python_dispatch import _disable_current_modes

                    with torch._C.DisableTorchFunction(), _disable_current_modes():
                        _compare(func, out, func(*args))
                packet = getattr(torch.ops.aten, name)
                self.charge(getattr(packet, "input", None) or packet.default, args, out)
                return out
        return func(*args, **(kwargs or {}))


_RNN_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _rnn_outputs(name: str, args: tuple) -> tuple[torch.Tensor, ...] | None:
    """(output, h_n[, c_n]) as the real meta kernels make them, for the padded and packed forms."""
    packed = len(args) > 1 and isinstance(args[1], torch.Tensor) and args[1].dim() == 1 and \
        not args[1].is_floating_point()
    if packed:  # (data, batch_sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional)
        data, batch_sizes, hx, params, _, num_layers, _, _, bidirectional = args[:9]
        batch_first = False
    else:  # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        data, hx, params, _, num_layers, _, _, bidirectional, batch_first = args[:9]
    hidden = hx[0] if isinstance(hx, (list, tuple)) else hx
    if not isinstance(data, torch.Tensor) or data.device.type != "meta" or not isinstance(hidden, torch.Tensor):
        return None
    directions = 2 if bidirectional else 1
    h_out = hidden.shape[-1]
    features = directions * h_out
    dtype = data.dtype
    if packed or data.dim() == 2:  # packed (tokens, input) or unbatched (L, input)
        output = _empty((data.shape[0], features), (features, 1), dtype)
    elif batch_first:  # computed as (L, N, features), handed back transposed
        n, length = data.shape[0], data.shape[1]
        output = _empty((n, length, features), (features, n * features, 1), dtype)
    else:
        output = _empty((data.shape[0], data.shape[1], features), _contiguous_strides(
            (data.shape[0], data.shape[1], features)), dtype)
    states = [_empty(tuple(h.shape), _contiguous_strides(tuple(h.shape)), dtype)
              for h in (hx if isinstance(hx, (list, tuple)) else [hx])]
    return (output, *states)
