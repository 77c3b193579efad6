"""compare(), its exports, and the command line run end to end through subprocess."""
import json
import os
import subprocess
import sys

import pytest

from inspector.compare import Comparison, compare
from inspector.plot import pareto_front
from inspector.sources import torchvision_source as zoo
from models import BlogANN

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def test_compare_matches_published_params_and_round_trips():
    result = compare(["resnet18", "resnet50", ("ann", BlogANN())], device="meta")
    for name in ("resnet18", "resnet50"):
        assert result[name].params == zoo.entry(name).num_params == result[name].published_params
        assert result[name].params_diff == 0 and abs(result[name].macs_diff_pct) < 1
    assert result["ann"].macs == 144 and result["ann"].published_gmacs is None
    assert Comparison.from_csv(result.to_csv()).rows == result.rows
    assert json.loads(json.dumps(result.to_dict()))["rows"][1]["params"] == 25_557_032
    assert [r.name for r in result.sorted("macs", descending=True).rows] == ["resnet50", "resnet18", "ann"]


def test_compare_keeps_going_after_a_failure():
    result = compare(["resnet18", "resnet5O"], device="meta")
    assert result["resnet18"].error is None and "closest: resnet50" in result["resnet5O"].error
    assert [r.name for r in result.failed] == ["resnet5O"]


def test_cli_summary_json():
    out = run_cli("summary", "resnet50", "--device", "meta", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["totals"]["params"] == 25_557_032 and data["totals"]["flops"] == 2 * data["totals"]["macs"]
    assert data["schema_version"] == 3 and data["layers"][0]["name"] == ""


def test_cli_summary_input_size_and_depth():
    out = run_cli("summary", "resnet18", "--device", "meta", "--input-size", "2,3,112,112", "--depth", "1")
    assert out.returncode == 0 and "layer4" in out.stdout and "layer4.0" not in out.stdout


def test_cli_compare_json_and_unknown_name():
    out = run_cli("compare", "resnet18", "mobilenet_v3_small", "--device", "meta", "--sort", "macs", "--format", "json")
    rows = json.loads(out.stdout)["rows"]
    assert [r["name"] for r in rows] == ["mobilenet_v3_small", "resnet18"]
    bad = run_cli("compare", "resnet5O")
    assert bad.returncode == 2 and "resnet50" in bad.stderr


def test_cli_list():
    out = run_cli("list", "--family", "segmentation", "--format", "json")
    assert {r["name"] for r in json.loads(out.stdout)} == set(zoo.list_names("segmentation"))


@pytest.mark.parametrize("family,count", [("classification", 80), ("segmentation", 6)])
def test_cli_compare_all_on_meta_with_plot(tmp_path, family, count):
    png = tmp_path / "pareto.png"
    args = ["compare", "--all", "--family", family, "--device", "meta", "--format", "csv", "--progress"]
    out = run_cli(*args, *(["--plot", str(png)] if family == "classification" else []))
    assert out.returncode == 0, out.stderr[-500:]
    rows = Comparison.from_csv(out.stdout).rows
    assert len(rows) == count and all(r.params == r.published_params for r in rows)
    assert f"{count}/{count}" in out.stderr  # the progress bar
    if family == "classification":
        assert png.stat().st_size > 20_000


def test_pareto_front():
    points = [(1.0, 70.0, "a"), (2.0, 69.0, "b"), (3.0, 75.0, "c"), (0.5, 60.0, "d"), (3.0, 74.0, "e")]
    assert [n for _, _, n in pareto_front(points)] == ["d", "a", "c"]
