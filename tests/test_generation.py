"""Serving and fine-tuning language models: prefill and decode with the KV cache, experts, adapters.

Every expected figure is hand arithmetic from the config (written next to the assertion)."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from inspector import InputError, inspect, inspect_spec, load
from inspector.compare import compare
from tests.conftest import assert_untouched, cuda, snapshot

transformers = pytest.importorskip("transformers")

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
L, D, V, P, N, POSITIONS = 2, 64, 100, 8, 3, 64  # GPT-2: layers, width, vocabulary, prompt, new tokens


def gpt2():
    config = transformers.GPT2Config(n_layer=L, n_embd=D, n_head=4, vocab_size=V, n_positions=POSITIONS,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def ids(batch=1, length=P, vocab=V):
    return torch.randint(0, vocab, (batch, length))


def figures(g):
    """Everything a generation measured (not the peak, which depends on the device)."""
    return (g.prefill_macs, g.prefill_logits, g.prefill_weight_bytes, g.prefill_cache_bytes, g.decode_macs,
            g.cache_lens, g.decode_weight_bytes, g.cache_bytes, g.cross_cache_bytes, g.encoder_macs)


# --- GPT-2: prefill, decode, cache -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_runs():
    model = gpt2()
    prompt = ids()
    return model, {device: inspect(model, {"input_ids": prompt}, generate=N, device=device, peak=(1000.0, 100.0))
                   for device in ("cpu", "meta")}


def test_gpt2_prefill_counts_every_position_and_the_full_score_matrix(gpt2_runs):
    _, runs = gpt2_runs
    g = runs["cpu"].generation
    # L * (12 d^2 P + 2 P^2 d) + k d V, logits at all P positions: 2 * (786,432 / 2 + 8,192) + 51,200
    assert g.prefill_macs == L * (12 * D * D * P + 2 * P * P * D) + P * D * V == 854_016
    assert g.prefill_logits == P and runs["cpu"].total_macs == g.prefill_macs  # the report's layers: the prefill
    assert any("logits at 8 positions" in note for note in g.notes)


def test_gpt2_each_decode_step_attends_over_the_whole_cache(gpt2_runs):
    _, runs = gpt2_runs
    g = runs["cpu"].generation
    assert g.cache_lens == (P + 1, P + 2, P + 3) == (9, 10, 11)  # keys, the new token's included
    # L * (12 d^2 + 2 c d) + d V per step: 2 * (49,152 + 1,152) + 6,400 = 107,008 at c = 9, +256 per key
    assert g.decode_macs == tuple(L * (12 * D * D + 2 * c * D) + D * V for c in (9, 10, 11)) == (107_008, 107_264,
                                                                                               107_520)
    step = g.decode_step  # the last step, layer by layer, as any report
    assert step.total_macs == 107_520 and step.input_shapes[0] == (1, 1)
    assert step.layer("transformer.h.1.attn").inclusive_macs == 4 * D * D + 2 * 11 * D  # q k v o + scores at c = 11


def test_gpt2_kv_cache_and_what_a_decode_step_reads(gpt2_runs):
    model, runs = gpt2_runs
    g = runs["cpu"].generation
    assert g.kv_cache_bytes == 2 * L * (P + N) * D * 4 == 11_264  # keys and values, float32
    assert g.prefill_cache_bytes == 2 * L * P * D * 4 == 8_192
    assert g.kv_cache_bytes_per_token == 2 * L * D * 4 == 1_024
    params = sum(p.numel() for p in model.parameters())
    assert params == V * D + POSITIONS * D + L * (12 * D * D + 13 * D) + 2 * D == 110_592
    # every weight (the tied token table through the LM head) but the position table: one row per step
    assert g.decode_weight_bytes == (4 * (params - POSITIONS * D + D),) * N == (426_240,) * 3
    assert g.decode_read_bytes[-1] == 426_240 + 11_264
    assert g.prefill_weight_bytes == 4 * (params - POSITIONS * D + P * D) == 428_032  # P rows of positions


def test_a_masked_prompt_generates_on_meta_as_on_the_cpu():
    """transformers' mask utilities read the mask's values (``.all()``); on meta they are known from
    the given mask, and each decode step's longer mask from it."""
    model, prompt = gpt2(), ids()
    mask = torch.ones_like(prompt)
    runs = {device: inspect(model, {"input_ids": prompt, "attention_mask": mask}, generate=N, device=device)
            for device in ("cpu", "meta")}
    assert figures(runs["cpu"].generation) == figures(runs["meta"].generation)
    assert runs["meta"].generation.decode_macs == tuple(sorted(set(runs["meta"].generation.decode_macs)))


def test_an_eager_expert_loop_generates_on_meta_with_its_routing_checked():
    model, prompt = mixtral("eager"), ids(1, 8, 128)
    cpu = inspect(model, {"input_ids": prompt}, generate=2, device="cpu")
    meta = inspect(model, {"input_ids": prompt}, generate=2, device="meta")
    assert figures(meta.generation)[:5] == figures(cpu.generation)[:5]
    assert any("routing choice(s) made up on meta" in n and "generated again" in n for n in meta.generation.notes)


def test_gpt2_counts_identical_on_cpu_and_meta(gpt2_runs):
    _, runs = gpt2_runs
    assert figures(runs["cpu"].generation) == figures(runs["meta"].generation)
    cpu, meta = runs["cpu"].generation.decode_step, runs["meta"].generation.decode_step
    assert [(r.name, r.inclusive_macs) for r in cpu.layers] == [(r.name, r.inclusive_macs) for r in meta.layers]


@cuda
def test_gpt2_counts_identical_on_cuda(gpt2_runs):
    model, runs = gpt2_runs
    before = snapshot(model)
    on_cuda = inspect(model, {"input_ids": ids()}, generate=N, device="cuda", peak="measure").generation
    assert figures(on_cuda) == figures(runs["cpu"].generation)
    assert on_cuda.peak_source == "measured" and on_cuda.decode_tokens_per_s > 0
    assert_untouched(model, before)


def test_roofline_bounds_from_a_stated_peak(gpt2_runs):
    _, runs = gpt2_runs
    g = runs["cpu"].generation
    assert g.peak_source == "given"
    # prefill: max(2 x 854,016 FLOPs / 1e12 FLOP/s, (428,032 + 8,192) B / 1e11 B/s) = 4.36224 us: memory
    assert g.prefill_seconds == pytest.approx(max(2 * 854_016 / 1e12, 436_224 / 1e11)) == 4.36224e-6
    assert g.prefill_tokens_per_s == pytest.approx(8 / 4.36224e-6)
    assert g.bound(g.prefill_macs, 436_224) == "memory"
    # decode step c: (426,240 weights + 2 * 2 * c * 64 * 4 cache) / 1e11 B/s; three tokens over their sum
    steps = [(426_240 + 1_024 * c) / 1e11 for c in (9, 10, 11)]
    assert g.decode_tokens_per_s == pytest.approx(3 / sum(steps))


def test_keeping_only_the_last_logits_as_generate_does():
    model = gpt2()
    report = inspect(model, {"input_ids": ids(2), "logits_to_keep": 1,
                             "attention_mask": torch.ones(2, P, dtype=torch.long)}, generate=2, peak=None)
    g = report.generation
    # batch 2: 2 * (L * (12 d^2 P + 2 P^2 d) + 1 * d V) = 2 * (802,816 + 6,400)
    assert g.prefill_logits == 1 and g.prefill_macs == 2 * (L * (12 * D * D * P + 2 * P * P * D) + D * V) == 1_618_432
    assert g.decode_macs == tuple(2 * (L * (12 * D * D + 2 * c * D) + D * V) for c in (9, 10))
    assert g.kv_cache_bytes == 2 * 2 * L * (P + 2) * D * 4  # two sequences
    # one position row: GPT-2 looks its positions up once, shape (1, 1), for the whole batch
    assert g.decode_weight_bytes[0] == 4 * (110_592 - POSITIONS * D + D)
    assert g.peak_gflops is None and g.decode_tokens_per_s is None


def test_generation_gives_the_model_back_as_it_was():
    model = gpt2()
    before = snapshot(model)
    inspect(model, {"input_ids": ids()}, generate=2, peak=None)
    inspect(model, {"input_ids": ids()}, generate=2, device="meta")
    assert_untouched(model, before)


def test_the_report_is_plain_data():
    report = inspect(gpt2(), {"input_ids": ids()}, generate=2, device="meta", peak=(1.0, 1.0))
    back = pickle.loads(pickle.dumps(report))
    assert back.generation == report.generation
    data = json.loads(json.dumps(report.to_dict()))
    assert data["generation"]["decode_macs"] == list(report.generation.decode_macs)
    assert data["generation"]["decode_step"]["totals"]["macs"] == report.generation.decode_macs[-1]


def test_the_table_shows_prefill_decode_and_the_cache():
    text = inspect(gpt2(), {"input_ids": ids()}, generate=N, device="meta", peak=(1000.0, 100.0)).table(depth=0)
    assert "prefill" in text and "decode 3" in text and "decode (all 3)" in text
    assert "KV cache: 11.3 kB after the last step (1.02 kB per token" in text  # 11,264 and 1,024 bytes


# --- Llama with grouped-query attention; T5 ---------------------------------------------------------------------

def test_llama_with_grouped_query_attention():
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).eval()
    prompt = ids()
    kv = 2 * 16  # 2 key/value heads of 16
    per_token = D * D + 2 * D * kv + D * D + 3 * D * 96  # q, k, v, o; gate, up, down = 30,720
    for device in ("cpu", "meta"):
        g = inspect(model, {"input_ids": prompt}, generate=N, device=device).generation
        # attention: 4 query heads of 16 over P keys, scores and sum: 2 P^2 d
        assert g.prefill_macs == L * (per_token * P + 2 * P * P * D) + P * D * V == 559_104
        assert g.decode_macs == tuple(L * (per_token + 2 * c * D) + D * V for c in (9, 10, 11)) == (70_144, 70_400,
                                                                                                   70_656)
        assert g.kv_cache_bytes == 2 * L * (P + N) * kv * 4 == 5_632  # the KV width: 2 heads x 16


def test_t5_runs_its_encoder_once():
    config = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = transformers.T5ForConditionalGeneration(config).eval()
    prompt = ids()
    for device in ("cpu", "meta"):
        g = inspect(model, {"input_ids": prompt}, generate=N, device=device).generation
        # encoder, 8 tokens, 2 layers: q k v o 4 x 32^2, feed-forward 2 x 32 x 64, scores 2 x 8^2 x 32
        assert g.encoder_macs == 2 * (8 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 8 * 8 * 32) == 139_264
        # decoder prefill on its start token: self 4 x 32^2 + 2 x 1 x 32, cross q and o 2 x 32^2, cross k and v
        # over the 8 encoder tokens 2 x 8 x 32^2 (cached), cross scores 2 x 8 x 32, feed-forward; LM head 32 x 100
        decoder = 2 * (4 * 1024 + 64 + 2 * 1024 + 2 * 8 * 1024 + 512 + 2 * 32 * 64) + 32 * 100
        assert g.prompt_len == 1 and g.prefill_macs == 139_264 + decoder == 196_864
        assert g.prefill_tokens == 8 + 1  # the encoder's input and the decoder's start token
        # decode step c: self 4 x 32^2 + 2c x 32, cross q o only (its keys cached), cross scores, feed-forward
        assert g.decode_macs == tuple(2 * (4096 + 64 * c + 2048 + 512 + 4096) + 3200 for c in (2, 3, 4))
        assert g.cross_cache_bytes == 2 * 2 * 8 * 32 * 4 == 4_096  # cross keys and values over the encoder tokens
        assert g.kv_cache_bytes == 4_096 + 2 * 2 * (1 + N) * 32 * 4 == 6_144
        assert not any(r.name.startswith("encoder") for r in g.decode_step.layers)


# --- experts -----------------------------------------------------------------------------------------------

def mixtral(implementation):
    config = transformers.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=64)
    return transformers.MixtralForCausalLM._from_config(config, experts_implementation=implementation).eval()


EXPERT = 3 * 64 * 96  # gate, up and down of one expert: 18,432
# embeddings 128 x 64, per layer q o 64^2 each, k v 64 x 32 each, router 4 x 64, 4 experts, 2 norms; norm, head
TOTAL = 128 * 64 + 2 * (2 * 4096 + 2 * 2048 + 256 + 4 * EXPERT + 128) + 64 + 128 * 64


@pytest.mark.parametrize("implementation,device,dtype", [
    ("eager", "cpu", None),             # a loop over the experts hit
    ("eager", "meta", None),            # the same, its routing made up evenly on meta (and checked)
    ("grouped_mm", "meta", "bfloat16"),  # torch._grouped_mm
    ("grouped_mm", "meta", None),       # float32 on meta, which torch's own meta kernel refuses
    ("batched_mm", "meta", None),       # bmm over gathered expert weights
])
def test_mixtral_active_parameters(implementation, device, dtype):
    report = inspect(mixtral(implementation), {"input_ids": ids(2, 16, 128)}, device=device, dtype=dtype)
    assert report.total_params == TOTAL == 189_248
    # total - L (E - k) x one expert: 2 of the 4 experts per layer are not touched by a token
    assert report.active_params == report.experts.active_params == TOTAL - 2 * (4 - 2) * EXPERT == 115_520
    assert report.experts.shares == (0.5, 0.5) and report.experts.tokens == 2 * 16
    # MACs per token: the forward's 3,555,328 (test_attribution's hand count) over 32 tokens
    assert report.experts.macs_per_token == 3_555_328 / 32


def test_a_mixtral_decode_step_reads_only_the_routed_experts():
    model = mixtral("eager")
    report = inspect(model, {"input_ids": ids(1, P, 128)}, generate=2)
    g = report.generation
    # all weights but 2 of 4 experts per layer and all but one row of the (untied) token table, float32
    assert g.decode_weight_bytes == (4 * (TOTAL - 2 * 2 * EXPERT - (128 - 1) * 64),) * 2 == (429_568,) * 2
    assert g.decode_step.active_params == 115_520


class ListMoE(torch.nn.Module):
    """Experts as a ModuleList of MLPs with biases, top-1 routing in an eager loop over the experts hit."""

    def __init__(self, experts=4, width=8, hidden=16):
        super().__init__()
        self.router = torch.nn.Linear(width, experts, bias=False)
        self.experts = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                                               torch.nn.Linear(hidden, width))
                                           for _ in range(experts))

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        choice = self.router(tokens).argmax(-1)
        out = torch.zeros_like(tokens)
        for e in choice.unique().tolist():
            rows = choice == e
            out[rows] = self.experts[e](tokens[rows])
        return out.reshape(x.shape)


def test_a_module_list_of_experts_with_biases():
    model = ListMoE()
    report = inspect(model, torch.randn(2, 5, 8))
    expert = 8 * 16 + 16 + 16 * 8 + 8  # weights 256, biases 24: 280
    assert report.total_params == 4 * 8 + 4 * expert == 1_152
    # 10 tokens, each through one expert: 10 x 256 MACs over 10 tokens and 4 x 256 weights = a quarter,
    # of every expert parameter (biases too): one expert's 280
    assert report.experts.shares == (0.25,) and report.experts.active_expert_params == expert
    assert report.active_params == 1_152 - (4 - 1) * expert == 312


def test_a_dense_model_has_no_experts():
    report = inspect(gpt2(), {"input_ids": ids()})
    assert report.experts is None and report.active_params == report.total_params


# --- adapters ---------------------------------------------------------------------------------------------

def test_a_peft_lora_step_computes_no_base_weight_gradient():
    peft = pytest.importorskip("peft")
    r = 4
    base = gpt2()
    model = peft.get_peft_model(base, peft.LoraConfig(r=r, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0,
                                                      fan_in_fan_out=True))
    before = snapshot(model)
    report = inspect(model, {"input_ids": ids()}, backward=True)
    assert_untouched(model, before)
    trainable, every = model.get_nb_trainable_parameters()
    assert report.trainable_params == trainable == L * (D * r + r * 3 * D) == 2_048  # A: d -> r, B: r -> 3d
    assert report.total_params == every == 110_592 + 2_048 and report.frozen_params == 110_592
    # backward of the sum of logits: the LM head's input gradient P d V (no weight gradient: frozen);
    # every layer: input gradients of the MLP (2 x 4 P d^2) and attention output (P d^2), attention
    # 2 x (2 P^2 d), B's weight and input gradients (2 x 3 P d r), A's weight gradient (P d r);
    # above the first layer the input also trains: c_attn's input gradient 3 P d^2 and A's P d r
    per_layer = 9 * P * D * D + 4 * P * P * D + 7 * P * D * r
    assert report.total_backward_macs == P * D * V + L * per_layer + (L - 1) * (3 * P * D * D + P * D * r) == 802_816
    assert any("PEFT adapters" in note and "2,048 trainable adapter parameters" in note for note in report.notes)
    assert report.crosscheck() == []


# --- any model with the cache protocol -------------------------------------------------------------------

@torch.library.custom_op("inspector_generation_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


class CachedToy(torch.nn.Module):
    """forward(input_ids, cache, use_cache) -> {"logits", "cache"}: the cache a tensor of every embedding so
    far; decode steps run a custom operator no formula knows."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, input_ids, cache=None, use_cache=False):
        h = self.embed(input_ids)
        if cache is not None:
            h = torch.ops.inspector_generation_test.mystery(h)
        cache = h if cache is None else torch.cat([cache, h], dim=1)
        return {"logits": self.head(h), "cache": cache}


def test_any_model_with_a_cache_and_an_uncounted_decode_op_is_incomplete():
    report = inspect(CachedToy(), {"input_ids": torch.zeros(1, 5, dtype=torch.long)}, generate=2, peak=None)
    g = report.generation
    assert g.prefill_macs == 5 * 4 * 10 and g.decode_macs == (4 * 10, 4 * 10)  # the head per position
    assert g.cache_bytes == ((5 + 1) * 4 * 4, (5 + 2) * 4 * 4)  # one float32 embedding per token
    assert report.uncounted_ops == {"inspector_generation_test.mystery": 2} and not report.complete
    assert any(u.op == "inspector_generation_test.mystery" for u in report.crosscheck())


# --- errors ------------------------------------------------------------------------------------------------

def test_positional_inputs_are_passed_by_name():
    report = inspect(gpt2(), ids(), kwargs={"attention_mask": torch.ones(1, P, dtype=torch.long)}, generate=1, peak=None)
    assert report.generation.decode_macs == (L * (12 * D * D + 2 * 9 * D) + D * V,)  # c = 9: 107,008


def test_a_model_without_a_cache_is_refused_in_one_line():
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100)
    with pytest.raises(InputError, match="needs a model whose forward takes use_cache"):
        inspect(transformers.BertForSequenceClassification(config), {"input_ids": ids()}, generate=2)
    with pytest.raises(InputError, match="separate"):
        inspect(gpt2(), {"input_ids": ids()}, generate=2, backward=True)
    with pytest.raises(InputError, match="generate must be an int"):
        inspect(gpt2(), {"input_ids": ids()}, generate=-1)
    with pytest.raises(InputError, match="token ids"):
        inspect(gpt2(), {"inputs_embeds": torch.randn(1, P, D)}, generate=2)


# --- front door ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2gen")
    config = transformers.GPT2Config(n_layer=L, n_embd=D, n_head=4, vocab_size=V, n_positions=POSITIONS)
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(path)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def test_hf_builds_the_configs_architecture_and_says_so(gpt2_dir, tmp_path):
    spec = load(f"hf:{gpt2_dir}", device="meta")
    assert type(spec.module).__name__ == "GPT2LMHeadModel" and "built GPT2LMHeadModel" in spec.notes[0]
    assert "built GPT2LMHeadModel" in inspect_spec(spec).notes[0]
    other = load(f"hf:{gpt2_dir}", device="meta", model_class="GPT2Model")
    assert type(other.module).__name__ == "GPT2Model" and "chosen" in other.notes[0]
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=V).save_pretrained(tmp_path)  # no architecture
    assert type(load(f"hf:{tmp_path}", device="meta").module).__name__ == "GPT2Model"
    generating = load(f"hf:{tmp_path}", device="meta", generate=4)
    assert type(generating.module).__name__ == "GPT2LMHeadModel" and "AutoModelForCausalLM" in generating.notes[0]


def test_cli_generate_prints_a_prefill_decode_table(gpt2_dir):
    out = run_cli("summary", f"hf:{gpt2_dir}", "--device", "meta", "--generate", "4", "--prompt-len", "16",
                  "--depth", "0", "--peak", "1000,100")
    assert out.returncode == 0, out.stderr
    assert "prefill" in out.stdout and "decode 4" in out.stdout and "KV cache" in out.stdout
    assert "built GPT2LMHeadModel" in out.stdout
    data = json.loads(run_cli("summary", f"hf:{gpt2_dir}", "--device", "meta", "--generate", "2", "--prompt-len",
                              "16", "--last-logits", "--format", "json", "--depth", "0").stdout)
    # prefill of 16 tokens keeping the last logits: L (12 d^2 16 + 2 16^2 d) + d V
    assert data["generation"]["prefill_macs"] == L * (12 * D * D * 16 + 2 * 16 * 16 * D) + D * V == 1_644_800
    assert data["generation"]["prefill_logits"] == 1
    assert data["generation"]["decode_macs"] == [L * (12 * D * D + 2 * c * D) + D * V for c in (17, 18)]


def test_cli_generate_options_checked_up_front(gpt2_dir):
    for args, message in [(["--prompt-len", "16"], "add --generate"), (["--last-logits"], "add --generate"),
                          (["--generate", "2", "--hf-class", "GPT2LMHeadMod"], "closest: GPT2LMHeadModel"),
                          (["--prompt-len", "16", "--generate", "2", "--seq-len", "16"], "once")]:
        out = run_cli("summary", f"hf:{gpt2_dir}", "--device", "meta", *args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    out = run_cli("summary", "resnet18", "--hf-class", "GPT2Model")
    assert out.returncode == 2 and "hf: model" in out.stderr


def test_compare_takes_the_generation_options(gpt2_dir):
    result = compare([f"hf:{gpt2_dir}"], device="meta", generate=2, seq_len=P)
    row = result.rows[0]
    assert row.prefill_macs == 854_016 and row.decode_macs == L * (12 * D * D + 2 * 10 * D) + D * V  # c = 10
    assert row.kv_cache_bytes == 2 * L * (P + 2) * D * 4
    assert "KV cache" in result.table()
    out = run_cli("compare", f"hf:{gpt2_dir}", "--device", "meta", "--generate", "2", "--prompt-len", "8")
    assert out.returncode == 0 and "Prefill GMACs" in out.stdout
