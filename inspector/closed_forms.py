"""Closed forms per layer type: the independent check on what the op-level counter measured.

Each formula takes the module (for its configuration), the shapes of its positional and keyword
arguments as the hooks saw them, and the output shapes, and returns the MACs (and, for layers whose
parameter count follows from the configuration, the parameter count). Nothing here looks at aten
ops: output sizes are recomputed from the configuration, not read back from the run.

Formulas are found along ``type(module).__mro__``; a subclass is checked only where the formula holds
for it: its ``forward`` (and the other methods the form names, e.g. ``_conv_forward``) is torch's own
or the registered type's, and it holds no parameter the form does not know (``params``). A subclass
that pads in its own forward (timm's Conv2dSame), standardises its weight with a gain (ScaledStdConv2d)
or holds extra parameters gets no closed form, and the report's notes say why, rather than a false
alarm. Register new ones with ``@closed_form(Type)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn
from torch.nn.modules import activation, conv, dropout, padding, pooling
from torch.nn.modules.batchnorm import _NormBase

from inspector.op_formulas import Nested
from inspector.registry import Registry

Shape = Sequence[int]


@dataclass(frozen=True)
class ClosedForm:
    macs: int
    params: int | None = None


ClosedFormFn = Callable[[Any, tuple, dict, tuple], ClosedForm]
CLOSED_FORMS: Registry[type, ClosedFormFn] = Registry("closed form")
ParamNames = Callable[[Any], Iterable[str]]


@dataclass(frozen=True)
class Scope:
    """What a closed form was written for: the methods whose work it describes, and the parameter
    names (relative to the layer) it counts; ``params`` None: any."""

    methods: tuple[str, ...] = ("forward",)
    params: tuple[str, ...] | ParamNames | None = None


_SCOPES: dict[type, Scope] = {}


def closed_form(*types: type, methods: tuple[str, ...] = ("forward",),
                params: tuple[str, ...] | ParamNames | None = None) -> Callable[[ClosedFormFn], ClosedFormFn]:
    """Register the closed form of one or more layer types. Subclasses inherit it where it holds
    (see the module docstring): ``methods`` are those whose work it describes, ``params`` the names of
    the parameters it counts (None: the parameters are not checked by name)."""
    for cls in types:
        _SCOPES[cls] = Scope(methods, params)
    return CLOSED_FORMS.register(*types)


def _owner(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def not_understood(module: nn.Module, registered: type) -> str | None:
    """Why ``registered``'s closed form does not describe ``module`` (None: it does)."""
    cls = type(module)
    scope = _SCOPES.get(registered, Scope())
    if cls is not registered:
        for name in scope.methods:
            owner = _owner(cls, name)
            if owner is None or owner in registered.__mro__ or owner.__module__.startswith("torch.nn."):
                continue
            return f"its own {name}() ({owner.__module__}.{owner.__qualname__})"
    return None


def unknown_params(module: nn.Module, registered: type) -> list[str]:
    """Parameters of ``module`` (its own and its children's) that its closed form does not count."""
    known = _SCOPES.get(registered, Scope()).params
    if known is None:
        return []
    names = set(known(module)) if callable(known) else known
    children = vars(module).get("_modules")
    if children:  # its children's too (a shared tensor under its first name)
        return [name for name, _ in module.named_parameters() if name not in names]
    seen: set[int] = set()  # a leaf: its own parameters, each tensor once, as named_parameters gives them
    out = []
    for name, p in vars(module).get("_parameters", {}).items():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            if name not in names:
                out.append(name)
    return out


BackwardFn = Callable[[Any, ClosedForm, bool], int]
BACKWARD_FORMS: Registry[type, BackwardFn] = Registry("backward closed form")


def closed_form_backward(*types: type) -> Callable[[BackwardFn], BackwardFn]:
    """Register the backward MACs of layer types: ``fn(module, forward_form, grad_input) -> int``."""
    return BACKWARD_FORMS.register(*types)


def evaluate(module: nn.Module, args: tuple, kwargs: dict, out: tuple,
             memo: dict[type, str | None] | None = None) -> tuple[ClosedForm | None, str | None]:
    """The closed form of one call, and why it is missing or partial (None: complete, or no form
    registered): a forward it does not describe (no form), parameters it does not know (no
    parameter count). ``memo``: the answers of ``not_understood`` by layer type, for a caller that
    evaluates many calls of the same model at once."""
    cls = type(module)
    registered = CLOSED_FORMS.lookup_key(cls)
    if registered is None:
        return None, None
    if memo is None:
        reason = not_understood(module, registered)
    elif cls in memo:
        reason = memo[cls]
    else:
        reason = memo[cls] = not_understood(module, registered)
    if reason is not None:
        return None, reason
    form = CLOSED_FORMS.get(registered)(module, args, kwargs, out)  # type: ignore[misc]
    extra = unknown_params(module, registered) if form.params is not None else []
    if extra:
        listed = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return replace(form, params=None), f"parameters its closed form does not count ({listed})"
    return form, None


def evaluate_backward(module: nn.Module, form: ClosedForm | None, grad_input: bool) -> int | None:
    fn = BACKWARD_FORMS.lookup_type(type(module))
    return None if fn is None or form is None else fn(module, form, grad_input)


def _arg(args: tuple, kwargs: dict, position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


def _bias(module: nn.Module, size: int, attr: str = "bias") -> int:
    return size if getattr(module, attr, None) is not None else 0


# --- the post's whole-network formulas, generalised ----------------------------------------------

def dense_stack(sizes: Sequence[int], batch: int = 1) -> ClosedForm:
    """A stack of fully connected layers ``sizes[0] -> sizes[1] -> ...``: weights + biases, and one
    MAC per weight per sample."""
    pairs = list(zip(sizes, sizes[1:]))
    return ClosedForm(macs=batch * sum(a * b for a, b in pairs), params=sum(a * b + b for a, b in pairs))


def conv_output_side(side: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    return (side + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def conv_then_dense(side: int, channels: int, filters: int, kernel: int, classes: int,
                    pool: int | None = None, pad: int = 0, batch: int = 1) -> ClosedForm:
    """One square convolution (stride 1), an optional max-pool, then a dense layer to ``classes``."""
    out = conv_output_side(side, kernel, pad=pad)
    conv_part = ClosedForm(macs=batch * out * out * filters * kernel * kernel * channels,
                           params=kernel * kernel * channels * filters + filters)
    pooled = out // pool if pool else out
    dense = dense_stack([filters * pooled * pooled, classes], batch)
    return ClosedForm(conv_part.macs + dense.macs, conv_part.params + dense.params)  # type: ignore[operator]


# --- convolutions --------------------------------------------------------------------------------

def _conv_geometry(m: conv._ConvNd, x: Shape) -> tuple[int, Shape]:
    nd = len(m.kernel_size)
    batch = math.prod(x[:-nd - 1])
    return batch, x[-nd:]


@closed_form(conv._ConvNd, methods=("forward", "_conv_forward"), params=("weight", "bias"))
def conv_form(m: conv._ConvNd, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    batch, spatial = _conv_geometry(m, _arg(args, kwargs, 0, "input"))
    if m.padding == "same":
        out_spatial = list(spatial)
    else:
        pads = (0,) * len(spatial) if m.padding == "valid" else m.padding
        out_spatial = [conv_output_side(s, k, st, p, d) for s, k, st, p, d
                       in zip(spatial, m.kernel_size, m.stride, pads, m.dilation)]
    kernel = math.prod(m.kernel_size)
    per_output = (m.in_channels // m.groups) * kernel
    return ClosedForm(macs=batch * m.out_channels * math.prod(out_spatial) * per_output,
                      params=m.out_channels * per_output + _bias(m, m.out_channels))


@closed_form(conv._ConvTransposeNd, methods=("forward", "_conv_forward"), params=("weight", "bias"))
def conv_transpose_form(m: conv._ConvTransposeNd, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    """Each input position is scattered through out_channels/groups filters of the kernel's volume."""
    batch, spatial = _conv_geometry(m, _arg(args, kwargs, 0, "input"))
    weights = m.in_channels * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    return ClosedForm(macs=batch * math.prod(spatial) * weights, params=weights + _bias(m, m.out_channels))


@closed_form_backward(conv._ConvNd, nn.Linear)
def weight_layer_backward(m: nn.Module, form: ClosedForm, grad_input: bool) -> int:
    """The input gradient (when the input requires one) and the weight gradient (when the weight is
    trainable) each take exactly the forward's multiply-accumulates; the bias gradient is a sum."""
    return form.macs * (int(grad_input) + int(m.weight.requires_grad))


# --- dense layers ----------------------------------------------------------------------------------

@closed_form(nn.Linear, params=("weight", "bias"))
def linear_form(m: nn.Linear, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    x = _arg(args, kwargs, 0, "input")
    rows = math.prod(x[:-1])
    return ClosedForm(macs=rows * m.in_features * m.out_features,
                      params=m.in_features * m.out_features + _bias(m, m.out_features))


@closed_form(nn.Bilinear, params=("weight", "bias"))
def bilinear_form(m: nn.Bilinear, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    """y_o = x1^T A_o x2: one MAC per weight per sample."""
    rows = math.prod(_arg(args, kwargs, 0, "input1")[:-1])
    weights = m.out_features * m.in1_features * m.in2_features
    return ClosedForm(macs=rows * weights, params=weights + _bias(m, m.out_features))


@closed_form(nn.Embedding, params=("weight",))
def embedding_form(m: nn.Embedding, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    return ClosedForm(macs=0, params=m.num_embeddings * m.embedding_dim)


@closed_form(nn.EmbeddingBag, params=("weight",))
def embedding_bag_form(m: nn.EmbeddingBag, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    """Sums and means are additions; only per-sample weights multiply (once per looked-up row)."""
    weighted = _arg(args, kwargs, 2, "per_sample_weights") is not None
    indices = math.prod(_arg(args, kwargs, 0, "input"))
    return ClosedForm(macs=indices * m.embedding_dim if weighted else 0,
                      params=m.num_embeddings * m.embedding_dim)


# --- recurrent layers ------------------------------------------------------------------------------

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@closed_form(nn.RNNBase, params=lambda m: m._flat_weights_names)
def rnn_form(m: nn.RNNBase, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    """Per step, layer and direction: gates * H * (I_layer + H_out) MACs, plus H * P for a projection.

    LSTM has 4 gates, GRU 3, a plain RNN 1; layers above the first take directions * H_out inputs.
    """
    gates, hidden = _GATES[m.mode], m.hidden_size
    step_out = m.proj_size or hidden
    dirs = 2 if m.bidirectional else 1
    steps = math.prod(_arg(args, kwargs, 0, "input")[:-1])
    per_step = params = 0
    for layer in range(m.num_layers):
        layer_in = m.input_size if layer == 0 else step_out * dirs
        proj = hidden * m.proj_size if m.proj_size else 0
        per_step += dirs * (gates * hidden * (layer_in + step_out) + proj)
        params += dirs * (gates * hidden * (layer_in + step_out) + proj + (2 * gates * hidden if m.bias else 0))
    return ClosedForm(macs=steps * per_step, params=params)


# --- attention -------------------------------------------------------------------------------------

def _seq(shape: Shape, batch_first: bool) -> tuple[int, int]:
    """(batch, length) of an (L, N, E) / (N, L, E) / unbatched (L, E) sequence."""
    if isinstance(shape, Nested):
        raise TypeError("nested input: use _sequences")
    if len(shape) == 2:
        return 1, shape[0]
    return (shape[0], shape[1]) if batch_first else (shape[1], shape[0])


_MHA_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v",
               "out_proj.weight", "out_proj.bias")


def mha_macs(m: nn.MultiheadAttention, q: Shape, k: Shape) -> int:
    """Projections (q: L*E*E, k: S*kdim*E, v: S*vdim*E, out: L*E*E) + 2*L*S'*E for attention."""
    batch, q_len = _seq(q, m.batch_first)
    _, k_len = _seq(k, m.batch_first)
    e = m.embed_dim
    attended = k_len + (m.bias_k is not None) + bool(m.add_zero_attn)
    projections = q_len * e * e + k_len * (m.kdim + m.vdim) * e + q_len * e * e
    return batch * (projections + 2 * q_len * attended * e)


@closed_form(nn.MultiheadAttention, params=_MHA_PARAMS)
def mha_form(m: nn.MultiheadAttention, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    e = m.embed_dim
    params = e * e + (m.kdim + m.vdim) * e + e * e + _bias(m, 3 * e, "in_proj_bias")
    params += _bias(m.out_proj, e) + (2 * e if m.bias_k is not None else 0)
    q, k = _arg(args, kwargs, 0, "query"), _arg(args, kwargs, 1, "key")
    return ClosedForm(macs=mha_macs(m, q, k), params=params)


def _ffn_macs(layer: nn.Module, tokens: int) -> int:
    return tokens * 2 * layer.linear1.in_features * layer.linear1.out_features


@closed_form(nn.TransformerEncoderLayer)
def encoder_layer_form(m: nn.TransformerEncoderLayer, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    """Self-attention and feed-forward; on a nested input (a padding mask in eval), each sequence's
    real tokens only."""
    src = _arg(args, kwargs, 0, "src")
    if isinstance(src, Nested):
        return ClosedForm(macs=sum(mha_macs(m.self_attn, (1, *s), (1, *s)) if m.self_attn.batch_first else
                                   mha_macs(m.self_attn, (s[0], 1, s[1]), (s[0], 1, s[1])) for s in src)
                          + _ffn_macs(m, sum(s[0] for s in src)))
    batch, length = _seq(src, m.self_attn.batch_first)
    return ClosedForm(macs=mha_macs(m.self_attn, src, src) + _ffn_macs(m, batch * length))


@closed_form(nn.TransformerDecoderLayer)
def decoder_layer_form(m: nn.TransformerDecoderLayer, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
    tgt, memory = _arg(args, kwargs, 0, "tgt"), _arg(args, kwargs, 1, "memory")
    batch, length = _seq(tgt, m.self_attn.batch_first)
    attention = mha_macs(m.self_attn, tgt, tgt) + mha_macs(m.multihead_attn, tgt, memory)
    return ClosedForm(macs=attention + _ffn_macs(m, batch * length))


# --- layers that do no matmul-like work -----------------------------------------------------------

def _zero_macs(params: Callable[[Any], int]) -> ClosedFormFn:
    def form(m: nn.Module, args: tuple, kwargs: dict, out: tuple) -> ClosedForm:
        return ClosedForm(macs=0, params=params(m))
    return form


def _affine(size: int) -> Callable[[Any], int]:
    """A per-channel scale and shift, each counted where the layer really has it."""
    return lambda m: size * ((getattr(m, "weight", None) is not None) + (getattr(m, "bias", None) is not None))


closed_form(_NormBase, params=("weight", "bias"))(_zero_macs(lambda m: _affine(m.num_features)(m)))
closed_form(nn.GroupNorm, params=("weight", "bias"))(_zero_macs(lambda m: _affine(m.num_channels)(m)))
closed_form(nn.LayerNorm, params=("weight", "bias"))(_zero_macs(lambda m: _affine(math.prod(m.normalized_shape))(m)))
closed_form(nn.PReLU, params=("weight",))(_zero_macs(lambda m: m.num_parameters))

_PARAMETER_FREE: list[type] = [
    pooling._MaxPoolNd, pooling._AvgPoolNd, pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd,
    pooling._LPPoolNd, pooling._MaxUnpoolNd, dropout._DropoutNd, padding._ConstantPadNd,
    padding._ReflectionPadNd, padding._ReplicationPadNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.LocalResponseNorm,
    nn.CrossMapLRN2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
    *[cls for name, cls in vars(activation).items()
      if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == activation.__name__
      and cls not in (nn.MultiheadAttention, nn.PReLU)],
]
closed_form(*_PARAMETER_FREE, params=())(_zero_macs(lambda m: 0))
