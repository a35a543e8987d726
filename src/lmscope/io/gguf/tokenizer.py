"""The tokenizer a GGUF file carries, rebuilt with Hugging Face `tokenizers`.

A GGUF has no ``tokenizer.json``: it stores the vocabulary (``tokenizer.ggml.tokens``),
the BPE merges, a type per token (normal, control, user-defined...), the special-token
ids and the name of the pre-tokenizer (``tokenizer.ggml.pre``). For byte-level BPE
(``tokenizer.ggml.model = "gpt2"``) that is all it takes:

- model: BPE over the vocabulary and merges as stored (already in GPT-2's byte alphabet);
- pre-tokenizer: the split regexes llama.cpp uses for that ``pre`` name (``llama-vocab.cpp``),
  applied in order, then the byte-level mapping;
- control tokens (``<|im_start|>``...) are special added tokens, user-defined ones plain
  added tokens, so both stay whole in text;
- decoder: byte-level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lmscope.errors import CheckpointError
from lmscope.io.gguf.reader import GGUFFile, open_gguf
from lmscope.serialization import write_json
from lmscope.tokenizers.base import HF_CONFIG
from lmscope.tokenizers.hf import HFTokenizer


class PreTokenizer(NamedTuple):
    """llama.cpp's split for one ``tokenizer.ggml.pre``: regexes applied in order."""

    splits: tuple[str, ...]  # split (isolating each match) by these, in order
    gpt2_split: bool  # then by GPT-2's regex (inside the byte-level step)


_GPT2 = PreTokenizer((), gpt2_split=True)
# Digits one by one, then GPT-2's split (StarCoder, SmolLM...).
_DIGITS_GPT2 = PreTokenizer((r"\p{N}",), gpt2_split=True)
_LLAMA3 = PreTokenizer(
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    gpt2_split=False,
)
_QWEN2 = PreTokenizer(
    (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    gpt2_split=False,
)

#: ``tokenizer.ggml.pre`` -> its split, names grouped as in llama.cpp's ``llama-vocab.cpp``.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    **dict.fromkeys(("gpt-2", "gpt2", "mpt", "olmo", "jais", "phi-2", "roberta-bpe"), _GPT2),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), _DIGITS_GPT2
    ),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2),
}

#: ``tokenizer.ggml.token_type`` values (llama.cpp's ``llama_token_type``).
CONTROL, USER_DEFINED = 3, 4


def build_gguf_tokenizer(file: GGUFFile) -> tokenizers.Tokenizer:
    """The `tokenizers.Tokenizer` described by `file`'s ``tokenizer.*`` metadata."""
    kind = file.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{file.path} has a {kind!r} tokenizer; lmscope rebuilds GGUF's byte-level BPE "
            "tokenizers ('gpt2') only."
        )
    pre = str(file.get("tokenizer.ggml.pre", "gpt-2"))
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(
            f"{file.path} names the pre-tokenizer {pre!r}, which lmscope does not know; known: "
            f"{', '.join(sorted(PRE_TOKENIZERS))}."
        )
    tokens: list[str] = list(file.require("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))

    split = PRE_TOKENIZERS[pre]
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in split.splits]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split.gpt2_split)
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level]) if splits else byte_level
    tok.decoder = decoders.ByteLevel()

    types = list(file.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    roles = {role_id for role_id in _role_ids(file).values() if role_id is not None}
    special = [i for i, t in enumerate(types) if t == CONTROL or i in roles]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
    user = [tokens[i] for i, t in enumerate(types) if t == USER_DEFINED and i not in roles]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    _add_bos_eos(tok, file, tokens)
    return tok


def _role_ids(file: GGUFFile) -> dict[str, int | None]:
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id"}
    keys["unk"] = "unknown_token_id"
    found = {role: file.get(f"tokenizer.ggml.{key}") for role, key in keys.items()}
    return {role: None if value is None else int(value) for role, value in found.items()}


def _add_bos_eos(tok: tokenizers.Tokenizer, file: GGUFFile, tokens: list[str]) -> None:
    """llama.cpp's ``add_bos_token`` / ``add_eos_token`` as a post-processor template."""
    ids = _role_ids(file)
    add_bos = bool(file.get("tokenizer.ggml.add_bos_token", False)) and ids["bos"] is not None
    add_eos = bool(file.get("tokenizer.ggml.add_eos_token", False)) and ids["eos"] is not None
    if not (add_bos or add_eos):
        return
    chosen = {
        tokens[i]: i
        for role, i in ids.items()
        if i is not None and ((role == "bos" and add_bos) or (role == "eos" and add_eos))
    }
    bos = [tokens[ids["bos"]]] if add_bos and ids["bos"] is not None else []
    eos = [tokens[ids["eos"]]] if add_eos and ids["eos"] is not None else []
    single = " ".join([*bos, "$A", *eos])
    pair = " ".join([*bos, "$A", *eos, *bos, "$B", *eos])
    special = list(chosen.items())
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special
    )


def gguf_tokenizer_roles(file: GGUFFile) -> dict[str, str | None]:
    """bos / eos / pad / unk token names from the file's special-token ids."""
    tokens = file.require("tokenizer.ggml.tokens")
    return {
        role: None if i is None or not 0 <= i < len(tokens) else tokens[i]
        for role, i in _role_ids(file).items()
    }


def load_gguf_tokenizer(source: str | Path | GGUFFile) -> HFTokenizer:
    """The tokenizer in a GGUF file (a path or an opened `GGUFFile`), as an `HFTokenizer`.

    `HFTokenizer.encode` adds no special tokens. The file's chat template (or None) is the
    tokenizer's ``chat_template`` attribute, where `lmscope.generate.chat.chat_format`
    looks for it.
    """
    file = source if isinstance(source, GGUFFile) else open_gguf(source)
    tokenizer = HFTokenizer(build_gguf_tokenizer(file), roles=gguf_tokenizer_roles(file))
    tokenizer.chat_template = gguf_chat_template(file)  # type: ignore[attr-defined]
    return tokenizer


def gguf_chat_template(source: str | Path | GGUFFile) -> str | None:
    """The Jinja chat template the file carries (``tokenizer.chat_template``), if any."""
    file = source if isinstance(source, GGUFFile) else open_gguf(source)
    template = file.get("tokenizer.chat_template")
    return None if template is None else str(template)


def save_gguf_tokenizer(source: str | Path | GGUFFile, directory: str | Path) -> Path:
    """Write the file's tokenizer into `directory` for `load_tokenizer` and Hugging Face tools.

    `HFTokenizer.save` writes ``tokenizer.json`` and lmscope's manifest; beside them goes a
    ``tokenizer_config.json`` with the special tokens and the ``chat_template``.
    """
    file = source if isinstance(source, GGUFFile) else open_gguf(source)
    directory = Path(directory)
    load_gguf_tokenizer(file).save(directory)
    config: dict[str, Any] = {f"{role}_token": t for role, t in gguf_tokenizer_roles(file).items()}
    config["add_bos_token"] = bool(file.get("tokenizer.ggml.add_bos_token", False))
    config["add_eos_token"] = bool(file.get("tokenizer.ggml.add_eos_token", False))
    template = gguf_chat_template(file)
    if template is not None:
        config["chat_template"] = template
    write_json(directory / HF_CONFIG, config)
    return directory
