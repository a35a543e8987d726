"""End to end: train SAEs on a model's activations in one call (what ``lmscope sae train`` runs).

`train_on_model(model, tokenizer, ["blocks.2.hook_resid_post"], arch="topk", k=32,
width="8x")` builds an `ActivationStore` over the data (default: the Shakespeare
corpus), optionally caching the activations on disk first (`cache_dir`: built once,
reused by later runs on the same hooks), makes one SAE per hook with
`SAEConfig`, and trains them together with `train_saes` (one pass over the data feeds
every SAE). Activations are normalised to mean norm sqrt(d_in) by default; the factor
is recorded in each SAE's config, which applies it internally, so the saved SAE takes
and returns raw activations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from lmscope.data import default_corpus
from lmscope.hooks import HookedModule
from lmscope.sae.activation_store import ActivationStore, cache_activations
from lmscope.sae.base import SAE, SAEError
from lmscope.sae.build import build_sae
from lmscope.sae.config import SAEConfig
from lmscope.sae.disk_cache import DiskActivations, is_activation_cache
from lmscope.sae.token_source import TokenSourceLike
from lmscope.sae.trainer import SAETrainResult, train_sae, train_saes
from lmscope.tokenizers import Tokenizer


def parse_width(width: str | int | float) -> dict[str, Any]:
    """``"8x"`` -> ``{"expansion_factor": 8.0}``; ``"4096"`` or 4096 -> ``{"d_sae": 4096}``."""
    text = str(width).strip().lower()
    try:
        if text.endswith("x"):
            factor = float(text[:-1])
            if factor > 0:
                return {"expansion_factor": factor}
        elif float(text).is_integer() and int(float(text)) > 0:
            return {"d_sae": int(float(text))}
    except ValueError:
        pass
    raise SAEError(
        f"width {width!r} is invalid: give a multiple of the input width such as 8x, or a "
        "number of latents such as 4096."
    )


def default_data(data: TokenSourceLike | None) -> TokenSourceLike:
    """`data`, or the Shakespeare corpus when None."""
    return default_corpus() if data is None else data


def describe_data(data: TokenSourceLike | None) -> Any:
    """A JSON-able note of where the data came from (saved in the SAE's metadata)."""
    if data is None:
        return None
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, Sequence) and all(isinstance(d, (str, Path)) for d in data):
        return [str(d) for d in data]
    return type(data).__name__


def train_on_model(
    model: HookedModule,
    tokenizer: Tokenizer | None,
    hook_names: str | Sequence[str],
    data: TokenSourceLike | None = None,
    *,
    arch: str = "topk",
    k: float | None = None,
    width: str | int = "8x",
    l1_coefficient: float | None = None,
    n_tokens: int = 1_000_000,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    context_size: int = 128,
    batch_size: int = 4096,
    buffer_tokens: int = 1 << 16,
    normalize: bool = True,
    seed: int = 0,
    model_name: str | None = None,
    run: str | None = None,
    progress: bool = False,
    console: Console | None = None,
    resume: bool = True,
    **settings: Any,
) -> SAETrainResult:
    """Train one SAE per hook on `model`'s activations over `n_tokens` tokens of `data`.

    `arch`, `k`, `width` ("8x" or a latent count) and `l1_coefficient` shape the SAEs;
    `settings` go to `SAETrainConfig` (lr, lr_warmup_steps, ...). With `cache_dir` the
    activations are computed once into an on-disk cache there (or read from it when it
    already holds these hooks). `model_name` / `run` are recorded in each SAE's config.
    """
    hooks = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    if not hooks:
        raise SAEError("name at least one hook point to train an SAE on.")
    if arch in ("topk", "batchtopk") and k is None:
        raise SAEError(f"the {arch} SAE needs k (latents per input), e.g. -k 32.")
    if tokenizer is None and data is None:
        raise SAEError(
            "this model has no tokenizer to read the default corpus with: pass data (a "
            "directory made by `lmscope data prepare`, or token tensors)."
        )
    source = default_data(data)
    store_args: dict[str, Any] = {
        "store_batch_size": batch_size,
        "buffer_tokens": max(buffer_tokens, 2 * batch_size),
        "normalize": "expected_average_only_in" if normalize else None,
        "seed": seed,
    }
    if cache_dir is not None:
        if not is_activation_cache(cache_dir):
            cache_activations(
                model, tokenizer, source, hooks, cache_dir, n_tokens=n_tokens,
                context_size=context_size,
            )  # fmt: skip
        DiskActivations(cache_dir).check_hooks(hooks)
        store = ActivationStore(None, None, cache_dir, hooks, **store_args)
    else:
        store = ActivationStore(
            model, tokenizer, source, hooks, context_size=context_size, **store_args
        )
    saes: dict[str, SAE] = {}
    for hook in hooks:
        layer = re.match(r"blocks\.(\d+)\.", hook)
        fields: dict[str, Any] = {
            "d_in": store.d_in[hook],
            "arch": arch,
            "k": k,
            "hook_name": hook,
            "hook_layer": int(layer.group(1)) if layer else None,
            "model_name": model_name,
            "run": run,
            "context_size": context_size,
            "metadata": {"data": describe_data(data)},
            **parse_width(width),
        }
        if l1_coefficient is not None:
            fields["l1_coefficient"] = l1_coefficient
        saes[hook] = build_sae(SAEConfig(**fields), seed=seed, device=_device(model))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)  # metrics.jsonl is appended from step 1
    common: dict[str, Any] = {
        "out": out,
        "resume": resume,
        "progress": progress,
        "console": console,
        "total_tokens": n_tokens,
        "seed": seed,
        **settings,
    }
    if len(hooks) == 1:
        return train_sae(saes[hooks[0]], store, **common)
    return train_saes(saes, store, **common)


def _device(model: HookedModule) -> Any:
    return next(model.parameters()).device


__all__ = ["default_data", "describe_data", "parse_width", "train_on_model"]
