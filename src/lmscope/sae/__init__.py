"""Sparse autoencoders: train, evaluate, browse and steer with SAEs on any lmscope model.

- `SAEConfig`, `build_sae`, `load_sae`: make or open an SAE of any variant (ReLU-L1
  ``standard``, ``topk``, ``batchtopk``, ``jumprelu``, ``gated``; transcoders of each).
- `train_sae` / `train_saes`: the training loop over any iterator of activation batches.
- `save_saelens` / `load_saelens`: SAELens's on-disk format, both ways.
- `metrics`: L0, MSE, FVU, dead / dense fractions, feature density.
"""

from lmscope.sae.base import SAE, LossOutput, SAEError
from lmscope.sae.batchtopk import BatchTopKSAE
from lmscope.sae.build import ARCHITECTURES, build_sae, load_sae, sae_class
from lmscope.sae.config import ARCHS, SAEConfig
from lmscope.sae.gated import GatedSAE
from lmscope.sae.jumprelu import JumpReLUSAE
from lmscope.sae.standard import StandardSAE
from lmscope.sae.topk import TopKSAE
from lmscope.sae.transcoder import transcoder_class

__all__ = [
    "ARCHITECTURES",
    "ARCHS",
    "SAE",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "LossOutput",
    "SAEConfig",
    "SAEError",
    "StandardSAE",
    "TopKSAE",
    "build_sae",
    "load_sae",
    "sae_class",
    "transcoder_class",
]
