"""Frozen records: one per module call, and the problems the cross-check finds."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, NamedTuple

Shape = tuple[int, ...]


class OpStat(NamedTuple):
    """One aten op as run directly inside one module call (not inside its children)."""

    op: str
    calls: int
    macs: int


@dataclass(frozen=True)
class LayerRecord:
    """Everything known about one call of one module, computed once and rendered many ways.

    ``macs``/``params`` are *self* figures: work run while this call was the innermost module, and
    parameters first counted here (the module's own, plus those of descendants that never ran as
    modules, such as MultiheadAttention's ``out_proj``). Summed over all records they give the
    totals. ``inclusive_*`` add everything the call ran below it. ``depth`` and ``parent`` follow
    the call chain: a block called by its model is its child, wherever it is registered.
    """

    index: int
    name: str
    type: str
    depth: int
    parent: int | None
    call: int
    is_leaf: bool
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    output_bytes: int
    params: int
    trainable_params: int
    inclusive_params: int
    macs: int
    inclusive_macs: int
    expected_macs: int | None
    expected_params: int | None
    module_params: int
    ops: tuple[OpStat, ...]
    input_dtypes: tuple[str, ...] = ()
    input_bytes: int = 0
    param_bytes: int = 0  # the module's parameters (its whole subtree), in the dtype the pass ran in
    elementwise_flops: int = 0  # the FLOP convention's extra work ("all"), this call's own ops
    inclusive_elementwise_flops: int = 0
    hook_macs: int = 0  # inclusive work of pre-hooks and parametrizations: not the layer's own formula
    failed: bool = False
    time_ms: float | None = None
    self_time_ms: float | None = None
    backward_macs: int | None = None  # None: no backward pass was run
    inclusive_backward_macs: int | None = None
    backward_ops: tuple[OpStat, ...] = ()
    expected_backward_macs: int | None = None
    saved_bytes: int | None = None  # activations autograd saved for backward during this call (own)
    inclusive_saved_bytes: int | None = None
    recompute_macs: int | None = None  # forward work recomputed in backward (checkpointing)

    @property
    def flops(self) -> int:
        """2 x MACs, plus elementwise work under ``flops="all"``."""
        return 2 * self.macs + self.elementwise_flops

    @property
    def inclusive_flops(self) -> int:
        return 2 * self.inclusive_macs + self.inclusive_elementwise_flops

    @property
    def bytes_moved(self) -> int:
        """Least memory traffic of the call: read its inputs and parameters once, write its outputs."""
        return self.input_bytes + self.param_bytes + self.output_bytes

    @property
    def arithmetic_intensity(self) -> float | None:
        """FLOPs (inclusive) per byte moved; None when nothing is moved."""
        return self.inclusive_flops / self.bytes_moved if self.bytes_moved else None

    @property
    def achieved_gflops(self) -> float | None:
        """Inclusive FLOPs / the call's measured time, in GFLOP/s; None without timing."""
        if not self.time_ms:
            return None
        return self.inclusive_flops / (self.time_ms * 1e-3) / 1e9

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
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["ops"] = [stat._asdict() for stat in self.ops]
        out["backward_ops"] = [stat._asdict() for stat in self.backward_ops]
        out["flops"] = self.flops
        out["inclusive_flops"] = self.inclusive_flops
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
