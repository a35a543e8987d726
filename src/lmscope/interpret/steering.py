"""Steering: add a direction to the residual stream and watch the model's output move.

Activation addition (Turner et al. 2023, "ActAdd") takes the difference of the
activations of two contrasting prompts ("Love" - "Hate") at one layer and adds a
multiple of it back at that layer while the model runs. `steering_vector` builds the
direction as a difference of means over two prompt sets (Rimsky et al. 2023 and later
work average over many pairs, which is less noisy than one pair): each prompt gives its
activation at the last token, or the mean over its tokens, and the vector is
``mean(positive) - mean(negative)``. Unlike the original ActAdd, which pads the two
prompts to one length and adds the per-position difference to the first positions, the
vector here is one [d_model] direction, added at every steered position.

`steer` is a context manager that adds ``coefficient * vector`` at the vector's hook
point. It works during `generate`, which runs through the KV cache: the prompt's
forward pass (the prefill) and each new token's pass all go through the hook. With
``positions="all"`` every position is steered, prompt included; with ``positions="new"``
only the generated tokens are (forward passes that extend a KV cache already holding the
prompt), so the first new token is still predicted from an unsteered prompt; an integer
``positions=p`` steers absolute positions ``>= p`` of any forward pass, which is how
generation with ``"new"`` is reproduced without a cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.cache import get_act_name
from lmscope.errors import LmscopeError
from lmscope.generate import generate
from lmscope.generate.prompts import Prompts, prompt_rows
from lmscope.hooks import HookPoint
from lmscope.interpret.activations import collect_activations
from lmscope.interpret.indices import check_layer
from lmscope.serialization import read_safetensors, write_json, write_safetensors

#: Hooks whose activation is [batch, pos, d_model], where a steering vector can be added.
STEERING_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Which positions `steer` changes: all, only generated tokens, or absolute index >= p.
SteerPositions = Literal["all", "new"] | int
_FILES = ("steering_vector.safetensors", "steering_vector.json")


@dataclass
class SteeringVector:
    """A direction [d_model] to add at hook point `hook` (in block `layer`), with metadata."""

    vector: Float[Tensor, " d_model"]
    hook: str
    layer: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor) or self.vector.dim() != 1:
            raise LmscopeError("a steering vector must be a 1-D tensor [d_model].")
        if not bool(torch.isfinite(self.vector).all()):
            raise LmscopeError("the steering vector holds NaN or infinite values.")

    @property
    def norm(self) -> float:
        """Euclidean norm of the vector."""
        return float(self.vector.double().norm())

    def save(self, path: str | Path) -> Path:
        """Write directory `path`: the vector as safetensors, hook/layer/metadata as JSON."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        write_safetensors({"vector": self.vector.cpu()}, directory / _FILES[0])
        info = {"hook": self.hook, "layer": self.layer, "metadata": self.metadata}
        write_json(directory / _FILES[1], info)
        return directory

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by `save`."""
        directory = Path(path)
        missing = [name for name in _FILES if not (directory / name).is_file()]
        if missing:
            raise LmscopeError(
                f"{directory} is not a saved steering vector: {', '.join(missing)} missing."
            )
        info = json.loads((directory / _FILES[1]).read_text())
        vector = read_safetensors(directory / _FILES[0])["vector"]
        return cls(vector, info["hook"], info.get("layer"), info.get("metadata", {}))


def steering_hook_name(model: Any, layer: int, hook: str) -> tuple[str, int]:
    """The full hook name and layer index for `hook` ("resid_pre" ...) at block `layer`.

    A full name (``blocks.3.hook_resid_post``) is taken as it is; its layer is read from it.
    """
    if "." in hook:
        model.resolve_hooks(hook)
        match = re.match(r"blocks\.(\d+)\.", hook)
        return hook, int(match.group(1)) if match else layer
    if hook not in STEERING_HOOKS:
        raise LmscopeError(
            f"hook={hook!r} cannot be steered: use one of {', '.join(STEERING_HOOKS)} "
            "(activations [batch, pos, d_model]) or a full hook name."
        )
    layer = check_layer(model, layer)
    name = get_act_name(hook, layer)
    model.resolve_hooks(name)  # e.g. no resid_mid in attention-only blocks
    return name, layer


def steering_vector(
    model: Any,
    tokenizer: Any | None,
    positive: Prompts,
    negative: Prompts,
    *,
    layer: int,
    hook: str = "resid_pre",
    position: Literal["last", "mean"] = "last",
    prefix: str | Sequence[int] | None = None,
    batch_size: int = 16,
) -> SteeringVector:
    """Difference of means of the activations at `hook` of block `layer`.

    `positive` and `negative` are prompts (one text, texts, or token ids; any number
    each, ActAdd's single pair "Love" / "Hate" included). Each prompt contributes its
    activation at its last token (`position="last"`) or its mean over its tokens
    ("mean"). `prefix` (text or token ids, typically ``[tokenizer.bos_id]``) is put
    before every prompt and never read: in many models the first position is an
    attention sink with a residual norm tens of times the others', so a one-token prompt
    read at position 0 would give a vector made of that norm, not of the word.
    """
    if position not in ("last", "mean"):
        raise LmscopeError(f"position={position!r} is invalid: use 'last' or 'mean'.")
    name, layer = steering_hook_name(model, layer, hook)
    head = prompt_rows(prefix, tokenizer)[0] if prefix is not None and len(prefix) else []
    means = []
    for prompts in (positive, negative):
        rows = [head + row for row in prompt_rows(prompts, tokenizer)]
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        # Every real token, row after row: split per prompt and drop the prefix.
        acts = collect_activations(model, batches, name, positions="all", progress=False)[name]
        if acts.dim() != 2:
            raise LmscopeError(f"{name} is not [batch, pos, d_model]; it cannot hold a direction.")
        per_prompt = torch.split(acts.float(), [len(row) for row in rows])
        read = [a[-1] if position == "last" else a[len(head) :].mean(0) for a in per_prompt]
        means.append(torch.stack(read).mean(0))
    metadata = {
        "method": "difference of means",
        "position": position,
        "prefix": _describe(prefix)[0] if prefix is not None else None,
        "positive": _describe(positive),
        "negative": _describe(negative),
        "model": getattr(getattr(model, "cfg", None), "name", None),
    }
    return SteeringVector(means[0] - means[1], name, layer, metadata)


def _describe(prompts: Prompts) -> list[Any]:
    """Prompts as JSON-ready metadata (texts, or id lists)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and all(isinstance(t, int) for t in prompts):
        return [list(prompts)]
    if isinstance(prompts, Tensor):
        return prompts.tolist()
    return [p if isinstance(p, str | int) else list(p) for p in prompts]


def _add_from(x: Tensor, start: int, delta: Tensor) -> Tensor:
    """`x` with `delta` added at positions ``start:`` only (not in place: x may be reused)."""
    if start <= 0:
        return x + delta
    return torch.cat([x[:, :start], x[:, start:] + delta], dim=1)


@contextmanager
def steer(
    model: nn.Module,
    vector: SteeringVector,
    coefficient: float = 1.0,
    *,
    positions: SteerPositions = "all",
) -> Iterator[None]:
    """Add ``coefficient * vector.vector`` at ``vector.hook`` inside the ``with`` block.

    Hooks are removed on exit, also when the block raises. Coefficient 0 leaves every
    activation exactly as it was. See the module docstring for `positions`.
    """
    if not (positions in ("all", "new") or (isinstance(positions, int) and positions >= 0)):
        raise LmscopeError(
            f"positions={positions!r} is invalid: use 'all', 'new', or a position index >= 0."
        )
    d_model = vector.vector.shape[0]
    offset = {"past": 0}  # cached positions before the current forward pass
    deltas: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def add(x: Tensor, hook: HookPoint) -> Tensor | None:
        if x.dim() != 3 or x.shape[-1] != d_model:
            raise LmscopeError(
                f"{hook.name} has shape {list(x.shape)}; a steering vector of size {d_model} "
                "needs [batch, pos, d_model]."
            )
        key = (x.dtype, x.device)
        if key not in deltas:
            deltas[key] = (coefficient * vector.vector.double()).to(x.dtype).to(x.device)
        if positions == "all":
            return x + deltas[key]
        if positions == "new":
            return x + deltas[key] if offset["past"] > 0 else None
        start = int(positions) - offset["past"]
        return _add_from(x, start, deltas[key]) if start < x.shape[1] else None

    def record(_module: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("kv_cache")
        offset["past"] = cache.length if cache is not None else 0

    handle = None
    if positions != "all":
        if getattr(getattr(model, "cfg", None), "architecture", None) == "encoder-decoder":
            raise LmscopeError(
                "positions='new' or an index needs a decoder-only or encoder-only model; "
                "steer an encoder-decoder with positions='all'."
            )
        # The KV cache's fill level is only visible to the model's forward call.
        handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with model.hooks(fwd_hooks=[(vector.hook, add)]):  # type: ignore[operator]
            yield
    finally:
        if handle is not None:
            handle.remove()


def generate_steered(
    model: Any,
    tokenizer: Any,
    prompt: Prompts,
    vector: SteeringVector,
    coefficients: Sequence[float],
    *,
    positions: SteerPositions = "all",
    **gen_kwargs: Any,
) -> dict[float, list[str]]:
    """Texts generated under each coefficient: ``{coefficient: [text per prompt/sample]}``.

    `gen_kwargs` go to `generate` (max_new_tokens, temperature, seed ...); the same seed
    is used for every coefficient, so differences come from the steering alone.
    """
    if tokenizer is None:
        raise LmscopeError(
            "generate_steered returns text and needs a tokenizer; for token ids use "
            "`with steer(model, vector, c): model.generate(...)`."
        )
    if not coefficients:
        raise LmscopeError("give at least one coefficient.")
    out: dict[float, list[str]] = {}
    for coefficient in coefficients:
        with steer(model, vector, coefficient, positions=positions):
            result = generate(model, prompt, tokenizer=tokenizer, **gen_kwargs)
        assert result.texts is not None
        out[float(coefficient)] = result.texts
    return out


__all__ = [
    "STEERING_HOOKS",
    "SteerPositions",
    "SteeringVector",
    "generate_steered",
    "steer",
    "steering_hook_name",
    "steering_vector",
]
