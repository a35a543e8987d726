"""Loading a ~500M-parameter Llama-shaped safetensors checkpoint: lmscope against
``transformers``' ``from_pretrained`` (issue: real checkpoints).

Usage::

    python bench/load.py [--quick] [--dir DIR] [--rounds 3] [--repeats 5] [--json out.json]

1. A random ``LlamaForCausalLM`` (``LLAMA_500M``: hidden 1280, 24 layers, 20 query / 4
   key-value heads, SwiGLU 3584, vocab 32000, untied head; 507M parameters) is written
   once with ``save_pretrained`` (fp32 safetensors, 2.03 GB) into ``--dir`` and reused
   while its ``config.json`` still describes that shape.
2. Load time and peak RSS, each load in a *fresh* Python process, lmscope and
   transformers alternated for ``--rounds`` rounds (the first one alternates too). The
   child imports torch and its library, notes its RSS (the baseline), then times the
   loading call alone: ``lmscope.load(dir, dtype=float32)`` or
   ``AutoModelForCausalLM.from_pretrained(dir, dtype=float32).eval()``, to a model in
   eval mode with every parameter materialised; then one forward of 32 tokens (a lazy
   loader, such as transformers' memory-mapped one, reads the weights there). Peak RSS
   is ``ru_maxrss`` after each; the figures to compare with the weights are peak minus
   baseline. The file is read once before the first round, so every load finds it in
   the page cache (warm-cache times).
3. In one process, both models loaded from the same directory: logits parity on the same
   tokens (max abs diff, must be <= 1e-4), then forward throughput (batch x seq shapes of
   ``--shapes``), the four variants round-robin, medians.

Ratios: load time HF / lmscope (> 1: lmscope faster), peak RSS / weights bytes,
tokens/s lmscope / HF. ``--quick`` is a toy Llama and one round, for the smoke test.

``bench/gguf_load.py`` reaches what it shares through this file: the fresh-process
measurement (`measure_in_child`, `alternate`, `child_report`, ...; in
``bench/_load_children.py``). This file and its helpers import only the standard
library at the top, so that a child's baseline RSS is torch + its library alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _load_children import alternate, child_report, first_tokens, measure_in_child, summarise_loads
from _load_forward import forward_section, parse_shapes
from _sibling import sibling

#: The issue's goals for the safetensors load.
TARGET_RSS_OVER_WEIGHTS = 1.3
TARGET_LOAD_RATIO = 1.0

#: ``LlamaConfig`` of the benchmark: ~500M parameters, grouped-query attention, untied.
LLAMA_500M: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 1280,
    "intermediate_size": 3584,
    "num_hidden_layers": 24,
    "num_attention_heads": 20,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
#: ``--quick``: the same wiring at toy size.
LLAMA_QUICK: dict[str, Any] = LLAMA_500M | {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
DEFAULT_DIR = Path("/tmp/lmscope-bench-load")


def forward_bench() -> Any:
    """bench/forward.py (machine description, interleaved timing), imported by path."""
    return sibling("forward")


# --- the checkpoint --------------------------------------------------------------------
def safetensors_bytes(directory: Path) -> int:
    """Bytes of tensor data in a directory's ``*.safetensors`` files (read from headers)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(
            v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items()
            if k != "__metadata__"
        )
    return total


def read_through(path: Path) -> None:
    """Read a file once so that every timed load finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def ensure_checkpoint(directory: Path, shape: dict[str, Any], log: Callable[[str], None]) -> None:
    """Write a random ``LlamaForCausalLM`` of `shape` to `directory` unless it is there."""
    config = directory / "config.json"
    if config.is_file() and (directory / "model.safetensors").is_file():
        written = json.loads(config.read_text())
        if all(written.get(k) == v for k, v in shape.items()):
            log(f"checkpoint: reusing {directory}")
            return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    log(f"checkpoint: writing a random LlamaForCausalLM to {directory} (once)")
    start = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, dtype="float32"))
    # Written beside the target and renamed: an interrupted run leaves nothing reusable.
    staging = directory.with_name(directory.name + ".partial")
    model.save_pretrained(staging, safe_serialization=True)
    if directory.exists():
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()
    staging.rename(directory)
    log(f"checkpoint: written in {time.perf_counter() - start:.1f} s")


# --- children --------------------------------------------------------------------------
def child_main(kind: str, directory: Path) -> None:
    """Load `directory` with `kind` (lmscope or hf) and print the report as JSON."""
    t_start = time.perf_counter()

    def setup_lmscope() -> tuple[Callable[[], Any], Callable[[Any], Any], dict[str, float]]:
        import torch

        import lmscope

        def forward(model: Any) -> None:
            with torch.inference_mode():
                model(first_tokens(model.cfg.vocab_size))

        return lambda: lmscope.load(directory, dtype=torch.float32), forward, {}

    def setup_hf() -> tuple[Callable[[], Any], Callable[[Any], Any], dict[str, float]]:
        import torch
        from transformers import AutoModelForCausalLM

        def load() -> Any:
            return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()

        def forward(model: Any) -> None:
            with torch.inference_mode():
                model(input_ids=first_tokens(model.config.vocab_size), use_cache=False)

        return load, forward, {}

    setup = {"lmscope": setup_lmscope, "hf": setup_hf}[kind]
    print(json.dumps(child_report(setup, t_start)))


# --- the benchmark ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toy Llama, one round: a smoke test")
    p.add_argument("--dir", type=Path, default=None, help=f"checkpoint cache (under {DEFAULT_DIR})")
    p.add_argument("--rounds", type=int, default=None, help="load rounds (default 3; quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="forward rounds (default 5; quick 2)")
    p.add_argument("--shapes", default=None, help="forward batch x seq (default 1x256,4x128)")
    p.add_argument("--no-forward", action="store_true", help="skip parity and throughput")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--child", choices=["lmscope", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {"rounds": (3, 1), "repeats": (5, 2), "shapes": ("1x256,4x128", "1x32,2x16")}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.dir is None:
        args.dir = DEFAULT_DIR / ("llama-quick" if args.quick else "llama-500m")
    return args


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every number measured."""
    machine = forward_bench().machine_info()
    log(
        f"machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, "
        f"{machine['threads']} threads, transformers {machine['transformers']}; "
        f"load avg {machine['load_avg_start']:.2f}"
    )
    shape = LLAMA_QUICK if args.quick else LLAMA_500M
    ensure_checkpoint(args.dir, shape, log)
    weight_bytes = safetensors_bytes(args.dir)
    read_through(args.dir / "model.safetensors")
    log(f"weights: {weight_bytes / 1e9:.3f} GB of fp32 tensors; {args.rounds} rounds")
    script = Path(__file__).resolve()
    variants = {
        kind: (
            lambda kind=kind: measure_in_child(script, ["--child", kind, "--dir", str(args.dir)])
        )
        for kind in ("lmscope", "hf")
    }
    reports = alternate(variants, args.rounds, log)
    loads = {kind: summarise_loads(r, weight_bytes) for kind, r in reports.items()}
    results: dict[str, Any] = {
        "machine": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "checkpoint": {"dir": str(args.dir), "config": shape, "weight_bytes": weight_bytes},
        "loads": loads,
        "load_ratio_hf_over_lmscope": loads["hf"]["median_s"] / loads["lmscope"]["median_s"],
    }
    if loads["lmscope"]["params"] != loads["hf"]["params"]:
        raise RuntimeError(f"parameter counts differ: {loads}")
    ours = loads["lmscope"]
    results["targets_met"] = {
        f"peak RSS <= {TARGET_RSS_OVER_WEIGHTS} x weights": ours[
            "peak_over_baseline_per_weight_byte"
        ]
        <= TARGET_RSS_OVER_WEIGHTS,
        f"load ratio >= {TARGET_LOAD_RATIO}": results["load_ratio_hf_over_lmscope"]
        >= TARGET_LOAD_RATIO,
    }
    if not args.no_forward:
        results["forward"] = forward_section(args.dir, parse_shapes(args.shapes), args.repeats, log)
    machine["load_avg_end"] = os.getloadavg()[0]
    log("")
    log(markdown_table(results))
    log("")
    log(
        f"load time HF / lmscope: {results['load_ratio_hf_over_lmscope']:.2f}x; targets met: "
        f"{results['targets_met']}; load avg {machine['load_avg_start']:.2f} at start, "
        f"{machine['load_avg_end']:.2f} at end"
    )
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """Load medians (and forward medians when measured) as markdown tables."""
    lines = load_table(results["loads"], results["checkpoint"]["weight_bytes"])
    if "forward" in results:
        lines += ["", "| variant | median s | tokens/s |", "|---|---|---|"]
        for name, row in results["forward"]["variants"].items():
            lines.append(f"| {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def load_table(loads: dict[str, dict[str, Any]], weight_bytes: int) -> list[str]:
    """One row per loader: medians of time and memory, memory also per weight byte."""
    mib = 2**20
    lines = [
        "| loader | load s | + first forward s | baseline RSS MiB | peak - baseline MiB "
        "(/ weights) | with first forward MiB (/ weights) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in loads.items():
        lines.append(
            f"| {kind} | {row['median_s']:.2f} | {row['median_load_and_forward_s']:.2f} | "
            f"{row['baseline_rss'] / mib:.0f} | {row['peak_over_baseline'] / mib:.0f} "
            f"({row['peak_over_baseline'] / weight_bytes:.2f}) | "
            f"{row['peak_with_forward_over_baseline'] / mib:.0f} "
            f"({row['peak_with_forward_over_baseline'] / weight_bytes:.2f}) |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse `argv`, run, write ``--json`` if asked; returns the results."""
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.dir)
        return {}
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
