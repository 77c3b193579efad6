"""The HTML page, in a real browser: headless Chromium runs the page's script, then a test script
clicks (fold, unfold, sort, the map) and writes what it saw into the DOM, which Chromium dumps.
Chromium is installed where it is missing (as root, with apt-get); the browser tests are skipped only
where it cannot be had. Expected orders come from the report's records, not from the page."""
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from inspector import inspect, load, inspect_spec
from inspector.page import map_figures, useful_depth
from inspector.rows import rows
from inspector.treemap import layout, squarify

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: found, else installed with apt-get when running as root, else the test skips."""
    found = _find()
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(step, env=env, capture_output=True, timeout=1500)
            found = _find()
            if found:
                break
    if found is None:
        pytest.skip("no chromium, and it could not be installed here (needs root and apt-get)")
    return found


def run_in_browser(chromium: str, page: str, script: str, tmp_path: Path) -> dict:
    """Load ``page`` with ``script`` appended (after the page's own), return what the script put in
    ``<pre id="result">`` as JSON."""
    path = tmp_path / "page.html"
    test = (f"<script>(function(){{const out = {{}};\n{script}\n"
            "const pre = document.createElement('pre'); pre.id = 'result'; pre.textContent = JSON.stringify(out);"
            "document.body.appendChild(pre);})();</script>")
    path.write_text(page.replace("</body>", test + "</body>") if "</body>" in page else page + test)
    out = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="result">(.*?)</pre>', out.stdout, re.S)
    assert found, (out.returncode, out.stderr[-2000:], out.stdout[-2000:])
    return json.loads(html.unescape(found.group(1)))


HELPERS = """
const root = document.querySelectorAll('.insp')[ROOT];
const tree = root.querySelector('table.tree');
const row = n => tree.querySelector('tr[data-name="' + n + '"]:not([data-kind="own"])');
const shown = r => getComputedStyle(r).display !== 'none';
const kids = n => Array.from(tree.querySelectorAll('tr[data-parent="' + n + '"]')).filter(shown).map(r => r.dataset.name);
const order = n => Array.from(tree.tBodies[0].rows).filter(r => r.dataset.parent === n).map(r => r.dataset.name);
const header = name => Array.from(tree.tHead.rows[0].cells).find(c => c.dataset.col === name);
"""


@pytest.fixture(scope="module")
def resnet18():
    return inspect_spec(load("resnet18", device="meta"))


def test_folding_hides_children_and_sorting_reorders_them(chromium, resnet18, tmp_path):
    report = resnet18
    page = report.render("html")
    assert useful_depth(report.layers) == 2  # 1 + 10 + 8 blocks = 19 rows; depth 3 would show 68
    script = HELPERS.replace("ROOT", "0") + """
    out.start = {layer1: kids('layer1'), block: kids('layer1.0'), rows: Array.from(tree.tBodies[0].rows).filter(shown).length};
    row('layer1').querySelector('.tog').click();
    out.folded = {layer1: kids('layer1'), block: kids('layer1.0'), closed: row('layer1').classList.contains('closed')};
    row('layer1').querySelector('.tog').click();
    out.unfolded = {layer1: kids('layer1'), block: kids('layer1.0')};
    row('layer1.0').querySelector('.tog').click();
    out.deeper = kids('layer1.0');
    header('macs').click();
    out.byMacs = order('(model)'); out.sortMark = header('macs').getAttribute('aria-sort');
    out.blocksByMacs = order('layer2');
    header('macs').click();
    out.byMacsAscending = order('(model)');
    tree.tHead.rows[0].cells[0].click();
    out.byLayer = order('(model)');
    """
    seen = run_in_browser(chromium, page, script, tmp_path)
    # folded to depth 2: the blocks show, their layers do not
    assert seen["start"] == {"layer1": ["layer1.0", "layer1.1"], "block": [], "rows": 1 + 10 + 8}
    assert seen["folded"] == {"layer1": [], "block": [], "closed": True}
    assert seen["unfolded"] == {"layer1": ["layer1.0", "layer1.1"], "block": []}
    assert seen["deeper"] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2",
                              "layer1.0.relu#1"]  # the block's ReLU runs twice
    # the model's children by their inclusive MACs, largest first (ties: call order), from the records
    children = [r for r in report.layers if r.parent == 0]
    by_macs = sorted(children, key=lambda r: (-r.inclusive_macs, r.index))
    assert seen["byMacs"] == [r.label for r in by_macs] and seen["sortMark"] == "descending"
    assert seen["byMacs"][:2] == ["layer1", "layer2"]  # 462 M (4 convs at 56x56) before 411 M each
    assert seen["byMacsAscending"][-1] == "layer1"
    layer2 = [r for r in report.layers if r.parent == report.layer("layer2").index]
    assert seen["blocksByMacs"] == [r.label for r in sorted(layer2, key=lambda r: (-r.inclusive_macs, r.index))]
    assert seen["byLayer"] == [r.label for r in children]


def test_the_map_finds_rows_and_switches_figures(chromium, resnet18, tmp_path):
    report = resnet18
    target = report.layer("layer3.1.conv2")
    script = HELPERS.replace("ROOT", "0") + f"""
    root.querySelector('[data-depth-button="0"]').click();
    out.afterDepth0 = Array.from(tree.tBodies[0].rows).filter(shown).map(r => r.dataset.name);
    const box = root.querySelector('svg.map:not([hidden]) g[data-index="{target.index}"]:not([data-own]) rect');
    box.dispatchEvent(new MouseEvent('click', {{bubbles: true}}));
    const found = row('layer3.1.conv2');
    out.revealed = shown(found) && found.classList.contains('hl');
    out.maps = Array.from(root.querySelectorAll('[data-map-button]')).map(b => b.dataset.mapButton);
    root.querySelector('[data-map-button="params"]').click();
    out.visible = Array.from(root.querySelectorAll('svg.map')).filter(m => getComputedStyle(m).display !== 'none').map(m => m.dataset.map);
    """
    seen = run_in_browser(chromium, report.render("html"), script, tmp_path)
    assert seen["afterDepth0"] == ["(model)"]
    assert seen["revealed"] is True
    assert seen["maps"] == ["macs", "params"] == [f.name for f in map_figures(report)]
    assert seen["visible"] == ["params"]


def test_two_notebook_views_in_one_page_fold_independently(chromium, tmp_path):
    report = inspect(nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Linear(8, 2)), torch.randn(1, 4))
    fragment = report._repr_html_()
    assert not fragment.lstrip().startswith("<!DOCTYPE")
    page = f"<!DOCTYPE html><html><body>{fragment}{fragment}</body></html>"
    script = """
    const trees = Array.from(document.querySelectorAll('.insp table.tree'));
    const kidsOf = t => Array.from(t.querySelectorAll('tr[data-parent="0"]')).filter(r => getComputedStyle(r).display !== 'none').map(r => r.dataset.name);
    trees[1].querySelector('tr[data-name="0"] .tog').click();
    out.first = kidsOf(trees[0]); out.second = kidsOf(trees[1]);
    out.wired = Array.from(document.querySelectorAll('.insp')).map(r => r.dataset.ready);
    """
    seen = run_in_browser(chromium, page, script, tmp_path)
    assert seen == {"first": ["0.0", "0.1"], "second": [], "wired": ["1", "1"]}


def test_the_comparison_page_sorts_its_table(chromium, tmp_path):
    from inspector.compare import compare

    result = compare([("wide", nn.Linear(64, 64), torch.randn(1, 64)), ("narrow", nn.Linear(8, 8), torch.randn(1, 8)),
                      ("mid", nn.Linear(16, 32), torch.randn(1, 16))])
    script = """
    const table = document.querySelector('table.compare');
    const names = () => Array.from(table.tBodies[0].rows).map(r => r.dataset.name);
    const gmacs = Array.from(table.tHead.rows[0].cells).find(c => c.textContent === 'GMACs');
    gmacs.click(); out.descending = names(); gmacs.click(); out.ascending = names();
    out.right = getComputedStyle(table.tBodies[0].rows[0].cells[1]).textAlign;
    out.left = getComputedStyle(table.tBodies[0].rows[0].cells[0]).textAlign;
    out.plot = !!document.querySelector('.plot svg');
    """
    seen = run_in_browser(chromium, result.render("html"), script, tmp_path)
    # MACs: 64 * 64 = 4096, 16 * 32 = 512, 8 * 8 = 64
    assert seen["descending"] == ["wide", "mid", "narrow"] and seen["ascending"] == ["narrow", "mid", "wide"]
    assert (seen["right"], seen["left"]) == ("right", "left")
    assert seen["plot"] is True  # no published accuracy: drawn as parameters against MACs


def test_the_page_fetches_nothing(resnet18):
    page = resnet18.render("html")
    assert page.startswith("<!DOCTYPE html>") and page.count("<script>") == 1
    for remote in (" src=", "<link", "@import", "url(", "http://", "https://"):
        assert remote not in page, remote


def test_every_tree_row_names_itself_and_its_parent(resnet18):
    page = resnet18.render("html")
    found = re.findall(r'<tr[^>]* data-name="([^"]*)" data-parent="([^"]*)"[^>]* data-kind="(\w+)"', page)
    expected = [(row.record.label, "" if row.record.parent is None else resnet18.layers[row.record.parent].label)
                for row in rows(resnet18.layers, None) if row.kind != "own"]
    assert [(n, p) for n, p, kind in found if kind != "own"] == expected
    assert len(expected) == len(resnet18.layers) == 1 + 4 + 4 + 8 * 7 + 3 * 3 + 2  # every call of resnet18


def test_the_page_shows_what_the_report_measured(tmp_path):
    report = inspect(torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64), backward=True,
                     optimizer="sgd")
    page = report.render("html")
    assert "<h2>Training step</h2>" in page and "peak of the step" in page
    assert [f.name for f in map_figures(report)] == ["macs", "saved_bytes", "backward_macs", "params"]
    assert 'data-col="backward_macs"' in page and 'data-col="saved_bytes"' in page  # columns from the registry
    assert "<h2>Timing</h2>" not in page
    saved = report.save(tmp_path / "r.html")
    assert saved.read_text().rstrip("\n") == page.rstrip("\n")


# --- the treemap's arithmetic -----------------------------------------------------------------------------

def test_squarified_tiles_have_areas_proportional_to_their_values():
    values = [6, 6, 4, 3, 2, 2, 1]  # Bruls et al.'s example, on a 6 x 4 rectangle (area 24 = their sum)
    tiles = squarify(values, 0, 0, 6, 4)
    assert [round(w * h, 9) for _, _, w, h in tiles] == values
    for x, y, w, h in tiles:  # inside the rectangle
        assert x >= -1e-9 and y >= -1e-9 and x + w <= 6 + 1e-9 and y + h <= 4 + 1e-9
    for i, a in enumerate(tiles):  # no two overlap
        for b in tiles[i + 1:]:
            overlap_w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
            overlap_h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
            assert overlap_w <= 1e-9 or overlap_h <= 1e-9


def test_the_map_gives_each_call_its_share_of_its_parent(resnet18):
    boxes = {(b.index, b.own): b for b in layout(resnet18.layers, "macs", 1000, 440)}
    root = boxes[(0, False)]
    assert (root.w, root.h) == (1000, 440)
    layer1, layer4 = resnet18.layer("layer1"), resnet18.layer("layer4")
    # siblings share their parent's inside in proportion to their inclusive MACs: 462,422,016 / 411,041,792
    ratio = boxes[(layer1.index, False)].area / boxes[(layer4.index, False)].area
    assert ratio == pytest.approx(layer1.inclusive_macs / layer4.inclusive_macs, rel=1e-9)
    assert ratio == pytest.approx(462_422_016 / 411_041_792, rel=1e-9)


def test_a_calls_own_work_gets_its_own_box():
    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.w = nn.Parameter(torch.randn(8, 24))

        def forward(self, x):
            return self.fc(x) @ self.w  # the model's own matmul

    report = inspect(Own(), torch.randn(2, 8))
    boxes = {(b.index, b.own): b for b in layout(report.layers, "macs", 1000, 440)}
    fc = report.layer("fc")
    assert set(boxes) == {(0, False), (0, True), (fc.index, False)}
    # own 2 x 8 x 24 = 384 MACs against the Linear's 2 x 8 x 8 = 128: three times its area
    assert boxes[(0, True)].area / boxes[(fc.index, False)].area == pytest.approx(384 / 128, rel=1e-9)
