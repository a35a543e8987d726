"""How both SAE studies run: their shared flags, run folder and ``main``.

sae_features.py and sae_smollm2.py differ in the model they open, its data and the
report's wording; `run_sae_study` does the rest (threads, seed, run folder, the
pipeline of `_sae_study.run_analyses`, the report of `_sae_report.write_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from _interpret import InterpretStudy
from _sae_report import write_report
from _sae_study import run_analyses

#: Opens the model for a study: (args, run folder) -> (model, tokenizer, data dir, label).
Opener = Callable[[argparse.Namespace, Path], tuple[Any, Any, Path, str]]


def add_sae_arguments(p: argparse.ArgumentParser, k: int, l1: str) -> None:
    """The flags both studies take (defaults that depend on ``--quick`` are None here)."""
    p.add_argument("--layer", type=int, default=None, help="block whose output (default middle)")
    p.add_argument("--sae-tokens", type=int, default=None, help="cached activations")
    p.add_argument("--sae-steps", type=int, default=None, help="SAE steps")
    p.add_argument("--batch", type=int, default=None, help="SAE batch (activations per step)")
    p.add_argument("--width", default=None, help="latents: e.g. 8x, or a count")
    p.add_argument("-k", "--k", type=int, default=k, help="TopK's k, JumpReLU's target L0")
    p.add_argument("--l1", type=float, nargs="+", default=None, help=f"ReLU L1 sweep ({l1})")
    p.add_argument("--lr", type=float, default=None, help="SAE learning rate")
    p.add_argument("--heldout", type=int, default=None, help="held-out windows (evaluation)")
    p.add_argument("--feature-windows", type=int, default=None, help="held-out windows (features)")
    p.add_argument("--samples", type=int, default=None, help="sampled continuations")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens each continuation")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of every run and draw")
    p.add_argument("--runs", type=Path, default=None, help="keep model, cache, SAEs here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Set every unset flag of `defaults` (name -> (quick value, full value))."""
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)


@contextlib.contextmanager
def run_dir(args: argparse.Namespace, name: str) -> Iterator[Path]:
    """``--runs``/`name` (emptied first), or a temporary folder removed at the end."""
    if args.runs is not None:
        path = args.runs / name
        shutil.rmtree(path, ignore_errors=True)  # a study always starts afresh
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        yield Path(tmp)


def run_sae_study(
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    *,
    name: str,
    script: str,
    open_model: Opener,
    load_timing: str,
    default_layer: Callable[[int], int],
    title: str,
    intro: str,
    **analysis: Any,
) -> dict[str, Any]:
    """Open the model, run every analysis at ``blocks.{layer}.hook_resid_post`` and write
    the report; returns its numbers. `analysis` goes to `run_analyses`; `load_timing`
    names the model-opening time in the report; `default_layer` maps n_layers to the
    block read when ``--layer`` is not given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    with run_dir(args, name) as runs:
        start = time.perf_counter()
        model, tok, data_dir, label = open_model(args, runs)
        study = InterpretStudy(
            name, script, args, argv, model.eval(), tok, label, time.perf_counter() - start
        )
        study.started, study.timings[load_timing] = start, study.load_seconds
        layer = args.layer if args.layer is not None else default_layer(model.cfg.n_layers)
        hook = f"blocks.{layer}.hook_resid_post"
        numbers = run_analyses(study, hook, data_dir, runs, **analysis)
        write_report(study, numbers, title, intro)
    return numbers
