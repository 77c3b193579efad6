"""Charts (matplotlib is an optional extra): the Pareto front of accuracy against MACs, one panel per
task, every point labelled without overlaps, and the models that could not be drawn named."""
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


def _label_all(ax: Any, points: Sequence[tuple[float, float, str, bool]], renderer: Any) -> None:
    """Greedy placement: each label goes to the first offset where it overlaps no label, no point
    and stays inside the axes; front points are placed first."""
    from matplotlib.text import Text

    axes_box = ax.get_window_extent(renderer)
    marks = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    taken: list[Any] = []
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
                break
            text.remove()
        else:  # nowhere free: the nearest spot, so that no point is left unnamed
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 3), fontsize=6.5,
                               color="tab:red" if on_front else "0.25")
            text.update_positions(renderer)
            taken.append(Text.get_window_extent(text, renderer))


def _panel(ax: Any, rows: list[Any], ylabel: str) -> tuple[list[tuple[float, float, str, bool]], list[str]]:
    points = [(r.macs / 1e9, r.metric_value, r.name) for r in rows]
    front = pareto_front(points)
    on_front = {name for _, _, name in front}
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=[max(10, min(600, r.params / 4e5)) for r in rows],
               alpha=0.35, color="tab:blue", label="model (area ~ parameters)")
    ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:red", ms=4, lw=1.2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per input (measured)")
    ax.set_ylabel(f"published {ylabel}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    return [(x, y, n, n in on_front) for x, y, n in points], [name for _, _, name in front]


def plot_pareto(comparison: Any, path: str) -> str:
    """Published accuracy against measured GMACs, one panel per task; returns a one-line account:
    each panel's Pareto front and the models not drawn (no published accuracy, or failed)."""
    plt = pyplot()
    groups: dict[tuple[str, str], list[Any]] = {}
    skipped = []
    for r in comparison.rows:
        key = (r.family or "", r.metric or "")
        if r.error or not r.macs or key not in TASKS or r.metric_value is None:
            reason = ("failed" if r.error else "no published accuracy" if key not in TASKS or r.metric_value is None
                      else "no MACs")
            skipped.append(f"{r.name} ({reason})")
        else:
            groups.setdefault(key, []).append(r)
    if not groups:
        raise InspectorError("no model with a published accuracy to plot; not plotted: " + ", ".join(skipped))
    keys = [k for k in TASKS if k in groups]
    crowded = max(len(groups[k]) for k in keys) > 30
    heights = [8.5 if len(groups[k]) > 30 else 5 for k in keys]
    fig, axes = plt.subplots(len(keys), 1, figsize=(13 if crowded else 9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    panels, fronts = [], []
    for ax, key in zip(axes[:, 0], keys):
        ax.set_title(f"{key[0]}: {len(groups[key])} models", fontsize=10)
        points, front = _panel(ax, groups[key], TASKS[key])
        panels.append((ax, points))
        fronts.append(f"{key[0]} front: {', '.join(front)}")
    if skipped:
        fig.text(0.01, 0.005, "not plotted: " + ", ".join(skipped), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    renderer = fig.canvas.get_renderer()
    for ax, points in panels:  # after the layout, so that label boxes are where they will be drawn
        _label_all(ax, points, renderer)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "; ".join(fronts + ([f"not plotted: {', '.join(skipped)}"] if skipped else []))
