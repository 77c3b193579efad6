"""Models from any source, inputs as users hold them, one direction of imports, FLOP conventions.
Expected numbers are hand arithmetic or published metadata."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from inspector import UnknownModelError, inspect, inspect_spec, load
from inspector.compare import compare
from models import BlogCNN

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
transformers = pytest.importorskip("transformers")


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, env=ENV,
                          timeout=600, cwd=cwd)


def test_the_library_imports_neither_torchvision_nor_models():
    code = ("import sys, torch\nfrom torch import nn\nimport inspector\n"
            "r = inspector.inspect(nn.Linear(4, 4), torch.randn(2, 4))\nassert r.total_macs == 32\n"
            "print(sorted(m for m in ('torchvision', 'models', 'timm', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300,
                         cwd=str(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_timm_resnet50_on_meta_from_the_command_line():
    out = run_cli("summary", "timm:resnet50", "--device", "meta", "--format", "json")
    assert out.returncode == 0, out.stderr[-500:]
    totals = json.loads(out.stdout)["totals"]
    assert (totals["params"], totals["macs"]) == (25_557_032, 4_089_184_256)  # torchvision's resnet50 figures


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config()
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(path)
    return path


def test_gpt2_small_from_a_config_directory(gpt2_dir):
    spec = load(f"hf:{gpt2_dir}", device="meta")
    report = inspect_spec(spec)
    assert report.total_params == 124_439_808  # the LM head is tied to the token embedding
    # per layer: qkv + out + 4x MLP = 12 * 768^2 per token; attention 2 * 128^2 * 768; the LM head
    assert report.total_macs == 12 * (12 * 768**2 * 128 + 2 * 128**2 * 768) + 128 * 768 * 50257 == 16_114_089_984
    assert report.crosscheck() == [] and spec.kwargs["input_ids"].shape == (1, 128)


def test_bert_base_params(tmp_path):
    transformers.BertConfig().save_pretrained(tmp_path)
    assert inspect_spec(load(f"hf:{tmp_path}", device="meta")).total_params == 109_482_240


def test_hf_options_sequence_length_and_batch(gpt2_dir):
    spec = load(f"hf:{gpt2_dir}", device="meta", batch=2, seq_len=64)
    assert spec.kwargs["input_ids"].shape == (2, 64)
    out = run_cli("summary", f"hf:{gpt2_dir}", "--device", "meta", "--seq-len", "64", "--format", "json",
                  "--depth", "0")
    per_layer = 12 * 768**2 * 64 + 2 * 64**2 * 768
    assert json.loads(out.stdout)["totals"]["macs"] == 12 * per_layer + 64 * 768 * 50257


def test_a_mapping_of_keyword_inputs_as_a_tokenizer_returns():
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 10))
    report = inspect(model, {"input_ids": ids, "attention_mask": torch.ones(2, 10, dtype=torch.long)})
    # per token per layer: q, k, v, out 4 x 32^2, feed-forward 2 x 32 x 64; attention: per sequence
    # L x S x (E + Ev) over the 4 heads of 8; the pooler 32^2 per sequence
    per_layer = 20 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 10 * 10 * (32 + 32)
    assert report.total_macs == 2 * per_layer + 2 * 32 * 32
    assert report.run.input_dtypes == ("int64", "int64")


def test_compare_mixes_sources_in_one_table(gpt2_dir, tmp_path):
    net = tmp_path / "net.py"
    net.write_text("import torch.nn as nn\nclass Net(nn.Sequential):\n    def __init__(self):\n"
                   "        super().__init__(nn.Linear(8, 4))\n    def example_input(self):\n"
                   "        import torch\n        return torch.randn(3, 8)\n")
    result = compare(["resnet18", "timm:resnet18", f"hf:{gpt2_dir}", f"{net}:Net"], device="meta")
    assert not result.failed
    assert result["resnet18"].macs == result["timm:resnet18"].macs == 1_814_073_344
    assert result[f"{net}:Net"].macs == 3 * 8 * 4
    assert "hf:" in result.table()


def test_unknown_names_from_each_source():
    with pytest.raises(UnknownModelError, match="closest: resnet50"):
        load("resnet05")
    with pytest.raises(UnknownModelError, match="timm model"):
        load("timm:resnet_fifty")
    with pytest.raises(UnknownModelError, match="config"):
        load("hf:/no/such/dir")
    with pytest.raises(UnknownModelError, match="no such file"):
        load("missing/net.py:Net")


def test_the_post_networks_reach_the_cli_by_name():
    from inspector.blog import post_model

    assert post_model("BlogCNN") is BlogCNN
    out = run_cli("summary", "models.blog:BlogCNN", "--format", "json")
    assert json.loads(out.stdout)["totals"]["macs"] == 88


def test_a_new_source_registers_with_a_decorator():
    from inspector.sources import ModelSpec, model_source, split

    @model_source("toy")
    class Toy:
        description = "a test source"

        def build(self, name, options):
            return ModelSpec(name=f"toy:{name}", module=nn.Linear(int(name), 2), args=(torch.randn(1, int(name)),))

        def names(self, family=None):
            return []

    assert split("toy:5") == ("toy", "5")
    assert inspect_spec(load("toy:5")).total_macs == 5 * 2


def test_flops_all_on_the_post_cnn():
    report = inspect(BlogCNN(), flops="all")
    # conv 72 MACs = 144 FLOPs, + its bias on 8 outputs, + ReLU on 8, linear 16 MACs = 32 FLOPs + bias 2
    assert report.total_flops == 2 * 72 + 8 + 8 + 2 * 16 + 2 == 194
    assert report.total_macs == 88  # MACs do not change with the convention
    assert inspect(BlogCNN()).total_flops == 176
    assert report.run.flops == "all" and "FLOPs" in report.table()
