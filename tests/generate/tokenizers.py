"""Stand-in tokenizers for generation tests (the real ones live in lmscope.tokenizers)."""

from __future__ import annotations

import string
from collections.abc import Sequence


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255; 256 = BOS, 257 = EOS, 258 = PAD (vocab 259)."""

    vocab_size = 259
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer:
    """58 characters as ids 0-57; 58 = BOS, 59 = EOS, 60 = PAD (vocab 61, as `small()`)."""

    chars = string.ascii_lowercase + string.ascii_uppercase + " .,!?\n"
    vocab_size = 61
    bos_id, eos_id, pad_id = 58, 59, 60

    def encode(self, text: str) -> list[int]:
        return [self.chars.index(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids if i < len(self.chars))
