"""Splicing an SAE into the forward pass, and editing its features: ablate, clamp, steer.

``with splice_sae(model, sae) as spliced:`` replaces the activation at
``sae.cfg.hook_name`` by the SAE's reconstruction plus its error term
``x - sae(x)``. The output is then the clean model's (to float rounding) until a feature
is edited, and an edit changes it by exactly that edit's effect: the error term holds
whatever the SAE does not explain, so only the edited feature moves. With
``keep_error=False`` the reconstruction alone replaces the activation (what "loss with
the SAE spliced in" measures).

Edits act on the SAE's latents (its ``hook_sae_acts_post``), at every position:

- `Splice.ablate_features([f, ...])`: latent f is set to 0;
- `Splice.clamp_features({f: value})`: latent f is set to `value`;
- `Splice.steer_with_feature(f, coefficient)`: latent f is raised by `coefficient`,
  which adds ``coefficient * W_dec[f]`` to the activation (divided by the SAE's input
  normalisation factor, if it has one, so the addition is in raw units).

Everything is a hook, so it is active for any forward in the ``with`` block: plain
calls, `run_with_cache`, and `lmscope.generate.generate`, where the hook fires on the
prefill and again on every KV-cached decoding step (each position's edit depends only
on that position, so cached decoding equals recomputing the whole sequence).

A transcoder (``hook_name_out`` in its config) is spliced from its input hook to its
output hook: the output activation is replaced by the transcoder's reconstruction of
the input plus the error ``output - transcoder(input)``.

The error term is not detached: until an edit, gradients through the spliced model are
the clean model's too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from lmscope.hooks import HookedModule, HookHandle, HookPoint
from lmscope.sae.base import SAE, SAEError


class Splice:
    """An SAE spliced into a model: the feature edits in force (see the module docstring)."""

    def __init__(self, model: HookedModule, sae: SAE, keep_error: bool) -> None:
        self.model, self.sae, self.keep_error = model, sae, keep_error
        self.ablated: set[int] = set()
        self.clamped: dict[int, float] = {}
        self.steered: dict[int, float] = {}

    # --- edits ------------------------------------------------------------------------------
    def _checked(self, feature: int) -> int:
        if isinstance(feature, bool) or not 0 <= int(feature) < self.sae.d_sae:
            raise SAEError(
                f"feature {feature!r} does not exist: this SAE has features 0 to "
                f"{self.sae.d_sae - 1}."
            )
        return int(feature)

    def ablate_features(self, features: int | Iterable[int]) -> Splice:
        """Set these features' activations to 0 at every position; returns self."""
        for f in [features] if isinstance(features, int) else features:
            self.ablated.add(self._checked(f))
        return self

    def clamp_features(self, values: Mapping[int, float]) -> Splice:
        """Set each feature's activation to its value at every position; returns self."""
        for f, value in values.items():
            self.clamped[self._checked(f)] = float(value)
        return self

    def steer_with_feature(self, feature: int, coefficient: float) -> Splice:
        """Add ``coefficient * W_dec[feature]`` at every position (latent += coefficient)."""
        f = self._checked(feature)
        self.steered[f] = self.steered.get(f, 0.0) + float(coefficient)
        return self

    def clear_edits(self) -> Splice:
        """Drop every edit: the spliced model is back to the clean one."""
        self.ablated.clear()
        self.clamped.clear()
        self.steered.clear()
        return self

    @property
    def editing(self) -> bool:
        """Whether any edit is in force."""
        return bool(self.ablated or self.clamped or self.steered)

    def edit_latents(self, acts: Tensor, _hook: HookPoint | None = None) -> Tensor:
        """The latents with every edit applied (a hook on ``hook_sae_acts_post``)."""
        if not self.editing:
            return acts
        acts = acts.clone()
        if self.ablated:
            acts[..., sorted(self.ablated)] = 0.0
        for f, value in self.clamped.items():
            acts[..., f] = value
        for f, coefficient in self.steered.items():
            acts[..., f] += coefficient
        return acts

    # --- the replacement --------------------------------------------------------------------
    def reconstruct(self, x: Tensor, out: Tensor) -> Tensor:
        """What the spliced model sees instead of `out` (= `x` for an SAE, the output
        activation for a transcoder whose input is `x`)."""
        recon = self.sae(x)
        if self.keep_error:
            if self.editing:
                with self.sae.hooks_paused():
                    clean = self.sae(x)
            else:
                clean = recon  # no edit: the reconstruction is the clean one
            recon = recon + (out.to(recon.dtype) - clean)
        return recon.to(out.dtype)


@contextmanager
def splice_sae(
    model: HookedModule, sae: SAE, *, keep_error: bool = True, hook_name: str | None = None
) -> Iterator[Splice]:
    """Splice `sae` into `model` at ``sae.cfg.hook_name`` (or `hook_name`) for the block.

    Yields the `Splice`, whose `ablate_features` / `clamp_features` /
    `steer_with_feature` edit features from then on. Hooks are removed on exit, also
    when the body raises.
    """
    name = hook_name or sae.cfg.hook_name
    if name is None:
        raise SAEError(
            "this SAE does not say which hook point it reads (cfg.hook_name is empty); pass "
            "hook_name=, e.g. 'blocks.2.hook_resid_post'."
        )
    out_name = sae.cfg.hook_name_out if sae.cfg.is_transcoder else name
    if sae.cfg.is_transcoder and out_name is None:
        raise SAEError("this transcoder's config has no hook_name_out to write to.")
    assert out_name is not None
    point = model.resolve_hooks(name)[0]
    out_point = model.resolve_hooks(out_name)[0]
    splice = Splice(model, sae, keep_error)
    inputs: list[Tensor] = []

    def read_input(x: Tensor, _hook: HookPoint) -> None:
        inputs[:] = [x]

    def replace(out: Tensor, _hook: HookPoint) -> Tensor:
        x = inputs.pop() if sae.cfg.is_transcoder else out
        return splice.reconstruct(x, out)

    handles: list[HookHandle] = [sae.hook_sae_acts_post.add_hook(splice.edit_latents)]
    try:
        if sae.cfg.is_transcoder:
            handles.append(point.add_hook(read_input))
        handles.append(out_point.add_hook(replace))
        yield splice
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def ablate_features(
    model: HookedModule, sae: SAE, features: int | Iterable[int], *, keep_error: bool = True
) -> Iterator[Splice]:
    """``splice_sae`` with `features` ablated (set to 0) for the block."""
    with splice_sae(model, sae, keep_error=keep_error) as splice:
        yield splice.ablate_features(features)


@contextmanager
def clamp_features(
    model: HookedModule, sae: SAE, values: Mapping[int, float], *, keep_error: bool = True
) -> Iterator[Splice]:
    """``splice_sae`` with each feature of `values` clamped to its value for the block."""
    with splice_sae(model, sae, keep_error=keep_error) as splice:
        yield splice.clamp_features(values)


@contextmanager
def steer_with_feature(
    model: HookedModule, sae: SAE, feature: int, coefficient: float, *, keep_error: bool = True
) -> Iterator[Splice]:
    """``splice_sae`` adding ``coefficient * W_dec[feature]`` at every position, for the block."""
    with splice_sae(model, sae, keep_error=keep_error) as splice:
        yield splice.steer_with_feature(feature, coefficient)


def steering_vector(sae: SAE, feature: int, coefficient: float = 1.0) -> Tensor:
    """What steering adds to the raw activation: ``coefficient * W_dec[feature] / scale``."""
    if not 0 <= feature < sae.d_sae:
        raise SAEError(f"feature {feature} does not exist (d_sae={sae.d_sae}).")
    with torch.no_grad():
        direction = sae.W_dec[feature] * coefficient
        scale = sae.output_scale
        return direction / scale if scale is not None else direction


__all__ = [
    "Splice",
    "ablate_features",
    "clamp_features",
    "splice_sae",
    "steer_with_feature",
    "steering_vector",
]
