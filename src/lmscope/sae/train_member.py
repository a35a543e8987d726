"""One SAE under training: its optimizer, its firing statistics, and what it reads from a batch.

`SAETrainer` keeps a `Member` per SAE. A batch is a mapping of hook -> activations (the SAE
reads its config's ``hook_name``, or the name it was given when it has none; a transcoder
also reads ``hook_name_out`` as its target), an ``(input, target)`` pair, or one tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lmscope.sae import metrics
from lmscope.sae.base import SAE, LossOutput, SAEError
from lmscope.sae.train_config import SAETrainConfig


class Member:
    """One SAE under training, with its optimizer and firing statistics."""

    def __init__(self, name: str, sae: SAE, cfg: SAETrainConfig) -> None:
        self.name, self.sae = name, sae
        self.optimizer = torch.optim.Adam(sae.param_groups(), lr=cfg.lr, betas=cfg.betas)
        self.tracker = metrics.FiringTracker(sae.d_sae, sae.W_enc.device)
        self.prescaled = False  # batches come already multiplied by the scale factor
        self.last: LossOutput | None = None
        self.density = self.tracker.density()  # feature density of the last logged window

    def input_key(self, batch: Any) -> str:
        """The hook this SAE reads: its config's ``hook_name`` if the batch has it."""
        hook = self.sae.cfg.hook_name
        return hook if isinstance(batch, Mapping) and hook in batch else (hook or self.name)

    def split(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """This SAE's (input, target) in `batch`."""
        cfg = self.sae.cfg
        if isinstance(batch, Mapping):
            key = self.input_key(batch)
            if key not in batch:
                raise SAEError(
                    f"the batch has no activations for SAE {self.name!r} (hook "
                    f"{cfg.hook_name!r}); it holds {', '.join(map(str, batch))}."
                )
            target = None
            if cfg.is_transcoder:
                if cfg.hook_name_out not in batch:
                    raise SAEError(
                        f"transcoder {self.name!r} reconstructs {cfg.hook_name_out!r}, which "
                        f"the batch does not hold ({', '.join(map(str, batch))})."
                    )
                target = batch[cfg.hook_name_out]
            return batch[key], target
        if isinstance(batch, tuple | list):
            if len(batch) != 2:
                raise SAEError(f"a batch tuple must be (input, target), got {len(batch)} items.")
            return batch[0], batch[1]
        return batch, None
