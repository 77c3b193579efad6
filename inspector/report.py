"""The report: per-call records plus totals. Rendering lives in ``render``; nothing here recomputes counts."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from inspector.records import LayerRecord, Mismatch, OpStat

SCHEMA_VERSION = 1


class CrossCheck(list):
    """The mismatches between counted figures and closed forms (an empty list when all agree)."""

    def __init__(self, mismatches: Iterable[Mismatch], checked: int) -> None:
        super().__init__(mismatches)
        self.checked = checked

    def summary(self) -> str:
        if not self:
            return f"cross-check: all {self.checked} layer calls with a closed form agree"
        lines = [f"cross-check: {len(self)} of {self.checked} figures disagree"]
        return "\n".join(lines + [f"  {m}" for m in self])

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class Timing:
    """Whole-model timing of the timed passes; per-layer times sit on the records."""

    device: str
    repeat: int
    warmup: int
    forward_ms: float          # median of plain forwards, no hooks
    hooked_forward_ms: float   # median of the timed (hooked) forwards
    layer_sum_ms: float        # sum of every call's self-time (its time minus its children's)
    peak_gflops: float | None = None
    peak_gbytes_per_s: float | None = None
    peak_source: str | None = None  # "given" or "measured" (see timing.measure_peak)

    @property
    def ridge(self) -> float | None:
        """Arithmetic intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        if not self.peak_gflops or not self.peak_gbytes_per_s:
            return None
        return self.peak_gflops / self.peak_gbytes_per_s


@dataclass(frozen=True)
class Report:
    """What ``inspect`` found. ``layers`` is one record per module call, in execution order."""

    model: str
    layers: tuple[LayerRecord, ...]
    total_params: int
    trainable_params: int
    buffer_elements: int
    param_bytes: int
    buffer_bytes: int
    total_macs: int | None
    input_shapes: tuple[tuple[int, ...], ...]
    device: str
    dtype: str
    mode: str
    peak_activation_bytes: int | None = None
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    uncalled: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = ()
    timing: Timing | None = None

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def total_flops(self) -> int | None:
        """2 x MACs: one multiply and one add per multiply-accumulate; elementwise work is not added."""
        return None if self.total_macs is None else 2 * self.total_macs

    @property
    def ran(self) -> bool:
        return self.total_macs is not None

    def layer(self, name: str, call: int = 0) -> LayerRecord:
        """The record of ``name``'s ``call``-th call ("" is the model itself)."""
        for record in self.layers:
            if record.name == name and record.call == call:
                return record
        raise KeyError(f"no call {call} of layer {name!r} in this report")

    def op_totals(self) -> dict[str, OpStat]:
        """Every aten op of the forward, summed over layers, largest MAC count first."""
        totals: dict[str, list[int]] = {}
        for record in self.layers:
            for stat in record.ops:
                entry = totals.setdefault(stat.op, [0, 0])
                entry[0] += stat.calls
                entry[1] += stat.macs
        ordered = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
        return {op: OpStat(op, calls, macs) for op, (calls, macs) in ordered}

    def crosscheck(self) -> CrossCheck:
        """Counted MACs (ops that ran inside each call) and parameters against each layer's closed form."""
        mismatches, checked = [], 0
        for r in self.layers:
            if r.expected_macs is not None:
                checked += 1
                if r.expected_macs != r.inclusive_macs:
                    mismatches.append(Mismatch(r.label, r.type, "macs", r.inclusive_macs, r.expected_macs))
            if r.expected_params is not None and r.call == 0 and r.expected_params != r.module_params:
                mismatches.append(Mismatch(r.label, r.type, "params", r.module_params, r.expected_params))
        return CrossCheck(mismatches, checked)

    def roofline(self) -> list[dict[str, Any]]:
        """Per leaf call: FLOPs, bytes moved, intensity, time, achieved GFLOP/s and, with a peak, the
        bound and the attainable roof (GFLOP/s) at that intensity. Empty without timing."""
        t = self.timing
        if t is None:
            return []
        rows = []
        for r in self.layers:
            if not r.is_leaf or r.time_ms is None:
                continue
            row: dict[str, Any] = {"layer": r.label, "type": r.type, "flops": r.inclusive_flops,
                                   "bytes": r.bytes_moved, "intensity": r.arithmetic_intensity,
                                   "time_ms": r.time_ms, "gflops": r.achieved_gflops, "bound": None,
                                   "roof_gflops": None}
            if t.ridge is not None and r.arithmetic_intensity is not None:
                row["bound"] = r.bound(t.peak_gflops, t.peak_gbytes_per_s)
                row["roof_gflops"] = min(t.peak_gflops, r.arithmetic_intensity * t.peak_gbytes_per_s)
            rows.append(row)
        return rows

    def table(self, depth: int | None = None, tablefmt: str = "simple", timing: bool | None = None) -> str:
        from inspector.render import render_report

        return render_report(self, depth=depth, tablefmt=tablefmt, timing=timing)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; see docs/json-schema.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "mode": self.mode,
            "input_shapes": [list(s) for s in self.input_shapes],
            "totals": {
                "params": self.total_params, "trainable_params": self.trainable_params,
                "frozen_params": self.frozen_params, "buffer_elements": self.buffer_elements,
                "param_bytes": self.param_bytes, "buffer_bytes": self.buffer_bytes,
                "macs": self.total_macs, "flops": self.total_flops,
                "peak_activation_bytes": self.peak_activation_bytes,
            },
            "layers": [r.to_dict() for r in self.layers],
            "uncounted_ops": dict(self.uncounted_ops),
            "uncalled_modules": [{"name": n, "params": p} for n, p in self.uncalled],
            "notes": list(self.notes),
            "timing": None if self.timing is None else {**vars(self.timing), "ridge": self.timing.ridge},
        }
