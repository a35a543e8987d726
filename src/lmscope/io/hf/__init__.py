"""Hugging Face checkpoints in and out: one small adapter module per family.

`load_hf(dir)` reads a directory with a ``config.json`` (``model_type``) and weights
(``model.safetensors``, sharded safetensors, or ``pytorch_model.bin`` read with
``torch.load(weights_only=True)``) into an lmscope model with every hook point;
`save_hf(model, dir, family=...)` writes one back; `convert` does either from the
command line (``lmscope convert``).

Families (``model_type``): gpt2, gptj, gpt_neox (Pythia), llama, mistral, qwen2, gemma,
mixtral, bert, t5. Anything else, or an option of these that lmscope does not
implement, is refused with a message saying what is supported.
"""

from __future__ import annotations

# Importing the family modules registers them in FAMILIES.
from lmscope.io.hf import bert, gemma, gpt2, gpt_neox, gptj, llama, mistral, mixtral, qwen2, t5
from lmscope.io.hf.export import HF_CONFIG_FILE, convert, is_hf_checkpoint, save_hf
from lmscope.io.hf.family import FAMILIES, Family, UnsupportedCheckpointError, family_for
from lmscope.io.hf.loader import hf_model_config, load_hf, read_hf_config
from lmscope.io.hf.reader import CheckpointReader
from lmscope.io.hf.tokenizer import copy_tokenizer_files, hf_tokenizer

#: The family modules, by model_type (each is a small, readable adapter).
MODULES = {
    "bert": bert,
    "gemma": gemma,
    "gpt2": gpt2,
    "gpt_neox": gpt_neox,
    "gptj": gptj,
    "llama": llama,
    "mistral": mistral,
    "mixtral": mixtral,
    "qwen2": qwen2,
    "t5": t5,
}


def supported_model_types() -> list[str]:
    """The ``model_type`` values lmscope loads."""
    return sorted(FAMILIES)


__all__ = [
    "FAMILIES",
    "HF_CONFIG_FILE",
    "MODULES",
    "CheckpointReader",
    "Family",
    "UnsupportedCheckpointError",
    "convert",
    "copy_tokenizer_files",
    "family_for",
    "hf_model_config",
    "hf_tokenizer",
    "is_hf_checkpoint",
    "load_hf",
    "read_hf_config",
    "save_hf",
    "supported_model_types",
]
