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

This file also holds what ``bench/gguf_load.py`` shares: the fresh-process measurement
(`measure_in_child`, `alternate`) and the RSS helpers. It imports only the standard
library at the top, so that a child's baseline RSS is torch + its library alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: The issue's goals for the safetensors load.
TARGET_RSS_OVER_WEIGHTS = 1.3
TARGET_LOAD_RATIO = 1.0
#: Max abs logits diff allowed between lmscope and transformers on the same weights.
PARITY_TOLERANCE = 1e-4

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

#: Environment of every child: nothing may be downloaded.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# --- memory ----------------------------------------------------------------------------
def rss_bytes() -> int:
    """The process's resident set size now (``VmRSS``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS (not Linux?)")


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``, KiB on Linux), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


# --- fresh-process measurement ---------------------------------------------------------
#: Tokens of the first forward each child runs after loading (the model's first use).
FIRST_FORWARD_TOKENS = 32

Setup = Callable[[], tuple[Callable[[], Any], Callable[[Any], Any], dict[str, float]]]


def child_report(setup: Setup, t_start: float) -> dict[str, Any]:
    """In a child: import, time the loading call, then the model's first forward.

    `setup` imports the libraries and returns the loading call, a function running one
    forward of the loaded model, and a dict the loading call may fill with the seconds
    of its phases. Memory is in bytes: the RSS before the call (the baseline), the peak
    after it and after the first forward (``ru_maxrss``), and the RSS at both points.
    The first forward shows what a lazy loader left for later: a model whose weights
    are still in a memory-mapped file reads them from it there.
    """
    load, forward, phases = setup()
    import_s = time.perf_counter() - t_start
    baseline, peak_before = rss_bytes(), peak_rss_bytes()
    start = time.perf_counter()
    loaded = load()
    seconds = time.perf_counter() - start
    peak, rss_after = peak_rss_bytes(), rss_bytes()
    start = time.perf_counter()
    forward(loaded)
    forward_s = time.perf_counter() - start
    peak_forward = peak_rss_bytes()
    return {
        "seconds": seconds,
        "phases_s": phases,
        "import_s": import_s,
        "baseline_rss": baseline,
        "peak_rss_before": peak_before,
        "peak_rss": peak,
        "rss_after": rss_after,
        "peak_over_baseline": peak - baseline,
        "first_forward_s": forward_s,
        "load_and_forward_s": seconds + forward_s,
        "peak_rss_with_forward": peak_forward,
        "rss_after_forward": rss_bytes(),
        "peak_with_forward_over_baseline": peak_forward - baseline,
    } | describe_loaded(loaded)


def describe_loaded(loaded: Any) -> dict[str, Any]:
    """Parameters, their bytes and whether all of them are real (not meta) memory."""
    import torch

    # A model, a (model, tokenizer) pair, or lmscope's LoadedModel (with .model).
    if isinstance(loaded, torch.nn.Module):
        model = loaded
    else:
        model = loaded[0] if isinstance(loaded, tuple) else loaded.model
    params = list(model.parameters())
    return {
        "params": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "all_materialised": all(p.device.type != "meta" for p in params),
        "training": bool(model.training),
        "dtype": str(params[0].dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


def first_tokens(vocab_size: int) -> Any:
    """The fixed tokens of every child's first forward, ``[1, FIRST_FORWARD_TOKENS]``."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, FIRST_FORWARD_TOKENS), generator=gen)


def measure_in_child(script: Path, args: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``python script --child ... args`` in a fresh process; its JSON report.

    The child prints its report as the last line of stdout; anything else it prints
    (progress bars, warnings) is ignored unless it fails.
    """
    env = os.environ | CHILD_ENV
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {args} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1])


def alternate(
    variants: dict[str, Callable[[], dict[str, Any]]],
    rounds: int,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Run each variant once per round, the first one rotating each round."""
    names = list(variants)
    reports: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            report = variants[name]()
            reports[name].append(report)
            log(
                f"  round {r + 1} {name}: load {report['seconds']:.2f} s + first forward "
                f"{report['first_forward_s']:.2f} s; RSS baseline "
                f"{report['baseline_rss'] / 2**20:.0f} MiB, peak after load "
                f"{report['peak_rss'] / 2**20:.0f} MiB, after forward "
                f"{report['peak_rss_with_forward'] / 2**20:.0f} MiB"
            )
    return reports


def summarise_loads(reports: list[dict[str, Any]], weight_bytes: int) -> dict[str, Any]:
    """Medians over rounds of one variant; memory also per byte of weights."""

    def med(key: str) -> float:
        return statistics.median(r[key] for r in reports)

    return {
        "median_s": med("seconds"),
        "times_s": [r["seconds"] for r in reports],
        "median_import_s": med("import_s"),
        "median_first_forward_s": med("first_forward_s"),
        "median_load_and_forward_s": med("load_and_forward_s"),
        "baseline_rss": med("baseline_rss"),
        "peak_rss": med("peak_rss"),
        "rss_after": med("rss_after"),
        "peak_over_baseline": med("peak_over_baseline"),
        "peak_over_baseline_per_weight_byte": med("peak_over_baseline") / weight_bytes,
        "peak_with_forward_over_baseline": med("peak_with_forward_over_baseline"),
        "peak_with_forward_over_baseline_per_weight_byte": med("peak_with_forward_over_baseline")
        / weight_bytes,
        "median_phases_s": {
            key: statistics.median(r["phases_s"][key] for r in reports)
            for key in reports[0]["phases_s"]
        },
        "params": reports[0]["params"],
        "param_bytes": reports[0]["param_bytes"],
        "rounds": reports,
    }


def forward_bench() -> Any:
    """bench/forward.py (machine description, interleaved timing), imported by path."""
    path = Path(__file__).resolve().parent / "forward.py"
    spec = importlib.util.spec_from_file_location("bench_forward", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the checkpoint --------------------------------------------------------------------
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


# --- parity and throughput -------------------------------------------------------------
def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"1x256,4x128"`` -> ``[(1, 256), (4, 128)]``."""
    shapes = []
    for part in text.split(","):
        batch, _, seq = part.strip().partition("x")
        shapes.append((int(batch), int(seq)))
    return shapes


def forward_section(
    directory: Path, shapes: list[tuple[int, int]], repeats: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Both models from `directory` in this process: logits parity, then tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM

    import lmscope

    fwd = forward_bench()
    ours = lmscope.load(directory, dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = {
        f"{b}x{s}": torch.randint(0, ours.cfg.vocab_size, (b, s), generator=gen) for b, s in shapes
    }
    out: dict[str, Any] = {"parity_max_abs_diff": {}, "variants": {}}
    fns: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        for name, tok in tokens.items():  # parity first; doubles as the warm-up
            diff = (ours(tok) - hf(input_ids=tok, use_cache=False).logits).abs().max().item()
            out["parity_max_abs_diff"][name] = diff
            log(f"parity {name}: lmscope vs transformers logits max abs diff {diff:.2e}")
            if diff > PARITY_TOLERANCE:
                raise RuntimeError(f"logits differ by {diff:.2e} > {PARITY_TOLERANCE:.0e}")
            fns[f"hf {name}"] = lambda tok=tok: hf(input_ids=tok, use_cache=False).logits
            fns[f"lmscope {name}"] = lambda tok=tok: ours(tok)
        times = fwd.interleaved(fns, repeats, warmup=0)
    for name, ts in times.items():
        _, shape = name.split(" ")
        b, s = (int(x) for x in shape.split("x"))
        median = statistics.median(ts)
        out["variants"][name] = {"median_s": median, "times_s": ts, "tokens_per_s": b * s / median}
    out["ratio_lmscope_over_hf"] = {
        shape: out["variants"][f"lmscope {shape}"]["tokens_per_s"]
        / out["variants"][f"hf {shape}"]["tokens_per_s"]
        for shape in tokens
    }
    return out


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
