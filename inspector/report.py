"""What ``inspect`` returns: plain, frozen data, complete when ``inspect`` returns.

A :class:`Report` holds no module, no tensor and no builder: it can be pickled, sent to another
process and kept after the model is gone. Its queries (``layer``, ``top``, ``crosscheck``,
``total``, ``by_type``) work on the records alone; rendering goes through the registry of output
formats (``inspector.output``), a pure function of this data.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspector import output
from inspector.figures import Figure, all_figures, fold, lookup
from inspector.op_classes import matmul_like
from inspector.records import LayerRecord, Mismatch, OpStat, Uncounted
from inspector.rows import ByType, Row, ranked_figure, rows, top_rows
from inspector.units import human, size

SCHEMA_VERSION = 3
_SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv", ".md": "markdown"}


@dataclass(frozen=True)
class Run:
    """What was run, as a report states it."""

    model: str
    device: str
    dtype: str
    mode: str
    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtypes: tuple[str, ...] = ()
    flops: str = "matmul"
    notes: tuple[str, ...] = ()
    backward: bool = False


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
    """Whole-model timing; per-call times are the records' ``busy_ms``, ``idle_ms``, ``host_ms`` and
    ``time_ms`` (busy + idle), from the profiled pass, which add up to ``profiled_ms`` exactly."""

    device: str
    repeat: int
    warmup: int
    forward_ms: float                 # plain forwards (no hooks, no profiler; synchronised on a GPU), middle half's mean
    profiled_ms: float | None = None  # the profiled pass: the model's call to its return (or last activity's end)
    busy_ms: float | None = None      # the device busy within it (kernels on a GPU; top-level ops on a CPU)
    idle_ms: float | None = None      # the device waiting for the host within it
    peak_gflops: float | None = None
    peak_gbytes_per_s: float | None = None
    peak_source: str | None = None    # "given", "measured" or "datasheet: <device>, <precision>"
    note: str | None = None           # why per-call times are missing, when they are

    @property
    def ridge(self) -> float | None:
        """Arithmetic intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        if not self.peak_gflops or not self.peak_gbytes_per_s:
            return None
        return self.peak_gflops / self.peak_gbytes_per_s

    @property
    def overhead(self) -> float | None:
        """What measuring cost: profiled pass / plain forward - 1."""
        return self.profiled_ms / self.forward_ms - 1 if self.profiled_ms and self.forward_ms else None

    @property
    def launch_bound(self) -> bool | None:
        """The device sat idle more than half of the plain forward, waiting for the host: its busy time
        (the profiled pass's) is under half the plain forward's. Not the profiled pass's own idle time,
        which holds the measuring's cost too (hooks, ranges, the profiler's bookkeeping)."""
        return None if self.busy_ms is None or not self.forward_ms else self.busy_ms < self.forward_ms / 2


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


#: Entries of ``uncounted_ops`` that are no op: what went uncounted, and why.
OTHER_THREADS = "(calls on other threads)"
NOT_OPS = {OTHER_THREADS: "calls of the model's layers on threads this forward did not start or submit work to "
                          "(another user of the model meanwhile, or a worker it fed through a queue): not counted"}


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
class Experts:
    """Mixture-of-experts (``inspector.experts``): what one token's forward touches, measured from the
    MACs the expert containers did per token that entered them."""

    containers: tuple[str, ...]    # the expert containers that ran (one per MoE layer)
    expert_params: int             # every expert's parameters, in those containers
    active_expert_params: int      # of them, those one token used (k of E experts per layer)
    active_params: int             # everything but the experts a token was not routed to
    shares: tuple[float, ...] = ()  # per container: expert weights one token used, as a share (k / E)
    tokens: int = 0                # tokens that entered the experts in this pass
    macs_per_token: float | None = None  # the pass's MACs / tokens

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "containers": list(self.containers), "shares": list(self.shares)}


@dataclass(frozen=True)
class Generation:
    """What serving costs (``inspector.generation``): one prefill over the prompt with the model's own
    KV cache, then ``new_tokens`` decode steps of one token each fed back with that cache. Decode
    step ``i`` (from 1) attends over ``cache_lens[i-1] = prompt_len + i`` keys, its own included.
    Bytes are as the pass held them; the roofline bounds need a peak (GFLOP/s, GB/s)."""

    batch: int
    prompt_len: int               # tokens of the prompt (the decoder's prompt for encoder-decoders)
    new_tokens: int
    prefill_macs: int
    prefill_logits: int | None    # positions whose logits the prefill computed (prompt_len, or 1)
    prefill_weight_bytes: int     # parameter bytes the prefill read
    prefill_cache_bytes: int      # the KV cache after the prefill
    decode_macs: tuple[int, ...] = ()          # one per decode step
    cache_lens: tuple[int, ...] = ()           # keys each step attends to (the cache with its new token)
    decode_weight_bytes: tuple[int, ...] = ()  # parameter bytes each step read
    cache_bytes: tuple[int, ...] = ()          # the KV cache after each step (what its attention reads)
    cross_cache_bytes: int = 0    # the part of the cache that does not grow (cross-attention keys)
    encoder_macs: int | None = None  # encoder-decoder: the encoder's part of the prefill, run once
    encoder_len: int | None = None
    decode_step: Report | None = None  # the last decode step, layer by layer
    peak_gflops: float | None = None
    peak_gbytes_per_s: float | None = None
    peak_source: str | None = None  # "given" or "measured"
    notes: tuple[str, ...] = ()

    @property
    def kv_cache_bytes(self) -> int:
        """The KV cache after the last step."""
        return self.cache_bytes[-1] if self.cache_bytes else self.prefill_cache_bytes

    @property
    def kv_cache_bytes_per_token(self) -> float:
        """What one token of one sequence adds to the cache (the growing part over its tokens)."""
        tokens = self.batch * (self.prompt_len + self.new_tokens)
        return (self.kv_cache_bytes - self.cross_cache_bytes) / tokens if tokens else 0.0

    @property
    def decode_read_bytes(self) -> tuple[int, ...]:
        """Bytes each decode step must read: the weights it uses and the whole cache."""
        return tuple(w + c for w, c in zip(self.decode_weight_bytes, self.cache_bytes))

    @property
    def decode_total_macs(self) -> int:
        return sum(self.decode_macs)

    def _seconds(self, macs: int, nbytes: int) -> float | None:
        if not self.peak_gflops or not self.peak_gbytes_per_s:
            return None
        return max(2 * macs / (self.peak_gflops * 1e9), nbytes / (self.peak_gbytes_per_s * 1e9))

    @property
    def prefill_seconds(self) -> float | None:
        """Roofline bound: the prefill cannot take less than its FLOPs at peak compute or its bytes
        (weights read, cache written) at peak bandwidth, whichever is longer."""
        return self._seconds(self.prefill_macs, self.prefill_weight_bytes + self.prefill_cache_bytes)

    @property
    def decode_seconds(self) -> tuple[float, ...] | None:
        """Roofline bound of each decode step (FLOPs at peak, or its reads at peak bandwidth)."""
        if not self.peak_gflops or not self.peak_gbytes_per_s:
            return None
        return tuple(self._seconds(m, b) for m, b in zip(self.decode_macs, self.decode_read_bytes))  # type: ignore

    @property
    def prefill_tokens(self) -> int:
        """Tokens the prefill took in: the prompt of every sequence (and the encoder's input)."""
        return self.batch * (self.prompt_len + (self.encoder_len or 0))

    @property
    def prefill_tokens_per_s(self) -> float | None:
        """Upper bound on prompt tokens per second (all sequences of the batch, encoder input included)."""
        t = self.prefill_seconds
        return self.prefill_tokens / t if t else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Upper bound on generated tokens per second over the decode steps (all sequences)."""
        steps = self.decode_seconds
        return self.batch * len(steps) / sum(steps) if steps else None

    def bound(self, macs: int, nbytes: int) -> str | None:
        """"compute" or "memory": which roof a pass of ``macs`` reading ``nbytes`` meets first."""
        if not self.peak_gflops or not self.peak_gbytes_per_s:
            return None
        return "compute" if 2 * macs / self.peak_gflops > nbytes / self.peak_gbytes_per_s else "memory"

    def to_dict(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items() if k != "decode_step"}
        out.update(prefill_tokens=self.prefill_tokens, kv_cache_bytes=self.kv_cache_bytes, kv_cache_bytes_per_token=self.kv_cache_bytes_per_token,
                   decode_read_bytes=list(self.decode_read_bytes), prefill_tokens_per_s=self.prefill_tokens_per_s,
                   decode_tokens_per_s=self.decode_tokens_per_s,
                   decode_step=None if self.decode_step is None else self.decode_step.to_dict())
        return out


@dataclass(frozen=True)
class Report:
    """What ``inspect`` found: the run, the totals and one record per module call (execution order)."""

    KIND = "report"

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
    layers: tuple[LayerRecord, ...] = ()
    uncalled: tuple[tuple[str, int], ...] = ()  # top-most modules that never ran, with their parameters
    experts: Experts | None = None        # Mixture-of-experts models: active against total parameters
    generation: Generation | None = None  # inspect(..., generate=N): prefill (these layers) and decode

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
        """Where the input came from, what moved, and which closed forms could not be checked."""
        return self.run.notes

    # --- totals --------------------------------------------------------------------------------------

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def active_params(self) -> int:
        """Parameters one token's forward touches: all but the experts it was not routed to (the
        total for a model without experts)."""
        return self.total_params if self.experts is None else self.experts.active_params

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

    @property
    def achieved_gflops(self) -> float | None:
        """FLOPs of the forward / the plain forward's time, in GFLOP/s; None without timing."""
        t = self.timing
        if t is None or not t.forward_ms or self.total_flops is None:
            return None
        return self.total_flops / (t.forward_ms * 1e-3) / 1e9

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved GFLOP/s over the device's peak for the dtype (FLOPs as
        counted: 2 x MACs, attention's full score matrix, no recomputation)."""
        achieved, t = self.achieved_gflops, self.timing
        return None if achieved is None or not t.peak_gflops else achieved / t.peak_gflops

    def measured(self, part: str) -> bool:
        """Whether the part of the report that measures a figure ran (see ``inspector.figures``)."""
        return {"": True, "forward": self.ran, "training": self.training is not None,
                "timing": self.timing is not None}[part]

    def total(self, name: str) -> Any:
        """The total of any per-call figure (the sum of every call's own value; None if unmeasured)."""
        fig = lookup(name)
        if fig is None:
            raise ValueError(f"no figure {name!r}; figures: {', '.join(f.name for f in all_figures())}")
        return fold(r.own for r in self.layers).get(fig.name)

    # --- per call ------------------------------------------------------------------------------------

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

    def figure(self, by: str) -> Figure:
        """The figure ``by`` names, checked to be one this report measured."""
        fig = ranked_figure(by)
        if not self.measured(fig.needs):
            need = {"timing": "per-layer times: inspect with timing=True (--timing)",
                    "training": "a training step: inspect with backward=True (--backward)",
                    "forward": "a forward pass: give an input"}[fig.needs]
            raise ValueError(f"ranking by {by} needs {need}")
        return fig

    def top_rows(self, k: int, by: str = "macs", depth: int | None = None) -> list[Row]:
        """The ``k`` rows shown at ``depth`` doing the most of ``by`` (see ``inspector.rows``)."""
        return top_rows(self.layers, k, self.figure(by), depth)

    def top(self, k: int = 10, by: str = "macs") -> list[LayerRecord]:
        """The ``k`` calls doing the most of ``by`` themselves (any ranked figure: ``macs``, ``flops``,
        ``params``, ``time_ms``, ``backward_macs``, ``saved_bytes``...); ``table(top=k, depth=d)``
        ranks the rows shown at a depth instead."""
        return [row.record for row in self.top_rows(k, by)]

    def by_type(self) -> ByType:
        """Calls and figures summed per layer type, largest MACs first (DeepSpeed's aggregated
        profile): ``report.by_type()["Conv2d"].macs``; ``print(report.by_type())`` for the table."""
        return ByType.of(self)

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
                own = r.inclusive_macs - r.inclusive_hook_macs
                if r.expected_macs != own:
                    problems.append(Mismatch(r.label, r.type, "macs", own, r.expected_macs))
            if r.expected_params is not None and r.call == 0 and r.expected_params != r.module_params:
                problems.append(Mismatch(r.label, r.type, "params", r.module_params, r.expected_params))
            if r.expected_backward_macs is not None and r.inclusive_backward_macs is not None:
                own_bw = r.inclusive_backward_macs - (r.inclusive_recompute_macs or 0)  # recomputation: forward work
                if r.expected_backward_macs != own_bw:
                    problems.append(Mismatch(r.label, r.type, "backward_macs", own_bw, r.expected_backward_macs))
        if not self.ran:
            problems.append(Uncounted("(the forward)", 0, "not run: no input was given or could be inferred"))
        for op, calls in self.uncounted_ops.items():
            reason = NOT_OPS.get(op) or ("matmul-like op with no formula" if matmul_like(op) else
                                         "custom operator with no formula (its work is unknown; give it one with "
                                         "op_formula)")
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
            if not r.is_leaf or r.inclusive_time_ms is None:
                continue
            row: dict[str, Any] = {"layer": r.label, "type": r.type, "flops": r.inclusive_flops,
                                   "bytes": r.bytes_moved, "intensity": r.arithmetic_intensity,
                                   "time_ms": r.inclusive_time_ms, "gflops": r.achieved_gflops, "bound": None,
                                   "roof_gflops": None}
            if t.ridge is not None and r.arithmetic_intensity is not None:
                row["bound"] = r.bound(t.peak_gflops, t.peak_gbytes_per_s)  # type: ignore[arg-type]
                row["roof_gflops"] = min(t.peak_gflops, r.arithmetic_intensity * t.peak_gbytes_per_s)  # type: ignore
            rows.append(row)
        return rows

    # --- rendering (a pure function of the data, through inspector.output) --------------------------

    def summary_line(self) -> str:
        """One line: "resnet50: 25.6 M params, 4.09 GMACs, 8.18 GFLOPs, 102 MB"."""
        parts = [f"{human(self.total_params)} params"]
        if self.experts is not None:
            parts.append(f"{human(self.active_params)} active")
        if self.ran:
            parts += [f"{human(self.total_macs, 'MACs')}", f"{human(self.total_flops, 'FLOPs')}"]
        if self.training is not None:
            parts.append(f"backward {human(self.total_backward_macs, 'MACs')}")
        parts.append(size(self.param_bytes))
        flag = "" if self.complete else (" (incomplete: uncounted ops)" if self.ran else " (not run: parameters only)")
        return f"{self.model}: " + ", ".join(parts) + flag

    def render(self, fmt: str = "table", **options: Any) -> str:
        """The report in an output format: ``table``, ``markdown``, ``json``, ``csv``, ``html``."""
        return output.render(self, fmt, **options)

    def table(self, depth: int | None = None, tablefmt: str = "simple", **options: Any) -> str:
        """The per-layer table: ``depth`` levels of the call tree (or the ``top`` calls by ``by``),
        ``columns`` (like torchinfo's col_names), readable units unless ``exact``."""
        return output.render(self, "table", depth=depth, tablefmt=tablefmt, **options)

    def shown_rows(self, depth: int | None = None, top: int | None = None, by: str = "macs") -> list[Row]:
        """The rows every format shows: the call tree to ``depth``, or its ``top`` rows by ``by``."""
        return self.top_rows(top, by, depth) if top is not None else rows(self.layers, depth)

    def to_dict(self, depth: int | None = None, top: int | None = None, by: str = "macs") -> dict[str, Any]:
        """JSON-serialisable form (docs/json-schema.md): every field as exact numbers; ``depth`` keeps
        calls up to that depth (``top`` the calls doing the most of ``by``), each with its hidden
        descendants' figures folded into its row."""
        shown = self.shown_rows(depth, top, by)
        own = {row.record.index: row for row in shown if row.kind == "own"}
        layers = []
        for row in shown:
            if row.kind == "own":
                continue
            entry = row.record.to_dict()
            summed = own.get(row.record.index) if row.kind == "container" else row
            entry["row_kind"] = row.kind
            entry["folded_params"] = summed.params if summed is not None else 0
            entry["folded_macs"] = summed.macs if summed is not None else 0
            layers.append(entry)
        t, tr = self.timing, self.training
        return {
            "schema_version": SCHEMA_VERSION, "model": self.model, "summary": self.summary_line(),
            "device": self.device, "dtype": self.dtype, "mode": self.mode, "flops_convention": self.run.flops,
            "input_shapes": [list(s) for s in self.input_shapes], "input_dtypes": list(self.run.input_dtypes),
            "depth": depth, "top": None if top is None else {"k": top, "by": by}, "complete": self.complete,
            "totals": {
                "params": self.total_params, "trainable_params": self.trainable_params,
                "frozen_params": self.frozen_params, "buffer_elements": self.buffer_elements,
                "param_bytes": self.param_bytes, "buffer_bytes": self.buffer_bytes, "macs": self.total_macs,
                "flops": self.total_flops, "elementwise_flops": self.elementwise_flops,
                "peak_activation_bytes": self.peak_activation_bytes, "backward_macs": self.total_backward_macs,
            },
            "figure_totals": fold(r.own for r in self.layers),
            "layers": layers,
            "uncounted_ops": dict(self.uncounted_ops),
            "formula_errors": dict(self.formula_errors),
            "uncalled_modules": [{"name": n, "params": p} for n, p in self.uncalled],
            "notes": list(self.notes),
            "timing": None if t is None else {**vars(t), "ridge": t.ridge, "overhead": t.overhead,
                                              "launch_bound": t.launch_bound, "achieved_gflops": self.achieved_gflops,
                                              "mfu": self.mfu},
            "training": None if tr is None else {
                "loss": tr.loss, "optimizer": tr.optimizer, "autocast": tr.autocast,
                "backward_macs": tr.total_backward_macs, "backward_flops": tr.total_backward_flops,
                "memory": tr.memory.to_dict()},
            "experts": None if self.experts is None else self.experts.to_dict(),
            "generation": None if self.generation is None else self.generation.to_dict(),
        }

    def save(self, path: str | Path, fmt: str | None = None, **options: Any) -> Path:
        """Write the report to ``path`` in ``fmt`` (default: from the suffix: .html the page, .json,
        .csv, .md markdown, anything else the text table); returns the path."""
        path = Path(path)
        fmt = fmt or _SUFFIX_FORMATS.get(path.suffix.lower(), "table")
        text = self.render(fmt, **options)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        return path

    def to_csv(self, depth: int | None = None) -> str:
        return self.render("csv", depth=depth)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        calls = f", {len(self.layers)} calls" if self.ran else ""
        return f"<Report {self.summary_line()}{calls}>"

    def _repr_html_(self) -> str:
        """The page, as an element a notebook embeds, folded to a useful depth."""
        return self.render("html", fragment=True)


def _op_totals(groups: Iterable[tuple[OpStat, ...]]) -> dict[str, OpStat]:
    totals: dict[str, list[int]] = {}
    for ops in groups:
        for stat in ops:
            entry = totals.setdefault(stat.op, [0, 0])
            entry[0] += stat.calls
            entry[1] += stat.macs
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return {op: OpStat(op, calls, macs) for op, (calls, macs) in ordered}
