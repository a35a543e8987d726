"""Looking inside models: one module per analysis (see docs/interpret.md).

Public names of each analysis are re-exported here.
"""

from __future__ import annotations

from lmscope.interpret.ablation import ablate, ablation_hooks
from lmscope.interpret.activations import collect_activations, prompt_batches
from lmscope.interpret.attention_view import (
    AttentionPattern,
    attention_pattern,
    attention_table,
    plot_attention,
    print_attention,
)
from lmscope.interpret.attribution import AttributionResult, direct_logit_attribution
from lmscope.interpret.attribution_patching import (
    AttributionComparison,
    attribution_patch,
    compare_with_exact,
)
from lmscope.interpret.circuits import (
    composition_scores,
    full_ov_circuit,
    full_qk_circuit,
    kv_head,
    ov_circuit,
    ov_copying_score,
    plot_composition_scores,
    plot_head_scores,
    qk_circuit,
)
from lmscope.interpret.corpus import corpus_token_batches
from lmscope.interpret.datasets import STEERING_PAIRS, LabelledTexts, load_dataset
from lmscope.interpret.factored import FactoredMatrix
from lmscope.interpret.heads import (
    DETECTORS,
    HeadScores,
    InductionLoss,
    detect_heads,
    detection_mask,
    repeated_random_tokens,
)
from lmscope.interpret.logit_lens import LensResult, logit_lens
from lmscope.interpret.metrics import (
    LogitDiff,
    NormalizedMetric,
    logit_diff_metric,
    normalized_metric,
)
from lmscope.interpret.neurons import (
    ActivatingContext,
    NeuronTokens,
    neuron_contributions,
    neuron_key_tokens,
    neuron_value_tokens,
    top_activating_contexts,
    top_contexts_of_neurons,
)
from lmscope.interpret.patching import (
    activation_patch,
    patch_attn_out,
    patch_heads,
    patch_mlp_out,
    patch_residual,
    run_patched,
)
from lmscope.interpret.patching_result import PatchingResult
from lmscope.interpret.path_patching import path_patch, path_patch_sweep
from lmscope.interpret.probe_study import ProbeStudy, probe_texts
from lmscope.interpret.probes import NeuronSearch, Probe, auc, neuron_search, pearson, train_probe
from lmscope.interpret.sites import Site
from lmscope.interpret.steering import (
    SteeringVector,
    generate_steered,
    steer,
    steering_vector,
)
from lmscope.interpret.steering_effect import SteeringEffect, steering_effect
from lmscope.interpret.tuned_lens import (
    TunedLens,
    lens_divergence,
    train_tuned_lens,
    tuned_lens,
)
from lmscope.model.processing import (
    center_unembed,
    center_writing_weights,
    fold_ln,
    fold_value_biases,
    process_weights,
)

__all__ = [
    "DETECTORS",
    "STEERING_PAIRS",
    "ActivatingContext",
    "AttentionPattern",
    "AttributionComparison",
    "AttributionResult",
    "FactoredMatrix",
    "HeadScores",
    "InductionLoss",
    "LabelledTexts",
    "LensResult",
    "LogitDiff",
    "NeuronSearch",
    "NeuronTokens",
    "NormalizedMetric",
    "PatchingResult",
    "Probe",
    "ProbeStudy",
    "Site",
    "SteeringEffect",
    "SteeringVector",
    "TunedLens",
    "ablate",
    "ablation_hooks",
    "activation_patch",
    "attention_pattern",
    "attention_table",
    "attribution_patch",
    "auc",
    "center_unembed",
    "center_writing_weights",
    "collect_activations",
    "compare_with_exact",
    "composition_scores",
    "corpus_token_batches",
    "detect_heads",
    "detection_mask",
    "direct_logit_attribution",
    "fold_ln",
    "fold_value_biases",
    "full_ov_circuit",
    "full_qk_circuit",
    "generate_steered",
    "kv_head",
    "lens_divergence",
    "load_dataset",
    "logit_diff_metric",
    "logit_lens",
    "neuron_contributions",
    "neuron_key_tokens",
    "neuron_search",
    "neuron_value_tokens",
    "normalized_metric",
    "ov_circuit",
    "ov_copying_score",
    "patch_attn_out",
    "patch_heads",
    "patch_mlp_out",
    "patch_residual",
    "path_patch",
    "path_patch_sweep",
    "pearson",
    "plot_attention",
    "plot_composition_scores",
    "plot_head_scores",
    "print_attention",
    "probe_texts",
    "process_weights",
    "prompt_batches",
    "qk_circuit",
    "repeated_random_tokens",
    "run_patched",
    "steer",
    "steering_effect",
    "steering_vector",
    "top_activating_contexts",
    "top_contexts_of_neurons",
    "train_probe",
    "train_tuned_lens",
    "tuned_lens",
]
