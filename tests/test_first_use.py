"""What a new user meets first, one test per friction point found trying the tool beside its peers:
hints that fit where the user is, sources (saved files, your own file, Hugging Face paths), compare's
marks and notes, the plots, and the text around the table. Expected numbers are hand arithmetic or
published metadata."""
import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from inspector import InputError, InspectorError, LayerError, NotAModuleError, inspect, inspect_spec, load
from inspector.compare import FAR_PCT, Comparison, ComparisonRow
from inspector.render import short_config
from inspector.sources import torchvision_source as zoo
from inspector.units import size

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str, env: dict | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=600, cwd=cwd)


def one_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


# --- hints that fit where the user is ---------------------------------------------------------------------

@pytest.mark.parametrize("model", [torchvision.models.resnet18(weights=None), nn.Linear(12, 2)],
                         ids=["resnet18", "linear"])
def test_a_list_of_one_tensor_gets_a_hint(model):
    x = torch.randn(1, 3, 32, 32) if isinstance(model, torchvision.models.ResNet) else torch.randn(1, 12)
    with pytest.raises(LayerError, match=r"hint: the input is a list.*inspect\(model, x\)"):
        inspect(model, [x])
    assert "torch.from_numpy" not in str(pytest.raises(LayerError, inspect, model, [x]).value)


def test_an_uncalled_factory_is_named_with_the_fix():
    with pytest.raises(NotAModuleError, match=r"got the function resnet18.*inspect\(resnet18\(\), x\)"):
        inspect(torchvision.models.resnet18, torch.randn(1, 3, 32, 32))


class TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_input_size_for_a_token_model_makes_token_ids():
    report = inspect(TokenModel(), input_size=(3, 16))
    assert report.run.input_dtypes == ("int64",)
    assert report.total_macs == 3 * 16 * 8 * 2  # the head on every token: 768
    assert any("token ids" in note and "embedding" in note for note in report.notes)
    floats = inspect(nn.Linear(16, 2), input_size=(3, 16))  # a model without an embedding: floats as before
    assert floats.run.input_dtypes == ("float32",) and floats.total_macs == 3 * 16 * 2


def test_a_bare_int_input_size_is_refused_before_anything_runs():
    ran = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 2)

        def forward(self, x):
            ran.append(x.shape)
            return self.fc(x)

    with pytest.raises(InputError, match=r"input_size=64 is one number.*\(1, 64\)"):
        inspect(Spy(), input_size=64)
    assert ran == []


def test_a_uint8_image_gets_a_hint():
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(LayerError, match=r"hint: a uint8 image.*x\.float\(\) / 255"):
        inspect(torchvision.models.resnet18(weights=None), image)


def test_an_unknown_table_format_is_refused():
    report = inspect(nn.Linear(4, 2), torch.randn(1, 4))
    with pytest.raises(ValueError, match="unknown table format 'grid2'"):
        report.table(tablefmt="grid2")


def test_the_command_line_hints_in_its_own_terms():
    line = one_line(run_cli("summary", "resnet18", "--device", "meta", "--input-size", "3,64,64"))
    assert "--input-size 1,3,224,224" in line and "unsqueeze" not in line
    with pytest.raises(LayerError, match=r"x\.unsqueeze\(0\)"):  # Python keeps Python's
        inspect(torchvision.models.resnet18(weights=None), torch.randn(3, 64, 64), device="meta")
    line = one_line(run_cli("summary", "resnet18", "--input-size", "1,3,32,32:int64"))
    assert "without :int64" in line and "x.float()" not in line


# --- sources -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model = torchvision.models.resnet18(weights=None)
    torch.save(model, folder / "whole.pt")
    torch.save(model.state_dict(), folder / "weights.pth")
    torch.save({"model": model.state_dict(), "epoch": 3}, folder / "checkpoint.pt")
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(nn.Linear(4, 2)), folder / "scripted.pt")
    script = ("import torch\nfrom torch import nn\nclass Local(nn.Module):\n    def __init__(self):\n"
              "        super().__init__()\n        self.fc = nn.Linear(4, 2)\n"
              f"torch.save(Local(), {str(folder / 'local.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=ENV, timeout=300)
    return folder


def test_a_whole_saved_model_loads_only_when_trusted(saved):
    refused = run_cli("summary", str(saved / "whole.pt"), "--device", "meta")
    assert refused.returncode == 2 and "runs code stored in the file" in one_line(refused)
    assert "--trust-pickle" in one_line(refused)
    out = run_cli("summary", str(saved / "whole.pt"), "--device", "meta", "--trust-pickle", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["totals"]["params"] == zoo.entry("resnet18").num_params == 11_689_512  # published
    assert data["totals"]["macs"] / 1e9 == pytest.approx(zoo.entry("resnet18").gmacs, abs=5e-4)  # 1.814
    assert any("pickled code ran" in note for note in data["notes"])
    with pytest.raises(InspectorError, match="trust_pickle=True"):
        load(str(saved / "whole.pt"), device="meta")
    assert inspect_spec(load(str(saved / "whole.pt"), device="meta", trust_pickle=True)).total_params == 11_689_512


@pytest.mark.parametrize("name,words", [
    ("weights.pth", r"holds a state_dict \(122 tensors.*net\.py:Net"),
    ("checkpoint.pt", r"checkpoint whose 'model' entry is a state_dict"),
    ("scripted.pt", r"is a TorchScript archive: hooks do not run inside it"),
])
def test_saved_files_without_a_loadable_module_get_one_line(saved, name, words):
    out = run_cli("summary", str(saved / name), "--trust-pickle")
    assert out.returncode == 2 and re.search(words, one_line(out)), out.stderr


def test_a_pickled_class_from_another_script_says_why_it_cannot_load(saved):
    out = run_cli("summary", str(saved / "local.pt"), "--trust-pickle")
    assert out.returncode == 2 and "cannot be imported here" in one_line(out) and "Local" in one_line(out)


def test_a_misspelled_name_lists_only_what_could_be_a_model(tmp_path):
    (tmp_path / "good.py").write_text("import torch\nfrom torch import nn\nfrom math import sqrt\n"
                                      "class Net(nn.Module):\n    def forward(self, x):\n        return x\n"
                                      "def build():\n    return Net()\nWIDTH = 4\n")
    line = one_line(run_cli("summary", f"{tmp_path / 'good.py'}:Nett"))
    assert "did you mean Net?" in line and line.endswith("functions: Net, build")
    assert "torch" not in line.split("has no")[1] and "sqrt" not in line and "WIDTH" not in line


def test_a_model_file_with_a_syntax_error_exits_2(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\ndef f(:\n    pass\n")
    out = run_cli("summary", f"{tmp_path / 'broken.py'}:Net")
    assert out.returncode == 2 and "broken.py line 2: invalid syntax" in one_line(out)


def test_a_placeholder_hf_path_says_so_without_library_internals():
    out = run_cli("summary", "hf:path/to/config_dir")
    line = one_line(out)
    assert out.returncode == 2 and line.endswith("no such directory or cached hub name")
    assert "Repo id" not in line and "repo_type" not in line


# --- compare -----------------------------------------------------------------------------------------------

def _row(name: str, params: int, published_params: int, gmacs: float, published_gmacs: float) -> ComparisonRow:
    return ComparisonRow(name=name, params=params, published_params=published_params, macs=int(gmacs * 1e9),
                         published_gmacs=published_gmacs, params_diff=params - published_params,
                         macs_diff_pct=100 * (gmacs / published_gmacs - 1), metric="acc@1", metric_value=70.0,
                         family="classification", layers=3, complete=True)


def test_rows_far_from_their_published_figures_are_marked():
    assert FAR_PCT == 5.0
    rows = [_row("near", 1000, 1000, 1.0499, 1.0),      # +4.99% MACs: within
            _row("far_macs", 1000, 1000, 4.0, 1.0),     # +300%
            _row("far_params", 1051, 1000, 1.0, 1.0)]   # +5.1% parameters
    result = Comparison(rows)
    assert [r.far() for r in rows] == [[], ["MACs +300.00%"], ["params +5.10%"]]
    assert [r.check for r in rows] == ["ok", "FAR", "FAR"]
    assert "FAR: more than 5% from the published figure: far_macs (MACs +300.00%); far_params (params +5.10%)" \
        in result.table()


def test_compare_notes_fallbacks_marks_far_rows_and_exits_1():
    out = run_cli("compare", "fasterrcnn_mobilenet_v3_large_320_fpn", "quantized_resnet18", "--device", "meta",
                  env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert "Note: ran on cpu, not meta: detection models run data-dependent ops (nonzero, NMS) that meta cannot: " \
           "fasterrcnn_mobilenet_v3_large_320_fpn" in lines
    assert "Note: ran on cpu, not meta: quantized kernels exist on the CPU only: quantized_resnet18" in lines
    far = next(line for line in lines if line.startswith("fasterrcnn"))
    assert far.split()[-1] == "FAR" and next(line for line in lines if line.startswith("quantized")).split()[-1] == "ok"
    # the libraries' warnings: one line, not the warnings themselves
    stderr = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(stderr) == 1 and "library warning(s)" in stderr[0] and "INSPECTOR_DEBUG=1" in stderr[0]


def test_compare_numbers_are_right_aligned():
    rows = [_row("a", 9, 9, 0.5, 0.5), _row("bbbbbbbb", 123_456_789, 123_456_789, 12.25, 12.25)]
    lines = Comparison(rows).table().splitlines()
    header, body = lines[0], lines[2:4]
    params_end = header.index("Params") + len("Params")  # a right-aligned column ends under its header's end
    assert [line[:params_end].split()[-1] for line in body] == ["9", "123,456,789"]
    assert all(line[params_end - 1] != " " for line in body)
    assert body[0].startswith("a ")  # names left


# --- plots -------------------------------------------------------------------------------------------------

def _crowd(n: int) -> Comparison:
    """``n`` models scattered at random (a fixed seed) over 5-30 GMACs and 80-82% accuracy, where labels
    used to collide; 10 M parameters and 3 M more for each."""
    draw = random.Random(0)
    rows = []
    for i in range(n):
        gmacs = 5 * 6 ** draw.random()
        row = _row(f"model_{i:02d}", 10_000_000 + 3_000_000 * i, 10_000_000 + 3_000_000 * i, gmacs, gmacs)
        rows.append(ComparisonRow(**{**row.__dict__, "metric_value": 80 + 2 * draw.random()}))
    return Comparison(rows)


def test_plot_labels_never_overlap_and_the_left_out_are_named():
    pytest.importorskip("matplotlib")
    from matplotlib.text import Text

    from inspector.plot import pareto_figure, pyplot

    fig, account = pareto_figure(_crowd(60))
    renderer = fig.canvas.get_renderer()
    labels = [t for ax in fig.axes for t in ax.texts if t.get_gid() == "point-label"]
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words, not their leader lines
    assert len(labels) > 20
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    named = {t.get_text() for t in labels}
    left_out = set(re.search(r"unlabelled for lack of room: ([^;]*)", account).group(1).split(", ")) \
        if "unlabelled" in account else set()
    assert named | left_out == {f"model_{i:02d}" for i in range(60)} and not named & left_out
    pyplot().close(fig)


def test_labels_with_no_room_are_left_out_and_named():
    pytest.importorskip("matplotlib")
    from matplotlib.text import Text

    from inspector.plot import _label_all, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))  # room for a few labels only
    draw = random.Random(1)
    points = [(draw.random(), draw.random(), f"m{i:02d}", False) for i in range(40)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    renderer = fig.canvas.get_renderer()
    left_out = _label_all(ax, points, renderer)
    labels = [t for t in ax.texts if t.get_gid() == "point-label"]
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the words, not their leader lines
    assert left_out and labels and len(left_out) + len(labels) == 40
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert set(left_out) | {t.get_text() for t in labels} == {f"m{i:02d}" for i in range(40)}
    plt.close(fig)


def test_plot_has_a_size_legend_with_values():
    pytest.importorskip("matplotlib")
    from inspector.plot import _bubble, pareto_figure, pyplot

    fig, _ = pareto_figure(_crowd(10))  # 10 M to 37 M parameters
    legends = [a.get_legend() for a in fig.axes] + [c for a in fig.axes for c in a.artists]
    legend = next(leg for leg in legends if leg is not None and leg.get_title().get_text() == "parameters")
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["10 M", "20 M", "40 M"]  # one significant digit: 10 M, sqrt(10 * 37) = 19 M, 37 M
    sizes = [h.get_sizes()[0] for h in legend.legend_handles]
    assert sizes == [_bubble(10e6), _bubble(20e6), _bubble(40e6)] == [25.0, 50.0, 100.0]  # params / 400,000
    pyplot().close(fig)


def test_models_without_a_published_accuracy_are_drawn_parameters_against_macs():
    pytest.importorskip("matplotlib")
    from inspector.plot import pareto_figure, pyplot

    rows = [ComparisonRow(name=f"m{i}", params=1000 * (i + 1), macs=10**6 * (i + 1), layers=1, complete=True)
            for i in range(4)]
    fig, account = pareto_figure(Comparison(rows))
    (ax,) = fig.axes
    assert ax.get_title().startswith("parameters against MACs: 4 models, 4 without a published accuracy")
    points = ax.collections[0].get_offsets()
    assert [tuple(p) for p in points] == [(0.001 * (i + 1), 0.001 * (i + 1)) for i in range(4)]  # GMACs, M params
    pyplot().close(fig)


# --- the text around the table -----------------------------------------------------------------------------

@pytest.mark.parametrize("layer,short", [
    (nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), "3 → 64, k=7, s=2, p=3, bias=False"),
    (nn.Conv2d(64, 64, (1, 3)), "64 → 64, k=(1, 3), s=1"),
    (nn.Linear(512, 1000), "512 → 1000"),
    (nn.Linear(512, 10, bias=False), "512 → 10, bias=False"),
    (nn.BatchNorm2d(64), "64"),
    (nn.MaxPool2d(3, 2, 1), "k=3, s=2, p=1"),
    (nn.AdaptiveAvgPool2d((1, 1)), "output_size=1"),
    (nn.ReLU(inplace=True), ""),
    (nn.Dropout(0.1), "p=0.1"),
    (nn.LayerNorm(768), "(768,)"),
    (nn.Embedding(50257, 768), "50257, 768"),
    (nn.Conv2d(256, 256, 3, padding=2, dilation=2, groups=1), "256 → 256, k=3, s=1, p=2, dilation=2"),
    (nn.Conv2d(256, 256, 3, padding=2, dilation=2, groups=32), "256 → 256, k=3, s=1, p=2, dilation=2, g…"),
])
def test_the_config_column_shortens_extra_repr(layer, short):
    assert short_config(layer.extra_repr()) == short
    assert len(short_config("x" * 100)) == 40 and short_config("x" * 100).endswith("…")


def test_by_type_sums_every_call_of_a_type():
    report = inspect_spec(load("resnet18", device="meta"))
    by_type = report.by_type()
    convs, norms, relus = by_type["Conv2d"], by_type["BatchNorm2d"], by_type["ReLU"]
    # 20 convolutions hold everything but the classifier's 512 x 1000 + 1000 and the norms' 2 x 4,800 channels
    assert (convs.calls, convs.params) == (20, 11_689_512 - 513_000 - 9_600)
    assert convs.macs == 1_814_073_344 - 512 * 1000
    assert (norms.calls, norms.params) == (20, 2 * (64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512))
    assert relus.calls == 1 + 8 * 2  # the stem's, and twice in each of 8 blocks
    assert sum(t.calls for t in by_type) == len(report.layers)
    assert [t.type for t in by_type][:2] == ["Conv2d", "Linear"]  # largest MACs first
    out = run_cli("summary", "resnet18", "--device", "meta", "--by-type")
    assert out.returncode == 0
    conv_line = next(line for line in out.stdout.splitlines() if line.startswith("Conv2d"))
    assert conv_line.split()[:3] == ["Conv2d", "20", "11.2"]
    assert one_line(run_cli("summary", "resnet18", "--by-type", "--depth", "1")).endswith("do not apply")


def test_the_training_footer_has_one_peak_and_backward_flops():
    report = inspect(torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64), backward=True)
    lines = str(report).splitlines()
    footer = lines[lines.index(next(x for x in lines if x.startswith("Params:"))):]
    assert sum(line.count("peak") for line in footer) == 1
    step = next(line for line in footer if line.startswith("Step memory"))
    assert f"peak of the step {size(report.training_memory.peak)}, in {report.training_memory.peak_phase}" in step
    assert not next(line for line in footer if line.startswith("Input:")).endswith("B")  # no second "peak" there
    training = next(line for line in footer if line.startswith("Training step"))
    macs, flops = report.total_backward_macs, report.training.total_backward_flops
    assert flops == 2 * macs  # flops="matmul"
    assert f"backward {macs:,}" in training and f"{flops:,}" in training and training.endswith("FLOPs")


def test_every_column_with_a_total_has_one():
    report = inspect(torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64), backward=True)
    table = report.table(depth=1).splitlines()
    header = re.split(r"\s{2,}", table[0].strip())
    total = re.split(r"\s{2,}", next(line for line in table if line.startswith("Total")).strip())
    figures = header[4:]  # after Layer, Type and the two shapes
    assert figures == ["Params", "Params %", "MACs", "MACs %", "Bwd MACs", "Saved act."]
    assert len(total) == 1 + len(figures) and "" not in total


def test_the_roofline_columns_total_the_whole_model():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    report = inspect(model, torch.randn(4, 64), timing=True, repeat=2, warmup=1, peak=(100.0, 10.0))
    table = report.table().splitlines()
    header = re.split(r"\s{2,}", table[0].strip())
    total = dict(zip(header[-4:], re.split(r"\s+", next(x for x in table if x.startswith("Total")).strip())[-4:]))
    root = report.layer("")
    # the whole model: its FLOPs (2 x 4 x (64 x 64 + 64 x 8) = 36,864) over its own time and its bytes moved
    assert root.inclusive_flops == 36_864
    assert total["GFLOP/s"] == f"{root.achieved_gflops:.1f}" and total["FLOP/B"] == f"{root.arithmetic_intensity:.1f}"
    assert total["Bound"] == root.bound(100.0, 10.0)
    assert total["MFU"] == f"{100 * root.achieved_gflops / 100.0:.1f}%"  # of the given 100 GFLOP/s


def test_params_are_said_once():
    resnet = inspect_spec(load("resnet50", device="meta"))
    line = str(resnet).splitlines()[-3]
    assert line.startswith("Params: 25,557,032 (25.6 M), all trainable;") and line.count("25,557,032") == 1
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # 4 x 4 + 4 = 20 frozen, 4 x 2 + 2 = 10 trainable
    assert str(inspect(model, torch.randn(1, 4))).count("Params: 30 = 10 trainable + 20 frozen;") == 1
    model.requires_grad_(False)
    assert "Params: 30, all frozen;" in str(inspect(model, torch.randn(1, 4)))


def test_repr_of_a_model_that_did_not_run_says_so():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16)

        def forward(self, x):
            return self.lstm(x)[0]

    report = inspect(Tagger())  # no input, and none can be invented for an LSTM
    assert not report.ran
    assert repr(report).endswith("(not run: parameters only)>") and "uncounted" not in repr(report)
    assert "uncounted" not in report.summary_line() and "<h1>Tagger</h1>" in report.render("html")
