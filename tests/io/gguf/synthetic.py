"""Tiny GGUF files written in the tests, with the Hugging Face model they must reproduce.

`tiny_llama_gguf` builds a random 2-layer `transformers` Llama, writes it as llama.cpp's
converter would (``gguf.GGUFWriter``; Q and K rows permuted with the converter's own
``permute``, copied below), quantised per tensor as asked, and gives back the HF model
holding exactly the weights the file stores: quantising works row by row, so
``dequantize(quantize(W))`` of the unpermuted W is what loading must give back.
K-quants have no quantiser in `gguf`; their tensors are random valid blocks instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

#: Hugging Face tensor name -> GGUF name (llama.cpp's ``tensor_mapping.py`` for Llama).
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
K_QUANTS = {"Q4_K", "Q6_K"}

SHAPE = {"vocab": 96, "d_model": 64, "d_mlp": 256, "layers": 2, "heads": 4, "kv_heads": 2}


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf.py`` ``LlamaModel.permute`` (HF -> GGUF row order)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def random_k_blocks(rows: int, cols: int, kind: str, seed: int) -> np.ndarray:
    """Random but valid K-quant blocks: random bits, small finite float16 super-scales."""
    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    n = rows * cols // block
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    scales = rng.normal(0, 0.002, (n, 2)).astype(np.float16).view(np.uint8).reshape(n, 4)
    if kind == "Q4_K":  # d and dmin lead the block
        blocks[:, 0:4] = scales
    else:  # Q6_K: d is the last two bytes
        blocks[:, -2:] = scales[:, :2]
    return blocks.reshape(rows, -1)


def encode(weight: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(what the file stores, the float32 values it decodes to) for one tensor."""
    qtype = gguf.GGMLQuantizationType[kind]
    if kind in K_QUANTS:
        stored = random_k_blocks(*weight.shape, kind, seed)
    else:
        stored = gguf.quants.quantize(weight.astype(np.float32), qtype)
    return stored, gguf.quants.dequantize(stored, qtype).reshape(weight.shape)


def default_metadata() -> dict[str, Any]:
    """The ``llama.*`` keys of the tiny model (values typed by `write_metadata`)."""
    return {
        "general.architecture": "llama",
        "general.name": "tiny-llama",
        "llama.block_count": SHAPE["layers"],
        "llama.context_length": 128,
        "llama.embedding_length": SHAPE["d_model"],
        "llama.feed_forward_length": SHAPE["d_mlp"],
        "llama.attention.head_count": SHAPE["heads"],
        "llama.attention.head_count_kv": SHAPE["kv_heads"],
        "llama.rope.freq_base": 5000.0,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.dimension_count": SHAPE["d_model"] // SHAPE["heads"],
    }


def write_metadata(writer: Any, metadata: Mapping[str, Any]) -> None:
    """Add key-values with GGUF types from the Python values (None: leave the key out)."""
    for key, value in metadata.items():
        if key == "general.architecture" or value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))


def hf_llama(tied: bool, seed: int, vocab_size: int) -> Any:
    """A random tiny `transformers` Llama, norms not all ones (so that a swap would show)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=SHAPE["d_model"],
        intermediate_size=SHAPE["d_mlp"],
        num_hidden_layers=SHAPE["layers"],
        num_attention_heads=SHAPE["heads"],
        num_key_value_heads=SHAPE["kv_heads"],
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    return model


def tiny_llama_gguf(
    path: Path,
    *,
    types: Mapping[str, str] | None = None,
    tied: bool = False,
    metadata: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    extra: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    vocab_size: int = SHAPE["vocab"],
) -> Any:
    """Write a tiny Llama to `path`; return the HF model with the weights the file holds.

    `types`: GGUF tensor kind (``attn_q``, ``ffn_down``, ``token_embd``...) -> ggml type
    name for 2-D tensors (default F32; norms are always F32). `metadata` overrides or
    (with None) removes keys; `tokenizer` adds ``tokenizer.*`` keys; `drop` leaves tensors
    out; `extra` adds tensors (F32); `vocab_size` is the embedding's rows.
    """
    types = dict(types or {})
    hf = hf_llama(tied, seed, vocab_size)
    meta = default_metadata() | dict(metadata or {}) | dict(tokenizer or {})
    writer = gguf.GGUFWriter(str(path), arch=str(meta["general.architecture"]))
    write_metadata(writer, meta)
    reference: dict[str, torch.Tensor] = {}
    for i, (hf_name, tensor) in enumerate(hf.state_dict().items()):
        if hf_name == "lm_head.weight" and tied:
            continue
        name = HF_TO_GGUF.get(hf_name)
        if name is None:
            layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{layer}.{LAYER_TO_GGUF[rest]}"
        weight = tensor.float().numpy()
        kind = name.split(".")[-2]
        qtype = types.get(kind, "F32") if weight.ndim == 2 else "F32"
        heads = {"attn_q": SHAPE["heads"], "attn_k": SHAPE["kv_heads"]}.get(kind)
        if heads and qtype in K_QUANTS:
            raise ValueError("K-quant blocks are random: use them on unpermuted tensors only")
        stored, values = encode(weight, qtype, seed + i)
        reference[hf_name] = torch.from_numpy(np.ascontiguousarray(values))
        if heads:
            # Quantisation is row by row, so permuting the rows commutes with it.
            stored = permute(stored, heads)
        if name in drop:
            continue
        raw = None if qtype in ("F32", "F16") else gguf.GGMLQuantizationType[qtype]
        writer.add_tensor(name, stored, raw_dtype=raw)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hf.load_state_dict(reference, strict=False)
    return hf


TRAINING_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. 12345 67890 2024 "
    "You are all resolved rather to die than to famish? It's they're we'll I'd. "
    "Ünïcödé façade naïve 日本語 🤗 \t\n\n  spaces   and 3.14159 1,000,000 "
) * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
)


def trained_tokenizer_metadata(
    pre: str, model: str = "gpt2", vocab_size: int = 400
) -> dict[str, Any]:
    """``tokenizer.*`` keys of a byte-level BPE trained on `TRAINING_TEXT` (with a chat
    template; ``<|endoftext|>`` is a control token and the eos)."""
    from lmscope.tokenizers import train_bpe

    trained = train_bpe([TRAINING_TEXT], vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    spec = json.loads(trained.hf.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {
        "tokenizer.ggml.model": model,
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3 if t == "<|endoftext|>" else 1 for t in tokens],
        "tokenizer.ggml.eos_token_id": vocab["<|endoftext|>"],
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
