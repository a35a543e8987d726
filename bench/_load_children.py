"""The fresh-process measurement of bench/load.py: a child process times one loading
call and the model's first forward, and reports its RSS as JSON; the parent runs the
children round-robin and summarises them. bench/gguf_load.py reaches these names
through bench/load.py; bench/run_with_cache.py uses `measure_in_child`.

Standard library only at the top, so that a child's baseline RSS is torch + its
library alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _rss import peak_rss_bytes, rss_bytes

#: Environment of every child: nothing may be downloaded.
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
#: Tokens of the first forward each child runs after loading (the model's first use).
FIRST_FORWARD_TOKENS = 32
#: A child's setup: imports its libraries, then returns the loading call, the first
#: forward of what it loaded, and the seconds of the loading call's phases (it fills them).
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
