"""``lmscope generate`` and ``lmscope chat``: sample from a saved model, streaming as it goes.

Both wrap `lmscope.generate.generate` (same option names). The continuation goes to
stdout token by token (text is decoded incrementally, so multi-byte characters appear
whole); the timing line goes to stderr, so ``lmscope generate RUN --prompt x > out.txt``
captures only the text.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console

from lmscope.cli import app
from lmscope.cli.common import print_json
from lmscope.errors import LmscopeError
from lmscope.generate import GenerationResult, StreamEvent
from lmscope.generate import generate as generate_tokens
from lmscope.generate.chat import Message, chat_format
from lmscope.generate.loading import load_for_generation

#: Status lines go to stderr, so that stdout holds only the generated text.
status = Console(stderr=True, width=None)

Run = Annotated[
    str,
    typer.Argument(help="Model directory (model.save()) or training run (uses RUN/model)."),
]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens to generate at most, per sample.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopK = Annotated[int | None, typer.Option(help="Sample among the k most likely tokens only.")]
TopP = Annotated[
    float | None, typer.Option(help="Nucleus sampling: smallest set with probability >= p.")
]
RepetitionPenalty = Annotated[
    float, typer.Option(help="Penalty on tokens already in the sequence (1 = none).")
]
Seed = Annotated[int | None, typer.Option(help="Random seed, for reproducible samples.")]


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError as exc:
        raise LmscopeError(f"--tokens {text!r}: give integer token ids, e.g. 5,17,42.") from exc


class _Printer:
    """The `stream` callback: one sample streams token by token; several print as each ends."""

    def __init__(self, n_rows: int, head: str) -> None:
        self.n_rows, self.head = n_rows, head
        self.pieces: list[list[str]] = [[] for _ in range(n_rows)]
        self.printed = [False] * n_rows

    def _piece(self, event: StreamEvent, row: int) -> str:
        if event.texts is not None:
            return event.texts[row]
        token = event.token_ids[row]
        return "" if token is None else f" {token}"

    def __call__(self, event: StreamEvent) -> None:
        if self.n_rows == 1 and event.step == 0:
            # The prompt goes out with the first token: after generate() accepted the input.
            sys.stdout.write(self.head)
        for row in range(self.n_rows):
            self.pieces[row].append(self._piece(event, row))
            if self.n_rows == 1:
                sys.stdout.write(self.pieces[row][-1])
                sys.stdout.flush()
            elif event.finished[row] is not None and not self.printed[row]:
                self.printed[row] = True
                title = f" sample {row + 1}/{self.n_rows} ({event.finished[row]}) "
                sys.stdout.write(f"{title:-^60}\n{self.head}{''.join(self.pieces[row])}\n")
                sys.stdout.flush()


def _report(result: GenerationResult, seconds: float) -> dict[str, Any]:
    n_new = sum(len(t) for t in result.new_tokens)
    samples = [
        {"new_tokens": new, "finish_reason": reason}
        | ({"text": result.texts[i]} if result.texts is not None else {})
        for i, (new, reason) in enumerate(
            zip(result.new_tokens, result.finish_reasons, strict=True)
        )
    ]
    return {
        "samples": samples,
        "new_tokens_total": n_new,
        "seconds": seconds,
        "tokens_per_second": n_new / seconds if seconds > 0 else None,
    }


@app.command()
def generate(
    run: Run,
    prompt: Annotated[
        str | None, typer.Option(help="Text to continue (default: the tokenizer's BOS token).")
    ] = None,
    tokens: Annotated[
        str | None, typer.Option(help="The prompt as token ids, e.g. 5,17,42 (no tokenizer).")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help="Tokens to generate at most [default: 100]."),
    ] = None,
    temperature: Temperature = 0.8,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop when the text contains this (repeatable).")
    ] = None,
    seed: Seed = None,
    num_samples: Annotated[int, typer.Option(help="Continuations of the prompt.")] = 1,
    slide: Annotated[
        bool,
        typer.Option(
            help="Past the model's context, slide it (keep the last half) instead of stopping "
            "with an error; decoder-only models."
        ),
    ] = True,
    json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Continue a prompt with a saved model, streaming the text as it is generated."""
    if prompt is not None and tokens is not None:
        raise LmscopeError("give either --prompt (text) or --tokens (ids), not both.")
    model, tokenizer, model_dir = load_for_generation(run, need_tokenizer=tokens is None)
    if tokens is not None:
        ids, head = _parse_ids(tokens), tokens
    elif prompt is not None:
        assert tokenizer is not None
        ids, head = tokenizer.encode(prompt), prompt
    else:
        bos = getattr(tokenizer, "bos_id", None)
        if bos is None:
            raise LmscopeError("this tokenizer has no BOS token to start from; give --prompt.")
        ids, head = [bos], ""
    slide = slide and model.cfg.architecture == "decoder"
    if max_new_tokens is None:  # 100, or as many as fit in the context when it cannot slide
        room = 100 if slide else model.cfg.max_seq_len - len(ids)
        max_new_tokens = max(1, min(100, room))
    printer = None if json else _Printer(num_samples, head)
    start = time.perf_counter()
    result = generate_tokens(
        model,
        [ids],
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=stop or None,
        seed=seed,
        num_samples=num_samples,
        stream=printer,
        overflow="slide" if slide else "error",
    )
    report = _report(result, time.perf_counter() - start)
    if json:
        print_json({"model": str(model_dir), "prompt": head} | report)
        return
    if num_samples == 1:
        sys.stdout.write("\n")
        sys.stdout.flush()
    reasons = ", ".join(sorted(set(result.finish_reasons)))
    status.print(
        f"[dim]{report['new_tokens_total']} new tokens in {report['seconds']:.2f} s "
        f"({report['tokens_per_second']:.1f} tokens/s); finished: {reasons}[/]",
        highlight=False,
    )


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def chat_turns(messages: Sequence[Message]) -> int:
    """How many user turns a conversation has had."""
    return sum(m["role"] == "user" for m in messages)


@app.command()
def chat(
    run: Run,
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    max_new_tokens: MaxNewTokens = 256,
    temperature: Temperature = 0.7,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = None,
) -> None:
    """Talk with a saved model: type a message, read the streamed reply; 'exit' or Ctrl-D quits.

    Uses the tokenizer's chat template when it has one, else a plain User/Assistant
    transcript. The oldest tokens are dropped when the conversation outgrows the context.
    """
    model, tokenizer, model_dir = load_for_generation(run)
    assert tokenizer is not None
    fmt = chat_format(model_dir, tokenizer)
    # Leave the prompt at least half of the context.
    max_new_tokens = min(max_new_tokens, model.cfg.max_seq_len // 2)
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    status.print(f"[dim]{model_dir}: type a message; 'exit' or Ctrl-D to quit.[/]")
    while (line := _read_line("you> ")) is not None and line.strip() not in ("exit", "quit"):
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = tokenizer.encode(fmt.render(messages))
        ids = ids[-(model.cfg.max_seq_len - max_new_tokens) :]
        sys.stdout.write("model> ")
        result = generate_tokens(
            model,
            [ids],
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=fmt.stop or None,
            seed=None if seed is None else seed + chat_turns(messages),
            stream=_Printer(1, ""),
        )
        sys.stdout.write("\n")
        assert result.texts is not None
        messages.append({"role": "assistant", "content": result.texts[0].strip()})
