"""Sparse autoencoders: train, evaluate, browse and steer with SAEs on any lmscope model.

- `SAEConfig`, `build_sae`, `load_sae`: make or open an SAE of any variant (ReLU-L1
  ``standard``, ``topk``, ``batchtopk``, ``jumprelu``, ``gated``; transcoders of each).
- `train_sae` / `train_saes` (`SAETrainConfig`): the training loop over any iterator of
  activation batches.
- `save_saelens` / `load_saelens`: SAELens's on-disk format, both ways.
- `metrics`: L0, MSE, FVU, dead / dense fractions, feature density.
- `ActivationStore` / `cache_activations`: shuffled activation batches from text, in
  bounded memory, optionally through an on-disk cache; `train_on_model`: all of it.
- `evaluate_sae`: L0, FVU, loss recovered; `collect_features`, `search_features`,
  `write_dashboard`: what features respond to, offline HTML.
- `splice_sae`, `ablate_features`, `clamp_features`, `steer_with_feature`: run a model
  with an SAE spliced in and its features edited (also during generation).
"""

from lmscope.sae.activation_store import ActivationStore, cache_activations
from lmscope.sae.base import SAE, LossOutput, SAEError
from lmscope.sae.batchtopk import BatchTopKSAE
from lmscope.sae.build import ARCHITECTURES, build_sae, load_sae, sae_class
from lmscope.sae.config import ARCHS, SAEConfig
from lmscope.sae.dashboard import write_dashboard
from lmscope.sae.evaluate import SAEEvaluation, evaluate_sae, plot_feature_density
from lmscope.sae.features import FeatureStats, collect_features, logit_effects, search_features
from lmscope.sae.gated import GatedSAE
from lmscope.sae.jumprelu import JumpReLUSAE
from lmscope.sae.pipeline import train_on_model
from lmscope.sae.splice import (
    Splice,
    ablate_features,
    clamp_features,
    splice_sae,
    steer_with_feature,
    steering_vector,
)
from lmscope.sae.standard import StandardSAE
from lmscope.sae.token_source import TokenWindows
from lmscope.sae.topk import TopKSAE
from lmscope.sae.transcoder import transcoder_class

#: Names imported on first use (the trainer pulls in the training stack; SAELens I/O is
#: rarely needed): name -> module.
_LAZY = {
    "SAETrainConfig": "lmscope.sae.train_config",
    "SAETrainResult": "lmscope.sae.trainer",
    "SAETrainer": "lmscope.sae.trainer",
    "train_sae": "lmscope.sae.trainer",
    "train_saes": "lmscope.sae.trainer",
    "load_saelens": "lmscope.sae.interop",
    "save_saelens": "lmscope.sae.interop",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmscope.sae' has no attribute {name!r}")


__all__ = [
    *_LAZY,
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
__all__ += [
    "ActivationStore",
    "FeatureStats",
    "SAEEvaluation",
    "Splice",
    "TokenWindows",
    "ablate_features",
    "cache_activations",
    "clamp_features",
    "collect_features",
    "evaluate_sae",
    "logit_effects",
    "plot_feature_density",
    "search_features",
    "splice_sae",
    "steer_with_feature",
    "steering_vector",
    "train_on_model",
    "write_dashboard",
]
