"""The README's examples run as written, its printed table is what the tool prints, and its speed
figures are those of benchmarks/RESULTS.md."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_table_is_what_the_tool_prints():
    from inspector import inspect
    from models import BlogCNN

    shown = re.search(r"```text\n(.*?)```", README, re.S).group(1).rstrip("\n")
    assert str(inspect(BlogCNN(), torch.randn(1, 1, 4, 4))) == shown


def test_readme_speed_figures_come_from_the_benchmark():
    """Every figure of the speed section (a ratio like 1.25×, a duration, a percentage) appears in
    RESULTS.md or, for the GPU, RESULTS-cuda.md."""
    section = README.split("## Speed", 1)[1].split("\n## ", 1)[0]
    results = "".join(p.read_text() for p in sorted((ROOT / "benchmarks").glob("RESULTS*.md")))
    figures = re.findall(r"(\d+\.\d+)(?=(?:–\d+\.\d+)?(?:×| s| ms| MiB|%))", section)  # both ends of a range
    assert figures, "the speed section quotes the benchmark"
    for figure in figures:  # as a whole number there, not inside a longer one
        assert re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", results), figure


def test_readme_names_the_two_commands_ci_uses():
    assert "bash .ci/demo" in README and "bash .ci/test" in README
    assert "bash .ci/test" in (ROOT / ".ci" / "run").read_text()
