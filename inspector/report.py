"""The report: totals, per-call records and what could not be counted. Rendering lives in ``formats``;
nothing here recomputes counts. Per-call records are built on first access (``layers``)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from inspector.build import RecordBuilder, Run
from inspector.op_formulas import MATMUL_LIKE
from inspector.records import LayerRecord, Mismatch, OpStat, Uncounted

SCHEMA_VERSION = 2


class CrossCheck(list):
    """The problems found: counted figures that disagree with closed forms (:class:`Mismatch`), and
    ops that could not be counted (:class:`Uncounted`). An empty list when all is well."""

    def __init__(self, problems: Iterable[Mismatch | Uncounted], checked: int) -> None:
        super().__init__(problems)
        self.checked = checked

    def summary(self) -> str:
        if not self:
            return f"cross-check: all {self.checked} layer calls with a closed form agree; every op counted"
        lines = [f"cross-check: {len(self)} problem(s) ({self.checked} layer calls with a closed form)"]
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

    @property
    def distortion(self) -> float | None:
        """How much the hooks slowed the timed passes: hooked / plain forward - 1."""
        return self.hooked_forward_ms / self.forward_ms - 1 if self.forward_ms else None


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of one training step (forward, backward, optimizer step), each measured, not estimated."""

    parameters: int        # the parameters, as the step holds them
    gradients: int         # .grad of every parameter that got one (trainable ones only)
    optimizer_state: int   # tensors the optimizer keeps after its step (momenta, Adam moments, steps)
    activations: int       # tensors autograd saved for backward (each storage once, parameters excluded)
    peak: int              # the step's highest live bytes: parameters + buffers + inputs + every live tensor
    inputs: int = 0
    buffers: int = 0
    peak_phase: str = ""   # "forward", "backward" or "optimizer"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class Training:
    """The training step's settings and results beyond the per-call backward figures."""

    loss: str
    optimizer: str | None
    total_backward_macs: int
    total_backward_flops: int
    memory: TrainingMemory
    autocast: str | None = None


@dataclass(frozen=True)
class Report:
    """What ``inspect`` found. ``layers`` is one record per module call, in execution order, built
    from the model when first read (read it before changing the model; the totals are fixed at once)."""

    run: Run
    total_params: int
    trainable_params: int
    buffer_elements: int
    param_bytes: int
    buffer_bytes: int
    total_macs: int | None
    elementwise_flops: int | None = None
    peak_activation_bytes: int | None = None
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    formula_errors: dict[str, str] = field(default_factory=dict)
    timing: Timing | None = None
    training: Training | None = None
    leaf_calls: int = 0  # calls with no call inside them (layers, as a table's deepest rows)
    builder: RecordBuilder | None = field(default=None, repr=False, compare=False)

    # --- the run -------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.run.model

    @property
    def device(self) -> str:
        return self.run.device

    @property
    def dtype(self) -> str:
        return self.run.dtype

    @property
    def mode(self) -> str:
        return self.run.mode

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        return self.run.input_shapes

    @property
    def notes(self) -> tuple[str, ...]:
        """Where the input came from, what moved, and (records being built to know it) which closed
        forms could not be checked."""
        self._built  # noqa: B018 - building the records is what finds the closed-form notes
        extra = tuple(self.builder.notes) if self.builder is not None else ()
        return self.run.notes + extra

    # --- totals --------------------------------------------------------------------------------------

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def total_flops(self) -> int | None:
        """2 x MACs, plus elementwise work under ``flops="all"`` (see inspector.conventions)."""
        if self.total_macs is None:
            return None
        return 2 * self.total_macs + (self.elementwise_flops or 0)

    @property
    def total_backward_macs(self) -> int | None:
        return None if self.training is None else self.training.total_backward_macs

    @property
    def training_memory(self) -> TrainingMemory | None:
        return None if self.training is None else self.training.memory

    @property
    def ran(self) -> bool:
        return self.total_macs is not None

    @property
    def complete(self) -> bool:
        """False when MACs were not counted (no input), or some op that may do matmul-like work had no
        formula (a matmul-like name, or a custom operator), or a formula failed: totals are then low."""
        return self.ran and not self.uncounted_ops and not self.formula_errors

    # --- per call ------------------------------------------------------------------------------------

    @cached_property
    def _built(self) -> tuple[tuple[LayerRecord, ...], tuple[tuple[str, int], ...]]:
        return self.builder.build() if self.builder is not None else ((), ())

    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        return self._built[0]

    @property
    def uncalled(self) -> tuple[tuple[str, int], ...]:
        """Top-most modules that never ran as modules, with their parameter counts."""
        return self._built[1]

    def layer(self, name: str, call: int = 0) -> LayerRecord:
        """The record of ``name``'s ``call``-th call ("" or "(model)" is the model itself)."""
        name = "" if name == "(model)" else name
        for record in self.layers:
            if record.name == name and record.call == call:
                return record
        known = sorted({r.name for r in self.layers if r.name})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise KeyError(f"no call {call} of layer {name!r} in this report{hint}")

    def top(self, k: int = 10, by: str = "macs") -> list[LayerRecord]:
        """The ``k`` calls doing the most of ``by`` themselves (``macs``, ``flops``, ``params``,
        ``time``, ``backward_macs``, ``saved_bytes``); ``table(top=k, depth=d)`` ranks the rows shown
        at a depth instead."""
        from inspector.render import top_rows

        return [row.record for row in top_rows(self, k, by)]

    def op_totals(self) -> dict[str, OpStat]:
        """Every aten op of the forward, summed over layers, largest MAC count first."""
        return _op_totals(r.ops for r in self.layers)

    def backward_op_totals(self) -> dict[str, OpStat]:
        return _op_totals(r.backward_ops for r in self.layers)

    def crosscheck(self) -> CrossCheck:
        """Counted MACs (ops that ran inside each call, less pre-hook and parametrization work) and
        parameters against each layer's closed form; backward MACs too after a training step; plus
        every op that could not be counted."""
        problems: list[Mismatch | Uncounted] = []
        checked = 0
        for r in self.layers:
            if r.expected_macs is not None:
                checked += 1
                own = r.inclusive_macs - r.hook_macs
                if r.expected_macs != own:
                    problems.append(Mismatch(r.label, r.type, "macs", own, r.expected_macs))
            if r.expected_params is not None and r.call == 0 and r.expected_params != r.module_params:
                problems.append(Mismatch(r.label, r.type, "params", r.module_params, r.expected_params))
            if r.expected_backward_macs is not None and r.inclusive_backward_macs is not None:
                own_bw = r.inclusive_backward_macs - (r.recompute_macs or 0)  # recomputation is forward work
                if r.expected_backward_macs != own_bw:
                    problems.append(Mismatch(r.label, r.type, "backward_macs", own_bw, r.expected_backward_macs))
        if not self.ran:
            problems.append(Uncounted("(the forward)", 0, "not run: no input was given or could be inferred"))
        for op, calls in self.uncounted_ops.items():
            reason = "matmul-like op with no formula" if MATMUL_LIKE.search(op) else \
                "custom operator with no formula (its work is unknown; give it one with op_formula)"
            problems.append(Uncounted(op, calls, reason))
        for op, error in self.formula_errors.items():
            problems.append(Uncounted(op, 1, f"its formula failed ({error})"))
        return CrossCheck(problems, checked)

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
                row["bound"] = r.bound(t.peak_gflops, t.peak_gbytes_per_s)  # type: ignore[arg-type]
                row["roof_gflops"] = min(t.peak_gflops, r.arithmetic_intensity * t.peak_gbytes_per_s)  # type: ignore
            rows.append(row)
        return rows

    # --- rendering (see inspector.formats) -------------------------------------------------------------

    def summary_line(self) -> str:
        """One line: "resnet50: 25.6 M params, 4.09 GMACs, 8.18 GFLOPs, 102 MB"."""
        from inspector.render import summary_line

        return summary_line(self)

    def table(self, depth: int | None = None, tablefmt: str = "simple", *, columns: Iterable[str] | None = None,
              exact: bool = False, timing: bool | None = None, top: int | None = None, by: str = "macs") -> str:
        """The per-layer table: ``depth`` levels of the call tree (or the ``top`` calls by ``by``),
        ``columns`` from ``inspector.render.COLUMNS`` (like torchinfo's col_names), readable units
        unless ``exact``."""
        from inspector.render import render_report

        return render_report(self, depth=depth, tablefmt=tablefmt, columns=columns, exact=exact, timing=timing,
                             top=top, by=by)

    def render(self, fmt: str = "table", **options: Any) -> str:
        """The report in an output format: ``table``, ``markdown``, ``json``, ``csv``, ``html``."""
        from inspector.formats import render

        return render(self, fmt, **options)

    def to_dict(self, depth: int | None = None) -> dict[str, Any]:
        """JSON-serialisable form (docs/json-schema.md); ``depth`` keeps calls up to that depth, each
        with its hidden descendants' figures folded in."""
        from inspector.formats import report_dict

        return report_dict(self, depth)

    def to_csv(self, depth: int | None = None) -> str:
        return self.render("csv", depth=depth)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        calls = f", {len(self.layers)} calls" if self.builder is not None or self._built[0] else ""
        return f"<Report {self.summary_line()}{calls}>"

    def _repr_html_(self) -> str:
        return self.render("html")


def _op_totals(groups: Iterable[tuple[OpStat, ...]]) -> dict[str, OpStat]:
    totals: dict[str, list[int]] = {}
    for ops in groups:
        for stat in ops:
            entry = totals.setdefault(stat.op, [0, 0])
            entry[0] += stat.calls
            entry[1] += stat.macs
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return {op: OpStat(op, calls, macs) for op, (calls, macs) in ordered}
