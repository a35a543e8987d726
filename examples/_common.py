"""Shared plumbing of the studies in examples/: arguments, data, training runs, reports.

Each study script builds a `Study` from its command line, trains a few small models
through `lmscope.train.train`, measures them, and writes ``<out>/<name>.md`` (a markdown
table with the command, machine and date that produced it) and ``<out>/<name>.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from rich.console import Console
from torch import Tensor

from lmscope.config import ModelConfig
from lmscope.data import TokenData, iter_eval_batches, prepare, resolve_sources
from lmscope.errors import LmscopeError
from lmscope.model import build_model
from lmscope.model.base import BaseTransformer
from lmscope.tokenizers import make_tokenizer
from lmscope.train import TrainConfig, TrainResult, train
from lmscope.train.log import MetricsLog

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "studies"
#: nanoGPT's tiny Shakespeare, where the shared data folder has it; else the default corpus.
TINY_SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

console = Console(stderr=True)


def run_script(main: Callable[[], object]) -> None:
    """Run a study from the command line: lmscope errors are one line (exit status 2)."""
    try:
        main()
    except LmscopeError as exc:
        # soft_wrap: one logical line, as `lmscope` prints its errors.
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


def study_parser(description: str, steps: int, quick_steps: int) -> argparse.ArgumentParser:
    """The arguments every study takes (scripts add their own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the table and PNG go")
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke run in seconds")
    parser.add_argument(
        "--data",
        default=None,
        help="text to train on (default: tiny Shakespeare if present, else the default corpus)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per run (default {steps}, quick {quick_steps})",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=1337, help="seed of every run (init and data)")
    parser.add_argument(
        "--runs", type=Path, default=None, help="keep the run dirs here (default: temp)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(default_steps=steps, quick_steps=quick_steps)
    return parser


@dataclass
class RunResult:
    """One finished training run: its result and every line of its metrics log."""

    label: str
    result: TrainResult
    lines: list[dict[str, Any]]

    @property
    def train_curve(self) -> list[tuple[int, float]]:
        """(step, training loss) at every logged step."""
        return [(x["step"], x["loss"]) for x in self.lines if "loss" in x]

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        """(step, validation loss) at every evaluation (step 0 is the untrained model)."""
        return [(x["step"], x["val_loss"]) for x in self.lines if "val_loss" in x]

    def model(self, device: torch.device) -> BaseTransformer:
        """The trained model, in eval mode."""
        from lmscope import load

        assert self.result.model_dir is not None
        return load(self.result.model_dir, device=device).eval()

    def initial_model(self, device: torch.device) -> BaseTransformer:
        """The run's model as it was before step 1 (the trainer seeds, then builds)."""
        spec = json.loads((self.result.run_dir / "run.json").read_text())
        cfg = ModelConfig.from_dict(spec["model"])
        return build_model(cfg, seed=spec["train"]["seed"], device=device).eval()

    def final_train_loss(self, last: int = 5) -> float:
        """Mean training loss of the last `last` logged steps (one batch is noisy)."""
        tail = [loss for _, loss in self.train_curve[-last:]]
        return sum(tail) / len(tail)


@dataclass
class Study:
    """One study's settings, scratch space and bookkeeping."""

    name: str
    script: str
    args: argparse.Namespace
    argv: list[str]
    runs_dir: Path
    data_dir: Path
    steps: int
    started: float = field(default_factory=time.perf_counter)
    n_runs: int = 0

    @property
    def device(self) -> torch.device:
        """Where the studies' own measurements run (the trainer resolves 'auto' alike)."""
        wants_cuda = self.args.device == "cuda" or self.args.device == "auto"
        return torch.device("cuda" if wants_cuda and torch.cuda.is_available() else "cpu")

    @property
    def data(self) -> TokenData:
        """The prepared character-level data every run of the study shares."""
        return TokenData(self.data_dir)

    def train(self, label: str, model: dict[str, Any], **settings: Any) -> RunResult:
        """Train `model` (a ModelConfig dict) on the study's data; `settings` are TrainConfig's."""
        self.n_runs += 1
        console.rule(f"[bold]{self.name}[/] run {self.n_runs}: {label}")
        defaults: dict[str, Any] = {
            "data": str(self.data_dir),
            "max_steps": self.steps,
            "device": self.args.device,
            "seed": self.args.seed,
            "sample_tokens": 0,
            "keep_last": 1,
        }
        cfg = TrainConfig(**{**defaults, **settings})
        run_dir = self.runs_dir / re.sub(r"[^A-Za-z0-9.-]+", "_", label)
        result = train(
            model,
            cfg,
            out=run_dir,
            resume=False,
            show_progress=not self.args.no_progress,
            console=console,
        )
        return RunResult(label, result, MetricsLog(run_dir / "metrics.jsonl").read())


@contextlib.contextmanager
def open_study(
    name: str,
    script: str,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    max_chars: int | None = None,
) -> Iterator[Study]:
    """Set threads, prepare the data (its first `max_chars` characters if set), yield the study.

    `script` is the study's file (its name goes into the command the report quotes) and
    `argv` its arguments (default: the command line). Runs go to a temporary directory,
    removed at the end, unless ``--runs`` names one to keep them in.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    steps = args.steps or (args.quick_steps if args.quick else args.default_steps)
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.runs is None:
            runs_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-")))
        else:
            runs_dir = args.runs / name
            shutil.rmtree(runs_dir, ignore_errors=True)  # a study always starts afresh
            runs_dir.mkdir(parents=True)
        data_dir = prepare_chars(args.data, runs_dir / "data", max_chars)
        yield Study(name, Path(script).name, args, argv, runs_dir, data_dir, steps)


def data_spec(data: str | None) -> str | list[Path]:
    """What ``--data`` resolves to: the user's path, tiny Shakespeare, or the default corpus."""
    if data is not None:
        return data
    if TINY_SHAKESPEARE.is_file():
        return str(TINY_SHAKESPEARE)
    from lmscope.data import default_corpus

    return default_corpus()


def prepare_chars(data: str | None, directory: Path, max_chars: int | None = None) -> Path:
    """Tokenize `data` at character level into `directory` (only its start with `max_chars`)."""
    sources = head_sources(data, directory, max_chars)
    tokenizer = make_tokenizer("char", sources, 0)
    prepare(sources, directory, tokenizer, val_fraction=0.1, overwrite=True)
    return directory


def head_sources(data: str | None, directory: Path, max_chars: int | None = None) -> list[Any]:
    """`data`'s sources; with `max_chars`, only their first `max_chars` characters, written
    to ``text.txt`` beside `directory` (which is created)."""
    sources = resolve_sources(data_spec(data))
    if max_chars is not None:
        text = []
        n = 0
        for source in sources:
            for chunk in source.iter_chunks():
                text.append(chunk.text[: max_chars - n])
                n += len(text[-1])
                if n >= max_chars:
                    break
            if n >= max_chars:
                break
        directory.mkdir(parents=True, exist_ok=True)
        head = directory.parent / "text.txt"
        head.write_text("".join(text))
        sources = resolve_sources(str(head))
    return list(sources)


# --- measurements ---------------------------------------------------------------------


@torch.no_grad()
def per_position_loss(
    model: BaseTransformer, tokens: Any, block_size: int, n_windows: int, batch_size: int = 16
) -> Float[Tensor, " pos"]:
    """Mean next-token loss at each position of `n_windows` fixed windows of `block_size`.

    In a causal model position p of a long window sees exactly what it would see in a
    window of length p + 1, so the first T entries give the loss at context T as well.
    """
    device = next(model.parameters()).device
    total = torch.zeros(block_size, dtype=torch.float64)
    count = 0
    n_batches = max(n_windows // batch_size, 1)
    for x, y in iter_eval_batches(tokens, batch_size, block_size, n_batches):
        logits = model(x.to(device)).float()
        loss = F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none")
        total += loss.sum(0).double().cpu()
        count += x.shape[0]
    return (total / count).float()


@torch.no_grad()
def attention_stats(model: BaseTransformer, x: Int[Tensor, "batch pos"]) -> dict[str, Any]:
    """Mean entropy (nats) and max weight of attention rows, and the std of raw scores.

    Averaged over layers, heads, batch and query positions; `score_std_by_layer` has the
    score spread of each layer. `uniform_entropy` is the entropy the same causal rows
    would have if every row were uniform (for scale).
    """
    patterns: list[Tensor] = []
    scores: list[Tensor] = []
    targets = [
        (lambda name: name.endswith("attn.hook_pattern"), lambda t, hook: patterns.append(t)),
        (lambda name: name.endswith("attn.hook_attn_scores"), lambda t, hook: scores.append(t)),
    ]
    model.run_with_hooks(x.to(next(model.parameters()).device), fwd_hooks=targets)
    pattern = torch.stack(patterns).float()  # [layer, batch, head, q, k]
    entropy = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)
    n_keys = torch.arange(1, pattern.shape[-1] + 1, dtype=torch.float32, device=pattern.device)
    # Masked (future) entries are -inf: only the finite scores are spread.
    finite = [layer.float()[torch.isfinite(layer)] for layer in scores]
    return {
        "entropy": float(entropy.mean()),
        "uniform_entropy": float(n_keys.log().mean()),
        "max_weight": float(pattern.amax(-1).mean()),
        "score_std": float(torch.cat(finite).std()),
        "score_std_by_layer": [float(layer.std()) for layer in finite],
    }


# --- reports ----------------------------------------------------------------------------


def describe_machine(device: torch.device) -> str:
    """CPU model, cores, torch version and threads (and the GPU when one was used)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    threads = torch.get_num_threads()
    plural = "s" if threads != 1 else ""
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} thread{plural})"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table ('-' for missing, 'nan'/'inf' as such)."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are written with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    """A matplotlib figure and axes on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), dpi=110)
    return fig, axes


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write_report(study: Study, title: str, intro: str, sections: Sequence[str]) -> Path:
    """Write ``<out>/<name>.md``: title, intro, how it was made, then `sections`."""
    out: Path = study.args.out
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", f"examples/{study.script}", *study.argv])
    minutes = (time.perf_counter() - study.started) / 60
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    made = (
        f"Made by `{command}` ({study.n_runs} run{'s' if study.n_runs > 1 else ''} of "
        f"{study.steps} steps, "
        f"{minutes:.1f} min in all) on {today}; machine: {describe_machine(study.device)}."
    )
    body = [f"# {title}", intro, made, *sections, f"![{title}]({study.name}.png)"]
    path = out / f"{study.name}.md"
    path.write_text("\n\n".join(part.strip() for part in body) + "\n")
    console.print(f"wrote {path} and {out / (study.name + '.png')}")
    return path
