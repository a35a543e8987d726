"""Training-step time of the ``shakespeare-char`` preset against Hugging Face's GPT-2 and
litgpt's GPT of the same shape (issue: training and generation).

Usage::

    python bench/train_step.py [--quick] [--batch 64] [--seq 256] [--rounds 5]
                               [--no-bf16] [--compile] [--no-memory] [--profile]
                               [--json out.json]

One step = ``zero_grad(set_to_none=True)``, forward on a fixed random batch, mean
cross-entropy, backward, ``torch.optim.AdamW.step()``. Every implementation gets its
optimizer from lmscope's own builder (`lmscope.train.optim.make_optimizer`: decay on
matrices only, lr 1e-3, betas (0.9, 0.99), weight decay 0.1, torch's default
for-each/fused choice), so the optimizers are the same.

Implementations (6 layers, 6 heads, d_model 384, d_mlp 1536, context 256, vocab 65,
exact GELU, pre-norm LayerNorm, tied head, dropout 0; the preset's dropout is 0.2):
- ``lmscope``: ``build_model("shakespeare-char")`` (no biases, as nanoGPT's baby GPT).
- ``hf``: ``GPT2LMHeadModel`` with SDPA attention. GPT-2 always has biases (+25,728
  parameters, 0.24%); it starts from lmscope's weights with zero biases, so its logits
  must equal ours (checked in the same run).
- ``litgpt``: ``litgpt.GPT`` (skipped, with a note, when litgpt is not installed). It
  has no learned positions: RoPE on every head dim instead (-98,304 parameters), and its
  LayerNorms always have biases (+4,992). Otherwise lmscope's weights are copied in and
  its head is tied to the embedding by assignment (litgpt never ties).

Variants, each a group run round-robin (the first one rotates every round), warm-up
excluded: fp32 eager (the target: lmscope at least as fast as both), bf16 autocast (at
``--bf16-batch``, since this CPU has no bf16 units), and with ``--compile``
``torch.compile`` of each model (default mode; the optimizer step stays eager; the first
step, compilation included, is reported separately; it adds ~5 minutes here, hence
opt-in). Besides the ratio of medians, each round's paired ratio (other / lmscope, run
back to back) is kept and its median reported: it is less sensitive to slow load drift.

``--keep-freed-memory`` times every implementation with
`lmscope.allocator.keep_freed_memory` on, as ``lmscope train`` runs on CPU: freed blocks
are reused instead of handed back to the kernel and faulted in again on the next step.

Peak memory is the high-water resident size of a fresh subprocess per implementation
over two fp32 steps, minus its resident size after building model, optimizer and batch
(Linux only).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmscope.allocator import kept_freed_memory
from lmscope.model import BaseTransformer

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _sibling import sibling
from _train_step_memory import measure_memory, memory_child
from _train_step_models import build, have_litgpt, model_config, n_params
from _train_step_steps import compile_group, fixed_batch, make_step, profile_step, timed_group

#: What the issue asks of fp32 eager: other's step time / lmscope's, against both.
TARGET_SPEEDUP = 1.0
IMPLS = ("lmscope", "hf", "litgpt")


# --- the benchmark ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shape: a smoke test in seconds")
    p.add_argument("--batch", type=int, default=None, help="fp32 batch (default 64; quick 2)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 256; quick 32)")
    p.add_argument("--rounds", type=int, default=None, help="fp32 timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before each group")
    p.add_argument("--bf16-batch", type=int, default=None, help="bf16 batch (default 2)")
    p.add_argument("--bf16-rounds", type=int, default=None, help="bf16 timed rounds (default 3)")
    p.add_argument("--compile-rounds", type=int, default=None, help="compiled rounds (3)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast group")
    p.add_argument("--compile", action="store_true", help="add the torch.compile group")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=int, default=2, help="steps per memory subprocess")
    p.add_argument("--profile", action="store_true", help="profile one fp32 step of each")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="time with lmscope.allocator.keep_freed_memory() on (every implementation alike)",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--memory-child", choices=IMPLS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {
        "batch": (64, 2),
        "seq": (256, 32),
        "rounds": (5, 2),
        "bf16_batch": (2, 2),
        "bf16_rounds": (3, 1),
        "compile_rounds": (3, 1),
    }
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def summarise(
    times: dict[str, list[float]], tokens: dict[str, int], flops_per_token: int
) -> dict[str, dict[str, Any]]:
    """Median, tokens/s, model GFLOP/s and other / lmscope step time within each mode."""
    rows: dict[str, dict[str, Any]] = {}
    for name, ts in times.items():
        impl, mode = name.split(" ", 1)
        median = statistics.median(ts)
        rows[name] = {
            "impl": impl,
            "mode": mode,
            "median_s": median,
            "times_s": ts,
            "tokens": tokens[name],
            "tokens_per_s": tokens[name] / median,
            # forward + backward = 3 forwards (PaLM / nanoGPT convention), lmscope's count
            "gflops": 3 * flops_per_token * tokens[name] / median / 1e9,
        }
    for row in rows.values():
        ours = rows.get(f"lmscope {row['mode']}")
        row["time_over_lmscope"] = row["median_s"] / ours["median_s"] if ours else None
        # Round r of every variant ran back to back: the median of the per-round ratios.
        row["paired_time_over_lmscope"] = (
            statistics.median(t / o for t, o in zip(row["times_s"], ours["times_s"], strict=True))
            if ours
            else None
        )
    return rows


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every number measured."""
    fwd = sibling("forward")
    machine = fwd.machine_info()
    impls = [i for i in IMPLS if i != "litgpt" or have_litgpt()]
    if have_litgpt():
        machine["litgpt"] = importlib.metadata.version("litgpt")
    log(
        f"machine: {machine['cpu']}, {machine['cores']} cores, avx512f={machine['avx512f']} "
        f"avx512_bf16={machine['avx512_bf16']}; torch {machine['torch']}, "
        f"{machine['threads']} threads, transformers {machine['transformers']}, litgpt "
        f"{machine.get('litgpt', 'not installed')}; load avg {machine['load_avg_start']:.2f}"
    )
    results: dict[str, Any] = {"machine": machine, "args": vars(args) | {"json": str(args.json)}}
    if "litgpt" not in impls:
        results["litgpt_note"] = (
            "litgpt is not installed: its rows are skipped (pip install --no-deps litgpt "
            "lightning lightning-utilities torchmetrics)"
        )
        log(results["litgpt_note"])
    cfg = model_config(args.quick)
    models = {impl: build(impl, cfg) for impl in impls}
    tokens, targets = fixed_batch(args.batch, args.seq, cfg.vocab_size)
    results["params"] = {impl: n_params(m) for impl, (m, _) in models.items()}
    ours = models["lmscope"][0]
    assert isinstance(ours, BaseTransformer)
    flops = ours.flops_per_token(args.seq)
    results["flops_per_token_forward"] = flops

    # Same weights: HF must compute our logits (zero biases); initial losses of all three.
    with torch.no_grad():
        sample = tokens[:2]
        logits = {impl: call(m, sample) for impl, (m, call) in models.items()}
        results["hf_vs_lmscope_logits_max_abs_diff"] = (
            (logits["hf"] - logits["lmscope"]).abs().max().item()
        )
        results["initial_loss"] = {
            impl: F.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets[:2].reshape(-1)).item()
            for impl, lg in logits.items()
        }
    log(
        f"params: {results['params']}; HF vs lmscope logits max abs diff "
        f"{results['hf_vs_lmscope_logits_max_abs_diff']:.2e} (same weights); initial loss "
        + ", ".join(f"{k} {v:.4f}" for k, v in results["initial_loss"].items())
    )

    n_tok = args.batch * args.seq
    log(f"fp32: batch {args.batch} x {args.seq}, {args.warmup} warm-up + {args.rounds} rounds")
    steps = {f"{i} fp32": make_step(m, c, tokens, targets) for i, (m, c) in models.items()}
    times = timed_group(fwd, steps, args.rounds, args.warmup)
    n_tokens = dict.fromkeys(times, n_tok)
    del steps  # frees the AdamW states of this group

    if args.profile:
        results["profile"] = {}
        for impl, (model, call) in models.items():
            table, ops = profile_step(make_step(model, call, tokens, targets))
            results["profile"][impl] = ops
            log(f"profile: one fp32 step of {impl} (second step of a fresh optimizer)\n{table}")

    if args.compile:
        log(f"compiled: {args.warmup} warm-up + {args.compile_rounds} rounds")
        steps, first, errors = compile_group(models, tokens, targets)
        results["compile_first_step_s"], results["compile_errors"] = first, errors
        log(f"compile: first step (compilation included) s: {first}; errors: {errors or 'none'}")
        compiled = timed_group(fwd, steps, args.compile_rounds, args.warmup)
        times |= compiled
        n_tokens |= dict.fromkeys(compiled, n_tok)
        del steps

    if not args.no_bf16:
        bf_tok, bf_tgt = tokens[: args.bf16_batch], targets[: args.bf16_batch]
        log(f"bf16 autocast: batch {args.bf16_batch} x {args.seq}, {args.bf16_rounds} rounds")
        steps = {
            f"{i} bf16-autocast": make_step(m, c, bf_tok, bf_tgt, autocast=True)
            for i, (m, c) in models.items()
        }
        bf16 = timed_group(fwd, steps, args.bf16_rounds, args.warmup)
        times |= bf16
        n_tokens |= dict.fromkeys(bf16, args.bf16_batch * args.seq)
        del steps

    rows = summarise(times, n_tokens, flops)
    results["variants"] = rows
    others = [i for i in impls if i != "lmscope"]
    results["time_over_lmscope_fp32"] = {i: rows[f"{i} fp32"]["time_over_lmscope"] for i in others}
    results["paired_time_over_lmscope_fp32"] = {
        i: rows[f"{i} fp32"]["paired_time_over_lmscope"] for i in others
    }
    results["targets_met"] = {
        f"{i} time / lmscope time >= {TARGET_SPEEDUP}": r >= TARGET_SPEEDUP
        for i, r in results["time_over_lmscope_fp32"].items()
    }
    if not args.no_memory:
        del models
        results["memory"] = {impl: measure_memory(impl, args) for impl in impls}
        log(f"peak memory (fresh process, {args.memory_steps} fp32 steps each): MB")
        for impl, mem in results["memory"].items():
            log(f"  {impl}: {mem}")
    machine["load_avg_end"] = os.getloadavg()[0]
    log("")
    log(markdown_table(rows, args.seq))
    log("")
    log(
        "other / lmscope step time (fp32, medians; paired): "
        + ", ".join(
            f"{k} {v:.2f}x; {results['paired_time_over_lmscope_fp32'][k]:.2f}x"
            for k, v in results["time_over_lmscope_fp32"].items()
        )
        + f"; targets met: {results['targets_met']}; load avg "
        f"{machine['load_avg_start']:.2f} at start, {machine['load_avg_end']:.2f} at end"
    )
    return results


def markdown_table(rows: dict[str, dict[str, Any]], seq: int) -> str:
    """The per-variant medians as a markdown table."""
    lines = [
        "| variant | batch x seq | median s/step | tokens/s | GFLOP/s | step time / lmscope's "
        "(medians; paired) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ratio, paired = row["time_over_lmscope"], row["paired_time_over_lmscope"]
        text = "-" if ratio is None else f"{ratio:.2f}; {paired:.2f}"
        lines.append(
            f"| {name} | {row['tokens'] // seq} x {seq} | {row['median_s']:.3f} | "
            f"{row['tokens_per_s']:.0f} | {row['gflops']:.1f} | {text} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse `argv`, run, write ``--json`` if asked; returns the results."""
    args = parse_args(argv)
    if args.memory_child is not None:
        child = memory_child(args.memory_child, args.quick, args.batch, args.seq, args.memory_steps)
        print(json.dumps(child))
        return child
    # Process-wide, so every implementation's steps run with it, as `lmscope train` does
    # on CPU; the memory children are fresh processes with the C library's defaults.
    with kept_freed_memory(args.keep_freed_memory) as kept:
        results = run(args)
    results["kept_freed_memory"] = kept
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
