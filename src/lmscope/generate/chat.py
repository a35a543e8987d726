"""Turning a conversation into a prompt: the tokenizer's chat template, or a plain transcript.

Chat models are trained on conversations laid out by a Jinja template that ships with
their tokenizer (``chat_template`` in Hugging Face's ``tokenizer_config.json``). It is
rendered here the way `transformers` renders it: a sandboxed Jinja environment with
``trim_blocks`` / ``lstrip_blocks``, the variables ``messages``, ``bos_token``,
``eos_token`` and ``add_generation_prompt``, and a ``raise_exception`` function. Models
without a template (anything trained from scratch here) get a plain transcript,
``User: ...`` / ``Assistant: ...``, and stop when they start the user's next line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmscope.generate.errors import GenerationError

#: A chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``.
Message = dict[str, str]

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class ChatFormat:
    """How a conversation becomes prompt text, and where a reply ends."""

    template: str | None = None
    bos_token: str = ""
    eos_token: str = ""
    #: Stop strings for replies (the plain transcript stops at the next "User:" line).
    stop: list[str] = field(default_factory=list)

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt for the assistant's next reply."""
        for i, message in enumerate(messages):
            if message.get("role") not in PLAIN_ROLES or "content" not in message:
                raise GenerationError(
                    f"message {i} is {message!r}; messages need a role "
                    f"({', '.join(PLAIN_ROLES)}) and a content."
                )
        if self.template is None:
            lines = [f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages]
            return "\n".join([*lines, "Assistant:"])
        return _render_template(self.template, messages, self.bos_token, self.eos_token)


def _render_template(template: str, messages: Sequence[Message], bos: str, eos: str) -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise GenerationError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=list(messages), bos_token=bos, eos_token=eos, add_generation_prompt=True
        )
    except TemplateError as exc:
        raise GenerationError(f"cannot render the chat template: {exc}") from exc


def _token_text(value: Any) -> str:
    # tokenizer_config.json writes special tokens as strings or as {"content": ...}.
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def chat_format(directory: str | Path | None = None, tokenizer: object = None) -> ChatFormat:
    """The chat format of a model: the tokenizer's template (its ``chat_template``
    attribute, else ``tokenizer_config.json`` in `directory`), or the plain transcript."""
    template = getattr(tokenizer, "chat_template", None)
    config: dict[str, Any] = {}
    path = Path(directory) / "tokenizer_config.json" if directory is not None else None
    if path is not None and path.is_file():
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GenerationError(f"{path} is not valid JSON: {exc}") from exc
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # several named templates: use the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        return ChatFormat(stop=["\nUser:"])
    return ChatFormat(
        template=template,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
    )
