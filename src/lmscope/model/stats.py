"""Where a model's parameters, compute and memory go.

- Parameters by component, each counted once (a tied unembedding is the embedding).
- Forward FLOPs per token: 2 per multiply-accumulate of every matmul a token goes
  through (active experts only for MoE), plus attention's ``QK^T`` and ``pattern @ V``
  over a context of ``seq_len`` keys, counted in full as PaLM's and nanoGPT's MFU
  estimates do (a causal model skips about half of it). Training is about 3x forward.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lmscope.model.attention import Attention
from lmscope.model.embedding import Unembed
from lmscope.model.moe import MoE
from lmscope.model.norm import LayerNorm, RMSNorm

COMPONENTS = ("embedding", "positional", "attention", "mlp", "norm", "unembedding")


def _component(name: str, module: nn.Module) -> str | None:
    """Component of a module, by its type and place in the model."""
    if isinstance(module, LayerNorm | RMSNorm):
        return "norm"
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("pos_embed", "relative") or leaf.endswith("pos_bias"):
        return "positional"
    if leaf in ("embed", "token_type_embed"):
        return "embedding"
    if leaf in ("unembed", "mlm_head"):
        return "unembedding"
    if isinstance(module, Attention):
        return "attention"
    if leaf == "mlp":
        return "mlp"
    return None


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter count of each component (tied weights counted once)."""
    counts = dict.fromkeys(COMPONENTS, 0)
    seen: set[int] = set()
    owner: dict[str, str] = {}
    for name, module in model.named_modules():
        comp = _component(name, module)
        parent = owner.get(name.rsplit(".", 1)[0]) if "." in name else None
        owner[name] = comp or parent or "other"
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            key = owner[name]
            counts[key] = counts.get(key, 0) + p.numel()
    return {k: v for k, v in counts.items() if v or k in COMPONENTS}


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Forward FLOPs for one token with `seq_len` keys in context."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            flops = 2 * module.in_features * module.out_features
            if ".experts." in name:
                moe = model.get_submodule(name.split(".experts.")[0])
                assert isinstance(moe, MoE)
                flops = flops * moe.k / moe.n_experts  # only the chosen experts run
            total += flops
        elif isinstance(module, Attention):
            total += 2 * 2 * module.n_heads * module.d_head * seq_len
        elif isinstance(module, Unembed):  # a matmul even when its weight is tied
            total += 2 * module.d_model * module.vocab_size
    return int(total)


def hook_name_patterns(names: list[str]) -> list[str]:
    """Hook names with layer indices folded: ``blocks.{i}.hook_resid_pre``..."""
    patterns: dict[str, None] = {}
    for name in names:
        patterns[re.sub(r"^(blocks|encoder|decoder)\.\d+\.", r"\1.{i}.", name)] = None
    return list(patterns)


def summary(model: nn.Module, seq_len: int | None = None) -> dict[str, Any]:
    """Parameters by component, FLOPs per token, KV-cache bytes and hook names of `model`."""
    cfg = model.cfg  # type: ignore[attr-defined]
    seq_len = seq_len or cfg.max_seq_len
    parts = param_breakdown(model)
    total = sum(parts.values())
    names = model.hook_names()  # type: ignore[attr-defined]
    return {
        "name": cfg.name,
        "architecture": cfg.architecture,
        "params": {
            "total": total,
            "by_component": parts,
            "percent": {k: 100.0 * v / total for k, v in parts.items()} if total else {},
            "tied_embeddings": cfg.tie_embeddings,
        },
        "flops_per_token": {
            "seq_len": seq_len,
            "forward": flops_per_token(model, seq_len),
            "training": 3 * flops_per_token(model, seq_len),
        },
        "kv_cache_bytes_per_token": {
            "float32": model.kv_cache_bytes_per_token(torch.float32),  # type: ignore[attr-defined]
            "bfloat16": model.kv_cache_bytes_per_token(torch.bfloat16),  # type: ignore[attr-defined]
        },
        "hooks": {"count": len(names), "patterns": hook_name_patterns(names)},
    }
