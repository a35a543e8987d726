"""Looking inside models: one module per analysis (see docs/interpret.md).

Public names of each analysis are re-exported here.
"""

from __future__ import annotations

from lmscope.interpret.attention_view import (
    AttentionPattern,
    attention_pattern,
    attention_table,
    plot_attention,
    print_attention,
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
from lmscope.interpret.factored import FactoredMatrix
from lmscope.interpret.heads import (
    DETECTORS,
    HeadScores,
    InductionLoss,
    detect_heads,
    detection_mask,
    repeated_random_tokens,
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
    "AttentionPattern",
    "FactoredMatrix",
    "HeadScores",
    "InductionLoss",
    "attention_pattern",
    "attention_table",
    "center_unembed",
    "center_writing_weights",
    "composition_scores",
    "detect_heads",
    "detection_mask",
    "fold_ln",
    "fold_value_biases",
    "full_ov_circuit",
    "full_qk_circuit",
    "kv_head",
    "ov_circuit",
    "ov_copying_score",
    "plot_attention",
    "plot_composition_scores",
    "plot_head_scores",
    "print_attention",
    "process_weights",
    "qk_circuit",
    "repeated_random_tokens",
]
