"""Finding and loading what generation needs from a model or training-run directory."""

from __future__ import annotations

import json
from pathlib import Path

from lmscope.errors import LmscopeError
from lmscope.generate.text import TextTokenizer
from lmscope.io import load
from lmscope.model.base import BaseTransformer


def find_model_dir(run: str | Path) -> Path:
    """The saved model of `run`: `run` itself, ``run/model`` (a finished training run), or
    the latest checkpoint named by ``run/checkpoints/index.json`` (a run still training)."""
    root = Path(run)
    if (root / "config.json").is_file():
        return root
    if (root / "model" / "config.json").is_file():
        return root / "model"
    index = root / "checkpoints" / "index.json"
    if index.is_file():
        try:
            latest = json.loads(index.read_text()).get("latest")
        except (json.JSONDecodeError, AttributeError):
            latest = None
        if latest and (root / "checkpoints" / latest / "config.json").is_file():
            return root / "checkpoints" / latest
    if not root.exists():
        raise LmscopeError(f"{root} does not exist; give a model directory or a training run.")
    raise LmscopeError(
        f"{root} holds no model: expected config.json there (a model.save() directory), "
        "in model/ (a finished training run) or in the latest checkpoint under checkpoints/."
    )


def find_tokenizer(model_dir: Path, run: str | Path | None = None) -> TextTokenizer:
    """The tokenizer saved with a model (in `model_dir`, else in the run directory)."""
    try:
        from lmscope.tokenizers import load_tokenizer
    except ImportError as exc:
        raise LmscopeError(
            "text prompts need lmscope.tokenizers, which this installation lacks; give token "
            "ids instead (--tokens 1,2,3)."
        ) from exc
    places = [model_dir] + ([Path(run)] if run is not None and Path(run) != model_dir else [])
    first_error: LmscopeError | None = None
    for place in places:
        try:
            return load_tokenizer(place)
        except (LmscopeError, FileNotFoundError) as exc:
            if first_error is None:
                first_error = (
                    exc
                    if isinstance(exc, LmscopeError)
                    else LmscopeError(f"no tokenizer in {place}: {exc}")
                )
    assert first_error is not None
    raise first_error


def load_for_generation(
    run: str | Path, *, need_tokenizer: bool = True
) -> tuple[BaseTransformer, TextTokenizer | None, Path]:
    """Model (eval mode), its tokenizer (None when not needed and not found) and where it is.

    `run` is a model or training-run directory, a ``.gguf`` file, or the name of a real
    model (``smollm2``, ``minilm``: see `lmscope.real_models`).
    """
    from lmscope.io.gguf import is_gguf
    from lmscope.real_models import is_real_model, load_with_tokenizer

    if is_real_model(str(run)) or is_gguf(Path(run)):
        loaded = load_with_tokenizer(run)
        if loaded.tokenizer is None and need_tokenizer:
            raise LmscopeError(f"{loaded.path} carries no tokenizer; give token ids instead.")
        return loaded.model.eval(), loaded.tokenizer, loaded.path
    model_dir = find_model_dir(run)
    model = load(model_dir)
    try:
        tokenizer = find_tokenizer(model_dir, run)
    except LmscopeError:
        if need_tokenizer:
            raise
        tokenizer = None
    return model, tokenizer, model_dir
