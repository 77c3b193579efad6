"""Every timm model and every transformers architecture, counted on the meta device and checked against
references nobody here wrote: the model's own parameter count and torch's FlopCounterMode.

    .venv/bin/python benchmarks/zoo_sweep.py timm [--out benchmarks/zoo-timm.jsonl] [--only a,b] [--limit N]
    .venv/bin/python benchmarks/zoo_sweep.py hf   [--out benchmarks/zoo-hf.jsonl] [--cpu-max-params 3e8]
    .venv/bin/python benchmarks/zoo_sweep.py summary benchmarks/zoo-timm.jsonl benchmarks/zoo-hf.jsonl

Not part of the test run (hours on two cores). Resumable: results go to a JSON-lines file, one line per
model, written as each model finishes; a rerun skips the models already there. Each chunk of models
runs in a child process (``--chunk``), so a crash or a hang (``--timeout`` seconds a model) costs one
model, recorded as such.

Per model: built on meta (timm: ``create_model(pretrained=False)``, the published input size, batch 1;
transformers: ``AutoModel`` from the default config with every layer count capped at 2, an input
made from ``main_input_name``). Then

- ``params``: inspector's total against ``sum(p.numel() for p in model.parameters())``;
- ``macs``: inspector's total against FlopCounterMode's FLOPs / 2 on the same meta forward. Where they
  differ, the difference is put on the ops FlopCounterMode has no formula for (its known gaps, e.g.
  ``aten._grouped_mm``, the CPU's SDPA kernel); what that does not explain is a disagreement. Where
  FlopCounterMode cannot run on meta (a mask check, routing, ``_grouped_mm`` in float32), it runs
  above a mode that only supplies inspector's known values and fast meta kernels, counting nothing;
- ``crosscheck()``: empty means no closed form disagrees and every op was counted (``complete``);
- transformers, ``--cpu-max-params``: the same model on the CPU (random weights) when it is that
  small, inspector's totals there against the meta ones.

A model that fails says where: its build, its input, its plain forward (on meta and on the CPU),
or inspect.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, flop_registry  # noqa: E402

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from inspector import inspect, meta_fast, meta_values  # noqa: E402
from inspector.errors import first_line  # noqa: E402

_FCM_OPS = {str(packet) for packet in flop_registry}
LAYER_ATTRS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
               "num_encoder_layers", "num_decoder_layers", "num_text_layers", "num_vision_layers", "depth",
               "text_num_hidden_layers", "vision_num_hidden_layers", "num_audio_layers")


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def raise_timeout(*_):
        raise Timeout(f"over {seconds} s")
    previous = signal.signal(signal.SIGALRM, raise_timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- the two zoos ----------------------------------------------------------------------------------

def timm_names() -> list[str]:
    import timm
    return list(timm.list_models())


def timm_build(name: str, device: str) -> tuple[Any, tuple, dict]:
    import timm
    with torch.device(device):
        model = timm.create_model(name, pretrained=False).eval()
    size = (model.pretrained_cfg or {}).get("input_size", (3, 224, 224))
    return model, (torch.randn((1, *size), device=device),), {}


def hf_names() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    return sorted(MODEL_MAPPING_NAMES)


def _shrink(config: Any, seen: set[int] | None = None) -> None:
    """Every layer count of the config and of its sub-configs capped at 2."""
    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    for attr in LAYER_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 2:
            with contextlib.suppress(Exception):
                setattr(config, attr, 2)
    for key in list(getattr(config, "sub_configs", {}) or {}):
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            _shrink(sub, seen)


def _layer_overrides(config: Any) -> dict[str, Any]:
    """Keyword arguments capping every layer count at 2, sub-configs as dicts."""
    kwargs: dict[str, Any] = {a: 2 for a in LAYER_ATTRS if isinstance(getattr(config, a, None), int)
                              and not isinstance(getattr(config, a), bool) and getattr(config, a) > 2}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None and hasattr(sub, "to_dict"):
            inner = _layer_overrides(sub)
            if inner:
                kwargs[key] = {**inner, **({"model_type": sub.model_type} if getattr(sub, "model_type", None) else {})}
    return kwargs


def hf_configs(model_type: str) -> list[tuple[str, Any]]:
    """The default config with every layer count capped at 2, built anew with those arguments (so
    that per-layer lists follow) or, failing that, capped after the fact; then the default itself."""
    from transformers import AutoConfig
    default = AutoConfig.for_model(model_type)
    out = []
    with contextlib.suppress(Exception):
        out.append(("2 layers", type(default)(**_layer_overrides(default))))
    shrunk = AutoConfig.for_model(model_type)
    _shrink(shrunk)
    out += [("2 layers (set after)", shrunk), ("default", default)]
    return out


def _side(value: Any) -> tuple[int, int]:
    if isinstance(value, dict):
        return int(value.get("height", value.get("shortest_edge", 224))), int(value.get("width", value.get("shortest_edge", 224)))
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def hf_inputs(model: Any, config: Any, device: str, seq: int = 32) -> list[dict[str, torch.Tensor]]:
    """Candidate inputs, the most likely first: the model's ``main_input_name`` (token ids, pixels,
    audio samples or features), then the usual variants (text and image together for dual encoders,
    video frames, features frames-first, audio with a channel dimension)."""
    import inspect as pyinspect

    key = getattr(model, "main_input_name", "input_ids")
    text = getattr(config, "get_text_config", lambda **_: config)(decoder=True)
    vocab = min(getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None) or 100, 100)
    vision = getattr(config, "vision_config", None) or config
    h, w = _side(getattr(vision, "image_size", 224))
    channels = getattr(vision, "num_channels", 3)
    bins = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 80)
    frames = min(2 * getattr(config, "max_source_positions", 1500), 3000)
    ids = torch.randint(0, vocab, (1, seq), device=device)
    pixels = torch.randn(1, channels, h, w, device=device)
    made = {"input_ids": {"input_ids": ids}, "pixel_values": {"pixel_values": pixels},
            "input_values": {"input_values": torch.randn(1, 16000, device=device)},
            "input_features": {"input_features": torch.randn(1, bins, frames, device=device)}}
    candidates = [made[key]] if key in made else []
    try:
        params = set(pyinspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = set()
    if {"input_ids", "pixel_values"} <= params:
        candidates.append({"input_ids": ids, "pixel_values": pixels})
    if key == "pixel_values" and getattr(vision, "num_frames", None):
        candidates.append({"pixel_values": torch.randn(1, vision.num_frames, channels, h, w, device=device)})
    if key == "input_features":
        candidates.append({"input_features": torch.randn(1, frames, bins, device=device)})
    if key == "input_values":
        candidates.append({"input_values": torch.randn(1, 1, 16000, device=device)})
    if not candidates:
        raise ValueError(f"no input recipe for main_input_name {key!r}")
    if "use_cache" in params:  # hybrid models whose cache has no attention layer once shrunk
        candidates.append({**candidates[0], "use_cache": False})
    if getattr(config, "is_encoder_decoder", False):
        for c in candidates:
            c.setdefault("decoder_input_ids", torch.randint(0, vocab, (1, seq), device=device))
    return candidates


_BUILT: dict[str, str] = {}  # model type -> the config of the last model built (see hf_configs)


def hf_build(model_type: str, device: str, recipe: int = 0) -> tuple[Any, tuple, dict]:
    """The ``recipe``-th (model, input) to try: each input recipe of the first config that builds (2
    layers), then of the next (the default config, where 2 layers do not run: a hybrid model left
    without an attention layer)."""
    from transformers import AutoModel
    errors: list[Exception] = []
    for label, config in hf_configs(model_type):
        try:
            with torch.device(device):
                model = AutoModel.from_config(config).eval()
        except Exception as exc:  # noqa: BLE001 - the next config
            errors.append(exc)
            continue
        candidates = hf_inputs(model, config, "cpu")  # as a user holds them: inspect moves them (values kept)
        if recipe < len(candidates):
            _BUILT[model_type] = label
            return model, (), candidates[recipe]
        recipe -= len(candidates)
    if errors and not _BUILT.get(model_type):
        raise errors[-1]
    raise IndexError(recipe)


def timm_build_recipe(name: str, device: str, recipe: int = 0) -> tuple[Any, tuple, dict]:
    if recipe:
        raise IndexError(recipe)
    return timm_build(name, device)


ZOOS = {"timm": (timm_names, timm_build_recipe), "hf": (hf_names, hf_build)}


# --- one model -------------------------------------------------------------------------------------

class _NoModules:
    """In place of FlopCounterMode's module tracker, whose gradient hooks fail on some models (timm's
    CaiT: "Expected gradient function to be set"): every op counted under "Global" only, by
    FlopCounterMode's own dispatch mode and formulas."""

    parents = {"Global"}

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: Any) -> None:
        return None


def _flop_counter(model: Any, args: tuple, kwargs: dict, plain: bool = True) -> tuple[int, dict[str, int], bool]:
    """FlopCounterMode's MACs (FLOPs / 2), in total and by op; False when its module tracker had to go."""
    counter = FlopCounterMode(display=False)
    if not plain:
        counter.mod_tracker = _NoModules()
    try:
        with counter, torch.no_grad():
            model(*args, **kwargs)
    except AssertionError:
        if not plain:
            raise
        return _flop_counter(model, args, kwargs, plain=False)
    by_op = {str(op): int(n) // 2 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() // 2, by_op, plain


class _ValuesOnly(TorchDispatchMode):
    """Below FlopCounterMode, runs each op with inspector's values known on meta (the inputs', the
    constants'; routing made up) and its fast meta kernels, and counts nothing: FlopCounterMode, which
    sees every op first and counts it with its own formulas, can then run a forward that reads a mask."""

    def __init__(self, known: Any) -> None:
        super().__init__()
        self.known = known

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = self.known.dispatch(func, args, kwargs or {})
        fast = meta_fast.lookup(func)
        if out is NotImplemented and fast is not None:
            out = meta_fast.run(fast, func, args, kwargs)
        return func(*args, **(kwargs or {})) if out is NotImplemented else out


def _flop_counter_with_values(model: Any, args: tuple, kwargs: dict) -> tuple[int, dict[str, int]]:
    """FlopCounterMode on meta, the inputs' values known (``args``/``kwargs`` on the CPU)."""
    known = meta_values.Known()
    margs, mkwargs = _on(args, "meta"), _on(kwargs, "meta")
    for meta, cpu in zip(_leaves((margs, mkwargs)), _leaves((args, kwargs))):
        known.add(meta, cpu)
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    with _ValuesOnly(known), meta_values.Constants(known), counter, torch.no_grad():
        model(*margs, **mkwargs)
    by_op = {str(op): int(n) // 2 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() // 2, by_op


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [t for v in value for t in _leaves(v)] if isinstance(value, (list, tuple)) else []  # scalars: none


def _ops(report: Any) -> dict[str, int]:
    totals: Counter = Counter()
    for layer in report.layers:
        for stat in layer.ops:
            totals[stat.op] += stat.macs
    return {op: macs for op, macs in totals.items() if macs}


def _on(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _on(v, device) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    return value


def _shapes(args: tuple, kwargs: dict) -> dict[str, Any]:
    return {**{str(i): list(a.shape) for i, a in enumerate(args)},
            **{k: list(v.shape) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}}


def _plain(model: Any, args: tuple, kwargs: dict) -> str | None:
    """None when a plain no_grad forward runs, else its error in one line."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {first_line(exc)}"[:300]


def measure(zoo: str, name: str, cpu_max_params: float) -> dict[str, Any]:
    """One model: inspect on meta with the first input recipe it takes; the references."""
    _, build = ZOOS[zoo]
    record: dict[str, Any] = {"zoo": zoo, "name": name}
    start = time.perf_counter()
    try:
        model, args, kwargs = build(name, "meta")
    except Exception as exc:  # noqa: BLE001
        status = "no input recipe" if "no input recipe" in str(exc) else "build failed"
        record.update(status=status, error=f"{type(exc).__name__}: {first_line(exc)}"[:300])
        return record
    record["params_own"] = sum(p.numel() for p in model.parameters())
    record["config"] = _BUILT.get(name, "")
    recipe, tried = 0, []
    while True:
        try:
            report = inspect(model, args, kwargs=kwargs, device="meta")
            break
        except Exception as exc:  # noqa: BLE001
            tried.append({"inputs": _shapes(args, kwargs), "error": f"{type(exc).__name__}: {first_line(exc)}"[:400],
                          "meta_forward": _plain(model, _on(args, "meta"), _on(kwargs, "meta"))})
        try:
            model, args, kwargs = build(name, "meta", recipe + 1)
            recipe += 1
        except Exception:  # noqa: BLE001 - no other recipe
            record.update(status="inspect failed", error=tried[0]["error"], meta_forward=tried[0]["meta_forward"],
                          tried=tried)
            if zoo == "hf" and record["params_own"] <= cpu_max_params:
                record["cpu_forward"] = _cpu_forward(zoo, name)
            return record
    record.update(recipe=recipe, inputs=_shapes(args, kwargs), tried=tried, config=_BUILT.get(name, ""),
                  params_own=sum(p.numel() for p in model.parameters()))  # the model that ran (its config)
    check = report.crosscheck()
    record.update(params=report.total_params, macs=report.total_macs, complete=report.complete,
                  crosscheck=[str(p) for p in check][:20], checked=check.checked, calls=len(report.layers),
                  notes=list(report.run.notes), ops=_ops(report))
    try:  # FlopCounterMode runs the model as it is, on meta
        fcm, fcm_ops, tracked = _flop_counter(model, _on(args, "meta"), _on(kwargs, "meta"))
        record.update(fcm_macs=fcm, fcm_ops=fcm_ops, **({} if tracked else {"fcm_without_module_tracker": True}))
    except Exception as exc:  # noqa: BLE001 - a mask check or routing on meta, or _grouped_mm in float32
        record["fcm_error"] = f"{type(exc).__name__}: {first_line(exc)}"[:300]
        try:
            fcm, fcm_ops = _flop_counter_with_values(model, args, kwargs)
            record.update(fcm_macs=fcm, fcm_ops=fcm_ops, fcm_with_known_values=True)
        except Exception as again:  # noqa: BLE001
            record["fcm_error"] += f"; with known values: {type(again).__name__}: {first_line(again)}"[:300]
    if zoo == "hf" and record["params_own"] <= cpu_max_params:
        record["cpu"] = cpu = _cpu_counts(zoo, name, recipe, reference="fcm_macs" not in record)
        if "fcm_macs" not in record and "fcm_macs" in cpu:  # FlopCounterMode on the CPU instead
            record.update(fcm_macs=cpu.pop("fcm_macs"), fcm_ops=cpu.pop("fcm_ops"), fcm_device="cpu",
                          cpu_ops=cpu.pop("ops"))
    record["seconds"] = round(time.perf_counter() - start, 2)
    record["status"] = verdict(record)
    return record


def _cpu_forward(zoo: str, name: str) -> str | None:
    try:
        _, build = ZOOS[zoo]
        model, args, kwargs = build(name, "cpu")
    except Exception as exc:  # noqa: BLE001
        return f"build on cpu: {type(exc).__name__}: {first_line(exc)}"[:300]
    return _plain(model, args, kwargs)


def _cpu_counts(zoo: str, name: str, recipe: int, reference: bool) -> dict[str, Any]:
    """inspector's totals for the same architecture and input built on the CPU (random weights), and
    FlopCounterMode's there when ``reference`` (it could not run on meta)."""
    try:
        _, build = ZOOS[zoo]
        model, args, kwargs = build(name, "cpu", recipe)
        report = inspect(model, args, kwargs=kwargs)
        out = {"params": report.total_params, "macs": report.total_macs, "complete": report.complete}
        if reference:  # FlopCounterMode on the CPU: its gaps are read off the CPU's ops (its SDPA kernel)
            out["ops"] = _ops(report)
            out["fcm_macs"], out["fcm_ops"], _ = _flop_counter(model, args, kwargs)
        return out
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {first_line(exc)}"[:300]}


def verdict(r: dict[str, Any]) -> str:
    """exact | exact where FlopCounterMode counts | differs | crosscheck | incomplete."""
    if r.get("params") != r.get("params_own"):
        return "params differ"
    if not r.get("complete"):
        return "incomplete"
    if r.get("crosscheck"):
        return "crosscheck"
    cpu = r.get("cpu")
    if cpu and "error" not in cpu and (cpu["params"], cpu["macs"]) != (r["params"], r["macs"]):
        return "cpu differs"
    if "fcm_macs" not in r:
        return "no reference"
    if r["macs"] == r["fcm_macs"]:
        return "exact"
    ops = r.get("cpu_ops", r["ops"]) if r.get("fcm_device") == "cpu" else r["ops"]
    gap = {op: m for op, m in ops.items() if op not in _FCM_OPS}
    r["fcm_gaps"] = gap
    return "exact beyond FlopCounterMode" if r["macs"] - sum(gap.values()) == r["fcm_macs"] else "differs"


# --- the run: chunks in child processes, results appended as they come --------------------------------

def _done(out: Path) -> set[str]:
    if not out.exists():
        return set()
    return {json.loads(line)["name"] for line in out.read_text().splitlines() if line.strip()}


def run_chunk(zoo: str, names: list[str], out: Path, timeout: int, cpu_max_params: float, progress: Path) -> None:
    torch.set_num_threads(1)
    for name in names:
        progress.write_text(name)
        try:
            with time_limit(timeout):
                record = measure(zoo, name, cpu_max_params)
        except Timeout as exc:
            record = {"zoo": zoo, "name": name, "status": "timeout", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001
            record = {"zoo": zoo, "name": name, "status": "sweep error",
                      "error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[:300]}
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{record['status']:32s} {name}", flush=True)


def run(zoo: str, out: Path, only: list[str] | None, limit: int | None, chunk: int, timeout: int,
        cpu_max_params: float) -> None:
    names = only or ZOOS[zoo][0]()
    todo = [n for n in names if n not in _done(out)][:limit]
    print(f"{zoo}: {len(names)} models, {len(todo)} to run, results in {out}", flush=True)
    progress = out.with_suffix(".current")
    while todo:
        batch, todo = todo[:chunk], todo[chunk:]
        listing = out.with_suffix(".chunk")
        listing.write_text("\n".join(batch))
        child = subprocess.run([sys.executable, __file__, "--chunk", zoo, str(listing), str(out), str(timeout),
                                str(cpu_max_params)])
        if child.returncode != 0:  # crashed: the model in progress is recorded, the rest go back in line
            crashed = progress.read_text() if progress.exists() else batch[0]
            done = _done(out)
            with out.open("a") as f:
                if crashed not in done:
                    f.write(json.dumps({"zoo": zoo, "name": crashed, "status": "crashed",
                                        "error": f"the process exited with {child.returncode}"}) + "\n")
            todo = [n for n in batch if n not in done and n != crashed] + todo


# --- the summary -----------------------------------------------------------------------------------------

def reason(r: dict[str, Any]) -> str:
    """Why a model is not counted exactly, in one line."""
    status = r["status"]
    if status == "differs":
        return f"inspector {r['macs']:,} MACs, FlopCounterMode {r['fcm_macs']:,}"
    if status == "cpu differs":
        return f"meta {r['params']:,} params / {r['macs']:,} MACs, cpu {r['cpu']}"
    if status in ("crosscheck", "incomplete"):
        return "; ".join(r.get("crosscheck", [])[:2])
    if status == "params differ":
        return f"inspector {r.get('params')}, the model's own {r.get('params_own')}"
    if status == "no reference":
        return f"FlopCounterMode failed: {r.get('fcm_error', '')}"
    error = r.get("error", "")
    if status != "inspect failed":
        return error
    cpu, meta = r.get("cpu_forward", "not run"), r.get("meta_forward")
    if cpu not in (None, "not run"):
        return f"the plain forward fails on the CPU too (input recipe or default config): {cpu}"
    if "MetaDeviceError" in error:
        return f"needs values on meta{' (the plain forward runs on the CPU)' if cpu is None else ''}: {error}"
    if meta is not None and cpu == "not run":
        return f"the plain forward fails on meta too (too big to try on the CPU here): {meta}"
    return error


def summary(paths: list[Path]) -> str:
    """Counts by status and a row for every model not counted exactly, per zoo; a model measured in
    several files (a rerun) is taken from the last."""
    by_zoo: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                by_zoo.setdefault(r["zoo"], {})[r["name"]] = r
    lines = []
    for zoo, named in by_zoo.items():
        records = list(named.values())
        counts = Counter(r["status"] for r in records)
        lines.append(f"### {zoo}: {len(records)} models\n")
        lines += [f"- {status}: {n}" for status, n in counts.most_common()]
        gaps = Counter(op for r in records for op in r.get("fcm_gaps", {}))
        if gaps:
            lines.append("- FlopCounterMode has no formula for: " + ", ".join(f"`{op}` ({n})" for op, n in gaps.items()))
        cpu = [r for r in records if isinstance(r.get("cpu"), dict) and "macs" in r["cpu"]]
        if cpu:
            same = sum((c["cpu"]["params"], c["cpu"]["macs"]) == (c["params"], c["macs"]) for c in cpu)
            lines.append(f"- counted on the CPU as well (up to the size limit): {len(cpu)}, the same figures as on "
                         f"meta: {same}")
        lines.append("")
        rows = [r for r in sorted(records, key=lambda r: (r["status"], r["name"]))
                if r["status"] not in ("exact", "exact beyond FlopCounterMode")]
        if rows:
            lines += ["| model | status | reason |", "|---|---|---|"]
            lines += [f"| {r['name']} | {r['status']} | {reason(r).replace('|', '/')[:260]} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--chunk":
        zoo, listing, out, timeout, cpu_max = sys.argv[2:7]
        run_chunk(zoo, Path(listing).read_text().split("\n"), Path(out), int(timeout), float(cpu_max),
                  Path(out).with_suffix(".current"))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo", choices=[*ZOOS, "summary"])
    parser.add_argument("paths", nargs="*", type=Path, help="summary: the result files")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", help="comma-separated names")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--chunk", type=int, default=40, help="models per child process")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a model")
    parser.add_argument("--cpu-max-params", type=float, default=3e8,
                        help="transformers: also count on the CPU models up to this many parameters")
    a = parser.parse_args()
    if a.zoo == "summary":
        print(summary(a.paths))
        return
    out = a.out or ROOT / "benchmarks" / f"zoo-{a.zoo}.jsonl"
    run(a.zoo, out, a.only.split(",") if a.only else None, a.limit, a.chunk, a.timeout, a.cpu_max_params)


if __name__ == "__main__":
    main()
