"""Study: SAEs on SmolLM2-135M's residual stream: matched-L0 quality, features, clamping.

The same study as sae_features.py (`_sae_study.run_analyses`), on a real model:

1. SmolLM2-135M-Instruct (the GGUF of ``lmscope.real_models``; 30 blocks, d_model 576)
   and the complete plays tokenized with its own tokenizer (about 1.5M tokens; a tenth
   of every play held out).
2. Its residual stream after block 15 of 30, cached on disk in float16
   (`cache_activations`; ``stop_at_layer`` so blocks 16-29 never run).
3. A ReLU-L1 sweep, TopK (k = 32) and JumpReLU (quadratic loss around 32, thresholds
   from the data), 4x wide (2,304 latents), trained in one pass over the cache; L0, FVU
   and loss recovered (the real model's next-token loss with the reconstruction spliced
   in). Budget (2 CPU cores): caching runs at about 1,000 tokens/s, so 1M tokens take
   about 17 minutes; seven SAEs 4x wide take about 1.8 s per batch of 2,048, so one
   pass over the 1M (480 batches) takes about 15 minutes (8x wide would see half).
4. Features for token labels (a speaker-name line, the first token of a line, an archaic
   word: thou / thee / thy / thine / thyself / hath / doth), found and measured on
   separate halves of held-out windows, with cards and an HTML dashboard.
5. The speaker-name feature clamped while sampling, measured on the generated text.

Writes docs/studies/sae_smollm2.md, its pictures and the dashboard::

    python examples/sae_smollm2.py --threads 2 --runs /tmp/sae_runs   # the full run
    python examples/sae_smollm2.py --quick    # seconds: the real model, toy counts

The activation cache goes to ``<runs>/sae_smollm2/cache`` (a temporary folder, removed
at the end, without ``--runs``); the path is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import _sae
from _common import DEFAULT_OUT, head_sources, run_script
from _sae_cli import add_sae_arguments, fill_defaults, run_sae_study
from lmscope.data import default_corpus, prepare

NAME = "sae_smollm2"
TITLE = "Study: SAE features of SmolLM2-135M"
INTRO = (
    "Sparse autoencoders (`lmscope.sae`) on the residual stream of a real model, "
    "SmolLM2-135M-Instruct, reading the complete Shakespeare plays: ReLU-L1, TopK and "
    "JumpReLU SAEs compared at the same L0, the latents that detect speaker-name lines, line "
    "starts and archaic words (found automatically, measured exactly), and what clamping the "
    "speaker-name feature does to generated text. The same study on a character-level "
    "model trained on the plays: [sae_features.md](sae_features.md)."
)
#: Characters of the plays prepared in ``--quick`` (about 25k tokens).
QUICK_CHARS = 100_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The study's command line (budget flags default by ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    p.add_argument("--quick", action="store_true", help="toy counts: a smoke run in seconds")
    p.add_argument("--model", default="smollm2", help="the model (a real model name or .gguf)")
    p.add_argument("--context", type=int, default=None, help="tokens per window (128; quick 32)")
    add_sae_arguments(p, k=32, l1="1 2 4 8 16")
    args = p.parse_args(argv)
    fill_defaults(
        args,
        {
            "context": (32, 128),
            "sae_tokens": (2048, 1_000_000),
            "sae_steps": (4, 480),
            "batch": (256, 2048),
            "width": ("1x", "4x"),
            "l1": ([2.0], [1.0, 2.0, 4.0, 8.0, 16.0]),
            "lr": (1e-3, 1e-3),
            "heldout": (4, 48),
            "feature_windows": (8, 256),
            "samples": (2, 32),
            "new_tokens": (4, 64),
        },
    )
    return args


def open_smollm2(args: argparse.Namespace, runs: Path) -> tuple[Any, Any, Path, str]:
    """The model, its tokenizer, the plays prepared with it (only their start with
    ``--quick``), and a label."""
    from lmscope.cli.common import open_model
    from lmscope.real_models import REAL_MODELS, is_real_model

    model, tokenizer, label = open_model(args.model)
    if is_real_model(args.model):
        label = f"{args.model}, {REAL_MODELS[args.model].description}"
    plays = str(default_corpus()[0].parent / "*_gut.txt")
    data_dir = runs / "data"
    sources = head_sources(plays, data_dir, QUICK_CHARS if args.quick else None)
    prepared = prepare(sources, data_dir, tokenizer, val_fraction=0.1, overwrite=True)
    label += f"; the plays: {prepared.meta['totals']['tokens']:,} of its tokens"
    return model, tokenizer, data_dir, label


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a report with pictures)."""
    args = parse_args(argv)
    return run_sae_study(
        argv,
        args,
        name=NAME,
        script=Path(__file__).name,
        open_model=open_smollm2,
        load_timing="model and data",
        default_layer=lambda n_layers: n_layers // 2,
        title=TITLE,
        intro=INTRO,
        labels=_sae.WORD_LABELS,
        unit="token",
        cache_dtype=torch.float16,  # half the disk; the SAEs train in float32
        prepend_bos=True,
        window=(16, 4),
        prompt_tokens=min(24, args.context),
    )


if __name__ == "__main__":
    run_script(main)
