"""One walk over a model's module tree, shared by everything that needs its modules, parameters or buffers.

``nn.Module.named_modules`` is a recursive generator: every call walks the whole tree again, and
one ``inspect`` used to ask for modules, parameters or buffers a dozen times (a quarter of the
counting overhead on mobilenet_v3_large). ``ModelTree`` walks once and answers from lists, in the
same order and with the same de-duplication rules as torch's own iterators.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable
from functools import cached_property
from itertools import chain, compress, repeat

import torch
from torch import nn

NamedParam = tuple[str, torch.Tensor, bool]  # qualified name, tensor, trainable
_PARAMETERS = operator.attrgetter("_parameters")
_BUFFERS = operator.attrgetter("_buffers")
_DEVICE = operator.attrgetter("device")
_CPU_META = operator.attrgetter("is_cpu", "is_meta")
_ELSEWHERE = (False, False).__eq__
_DTYPE = operator.attrgetter("dtype")
_VALUES = operator.methodcaller("values")
_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")  # dicts, and TorchScript's dict wrappers


def attribute(obj: object, name: str, default: object = None) -> object:
    """``getattr(obj, name, default)`` that also survives a ``__getattr__`` raising something else
    than AttributeError (a module delegating unknown names to a config dict raises KeyError)."""
    try:
        return getattr(obj, name, default)
    except Exception:  # noqa: BLE001 - the model's own attribute code: the attribute is absent
        return default


def packed_weights(module: nn.Module) -> list[torch.Tensor]:
    """Weights a quantized layer keeps packed (not as Parameters): counted as frozen parameters."""
    if ".quantized" not in type(module).__module__:
        return []
    weight_bias = attribute(module, "_weight_bias")
    if callable(weight_bias) and isinstance(found := weight_bias(), dict):  # dynamic RNNs: packed per gate and layer
        return [t for part in ("weight", "bias") for t in (found.get(part) or {}).values() if t is not None]
    weight, bias = attribute(module, "weight"), attribute(module, "bias")
    if not callable(weight):
        return []
    tensors = [weight()]
    if callable(bias) and bias() is not None:
        tensors.append(bias())
    return tensors


def _unique(dicts: Iterable[dict]) -> list[torch.Tensor]:
    """The tensors of ``dicts`` (not None), each once, in order: C-level loops only."""
    values = list(chain.from_iterable(map(_VALUES, dicts)))
    tensors = list(compress(values, map(operator.is_not, values, repeat(None))))
    return list(dict(zip(map(id, tensors), tensors)).values())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules(remove_duplicate=False)`` without its nested generators (one per level, per
    module): the same pre-order, from an explicit stack."""
    out = []
    stack = [("", model)]
    while stack:
        prefix, module = stack.pop()
        out.append((prefix, module))
        children = module._modules
        if children:
            stack.extend((_join(prefix, name), child) for name, child in reversed(children.items())
                         if child is not None)
    return out


def _repeated(paths: list[tuple[str, nn.Module]]) -> list[nn.Module]:
    seen: set[int] = set()
    again = []
    for _, module in paths:
        if id(module) in seen:
            again.append(module)
        seen.add(id(module))
    return again


class ModelTree:
    """The modules of ``model`` in ``named_modules`` order, and their parameters and buffers."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        #: Every path to every module: a module shared by two parents appears under both names.
        self.paths: list[tuple[str, nn.Module]] = _walk(model)
        seen: set[int] = set()
        #: Each module once, under its first name (what ``named_modules()`` yields).
        self.modules: list[tuple[str, nn.Module]] = []
        for name, module in self.paths:
            if id(module) not in seen:
                seen.add(id(module))
                self.modules.append((name, module))

    @cached_property
    def module_list(self) -> list[nn.Module]:
        return [m for _, m in self.modules]

    @cached_property
    def param_tensors(self) -> list[torch.Tensor]:
        """Unique parameters (tied tensors once), then packed quantized weights; no names (C-level
        loops: the totals of a report need no more)."""
        return [*_unique(map(_PARAMETERS, self.module_list)), *(t for _, t, _ in self.packed)]

    @cached_property
    def buffer_tensors(self) -> list[torch.Tensor]:
        return _unique(map(_BUFFERS, self.module_list))

    @cached_property
    def first_names(self) -> dict[int, str]:
        """id(module) -> its first qualified name: how the hooks recognise the model's modules (not
        the inside of a TorchScript submodule: it runs in the TorchScript interpreter, one call)."""
        names = {id(m): name for name, m in self.modules}
        for inner in self.inside_scripted:
            names.pop(id(inner), None)
        return names

    @cached_property
    def inside_scripted(self) -> list[nn.Module]:
        """Modules below a TorchScript submodule (their parameters count; their calls are not seen)."""
        if not self.has(torch.jit.ScriptModule):
            return []
        tops = [name for name, m in self.modules if isinstance(m, torch.jit.ScriptModule)]
        return [m for name, m in self.modules if any(name.startswith(f"{t}.") or (not t and name) for t in tops)]

    @cached_property
    def shared_ids(self) -> frozenset[int]:
        """Modules reachable under more than one name (named by the parent that calls them)."""
        if len(self.paths) == len(self.modules):
            return frozenset()
        return frozenset(id(m) for m in _repeated(self.paths))

    @cached_property
    def types(self) -> frozenset[type]:
        return frozenset(map(type, self.module_list))

    def has(self, base: type | tuple[type, ...]) -> bool:
        """Whether some module is an instance of ``base`` (checked on the distinct types only)."""
        return any(issubclass(t, base) for t in self.types)

    @cached_property
    def with_pre_hooks(self) -> list[nn.Module]:
        """Modules with forward pre-hooks of their own (weight_norm, pruning, the user's)."""
        modules = self.module_list
        if self.scripted:  # TorchScript modules hold no Python hooks
            modules = [m for m in modules if not isinstance(m, torch.jit.ScriptModule)]
        return list(compress(modules, map(len, map(_PRE_HOOKS, modules))))

    @cached_property
    def scripted(self) -> list[str]:
        """The outermost TorchScript submodules (counted as one call each: their ops land in their row)."""
        if not self.has(torch.jit.ScriptModule):
            return []
        inner = set(map(id, self.inside_scripted))
        return [name for name, m in self.modules if isinstance(m, torch.jit.ScriptModule) and name
                and id(m) not in inner]

    @cached_property
    def params(self) -> list[NamedParam]:
        """Unique parameters (a tied tensor once, under its first name), then packed quantized weights."""
        return [(name, p, p.requires_grad) for name, p in self.parameters] + self.packed

    @cached_property
    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The ``nn.Parameter``s alone, as ``named_parameters()`` gives them (no packed weights)."""
        return self._parameters(self.modules, unique=True)

    @cached_property
    def param_paths(self) -> list[NamedParam]:
        """Every parameter under every name it has (tied tensors repeated), packed weights last."""
        regular = self._parameters(self.paths, unique=False)
        return [(name, p, p.requires_grad) for name, p in regular] + self.packed

    @cached_property
    def buffers(self) -> list[tuple[str, torch.Tensor]]:
        """Unique buffers under their first name, as ``named_buffers()`` gives them."""
        seen: set[int] = set()
        out = []
        for prefix, module in self.modules:
            for name, b in module._buffers.items():
                if b is not None and id(b) not in seen:
                    seen.add(id(b))
                    out.append((_join(prefix, name), b))
        return out

    @cached_property
    def has_tied_params(self) -> bool:
        """Whether some parameter is reachable under two names (tied weights or a shared module)."""
        every = chain.from_iterable(map(_VALUES, map(_PARAMETERS, (m for _, m in self.paths))))
        return sum(1 for p in every if p is not None) != len(self.param_tensors) - len(self.packed)

    @cached_property
    def packed(self) -> list[NamedParam]:
        if not any(".quantized" in t.__module__ for t in set(map(type, self.module_list))):
            return []
        return [(_join(prefix, f"packed{i}"), t, False)
                for prefix, module in self.modules for i, t in enumerate(packed_weights(module))]

    @staticmethod
    def _parameters(modules: list[tuple[str, nn.Module]], unique: bool) -> list[tuple[str, nn.Parameter]]:
        seen: set[int] = set()
        out = []
        for prefix, module in modules:
            for name, p in module._parameters.items():
                if p is None or (unique and id(p) in seen):
                    continue
                seen.add(id(p))
                out.append((_join(prefix, name), p))
        return out

    @cached_property
    def devices(self) -> frozenset[torch.device]:
        """Every device the model's parameters and buffers are on (two flags read per tensor: a
        device object is made only for tensors on neither the CPU nor meta)."""
        tensors = [*self.param_tensors, *self.buffer_tensors]
        flags = set(map(_CPU_META, tensors))
        found = {torch.device("cpu")} if (True, False) in flags else set()
        if (False, True) in flags:
            found.add(torch.device("meta"))
        if (False, False) in flags:
            found.update(map(_DEVICE, compress(tensors, map(_ELSEWHERE, map(_CPU_META, tensors)))))
        return frozenset(found)

    @cached_property
    def float_dtypes(self) -> frozenset[torch.dtype]:
        """The dtypes of its floating parameters and buffers."""
        tensors = [*self.param_tensors, *self.buffer_tensors]
        return frozenset(map(_DTYPE, compress(tensors, map(torch.Tensor.is_floating_point, tensors))))
