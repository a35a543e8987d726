"""The models of bench/run_with_cache.py (one random GPT-2 checkpoint loaded into lmscope,
Hugging Face and TransformerLens), the variants' callables and what they cache."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def ensure_checkpoint(directory: Path, shape: dict[str, int], log: Callable[[str], None]) -> None:
    """A random fp32 GPT-2 of `shape` in `directory` (kept while its config matches)."""
    config_path = directory / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if all(saved.get(k) == v for k, v in shape.items()):
            return
    from transformers import GPT2Config, GPT2LMHeadModel

    log(f"writing a random GPT-2 ({shape}) to {directory}")
    torch.manual_seed(0)
    special = min(50256, shape["vocab_size"] - 1)
    config = GPT2Config(**shape, bos_token_id=special, eos_token_id=special)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)


def load_lmscope(directory: Path) -> Any:
    """lmscope's model of the checkpoint (eval mode)."""
    from lmscope.io.hf import load_hf

    return load_hf(directory, dtype=torch.float32).eval()


def load_hf_model(directory: Path) -> Any:
    """Hugging Face's model of the checkpoint, SDPA attention, eval mode."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa").eval()


def load_tl(directory: Path, hf: Any | None = None) -> Any:
    """TransformerLens's HookedTransformer with the checkpoint's weights, unprocessed."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = hf if hf is not None else load_hf_model(directory)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
        n_heads=c.n_head, d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard",
        eps=c.layer_norm_epsilon, device="cpu", default_prepend_bos=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "use TransformerBridge"
        model = HookedTransformer(cfg)
    result = model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    unexpected = [k for k in result.missing_keys if not k.endswith(("mask", "IGNORE", "b_U"))]
    if unexpected or result.unexpected_keys:
        raise RuntimeError(f"TransformerLens weights incomplete: {result}")
    return model.eval()


def names(model: Any) -> dict[str, Any]:
    """The names filters of the variants, from lmscope's model."""
    from lmscope.cache import select_hook_points

    n = model.cfg.n_layers
    return {
        "all": [p.name for p in select_hook_points(model, None)],
        "one": f"blocks.{n // 2}.hook_resid_post",
        "resid": [f"blocks.{i}.hook_resid_{s}" for i in range(n) for s in ("pre", "mid", "post")],
    }


def variant_fns(
    which: Sequence[str], tokens: torch.Tensor, ours: Any, tl: Any, hf: Any, filters: dict
) -> dict[str, Callable[[], Any]]:
    """A no-argument callable per variant, returning what the call returns (kept alive)."""
    table: dict[str, Callable[[], Any]] = {
        "hf forward": lambda: hf(input_ids=tokens, use_cache=False).logits,
        "lmscope forward": lambda: ours(tokens),
        "lmscope cache all": lambda: ours.run_with_cache(tokens),
        "lmscope cache one": lambda: ours.run_with_cache(tokens, names_filter=filters["one"]),
        "lmscope cache resid": lambda: ours.run_with_cache(tokens, names_filter=filters["resid"]),
        "tl forward": lambda: tl(tokens),
        "tl cache all": lambda: tl.run_with_cache(tokens),
        "tl cache same": lambda: tl.run_with_cache(tokens, names_filter=filters["all"]),
        "tl cache resid": lambda: tl.run_with_cache(tokens, names_filter=filters["resid"]),
    }

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad():
                return fn()

        return call

    return {name: no_grad(table[name]) for name in which}


def cached_bytes(result: Any) -> int:
    """Bytes of storage held by a cache (each storage once); 0 for a plain forward."""
    if not isinstance(result, tuple):
        return 0
    cache = result[1]
    tensors = cache.cache_dict.values()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def make_tokens(vocab: int, batch: int, seq: int) -> torch.Tensor:
    """Fixed random tokens ``[batch, seq]`` below `vocab` (seed 0)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, seq), generator=gen)
