"""Writing lmscope models as Hugging Face checkpoints, and `convert` between the formats.

A model is written in the layout of one family (``config.json`` + ``model.safetensors``
that ``transformers.AutoModel*`` load with the same logits). Which family is not
guessable from the config alone (a Llama without biases is also a valid Mistral
without a window), so it comes from, in order: the `family` argument; the Hugging Face
``config.json`` the model came from (`convert` keeps it as ``hf_config.json`` next to an
lmscope save); otherwise the caller is asked for it. The export is checked to describe
the model exactly (`family.check_lossless`), so a model a family cannot express is
refused instead of written approximately.

Keys of the source ``config.json`` that lmscope does not model (token ids,
``architectures``...) are kept; every key lmscope writes is recomputed from the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from lmscope.errors import LmscopeError
from lmscope.io.hf.family import FAMILIES, family_for
from lmscope.io.hf.loader import load_hf, read_hf_config
from lmscope.io.hf.tokenizer import copy_tokenizer_files
from lmscope.model.base import BaseTransformer
from lmscope.serialization import write_json, write_safetensors

#: Where `convert` keeps the Hugging Face config of a model converted to lmscope format.
HF_CONFIG_FILE = "hf_config.json"
#: Keys recomputed on every export (the dtype follows the weights).
_DROPPED = ("torch_dtype", "dtype", "transformers_version", "_name_or_path")


def save_hf(
    model: BaseTransformer,
    path: str | Path,
    *,
    family: str | None = None,
    base_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as a Hugging Face checkpoint of `family` into directory `path`.

    `base_config` is the ``config.json`` the model came from (its other keys are kept;
    its ``model_type`` is the default family).
    """
    base = dict(base_config or {})
    model_type = family or base.get("model_type")
    if model_type is None:
        raise LmscopeError(
            "which Hugging Face family to write is not known for this model; pass "
            f"family= (--family), one of {', '.join(sorted(FAMILIES))}."
        )
    adapter = family_for(model_type, "family")
    cfg = model.cfg
    rules = adapter.rules(cfg)
    # Checked before any tensor is touched: the rules of a family that cannot express
    # the model may name tensors the model does not have.
    config = adapter.hf_config(cfg, {name for rule in rules for name in rule.sources})
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for rule in rules:
        for name, tensor in zip(rule.sources, rule.split(state[rule.target]), strict=True):
            tensors[name] = tensor
    if adapter.headless(cfg):  # a bare base model's checkpoint has no prefix (BertModel)
        tensors = {name.removeprefix(adapter.prefix): t for name, t in tensors.items()}
    if base.get("model_type") not in (None, adapter.model_type):
        base = {}  # another family's keys mean nothing here
    for key in _DROPPED:
        base.pop(key, None)
    config = {**base, **config, "dtype": str(model.dtype).removeprefix("torch.")}
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    write_json(directory / "config.json", config)
    return directory


def is_hf_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a directory with a Hugging Face ``config.json`` (a ``model_type``)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return isinstance(data, dict) and "model_type" in data


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: Literal["hf", "lmscope"] = "lmscope",
    family: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert the model in `src` (either format) to format `to` in `dst`; tokenizer too.

    ``to="lmscope"`` writes ``model.save()`` plus the tokenizer files, and keeps a Hugging
    Face source's ``config.json`` as ``hf_config.json`` so that converting back needs no
    `family`. ``to="hf"`` writes ``config.json`` + ``model.safetensors`` in `family`'s
    layout (default: the source's family).
    """
    from lmscope.io import load  # the dispatcher (native, Hugging Face, GGUF)

    src, dst = Path(src), Path(dst)
    if to not in ("hf", "lmscope"):
        raise LmscopeError(f"convert: to={to!r} is invalid; use 'hf' or 'lmscope'.")
    if dst.exists() and dst.resolve() == src.resolve():
        raise LmscopeError(f"convert: the destination {dst} is the source; choose another.")
    source_hf = is_hf_checkpoint(src)
    base: dict[str, Any] | None = None
    if source_hf:
        base = read_hf_config(src)
    elif (src / HF_CONFIG_FILE).is_file():
        base = json.loads((src / HF_CONFIG_FILE).read_text())
    model = load_hf(src, dtype=dtype) if source_hf else load(src, dtype=dtype)
    if to == "lmscope":
        model.save(dst)
        if base is not None:
            write_json(dst / HF_CONFIG_FILE, base)
    else:
        save_hf(model, dst, family=family, base_config=base)
    copy_tokenizer_files(src, dst)
    return dst


__all__ = ["HF_CONFIG_FILE", "convert", "is_hf_checkpoint", "save_hf"]
