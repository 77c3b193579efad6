"""Charts (matplotlib is an optional extra): the Pareto front of accuracy against MACs."""
from __future__ import annotations

from typing import Any

from inspector.errors import InspectorError


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


def plot_pareto(comparison: Any, path: str) -> list[str]:
    """Published acc@1 against GMACs (log), point size by params; returns the names on the front."""
    plt = pyplot()
    rows = [r for r in comparison.rows if not r.error and r.metric == "acc@1" and r.macs]
    if not rows:
        raise InspectorError("no model with a published acc@1 to plot")
    points = [(r.macs / 1e9, r.metric_value, r.name) for r in rows]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=[max(8, r.params / 4e5) for r in rows],
               alpha=0.45, color="tab:blue", label="model (size ~ params)")
    ax.plot([p[0] for p in front], [p[1] for p in front], "-o", color="tab:red", label="Pareto front")
    for cost, acc, name in front:
        ax.annotate(name, (cost, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per image (measured)")
    ax.set_ylabel("published ImageNet acc@1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [name for _, _, name in front]
