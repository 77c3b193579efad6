"""Serving cost of large language models counted on meta: a prefill and decode steps with the KV cache.

    .venv/bin/python benchmarks/generation.py [--prompt-len 512] [--new-tokens 128] [--out benchmarks/RESULTS-generation.md]

A Llama-2-7B-sized config (float16) on the meta device: ``inspect(model, ids, generate=N)`` with a
prompt of P tokens and N decode steps. Reported: wall time of the call, peak RSS above what the
process held after its imports and the model's build, the counted figures beside their closed
forms, and the roofline bounds for a stated peak (an H100 SXM's datasheet: 989 dense TFLOP/s in
float16, 3.35 TB/s). Then a Mixtral-8x7B-sized config (bfloat16, grouped experts) for active
against total parameters. Each model runs in a fresh process so that the RSS figures are its own.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

H100 = (989e3, 3350.0)  # GFLOP/s (dense float16), GB/s: NVIDIA's H100 SXM datasheet


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain(model, ids, steps: int) -> float:
    """CPU seconds of the same prefill and decode steps on meta without inspector: the floor."""
    import torch

    cpu = time.process_time()
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        for _ in range(steps):
            out = model(input_ids=ids[:, -1:], cache=out.cache, use_cache=True)
    return time.process_time() - cpu


def llama7b(prompt: int, steps: int) -> dict:
    import torch
    import transformers

    from inspector import inspect

    before = _rss_mb()
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                      max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM._from_config(config, dtype=torch.float16).eval()
    ids = torch.zeros(1, prompt, dtype=torch.long, device="meta")
    inspect(model, {"input_ids": ids[:, :8]}, generate=1, device="meta")  # first-call costs out of the timing
    start, cpu = time.perf_counter(), time.process_time()
    report = inspect(model, {"input_ids": ids}, generate=steps, device="meta", peak=H100)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    g = report.generation
    plain = _plain(model, ids, steps)
    L, d, f, V, n = 32, 4096, 11008, 32000, report.total_params
    per_token = L * (4 * d * d + 3 * d * f)  # q, k, v, o and gate, up, down
    return {
        "seconds": seconds, "cpu_seconds": cpu, "load": __import__("os").getloadavg()[0], "plain_cpu_seconds": plain,
        "rss_above_mb": _rss_mb() - before, "params": n,
        "prefill_macs": g.prefill_macs, "prefill_expected": L * (per_token // L * prompt + 2 * prompt * prompt * d)
        + prompt * d * V,
        "decode_first": g.decode_macs[0], "decode_last": g.decode_macs[-1],
        "decode_first_expected": per_token + 2 * L * (prompt + 1) * d + d * V,
        "decode_last_expected": per_token + 2 * L * (prompt + steps) * d + d * V,
        "kv_cache_bytes": g.kv_cache_bytes, "kv_expected": 2 * L * (prompt + steps) * d * 2,
        "kv_per_token": g.kv_cache_bytes_per_token, "read_last": g.decode_read_bytes[-1],
        "read_expected": 2 * (n - (V - 1) * d) + 2 * L * (prompt + steps) * d * 2,
        "prefill_tps": g.prefill_tokens_per_s, "decode_tps": g.decode_tokens_per_s,
        "decode_step_calls": len(g.decode_step.layers),
    }


def mixtral(prompt: int, steps: int) -> dict:
    import torch
    import transformers

    from inspector import inspect

    before = _rss_mb()
    config = transformers.MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.MixtralForCausalLM._from_config(config, dtype=torch.bfloat16,
                                                             experts_implementation="grouped_mm").eval()
    ids = torch.zeros(1, prompt, dtype=torch.long, device="meta")
    start, cpu = time.perf_counter(), time.process_time()
    report = inspect(model, {"input_ids": ids}, generate=steps, device="meta", peak=H100)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    g, e = report.generation, report.experts
    expert = 3 * 4096 * 14336
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_above_mb": _rss_mb() - before, "params": report.total_params,
            "active": e.active_params, "active_expected": report.total_params - 32 * (8 - 2) * expert,
            "decode_read_last": g.decode_read_bytes[-1], "decode_tps": g.decode_tokens_per_s,
            "prefill_tps": g.prefill_tokens_per_s, "kv_cache_bytes": g.kv_cache_bytes,
            "kv_expected": 2 * 32 * (prompt + steps) * 8 * 128 * 2}


def _child(which: str, prompt: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", which, "--prompt-len", str(prompt), "--new-tokens",
                          str(steps)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _g(n: float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.1f}"


def render(prompt: int, steps: int, llama: dict, moe: dict) -> str:
    import torch
    import transformers

    ok = lambda a, b: "✓" if a == b else f"✗ ({b:,})"  # noqa: E731
    lines = [
        "# Generation cost on meta (benchmarks/generation.py)", "",
        f"Machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} threads, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}.",
        f"Command: `python benchmarks/generation.py --prompt-len {prompt} --new-tokens {steps}`. Each model in a "
        "fresh process; peak RSS is the process's high-water mark after the call minus the one after its "
        "imports (building the model on meta and one warm-up call are inside it).", "",
        f"## Llama-2-7B-sized config, float16, prompt {prompt}, {steps} decode steps", "",
        "| figure | counted | closed form |", "|---|---|---|",
        f"| wall time of `inspect(..., generate={steps}, device='meta')` | {llama['seconds']:.1f} s (load average "
        f"{llama['load']:.1f} on 2 cores) | target < 60 s |",
        f"| CPU time of the process during the call | {llama['cpu_seconds']:.1f} s | the same passes on meta "
        f"without inspector: {llama['plain_cpu_seconds']:.1f} s |",
        f"| peak RSS above imports | {llama['rss_above_mb']:.0f} MB | target < 300 MB |",
        f"| parameters | {llama['params']:,} | |",
        f"| prefill MACs | {llama['prefill_macs']:,} | L·(P·(4d²+3df) + 2P²d) + P·d·V {ok(llama['prefill_macs'], llama['prefill_expected'])} |",
        f"| decode step 1 MACs (c = {prompt + 1}) | {llama['decode_first']:,} | L·(4d²+3df + 2cd) + d·V {ok(llama['decode_first'], llama['decode_first_expected'])} |",
        f"| decode step {steps} MACs (c = {prompt + steps}) | {llama['decode_last']:,} | {ok(llama['decode_last'], llama['decode_last_expected'])} |",
        f"| KV cache after the last step | {llama['kv_cache_bytes']:,} B | 2·L·(P+N)·d·2 {ok(llama['kv_cache_bytes'], llama['kv_expected'])} |",
        f"| KV cache per token | {llama['kv_per_token']:,.0f} B | 2·L·d·2 = {2 * 32 * 4096 * 2:,} |",
        f"| bytes read by the last decode step | {llama['read_last']:,} | 2·(params − (V−1)·d) + cache {ok(llama['read_last'], llama['read_expected'])} |",
        f"| roofline bound, prefill (H100 datasheet peak) | {llama['prefill_tps']:,.0f} tokens/s | |",
        f"| roofline bound, decode (H100 datasheet peak) | {llama['decode_tps']:,.1f} tokens/s | |",
        "",
        f"## Mixtral-8x7B-sized config, bfloat16, grouped experts, prompt {prompt}, {steps} decode steps", "",
        "| figure | counted | closed form |", "|---|---|---|",
        f"| wall time | {moe['seconds']:.1f} s | |",
        f"| CPU time of the process during the call | {moe['cpu_seconds']:.1f} s | |",
        f"| peak RSS above imports | {moe['rss_above_mb']:.0f} MB | |",
        f"| total parameters | {moe['params']:,} | |",
        f"| active parameters (one token) | {moe['active']:,} | total − L·(E−k)·3·d·f {ok(moe['active'], moe['active_expected'])} |",
        f"| KV cache after the last step | {moe['kv_cache_bytes']:,} B | 2·L·(P+N)·8·128·2 {ok(moe['kv_cache_bytes'], moe['kv_expected'])} |",
        f"| roofline bound, decode (H100 datasheet peak) | {moe['decode_tps']:,.1f} tokens/s | |",
        "",
        "Wall time depends on what else the machine runs (the load average is the 1-minute one when the call "
        "ended); the process's CPU time is what the call itself took. For comparison, the same prefill and decode "
        "steps run on meta without inspector (plain `model(...)` calls with the cache): the difference of the two "
        "CPU times is what counting adds to the passes themselves (inspector's fast meta kernels, "
        "inspector/meta_fast.py, take back part of it).", "",
        "The roofline bounds use NVIDIA's datasheet figures (989 TFLOP/s dense float16, 3.35 TB/s), stated, not "
        "measured: no GPU was at hand. Decode is memory-bound: every step reads the weights it uses and the "
        "whole cache.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS-generation.md"))
    parser.add_argument("--child", choices=("llama", "mixtral"))
    args = parser.parse_args()
    if args.child:
        run = llama7b if args.child == "llama" else mixtral
        print(json.dumps(run(args.prompt_len, args.new_tokens)))
        return
    llama = _child("llama", args.prompt_len, args.new_tokens)
    moe = _child("mixtral", args.prompt_len, args.new_tokens)
    text = render(args.prompt_len, args.new_tokens, llama, moe)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
