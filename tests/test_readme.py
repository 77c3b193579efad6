"""The README's Python examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_names_the_two_commands_ci_uses():
    text = README.read_text()
    assert "bash .ci/demo" in text and "bash .ci/test" in text
    assert "bash .ci/test" in (README.parent / ".ci" / "run").read_text()
