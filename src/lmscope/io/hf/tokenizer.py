"""The tokenizer that comes with a Hugging Face checkpoint, read with HF `tokenizers`.

A directory holds either ``tokenizer.json`` (the fast-tokenizer file: everything in one
file) or the vocabulary files of an older tokenizer: ``vocab.txt`` (BERT WordPiece) or
``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE), which `tokenizers` builds a
tokenizer from. SentencePiece ``*.model`` files need the ``sentencepiece`` package to
convert and are not read; such checkpoints ship a ``tokenizer.json`` in practice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer

from lmscope.errors import CheckpointError

#: Files that describe the tokenizer (and, for generation_config.json, the special
#: token ids generation uses); `convert` copies them with the weights.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "generation_config.json",
)


def hf_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The tokenizer of a checkpoint directory, or None when it has no tokenizer files."""
    directory = Path(directory)
    try:
        if (directory / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(directory / "tokenizer.json"))
        if (directory / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            settings = _tokenizer_config(directory)
            return BertWordPieceTokenizer(
                str(directory / "vocab.txt"),
                lowercase=bool(settings.get("do_lower_case", True)),
                strip_accents=settings.get("strip_accents"),
                handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
            )._tokenizer
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            from tokenizers.implementations import ByteLevelBPETokenizer

            return ByteLevelBPETokenizer(
                str(directory / "vocab.json"), str(directory / "merges.txt")
            )._tokenizer
    except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
        raise CheckpointError(f"cannot read the tokenizer in {directory}: {exc}") from exc
    return None


def _tokenizer_config(directory: Path) -> dict[str, object]:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy `src`'s tokenizer files to `dst`; write a ``tokenizer.json`` when it has none.

    Returns the names written. A destination always gets a ``tokenizer.json`` when the
    source has any tokenizer, so that loaders need only that one file.
    """
    src, dst = Path(src), Path(dst)
    written = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            written.append(name)
    if "tokenizer.json" not in written:
        tokenizer = hf_tokenizer(src)
        if tokenizer is not None:
            tokenizer.save(str(dst / "tokenizer.json"))
            written.append("tokenizer.json")
    return written
