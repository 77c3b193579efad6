"""Frozen records: one per module call, and the problems the cross-check finds. Plain data: no
module, no tensor; the figures of a call are read through the figure registry."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple

from inspector.figures import FIGURES, lookup

Shape = tuple[int, ...]


class OpStat(NamedTuple):
    """One aten op as run directly inside one module call (not inside its children)."""

    op: str
    calls: int
    macs: int


@dataclass(frozen=True)
class LayerRecord:
    """Everything known about one call of one module, computed once and rendered many ways.

    Figures (``inspector.figures``) are read as attributes: ``record.macs`` is the call's *own*
    figure (work run while this call was the innermost module; parameters first counted here), and
    ``record.inclusive_macs`` adds everything the call ran below it. Summed over all records the
    own figures give the totals. ``depth`` and ``parent`` follow the call chain: a block called by
    its model is its child, wherever it is registered.
    """

    index: int
    name: str
    type: str
    depth: int
    parent: int | None
    call: int
    is_leaf: bool
    input_shapes: tuple[Shape, ...] = ()
    output_shapes: tuple[Shape, ...] = ()
    input_dtypes: tuple[str, ...] = ()
    input_bytes: int = 0
    output_bytes: int = 0
    module_params: int = 0  # the module's parameters (its whole subtree), each once
    param_bytes: int = 0    # the same, in bytes, in the dtype the pass ran in
    config: str = ""        # the module's extra_repr(), first line
    expected_macs: int | None = None  # the closed form's figures (None: no closed form)
    expected_params: int | None = None
    expected_backward_macs: int | None = None
    ops: tuple[OpStat, ...] = ()
    backward_ops: tuple[OpStat, ...] = ()
    failed: bool = False    # the call raised and its caller went on
    own: Mapping[str, Any] = field(default_factory=dict)        # figure name -> this call's own value
    inclusive: Mapping[str, Any] = field(default_factory=dict)  # figure name -> with everything below it

    def __getattr__(self, name: str) -> Any:
        """``record.<figure>`` and ``record.inclusive_<figure>`` (aliases included)."""
        if name.startswith("_") or name in ("own", "inclusive"):
            raise AttributeError(name)
        values, key = (self.inclusive, name[10:]) if name.startswith("inclusive_") else (self.own, name)
        fig = lookup(key)
        if fig is None:
            raise AttributeError(f"{type(self).__name__} has no field or figure {name!r}")
        return values.get(fig.name)

    @property
    def bytes_moved(self) -> int:
        """Least memory traffic of the call: read its inputs and parameters once, write its outputs."""
        return self.input_bytes + self.param_bytes + self.output_bytes

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs (inclusive) per byte moved; None when nothing is moved."""
        flops = self.inclusive.get("flops")
        return flops / self.bytes_moved if self.bytes_moved and flops is not None else None

    @property
    def achieved_gflops(self) -> float | None:
        """Inclusive FLOPs / the call's measured time, in GFLOP/s; None without timing."""
        time_ms, flops = self.inclusive.get("time_ms"), self.inclusive.get("flops")
        if not time_ms or flops is None:
            return None
        return flops / (time_ms * 1e-3) / 1e9

    def bound(self, peak_gflops: float, peak_gbytes_per_s: float) -> str | None:
        """Roofline verdict: "compute" when the intensity is at or above the ridge point
        (peak FLOP/s / peak bytes/s), "memory" below it; None when nothing is moved."""
        intensity = self.arithmetic_intensity
        if intensity is None:
            return None
        return "compute" if intensity >= peak_gflops / peak_gbytes_per_s else "memory"

    @property
    def label(self) -> str:
        """Qualified name, with the call number when the module ran more than once."""
        base = self.name or "(model)"
        return f"{base}#{self.call}" if self.call else base

    @classmethod
    def make(cls, **values: Any) -> LayerRecord:
        """Build a record without the frozen dataclass's per-field ``object.__setattr__`` calls (one
        record per module call); omitted fields take their defaults."""
        record = object.__new__(cls)
        record.__dict__.update(_DEFAULTS)
        record.__dict__.update(values)
        if record.__dict__.keys() != _FIELDS:
            raise TypeError(f"LayerRecord fields missing or unknown: {sorted(record.__dict__.keys() ^ _FIELDS)}")
        return record

    def to_dict(self) -> dict[str, Any]:
        """Every field, every figure (own as ``name``, with descendants as ``inclusive_name``) and the
        derived properties; shapes as lists."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("own", "inclusive")}
        for name in FIGURES:
            out[name] = self.own.get(name)
            out[f"inclusive_{name}"] = self.inclusive.get(name)
        out["ops"] = [stat._asdict() for stat in self.ops]
        out["backward_ops"] = [stat._asdict() for stat in self.backward_ops]
        out["bytes_moved"] = self.bytes_moved
        out["arithmetic_intensity"] = self.arithmetic_intensity
        out["achieved_gflops"] = self.achieved_gflops
        out["input_shapes"] = [_listed(s) for s in self.input_shapes]
        out["output_shapes"] = [_listed(s) for s in self.output_shapes]
        out["input_dtypes"] = list(self.input_dtypes)
        return out


def _listed(shape: Any) -> Any:
    return [_listed(s) for s in shape] if isinstance(shape, (tuple, list)) else shape


_DEFAULTS = {f.name: f.default for f in fields(LayerRecord) if f.default is not MISSING}
_DEFAULTS.update({f.name: {} for f in fields(LayerRecord) if f.name in ("own", "inclusive")})
_FIELDS = frozenset(f.name for f in fields(LayerRecord))


@dataclass(frozen=True)
class Mismatch:
    """A layer call whose counted figure disagrees with its closed form."""

    layer: str
    type: str
    quantity: str  # "macs", "params" or "backward_macs"
    counted: int
    expected: int

    def __str__(self) -> str:
        diff = self.counted - self.expected
        return (f"{self.layer} ({self.type}): {self.quantity} counted {self.counted:,} "
                f"vs closed form {self.expected:,} ({diff:+,})")


@dataclass(frozen=True)
class Uncounted:
    """An op whose work could not be counted (no formula for a matmul-like op, or its formula
    failed): ``total_macs`` is then incomplete."""

    op: str
    calls: int
    reason: str

    def __str__(self) -> str:
        calls = f" x{self.calls}" if self.calls else ""
        return f"{self.op}{calls}: {self.reason}; total_macs is incomplete"
