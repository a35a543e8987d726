"""GGUF tensors -> lmscope's state dict: names, fused matrices, and llama.cpp's Q/K permutation.

lmscope fuses what GGUF stores apart: ``attn.qkv.weight`` is the rows
``[W_q; W_k; W_v]`` and a gated MLP's ``fc_in.weight`` is ``[W_gate; W_up]``. Each
target tensor is allocated once and every source is dequantised straight into its rows,
tensor by tensor, so loading never holds more than the model plus one tensor's
temporaries.

**Why Q and K are permuted.** ggml's default RoPE rotates interleaved pairs of a head's
dims (2i, 2i+1), while Hugging Face's Llama (and lmscope's ``rope_layout="rotate-half"``)
rotates (i, i + d/2). llama.cpp's converter (``convert_hf_to_gguf.py``, ``permute``)
therefore reorders the rows of W_q and W_k within each head: HF row ``j * d/2 + i``
(half j, pair i) becomes GGUF row ``2i + j``. We apply the inverse, which gives back
the Hugging Face checkpoint's exact weights, so per-dimension activations (``hook_q``,
``hook_k``) mean what they mean in transformers and TransformerLens. (Loading with
``rope_layout="interleaved"`` and no permutation would give the same logits up to
rounding, but with the query/key dims of every head in a different order.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError
from lmscope.io.gguf.dequant import QUANT_TYPES, SUPPORTED_TYPES, dequantize
from lmscope.io.gguf.reader import GGUFFile


@dataclass(frozen=True)
class Source:
    """One GGUF tensor that fills rows of a target; `heads` > 0 undoes the Q/K permutation."""

    name: str
    rows: int
    heads: int = 0


def llama_plan(cfg: ModelConfig, permuted_qk: bool) -> dict[str, list[Source]]:
    """lmscope parameter name -> the GGUF tensors whose rows it stacks, for the Llama family."""
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    q_heads, kv_heads = (cfg.n_heads, cfg.kv_heads) if permuted_qk else (0, 0)
    plan = {
        "embed.weight": [Source("token_embd.weight", cfg.vocab_size)],
        "ln_final.weight": [Source("output_norm.weight", cfg.d_model)],
    }
    if not cfg.tie_embeddings:
        plan["unembed.weight"] = [Source("output.weight", cfg.vocab_size)]
    for i in range(cfg.n_layers):
        src, dst = f"blk.{i}.", f"blocks.{i}."
        plan[dst + "ln1.weight"] = [Source(src + "attn_norm.weight", cfg.d_model)]
        plan[dst + "attn.qkv.weight"] = [
            Source(src + "attn_q.weight", q_rows, q_heads),
            Source(src + "attn_k.weight", kv_rows, kv_heads),
            Source(src + "attn_v.weight", kv_rows),
        ]
        plan[dst + "attn.out.weight"] = [Source(src + "attn_output.weight", cfg.d_model)]
        plan[dst + "ln2.weight"] = [Source(src + "ffn_norm.weight", cfg.d_model)]
        plan[dst + "mlp.fc_in.weight"] = [
            Source(src + "ffn_gate.weight", cfg.mlp_dim),
            Source(src + "ffn_up.weight", cfg.mlp_dim),
        ]
        plan[dst + "mlp.fc_out.weight"] = [Source(src + "ffn_down.weight", cfg.d_model)]
    return plan


def unpermute_rows(weight: Tensor, heads: int, out: Tensor | None = None) -> Tensor:
    """Undo llama.cpp's per-head row permutation of W_q / W_k (see the module docstring).

    `weight`: ``[heads * d_head, d_in]`` in GGUF order; the result (or `out`) is in
    Hugging Face order. GGUF row ``h, 2i + j`` goes to HF row ``h, j * d_head/2 + i``.
    """
    rows, cols = weight.shape
    half = rows // heads // 2
    hf_order = weight.view(heads, half, 2, cols).transpose(1, 2)  # [head, j, i, col]
    if out is None:
        return hf_order.reshape(rows, cols)
    out.view(heads, 2, half, cols).copy_(hf_order)
    return out


def gguf_state_dict(
    file: GGUFFile,
    plan: dict[str, list[Source]],
    shapes: dict[str, tuple[int, ...]],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, Tensor]:
    """Dequantise every tensor of `plan` into fresh `dtype` tensors of `shapes` on `device`.

    Raises a `CheckpointError` naming each missing or mis-shaped GGUF tensor, and any that
    the plan does not use (a feature the model would silently lose).
    """
    _check_sources(file, plan, shapes)
    state: dict[str, Tensor] = {}
    for target, sources in plan.items():
        # Fresh (64-byte aligned) memory: MKL rounds differently on unaligned data.
        out = torch.empty(shapes[target], dtype=dtype, device=device)
        start = 0
        for source in sources:
            tensor = file.tensors[source.name]
            rows = out[start : start + source.rows]
            if source.heads:
                decoded = dequantize(
                    tensor.raw, tensor.type_id, tensor.shape, dtype=dtype, device=device
                )
                unpermute_rows(decoded, source.heads, out=rows)
            else:
                dequantize(tensor.raw, tensor.type_id, tensor.shape, out=rows)
            start += source.rows
        state[target] = out
    return state


def _check_sources(
    file: GGUFFile, plan: dict[str, list[Source]], shapes: dict[str, tuple[int, ...]]
) -> None:
    problems: list[str] = []
    used: set[str] = set()
    for target, sources in plan.items():
        cols = shapes[target][1:]
        for source in sources:
            used.add(source.name)
            tensor = file.tensors.get(source.name)
            expected = (source.rows, *cols)
            if tensor is None:
                problems.append(f"missing tensor {source.name!r} (for {target})")
            elif tensor.shape != expected:
                problems.append(
                    f"tensor {source.name!r} has shape {list(tensor.shape)}, expected "
                    f"{list(expected)} (for {target})"
                )
    known = {t.name for t in QUANT_TYPES.values()}
    unsupported = sorted({t.type_name for t in file.tensors.values() if t.name in used} - known)
    if unsupported:
        problems.append(
            f"tensor types {', '.join(unsupported)} are not supported (lmscope dequantises "
            f"{SUPPORTED_TYPES})"
        )
    extra = [name for name in file.tensors if name not in used]
    if extra:
        problems.append(f"tensors lmscope has no place for: {_listed(extra)}")
    if problems:
        raise CheckpointError(f"{file.path} does not fit the model: {'; '.join(problems)}.")


def _listed(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
