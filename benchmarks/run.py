"""Speed and accuracy of inspector against a plain forward pass and the peers, in one run.

    .venv/bin/pip install thop ptflops torchinfo fvcore   # peers: benchmark-only, never project deps
    .venv/bin/python benchmarks/run.py [--repeat 3] [--out benchmarks/RESULTS.md]

Per tool and model: median time of one counting call / median plain no_grad forward (same process),
and the MACs deviation from torchvision's published _ops. Peers that are not installed are skipped.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from inspector import inspect  # noqa: E402
from inspector.render import tabulate  # noqa: E402
from models import zoo  # noqa: E402

MODELS = ["resnet50", "vit_b_16", "efficientnet_b0", "convnext_tiny", "swin_t", "mobilenet_v3_large",
          "inception_v3", "maxvit_t"]


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

    return get_model_complexity_info(model, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False,
                                     verbose=False)[0]


def _torchinfo(model, x):
    import torchinfo

    return torchinfo.summary(model, input_data=x, verbose=0).total_mult_adds


def _fvcore(model, x):
    from fvcore.nn import FlopCountAnalysis

    a = FlopCountAnalysis(model, x)
    a.unsupported_ops_warnings(False)
    a.uncalled_modules_warnings(False)
    return a.total()


TOOLS: dict[str, Callable] = {"inspector": _ours, "FlopCounterMode": _flop_counter, "ptflops": _ptflops,
                              "torchinfo": _torchinfo, "fvcore": _fvcore, "thop": _thop}


def _median_time(fn: Callable, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _available(name: str) -> bool:
    module = {"ptflops": "ptflops", "torchinfo": "torchinfo", "fvcore": "fvcore", "thop": "thop"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = p.parse_args()
    tools = [t for t in TOOLS if _available(t)]
    ratio_rows, dev_rows = [], []
    for name in args.models:
        model = zoo.torchvision_model(name)
        (x,) = zoo.example_inputs(name)
        with torch.no_grad():
            model(x)
            forward = _median_time(lambda: model(x), args.repeat)
        ratios, devs = [name, f"{forward * 1e3:.1f}"], [name, f"{zoo.entry(name).gmacs:.3f}"]
        for tool in tools:
            try:
                macs = TOOLS[tool](model, x)
                t = _median_time(lambda: TOOLS[tool](model, x), args.repeat)
                ratios.append(f"{t / forward:.2f}")
                devs.append(f"{100 * (macs / 1e9 / zoo.entry(name).gmacs - 1):+.1f}%")
            except Exception as exc:  # a peer failing on a model is a result, not a crash
                ratios.append("fails")
                devs.append(type(exc).__name__)
        ratio_rows.append(ratios)
        dev_rows.append(devs)
        print(name, ratios[1:], devs[1:], flush=True)
    meta_start = time.perf_counter()
    for name in zoo.list_names("classification"):
        inspect(zoo.torchvision_model(name, device="meta"))
    meta_all = time.perf_counter() - meta_start
    vit_start = time.perf_counter()
    inspect(zoo.torchvision_model("vit_h_14", device="meta"))
    vit_h = time.perf_counter() - vit_start
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
               f"{torch.__version__}, Python {platform.python_version()}")
    text = "\n".join([
        "# Benchmarks", "",
        f"Machine: {machine}. Command: `{' '.join(['python', *sys.argv])}` (median of {args.repeat}).", "",
        "## Time of one counting call / one plain `no_grad` forward (CPU, batch 1, published input size)", "",
        tabulate(ratio_rows, ["model", "forward ms", *tools], "github"), "",
        "## MACs deviation from torchvision's published `_ops`", "",
        tabulate(dev_rows, ["model", "published GMACs", *tools], "github"), "",
        "## Meta device", "",
        f"- all 80 classification models, build + inspect: {meta_all:.1f} s",
        f"- vit_h_14 (632 M parameters), build + inspect: {vit_h:.2f} s", "",
    ])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
