"""Values on the meta device where they are known, so that a forward whose *path* depends on them
(not its arithmetic) runs on meta as it runs on the CPU.

A meta tensor holds no values. Yet a model's code often asks for some: ``attention_mask.all()`` to
pick an attention kernel, ``nn.TransformerDecoder`` comparing its mask with a causal one, the tokens
routed to each expert (``nonzero``), a position table's length. Those values come from the inputs and
from constants, never from the weights: they are *known*. Each meta tensor computed from known tensors
alone (inputs moved from the CPU, factories like ``arange``/``full``/``ones``, ``torch.tensor(data)``,
small ``empty`` tables the code fills, and what follows from them) gets its value computed on the CPU
alongside, and an op that needs values (``.item()``, ``bool()``, ``nonzero``, indexing by a mask,
``.tolist()``, an f-string) reads it there. A known tensor written with something unknown is forgotten.
Values that depend on the weights stay unknown, and an op needing one fails with the usual one-line
error, with two exceptions:

*Assertions* (``torch._check_tensor_all`` on such values) are taken to hold: they raise or pass and
choose no path; the report's notes count them.

*Routing*: a router's top-k (or arg-max) over scores computed from weights is made up, balanced (row
``r`` picks ``(r*k + j) % n``, so every token meets k experts, spread evenly). The count then holds for
any routing if the total does not depend on it; ``inspect`` checks that by counting a second time
with every token sent to the same k experts, and refuses in one line when the two totals differ.
"""
from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: The largest tensor whose value is kept (elements): masks and index tables, not activations.
LIMIT = 1 << 22
_META = torch.device("meta")
_CPU = torch.device("cpu")
#: The largest uninitialised tensor (``empty``) taken as known: a table about to be filled.
SMALL = 1 << 16
#: Factories whose result is no value at all (uninitialised memory).
_UNINITIALISED = frozenset({"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like",
                            "empty_permuted", "_empty_affine_quantized", "_empty_per_channel_affine_quantized"})
#: Ops choosing among candidates by score: made up when the scores are unknown (see the docstring).
_ROUTERS = frozenset({"topk", "max", "min", "argmax", "argmin", "sort", "argsort"})


class Known:
    """The known values of one counting pass: meta tensor -> its value on the CPU."""

    def __init__(self, routing: str = "balanced") -> None:
        #: id(meta tensor) -> its value on the CPU; entries leave when their tensor dies (a plain
        #: dict: the dispatch mode asks it about every op's first argument)
        self.values: dict[int, torch.Tensor] = {}
        self.made: set[int] = set()  # ids of values that follow from made-up routing
        self._refs: dict[int, weakref.ref] = {}
        self.routing = routing  # "balanced" or "skewed" (every row picks the first k)
        self.decisions = 0      # routing choices made up in this pass
        self.made_up = 0        # times a made-up value decided a shape or a Python value (the count may depend on it)
        self.assumed = 0        # assertions on values from the weights (torch._check_tensor_all) taken to hold

    def add(self, meta: torch.Tensor, value: torch.Tensor, made: bool = False) -> None:
        if meta.device.type != "meta" or value.numel() > LIMIT:
            return
        key = id(meta)
        values, refs, derived = self.values, self._refs, self.made

        def gone(_: Any) -> None:  # no reference to self: no cycle for a paused collector to keep
            values.pop(key, None)
            refs.pop(key, None)
            derived.discard(key)

        values[key] = value
        refs[key] = weakref.ref(meta, gone)
        if made:
            derived.add(key)
        else:
            derived.discard(key)

    def value(self, t: torch.Tensor) -> torch.Tensor | None:
        return self.values.get(id(t))

    # --- the dispatch mode's entry ------------------------------------------------------------------

    def dispatch(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """The op's result when its inputs' values are known (or it is a router over unknown scores);
        NotImplemented to run it as usual. Forgets what an op writes with unknown data."""
        op = _OPS.get(id(func))  # op overloads are singletons
        if op is None:
            op = _OPS[id(func)] = _Op(func)
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.is_meta and id(first) not in self.values and not op.special:
            return NotImplemented  # the common case, decided on the first argument: an unknown activation
        tensors = _tensors(args, kwargs)
        metas = [t for t in tensors if t.device.type == "meta"]
        unknown = [t for t in metas if id(t) not in self.values]
        if unknown:
            if op.name == "_local_scalar_dense" and _asserting():
                self.assumed += 1  # torch._check_tensor_all(cond): an assertion, not a path
                return True
            if op.router and unknown[0] is args[0] and args[0].is_floating_point():
                return self._route(func, op.name, args, kwargs)
            if op.indexes:
                out = self._index_by_known_masks(func, args, kwargs)
                if out is not NotImplemented:
                    return out
            if op.writes:
                self._forget_written(func, args, kwargs)
            return NotImplemented
        if op.uninitialised and not metas and _makes_meta(args, kwargs):
            return self._uninitialised(func, args, kwargs)
        if op.random or (not tensors and op.uninitialised) or (not metas and not _makes_meta(args, kwargs)):
            if op.writes:
                self._forget_written(func, args, kwargs)
            return NotImplemented
        return self._mirror(func, args, kwargs)

    def _mirror(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run the op on the values (CPU) and on meta; the meta result, its value kept."""
        try:
            value = func(*_on_cpu(args, self.values), **_on_cpu(kwargs, self.values))
        except Exception:  # noqa: BLE001 - the meta kernel says what is wrong
            self._forget_written(func, args, kwargs)
            return NotImplemented
        made = bool(self.made) and any(id(t) in self.made for t in _tensors(args, kwargs))
        if not _has_tensor(value) or (_leaves_meta(kwargs) and not _has_meta(args)):
            self.made_up += made  # a Python value (.item(), bool(), equal) or .to("cpu")/.tolist() read
            return value
        try:
            out = func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a data-dependent meta kernel (nonzero): made from the value
            out = _like_on_meta(value)
            self.made_up += made  # the value decided a shape
        for meta, cpu in zip(_flat(out), _flat(value)):
            if isinstance(meta, torch.Tensor) and isinstance(cpu, torch.Tensor):
                self.add(meta, cpu, made)
        return out

    def with_scalars_on_meta(self, func: Any, args: tuple, kwargs: dict | None) -> Any:
        """An op that failed on meta because an argument is a 0-dim CPU tensor (``masked_fill(mask,
        torch.tensor(min))``): real kernels take CPU scalars with tensors of any device, meta kernels do
        not. Run again with them on meta (their values known); NotImplemented when there were none."""
        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dim() == 0:
                moved = value.to(_META)
                self.add(moved, value)
                return moved
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            return value

        if not _has_meta((*args, *(kwargs or {}).values())):
            return NotImplemented
        moved_args, moved_kwargs = move(args), {k: move(v) for k, v in (kwargs or {}).items()}
        if all(a is b for a, b in zip(_flat(moved_args), _flat(args))) and \
                all(moved_kwargs[k] is v for k, v in (kwargs or {}).items()):
            return NotImplemented
        out = self.dispatch(func, moved_args, moved_kwargs)
        return func(*moved_args, **moved_kwargs) if out is NotImplemented else out

    def _uninitialised(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """A small ``empty`` (a table the code fills next, like DETR's spatial shapes): known as zeros,
        so that what is written into it stays known; garbage on the CPU, no value anyone may read."""
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.numel() <= SMALL:
            self.add(out, torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=_CPU).zero_())
        return out

    def _route(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """A router over unknown scores: its real meta result, with made-up indices."""
        out = func(*args, **kwargs)
        indices = out[1] if isinstance(out, (tuple, list)) else out
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dim() == 0 \
                or indices.numel() > LIMIT:
            return out
        x = args[0]
        dim = _dim(name, args, kwargs)
        if dim is None or x.dim() == 0:
            return out
        dim %= x.dim()
        shape = list(indices.shape)
        reduced = len(shape) == x.dim() - 1  # arg-max without keepdim: the dimension is gone
        if reduced:
            shape.insert(dim, 1)
        value = _made_up(torch.Size(shape), dim, x.shape[dim], self.routing, name in ("sort", "argsort"))
        self.add(indices, value.squeeze(dim) if reduced else value, made=True)
        self.decisions += 1
        return out

    def _index_by_known_masks(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Indexing an unknown tensor by a known boolean mask: the mask's positions as long indices."""
        if len(args) < 2 or not isinstance(args[1], (list, tuple)):
            return NotImplemented
        indices = list(args[1])
        changed = False
        for i, index in enumerate(indices):
            value = self.value(index) if isinstance(index, torch.Tensor) and index.dtype == torch.bool else None
            if value is not None:
                made = id(index) in self.made
                self.made_up += made  # the mask's count of True decides the shape
                positions = value.nonzero().unbind(1)
                metas = [p.to(_META) for p in positions]
                for meta, cpu in zip(metas, positions):
                    self.add(meta, cpu, made)
                indices[i:i + 1] = metas
                changed = True
        if not changed:
            return NotImplemented
        return func(args[0], indices, *args[2:], **kwargs)

    def _forget_written(self, func: Any, args: tuple, kwargs: dict) -> None:
        """An op writing a known tensor with something unknown: that storage's values are forgotten."""
        schema = func._schema
        for i, a in enumerate(schema.arguments):
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            target = kwargs.get(a.name) if a.kwarg_only else (args[i] if i < len(args) else None)
            for t in _flat(target):
                if isinstance(t, torch.Tensor) and t.device.type == "meta" and id(t) in self.values:
                    self._forget_storage(t)

    def _forget_storage(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        for other_id, ref in list(self._refs.items()):
            other = ref()
            if other is not None and other.untyped_storage()._cdata == key:
                self.values.pop(other_id, None)
                self.made.discard(other_id)


class Constants(TorchFunctionMode):
    """What passes between Python and meta tensors without an op the dispatch mode sees. Tensors made
    from Python data (``torch.tensor(data, device="meta")``, ``torch.as_tensor``, the index tensor of
    ``x[:, [-1, 0]]``) are made on the CPU and moved, so their values are known; a known tensor read
    back into Python (``.tolist()``, ``f"{t}"``) gives its value."""

    def __init__(self, known: Known) -> None:
        super().__init__()
        self.known = known

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _CONSTRUCTORS and args and not isinstance(args[0], torch.Tensor):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "meta":
                return func(*args, **{**kwargs, "device": _CPU}).to(_META)
        elif func in _INDEXING and len(args) > 1 and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            args = (args[0], _lists_as_tensors(args[1]), *args[2:])
        elif func in _READS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            value = self.known.value(args[0])
            if value is not None and (func is not torch.Tensor.__format__ or value.dim() == 0):
                self.known.made_up += id(args[0]) in self.known.made
                return func(value, *args[1:], **kwargs)
        return func(*args, **kwargs)


_CONSTRUCTORS = frozenset({torch.tensor, torch.as_tensor, torch.asarray})
_INDEXING = frozenset({torch.Tensor.__getitem__, torch.Tensor.__setitem__})
_READS = frozenset({torch.Tensor.tolist, torch.Tensor.__format__, torch.Tensor.numpy})


def _lists_as_tensors(index: Any) -> Any:
    """Lists of ints or bools in an index, as CPU tensors (the indexing code would make them on meta)."""
    if isinstance(index, list) and index and all(isinstance(i, (int, bool)) for i in index):
        return torch.tensor(index, device=_CPU)
    if isinstance(index, tuple):
        return tuple(_lists_as_tensors(i) for i in index)
    return index


class _Op:
    """What ``Known.dispatch`` needs to know about an op overload, worked out once."""

    __slots__ = ("name", "router", "indexes", "writes", "random", "uninitialised", "special")

    def __init__(self, func: Any) -> None:
        self.name = func._schema.name.split("::")[-1]
        self.router = self.name in _ROUTERS and func.namespace == "aten"
        self.indexes = self.name in ("index", "index_put", "index_put_", "_index_put_impl_")
        self.writes = any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)
        self.random = torch.Tag.nondeterministic_seeded in func.tags
        self.uninitialised = self.name in _UNINITIALISED
        #: an op that writes an argument other than its first (an ``out=``) can write a known tensor
        self.special = self.router or self.indexes or self.name == "_local_scalar_dense" or any(
            a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments[1:])


_OPS: dict[int, _Op] = {}


_ASSERTIONS = frozenset(f.__code__ for f in (torch._check_tensor_all_with, torch._check_tensor_all)
                        if hasattr(f, "__code__"))


def _asserting(depth: int = 8) -> bool:
    """Whether the value is being read by ``torch._check_tensor_all(_with)``: a check that raises or
    passes, never a choice of path (``transformers``' torch_compilable_check on sampled values)."""
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code in _ASSERTIONS:
            return True
        frame = frame.f_back
    return False


def _made_up(shape: torch.Size, dim: int, n: int, routing: str, permutation: bool) -> torch.Tensor:
    """Indices along ``dim``: row r picks (r*k + j) % n (balanced) or j (skewed); a permutation
    rolled by r for sort."""
    k = shape[dim]
    moved = [s for i, s in enumerate(shape) if i != dim]
    rows = torch.arange(int(torch.tensor(moved).prod().item()) if moved else 1).unsqueeze(1)
    j = torch.arange(k).unsqueeze(0)
    if routing == "skewed":
        picked = j.expand(rows.shape[0], k)
    else:
        picked = ((rows if permutation else rows * k) + j) % max(n, 1)
    return picked.reshape(*moved, k).movedim(-1, dim).contiguous().to(torch.int64)


def _dim(name: str, args: tuple, kwargs: dict) -> int | None:
    if name == "topk":
        return args[2] if len(args) > 2 else kwargs.get("dim", -1)
    if name in ("sort", "argsort"):
        for a in args[1:]:
            if isinstance(a, int) and not isinstance(a, bool):
                return a
        return kwargs.get("dim", -1)
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None  # argmax over all: not routing


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in (*_flat(args), *_flat(tuple(kwargs.values()))) if isinstance(t, torch.Tensor)]


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        for v in value:
            out.extend(v if isinstance(v, (list, tuple)) else [v])
        return out
    return [value]


def _has_tensor(value: Any) -> bool:
    return any(isinstance(v, torch.Tensor) for v in _flat(value))


def _has_meta(value: Any) -> bool:
    return any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in _flat(value))


def _makes_meta(args: tuple, kwargs: dict) -> bool:
    """A factory (no meta input) making a meta tensor: ``device=meta`` among its arguments."""
    return any(v == _META for v in (*_flat(args), *kwargs.values()) if isinstance(v, torch.device))


def _leaves_meta(kwargs: dict) -> bool:
    device = kwargs.get("device")
    return isinstance(device, torch.device) and device.type != "meta"


def _on_cpu(value: Any, values: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return values[id(value)] if value.device.type == "meta" else value
    if isinstance(value, torch.device):
        return _CPU if value.type == "meta" else value
    if isinstance(value, dict):
        return {k: _on_cpu(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v, values) for v in value)
    return value


def _like_on_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=_META)
    if isinstance(value, (list, tuple)):
        return type(value)(_like_on_meta(v) for v in value)
    return value
