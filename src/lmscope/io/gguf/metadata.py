"""GGUF metadata -> `ModelConfig`, for the architectures lmscope can hold.

llama.cpp writes a model's hyper-parameters under ``{arch}.*`` (``llama.block_count``,
``llama.attention.head_count_kv``...). An architecture is supported when its wiring is
expressible in `ModelConfig`; each is one entry of `FAMILIES`, never a branch on a name
in generic code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError
from lmscope.io.gguf.reader import GGUFFile


@dataclass(frozen=True)
class Family:
    """How one GGUF architecture maps onto lmscope: fixed wiring plus metadata keys."""

    wiring: dict[str, Any]
    #: llama.cpp stores Q and K rows permuted for its interleaved RoPE (see `weights`).
    permuted_qk: bool


#: llama.cpp's ``llama`` architecture (Llama 1-3, Mistral, SmolLM...): RoPE (stored for
#: interleaved pairs, restored to rotate-half), RMSNorm, SwiGLU, no biases.
LLAMA = Family(
    wiring={
        "architecture": "decoder",
        "positional": "rope",
        "rope_layout": "rotate-half",
        "norm": "rmsnorm",
        "activation": "swiglu",
        "qkv_bias": False,
        "attn_out_bias": False,
        "mlp_bias": False,
    },
    permuted_qk=True,
)

FAMILIES: dict[str, Family] = {"llama": LLAMA}


def gguf_family(file: GGUFFile) -> Family:
    """The `Family` of `file`'s architecture; a clear error for the others."""
    arch = file.architecture
    if arch not in FAMILIES:
        raise CheckpointError(
            f"{file.path} holds a {arch!r} model; lmscope loads GGUF architectures "
            f"{', '.join(map(repr, FAMILIES))}."
        )
    return FAMILIES[arch]


def gguf_config(file: GGUFFile) -> ModelConfig:
    """The `ModelConfig` of the model in `file` (shape from metadata, wiring from its family)."""
    family = gguf_family(file)
    arch = file.architecture

    def key(name: str) -> str:
        return f"{arch}.{name}"

    _refuse_unsupported(file, arch)
    d_model = int(file.require(key("embedding_length")))
    n_heads = int(file.require(key("attention.head_count")))
    n_kv_heads = int(file.get(key("attention.head_count_kv"), n_heads))
    d_head = int(file.get(key("attention.key_length"), d_model // n_heads))
    rotary_dim = int(file.get(key("rope.dimension_count"), d_head))
    # The embedding's rows are the truth for the weights (a tokenizer may list fewer).
    embedding = file.tensors.get("token_embd.weight")
    vocab = embedding.shape[0] if embedding is not None else file.get(key("vocab_size"))
    fields: dict[str, Any] = {
        **family.wiring,
        "name": str(file.get("general.name", file.path.stem)),
        "vocab_size": int(
            vocab if vocab is not None else len(file.require("tokenizer.ggml.tokens"))
        ),
        "d_model": d_model,
        "n_layers": int(file.require(key("block_count"))),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_head": d_head,
        "d_mlp": int(file.require(key("feed_forward_length"))),
        "max_seq_len": int(file.get(key("context_length"), 2048)),
        "rope_theta": float(file.get(key("rope.freq_base"), 10000.0)),
        "rotary_fraction": rotary_dim / d_head,
        # Stored as float32 (1e-5 reads 9.99999974e-06): kept as is, as transformers does.
        "norm_eps": float(file.get(key("attention.layer_norm_rms_epsilon"), 1e-5)),
        # llama.cpp writes no output.weight when the head is tied to the embedding.
        "tie_embeddings": "output.weight" not in file.tensors,
    }
    fields |= _rope_scaling(file, arch)
    return ModelConfig(**fields)


def _rope_scaling(file: GGUFFile, arch: str) -> dict[str, Any]:
    kind = str(file.get(f"{arch}.rope.scaling.type", "none"))
    if kind == "none":
        return {}
    if kind != "linear":
        # YaRN in llama.cpp has extra knobs (attention factor, betas) with their own
        # defaults; mapping them unverified would drift silently, so we refuse instead.
        raise CheckpointError(
            f"{file.path} uses RoPE scaling {kind!r}; lmscope's GGUF loader maps 'none' and "
            "'linear'."
        )
    return {
        "rope_scaling": "linear",
        "rope_scaling_factor": float(file.require(f"{arch}.rope.scaling.factor")),
    }


def _refuse_unsupported(file: GGUFFile, arch: str) -> None:
    """Features lmscope's config cannot express, named instead of silently ignored."""
    if int(file.get(f"{arch}.expert_count", 0) or 0) > 0:
        raise CheckpointError(
            f"{file.path} is a mixture-of-experts model (expert_count="
            f"{file.get(f'{arch}.expert_count')}); lmscope's GGUF loader reads dense models only."
        )
    if "rope_freqs.weight" in file.tensors:
        # Llama 3.1-style scaling baked into per-dimension frequency factors.
        raise CheckpointError(
            f"{file.path} carries per-dimension RoPE frequency factors (rope_freqs.weight); "
            "lmscope's GGUF loader does not map them to a rope_scaling yet."
        )
