"""Forward throughput of the ``gpt2-small`` preset against Hugging Face's GPT-2 (issue: model zoo).

Usage::

    python bench/forward.py [--quick] [--batch 8] [--seq 256] [--repeats 7] [--json out.json]

Both models are randomly initialised with the same shape (GPT-2 small, tied head) and
run in ``torch.inference_mode`` on the same fixed random tokens. Every variant is warmed
up, then the variants of a group run round-robin (the starting variant rotates each
round) so that noise from a shared machine hits all of them alike; per-variant medians
and ratios are therefore comparable within one run, absolute times across runs are not.

Variants:
- ``hf fp32``: ``GPT2LMHeadModel`` with its SDPA attention, ``use_cache=False``.
- ``lmscope fp32``: ``build_model("gpt2-small")``, fused SDPA attention.
- ``lmscope fp32 explicit``: the same model with ``hook_pattern`` hooked, which makes
  every layer materialise scores and pattern (the interpretability path).
- ``hf bf16`` / ``lmscope bf16``: copies with bf16 weights; with ``--autocast`` also
  both fp32 models under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

FLOPs per token come from ``Transformer.flops_per_token(seq)`` for both models (same
shape; attention counted in full, the PaLM / nanoGPT convention). The matmul peak is a
square ``torch.mm`` measured in the same run: fp32 interleaved with the fp32 models,
bf16 in the three operand layouts (bf16 GEMM speed depends on the layout on CPUs
without native bf16 instructions). bf16 rows run at ``--bf16-batch`` (default 1) because
bf16 can be 5-100x slower than fp32 on such CPUs.

Correctness, checked in the same run: the SDPA and explicit paths must give the same
logits (max abs diff <= 1e-4). Our logits are not compared with Hugging Face's: the two
models have different random weights.
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
from torch import Tensor

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _forward_models import build_pair, explicit_hooks, hf_forward, n_params, unembed_padding_check
from _forward_timing import interleaved, machine_info, matmul_gflops

#: Max abs diff allowed between the SDPA and the explicit attention paths (fp32).
EXPLICIT_TOLERANCE = 1e-4
#: What the issue asks of the fp32 comparison.
TARGET_RATIO_TO_HF = 1.1
TARGET_EXPLICIT_OVER_SDPA = 1.3


# --- the benchmark ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke test in seconds")
    p.add_argument("--batch", type=int, default=None, help="fp32 batch (default 8; quick 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 256; quick 32)")
    p.add_argument("--repeats", type=int, default=None, help="fp32 rounds (default 7; quick 3)")
    p.add_argument("--bf16-batch", type=int, default=None, help="bf16 batch (default 1)")
    p.add_argument("--bf16-repeats", type=int, default=None, help="bf16 rounds (default 3)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 variants")
    p.add_argument("--autocast", action="store_true", help="also bf16 autocast variants")
    p.add_argument("--peak-size", type=int, default=None, help="fp32 peak mm size (2048)")
    p.add_argument("--bf16-peak-size", type=int, default=None, help="bf16 peak mm size (1024)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    args = p.parse_args(argv)
    defaults = {
        "batch": (8, 2),
        "seq": (256, 32),
        "repeats": (7, 3),
        "bf16_batch": (1, 2),
        "bf16_repeats": (3, 2),
        "peak_size": (2048, 256),
        "bf16_peak_size": (1024, 128),
    }
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def summarise(
    times: dict[str, list[float]],
    tokens: dict[str, int],
    flops_per_token: int,
    peak: dict[str, float],
    baseline: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Median, tokens/s, ratio to the HF baseline of the same precision, GFLOP/s, % peak."""
    rows: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        tps = tokens[name] / median
        gflops = tps * flops_per_token / 1e9
        precision = "fp32" if "fp32" in name else "bf16"
        rows[name] = {
            "median_s": median,
            "times_s": ts,
            "tokens": tokens[name],
            "tokens_per_s": tps,
            "gflops": gflops,
            "peak_fraction": gflops / peak[precision],
            "baseline": baseline[name],
        }
    for row in rows.values():
        row["ratio_to_hf"] = row["tokens_per_s"] / rows[row["baseline"]]["tokens_per_s"]
    return rows


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every number measured."""
    machine = machine_info()
    log(
        f"machine: {machine['cpu']} (family/model {machine['cpu_family_model']}), "
        f"{machine['cores']} cores, avx2={machine['avx2']} avx512f={machine['avx512f']} "
        f"avx512_bf16={machine['avx512_bf16']} amx_bf16={machine['amx_bf16']} "
        f"onednn_bf16={machine['onednn_bf16']}; torch {machine['torch']} "
        f"({machine['cpu_capability']}), {machine['threads']} threads, "
        f"transformers {machine['transformers']}; load avg {machine['load_avg_start']:.2f}"
    )
    hf, ours = build_pair(args.quick)
    if n_params(hf) != n_params(ours):  # same shape is the premise of the comparison
        raise RuntimeError(f"shapes differ: HF {n_params(hf)} vs lmscope {n_params(ours)} params")
    cfg = ours.cfg
    flops = ours.flops_per_token(args.seq)
    log(
        f"model: {n_params(ours) / 1e6:.1f}M params (both), {flops / 1e6:.1f} MFLOP/token "
        f"forward at seq {args.seq}; fp32 batch {args.batch} x {args.seq}, "
        f"{args.repeats} rounds"
    )
    gen = torch.Generator().manual_seed(0)
    tok = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen)
    results: dict[str, Any] = {"machine": machine, "args": vars(args) | {"json": str(args.json)}}
    results["params"] = n_params(ours)
    results["flops_per_token"] = flops

    with torch.inference_mode():
        # Correctness first (it doubles as a warm-up of both paths).
        sdpa_logits = ours(tok)
        with explicit_hooks(ours):
            explicit_logits = ours(tok)
        diff = (sdpa_logits - explicit_logits).abs().max().item()
        results["sdpa_vs_explicit_max_abs_diff"] = diff
        log(f"check: lmscope SDPA vs explicit logits max abs diff {diff:.2e}")
        if diff > EXPLICIT_TOLERANCE:
            raise RuntimeError(f"explicit path differs from SDPA by {diff:.2e}")
        del sdpa_logits, explicit_logits

        # fp32: models and the fp32 matmul peak interleaved in one round-robin.
        a = torch.randn(args.peak_size, args.peak_size, generator=gen)
        b = torch.randn(args.peak_size, args.peak_size, generator=gen)

        def explicit() -> Tensor:
            with explicit_hooks(ours):
                return ours(tok)

        fp32_fns: dict[str, Callable[[], object]] = {
            "hf fp32": lambda: hf_forward(hf, tok),
            "lmscope fp32": lambda: ours(tok),
            "lmscope fp32 explicit": explicit,
            "peak": lambda: torch.mm(a, b),
        }
        fp32_times = interleaved(fp32_fns, args.repeats)
        peak = {"fp32": 2 * args.peak_size**3 / statistics.median(fp32_times.pop("peak")) / 1e9}
        log(f"fp32 matmul peak ({args.peak_size}^2 mm): {peak['fp32']:.1f} GFLOP/s")
        n_tok = args.batch * args.seq
        baseline = {name: "hf fp32" for name in fp32_times}
        tokens = dict.fromkeys(fp32_times, n_tok)
        times = dict(fp32_times)

        # Why the unembedding writes into row-padded memory (embedding.linear_padded_rows).
        results["unembed_padding"] = unembed_padding_check(
            cfg.d_model, cfg.vocab_size, n_tok, max(3, args.repeats // 2)
        )
        pad = results["unembed_padding"]
        log(
            f"unembed [{n_tok}x{cfg.d_model}] @ [{cfg.d_model}x{cfg.vocab_size}]: contiguous "
            f"{pad['contiguous_s']:.3f} s, row-padded {pad['padded_s']:.3f} s "
            f"({pad['speedup']:.2f}x), identical={bool(pad['identical'])}"
        )

        if not args.no_bf16:
            # bf16 GEMM layouts: 'nt' is nn.Linear (x @ W.T), 'nn' HF's Conv1D (x @ W).
            bf16_layouts = {
                layout: matmul_gflops(args.bf16_peak_size, torch.bfloat16, layout, 3)
                for layout in ("nn", "nt", "tn")
            }
            results["bf16_matmul_gflops_by_layout"] = bf16_layouts
            peak["bf16"] = max(bf16_layouts.values())
            log(
                f"bf16 matmul ({args.bf16_peak_size}^2 mm) GFLOP/s by layout: "
                + ", ".join(f"{k} {v:.1f}" for k, v in bf16_layouts.items())
            )
            bf_tok = tok[: args.bf16_batch]
            hf16 = copy.deepcopy(hf).to(torch.bfloat16)
            ours16 = copy.deepcopy(ours).to(torch.bfloat16)
            bf16_fns: dict[str, Callable[[], object]] = {
                "hf bf16": lambda: hf_forward(hf16, bf_tok),
                "lmscope bf16": lambda: ours16(bf_tok),
            }
            if args.autocast:

                def autocast(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
                    def wrapped() -> Tensor:
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            return fn()

                    return wrapped

                bf16_fns["hf bf16 autocast"] = autocast(lambda: hf_forward(hf, bf_tok))
                bf16_fns["lmscope bf16 autocast"] = autocast(lambda: ours(bf_tok))
            # Sanity: bf16 weights give finite logits near the fp32 ones. These calls are
            # also the bf16 warm-up (a bf16 forward can take a minute here).
            ref = ours(bf_tok)
            low = ours16(bf_tok).float()
            results["bf16_vs_fp32_max_abs_diff"] = (low - ref).abs().max().item()
            results["fp32_logit_std"] = ref.std().item()
            for name, logits in (("lmscope", low), ("hf", hf_forward(hf16, bf_tok))):
                if not torch.isfinite(logits).all():
                    raise RuntimeError(f"{name} bf16 logits are not finite")
            if args.autocast:  # warm-up of the autocast variants
                for name in ("hf bf16 autocast", "lmscope bf16 autocast"):
                    bf16_fns[name]()
            log(
                f"bf16 ({args.bf16_batch} x {args.seq}, {args.bf16_repeats} rounds): lmscope "
                f"bf16 vs fp32 logits max abs diff {results['bf16_vs_fp32_max_abs_diff']:.2e} "
                f"(logit std {results['fp32_logit_std']:.2e})"
            )
            bf16_times = interleaved(bf16_fns, args.bf16_repeats, warmup=0)
            times |= bf16_times
            for name in bf16_times:
                tokens[name] = args.bf16_batch * args.seq
                baseline[name] = "hf bf16 autocast" if "autocast" in name else "hf bf16"

    results["peak_gflops"] = peak
    rows = summarise(times, tokens, flops, peak, baseline)
    results["variants"] = rows
    sdpa, explicit_row = rows["lmscope fp32"], rows["lmscope fp32 explicit"]
    results["explicit_over_sdpa"] = explicit_row["median_s"] / sdpa["median_s"]
    results["ratio_to_hf_fp32"] = sdpa["ratio_to_hf"]
    results["targets_met"] = {
        f"ratio_to_hf >= {TARGET_RATIO_TO_HF}": sdpa["ratio_to_hf"] >= TARGET_RATIO_TO_HF,
        f"explicit/sdpa <= {TARGET_EXPLICIT_OVER_SDPA}": results["explicit_over_sdpa"]
        <= TARGET_EXPLICIT_OVER_SDPA,
    }
    machine["load_avg_end"] = os.getloadavg()[0]
    log("")
    log(markdown_table(results))
    log("")
    log(
        f"lmscope / HF (fp32): {sdpa['ratio_to_hf']:.2f}x; explicit / SDPA time: "
        f"{results['explicit_over_sdpa']:.2f}x; targets met: {results['targets_met']}; "
        f"load avg {machine['load_avg_start']:.2f} at start, {machine['load_avg_end']:.2f} at end"
    )
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """The per-variant medians as a markdown table."""
    lines = [
        "| variant | batch x seq | median s | tokens/s | vs HF (same dtype) | GFLOP/s | "
        "% of matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    seq = results["args"]["seq"]
    for name, row in results["variants"].items():
        lines.append(
            f"| {name} | {row['tokens'] // seq} x {seq} | {row['median_s']:.3f} | "
            f"{row['tokens_per_s']:.0f} | {row['ratio_to_hf']:.2f} | {row['gflops']:.1f} | "
            f"{100 * row['peak_fraction']:.0f}% |"
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
