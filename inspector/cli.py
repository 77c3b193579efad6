"""Command line: ``inspector summary|compare|list|blog|demo`` (also ``python -m inspector``)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from inspector.errors import InspectorError

FORMATS = ("table", "markdown", "json", "csv")


def _tablefmt(fmt: str) -> str:
    return "github" if fmt == "markdown" else "simple"


def _size(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size wants integers like 1,3,224,224, got {text!r}") from None


def _peak(text: str) -> tuple[float, float] | str | None:
    if text in ("measure", "none"):
        return None if text == "none" else text
    try:
        gflops, gbytes = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--peak wants GFLOPS,GBPS (like 350,40), 'measure' or 'none', "
                                         f"got {text!r}") from None
    return gflops, gbytes


def cmd_summary(args: argparse.Namespace) -> int:
    from inspector import inspect
    from models import zoo

    device = args.device or "cpu"
    model = zoo.torchvision_model(args.model, device="cpu" if zoo.entry(args.model).family == "quantization" else device)
    inputs = None if args.input_size else zoo.example_inputs(args.model, device)
    report = inspect(model, inputs, input_size=args.input_size, device=device, dtype=args.dtype,
                     timing=args.timing, peak=args.peak)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    elif args.format == "csv":
        from inspector.compare import compare

        print(compare([(args.model, model, inputs)], device=device).to_csv(), end="")
    else:
        print(report.table(depth=args.depth, tablefmt=_tablefmt(args.format)))
    return 0


def _progress(done: int, total: int, name: str) -> None:
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_compare(args: argparse.Namespace) -> int:
    from inspector.compare import compare
    from models import zoo

    names = list(args.models)
    if args.all:
        names += zoo.list_names(args.family)
    if not names:
        raise InspectorError("name models to compare, or pass --all")
    for name in names:
        zoo.check_name(name)
    progress = _progress if (args.all or args.progress) else None
    result = compare(names, device=args.device, progress=progress)
    if args.sort:
        result = result.sorted(args.sort, descending=args.descending)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=1))
    elif args.format == "csv":
        print(result.to_csv(), end="")
    else:
        print(result.table(tablefmt=_tablefmt(args.format)))
    if args.plot:
        from inspector.plot import plot_pareto

        front = plot_pareto(result, args.plot)
        sys.stderr.write(f"wrote {args.plot}; Pareto front: {', '.join(front)}\n")
    return 1 if result.failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from inspector.render import tabulate
    from models import zoo

    rows = [[n, zoo.entry(n).family, f"{zoo.entry(n).num_params:,}", zoo.entry(n).gmacs,
             "x".join(map(str, zoo.entry(n).input_size))] for n in zoo.list_names(args.family)]
    if args.format == "json":
        print(json.dumps([dict(zip(["name", "family", "num_params", "gmacs", "input"], r)) for r in rows], indent=1))
    else:
        print(tabulate(rows, ["Model", "Family", "Published params", "Published GMACs", "Input"], _tablefmt(args.format)))
    return 0


def cmd_blog(args: argparse.Namespace) -> int:
    from inspector.blog import blog_report, plot_scaling, render_blog

    data = blog_report()
    print(render_blog(data, tablefmt=_tablefmt(args.format)))
    if args.plot:
        plot_scaling(data["scaling"], args.plot)
        sys.stderr.write(f"wrote {args.plot}\n")
    return 0 if all(c.ok or c.why for c in data["claims"]) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from inspector import inspect
    from inspector.blog import render_blog
    from models import zoo

    print(render_blog())
    print("\nResNet-50 (torchvision, weights=None, 1x3x224x224 on cpu):")
    report = inspect(zoo.torchvision_model("resnet50"))
    print(report.table(depth=args.depth))
    published = zoo.entry("resnet50")
    print(f"published: {published.num_params:,} params, {published.gmacs} GMACs; measured "
          f"{report.total_params:,} params, {report.total_macs / 1e9:.3f} GMACs")
    print(report.crosscheck().summary())
    return 0 if not report.crosscheck() and report.total_params == published.num_params else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inspector", description="Per-layer parameters, MACs and FLOPs of PyTorch models.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="per-layer table of one torchvision model")
    s.add_argument("model")
    s.add_argument("--input-size", type=_size)
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or meta")
    s.add_argument("--depth", type=int, default=None)
    s.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"), default=None)
    s.add_argument("--timing", action="store_true", help="per-layer forward times, GFLOP/s and roofline")
    s.add_argument("--peak", type=_peak, default="measure",
                   help="device peak for the roofline: GFLOPS,GBPS, 'measure' (default) or 'none'")
    s.add_argument("--format", choices=FORMATS, default="table")
    s.set_defaults(run=cmd_summary)
    c = sub.add_parser("compare", help="several models side by side")
    c.add_argument("models", nargs="*")
    c.add_argument("--all", action="store_true", help="every registered model (of --family)")
    c.add_argument("--family", choices=["classification", "segmentation", "video", "detection", "optical_flow",
                                        "quantization"])
    c.add_argument("--device", default=None)
    c.add_argument("--sort", default=None, help="a column: params, macs, published_gmacs, metric_value, ...")
    c.add_argument("--descending", action="store_true")
    c.add_argument("--format", choices=FORMATS, default="table")
    c.add_argument("--plot", metavar="FILE.png", help="accuracy vs GMACs with the Pareto front")
    c.add_argument("--progress", action="store_true")
    c.set_defaults(run=cmd_compare)
    li = sub.add_parser("list", help="registered torchvision models")
    li.add_argument("--family", default=None)
    li.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    li.set_defaults(run=cmd_list)
    b = sub.add_parser("blog", help="the post's figures checked, its exercises answered")
    b.add_argument("--format", choices=("table", "markdown"), default="table")
    b.add_argument("--plot", metavar="FILE.png", help="the scaling study as a chart")
    b.set_defaults(run=cmd_blog)
    d = sub.add_parser("demo", help="the post's comparison and a ResNet-50 summary")
    d.add_argument("--depth", type=int, default=2)
    d.set_defaults(run=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (InspectorError, ValueError) as exc:
        sys.stderr.write(f"inspector: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
