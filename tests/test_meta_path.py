"""Meta as the path for big models: every count on meta equal to the CPU's (the oracle) where the
forward's arithmetic does not depend on values, and one clear line where it does."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, MixtralConfig, MixtralModel

from inspector import MetaDeviceError, inspect

IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))


def _same_on_cpu_and_meta(model, inputs, **options):
    cpu = inspect(model, inputs, device="cpu", **options)
    meta = inspect(model, inputs, device="meta", **options)
    assert (meta.total_params, meta.total_macs) == (cpu.total_params, cpu.total_macs)
    assert [(r.name, r.macs) for r in meta.layers] == [(r.name, r.macs) for r in cpu.layers]
    if options.get("backward"):
        assert meta.total_backward_macs == cpu.total_backward_macs
    assert meta.complete and meta.crosscheck() == [] and cpu.crosscheck() == []
    return cpu, meta


# --- grouped expert matmuls in float32 -----------------------------------------------------------------

@pytest.mark.parametrize("a,b,offs", [
    ((10, 16), (3, 16, 8), [3, 7, 10]),     # 2-D x 3-D: offsets split a's rows among 3 experts
    ((3, 4, 16), (3, 16, 8), None),         # 3-D x 3-D: a batch
    ((4, 16), (16, 8), [4, 12, 16]),        # 2-D x 2-D: offsets split k
    ((3, 4, 16), (16, 12), [4, 8, 12]),     # 3-D x 2-D: offsets split b's columns
])
def test_grouped_mm_float32_on_meta_has_the_cpu_kernel_s_output(a, b, offs):
    """The real meta kernel refuses float32 (a CUDA rule); the CPU computes it: same shape and dtype."""
    offsets = None if offs is None else torch.tensor(offs, dtype=torch.int32)
    cpu = torch._grouped_mm(torch.randn(a), torch.randn(b), offsets)

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(b))  # the experts' weights: no values on meta

        def forward(self, x, o=None):
            return torch._grouped_mm(x, self.w, o)

    args = (torch.randn(a),) + (() if offs is None else (offsets,))
    meta = inspect(Grouped(), args, device="meta")
    assert meta.layers[0].output_shapes == (cpu.shape,)
    assert meta.total_macs == inspect(Grouped(), args).total_macs


MOE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           num_local_experts=4, num_experts_per_tok=2, vocab_size=100)


@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_mixture_of_experts_on_meta_equals_cpu(implementation):
    """Per layer, 2*16 tokens each meet 2 of 4 experts: 64 rows x (64*192 gate-up + 96*64 down) =
    1,179,648 expert MACs, whatever the routing; the eager loop (nonzero per expert) routes on meta by
    a made-up even routing, checked against a second one."""
    torch.manual_seed(0)
    model = MixtralModel._from_config(MixtralConfig(**MOE), experts_implementation=implementation).eval()
    cpu, meta = _same_on_cpu_and_meta(model, {"input_ids": IDS})
    experts = [r for r in meta.layers if r.name.endswith("mlp.experts")]
    assert len(experts) == 2 and all(r.inclusive_macs == 64 * (64 * 192 + 96 * 64) == 1_179_648 for r in experts)
    routed = [n for n in meta.run.notes if "routing choice" in n]
    assert bool(routed) == (implementation == "eager")
    _same_on_cpu_and_meta(model, {"input_ids": IDS}, backward=True)


class CapacityMoE(nn.Module):
    """Top-1 routing with a capacity of 3 tokens per expert: tokens past it are dropped, so the work
    depends on where the router sends them."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(8, 4)
        self.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = torch.nonzero(choice == e).flatten()[:3]
            out[rows] = expert(x[rows])
        return out


def test_routing_that_changes_the_count_is_one_clear_line():
    """On the CPU it counts (router 8*8*4 = 256 + 3 tokens at most per expert); on meta the even and
    the skewed routing give different totals: refused in one line, never a guess."""
    x = torch.randn(8, 8)
    assert inspect(CapacityMoE(), x).complete
    with pytest.raises(MetaDeviceError) as exc:
        inspect(CapacityMoE(), x, device="meta")
    message = str(exc.value)
    assert "\n" not in message and "depends on the routing" in message and "device='cpu'" in message
    # even: 8 tokens, 2 an expert, all kept: 256 + 8*64 = 768; skewed: all on expert 0, 3 kept: 256 + 3*64 = 448
    assert "768 MACs with the choices spread evenly, 448 with every row on the same ones" in message


# --- a few tensors of a meta model on the CPU ------------------------------------------------------------

class StrayTensors(nn.Module):
    """Built under torch.device('meta'), its code makes two tensors on the CPU explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.register_buffer("index", torch.arange(64, device="cpu"))
        self.mask_embedding = nn.Parameter(torch.zeros(64, device="cpu"))

    def forward(self, x):
        return self.fc(x[..., self.index] + self.mask_embedding)


def test_meta_model_with_a_few_cpu_tensors_is_counted_on_meta():
    """fc: 3*64*64 = 12,288 MACs; 64*64 + 64 + the mask embedding's 64 parameters."""
    with torch.device("meta"):
        model = StrayTensors()
    report = inspect(model, torch.randn(3, 64))
    assert report.run.device == "meta" and report.total_macs == 3 * 64 * 64
    assert report.total_params == 64 * 64 + 64 + 64
    assert any("2 tensor(s) of a model on meta are on cpu (mask_embedding, index" in n for n in report.run.notes)
    assert report.crosscheck() == []
    assert model.index.device.type == "cpu" and model.mask_embedding.device.type == "cpu"  # untouched


def test_a_model_split_in_halves_is_still_refused_without_a_device():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).to("meta"))
    with pytest.raises(Exception, match="several devices"):
        inspect(model, torch.randn(1, 2))
    assert inspect(model, torch.randn(1, 2), device="meta").total_macs == 2 * 2 * 2


# --- values that choose a path: masks, causal-mask detection ------------------------------------------------

@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("make", [
    lambda: GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)),
    lambda: BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                                 vocab_size=100)),
], ids=["gpt2", "bert"])
def test_transformers_mask_checks_on_meta(make, padded):
    """transformers asks ``attention_mask.all()`` to pick the attention path: the mask's values are the
    input's, known on meta; padded or not, the counts are the CPU's."""
    torch.manual_seed(0)
    mask = torch.ones(2, 16, dtype=torch.long)
    if padded:
        mask[1, 10:] = 0
    _same_on_cpu_and_meta(make().eval(), {"input_ids": IDS, "attention_mask": mask})


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, batch_first=True), 2)

    def forward(self, tgt, memory):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        return self.decoder(tgt, memory, tgt_mask=mask)


def test_transformer_decoder_causal_mask_detection_on_meta():
    """nn.TransformerDecoder compares its mask with a causal one (``.item()``): a mask made from constants
    is known on meta. Per layer: self-attention 4*10*32*32 projections + 2*10*10*32, cross-attention
    10*32*32*2 + 12*32*32*2 + 2*10*12*32, feed-forward 2*10*32*64, batch 2."""
    _, meta = _same_on_cpu_and_meta(Decoder().eval(), (torch.randn(2, 10, 32), torch.randn(2, 12, 32)))
    per_layer = (4 * 10 * 32 * 32 + 2 * 10 * 10 * 32) + (2 * 10 * 32 * 32 + 2 * 12 * 32 * 32 + 2 * 10 * 12 * 32) \
        + 2 * 10 * 32 * 64
    assert meta.total_macs == 2 * 2 * per_layer


class StaleMask(nn.Module):
    """A known mask partly overwritten with values from the weights: its value is no longer known."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        mask = torch.ones(4, dtype=torch.bool, device=x.device)
        mask[:2] = self.fc(x)[0, :2] > 0
        return self.fc(x) * 2 if bool(mask.all()) else self.fc(x)


def test_a_known_value_overwritten_by_an_unknown_one_is_forgotten():
    assert inspect(StaleMask(), torch.randn(1, 4)).complete
    with pytest.raises(MetaDeviceError, match="needs tensor values"):
        inspect(StaleMask(), torch.randn(1, 4), device="meta")


class ChoosesByWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        return self.fc(y) if (y > 0).any() else y


def test_a_branch_on_values_from_the_weights_is_one_clear_line():
    with pytest.raises(MetaDeviceError) as exc:
        inspect(ChoosesByWeights(), torch.randn(1, 4), device="meta")
    assert "\n" not in str(exc.value) and "device='cpu'" in str(exc.value)


class ShapesFromPython(nn.Module):
    """A table made from Python data on the input's device (``torch.as_tensor``, as deformable attention
    does with its spatial shapes), checked against the input before use."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        shapes = torch.as_tensor([[2, 3], [1, 2]], dtype=torch.long, device=x.device)
        if (shapes[:, 0] * shapes[:, 1]).sum() != x.shape[1]:  # 2*3 + 1*2 = 8 positions
            raise ValueError("shapes do not match")
        return self.fc(x)


def test_constants_made_from_python_data_are_known_on_meta():
    """fc on (1, 8, 8): 8*8*8 = 512 MACs, on the CPU and on meta."""
    cpu, meta = _same_on_cpu_and_meta(ShapesFromPython(), torch.randn(1, 8, 8))
    assert meta.total_macs == 8 * 8 * 8


def test_grounding_dino_default_config_on_meta_is_complete():
    """Its text side used to be reported incomplete for ``cummax`` (a running max, matched by the name
    pattern "mm"); its deformable attention checks spatial shapes made with ``torch.as_tensor``."""
    from transformers import GroundingDinoConfig, GroundingDinoModel

    with torch.device("meta"):
        model = GroundingDinoModel(GroundingDinoConfig()).eval()
    report = inspect(model, {"input_ids": torch.randint(0, 100, (1, 32)), "pixel_values": torch.randn(1, 3, 224, 224)},
                     device="meta")
    assert report.complete and report.uncounted_ops == {} and report.crosscheck() == []
    ops = {s.op for r in report.layers for s in r.ops}
    assert "aten.cummax" in ops  # it runs, and counts 0 by convention
    assert report.total_params == sum(p.numel() for p in model.parameters())


class PadCheck(nn.Module):
    """transformers' padding warning: ``pad_token_id in input_ids[:, [-1, 0]]`` (an index list the
    indexing code turns into a tensor itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc = nn.Embedding(10, 8), nn.Linear(8, 8)

    def forward(self, ids):
        h = self.embed(ids)
        return self.fc(h) if 0 in ids[:, [-1, 0]] else self.fc(self.fc(h))


@pytest.mark.parametrize("first", [0, 3])
def test_an_index_list_on_known_values(first):
    """Ids (1, 5): one Linear 5*8*8 = 320 MACs when a pad id (0) sits at either end, two otherwise."""
    ids = torch.tensor([[first, 4, 5, 6, 7]])
    _, meta = _same_on_cpu_and_meta(PadCheck(), ids)
    assert meta.total_macs == 320 * (1 if first == 0 else 2)


class FilledTable(nn.Module):
    """DETR-style: an ``empty`` table filled entry by entry, checked, read back with ``tolist()``, and
    experts picked by name with an f-string of a tensor (switch-transformers)."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleDict({f"expert_{i}": nn.Linear(8, 8) for i in range(3)})

    def forward(self, x, choice):
        shapes = torch.empty((2, 2), dtype=torch.long, device=x.device)
        shapes[0, 0], shapes[0, 1], shapes[1, 0], shapes[1, 1] = 2, 3, 1, 2
        torch._check_tensor_all(shapes.prod(1).sum() == x.shape[1])
        parts = x.split((shapes[:, 0] * shapes[:, 1]).tolist(), dim=1)  # 6 and 2 positions
        out = []
        for part, e in zip(parts, choice.nonzero()):
            out.append(self.experts[f"expert_{e[0]}"](part))
        return torch.cat(out, 1)


def test_filled_tables_tolist_and_formatted_indices_on_meta():
    """expert_0 on 6 positions, expert_2 on 2: (6 + 2) * 8 * 8 = 512 MACs; the same rows on the CPU."""
    cpu, meta = _same_on_cpu_and_meta(FilledTable(), (torch.randn(1, 8, 8), torch.tensor([True, False, True])))
    assert meta.total_macs == 512
    assert (meta.layer("experts.expert_0").macs, meta.layer("experts.expert_2").macs) == (6 * 64, 2 * 64)


class Asserts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        torch._check_tensor_all(torch.isfinite(y))  # on values from the weights: checked, never a path
        return self.fc(y)


def test_an_assertion_on_values_from_the_weights_is_taken_to_hold_and_said():
    _, meta = _same_on_cpu_and_meta(Asserts(), torch.randn(2, 4))
    assert meta.total_macs == 2 * 2 * 4 * 4
    assert any("1 assertion(s) on values computed from the weights" in n for n in meta.run.notes)


class CpuScalarFill(nn.Module):
    """sew-d's masked softmax: ``masked_fill(mask, torch.tensor(min))``, a 0-dim tensor on the CPU that
    real kernels take with tensors of any device and the meta kernel refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x, mask):
        scores = self.fc(x).masked_fill(mask == 0, torch.tensor(torch.finfo(x.dtype).min))
        return self.fc(scores.softmax(-1))


def test_a_cpu_scalar_with_meta_tensors():
    """Two Linear(6, 6) on 2*4 rows: 2 * 8*6*6 = 576 MACs."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    _, meta = _same_on_cpu_and_meta(CpuScalarFill(), (torch.randn(2, 4, 6), mask))
    assert meta.total_macs == 576
