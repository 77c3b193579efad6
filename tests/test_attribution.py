"""Work goes to the layer that did it, every op is counted or reported, and the checks can fail.
Expected numbers are hand arithmetic, written next to each assertion."""
import resource

import pytest
import torch
from torch import nn

import inspector
from inspector import LayerError, closed_form, inspect
from inspector.closed_forms import CLOSED_FORMS, ClosedForm
from inspector.records import Mismatch, Uncounted


class Child(nn.Module):
    def forward(self, x):
        raise ValueError("child fails")


class CatchesChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = Child()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        try:
            self.child(x)
        except ValueError:
            pass
        return x @ self.w


def test_parent_that_catches_a_child_exception_keeps_its_own_work():
    report = inspect(CatchesChild(), torch.randn(2, 4))
    assert report.layer("").macs == 2 * 4 * 4  # the parent's matmul, after the child failed
    assert report.layer("child").macs == 0 and report.layer("child").failed


def test_a_raising_pre_hook_is_charged_to_its_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    def refuse(module, args):
        raise RuntimeError("hook says no")

    model[1].register_forward_pre_hook(refuse)
    with pytest.raises(LayerError, match=r"layer '1' \(Linear: in_features=4"):
        inspect(model, torch.randn(2, 4))


def test_matmul_with_out_argument():
    class OutMM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 5))

        def forward(self, x):
            out = torch.empty(x.shape[0], 5)
            torch.mm(x, self.w, out=out)
            return out

    assert inspect(OutMM(), torch.randn(3, 4)).total_macs == 3 * 4 * 5


def test_scripted_submodule_is_one_counted_call():
    class HasScript(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scripted = torch.jit.script(nn.Linear(4, 4))
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.scripted(x))

    report = inspect(HasScript(), torch.randn(3, 4))
    assert report.total_macs == 3 * 4 * 4 + 3 * 4 * 2
    assert report.layer("scripted").macs == 3 * 4 * 4
    assert any("TorchScript" in n for n in report.notes)


def test_transformer_encoder_nested_fast_path_counts_real_tokens():
    """Eval with a padding mask: the encoder packs the sequences into a nested tensor (5 and 3 real
    tokens). Per layer: every real token meets qkv (48x16), out (16x16), ffn (32x16 and 16x32)
    weights; attention scores and weighted sums 2 x (5x5 + 3x3) x 16."""
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    report = inspect(encoder, x, kwargs={"src_key_padding_mask": mask})
    per_layer = (5 + 3) * (48 * 16 + 16 * 16 + 32 * 16 + 16 * 32) + 2 * (5 * 5 + 3 * 3) * 16
    assert report.total_macs == 2 * per_layer == 34_944
    assert "aten._transformer_encoder_layer_fwd" in report.op_totals()
    assert report.crosscheck() == [] and report.crosscheck().checked == 2


def test_packed_sequence_on_meta():
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(7, 3, 6), [7, 5, 2])
    report = inspect(nn.GRU(6, 10), packed, device="meta")
    assert report.total_macs == (7 + 5 + 2) * 3 * 10 * (6 + 10)  # 3 gates x H x (I + H) per real step


def test_input_size_on_meta_allocates_nothing():
    """96 x 3 x 1024 x 1024 floats are 1.2 GB: made on meta directly, the process does not grow."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = inspect(nn.Conv2d(3, 8, 3), input_size=(96, 3, 1024, 1024), device="meta")
    assert report.total_macs == 96 * 8 * 1022 * 1022 * 27
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 100


def test_grouped_experts_counted_exactly():
    """A Mixture-of-Experts model whose experts run through aten._grouped_mm (transformers >= 5):
    each token meets 2 of 4 experts, each expert 3 matmuls of 64 x 96."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=64)
    model = transformers.MixtralForCausalLM(config).eval()
    report = inspect(model, {"input_ids": torch.randint(0, 128, (2, 16))})
    tokens = 2 * 16
    projections = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64  # q, k, v (2 kv heads of 16), o
    router = 64 * 4
    experts = 2 * 3 * 64 * 96  # two experts per token, gate, up and down
    attention = 2 * 4 * 16 * 16 * (16 + 16)  # batch x heads x L x S x (E + Ev)
    expected = 2 * (tokens * (projections + router + experts) + attention) + tokens * 64 * 128  # + lm head
    assert report.total_macs == expected == 3_555_328
    grouped = report.op_totals().get("aten._grouped_mm")
    assert grouped is not None and grouped.macs == 2 * tokens * experts
    assert report.complete


def test_grouped_mm_formula_layouts():
    from inspector.op_formulas import grouped_mm_macs

    assert grouped_mm_macs((6, 16), (3, 16, 32)) == 6 * 16 * 32  # rows split among 3 experts
    assert grouped_mm_macs((3, 8, 16), (3, 16, 32)) == 3 * 8 * 16 * 32  # batched
    assert grouped_mm_macs((16, 32), (32, 24)) == 16 * 32 * 24  # k split into groups
    assert grouped_mm_macs((3, 8, 16), (16, 30)) == 8 * 16 * 30  # columns of b split


# --- nothing is silently wrong --------------------------------------------------------------------

@torch.library.custom_op("inspector_test::fancy_matmul", mutates_args=())
def fancy_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


@fancy_matmul.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


class UsesCustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        return fancy_matmul(x, self.w)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_custom_matmul_without_formula_is_loud(device):
    report = inspect(UsesCustomOp(), torch.randn(3, 4), device=device)
    assert report.uncounted_ops == {"inspector_test.fancy_matmul": 1}
    assert not report.complete and "incomplete" in report.summary_line()
    problems = report.crosscheck()
    assert [type(p) for p in problems] == [Uncounted] and problems[0].op == "inspector_test.fancy_matmul"
    assert "INCOMPLETE" in str(report)


def test_custom_op_formula_per_call_and_name_checked():
    def fancy_macs(a, b, **_):
        return a[0] * a[1] * b[1]

    report = inspect(UsesCustomOp(), torch.randn(3, 4), formulas={"inspector_test::fancy_matmul": fancy_macs})
    assert report.total_macs == 3 * 4 * 5 and report.complete
    with pytest.raises(inspector.RegistryError, match="no operator"):
        inspect(UsesCustomOp(), torch.randn(3, 4), formulas={"inspector_test::no_such_op": fancy_macs})
    with pytest.raises(inspector.RegistryError, match="no operator"):
        inspector.op_formula("inspector_test::misspelt_matmul")(fancy_macs)


def test_a_formula_that_raises_is_reported_not_fatal():
    def broken(*_, **__):
        raise ZeroDivisionError("broken formula")

    report = inspect(nn.Linear(4, 4), torch.randn(2, 4), formulas={"aten::addmm": broken})
    assert report.formula_errors == {"aten.addmm": "ZeroDivisionError: broken formula"}
    assert not report.complete and report.total_macs == 0
    assert any(isinstance(p, Uncounted) for p in report.crosscheck())


def test_a_wrong_closed_form_is_caught(monkeypatch):
    """The cross-check can fail: a closed form that is off by one MAC per output is reported."""
    def off_by_rows(m, args, kwargs, out):
        rows = args[0][0]
        return ClosedForm(macs=rows * m.in_features * m.out_features + rows, params=None)

    monkeypatch.setitem(CLOSED_FORMS._table, nn.Linear, off_by_rows)
    problems = inspect(nn.Linear(4, 3), torch.randn(2, 4)).crosscheck()
    assert problems == [Mismatch("(model)", "Linear", "macs", 2 * 4 * 3, 2 * 4 * 3 + 2)]


def test_a_closed_form_registered_for_a_custom_layer_is_checked():
    class Doubler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    @closed_form(Doubler)
    def _doubler(m, args, kwargs, out):
        return ClosedForm(macs=args[0][0] * 16)  # wrong on purpose: the layer runs fc twice

    report = inspect(Doubler(), torch.randn(2, 4))
    assert report.crosscheck() == [Mismatch("(model)", "Doubler", "macs", 2 * 2 * 16, 2 * 16)]


def test_weight_norm_and_spectral_norm_are_no_false_alarms():
    """Their stored parameters are the parametrization's (g and v), and spectral_norm's power
    iteration (mv, dot) runs inside the Linear's call: neither is the Linear's closed form."""
    from torch.nn.utils import parametrizations

    for make in (parametrizations.weight_norm, parametrizations.spectral_norm, torch.nn.utils.weight_norm,
                 torch.nn.utils.spectral_norm):
        model = nn.Sequential(make(nn.Linear(4, 4)))
        for mode in ("eval", "train"):
            report = inspect(model, torch.randn(2, 4), mode=mode)
            assert report.crosscheck() == [], (make, mode, report.crosscheck())
            assert report.layer("0").inclusive_macs - report.layer("0").inclusive_hook_macs == 2 * 16


@torch.library.custom_op("inspector_test::project", mutates_args=())
def project(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def test_a_custom_op_with_an_innocent_name_is_still_loud():
    """Nothing in the name says matmul: a custom operator without a formula is reported anyway."""
    class Projects(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 5))

        def forward(self, x):
            return project(x, self.w)

    report = inspect(Projects(), torch.randn(3, 4))
    assert report.uncounted_ops == {"inspector_test.project": 1} and not report.complete
    assert "custom operator" in str(report.crosscheck())


def test_torchscript_submodule_parameters_are_counted():
    class Host(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.s = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))

        def forward(self, x):
            return self.s(self.a(x))

    model = Host()
    report = inspect(model, torch.randn(2, 4))
    assert report.total_params == sum(p.numel() for p in model.parameters()) == 40
    assert report.layer("s").params == 20 and report.uncalled == ()


def test_fast_meta_convolution_still_refuses_a_channel_mismatch():
    with pytest.raises(LayerError, match="channel|expected"):
        inspect(nn.Conv2d(3, 8, 3), torch.randn(1, 4, 8, 8), device="meta")


class _SubclassParameter(nn.Parameter):
    pass


def test_a_parameter_subclass_reaching_a_matmul_is_counted_by_its_shape():
    """The op sees the subclass instance itself (no view in between): its shape is what the formula gets."""
    class MatmulsSubclass(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = _SubclassParameter(torch.randn(4, 5))

        def forward(self, x):
            return torch.mm(x, self.w)

    report = inspect(MatmulsSubclass(), torch.randn(3, 4))
    assert report.total_macs == 3 * 4 * 5 and not report.formula_errors and report.complete
