"""Looking inside models: one module per analysis (see docs/interpret.md).

Public names of each analysis are re-exported here.
"""

from __future__ import annotations

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
from lmscope.model.processing import (
    center_unembed,
    center_writing_weights,
    fold_ln,
    fold_value_biases,
    process_weights,
)

__all__ = [
    "FactoredMatrix",
    "center_unembed",
    "center_writing_weights",
    "composition_scores",
    "fold_ln",
    "fold_value_biases",
    "full_ov_circuit",
    "full_qk_circuit",
    "kv_head",
    "ov_circuit",
    "ov_copying_score",
    "plot_composition_scores",
    "plot_head_scores",
    "process_weights",
    "qk_circuit",
]
