"""Parity and forward throughput of bench/load.py: lmscope and transformers load the same
checkpoint in one process; logits must agree, then both are timed round-robin."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _sibling import sibling

#: Max abs logits diff allowed between lmscope and transformers on the same weights.
PARITY_TOLERANCE = 1e-4


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

    fwd = sibling("forward")
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
