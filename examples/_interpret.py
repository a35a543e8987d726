"""Shared plumbing of the interpretability studies in examples/ (issue 6, "Looking inside").

Unlike the training studies (`_common`), these open one model, usually a real one
(SmolLM2-135M or MiniLM from `lmscope.real_models`), run analyses from
`lmscope.interpret` on it, and write ``<out>/<name>.md`` with several pictures
(``<name>.png``, ``<name>_<part>.png``). With ``--quick`` the model is a tiny random one
of the same family (GPT-2's tokenizer for decoders), so the scripts' every step runs in
seconds in the tests; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _common import DEFAULT_OUT, console, describe_machine
from lmscope.config import ModelConfig
from lmscope.model import build_model


def interpret_parser(description: str, default_model: str) -> argparse.ArgumentParser:
    """The arguments every interpretability study takes (scripts add their own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny random model: a smoke run in seconds"
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"model to study: a real model name, run dir, .gguf or preset (default "
        f"{default_model}; with --quick a tiny random model)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(default_model=default_model)
    return parser


@functools.lru_cache(maxsize=1)
def _gpt2_tokenizer() -> Any:
    """GPT-2's tokenizer, read once per process (a few seconds; the tests share it)."""
    from lmscope.tokenizers.gpt2 import gpt2_tokenizer

    return gpt2_tokenizer()


def tiny_model(kind: str, seed: int) -> tuple[Any, Any, str]:
    """A tiny random model for ``--quick``: (model, tokenizer, label).

    ``decoder``: Llama wiring with grouped-query attention like SmolLM2 (2 layers,
    d_model 64, 4 query / 2 key-value heads) over GPT-2's vocabulary and tokenizer.
    ``encoder``: a 2-layer BERT (post-norm, learned positions) without a tokenizer.
    """
    if kind == "decoder":
        cfg = ModelConfig.from_preset("llama-tiny").replace(
            vocab_size=50257, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128,
            max_seq_len=256,
        )  # fmt: skip
        tokenizer = _gpt2_tokenizer()
    elif kind == "encoder":
        cfg = ModelConfig.from_preset("bert-base").replace(
            vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_mlp=128, max_seq_len=256
        )
        tokenizer = None
    else:
        raise ValueError(f"kind must be 'decoder' or 'encoder', got {kind!r}")
    model = build_model(cfg, seed=seed).eval()
    return model, tokenizer, f"tiny random {kind} ({cfg.n_layers} layers, seed {seed})"


@dataclass
class InterpretStudy:
    """One study's model, settings and bookkeeping; `write` makes its report."""

    name: str
    script: str
    args: argparse.Namespace
    argv: list[str]
    model: Any
    tokenizer: Any
    label: str
    load_seconds: float
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, part: str) -> None:
        """Record the seconds since the last lap (or the model's loading) as `part`."""
        now = time.perf_counter()
        self.timings[part] = self.timings.get(part, 0.0) + now - self._last
        self._last = now

    @property
    def out(self) -> Path:
        """The report's folder."""
        return Path(self.args.out)

    def picture(self, part: str = "") -> Path:
        """Path of the study's picture ``<name>.png`` or ``<name>_<part>.png``."""
        return self.out / f"{self.name}{'_' + part if part else ''}.png"

    @property
    def progress(self) -> bool | None:
        """Progress bars: off with ``--no-progress``, else on a terminal only."""
        return False if self.args.no_progress else None

    def write(self, title: str, intro: str, sections: Sequence[str]) -> Path:
        """Write ``<out>/<name>.md``: title, intro, how it was made, then `sections`."""
        command = " ".join(["python", f"examples/{self.script}", *self.argv])
        seconds = time.perf_counter() - self.started
        today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        made = (
            f"Made by `{command}` in {_duration(seconds)} ({self.load_seconds:.0f} s of "
            f"it loading the model) on {today}; model: {self.label}; machine: "
            f"{describe_machine(torch.device('cpu'))}."
        )
        if self.timings:
            parts = ", ".join(f"{part} {s:.0f} s" for part, s in self.timings.items())
            made += f" Time by part: {parts}."
        body = [f"# {title}", intro, made, *sections]
        path = self.out / f"{self.name}.md"
        path.write_text("\n\n".join(part.strip() for part in body) + "\n")
        console.print(f"wrote {path}")
        return path


def _duration(seconds: float) -> str:
    """'42 s' under a minute and a half, else '2.3 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@contextlib.contextmanager
def open_interpret(
    name: str, script: str, args: argparse.Namespace, argv: Sequence[str] | None, kind: str
) -> Iterator[InterpretStudy]:
    """Set threads, open the model (``--model``, else the default; ``--quick``: tiny, of
    `kind`), yield the study. `argv` goes into the command the report quotes."""
    from lmscope.cli.common import open_model
    from lmscope.real_models import REAL_MODELS, is_real_model

    argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.quick and args.model is None:
        model, tokenizer, label = tiny_model(kind, args.seed)
    else:
        spec = args.model or args.default_model
        model, tokenizer, label = open_model(spec, seed=args.seed)
        if is_real_model(spec):
            label = f"{spec}, {REAL_MODELS[spec].description}"
    torch.manual_seed(args.seed)
    loaded = time.perf_counter() - start
    console.rule(f"[bold]{name}[/]: {label}, loaded in {loaded:.1f} s")
    yield InterpretStudy(name, Path(script).name, args, argv, model, tokenizer, label, loaded)


def code_block(text: str) -> str:
    """`text` in a fenced markdown code block."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return "```text\n" + "\n".join(lines) + "\n```"


def image(study: InterpretStudy, path: Path, alt: str) -> str:
    """Markdown embedding picture `path` (relative to the report)."""
    return f"![{alt}]({path.relative_to(study.out).as_posix()})"


def cell(text: str) -> str:
    """A token or text for a markdown table cell: quoted, with | and newlines escaped."""
    return "`" + text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'") + "`"
