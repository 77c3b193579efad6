"""What serving a language model costs: a prefill over the prompt, then decode steps fed back with
the model's own KV cache (``inspect(model, ids, generate=N)``).

The prefill is the model's forward on the prompt with ``use_cache=True``; the cache object it
returns is fed back to ``N`` decode steps of one token each (the prompt's last token every time:
fixed ids, no sampling, nothing that depends on values, so it runs on meta too). Each pass is
counted like any forward, on the borrowed model. Encoder-decoders run their encoder once, in the
prefill; the decode steps reuse its output. What each step reads is measured, not estimated: the
parameters of the modules that ran (an embedding table read only by lookups: its rows looked
up; expert containers: the share of experts the tokens were routed to, see ``inspector.experts``)
and the cache's tensors as they are after the step.
"""
from __future__ import annotations

import contextlib
import inspect as pyinspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from inspector import build, experts
from inspector.borrow import counted_call
from inspector.collect import Collection, Collector, OpCounter
from inspector.errors import InputError, InspectorError, MetaDeviceError
from inspector.meta_values import Known
from inspector.options import Options
from inspector.report import Generation, Report, Run
from inspector.tree import ModelTree

#: ``fail(collector, counter, exc, phase)``: the one-line error naming the layer (failures.failure).
Fail = Callable[[Collector, OpCounter, Exception, str], InspectorError]
#: The cache's keyword, newest first (transformers >= 5.2 calls it ``cache``).
CACHE_ARGS = ("cache", "past_key_values")
DECODER_IDS = "decoder_input_ids"


def _parameters(model: nn.Module) -> dict[str, pyinspect.Parameter]:
    try:
        return dict(pyinspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def _named(model: nn.Module, args: tuple, kw: dict) -> dict[str, Any]:
    """Positional inputs by their names in ``forward``'s signature (so every pass passes keywords)."""
    if not args:
        return dict(kw)
    try:
        signature = pyinspect.signature(model.forward)
        bound = signature.bind(*args, **kw)
    except (TypeError, ValueError):
        raise InputError(f"generate= passes inputs by name: give {type(model).__name__} its inputs as a "
                         "dict ({'input_ids': ids})") from None
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is pyinspect.Parameter.VAR_POSITIONAL:
            raise InputError(f"generate= passes inputs by name; {type(model).__name__}.forward takes *{name}: "
                             "give its inputs as a dict")
        named.update(value if kind is pyinspect.Parameter.VAR_KEYWORD else {name: value})
    return named


class Plan:
    """How to feed this model: its cache keyword, where the prompt is, and the steps' inputs."""

    def __init__(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        params = _parameters(model)
        name = type(model).__name__
        self.cache_arg = next((a for a in CACHE_ARGS if a in params), None)
        if self.cache_arg is None or "use_cache" not in params:
            raise InputError(f"generate= needs a model whose forward takes use_cache and a KV cache "
                             f"({' or '.join(CACHE_ARGS)}), as transformers' causal and seq2seq LMs do; "
                             f"{name}.forward takes neither: inspect its ...ForCausalLM class")
        self.encoder_decoder = DECODER_IDS in params and bool(getattr(getattr(model, "config", None),
                                                                         "is_encoder_decoder", False))
        self.ids = DECODER_IDS if self.encoder_decoder else "input_ids"
        self.notes: list[str] = []
        if self.encoder_decoder and inputs.get(DECODER_IDS) is None and isinstance(inputs.get("input_ids"),
                                                                                  torch.Tensor):
            start = getattr(model.config, "decoder_start_token_id", None) or 0
            ids = inputs["input_ids"]
            inputs[DECODER_IDS] = torch.full((ids.shape[0], 1), start, dtype=ids.dtype, device=ids.device)
            self.notes.append(f"the decoder's prompt is its start token ({start}), as generate() begins")
        prompt = inputs.get(self.ids)
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.is_floating_point():
            raise InputError(f"generate= needs token ids {self.ids!r} of shape (batch, length); {name} got "
                             f"{'none' if prompt is None else tuple(getattr(prompt, 'shape', ()))}")
        if inputs.get("use_cache") is False:
            self.notes.append("use_cache=False was replaced by use_cache=True: decoding reads the cache")
        self.inputs = {**inputs, "use_cache": True}
        self.batch, self.prompt_len = prompt.shape
        self.token = prompt[:, -1:]  # fed back every step: fixed ids
        kept = {self.ids, "attention_mask", "decoder_attention_mask", "position_ids", "use_cache", "input_ids",
                "encoder_outputs", "logits_to_keep", *CACHE_ARGS}
        dropped = sorted(k for k, v in inputs.items() if v is not None and k not in kept)
        if dropped:
            self.notes.append(f"decode steps feed the token, the cache and the masks; not {', '.join(dropped)}")

    def step(self, i: int, cache: Any, encoded: Any) -> dict[str, Any]:
        """Inputs of decode step ``i`` (from 1): one token, the cache, masks one longer."""
        inputs = self.inputs
        step: dict[str, Any] = {self.ids: self.token, self.cache_arg: cache, "use_cache": True}
        mask = "decoder_attention_mask" if self.encoder_decoder else "attention_mask"
        if isinstance(inputs.get(mask), torch.Tensor):
            m = inputs[mask]
            step[mask] = torch.cat([m, m.new_ones((self.batch, i))], dim=-1)
        if isinstance(inputs.get("position_ids"), torch.Tensor):
            step["position_ids"] = torch.full((self.batch, 1), self.prompt_len + i - 1, dtype=torch.long,
                                              device=self.token.device)
        if self.encoder_decoder:
            step["encoder_outputs"] = (encoded,)
            if inputs.get("attention_mask") is not None:
                step["attention_mask"] = inputs["attention_mask"]
        return step


def _field(out: Any, *names: str) -> Any:
    for name in names:
        value = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if value is not None:
            return value
    return None


def cache_bytes(cache: Any) -> int:
    """Bytes of every tensor the cache holds (each storage once), walking its attributes."""
    seen: dict[int, int] = {}
    visited: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
            return
        if depth > 6 or id(obj) in visited or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            return
        visited.add(id(obj))
        if isinstance(obj, (list, tuple)):
            values: Sequence[Any] = obj
        elif isinstance(obj, dict):
            values = list(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            values = list(vars(obj).values())
        else:
            return
        for value in values:
            walk(value, depth + 1)

    walk(cache, 0)
    return sum(seen.values())


class WeightReads:
    """Parameter bytes a pass reads: each parameter of a module that ran, whole; a table read only
    by embedding lookups, the rows looked up; a fused expert container, the share its tokens were
    routed to (every (token, expert) pair reads its expert once, the container at most once)."""

    def __init__(self, tree: ModelTree, size: Callable[[torch.Tensor], int]) -> None:
        by_name = dict(tree.paths)
        holders: dict[int, list[nn.Module]] = {}
        for pname, p, _ in tree.param_paths:
            module = by_name.get(pname.rpartition(".")[0])
            if module is not None:
                holders.setdefault(id(p), []).append(module)
        self.tree, self.size = tree, size
        self.entries = [(p, size(p), holders.get(id(p), [])) for _, p, _ in tree.params]
        self.found = experts.containers(tree)
        self.container_of = {id(p): name for name, module in self.found for p in module.parameters()}

    def __call__(self, frames: Sequence[Any]) -> int:
        ran = {id(f.module) for f in frames}
        looked_up: dict[int, int] = {}
        for f in frames:
            if isinstance(f.module, nn.Embedding) and f.inputs:
                shape = f.inputs[0][0]
                looked_up[id(f.module)] = looked_up.get(id(f.module), 0) + int(torch.Size(shape).numel())
        shares = {c.name: c.read_share() for c in experts.measure(self.tree, frames, self.size, found=self.found) if c.tokens}
        total = 0
        for p, nbytes, modules in self.entries:
            used = [m for m in modules if id(m) in ran]
            if not used:
                continue
            container = self.container_of.get(id(p))
            if container in shares:
                total += round(nbytes * shares[container])
            elif all(isinstance(m, nn.Embedding) for m in used):
                rows = sum(looked_up.get(id(m), 0) for m in used)
                total += nbytes * min(rows, p.shape[0]) // p.shape[0]
            else:
                total += nbytes
        return total


@contextlib.contextmanager
def _mirrored(known: Known | None, opts: Options) -> Iterator[None]:
    """Tensors made here from known values (the steps' masks, positions and token) known on meta too."""
    if known is None:
        yield
        return
    with OpCounter([], opts.table, opts.convention, meta=True, count=False, known=known):
        yield


def _count(tree: ModelTree, state: dict, inputs: dict[str, Any], target: torch.device, opts: Options,
           guard: Any, fail: Fail, phase: str, known: Known | None = None) -> tuple[Any, Collection]:
    """One counted forward with keyword ``inputs``: its output and what it ran (``known``: the values
    known on meta, shared by the prefill and the decode steps)."""
    collector = Collector(tree)
    counter = OpCounter(collector.stack, opts.table, opts.convention, guard=guard, meta=target.type == "meta",
                        live=collector.live, known=known)
    out = counted_call(tree.model, state, (), inputs, collector, counter,
                       lambda exc: fail(collector, counter, exc, phase))
    return out, collector.collection(counter)


def _macs(collection: Collection) -> int:
    return sum(f.macs for f in collection.frames) + collection.outside.macs


def _encoder_macs(tree: ModelTree, report: Report) -> int | None:
    get = getattr(tree.model, "get_encoder", None)
    encoder = get() if callable(get) else None
    name = tree.first_names.get(id(encoder)) if encoder is not None else None
    if name is None:
        return None
    return sum(r.inclusive_macs for r in report.layers if r.name == name)


def _peak(opts: Options, target: torch.device, dtype: torch.dtype | None) -> tuple[Any, Any, Any, list[str]]:
    if opts.peak is None:
        return None, None, None, []
    if target.type == "meta" and isinstance(opts.peak, str):
        return None, None, None, ["no roofline bound: the meta device has no peak to measure; pass "
                                  "peak=(GFLOP/s, GB/s) (--peak) to get one"]
    from inspector.timing import resolve_peak

    gflops, gbytes, source = resolve_peak(opts.peak, target, dtype)
    return gflops, gbytes, source, []


def _decode(tree: ModelTree, plan: Plan, state: dict, cache: Any, encoded: Any, reads: WeightReads,
            target: torch.device, opts: Options, guard: Any, fail: Fail, known: Known | None = None
            ) -> tuple[list[tuple[int, int, int]], Collection | None, dict[str, Any], dict[str, int], dict[str, str]]:
    """The decode steps: per step (MACs, weight bytes read, cache bytes after it), the last step's
    collection and inputs, and the ops any step could not count."""
    steps: list[tuple[int, int, int]] = []
    last: Collection | None = None
    inputs: dict[str, Any] = {}
    uncounted: dict[str, int] = {}
    errors: dict[str, str] = {}
    for i in range(1, (opts.generate or 0) + 1):
        with _mirrored(known, opts):
            inputs = plan.step(i, cache, encoded)
        out, last = _count(tree, state, inputs, target, opts, guard, fail, f"decode step {i}", known)
        returned = _field(out, *CACHE_ARGS)
        cache = cache if returned is None else returned
        steps.append((_macs(last), reads(last.frames), cache_bytes(cache)))
        for op, calls in last.uncounted.items():
            uncounted[op] = uncounted.get(op, 0) + calls
        errors.update(last.formula_errors)
    return steps, last, inputs, uncounted, errors


def _step_report(tree: ModelTree, run: Run, last: Collection | None, inputs: dict[str, Any], opts: Options
                 ) -> Report | None:
    """The last decode step as a report of its own."""
    if last is None:
        return None
    tensors = [v for v in inputs.values() if isinstance(v, torch.Tensor)]
    step_run = replace(run, model=f"{run.model} decode step {opts.generate}", notes=(),
                       input_shapes=tuple(tuple(t.shape) for t in tensors),
                       input_dtypes=tuple(str(t.dtype).replace("torch.", "") for t in tensors))
    return build.report(tree, step_run, last, opts.dtype)


def _prefill_notes(plan: Plan, prefill_logits: int | None) -> list[str]:
    notes = list(plan.notes)
    if prefill_logits is not None and prefill_logits > 1:
        notes.append(f"the prefill computed logits at {prefill_logits} positions (the forward as given); "
                     "generate() keeps only the last: pass logits_to_keep=1 (--last-logits)")
    return notes


def generate(tree: ModelTree, run: Run, state: dict, args: tuple, kw: dict, target: torch.device, opts: Options,
             guard: Any, fail: Fail, kept: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
             routing: str = "balanced") -> Report:
    """The prefill's report (its layers) with a ``generation`` part: every decode step's MACs,
    reads and cache, and the last step as a report of its own. Runs inside the borrow. Ops a decode
    step could not count are the report's too (it is then incomplete). On meta, the values of the
    inputs (``kept``) and of what follows from them are known, as for ``inspect``, and routing made
    up there is checked by generating again with every token on the same experts."""
    model = tree.model
    known = None
    if target.type == "meta":
        known = Known(routing)
        for meta, value in kept:
            known.add(meta, value)
    with _mirrored(known, opts):
        plan = Plan(model, _named(model, args, kw))
    reads = WeightReads(tree, build.sizer(opts.dtype))
    out, prefill = _count(tree, state, plan.inputs, target, opts, guard, fail, "the prefill", known)
    cache = _field(out, *CACHE_ARGS)
    if cache is None:
        raise InputError(f"{type(model).__name__} returned no KV cache with use_cache=True: it cannot decode "
                         "from a cache (inspect its ...ForCausalLM class)")
    logits = _field(out, "logits")
    prefill_logits = logits.shape[-2] if isinstance(logits, torch.Tensor) and logits.dim() >= 2 else None
    encoded = _field(out, "encoder_last_hidden_state")
    if plan.encoder_decoder and encoded is None:
        raise InputError(f"{type(model).__name__} returned no encoder_last_hidden_state: decode steps reuse the "
                         "encoder's output (return_dict must stay on)")
    report = build.report(tree, run, prefill, opts.dtype)
    weight_bytes, prefill_cache = reads(prefill.frames), cache_bytes(cache)
    cross = cache_bytes(getattr(cache, "cross_attention_cache", None))
    steps, last, step_inputs, uncounted, errors = _decode(tree, plan, state, cache, encoded, reads, target, opts,
                                                          guard, fail, known)
    gflops, gbytes, source, peak_notes = _peak(opts, target, opts.dtype)
    generation = Generation(
        batch=plan.batch, prompt_len=plan.prompt_len, new_tokens=opts.generate or 0,
        prefill_macs=report.total_macs or 0, prefill_logits=prefill_logits, prefill_weight_bytes=weight_bytes,
        prefill_cache_bytes=prefill_cache, decode_macs=tuple(s[0] for s in steps),
        cache_lens=tuple(plan.prompt_len + i for i in range(1, len(steps) + 1)),
        decode_weight_bytes=tuple(s[1] for s in steps), cache_bytes=tuple(s[2] for s in steps),
        cross_cache_bytes=cross, encoder_macs=_encoder_macs(tree, report) if plan.encoder_decoder else None,
        encoder_len=plan.inputs["input_ids"].shape[-1] if plan.encoder_decoder else None,
        decode_step=_step_report(tree, run, last, step_inputs, opts), peak_gflops=gflops, peak_gbytes_per_s=gbytes,
        peak_source=source, notes=tuple(_prefill_notes(plan, prefill_logits) + peak_notes))
    if known is not None and known.made_up and routing == "balanced":
        generation = replace(generation, notes=(*generation.notes, _routing_checked(
            generation, generate(tree, run, state, args, kw, target, opts, guard, fail, kept, "skewed"),
            known.decisions)))
    merged = dict(report.uncounted_ops)
    for op, calls in uncounted.items():
        merged[op] = merged.get(op, 0) + calls
    return replace(report, generation=generation, uncounted_ops=merged,
                   formula_errors={**errors, **report.formula_errors})


def _routing_checked(balanced: Generation, other: Report, decisions: int) -> str:
    """The note of a generation whose routing was made up on meta, checked against one generated
    with every token on the same experts; a MetaDeviceError where the counts differ."""
    def macs(g: Generation | None) -> tuple:
        return (None, None) if g is None else (g.prefill_macs, g.decode_macs)

    if macs(balanced) != macs(other.generation):
        raise MetaDeviceError(
            f"the model routes by values computed from the weights ({decisions} top-k/arg-max choice(s)), which the "
            "meta device does not hold, and what generation costs depends on the routing: inspect on device='cpu' "
            "(or cuda) instead")
    return (f"{decisions} routing choice(s) made up on meta (every token meeting k experts evenly); the counts are "
            "the same with every token on the same experts (generated again to check)")
