"""The post "CNN vs ANN Operations", checked: its figures against real modules, its exercises
answered, and its scaling claim measured.

The post's statements are data (``CLAIMS``); every measured number comes from inspecting a module
or from a closed form. Nothing measured is typed in.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from inspector.api import inspect
from inspector.errors import UnknownModelError
from inspector.render import tabulate

#: Where the post's networks live: the repository's models/ package, reached by name like any
#: user's code (the library never imports it).
POST_MODELS = "models.blog"


def post_model(name: str) -> type[nn.Module]:
    """A class of the post's networks (BlogANN, BlogCNN, DenseFirstLayer, ConvFirstLayer)."""
    from inspector.sources.python import resolve_object

    try:
        return resolve_object(f"{POST_MODELS}:{name}")
    except UnknownModelError as exc:
        raise UnknownModelError(f"the post's networks live in the repository's models/ package; run this from "
                                f"the repository root ({exc})") from None


def _sig_round(x: float, digits: int) -> float:
    return 0.0 if x == 0 else round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


@dataclass(frozen=True)
class Claim:
    """A figure the post states, how precisely it states it, and how to measure it."""

    text: str
    stated: float
    measure: Callable[[], float]
    digits: int | None = None  # significant digits the statement carries; None = exact
    why: str = ""


@dataclass(frozen=True)
class Checked:
    text: str
    stated: float
    measured: float
    ok: bool
    why: str

    @property
    def difference(self) -> float:
        return self.measured - self.stated


def _params(model: nn.Module) -> int:
    return inspect(model, device="meta").total_params


def _weights(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def _models() -> dict[str, nn.Module]:
    BlogANN, BlogCNN = post_model("BlogANN"), post_model("BlogCNN")  # noqa: N806 - classes
    ConvFirstLayer, DenseFirstLayer = post_model("ConvFirstLayer"), post_model("DenseFirstLayer")  # noqa: N806
    return {"ann": BlogANN(), "cnn": BlogCNN(), "cnn_pooled": BlogCNN(pool=2), "dense224": DenseFirstLayer(),
            "conv224": ConvFirstLayer()}


def claims() -> list[Claim]:
    m = _models()
    return [
        Claim("ANN 16 -> 8 -> 2: 154 parameters", 154, lambda: _params(m["ann"])),
        Claim("CNN conv(2 filters 3x3) -> flatten -> FC: 38 parameters", 38, lambda: _params(m["cnn"])),
        Claim("CNN 'conv -> pool -> FC' (as the text describes it): 38 parameters", 38,
              lambda: _params(m["cnn_pooled"]),
              why="the count skips the pool; with the 2x2 max-pool the FC sees 2 values: 26 parameters"),
        Claim("'4x fewer parameters' (154 vs 38)", 4, lambda: _params(m["ann"]) / _params(m["cnn"]), digits=1),
        Claim("ANN first layer 224x224x3 -> 100: 15,052,900 parameters", 15_052_900,
              lambda: _params(m["dense224"])),
        Claim("CNN first layer, 64 filters 3x3x3: 1,792 parameters", 1_792, lambda: _params(m["conv224"])),
        Claim("'1,792 weights' (the code's label)", 1_792, lambda: _weights(m["conv224"]),
              why="1,792 is 1,728 weights + 64 biases"),
        Claim("'8,700x fewer parameters in the first layer' (weights only)", 8_700,
              lambda: _weights(m["dense224"]) / _weights(m["conv224"]), digits=2),
        Claim("'Reduction: 8404x' (printed by the post's code)", 8_404,
              lambda: _params(m["dense224"]) / _params(m["conv224"]), digits=4,
              why="15,052,900 / 1,792 = 8,400.06; 8404 is an arithmetic slip"),
    ]


def check(claim: Claim) -> Checked:
    measured = float(claim.measure())
    shown = measured if claim.digits is None else _sig_round(measured, claim.digits)
    ok = shown == claim.stated
    return Checked(claim.text, claim.stated, measured, ok, "" if ok else claim.why)


# --- exercises ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    number: int
    question: str
    figures: dict[str, float]
    working: list[str] = field(default_factory=list)


def exercise_1() -> Answer:
    BlogANN, BlogCNN = post_model("BlogANN"), post_model("BlogCNN")  # noqa: N806 - classes
    ann = inspect(BlogANN(side=8, hidden=(32, 16)))
    cnn = inspect(BlogCNN(side=8, filters=8, pool=2))
    conv, fc = cnn.layer("net.0"), cnn.layer("net.4")
    return Answer(1, "64 -> 32 -> 16 -> 2 dense vs 3x3 conv (8 filters) -> 2x2 max-pool -> FC -> 2 on 8x8",
                  {"ann_params": ann.total_params, "cnn_params": cnn.total_params,
                   "ratio": ann.total_params / cnn.total_params},
                  [f"ANN: {' + '.join(str(r.params) for r in ann.layers if r.params)} = {ann.total_params}",
                   f"CNN conv: 3*3*1*8 + 8 = {conv.params}; 6x6x8 map pooled to 3x3x8 = 72 values; "
                   f"FC: 72*2 + 2 = {fc.params}; total {cnn.total_params}",
                   f"ratio {ann.total_params / cnn.total_params:.2f}x"])


def exercise_2() -> Answer:
    side, k = 10, 3
    positions = (side - k + 1) ** 2
    dense = nn.Linear(side * side, positions, bias=False)
    conv = nn.Conv2d(1, 1, k, bias=False)
    return Answer(2, "Dense first layer reproducing one 3x3 filter on a 10x10 image",
                  {"dense_weights": dense.weight.numel(), "nonzero_weights": positions * k * k,
                   "conv_weights": conv.weight.numel()},
                  [f"Interpretation: one output neuron per valid filter position ({side - k + 1}x{side - k + 1} = "
                   f"{positions}), each connected to all {side * side} pixels, as a dense layer is",
                   f"dense: {side * side} x {positions} = {dense.weight.numel()} separate weights, of which "
                   f"{positions} x 9 = {positions * k * k} would need to learn copies of the same 9 values",
                   f"the conv shares {conv.weight.numel()} weights across all {positions} positions"])


def exercise_3() -> Answer:
    conv = inspect(nn.Conv1d(1, 8, 3), torch.randn(1, 1, 20))
    dense = inspect(nn.Linear(20, 8), torch.randn(1, 20))
    return Answer(3, "A 1D CNN on 20 tabular features?",
                  {"conv1d_params": conv.total_params, "dense_params": dense.total_params},
                  ["Objection: a convolution assumes neighbouring columns are related and that a pattern means "
                   "the same wherever it appears; the order of tabular columns is arbitrary, so both fail",
                   f"Measured: Conv1d(1, 8, 3) has {conv.total_params} parameters vs {dense.total_params} for "
                   "Linear(20, 8) - the saving comes from an assumption that does not hold",
                   "Still appropriate when columns have a real order: time-ordered measurements, spectra, "
                   "sensor arrays, or features deliberately arranged by similarity"])


def exercise_4() -> Answer:
    from inspector import inspect_spec, load

    resnet = inspect_spec(load("resnet50", device="meta"))
    hidden = resnet.total_params // (150_528 + 1_000)
    dense = inspect(nn.Sequential(nn.Flatten(), nn.Linear(150_528, hidden), nn.ReLU(), nn.Linear(hidden, 1000)),
                    input_size=(1, 3, 224, 224), device="meta")
    return Answer(4, "ResNet-50 vs a dense net with the same number of parameters",
                  {"resnet_params": resnet.total_params, "resnet_macs_per_param": resnet.total_macs / resnet.total_params,
                   "dense_params": dense.total_params, "dense_macs_per_param": dense.total_macs / dense.total_params},
                  [f"ResNet-50: {resnet.total_params:,} params do {resnet.total_macs:,} MACs: "
                   f"{resnet.total_macs / resnet.total_params:.0f} per parameter (each filter reused at every position)",
                   f"dense 150528 -> {hidden} -> 1000: {dense.total_params:,} params, "
                   f"{dense.total_macs / dense.total_params:.2f} MAC per parameter: each weight used once",
                   "Reasons: (1) weight sharing + locality: the same features are learned once and detected "
                   "everywhere, so the data trains each weight far more often; (2) a built-in hierarchy "
                   f"(local edges -> parts -> objects) and pooling give translation robustness; (3) the dense net "
                   f"must squeeze the image into {hidden} numbers in one step, losing spatial structure"])


def exercise_5() -> Answer:
    ConvFirstLayer = post_model("ConvFirstLayer")  # noqa: N806 - a class
    same = inspect(ConvFirstLayer(padding="same"), device="meta")
    valid = inspect(ConvFirstLayer(padding="valid"), device="meta")
    per_position = 3 * 3 * 3
    return Answer(5, "MACs of a 3x3 conv with 64 filters on a 224x224 RGB image",
                  {"macs_per_filter_per_position": per_position, "same_macs": same.total_macs,
                   "valid_macs": valid.total_macs},
                  [f"per filter per position: 3 x 3 x 3 = {per_position} multiply-adds",
                   f"'same' padding: 224 x 224 positions x 64 filters x 27 = {same.total_macs:,}",
                   f"'valid' padding: 222 x 222 x 64 x 27 = {valid.total_macs:,}"])


EXERCISES = [exercise_1, exercise_2, exercise_3, exercise_4, exercise_5]


# --- scaling ----------------------------------------------------------------------------------------

SIDES = (4, 8, 16, 32, 64, 128, 224, 512, 1024)


@dataclass(frozen=True)
class Scaling:
    sides: tuple[int, ...]
    dense_params: tuple[int, ...]
    dense_macs: tuple[int, ...]
    conv_params: tuple[int, ...]
    conv_macs: tuple[int, ...]

    def slope(self, series: str) -> float:
        """Least-squares slope of log(series) against log(side)."""
        ys = [math.log(v) for v in getattr(self, series)]
        xs = [math.log(s) for s in self.sides]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def scaling(sides: tuple[int, ...] = SIDES) -> Scaling:
    """Dense (n*n*3 -> 100) and conv (64 filters 3x3x3, 'same') first layers as the image side grows."""
    ConvFirstLayer, DenseFirstLayer = post_model("ConvFirstLayer"), post_model("DenseFirstLayer")  # noqa: N806

    dense = [inspect(DenseFirstLayer(side=n), device="meta") for n in sides]
    conv = [inspect(ConvFirstLayer(side=n, padding="same"), device="meta") for n in sides]
    return Scaling(tuple(sides), tuple(r.total_params for r in dense), tuple(r.total_macs for r in dense),
                   tuple(r.total_params for r in conv), tuple(r.total_macs for r in conv))


def plot_scaling(result: Scaling, path: str) -> None:
    """Parameters and MACs side by side (for the dense layer they nearly coincide: each weight is
    used once per image, so one panel would draw them as one line)."""
    from inspector.plot import pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    series = {"dense": ("dense layer, n x n x 3 inputs -> 100 neurons", "o-", "tab:blue"),
              "conv": ("convolution, 64 filters of 3 x 3 x 3, 'same' padding", "s-", "tab:orange")}
    for ax, quantity, title in ((left, "params", "Parameters"), (right, "macs", "Multiply-accumulates per image")):
        for kind, (label, style, color) in series.items():
            values = getattr(result, f"{kind}_{quantity}")
            slope = result.slope(f"{kind}_{quantity}")
            ax.loglog(result.sides, values, style, color=color, label=f"{label} (slope {slope:.2f})")
        ax.set_title(title)
        ax.set_xlabel("image side n (pixels)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    left.set_ylabel("count")
    fig.suptitle("First layer as the image grows: parameters stay flat for the convolution, its work grows like n²")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the report -------------------------------------------------------------------------------------

def blog_report() -> dict:
    """All of it as data: checked claims, exercises, scaling."""
    return {"claims": [check(c) for c in claims()], "exercises": [f() for f in EXERCISES], "scaling": scaling()}


def render_blog(data: dict | None = None, tablefmt: str = "simple") -> str:
    data = data or blog_report()
    m = _models()
    parts = ["The post's networks, inspected:"]
    for key in ("ann", "cnn", "cnn_pooled"):
        parts += [f"\n[{key}]", inspect(m[key]).table(tablefmt=tablefmt)]
    rows = [["✓" if c.ok else "✗", c.text, f"{c.stated:,.10g}", f"{c.measured:,.2f}".rstrip("0").rstrip("."),
             f"{c.difference:+,.2f}", c.why] for c in data["claims"]]
    parts += ["\nThe post's figures against measurement:",
              tabulate(rows, ["", "Claim", "Stated", "Measured", "Difference", "Why"], tablefmt)]
    for answer in data["exercises"]:
        parts.append(f"\nExercise {answer.number}: {answer.question}")
        parts += [f"  - {line}" for line in answer.working]
    s = data["scaling"]
    rows = [[n, f"{a:,}", f"{b:,}", f"{c:,}", f"{d:,}"] for n, a, b, c, d in
            zip(s.sides, s.dense_params, s.dense_macs, s.conv_params, s.conv_macs)]
    rows.append(["log-log slope", *(f"{s.slope(k):.3f}" for k in ("dense_params", "dense_macs", "conv_params", "conv_macs"))])
    parts += ["\nScaling with image side n:",
              tabulate(rows, ["n", "dense params", "dense MACs", "conv params", "conv MACs"], tablefmt)]
    return "\n".join(parts)
