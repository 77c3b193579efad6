"""A report is plain data: it outlives the model, pickles, renders without a model, and every
figure in the figure registry reaches every format, ``columns=``, ``top(by=)`` and the CLI."""
import gc
import json
import math
import pickle
import re
import weakref

import pytest
import torch
import torchvision
from torch import nn

from inspector import Figure, inspect, register_figure
from inspector.cli import main
from inspector.figures import FIGURES
from inspector.records import LayerRecord, OpStat
from inspector.report import Report, Run
from models import BlogCNN

FORMATS = ("table", "markdown", "json", "csv", "html")


def _no_live_objects(obj, seen=None):
    """Every object reachable from ``obj`` through containers and dataclass fields: none a tensor
    or a module (a report holds plain data only)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    assert not isinstance(obj, (torch.Tensor, nn.Module)), type(obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            _no_live_objects(k, seen)
            _no_live_objects(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _no_live_objects(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for v in vars(obj).values():
            _no_live_objects(v, seen)


CASES = {
    "forward": dict(),
    "training step": dict(backward=True, optimizer="adamw"),
    "timed": dict(timing=True, repeat=2, warmup=1, peak=(100.0, 10.0)),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_the_report_outlives_the_model_and_pickles(options):
    model = torchvision.models.resnet18(weights=None)
    alive = weakref.ref(model)
    r = inspect(model, torch.randn(1, 3, 64, 64), **options)
    del model
    gc.collect()
    assert alive() is None  # nothing in the report keeps the model
    _no_live_objects(r)
    # resnet18's module calls: the model; conv1, bn1, relu, maxpool; 4 stages; 8 blocks of 7 calls (the
    # block, conv1, bn1, relu, conv2, bn2, relu again); 3 downsample Sequentials of 3; avgpool, fc
    assert len(r.layers) == 1 + 4 + 4 + 8 * 7 + 3 * 3 + 2 == 76
    again = pickle.loads(pickle.dumps(r))
    for fmt in FORMATS:
        assert r.render(fmt, depth=2) == again.render(fmt, depth=2)
    assert r.table(depth=3) == again.table(depth=3)
    assert again.crosscheck() == [] and again.layers == r.layers
    assert again.layer("conv1").macs == 32 * 32 * 64 * 3 * 7 * 7  # 64x64 input, stride 2: 32x32 outputs


def test_formats_render_a_hand_built_report():
    """No model: two layers under a model that does work of its own (a matmul in its forward)."""
    run = Run(model="handmade", device="cpu", dtype="float32", mode="eval", input_shapes=((2, 4),),
              input_dtypes=("float32",))

    def record(index, name, parent, depth, own, inclusive, **extra):
        values = lambda d: {"params": d[0], "trainable_params": d[0], "macs": d[1], "elementwise_flops": 0,  # noqa: E731
                            "hook_macs": 0, "flops": 2 * d[1], "time_ms": None, "backward_macs": None,
                            "backward_elementwise_flops": None, "backward_flops": None, "saved_bytes": None,
                            "recompute_macs": None}
        return LayerRecord(index=index, name=name, type="Linear" if name else "Net", depth=depth, parent=parent,
                           call=0, is_leaf=bool(name), own=values(own), inclusive=values(inclusive), **extra)

    layers = (record(0, "", None, 0, (0, 64), (70, 64 + 32 + 16)),
              record(1, "a", 0, 1, (40, 32), (40, 32), input_shapes=((2, 4),), output_shapes=((2, 8),),
                     ops=(OpStat("aten.addmm", 1, 32),), config="in_features=4, out_features=8, bias=True"),
              record(2, "b", 0, 1, (30, 16), (30, 16), input_shapes=((2, 8),), output_shapes=((2, 1),)))
    report = Report(run=run, total_params=70, trainable_params=70, buffer_elements=0, param_bytes=280,
                    buffer_bytes=0, total_macs=112, layers=layers)
    table = report.table()
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert lines["a"].split()[-1] == "28.6%"  # 32 / 112
    assert lines["(own)"].split()[-1] == "57.1%"  # the model's own matmul, 64 / 112
    assert lines["Total"].split()[1:] == ["70", "100%", "112", "100%"]
    assert "(model)" in lines and lines["(model)"].split()[-4:] == ["(70)", "(100.0%)", "(112)", "(100.0%)"]
    assert "| \u00a0\u00a0a " in report.render("markdown")  # indented by its depth
    csv_rows = report.render("csv", columns=["params", "macs", "config"]).splitlines()
    assert csv_rows[0] == "layer,kind,depth,call,params,macs,config"
    assert csv_rows[1:] == ['(model),container,0,0,70,112,', '(model),own,1,0,0,64,',
                            'a,layer,1,0,40,32,"in_features=4, out_features=8, bias=True"', 'b,layer,1,0,30,16,']
    data = json.loads(report.render("json", depth=1))
    assert [(e["name"], e["row_kind"], e["folded_macs"]) for e in data["layers"]] == \
        [("", "container", 64), ("a", "layer", 32), ("b", "layer", 16)]
    assert data["figure_totals"]["macs"] == 112 and data["figure_totals"]["flops"] == 224
    page = report.render("html")
    assert page.startswith("<!DOCTYPE html>") and "<h1>handmade</h1>" in page
    # one row per call (and the model's own work), each naming itself and its parent
    assert re.findall(r'data-name="([^"]*)" data-parent="([^"]*)"', page) == \
        [("(model)", ""), ("(model)", "(model)"), ("a", "(model)"), ("b", "(model)")]
    a_row = re.search(r'<tr[^>]*data-name="a".*?</tr>', page).group(0)
    assert '<td class="num" data-v="32">32</td>' in a_row and ">28.6%<" in a_row  # 32 / 112
    assert 'style="width:28.6%"' in a_row  # its bar
    assert "in → out" not in a_row and ">4 → 8<" in a_row  # the configuration, shortened
    assert re.search(r"<tfoot><tr><td>Total</td>.*>70<.*>100%<.*>112<.*>100%<", page)
    by_type = report.by_type()  # the model's own matmul 64; the two Linears 40 + 30 params, 32 + 16 MACs
    assert [(t.type, t.calls, t.params, t.macs) for t in by_type] == [("Net", 1, 0, 64), ("Linear", 2, 70, 48)]
    assert by_type.render("csv").splitlines() == ["type,calls,params,params_pct,macs,macs_pct", "Net,1,0,0%,64,57.1%",
                                                  "Linear,2,70,100.0%,48,42.9%"]
    for fmt in FORMATS:
        assert by_type.render(fmt) and pickle.loads(pickle.dumps(report)).by_type().render(fmt) == by_type.render(fmt)
    assert str(by_type).splitlines()[-4].split() == ["Total", "3", "70", "100%", "112", "100%"]
    assert [r.name for r in report.top(2, by="macs")] == ["", "a"]  # the model's own 64, then a's 32
    assert report.total("macs") == 112 and report.total("params") == 70
    assert pickle.loads(pickle.dumps(report)).render("csv") == report.render("csv")


@pytest.fixture
def output_elements():
    """A throwaway figure: elements of a call's outputs (no pass measures it but this measure)."""
    fig = register_figure(Figure("output_elements", "Out elems", measure=lambda call: sum(
        math.prod(s) for s in call.frame.outputs), description="elements the call returned"))
    try:
        yield fig
    finally:
        FIGURES.remove("output_elements")


def test_a_figure_added_through_the_registry_shows_everywhere(output_elements, capsys):
    r = inspect(BlogCNN(), torch.randn(1, 1, 4, 4))
    # BlogCNN: conv -> [1, 2, 2, 2] (8), ReLU 8, Flatten 8, Linear -> [1, 2] (2); the containers return 2 each
    assert [layer.output_elements for layer in r.layers] == [2, 2, 8, 8, 8, 2]
    assert r.layer("net").inclusive_output_elements == 2 + 8 + 8 + 8 + 2
    assert r.total("output_elements") == 2 + 2 + 8 + 8 + 8 + 2
    assert [layer.name for layer in r.top(3, by="output_elements")] == ["net.0", "net.1", "net.2"]
    table = r.table(columns=["output_elements"])
    cells = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:]}
    assert cells["(model)"] == "(30)" and cells["net"] == "(28)" and cells["net.0"] == "8" and cells["Total"] == "30"
    assert "Out elems" in r.render("markdown", columns=["output_elements"])
    assert "Out elems" in r.render("html", columns=["output_elements"])
    csv_rows = r.render("csv", columns=["output_elements"]).splitlines()
    assert csv_rows[1:] == ["(model),container,0,0,30", "(model),own,1,0,2", "net,container,1,0,28", "net,own,2,0,2",
                            "net.0,layer,2,0,8", "net.1,layer,2,0,8", "net.2,layer,2,0,8", "net.3,layer,2,0,2"]
    layers = json.loads(r.render("json"))["layers"]
    assert [e["output_elements"] for e in layers] == [2, 2, 8, 8, 8, 2]
    assert main(["summary", "models/blog.py:BlogCNN", "--columns", "output_elements", "--top", "1",
                 "--sort", "output_elements", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "net.0,layer,2,0,8"
