"""The SAE activation store's memory as the corpus grows (issue: sparse autoencoders).

Usage::

    python bench/sae_store.py [--quick] [--sizes 250000,2000000] [--json out.json]

For each corpus size (characters of a generated text file, read through a character
tokenizer, so the corpus itself is never resident) and each source, one full pass of
`ActivationStore` (``loop=False``) over a small random model's ``blocks.1.hook_resid_post``:

- ``model``: the store streams the text through the model;
- ``disk``: the activations are first written with `cache_activations` (sharded
  safetensors), then the store reads them back memory-mapped.

Each (size, source) runs in a *fresh* Python process that builds everything, hands
freed memory back (``malloc_trim``), resets the peak RSS (``/proc/self/clear_refs``),
notes the RSS, runs the pass, and reads the peak (``VmHWM``): the peak above the start
is what the pass needed. ``--quick`` runs the cases one after another in this process
instead (a smoke test's shape). Reported: rows served, the store's
``peak_buffer_rows``, the peak RSS above the start, and activations per second.

Target: the peak does not grow with the corpus (the largest size's peak within 1.25x
of the smallest's, plus 16 MiB of allocator noise), and the buffer never holds more
than ``buffer_tokens`` rows plus one model batch.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOOK = "blocks.1.hook_resid_post"
BUFFER_TOKENS = 1 << 14
MODEL_BATCH = 2048
WORDS = ["thee", "thou", "ROMEO", "JULIET", "love", "night", "sword", "king", "the", "and"]


def write_corpus(path: Path, n_chars: int) -> None:
    """A text file of `n_chars` characters of word salad, written in pieces."""
    import random

    rng = random.Random(n_chars)
    written = 0
    with open(path, "w") as f:
        while written < n_chars:
            line = " ".join(rng.choice(WORDS) for _ in range(12)) + ".\n"
            line = line[: n_chars - written]
            f.write(line)
            written += len(line)


def rss_bytes() -> int:
    """The resident set size now (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def peak_bytes() -> int:
    """The peak resident set size since the last reset (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def reset_peak() -> None:
    """Give freed heap back to the kernel and restart the peak count from the RSS now."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def run_case(n_chars: int, source: str, workdir: Path) -> dict[str, Any]:
    """One full pass of the store over a corpus of `n_chars` characters."""
    import torch

    from lmscope import ModelConfig
    from lmscope.model import build_model
    from lmscope.sae import ActivationStore, cache_activations
    from lmscope.tokenizers import CharTokenizer

    torch.set_num_threads(1)
    corpus = workdir / f"corpus_{n_chars}.txt"
    write_corpus(corpus, n_chars)
    tokenizer = CharTokenizer(sorted(set(" .\n" + "".join(WORDS))))
    cfg = ModelConfig.from_preset("gpt2-small").replace(
        d_model=64, n_heads=4, d_head=16, d_mlp=256, n_layers=3, max_seq_len=128,
        vocab_size=tokenizer.vocab_size,
    )  # fmt: skip
    model = build_model(cfg, seed=0).eval()
    data: Any = corpus
    if source == "disk":
        data = workdir / f"acts_{n_chars}"
        cache_activations(
            model, tokenizer, corpus, HOOK, data, context_size=128, shard_rows=1 << 15
        )
    store = ActivationStore(
        model, tokenizer, data, HOOK, context_size=128, batch_size_tokens=MODEL_BATCH,
        store_batch_size=1024, buffer_tokens=BUFFER_TOKENS, loop=False,
    )  # fmt: skip
    reset_peak()
    before = rss_bytes()
    start = time.perf_counter()
    rows = sum(batch.shape[0] for batch in store)
    seconds = time.perf_counter() - start
    return {
        "chars": n_chars,
        "source": source,
        "rows": rows,
        "peak_buffer_rows": store.peak_buffer_rows,
        "peak_above_start_mib": (peak_bytes() - before) / 2**20,
        "acts_per_s": rows / seconds,
    }


def bounded(cases: list[dict[str, Any]]) -> bool:
    """The target: per source, the largest corpus's peak within 1.25x (+16 MiB) of the
    smallest's, and the buffer never above buffer_tokens + one model batch."""
    ok = all(c["peak_buffer_rows"] <= BUFFER_TOKENS + MODEL_BATCH for c in cases)
    for source in {c["source"] for c in cases}:
        runs = sorted((c for c in cases if c["source"] == source), key=lambda c: c["chars"])
        small, large = runs[0]["peak_above_start_mib"], runs[-1]["peak_above_start_mib"]
        ok = ok and large <= 1.25 * small + 16
    return ok


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and optionally writes) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,2000000", help="corpus sizes (characters)")
    parser.add_argument("--quick", action="store_true", help="small sizes, in this process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # internal: one child run
    args = parser.parse_args(argv)
    if args.case:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_case(int(args.case[0]), args.case[1], Path(tmp))))
        return {}
    sizes = [20_000, 80_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    cases = []
    for source in ("model", "disk"):
        for size in sizes:
            if args.quick:
                with tempfile.TemporaryDirectory() as tmp:
                    cases.append(run_case(size, source, Path(tmp)))
            else:
                out = subprocess.run(
                    [sys.executable, __file__, "--case", str(size), source],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                cases.append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {
        "buffer_tokens": BUFFER_TOKENS,
        "model_batch": MODEL_BATCH,
        "cases": cases,
        "bounded": bounded(cases),
    }
    print(f"{'chars':>10} {'source':>6} {'rows':>10} {'buffer rows':>11} {'peak MiB':>9} "
          f"{'acts/s':>9}")  # fmt: skip
    for c in cases:
        print(
            f"{c['chars']:>10,} {c['source']:>6} {c['rows']:>10,} {c['peak_buffer_rows']:>11,} "
            f"{c['peak_above_start_mib']:>9.1f} {c['acts_per_s']:>9,.0f}"
        )
    print("memory bounded as the corpus grows:", "yes" if results["bounded"] else "NO")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
