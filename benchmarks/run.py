"""Speed and accuracy of inspector against a plain forward pass and the peers, in one run.

    .venv/bin/pip install thop ptflops torchinfo fvcore   # peers: benchmark-only, never project deps
    .venv/bin/python benchmarks/run.py [--repeat 9] [--device cuda] [--quick]

Per model (published input, batch 1): the time of one counting call / one plain no_grad forward,
for inspector, the peers installed and the floor of any hook + dispatch-mode counter, in interleaved
rounds; inspector's first call on a freshly built model; inspector's own cost over the floor; the
MACs deviation from torchvision's published _ops. Then batch 32, counting on meta against counting on
the CPU (plus timm's sequencer2d_s, an LSTM model), the meta-device targets (all classification models,
vit_h_14, a Llama-2-70B-sized config and a Llama-7B training step), a cProfile of inspect() and the
device peak. Peers that are not installed are skipped. Timing claims live here, never in the tests.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import io
import math
import platform
import pstats
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from inspector import inspect  # noqa: E402
from inspector.render import tabulate  # noqa: E402
from inspector.sources import torchvision_source as zoo  # noqa: E402
from inspector.timing import measure_peak, middle_half  # noqa: E402

MODELS = ["resnet50", "vit_b_16", "efficientnet_b0", "convnext_tiny", "swin_t", "mobilenet_v3_large",
          "inception_v3", "maxvit_t"]
PEERS = ["FlopCounterMode", "ptflops", "torchinfo", "fvcore", "thop"]


def _ours(model, x):
    return inspect(model, x).total_macs


def _flop_counter(model, x):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as c, torch.no_grad():
        model(x)
    return c.get_total_flops() / 2


def _thop(model, x):
    import thop

    return thop.profile(model, inputs=(x,), verbose=False)[0]


def _ptflops(model, x):
    from ptflops import get_model_complexity_info

    # the same input as every other tool: ptflops' own is torch.new_empty, uninitialised memory whose
    # contents (denormals or not, left by whatever ran before) moved its time by up to 30% on resnet50
    return get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False,
                                     verbose=False, input_constructor=lambda _: x)[0]


def _torchinfo(model, x):
    import torchinfo

    return torchinfo.summary(model, input_data=x, verbose=0).total_mult_adds


def _fvcore(model, x):
    from fvcore.nn import FlopCountAnalysis

    a = FlopCountAnalysis(model, x)
    a.unsupported_ops_warnings(False)
    a.uncalled_modules_warnings(False)
    return a.total()


#: Peers that leave state in the model they count: thop registers ``total_ops``/``total_params``
#: buffers (CPU tensors) in every module and never removes them. Such a peer counts its own copy of
#: the model (made before timing), so that no other column runs on a model it changed, and a CUDA
#: model is not left on two devices.
LITTERS = frozenset({"thop"})


def _tools_for(model, peers: list[str]) -> dict[str, Callable]:
    """Each peer's counting function for ``model``; the ones in LITTERS bound to a copy of it."""
    tools = {}
    for name in peers:
        if name in LITTERS:
            own = copy.deepcopy(model)
            tools[name] = lambda _model, x, fn=TOOLS[name], own=own: fn(own, x)
        else:
            tools[name] = TOOLS[name]
    return tools


TOOLS: dict[str, Callable] = {"inspector": _ours, "FlopCounterMode": _flop_counter, "ptflops": _ptflops,
                              "torchinfo": _torchinfo, "fvcore": _fvcore, "thop": _thop}


class _NoopMode(TorchDispatchMode):
    """A dispatch mode that only forwards each op: the least any op-level counter pays."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@contextmanager
def _noop_hooks(model):
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True))
        handles.append(module.register_forward_hook(lambda *a: None))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _floor(model, x):
    """No-op hooks on every module plus a forwarding dispatch mode: per-layer, per-op counting's floor."""
    with _noop_hooks(model), _NoopMode(), torch.no_grad():
        model(x)


def _available(name: str) -> bool:
    module = {"ptflops": "ptflops", "torchinfo": "torchinfo", "fvcore": "fvcore", "thop": "thop"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def _sync_for(device: str) -> Callable[[], None]:
    """What to call before reading the clock: wait for queued GPU work; nothing on CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _plain_forward(model, x) -> None:
    with torch.no_grad():
        model(x)


def _interleaved(model, x, fns: dict[str, Callable], repeat: int, sync: Callable[[], None]) -> dict[str, Any]:
    """Seconds per function, the fastest of ``repeat`` rounds (a plain forward and each function
    once): rounds, so that a shared machine's drift hits every column alike; the fastest, because
    noise only ever adds time (as timeit advises). Each round starts one place further along the
    list: what ran just before changes the allocator's state (at batch 32 the same forward measured
    5-10% apart by its place in the round), so no column always follows the same one. A function
    failing is a result, not a crash."""
    every: dict[str, Callable] = {"forward": _plain_forward, **fns}
    times: dict[str, Any] = {k: [] for k in every}
    for name, fn in every.items():
        try:
            fn(model, x)
        except Exception as exc:  # noqa: BLE001
            times[name] = exc
    names = list(every)
    for round_ in range(repeat):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            if isinstance(times[name], Exception):
                continue
            sync()
            start = time.perf_counter()
            every[name](model, x)
            sync()
            times[name].append(time.perf_counter() - start)
    return {k: v if isinstance(v, Exception) else min(v) for k, v in times.items()}


def _heaviest_block(report) -> str:
    """The block timed alone: the call with the most MACs among those holding at most half the model's
    and being their module's only call (a stage, an encoder layer). Chosen by its work, not by its
    measured time: the call one profiled pass over-charged would otherwise be the one checked (vit_b_16's
    twelve alike encoder layers were charged 7.5-9.7% each in one pass); and not a depth-1 ``features``
    holding 99% of the pass, which checks little. The heaviest depth-1 call when none qualifies."""
    calls = [r for r in report.layers if r.name and r.inclusive_macs is not None]
    repeated = {r.name for r in calls if r.call > 0}
    fits = [r for r in calls if r.name not in repeated and r.inclusive_macs <= report.total_macs / 2]
    if not fits:
        fits = [r for r in calls if r.depth == 1]
    return max(fits, key=lambda r: r.inclusive_macs).name


def _alone_ms(model, x, name: str, repeat: int, sync: Callable[[], None]) -> tuple[float, float, tuple[float, float]]:
    """The block ``name`` run alone on the inputs it received in a plain forward, and the whole plain
    forward, alternately (so both see the machine alike): the means of the middle half of ``repeat``
    synchronised runs of each after 3 warm-ups (perf_counter; on a GPU, synchronised around each), as
    inspect() averages its passes. Also the quartiles of the block's share in each pair (alone / whole):
    how much that reference itself moves from run to run on this machine."""
    block = model.get_submodule(name)
    seen: list[tuple] = []
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)) if not seen
                                             else None, with_kwargs=True)
    with torch.no_grad():
        model(x)
    handle.remove()
    args, kwargs = seen[0]
    alone, whole = [], []
    with torch.no_grad():
        for i in range(3 + repeat):
            for run, times in ((lambda: block(*args, **kwargs), alone), (lambda: model(x), whole)):
                sync()
                start = time.perf_counter()
                run()
                sync()
                if i >= 3:
                    times.append(time.perf_counter() - start)
    alone_ms, whole_ms = (1e3 * statistics.fmean(middle_half(times, key=float)) for times in (alone, whole))
    return alone_ms, whole_ms, _quartiles([a / w for a, w in zip(alone, whole)])


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values``."""
    ordered = sorted(values)
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]


@contextmanager
def _profiled_passes():
    """The profiled passes inspect(timing=True) averages (all of them, before it keeps the middle half),
    seen by wrapping ``inspector.timing.middle_half``: the run-to-run spread of an attribution."""
    import inspector.timing as timing

    seen: list = []
    original = timing.middle_half

    def spy(values, key):
        if values and isinstance(values[0], timing.Attribution):
            seen.extend(values)
        return original(values, key)

    timing.middle_half = spy
    try:
        yield seen
    finally:
        timing.middle_half = original


def _share_quartiles(report, block: str, passes: list) -> tuple[float, float]:
    """The quartiles of ``block``'s share (its calls' busy + idle, its descendants' included) over the
    profiled passes."""
    inside = {report.layer(block).index}
    for rec in report.layers:  # parents come before their children
        if rec.parent in inside:
            inside.add(rec.index)
    return _quartiles([sum(p.busy[i] + p.idle[i] for i in inside) / p.span for p in passes])


def _layer_timing(name: str, model, x, repeat: int, batch: int, rows: list, verdicts: dict[str, list[str]],
                  sync: Callable[[], None]) -> None:
    """inspect()'s profiled per-call times on ``x``'s device: the plain synchronised forward beside the
    profiled pass (its overhead), busy and idle time, whether the calls' times add up to the pass
    exactly, and the block chosen by its MACs (``_heaviest_block``) timed alone against its attribution: in ms (the
    profiled pass carries the profiler's own cost per op) and as a share of its pass (the block's share of
    the profiled pass against its share of a plain forward timed beside it, which cancels that cost and
    the machine's drift between the two measurements)."""
    with _profiled_passes() as passes:
        r = inspect(model, x, timing=True, repeat=repeat, warmup=3, peak=None)
    t = r.timing
    exact = abs(sum(rec.time_ms for rec in r.layers) - t.profiled_ms) <= 1e-9 * t.profiled_ms
    block = _heaviest_block(r)
    alone, whole, (low, high) = _alone_ms(model, x, block, max(repeat, 20), sync)
    attributed_low, attributed_high = _share_quartiles(r, block, passes)
    within_noise = attributed_low <= high and low <= attributed_high  # the two ranges overlap
    attributed = r.layer(block).inclusive_time_ms
    off = 100 * (attributed / alone - 1)
    share_off = 100 * ((attributed / t.profiled_ms) / (alone / whole) - 1)
    span_off = 100 * t.overhead
    rows.append([name, batch, f"{t.forward_ms:.3f}", f"{t.profiled_ms:.3f}", f"{span_off:+.1f}%", f"{t.busy_ms:.3f}",
                 f"{t.idle_ms:.3f}", "yes" if t.launch_bound else "no", "yes" if exact else "**no**", block,
                 f"{attributed:.3f}", f"{alone:.3f}", f"{off:+.1f}%", f"{100 * attributed / t.profiled_ms:.1f}%",
                 f"{100 * attributed_low:.1f}–{100 * attributed_high:.1f}%", f"{100 * alone / whole:.1f}%", f"{100 * low:.1f}–{100 * high:.1f}%", f"{share_off:+.1f}%"])
    verdicts["sum"].append(f"{name} at batch {batch}: {_mark(exact)}")
    verdicts["block"].append(f"{name} at batch {batch}, {block}: share {share_off:+.1f}% "
                             f"(milliseconds {off:+.1f}%) — within 10%: {_mark(abs(share_off) <= 10)}; "
                             f"within the run-to-run noise (quartile ranges overlap): {_mark(within_noise)}")
    if batch == 32:
        verdicts["span"].append(f"{name}: {span_off:+.1f}% — {_mark(abs(span_off) <= 5)}")
    print("  timing", rows[-1][1:], flush=True)


def _batch_rounds(batch1: dict[str, Any], repeat: int) -> int:
    """Rounds at batch 32: about 6 s of each column (a small model's forward varies by some 10% with
    the allocator's page faults, and more rounds find its floor), at least 5, at most ``repeat``."""
    estimate = 32 * batch1["forward"]
    return max(5, min(repeat, math.ceil(6 / estimate)))


def _first_call(name: str, device: str, pairs: int = 3) -> tuple[float, float]:
    """The first pass of a fresh process over a model built just before (nothing warmed up or cached:
    torch's kernels and allocator, the op descriptions, the dispatch rules), in seconds: inspect() in
    one process, a plain forward in another; the fastest of ``pairs`` processes each. torch's own
    first-pass cost lands on both, so their ratio is what inspector adds to a process's first pass."""
    code = f"""
import sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {str(ROOT)!r})
import torch
from inspector import inspect
from inspector.sources import torchvision_source as zoo
model = zoo.torchvision_model({name!r}, device={device!r}); (x,) = zoo.example_inputs({name!r}, {device!r})
sync = torch.cuda.synchronize if {device!r}.startswith("cuda") else (lambda: None)
sync(); start = time.perf_counter()
if sys.argv[1] == "inspect":
    inspect(model, x).total_macs
else:
    with torch.no_grad():
        model(x)
sync(); print(time.perf_counter() - start)
"""

    def first(what: str) -> float:
        return float(subprocess.run([sys.executable, "-c", code, what], check=True, capture_output=True,
                                    text=True).stdout.split()[-1])

    runs = [(first("inspect"), first("forward")) for _ in range(pairs)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


_MEMORY_PROBE = """
import sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {root!r})
import torch
from inspector import inspect

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

{setup}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark: import-time peaks are not ours
base = rss("VmRSS:")
start = time.perf_counter()
{work}
seconds = time.perf_counter() - start
print(seconds, rss("VmHWM:") - base)
"""

_PROBES = {
    "vit_h_14": ("from inspector.sources import torchvision_source as zoo",
                 "report = inspect(zoo.torchvision_model('vit_h_14', device='meta'))"),
    "llama70b": ("import transformers",
                 "config = transformers.LlamaConfig(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, "
                 "num_key_value_heads=8, intermediate_size=28672, vocab_size=32000)\n"
                 "with torch.device('meta'):\n    model = transformers.LlamaForCausalLM(config)\n"
                 "report = inspect(model, {'input_ids': torch.randint(0, 32000, (1, 128), device='meta')}, "
                 "device='meta')"),
    "llama7b_step": ("import transformers",
                     "config = transformers.LlamaConfig(hidden_size=4096, num_hidden_layers=32, "
                     "intermediate_size=11008, vocab_size=32000)\n"
                     "with torch.device('meta'):\n    model = transformers.LlamaForCausalLM(config)\n"
                     "report = inspect(model, {'input_ids': torch.randint(0, 32000, (1, 512), device='meta')}, "
                     "device='meta', backward=True, optimizer='adamw')"),
}


def _probe(which: str) -> tuple[float, int]:
    """Seconds (building included) and peak RSS above the RSS after imports, in a fresh process."""
    setup, work = _PROBES[which]
    code = _MEMORY_PROBE.format(root=str(ROOT), setup=setup, work=work)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1])


def _meta_against_cpu(name: str, repeat: int) -> tuple[float, float, bool]:
    """Fastest seconds of inspect() on meta and on the CPU (built on each), and whether the counts agree."""
    if name.startswith("timm:"):
        import timm

        def build(device: str):
            with torch.device(device):
                return timm.create_model(name[5:], pretrained=False).eval()
        shape = (1, 3, 224, 224)
        models = {d: build(d) for d in ("cpu", "meta")}
        inputs = {d: torch.randn(shape, device=d) for d in ("cpu", "meta")}
    else:
        models = {d: zoo.torchvision_model(name, device=d) for d in ("cpu", "meta")}
        inputs = {d: zoo.example_inputs(name, d)[0] for d in ("cpu", "meta")}
    counts, times = {}, {"cpu": [], "meta": []}
    for device in ("cpu", "meta"):
        counts[device] = inspect(models[device], inputs[device]).total_macs
    for _ in range(repeat):
        for device in ("cpu", "meta"):
            start = time.perf_counter()
            inspect(models[device], inputs[device]).total_macs
            times[device].append(time.perf_counter() - start)
    return min(times["meta"]), min(times["cpu"]), counts["cpu"] == counts["meta"]


def _profile(name: str, device: str, top: int = 14) -> str:
    """cProfile of five inspect() calls: where the counting overhead goes, by own time."""
    model = zoo.torchvision_model(name, device=device)
    (x,) = zoo.example_inputs(name, device)
    inspect(model, x)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(5):
        inspect(model, x).total_macs
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    text = stream.getvalue()
    return text[text.index("ncalls"):].replace(str(ROOT) + "/", "").replace(sys.prefix + "/", "").rstrip()


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where models, inputs and timing run")
    p.add_argument("--out", default=None, help="default: RESULTS.md on CPU, RESULTS-cuda.md on CUDA")
    p.add_argument("--quick", action="store_true", help="skip batch 32, the probes and the all-models runs")
    p.add_argument("--first-pairs", type=int, default=3, help="fresh-process pairs behind the first-call column")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the cProfile of inspect()")
    args = p.parse_args()
    device = args.device
    sync = _sync_for(device)
    out = args.out or str(Path(__file__).with_name("RESULTS.md" if device == "cpu" else "RESULTS-cuda.md"))
    peers = [t for t in PEERS if _available(t)]
    ratio_rows, dev_rows, own_rows, batch_rows, meta_rows, timing_rows = [], [], [], [], [], []
    verdicts: dict[str, list[str]] = {"peer": [], "own": [], "batch": [], "meta": [], "sum": [], "block": [],
                                      "span": []}
    def write(final: bool) -> str:
        """The results so far (after each model: a run stopped at its time limit keeps what it did)."""
        sections = _environment(device, args)
        sections += ["## Time of one counting call / one plain `no_grad` forward (batch 1)", "",
                     "First call: inspect() as the first pass of a fresh process on a model built just before, over a "
                     f"plain forward as the first pass of another (each the fastest of {args.first_pairs} processes): torch's own "
                     "first-pass cost is in both. Floor: no-op hooks on every module plus a forwarding dispatch mode. "
                     "thop counts its own copy of the model: it leaves a buffer in every module it counts.", "",
                     tabulate(ratio_rows, ["model", "forward ms", "inspector", *peers, "floor", "inspector first call"],
                              "github"), "",
                     "## inspector's own cost above the floor", "",
                     tabulate(own_rows, ["model", "floor", "inspector", "inspector − floor ms", "× of a forward"],
                              "github"), "",
                     "## MACs deviation from torchvision's published `_ops`", "",
                     tabulate(dev_rows, ["model", "published GMACs", "inspector", *peers], "github"), ""]
        if timing_rows:
            sections += ["## Per-call times from the profiler", "",
                         "inspect(timing=True): the plain synchronised forward (no hooks, no profiler) beside the profiled "
                         "pass (the model's call to the later of its return and the last activity's end) and its overhead, each the mean of the middle half of "
                         "the passes (per-call times are those passes' means) "
                         "(profiled / plain − 1); busy and idle time of the device within it; whether the calls' busy + "
                         "idle add up to the pass exactly; the call with the most MACs among those with at most half the "
                         "model's (and the only call of their module) run alone on its recorded inputs "
                         "(mean of the middle half of synchronised runs, alternating with whole plain forwards) against the time the "
                         "profiled pass attributed to it, in milliseconds and as a share of the pass (the block's share "
                         "of the profiled pass against its share of the plain forwards timed beside it: the profiler's "
                         "own cost per op and the machine's drift between measurements cancel). The quartiles of the block's "
                         "share over the profiled passes and over the alone/whole pairs show how much each moves from "
                         "run to run on this machine; the two agree within that noise when the ranges overlap.", "",
                         tabulate(timing_rows, ["model", "batch", "plain forward ms", "profiled ms", "overhead", "busy ms",
                                                "idle ms", "launch-bound", "calls add up", "block", "attributed ms",
                                                "alone ms", "attributed / alone − 1", "attributed share",
                                                "attributed share, quartiles", "alone share", "alone share, quartiles", "share off"], "github"), ""]
        if batch_rows:
            sections += ["## Batch 32", "", tabulate(batch_rows, ["model", "forward ms", "inspector", "floor", "rounds"], "github"),
                         ""]
        if meta_rows:
            sections += ["## Counting on meta against counting on the CPU (batch 1)", "",
                         tabulate(meta_rows, ["model", "inspect on cpu ms", "inspect on meta ms", "meta / cpu",
                                              "same counts"], "github"), ""]
            sections += _meta_targets() if final else []
        sections += ["## Targets", "",
                     "- the calls' busy + idle time adds up to the profiled pass exactly:",
                     *(f"  - {v}" for v in verdicts["sum"]),
                     "- a block timed alone agrees with its attribution (its share, within 10%; within the run-to-run noise):",
                     *(f"  - {v}" for v in verdicts["block"])]
        if verdicts["span"]:
            sections += ["- the profiled pass within 5% of the plain forward at batch 32:",
                         *(f"  - {v}" for v in verdicts["span"])]
        sections += ["- inspector ≤ the lowest peer, batch 1 (withdrawn on the CPU: level with ptflops within noise is "
                     "accepted):", *(f"  - {v}" for v in verdicts["peer"])]
        if device.startswith("cuda"):
            sections += ["- counting a CUDA model ≤ 1.5× a plain batch-1 forward (on meta copies):",
                         *(f"  - {name}: {row[2]}× — {_mark(float(row[2]) <= 1.5)}" for name, row in
                           zip(args.models, ratio_rows))]
        if verdicts["batch"]:
            sections += ["- batch 32 ≤ 1.05× a forward:", *(f"  - {v}" for v in verdicts["batch"])]
        if verdicts["meta"]:
            sections += ["- counting on meta ≤ 0.5× counting on the CPU, same counts:", *(f"  - {v}" for v in verdicts["meta"])]
        if final and args.profile:
            sections += ["", f"cProfile of 5 `inspect()` calls on mobilenet_v3_large ({device}), by own time:", "",
                         "```", _profile("mobilenet_v3_large", device), "```", ""]
        if not final:
            sections += ["", "(partial: the run was still going when this was written)"]
        text = "\n".join(sections)
        Path(out).write_text(text)
        return text

    for name in args.models:
        model = zoo.torchvision_model(name, device=device)
        (x,) = zoo.example_inputs(name, device)
        published = zoo.entry(name).gmacs
        peer_tools = _tools_for(model, peers)
        fns = {"inspector": _ours, **peer_tools, "floor": _floor}
        times = _interleaved(model, x, fns, args.repeat, sync)
        forward = times["forward"]

        def ratio(key: str) -> float | None:
            return None if isinstance(times[key], Exception) else times[key] / forward

        first, first_forward = _first_call(name, device, args.first_pairs)
        ours = ratio("inspector")
        peer_ratios = {t: ratio(t) for t in peers}
        best_peer = min((v for v in peer_ratios.values() if v is not None), default=None)
        cells = [f"{v:.2f}" if v is not None else "fails" for v in peer_ratios.values()]
        ratio_rows.append([name, f"{forward * 1e3:.1f}", f"{ours:.2f}", *cells, f"{ratio('floor'):.2f}",
                           f"{first / first_forward:.2f}"])
        if best_peer is not None:
            verdicts["peer"].append(f"{name}: inspector {ours:.2f}× vs the lowest peer {best_peer:.2f}× — "
                                    f"{_mark(ours <= best_peer)}")
        own = (times["inspector"] - times["floor"]) / forward
        own_rows.append([name, f"{ratio('floor'):.2f}", f"{ours:.2f}", f"{(times['inspector'] - times['floor']) * 1e3:+.1f}",
                         f"{own:+.3f}"])
        verdicts["own"].append(f"{name}: {own:+.3f}× of a forward — {_mark(own <= 0.05)}")
        devs = [name, f"{published:.3f}"]
        for fn in [_ours, *peer_tools.values()]:
            try:
                devs.append(f"{100 * (fn(model, x) / 1e9 / published - 1):+.1f}%")
            except Exception as exc:  # noqa: BLE001 - a peer failing on a model is a result
                devs.append(type(exc).__name__)
        dev_rows.append(devs)
        print(name, ratio_rows[-1][1:], own_rows[-1][1:], devs[1:], flush=True)
        _layer_timing(name, model, x, args.repeat, 1, timing_rows, verdicts, sync)
        if not args.quick:
            (big,) = zoo.example_inputs(name, device, batch=32)
            rounds = _batch_rounds(times, args.repeat)
            batch_times = _interleaved(model, big, {"inspector": _ours, "floor": _floor}, rounds, sync)
            b_ratio = batch_times["inspector"] / batch_times["forward"]
            batch_rows.append([name, f"{batch_times['forward'] * 1e3:.0f}", f"{b_ratio:.3f}",
                               f"{batch_times['floor'] / batch_times['forward']:.3f}", rounds])
            verdicts["batch"].append(f"{name}: {b_ratio:.3f}× — {_mark(b_ratio <= 1.05)}")
            print("  batch 32", batch_rows[-1][1:], flush=True)
            _layer_timing(name, model, big, max(3, rounds), 32, timing_rows, verdicts, sync)
        del model
        write(final=False)
    if not args.quick and device == "cpu":  # meta against the CPU: the same on any machine's CPU
        for name in [*args.models, "timm:sequencer2d_s"]:
            meta_s, cpu_s, same = _meta_against_cpu(name, max(3, args.repeat // 2))
            meta_rows.append([name, f"{cpu_s * 1e3:.1f}", f"{meta_s * 1e3:.1f}", f"{meta_s / cpu_s:.2f}",
                              "yes" if same else "**no**"])
            verdicts["meta"].append(f"{name}: {meta_s / cpu_s:.2f} — {_mark(meta_s / cpu_s <= 0.5 and same)}")
            print("  meta", meta_rows[-1], flush=True)
    print(write(final=True))


def _environment(device: str, args: argparse.Namespace) -> list[str]:
    peak_gflops, peak_gbytes = measure_peak(device)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
               f"{torch.__version__}, Python {platform.python_version()}")
    if device.startswith("cuda"):
        machine += f"; {torch.cuda.get_device_name(torch.device(device))}"
    versions = []
    for package in ("ptflops", "torchinfo", "fvcore", "thop", "timm", "transformers"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:  # noqa: BLE001
            continue
    return ["# Benchmarks", "",
            f"Machine: {machine}; measured peak {peak_gflops:,.0f} GFLOP/s, {peak_gbytes:,.1f} GB/s. "
            f"Peers: {', '.join(versions)}.",
            f"Command: `{' '.join(['python', *sys.argv])}`. Times are the fastest of {args.repeat} interleaved "
            f"rounds (a plain forward and every tool once, each round starting one place further along the list) "
            f"on {device}, published input size.", ""]


def _meta_targets() -> list[str]:
    start = time.perf_counter()
    for name in zoo.list_names("classification"):
        inspect(zoo.torchvision_model(name, device="meta")).total_macs
    all_seconds = time.perf_counter() - start
    resnet = zoo.torchvision_model("resnet50")
    (x,) = zoo.example_inputs("resnet50")
    with torch.no_grad():
        resnet(x)
        start = time.perf_counter()
        resnet(x)
    resnet_ms = (time.perf_counter() - start) * 1e3
    lines = ["## The meta device at scale", "",
             f"- all 80 classification models, build + inspect on meta: {all_seconds:.1f} s (target ≤ 15 s: "
             f"{_mark(all_seconds <= 15)})"]
    for which, label, limit in (("vit_h_14", "vit_h_14 (633 M parameters), build + inspect", 2 * 2**30),
                                ("llama70b", "Llama-2-70B-sized config (hidden 8192, 80 layers, 64 heads, 8 "
                                             "key-value heads, intermediate 28672, vocab 32000) at 128 tokens, build "
                                             "+ inspect", 200 * 2**20),
                                ("llama7b_step", "Llama-7B-sized training step (forward, backward, AdamW) at 512 "
                                                 "tokens, build + inspect", None)):
        try:
            seconds, grown = _probe(which)
        except Exception as exc:  # noqa: BLE001 - transformers missing, say so
            lines.append(f"- {label}: not run ({type(exc).__name__})")
            continue
        verdict = "" if limit is None else f" (target < {limit / 2**20:.0f} MiB: {_mark(grown < limit)})"
        lines.append(f"- {label}: {seconds:.2f} s; peak RSS {grown / 2**20:.0f} MiB above the RSS after "
                     f"imports{verdict}")
    lines += [f"- for scale, this run's resnet50 forward on the CPU, batch 1: {resnet_ms:.0f} ms", ""]
    return lines


if __name__ == "__main__":
    main()
