"""Decoding throughput: greedy generation, ``gpt2-small`` shape, against Hugging Face's
``GPT2LMHeadModel.generate`` with its KV cache (issue: training and generation).

Usage::

    python bench/generate.py [--quick] [--prompt-len 16] [--new-tokens 128] [--rounds 5]
                             [--no-bf16] [--profile] [--threads N] [--json out.json]

Batch 1, a fixed random prompt of ``--prompt-len`` tokens, ``--new-tokens`` greedy tokens
(EOS disabled, so every run makes exactly that many). Both models hold the *same* weights
(Hugging Face's random init copied into lmscope's layout), so their greedy tokens must
agree: checked in the same run. tokens/s = new tokens / wall time of the whole call
(prefill included, for both).

Variants, run round-robin (the first one rotates each round) so that load from other
processes hits all alike; ratios within a run are the numbers to compare:
- ``hf fp32``: ``model.generate(..., do_sample=False)``, SDPA attention, DynamicCache.
- ``lmscope fp32``: ``lmscope.generate.generate(model, prompt, ...)``.
- ``lmscope raw loop fp32``: the model's forward + argmax through the KV cache, no
  generation bookkeeping: what `generate` itself costs is the gap to this.
- ``weights nt`` / ``weights nn``: every matmul of one decoding step and nothing else
  (``x @ W.T`` with W stored [out, in] as plain ``nn.Linear``, or ``x @ W`` with W
  stored [in, out] as lmscope stores fp32 weights on CPU), repeated once per token: the
  floor set by the products alone, in each layout.
- bf16 rows (unless ``--no-bf16``): both models with bf16 weights, fewer rounds.

``--profile`` adds torch.profiler's per-op self CPU time per token, for both models: of
the bare decoding forward through each model's own cache (batch 1, one token), and of
the whole generate call. ``--threads 1`` runs everything on one thread: on a shared
2-core machine, every multi-threaded op of a decoding step waits for a second core that
another process may hold, which costs the many-small-op model (HF) more (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmscope.generate import generate
from lmscope.model import BaseTransformer

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _forward_models import build_pair as random_pair
from _sibling import sibling

#: What the issue asks: lmscope / HF tokens/s in fp32.
TARGET_RATIO_TO_HF = 1.2


def _forward_bench() -> Any:
    """bench/forward.py (machine description, interleaved timing), imported by path."""
    return sibling("forward")


# --- models ----------------------------------------------------------------------------
def build_pair(quick: bool, seed: int = 0) -> tuple[nn.Module, BaseTransformer]:
    """HF GPT2LMHeadModel (SDPA) and lmscope gpt2-small with the same weights, eval mode."""
    hf, ours = random_pair(quick, seed)
    ours.load_state_dict(hf_to_lmscope(hf.state_dict(), ours.cfg.n_layers), strict=True)
    return hf, ours


def hf_to_lmscope(state: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """GPT-2 weights in lmscope's names. HF's ``Conv1D`` stores [in, out]: transpose."""
    out = {
        "embed.weight": state["transformer.wte.weight"],
        "pos_embed.weight": state["transformer.wpe.weight"],
        "ln_final.weight": state["transformer.ln_f.weight"],
        "ln_final.bias": state["transformer.ln_f.bias"],
    }
    names = {
        "ln1": "ln_1",
        "ln2": "ln_2",
        "attn.qkv": "attn.c_attn",
        "attn.out": "attn.c_proj",
        "mlp.fc_in": "mlp.c_fc",
        "mlp.fc_out": "mlp.c_proj",
    }
    for i in range(n_layers):
        for ours, theirs in names.items():
            weight = state[f"transformer.h.{i}.{theirs}.weight"]
            out[f"blocks.{i}.{ours}.weight"] = weight if "ln" in ours else weight.t().contiguous()
            out[f"blocks.{i}.{ours}.bias"] = state[f"transformer.h.{i}.{theirs}.bias"]
    return out


def hf_generate(model: nn.Module, prompt: Tensor, n_new: int) -> list[int]:
    """Greedy HF generation with its cache; exactly `n_new` tokens (no EOS)."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=n_new, do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0
    )
    out = model.generate(prompt, generation_config=config, attention_mask=torch.ones_like(prompt))
    return out[0, prompt.shape[1] :].tolist()


def lmscope_generate(model: BaseTransformer, prompt: Tensor, n_new: int) -> list[int]:
    """Greedy lmscope generation; exactly `n_new` tokens (no EOS)."""
    return generate(model, prompt, max_new_tokens=n_new, eos_token_id=[]).new_tokens[0]


def raw_loop(model: BaseTransformer, prompt: Tensor, n_new: int) -> list[int]:
    """Forward + argmax through the KV cache, nothing else (the model's own cost)."""
    cache = model.make_cache(1, prompt.shape[1] + n_new)
    logits = model(prompt, kv_cache=cache)[:, -1]
    chosen = []
    for i in range(n_new):
        nxt = logits.argmax(-1, keepdim=True)
        chosen.append(nxt)
        if i < n_new - 1:
            logits = model(nxt, kv_cache=cache)[:, -1]
    return torch.cat(chosen, dim=1)[0].tolist()


def weights_floor(model: BaseTransformer, n_new: int, layout: str) -> Callable[[], None]:
    """Every matmul of one decoding step (batch 1), `n_new` times: ``nt`` = ``x @ W.T``
    with W stored [out, in] (plain ``nn.Linear``), ``nn`` = ``x @ W`` with W stored
    [in, out] (what lmscope stores in fp32 on CPU, model/layout.py; GPT-2's Conv1D)."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    weights.append(model.W_E)  # the (tied) unembedding
    if layout == "nn":
        weights = [w.t().contiguous() for w in weights]
    else:
        weights = [w.contiguous() for w in weights]
    xs = {d: torch.randn(1, d) for w in weights for d in w.shape}

    def run() -> None:
        for _ in range(n_new):
            for w in weights:
                if layout == "nt":
                    F.linear(xs[w.shape[1]], w)
                else:
                    torch.mm(xs[w.shape[0]], w)

    return run


# --- the benchmark ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke test in seconds")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=None, help="default 128; quick 16")
    p.add_argument("--rounds", type=int, default=None, help="fp32 rounds (default 5; quick 2)")
    p.add_argument("--bf16-rounds", type=int, default=None, help="bf16 rounds (default 2)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 variants")
    p.add_argument("--profile", action="store_true", help="profile decode steps of both models")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    args = p.parse_args(argv)
    for key, full, quick in (("new_tokens", 128, 16), ("rounds", 5, 2), ("bf16_rounds", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def rows_from(times: dict[str, list[float]], n_new: int, baseline: dict[str, str]) -> dict:
    """Median seconds, tokens/s and the ratio to the baseline of each variant."""
    rows: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        rows[name] = {
            "median_s": median,
            "times_s": ts,
            "tokens_per_s": n_new / median,
            "ms_per_token": 1e3 * median / n_new,
            "baseline": baseline[name],
        }
    for row in rows.values():
        row["ratio_to_hf"] = row["tokens_per_s"] / rows[row["baseline"]]["tokens_per_s"]
    return rows


def profile_ops(
    fn: Callable[[], object], per: int, rows: int = 14
) -> tuple[str, list[dict[str, Any]]]:
    """torch.profiler's self-CPU-time table of one call of `fn`, and its top ops per unit
    (`fn` does `per` units of work: ms and calls are divided by it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3 / per, "calls": e.count / per}
        for e in events
    ]
    total = sum(op["self_cpu_ms"] for op in ops)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"{table}\nself CPU per token: {total:.1f} ms", ops[:rows]


def decode_steps(
    hf: nn.Module, ours: BaseTransformer, prompt: Tensor, n_steps: int
) -> dict[str, Callable[[], None]]:
    """`n_steps` decoding forwards (batch 1, one token each) of each model through its own
    cache, after its prefill: the model's per-token cost, without any generation loop."""
    from transformers import DynamicCache

    cache = ours.make_cache(1, prompt.shape[1] + 2 * n_steps)
    ours(prompt, kv_cache=cache)
    past = DynamicCache()
    hf(input_ids=prompt, past_key_values=past, use_cache=True)
    token = prompt[:, -1:]

    def lmscope_steps() -> None:
        for _ in range(n_steps):
            ours(token, kv_cache=cache)

    def hf_steps() -> None:
        for _ in range(n_steps):
            hf(input_ids=token, past_key_values=past, use_cache=True)

    lmscope_steps(), hf_steps()  # warm-up (also grows both caches alike)
    return {"lmscope": lmscope_steps, "hf": hf_steps}


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every number measured."""
    fwd = _forward_bench()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = fwd.machine_info()
    log(
        f"machine: {machine['cpu']}, {machine['cores']} cores, avx512f={machine['avx512f']} "
        f"avx512_bf16={machine['avx512_bf16']}; torch {machine['torch']}, "
        f"{machine['threads']} threads, transformers {machine['transformers']}; "
        f"load avg {machine['load_avg_start']:.2f}"
    )
    hf, ours = build_pair(args.quick)
    n_new = args.new_tokens
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, ours.cfg.vocab_size, (1, args.prompt_len), generator=gen)
    results: dict[str, Any] = {"machine": machine, "args": vars(args) | {"json": str(args.json)}}

    with torch.inference_mode():
        # Correctness first (doubles as warm-up): same weights -> same logits and tokens.
        diff = (ours(prompt) - hf(prompt, use_cache=False).logits).abs().max().item()
        hf_tokens, our_tokens = (
            hf_generate(hf, prompt, n_new),
            lmscope_generate(ours, prompt, n_new),
        )
        agree = next(
            (i for i, (a, b) in enumerate(zip(hf_tokens, our_tokens, strict=True)) if a != b), n_new
        )
        results["prefill_logits_max_abs_diff"] = diff
        results["greedy_tokens_agree"] = agree
        log(f"check: prefill logits max abs diff {diff:.2e}; greedy tokens agree {agree}/{n_new}")
        if len(our_tokens) != n_new or len(hf_tokens) != n_new or agree < n_new:
            raise RuntimeError(f"lmscope and HF disagree: {agree}/{n_new} tokens equal")
        if raw_loop(ours, prompt, n_new) != our_tokens:
            raise RuntimeError("the raw loop disagrees with generate()")

        fns: dict[str, Callable[[], object]] = {
            "hf fp32": lambda: hf_generate(hf, prompt, n_new),
            "lmscope fp32": lambda: lmscope_generate(ours, prompt, n_new),
            "lmscope raw loop fp32": lambda: raw_loop(ours, prompt, n_new),
            "weights nt fp32": weights_floor(ours, n_new, "nt"),
            "weights nn fp32": weights_floor(ours, n_new, "nn"),
        }
        log(f"fp32: batch 1, prompt {args.prompt_len}, {n_new} new tokens, {args.rounds} rounds")
        times = fwd.interleaved(fns, args.rounds)
        baseline = dict.fromkeys(times, "hf fp32")

        if not args.no_bf16:
            hf16, ours16 = (
                copy.deepcopy(hf).to(torch.bfloat16),
                copy.deepcopy(ours).to(torch.bfloat16),
            )
            bf16_ref = lmscope_generate(ours16, prompt, n_new)  # also the warm-up
            hf_generate(hf16, prompt, 2)
            results["bf16_tokens_agree_with_fp32"] = next(
                (i for i, (a, b) in enumerate(zip(bf16_ref, our_tokens, strict=True)) if a != b),
                n_new,
            )
            bf16_fns: dict[str, Callable[[], object]] = {
                "hf bf16": lambda: hf_generate(hf16, prompt, n_new),
                "lmscope bf16": lambda: lmscope_generate(ours16, prompt, n_new),
            }
            log(f"bf16: {args.bf16_rounds} rounds")
            bf16_times = fwd.interleaved(bf16_fns, args.bf16_rounds, warmup=0)
            times |= bf16_times
            baseline |= dict.fromkeys(bf16_times, "hf bf16")

        if args.profile:
            # Per token: the bare decoding forward of each model, then the whole
            # generate call (prefill and generation machinery included).
            short = max(4, n_new // 4)
            jobs = {
                f"{k} decode step": (fn, short)
                for k, fn in decode_steps(hf, ours, prompt, short).items()
            }
            jobs["lmscope generate"] = (lambda: lmscope_generate(ours, prompt, short), short)
            jobs["hf generate"] = (lambda: hf_generate(hf, prompt, short), short)
            results["profile"] = {}
            for name, (fn, per) in jobs.items():
                table, ops = profile_ops(fn, per)
                results["profile"][name] = ops
                log(f"profile: {name}, fp32, {per} tokens (ms and calls per token below)")
                log(table)

    rows = rows_from(times, n_new, baseline)
    results["variants"] = rows
    results["ratio_to_hf_fp32"] = rows["lmscope fp32"]["ratio_to_hf"]
    results["generate_overhead_ms_per_token"] = (
        rows["lmscope fp32"]["ms_per_token"] - rows["lmscope raw loop fp32"]["ms_per_token"]
    )
    results["target_met"] = results["ratio_to_hf_fp32"] >= TARGET_RATIO_TO_HF
    machine["load_avg_end"] = os.getloadavg()[0]
    log("")
    log(markdown_table(rows))
    log("")
    log(
        f"lmscope / HF (fp32): {results['ratio_to_hf_fp32']:.2f}x (target >= "
        f"{TARGET_RATIO_TO_HF}: {'met' if results['target_met'] else 'NOT met'}); generate() "
        f"overhead over the raw loop: {results['generate_overhead_ms_per_token']:.2f} ms/token; "
        f"load avg {machine['load_avg_start']:.2f} at start, {machine['load_avg_end']:.2f} at end"
    )
    return results


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """The per-variant medians as a markdown table."""
    lines = [
        "| variant | median s | tokens/s | ms/token | vs HF (same dtype) |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.1f} | "
            f"{row['ms_per_token']:.1f} | {row['ratio_to_hf']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse `argv`, run, write ``--json`` if asked; returns the results."""
    args = parse_args(argv)
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
