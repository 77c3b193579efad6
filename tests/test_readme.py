"""The README's examples run as written (its Python from any folder, its command lines from the
repository root, none writing into tracked files), its printed table is what the tool prints, and its
speed figures are those of benchmarks/RESULTS.md."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _only_the_package(tmp_path: Path) -> dict:
    """An environment whose Python finds this checkout's ``inspector`` and nothing else of it (not
    ``models``), as for a user's own script elsewhere."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "inspector").symlink_to(ROOT / "inspector")
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}


def test_readme_python_examples_run_from_another_folder(tmp_path):
    """Each block saved as a file and run from an empty folder, where ``models`` cannot be imported
    (one process runs them all, each in a namespace of its own, as ``python snippet.py`` would)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths = []
    for i, block in enumerate(blocks):
        paths.append(elsewhere / f"snippet{i}.py")
        paths[-1].write_text(block)
    runner = ("import runpy, sys\nfor path in sys.argv[1:]:\n    print('running', path, flush=True)\n"
              "    runpy.run_path(path, run_name='__main__')\n"
              "assert 'models' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", runner, *map(str, paths)], cwd=elsewhere,
                         env=_only_the_package(tmp_path), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-300:], out.stderr[-1500:])


def _tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout + subprocess.run(["git", "diff"], cwd=ROOT, capture_output=True,
                                                             text=True).stdout


def readme_command_lines() -> list[str]:
    """The README's `inspector ...` lines (comments dropped), from its bash blocks."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("inspector "):
                lines.append(line)
    return lines


def test_readme_command_lines_run_as_written_and_write_no_tracked_file():
    """Each line through bash from the repository root, with the environment's ``inspector`` on the
    PATH (this checkout's package first); each exits 0; outputs go outside the repository."""
    lines = readme_command_lines()
    assert len(lines) >= 10 and any("hf:examples/" in x for x in lines) and any("examples/net.py:" in x for x in lines)
    for line in lines:  # where a command writes: --plot FILE or > FILE, never inside the repository
        words = shlex.split(line)
        targets = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--plot", ">")]
        assert all(not Path(t).resolve().is_relative_to(ROOT) for t in targets), line
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    before = _tracked_state()
    for line in lines:
        out = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (line, out.stderr[-1500:])
        assert "Traceback" not in out.stderr, line
    assert _tracked_state() == before


def test_readme_says_how_to_reach_the_command():
    setup = README.split("## Python", 1)[0]
    assert ".venv/bin/inspector" in setup and "source .venv/bin/activate" in setup
    assert (ROOT / "pyproject.toml").read_text().count('inspector = "inspector.cli:main"') == 1  # the script pip makes


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
