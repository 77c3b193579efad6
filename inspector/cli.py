"""Command line: ``inspector summary|compare|list|blog|demo`` (also ``python -m inspector``).

Exit codes: 0 all counted and checked; 1 a compared model failed or lies more than ``FAR_PCT``
percent from its published figures, a cross-check found a mismatch or a claim of the post is wrong;
2 a usage or input error (one line on stderr, never a traceback);
3 counted, but some matmul-like op could not be counted (totals are low); 130 interrupted.
``INSPECTOR_DEBUG=1`` shows the traceback of an error.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import inspector
from inspector import output
from inspector.borrow import MODES
from inspector.compare import FAR_PCT
from inspector.conventions import CONVENTIONS
from inspector.errors import InspectorError, first_line, kept_warnings
from inspector.figures import all_figures
from inspector.optimizers import OPTIMIZERS
from inspector.options import COUNT_ON, DTYPES, PEAK_NAMES
from inspector.render import all_columns, check_columns
from inspector.sources import DEFAULT_SOURCE, listing_sources, source, split

OK, FAILED, USAGE, INCOMPLETE, INTERRUPTED = 0, 1, 2, 3, 130
#: Headers of ``inspector list`` for the fields a source's catalogue gives.
_LIST_HEADERS = {"name": "Model", "family": "Family", "num_params": "Published params", "gmacs": "Published GMACs",
                 "input": "Input"}


class CliError(InspectorError):
    """A mistake on the command line, found before anything runs."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (and where to look for the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(USAGE)


def _size(text: str) -> tuple:
    shape, _, dtype = text.partition(":")
    try:
        dims = tuple(int(v) for v in shape.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size wants integers like 1,3,224,224 (or 1,128:int64 for "
                                         f"token ids), got {text!r}") from None
    if any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"--input-size dimensions must be positive, got {text!r}")
    return (dims, dtype) if dtype else dims


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"wants a number >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _natural(text)
    if value == 0:
        raise argparse.ArgumentTypeError("wants a number >= 1, got 0")
    return value


def _peak(text: str) -> tuple[float, float] | str:
    if text in PEAK_NAMES or text == "none":
        return text
    try:
        gflops, gbytes = (float(v) for v in text.split(","))
        if not (0 < gflops < math.inf and 0 < gbytes < math.inf):  # also refuses nan
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--peak wants GFLOPS,GBPS (two positive numbers, like 350,40), "
                                         f"{', '.join(PEAK_NAMES)} or 'none', got {text!r}") from None
    return gflops, gbytes


def _device(text: str | None) -> str | None:
    """Checked before anything is built: a clear line instead of a failure deep in a run."""
    if text is None:
        return None
    from inspector.options import check_device

    return str(check_device(text))


def _output_path(text: str | None) -> str | None:
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CliError(f"--plot {text!r}: the file must end in .png, .svg or .pdf")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"--plot {text!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise CliError(f"--plot {text!r}: the folder {str(folder)!r} is not writable")
    return text


def _progress_bar(force: bool | None):  # noqa: ANN202
    if force is False or (force is None and not sys.stderr.isatty()):
        return None

    def show(done: int, total: int, name: str) -> None:
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[:40]:<40}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def _check_summary(args: argparse.Namespace) -> None:
    """What the command line can tell is wrong before a model is built."""
    if args.columns:
        given = [c.strip() for c in args.columns.split(",") if c.strip()]
        try:
            chosen = check_columns(None, given)
        except ValueError as exc:
            raise CliError(f"--columns: {exc}") from None
        known = all_columns()
        for typed, name in zip(given, chosen):
            _check_part(f"--columns {typed}", known[name].needs, args)
    ranked = next(f for f in all_figures() if args.sort in (f.name, *f.aliases))
    if args.top:
        _check_part(f"--sort {args.sort}", ranked.needs, args)
    if args.peak is not None and not args.timing and args.generate is None:
        raise CliError("--peak applies to per-layer times and serving's bounds: add --timing (or --generate N)")
    for flag, given in (("--repeat", args.repeat), ("--warmup", args.warmup)):
        if given is not None and not args.timing:
            raise CliError(f"{flag} applies to per-layer times: add --timing")
    if args.optimizer and not args.backward:
        raise CliError("--optimizer applies to a training step: add --backward")
    if args.timing and args.device == "meta":
        raise CliError("--timing needs real arithmetic: use --device cpu or cuda, not meta")
    if args.batch and args.input_size:
        raise CliError("give the batch inside --input-size (its first number), not with --batch as well")
    if split(args.model)[0] == DEFAULT_SOURCE and (args.model.endswith(".py") or "/" in args.model):
        raise CliError(f"name a model inside the file: {args.model}:ClassName (or :factory)")
    if args.by_type and (args.top or args.depth is not None):
        raise CliError("--by-type sums every call of each layer type: --depth and --top do not apply")
    _check_generation(args)


def _check_part(what: str, needs: str, args: argparse.Namespace) -> None:
    """``what`` shows a figure of a part of the report that the flags given do not run."""
    if needs == "timing" and not args.timing:
        raise CliError(f"{what} needs per-layer times: add --timing")
    if needs == "training" and not args.backward:
        raise CliError(f"{what} needs a training step: add --backward")


def _check_generation(args: argparse.Namespace) -> None:
    """--generate and its options, for summary and compare."""
    if args.prompt_len and args.generate is None:
        raise CliError("--prompt-len is the prompt of --generate N: add --generate (or give --seq-len)")
    if args.prompt_len and args.seq_len:
        raise CliError("give the prompt's length once: --prompt-len (with --generate) or --seq-len")
    if args.last_logits and args.generate is None:
        raise CliError("--last-logits applies to the prefill of --generate N: add --generate")
    if args.generate is not None and (getattr(args, "backward", False) or getattr(args, "timing", False)):
        raise CliError("--generate counts serving; --backward and --timing are separate runs")
    names = [args.model] if hasattr(args, "model") else list(args.models)
    if args.hf_class and not any(n.lower().startswith("hf:") for n in names):
        raise CliError("--hf-class chooses the transformers class of an hf: model; name one (hf:path/to/config_dir)")


def _build_options(args: argparse.Namespace) -> dict:
    """What summary and compare pass to the sources."""
    return {"batch": args.batch, "seq_len": args.prompt_len or args.seq_len, "input_size": args.input_size,
            "model_class": args.hf_class, "generate": args.generate, "last_logits": args.last_logits,
            "trust_pickle": args.trust_pickle}


def _say(heard: Sequence[str]) -> None:
    """One line on stderr for the libraries' warnings (every one of them with INSPECTOR_DEBUG=1)."""
    if not heard:
        return
    if os.environ.get("INSPECTOR_DEBUG"):
        sys.stderr.write("".join(f"inspector: warning: {line}\n" for line in heard))
        return
    first = heard[0] if len(heard[0]) <= 110 else heard[0][:109] + "…"
    more = f" and {len(heard) - 1} more" if len(heard) > 1 else ""
    sys.stderr.write(f"inspector: {len(heard)} library warning(s) while building and counting, not shown: "
                     f"{first}{more} (INSPECTOR_DEBUG=1 shows them)\n")


def cmd_summary(args: argparse.Namespace) -> int:
    from inspector import inspect_spec, load

    _check_summary(args)
    device = _device(args.device) or "cpu"
    with kept_warnings() as heard:
        spec = load(args.model, device=device, **_build_options(args))
        peak = "auto" if args.peak is None else None if args.peak == "none" else args.peak
        passes = {k: v for k, v in (("repeat", args.repeat), ("warmup", args.warmup)) if v is not None}
        report = inspect_spec(spec, device=spec.device or device, dtype=args.dtype, timing=args.timing, **passes,
                              peak=peak, flops=args.flops, backward=args.backward, optimizer=args.optimizer,
                              count_on=args.count_on, mode=args.mode, generate=args.generate)
    _say(heard)
    columns = args.columns.split(",") if args.columns else None
    if args.by_type:
        print(report.by_type().render(args.format, columns=columns, exact=args.exact))
    else:
        print(report.render(args.format, depth=args.depth, columns=columns, exact=args.exact, top=args.top,
                            by=args.sort))
    if not report.complete:
        return INCOMPLETE
    return FAILED if any(m for m in report.crosscheck()) else OK


def cmd_compare(args: argparse.Namespace) -> int:
    from inspector.compare import compare
    from inspector.sources import list_names
    from inspector.sources.torchvision_source import check_name

    device = _device(args.device)
    plot = _output_path(args.plot)
    from inspector.compare import COLUMNS as COMPARE_COLUMNS

    if args.sort and args.sort not in COMPARE_COLUMNS:
        raise CliError(f"--sort {args.sort}: choose a column from {', '.join(COMPARE_COLUMNS)}")
    if args.family and not args.all:
        raise CliError("--family chooses among all models: add --all")
    names = list(args.models)
    if args.all:
        names += list_names("tv", args.family)
    if not names:
        raise CliError("name models to compare, or pass --all")
    _check_generation(args)
    for name in names:
        if split(name)[0] == DEFAULT_SOURCE:
            check_name(name)  # an unknown torchvision name fails before anything is built
    result = compare(names, device=device, progress=_progress_bar(args.progress), **_build_options(args))
    _say(result.warnings)
    if args.sort:
        result = result.sorted(args.sort, descending=args.descending)
    print(output.render(result, args.format), end="" if args.format == "csv" else "\n")
    if plot:
        from inspector.plot import plot_pareto

        drawn = plot_pareto(result, plot)
        sys.stderr.write(f"wrote {plot}: {drawn}\n")
    if result.failed or any(r.far() for r in result.rows):
        return FAILED
    return INCOMPLETE if any(r.complete is False for r in result.rows) else OK


def cmd_list(args: argparse.Namespace) -> int:
    import json

    from inspector.render import tabulate

    entries = source(args.source).catalogue(args.family)
    keys = list(entries[0]) if entries else ["name"]
    if args.format == "json":
        print(json.dumps(entries, indent=1))
    else:
        rows = [[f"{v:,}" if isinstance(v, int) else v for v in entry.values()] for entry in entries]
        headers = [_LIST_HEADERS.get(k, k) for k in keys]
        print(tabulate(rows, headers, "github" if args.format == "markdown" else "simple"))
    return OK


def cmd_blog(args: argparse.Namespace) -> int:
    from inspector.blog import blog_report, plot_scaling, render_blog

    plot = _output_path(args.plot)
    data = blog_report()
    print(render_blog(data, tablefmt="github" if args.format == "markdown" else "simple"))
    if plot:
        plot_scaling(data["scaling"], plot)
        sys.stderr.write(f"wrote {plot}\n")
    return OK if all(c.ok or c.why for c in data["claims"]) else FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    from inspector import inspect_spec, load
    from inspector.blog import render_blog

    print(render_blog())
    spec = load("resnet50")
    print("\nResNet-50 (torchvision, weights=None, 1x3x224x224 on cpu):")
    report = inspect_spec(spec)
    print(report.table(depth=args.depth))
    published = spec.published
    print(f"published: {published.num_params:,} params, {published.gmacs} GMACs; measured "
          f"{report.total_params:,} params, {report.total_macs / 1e9:.3f} GMACs")
    print(report.crosscheck().summary())
    return OK if not report.crosscheck() and report.total_params == published.num_params else FAILED


def _generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (language models)")
    g.add_argument("--generate", type=_natural, metavar="N",
                   help="a prefill on the prompt, then N decode steps with the KV cache: a prefill/decode table")
    g.add_argument("--prompt-len", type=_positive, metavar="P", help="prompt tokens for --generate (default 128)")
    g.add_argument("--last-logits", action="store_true",
                   help="the prefill computes logits at the last position only (logits_to_keep=1), as generate()")
    g.add_argument("--hf-class", metavar="NAME",
                   help="hf: build this transformers class (GPT2Model, AutoModelForCausalLM...) instead of the "
                        "config's architectures")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="inspector", description="Per-layer parameters, MACs, FLOPs, memory and time "
                                "of PyTorch models, cross-checked against closed forms.",
                                epilog="Exit codes: 0 ok, 1 a failure or mismatch, 2 a usage or input error, "
                                       "3 some ops could not be counted. INSPECTOR_DEBUG=1 shows tracebacks.")
    p.add_argument("--version", action="version", version=f"inspector {inspector.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    s = sub.add_parser("summary", help="per-layer table of one model",
                       description="Per-layer table of one model. NAME: a torchvision name (resnet50), "
                                   "timm:NAME, hf:CONFIG_DIR or a cached hub name, path/to/file.py:Class, "
                                   "package.module:factory, or a model saved whole (model.pt, with --trust-pickle).")
    s.add_argument("model", metavar="NAME", help="the model (see above)")
    s.add_argument("--input-size", type=_size, metavar="N,C,H,W[:DTYPE]",
                   help="a random input of this size instead of the source's example (1,128:int64 for token ids)")
    s.add_argument("--batch", type=_positive, help="batch size of the example input (default 1)")
    s.add_argument("--seq-len", type=_positive, help="tokens per sequence for hf: models (default 128)")
    s.add_argument("--device", help="cpu (default), cuda, cuda:N or meta (counts without computing)")
    s.add_argument("--dtype", choices=tuple(DTYPES), help="run the weights in this dtype")
    s.add_argument("--mode", choices=MODES, help="module mode (default eval; train with --backward)")
    s.add_argument("--depth", type=_natural, help="levels of the call tree to show (default: all)")
    s.add_argument("--top", type=_positive, metavar="K", help="show only the K calls doing the most (see --sort)")
    s.add_argument("--sort", default="macs", choices=[n for f in all_figures() if f.rank for n in (f.name, *f.aliases)],
                   help="what --top ranks by (default macs)")
    s.add_argument("--columns", metavar="COL,COL", help="table columns, from: " + ", ".join(all_columns()))
    s.add_argument("--exact", action="store_true", help="exact integers instead of readable units (4.09 G)")
    s.add_argument("--flops", choices=tuple(CONVENTIONS), default="matmul",
                   help="FLOPs = 2 x MACs (matmul, default) or also elementwise work (all)")
    s.add_argument("--timing", action="store_true", help="per-layer forward times, GFLOP/s and roofline")
    s.add_argument("--peak", type=_peak, metavar="GFLOPS,GBPS",
                   help="device peak for the roofline and MFU (with --timing): GFLOPS,GBPS (--peak=GFLOPS,GBPS), "
                        "'auto' (default: the datasheet's for a known GPU, else measured), 'measure', 'datasheet' or "
                        "'none'")
    s.add_argument("--repeat", type=_positive, metavar="N",
                   help="profiled passes, and as many plain ones, that --timing averages (default 10)")
    s.add_argument("--warmup", type=_natural, metavar="N", help="passes of each kind --timing runs first (default 2)")
    s.add_argument("--count-on", choices=COUNT_ON, default="auto",
                   help="where the forward is counted: auto (default: meta copies for a GPU forward), meta or device")
    s.add_argument("--backward", action="store_true", help="also one training step: backward MACs and its memory")
    s.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                   help="optimizer of the training step (with --backward)")
    _generation_arguments(s)
    s.add_argument("--by-type", action="store_true",
                   help="calls and figures summed per layer type (Conv2d, Linear, ...) instead of per call")
    s.add_argument("--trust-pickle", action="store_true",
                   help="a model saved whole (model.pt) may be unpickled: this runs code stored in the file")
    s.add_argument("--format", choices=output.names("report"), default="table",
                   help="output format (default table; html: one self-contained page)")
    s.set_defaults(run=cmd_summary)
    c = sub.add_parser("compare", help="several models side by side",
                       description="Several models side by side; names from any source, mixed. A row more than "
                                   f"{FAR_PCT:g}%% from its published parameters or MACs is marked FAR and the "
                                   "exit code is 1.")
    c.add_argument("models", nargs="*", metavar="NAME", help="models to compare (as for summary)")
    c.add_argument("--all", action="store_true", help="every registered torchvision model (of --family)")
    c.add_argument("--family", choices=source("tv").families, help="with --all: one torchvision family")
    c.add_argument("--device", help="cpu (default), cuda, cuda:N or meta")
    c.add_argument("--batch", type=_positive, help="batch size of every example input (default 1)")
    c.add_argument("--seq-len", type=_positive, help="tokens per sequence for hf: models (default 128)")
    c.add_argument("--input-size", type=_size, metavar="N,C,H,W[:DTYPE]",
                   help="one random input size for every model (its own example otherwise)")
    c.add_argument("--sort", default=None, help="a column: params, macs, published_gmacs, metric_value, ...")
    c.add_argument("--descending", action="store_true", help="sort largest first")
    c.add_argument("--trust-pickle", action="store_true",
                   help="models saved whole (model.pt) may be unpickled: this runs code stored in the files")
    c.add_argument("--format", choices=output.names("comparison"), default="table",
                   help="output format (default table; html: the table and its plot in one page)")
    c.add_argument("--plot", metavar="FILE.png", help="accuracy against GMACs with the Pareto front, per task")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal)")
    _generation_arguments(c)
    c.set_defaults(run=cmd_compare)
    li = sub.add_parser("list", help="models a source knows", description="Models a source knows.")
    li.add_argument("--source", default="tv", choices=listing_sources(),
                    help="a source that lists its models (default tv: torchvision)")
    li.add_argument("--family", default=None, choices=source("tv").families, help="a torchvision family")
    li.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output format")
    li.set_defaults(run=cmd_list)
    b = sub.add_parser("blog", help="the post's figures checked, its exercises answered",
                       description="The post's figures checked against real modules (run from the repository "
                                   "root: the post's networks live in its models/ package).")
    b.add_argument("--format", choices=("table", "markdown"), default="table", help="output format")
    b.add_argument("--plot", metavar="FILE.png", help="the scaling study as a chart")
    b.set_defaults(run=cmd_blog)
    d = sub.add_parser("demo", help="the post's comparison and a ResNet-50 summary",
                       description="The post's comparison and a ResNet-50 summary (run from the repository root).")
    d.add_argument("--depth", type=_natural, default=2, help="levels of the ResNet-50 call tree (default 2)")
    d.set_defaults(run=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also while the parser is built (the sources' imports)
        sys.stderr.write("inspector: interrupted\n")
        return INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help, --version (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    try:
        return args.run(args)
    except SystemExit as exit_:  # the model's own code called sys.exit: never obeyed silently
        sys.stderr.write(f"inspector: error: the model's code called sys.exit({exit_.code!r})\n")
        return FAILED
    except BrokenPipeError:  # `inspector list | head`: the reader left; nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK
    except Exception as exc:  # noqa: BLE001 - the command line never shows a traceback
        if os.environ.get("INSPECTOR_DEBUG"):
            raise
        kind = "" if isinstance(exc, (InspectorError, ValueError)) else f"{type(exc).__name__}: "
        text = getattr(exc, "cli_message", None) or first_line(exc)  # a hint in the command line's terms
        sys.stderr.write(f"inspector: error: {kind}{text.splitlines()[0]}\n")
        return USAGE if isinstance(exc, (InspectorError, ValueError, KeyError, ImportError, OSError)) else FAILED


if __name__ == "__main__":
    raise SystemExit(main())
