"""What a training step of an SAE produces: a variant's forward pass, and the loss.

`TrainForward` is internal (what `SAE._training_forward` hands to the variant's losses);
`LossOutput` is what `SAE.training_loss` returns to the trainer (and to anyone writing
their own loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TrainForward:
    """What a variant's training forward pass produces (in normalised units)."""

    reconstruction: Tensor  # [n, d_out]
    hidden_pre: Tensor  # [n, d_sae]
    firing_counts: Tensor  # [d_sae] int64: inputs each latent fired on
    l0: Tensor  # mean active latents per input
    acts: Tensor | None = None  # [n, d_sae] dense latents, when the variant built them
    extra: dict[str, Tensor] = field(default_factory=dict)  # variant-specific pieces


@dataclass
class LossOutput:
    """The training loss and its parts: ``total = mse + sparsity + aux``.

    `reconstruction` and `target` are in the SAE's normalised units; `metrics` holds
    detached scalars a variant wants logged. Nothing here forces a device sync.
    """

    total: Tensor
    mse: Tensor
    sparsity: Tensor
    aux: Tensor
    metrics: dict[str, Tensor]
    reconstruction: Tensor
    target: Tensor
    firing_counts: Tensor
    l0: Tensor
