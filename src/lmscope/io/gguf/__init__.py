"""llama.cpp's GGUF files: model, weights and tokenizer.

`load_gguf(path)` builds the lmscope model (metadata -> `ModelConfig`, every tensor
dequantised to the requested dtype, llama.cpp's Q/K permutation undone);
`load_gguf_tokenizer(path)` rebuilds the embedded byte-level BPE tokenizer. Open a file
once with `open_gguf` and pass the `GGUFFile` to both: parsing the header of a large
vocabulary takes seconds.

Modules: `reader` (opening, metadata), `metadata` (-> `ModelConfig`), `dequant` (one
function per ggml type), `weights` (names, fusing, permutation), `tokenizer`, `load`.
"""

from __future__ import annotations

from lmscope.io.gguf.dequant import QUANT_TYPES, SUPPORTED_TYPES, dequantize
from lmscope.io.gguf.load import load_gguf, load_named, read_gguf_config
from lmscope.io.gguf.metadata import FAMILIES, gguf_config
from lmscope.io.gguf.reader import GGUFFile, GGUFTensor, is_gguf, open_gguf
from lmscope.io.gguf.tokenizer import (
    build_gguf_tokenizer,
    gguf_chat_template,
    load_gguf_tokenizer,
    save_gguf_tokenizer,
)

__all__ = [
    "FAMILIES",
    "QUANT_TYPES",
    "SUPPORTED_TYPES",
    "GGUFFile",
    "GGUFTensor",
    "build_gguf_tokenizer",
    "dequantize",
    "gguf_chat_template",
    "gguf_config",
    "is_gguf",
    "load_gguf",
    "load_gguf_tokenizer",
    "load_named",
    "open_gguf",
    "read_gguf_config",
    "save_gguf_tokenizer",
]
