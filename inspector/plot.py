"""Charts (matplotlib is an optional extra): the Pareto front of accuracy against MACs, one panel per
task, marker areas with a legend of the parameter counts they stand for, parameters against MACs
for models without a published accuracy, labels that never overlap (a label with no free spot is
left out and named), and the models that could not be drawn named."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inspector.errors import InspectorError

#: (family, metric) -> axis label; a comparison is drawn in one panel per pair present.
TASKS = {
    ("classification", "acc@1"): "ImageNet acc@1 (%)",
    ("video", "acc@1"): "Kinetics-400 clip acc@1 (%)",
    ("segmentation", "miou"): "COCO-val2017-VOC-labels mIoU (%)",
    ("detection", "box_map"): "COCO val2017 box mAP",
    ("quantization", "acc@1"): "ImageNet acc@1, quantized (%)",
}


def pyplot() -> Any:
    """matplotlib.pyplot on a file-only backend, or a clear error when the extra is missing."""
    try:
        import matplotlib
    except ImportError:
        raise InspectorError("plotting needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (cost, accuracy, name) not beaten by any cheaper-or-equal, more-accurate point."""
    front, best = [], float("-inf")
    for cost, acc, name in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc, name))
            best = acc
    return front


#: Label offsets tried in turn (points), nearest first; far ones get a leader line.
_OFFSETS = [(dx, dy) for r in (5, 11, 18, 28, 40, 55, 75, 100, 130) for dx, dy in
            ((r, r // 2), (r, -r), (-r, r // 2), (-r, -r), (0, r), (0, -r - 4), (r, 0), (-r, 0),
             (r // 2, r), (-r // 2, r), (r // 2, -r), (-r // 2, -r))]


def _label_all(ax: Any, points: Sequence[tuple[float, float, str, bool]], renderer: Any) -> list[str]:
    """Greedy placement: each label goes to the first offset where it overlaps no label, no point
    and stays inside the axes; front points are placed first. A label with no free spot is left
    out (no two labels overlap); the names left out are returned."""
    from matplotlib.text import Text

    axes_box = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    taken: list[Any] = []
    left_out = []
    for (x, y, name, on_front), _ in sorted(zip(points, marks), key=lambda p: not p[0][3]):
        for dx, dy in _OFFSETS:
            far = abs(dx) > 20 or abs(dy) > 20
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=6.5,
                               ha="left" if dx > 0 else "right" if dx < 0 else "center",
                               va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                               color="tab:red" if on_front else "0.25",
                               arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if far else None)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer).expanded(1.05, 1.15)  # the text alone, not its leader
            inside = axes_box.contains(box.x0, box.y0) and axes_box.contains(box.x1, box.y1)
            clear = not any(box.overlaps(other) for other in taken)
            clear = clear and not any(box.contains(mx, my) for mx, my in marks)
            if inside and clear:
                taken.append(box)
                text.set_gid("point-label")
                break
            text.remove()
        else:  # nowhere free: no label rather than one on top of another
            left_out.append(name)
    return left_out


def _bubble(params: float) -> float:
    """Marker area (points²) for a model of ``params`` parameters."""
    return max(10.0, min(2000.0, params / 4e5))


def _round(count: float) -> str:
    """A round parameter count as people say it: 3 M, 90 M, 500 k, 1.5 G."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:g} {suffix}"
    return f"{count:g}"


def _size_legend(ax: Any, params: Sequence[float]) -> Any:
    """A legend of three marker sizes with the parameter counts they stand for (round numbers
    spanning the models drawn)."""
    import math

    low, high = max(min(params), 1.0), max(max(params), 1.0)
    picks = sorted({float(f"{v:.0e}") for v in (low, math.sqrt(low * high), high)})
    handles = [ax.scatter([], [], s=_bubble(v), color="tab:blue", alpha=0.35, label=_round(v)) for v in picks]
    room = max(1.3, 0.11 * math.sqrt(_bubble(picks[-1])))  # rows as tall as the largest marker (font sizes)
    return ax.legend(handles=handles, title="parameters", loc="upper left", fontsize=7,
                     title_fontsize=7, labelspacing=room, borderpad=room / 2, handletextpad=room / 2, frameon=True)


def _panel(ax: Any, rows: list[Any], ylabel: str) -> tuple[list[tuple[float, float, str, bool]], list[str]]:
    points = [(r.macs / 1e9, r.metric_value, r.name) for r in rows]
    front = pareto_front(points)
    on_front = {name for _, _, name in front}
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=[_bubble(r.params) for r in rows],
               alpha=0.35, color="tab:blue")
    line, = ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:red", ms=4, lw=1.2,
                    label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per input (measured)")
    ax.set_ylabel(f"published {ylabel}")
    ax.grid(True, which="both", alpha=0.25)
    ax.add_artist(_size_legend(ax, [r.params for r in rows]))
    ax.legend(handles=[line], loc="lower right", fontsize=8)
    return [(x, y, n, n in on_front) for x, y, n in points], [name for _, _, name in front]


def _cost_panel(ax: Any, rows: list[Any]) -> list[tuple[float, float, str, bool]]:
    """Parameters against MACs (both measured): for models without a published accuracy."""
    points = [(r.macs / 1e9, r.params / 1e6, r.name, r.metric_value is None) for r in rows]
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, alpha=0.6,
               color=["tab:orange" if p[3] else "tab:blue" for p in points])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GMACs per input (measured)")
    ax.set_ylabel("parameters (millions, measured)")
    ax.grid(True, which="both", alpha=0.25)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", ls="", color="tab:orange", label="no published accuracy"),
                       Line2D([], [], marker="o", ls="", color="tab:blue", label="with one (also above)")],
              loc="lower right", fontsize=7)
    return [(x, y, n, False) for x, y, n, _ in points]


def pareto_figure(comparison: Any) -> tuple[Any, str]:
    """The figure: published accuracy against measured GMACs, one panel per task, and parameters
    against GMACs when some model has no published accuracy; with a one-line account (each
    panel's Pareto front, labels left out for lack of room, the models not drawn)."""
    plt = pyplot()
    groups: dict[tuple[str, str], list[Any]] = {}
    drawn, skipped, no_metric = [], [], []
    for r in comparison.rows:
        key = (r.family or "", r.metric or "")
        if r.error or not r.macs:
            skipped.append(f"{r.name} ({'failed' if r.error else 'no MACs'})")
            continue
        drawn.append(r)
        if key in TASKS and r.metric_value is not None:
            groups.setdefault(key, []).append(r)
        else:
            no_metric.append(r)
    if not drawn:
        raise InspectorError("no model with MACs to plot; not plotted: " + ", ".join(skipped))
    keys = [k for k in TASKS if k in groups]
    sizes = [len(groups[k]) for k in keys] + ([len(drawn)] if no_metric else [])
    crowded = max(sizes) > 30
    heights = [8.5 if n > 30 else 5 for n in sizes]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(13 if crowded else 9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    panels, account = [], []
    for ax, key in zip(axes[:, 0], keys):
        ax.set_title(f"{key[0]}: {len(groups[key])} models (marker area ~ parameters)", fontsize=10)
        points, front = _panel(ax, groups[key], TASKS[key])
        panels.append((ax, points))
        account.append(f"{key[0]} front: {', '.join(front)}")
    if no_metric:
        ax = axes[len(keys), 0]
        ax.set_title(f"parameters against MACs: {len(drawn)} models, {len(no_metric)} without a published accuracy",
                     fontsize=10)
        panels.append((ax, _cost_panel(ax, drawn)))
        account.append(f"parameters against MACs: {len(drawn)} models")
    if skipped:
        fig.text(0.01, 0.005, "not plotted: " + ", ".join(skipped), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    renderer = fig.canvas.get_renderer()
    left_out = []
    for ax, points in panels:  # after the layout, so that label boxes are where they will be drawn
        left_out += _label_all(ax, points, renderer)
    if left_out:
        account.append(f"unlabelled for lack of room: {', '.join(sorted(set(left_out)))}")
    if skipped:
        account.append(f"not plotted: {', '.join(skipped)}")
    return fig, "; ".join(account)


def plot_pareto(comparison: Any, path: str) -> str:
    """``pareto_figure`` written to ``path`` (.png, .svg, .pdf); returns its account."""
    fig, account = pareto_figure(comparison)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return account


def pareto_svg(comparison: Any) -> tuple[str, str]:
    """``pareto_figure`` as an inline SVG element (text kept as text) and its account."""
    import io

    plt = pyplot()
    fig, account = pareto_figure(comparison)
    out = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(out, format="svg")
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg"):], account
