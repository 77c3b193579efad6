"""What a user touches first: the call tree, the table and its formats, inference that never blames
the user, and a command line that never shows a traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from inspector import inspect
from inspector.rows import rows

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        attention = (q @ k.transpose(-2, -1)).softmax(-1) @ v  # this block's own work
        x = x + self.proj(attention)
        return x + self.mlp(x)


class Transformer(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.h = nn.ModuleList([Block(d) for _ in range(layers)])  # never called as a module
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        x = self.wte(ids)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT(nn.Module):
    """GPT-2's layout: blocks in a ModuleList inside a transformer, a head tied to the embedding."""

    def __init__(self, vocab: int = 50, d: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.transformer = Transformer(vocab, d, layers)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, ids):
        return self.lm_head(self.transformer(ids))


def _gpt_report():
    return inspect(GPT(), torch.randint(0, 50, (2, 8)))


def test_blocks_in_a_module_list_are_rows_under_their_caller():
    report = _gpt_report()
    transformer = report.layer("transformer")
    for i in range(3):
        block = report.layer(f"transformer.h.{i}")
        assert block.depth == 2 and block.parent == transformer.index
    shown = [row.record.name for row in rows(report.layers, 2) if row.kind != "own"]
    assert shown == ["", "transformer", "transformer.wte", "transformer.h.0", "transformer.h.1", "transformer.h.2",
                     "transformer.ln_f", "lm_head"]


def test_rows_sum_to_the_totals_at_every_depth():
    report = _gpt_report()
    deepest = max(r.depth for r in report.layers)
    for depth in [*range(deepest + 1), None]:
        summable = [row for row in rows(report.layers, depth) if row.kind != "container"]
        assert sum(row.params for row in summable) == report.total_params, depth
        assert sum(row.macs for row in summable) == report.total_macs, depth


def test_container_rows_show_inclusive_figures_and_own_work_apart():
    report = _gpt_report()
    table = report.table(depth=2, exact=True)
    block = report.layer("transformer.h.0")
    own_macs = 2 * 8 * 8 * 16 * 2  # q @ k^T and (.) @ v: batch x L x S x d, twice
    assert block.macs == own_macs
    line = next(line for line in table.splitlines() if line.strip().startswith("transformer.h.0 "))
    assert f"({block.inclusive_macs:,})" not in line  # at depth 2 the block's children are hidden: plain
    deeper = report.table(depth=3, exact=True).splitlines()
    container = next(line for line in deeper if line.strip().startswith("transformer.h.0 "))
    own = deeper[deeper.index(container) + 1]
    assert f"({block.inclusive_macs:,})" in container and "(own)" in own and f"{own_macs:,}" in own


def test_tied_embedding_is_shown_where_it_is_used():
    report = _gpt_report()
    wte = report.layer("transformer.wte")
    assert wte.params == 50 * 16 and report.layer("lm_head").params == 0
    assert report.total_params == sum(r.params for r in report.layers)


def test_t5_shared_embedding_is_on_the_encoder_call():
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = transformers.T5Model(config).eval()
    ids = torch.randint(0, 64, (1, 6))
    report = inspect(model, {"input_ids": ids, "decoder_input_ids": ids})
    embed = report.layer("encoder.embed_tokens")
    assert embed.params == 64 * 16 and embed.parent == report.layer("encoder").index
    assert report.total_params == sum(p.numel() for p in model.parameters())


def test_units_shares_columns_and_exact_numbers():
    report = inspect(nn.Sequential(nn.Linear(1000, 1000), nn.ReLU()), torch.randn(4, 1000))
    table = report.table()
    assert "1.00 M" in table and "4.00 M" in table and "100.0%" in table
    assert "4,000,000" in report.table(exact=True)
    narrow = report.table(columns=["params", "macs"])
    assert "Output shape" not in narrow.splitlines()[0] and "MACs" in narrow.splitlines()[0]
    with pytest.raises(ValueError, match="unknown column"):
        report.table(columns=["macs", "speed"])


def test_summary_line_top_and_layer_lookup():
    import torchvision

    report = inspect(torchvision.models.resnet50(weights=None), device="meta")
    assert report.summary_line() == "ResNet: 25.6 M params, 4.09 GMACs, 8.18 GFLOPs, 102 MB"
    top = report.top(3, by="macs")
    assert [r.macs for r in top] == sorted((r.macs for r in report.layers), reverse=True)[:3]
    assert report.layer("(model)") is report.layer("")
    with pytest.raises(KeyError, match="closest: layer1"):
        report.layer("layer01")
    assert len(repr(report)) < 120 and report._repr_html_().startswith('<div class="insp">')


def test_formats_agree_on_depth():
    report = _gpt_report()
    as_json = json.loads(report.render("json", depth=1))
    csv_lines = report.render("csv", depth=1).strip().splitlines()
    table_names = [line.split()[0] for line in report.table(depth=1).splitlines()[2:]
                   if line and not line.startswith(("Total", "Params", "MACs", "Input", "Note"))]
    json_names = [layer["name"] or "(model)" for layer in as_json["layers"]]
    csv_names = [line.split(",")[0] for line in csv_lines[1:]]
    assert json_names == ["(model)", "transformer", "lm_head"]
    assert table_names == csv_names == json_names
    assert sum(layer["folded_macs"] for layer in as_json["layers"]) == report.total_macs


def test_markdown_keeps_indentation_and_footers_out_of_the_table():
    text = _gpt_report().render("markdown", depth=2)
    table, _, footer = text.partition("\n\n")
    assert all(line.startswith("|") for line in table.splitlines())
    assert "\u00a0\u00a0transformer" in table
    assert footer.splitlines()[0].startswith("- Params:")


def test_token_input_is_reported_as_integers():
    report = _gpt_report()
    assert report.run.input_dtypes == ("int64",) and "[2, 8] int64" in str(report)


# --- inference never blames the user ---------------------------------------------------------------

class LSTMFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.head = nn.Linear(64, 5)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


class DictForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, batch: dict):
        return self.fc(batch["features"])


class FixedSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc = nn.Linear(16 * 13 * 13, 10)  # only a 15x15 image fits

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize("model", [LSTMFirst(), DictForward(), FixedSize(),
                                   nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32), 1)])
def test_inferred_input_never_blames_the_user(model):
    report = inspect(model)
    assert report.total_macs is None and report.total_params == sum(p.numel() for p in model.parameters())
    assert any("input" in note and "inputs=" in note for note in report.notes)


def test_a_real_input_still_counts_those_models():
    assert inspect(FixedSize(), torch.randn(1, 3, 15, 15)).total_macs == 16 * 13 * 13 * 27 + 16 * 13 * 13 * 10
    assert inspect(DictForward(), ({"features": torch.randn(4, 8)},)).total_macs == 4 * 8 * 2


# --- the command line ----------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.mark.parametrize("args", [
    ["summary", "resnet18", "--device", "cuda"] if not torch.cuda.is_available() else ["summary", "resnet18",
                                                                                         "--device", "cuda:99"],
    ["summary", "resnet18", "--device", "gpu"],
    ["compare", "resnet18", "--plot", "/no/such/folder/pareto.png"],
    ["summary", "resnet18", "--depth", "-1"],
    ["summary", "resnt18"],
    ["summary", "hf:/no/such/config"],
    ["summary", "no_such_file.py:Net"],
    ["summary", "resnet18", "--input-size", "1,3,x"],
    ["blog", "--plot", "/no/such/folder/s.png"],
])
def test_cli_mistakes_exit_non_zero_with_one_line(args):
    out = run_cli(*args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr
    assert lines[-1].startswith(("inspector: error:", "inspector summary: error:", "inspector compare: error:",
                                 "inspector blog: error:"))


def test_cli_list_into_a_closed_pipe():
    shell = f"{sys.executable} -m inspector list | head -n 2"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=ENV, timeout=600)
    assert "Traceback" not in out.stderr and out.returncode == 0 and len(out.stdout.splitlines()) == 2


def test_cli_version_and_help_on_every_argument():
    assert run_cli("--version").stdout.startswith("inspector ")
    from inspector.cli import parser

    for action in parser()._subparsers._group_actions[0].choices.values():
        for arg in action._actions:
            assert arg.help, (action.prog, arg.dest)


def test_cli_summary_of_your_own_file_and_case_insensitive_names(tmp_path):
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\nclass Net(nn.Sequential):\n"
                   "    def __init__(self):\n        super().__init__(nn.Conv2d(3, 8, 3), nn.Flatten(), "
                   "nn.Linear(8 * 30 * 30, 10))\n")
    out = run_cli("summary", f"{net}:Net", "--input-size", "1,3,32,32", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["totals"]["macs"] == 8 * 30 * 30 * 27 + 7200 * 10  # conv + linear
    out = run_cli("summary", "ResNet18", "--device", "meta", "--format", "csv", "--input-size", "2,3,112,112")
    assert out.returncode == 0 and "layer4" in out.stdout


def test_cli_csv_summary_honours_input_size_like_json():
    csv_out = run_cli("summary", "resnet18", "--device", "meta", "--input-size", "2,3,112,112", "--format", "csv",
                      "--depth", "0", "--columns", "macs")
    json_out = run_cli("summary", "resnet18", "--device", "meta", "--input-size", "2,3,112,112", "--format", "json")
    macs = json.loads(json_out.stdout)["totals"]["macs"]
    # resnet18 on 112x112, per image: conv1 to 56x56; layer1 at 28x28, layer2 at 14, layer3 at 7, layer4 at 4
    conv1 = 56 * 56 * 64 * 3 * 49
    layer1 = 4 * 28 * 28 * 64 * 64 * 9
    layer2 = 14 * 14 * 128 * (64 * 9 + 3 * 128 * 9 + 64)  # strided conv, three convs, 1x1 downsample
    layer3 = 7 * 7 * 256 * (128 * 9 + 3 * 256 * 9 + 128)
    layer4 = 4 * 4 * 512 * (256 * 9 + 3 * 512 * 9 + 256)
    assert macs == 2 * (conv1 + layer1 + layer2 + layer3 + layer4 + 512 * 1000) == 970_719_232
    assert csv_out.stdout.splitlines()[1] == f"(model),layer,0,0,{macs}"


def test_cli_incomplete_count_exits_3(tmp_path):
    net = tmp_path / "custom.py"
    net.write_text(
        "import torch\nimport torch.nn as nn\n"
        "@torch.library.custom_op('cli_test::odd_matmul', mutates_args=())\n"
        "def odd_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:\n    return a @ b\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.w = nn.Parameter(torch.randn(4, 4))\n"
        "    def forward(self, x):\n        return odd_matmul(x, self.w)\n")
    out = run_cli("summary", f"{net}:Net", "--input-size", "2,4")
    assert out.returncode == 3 and "INCOMPLETE" in out.stdout



def test_top_ranks_the_rows_shown_at_a_depth():
    report = _gpt_report()
    shallow = report.table(depth=1, top=2, exact=True).splitlines()
    names = [line.split()[0] for line in shallow[2:4]]
    assert names == ["transformer", "lm_head"]  # at depth 1 the transformer holds every block
    as_json = json.loads(report.render("json", depth=1, top=2))
    assert all(layer["depth"] <= 1 for layer in as_json["layers"])
    deep = [r.name for r in report.top(3)]
    assert all(report.layer(name).depth >= 2 for name in deep)  # blocks' own attention work, fc layers
    with pytest.raises(ValueError, match="timing"):
        report.table(top=3, by="time")


def test_a_report_that_counted_no_macs_says_so():
    report = inspect(LSTMFirst())
    assert not report.complete and report.crosscheck() != []
    assert "MACs: not counted" in str(report) and "lstm" in str(report)  # the module tree, with parameters
    assert sum(r.params for r in report.layers) == report.total_params


def test_cli_exit_3_when_no_macs_were_counted(tmp_path):
    net = tmp_path / "lstm.py"
    net.write_text("import torch.nn as nn\nclass Tagger(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.lstm = nn.LSTM(8, 16)\n    def forward(self, x):\n        return self.lstm(x)[0]\n")
    out = run_cli("summary", f"{net}:Tagger")
    assert out.returncode == 3 and "MACs: not counted" in out.stdout
    counted = run_cli("summary", f"{net}:Tagger", "--input-size", "5,2,8", "--format", "json")
    assert counted.returncode == 0
    assert json.loads(counted.stdout)["totals"]["macs"] == 5 * 2 * 4 * 16 * (8 + 16)  # steps x gates x H x (I + H)


@pytest.mark.parametrize("args", [
    ["summary", "resnet18", "--top", "3", "--sort", "time"],
    ["summary", "resnet18", "--columns", "params,speed"],
    ["summary", "resnet18", "--optimizer", "adam"],
    ["summary", "resnet18", "--batch", "2", "--input-size", "2,3,64,64"],
    ["summary", "some/folder/net.py"],
    ["compare", "resnet18", "--family", "video"],
    ["compare", "resnet18", "--sort", "speed"],
    ["summary", "resnet18", "--columns", "macs,busy_ms"],
    ["summary", "resnet18", "--columns", "mfu"],
    ["summary", "resnet18", "--columns", "saved"],
    ["summary", "resnet18", "--peak", "100,10"],
    ["summary", "resnet18", "--repeat", "3"],
    ["summary", "resnet18", "--timing", "--repeat", "0"],
    ["summary", "resnet18", "--timing", "--peak=-5,1"],
    ["summary", "resnet18", "--timing", "--peak", "datasheet", "--device", "meta"],
])
def test_cli_mistakes_found_before_anything_runs(args):
    out = run_cli(*args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr


def test_cli_timing_only_flags_say_what_they_need():
    assert "--columns busy_ms needs per-layer times: add --timing" in run_cli(
        "summary", "resnet18", "--columns", "macs,busy_ms").stderr
    assert "--peak applies to per-layer times and serving's bounds: add --timing (or --generate N)" in run_cli(
        "summary", "resnet18", "--peak", "1,1").stderr
    for peak in ("--peak=-5,1", "--peak=inf,1", "--peak=1,nan"):
        assert "two positive numbers" in run_cli("summary", "resnet18", "--timing", peak).stderr
    assert "--columns saved needs a training step: add --backward" in run_cli(
        "summary", "resnet18", "--columns", "saved").stderr  # as the user named it


def test_cli_a_datasheet_peak_the_table_lacks_is_refused_before_the_timed_passes(tmp_path):
    net = tmp_path / "net.py"
    net.write_text("import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.fc = nn.Linear(8, 8)\n        self.calls = 0\n\n"
                   "    def forward(self, x):\n        self.calls += 1\n        assert self.calls == 1, 'a second pass ran'\n"
                   "        return self.fc(x)\n")
    out = run_cli("summary", f"{net}:Net", "--input-size", "2,8", "--timing", "--peak", "datasheet")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "no datasheet peak for cpu in float32" in out.stderr and "a second pass ran" not in out.stderr


def test_cli_an_interrupt_in_a_timed_pass_exits_130_cleanly(tmp_path):
    """Ctrl-C while the profiler runs: the profiler is stopped on the way out (no crash at exit)."""
    net = tmp_path / "net.py"
    net.write_text("import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.fc = nn.Linear(8, 8)\n        self.calls = 0\n\n"
                   "    def forward(self, x):\n        self.calls += 1\n        if self.calls == 3:\n"
                   "            raise KeyboardInterrupt\n        return self.fc(x)\n")
    out = run_cli("summary", f"{net}:Net", "--input-size", "2,8", "--timing", "--repeat", "2", "--warmup", "1")
    assert out.returncode == 130 and "Traceback" not in out.stderr, (out.returncode, out.stderr)
    assert "interrupted" in out.stderr


def test_cli_usage_errors_are_one_line():
    out = run_cli("summary", "resnet18", "--depth", "-1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--help" in out.stderr


def test_cli_token_input_size_and_sources_options(tmp_path):
    net = tmp_path / "lm.py"
    net.write_text("import torch, torch.nn as nn\nclass LM(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.emb = nn.Embedding(50, 8)\n        self.fc = nn.Linear(8, 50)\n"
                   "    def forward(self, ids):\n        return self.fc(self.emb(ids))\n"
                   "    def example_input(self, batch=1):\n        return torch.randint(0, 50, (batch, 4))\n")
    by_seq = json.loads(run_cli("summary", f"{net}:LM", "--seq-len", "6", "--batch", "3", "--format", "json").stdout)
    assert by_seq["totals"]["macs"] == 3 * 6 * 8 * 50 and by_seq["input_dtypes"] == ["int64"]
    by_batch = json.loads(run_cli("summary", f"{net}:LM", "--batch", "2", "--format", "json").stdout)
    assert by_batch["totals"]["macs"] == 2 * 4 * 8 * 50  # its own example_input(batch=2)
    ids = run_cli("summary", "resnet18", "--input-size", "1,3,32,32:int64")
    assert ids.returncode == 2 and "floating input" in ids.stderr  # the dtype is honoured, and explained


HINTED = {
    "half model, float input": (lambda: nn.Linear(4, 4).half(), lambda: torch.randn(2, 4), "dtype"),
    "numpy input": (lambda: nn.Conv2d(3, 4, 3), lambda: __import__("numpy").zeros((1, 3, 8, 8), "float32"),
                    "torch tensors"),
    "token id out of range": (lambda: nn.Embedding(10, 4), lambda: torch.tensor([[3, 12]]), "num_embeddings"),
}


@pytest.mark.parametrize("label", list(HINTED))
def test_more_mistakes_get_hints(label):
    from inspector import InspectorError

    make, x, words = HINTED[label]
    with pytest.raises(InspectorError, match=words):
        inspect(make(), x())
