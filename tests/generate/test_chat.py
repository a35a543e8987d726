"""Conversations -> prompts: plain transcripts and Hugging Face chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmscope.generate import GenerationError, chat_format

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Why?"},
]


def test_plain_transcript_ends_with_the_assistant_turn() -> None:
    fmt = chat_format()
    assert fmt.render(MESSAGES) == (
        "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Why?\nAssistant:"
    )
    assert fmt.stop == ["\nUser:"]


def test_template_from_tokenizer_config_renders_like_transformers(tmp_path: Path) -> None:
    config = {"chat_template": CHATML, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    fmt = chat_format(tmp_path)
    assert fmt.bos_token == "<s>" and fmt.eos_token == "</s>" and fmt.stop == []
    from transformers.utils.chat_template_utils import render_jinja_template

    expected = render_jinja_template([MESSAGES], chat_template=CHATML, add_generation_prompt=True)
    assert fmt.render(MESSAGES) == expected[0][0]
    assert fmt.render(MESSAGES).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_attribute_wins_and_named_templates_use_default(tmp_path: Path) -> None:
    class WithTemplate:
        chat_template = "{{ messages[-1]['content'] }}!"

    assert chat_format(tmp_path, WithTemplate()).render(MESSAGES) == "Why?!"
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "d"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert chat_format(tmp_path).render(MESSAGES) == "d"


def test_bad_messages_and_templates_get_clear_errors() -> None:
    with pytest.raises(GenerationError, match=r"message 0 is .*need a role"):
        chat_format().render([{"role": "robot", "content": "x"}])
    refusing = chat_format(None, type("T", (), {"chat_template": "{{ raise_exception('no') }}"})())
    with pytest.raises(GenerationError, match="refused the conversation: no"):
        refusing.render(MESSAGES)
    broken = chat_format(None, type("T", (), {"chat_template": "{% for %}"})())
    with pytest.raises(GenerationError, match="cannot render the chat template"):
        broken.render(MESSAGES)
