"""`lmscope explain`: real numbers, step by step, for learners.

- `worked_example` / `worked_examples`: the source documents' worked examples E1 to E7,
  recomputed by lmscope's own modules with the examples' weights set into them, with
  the documents' wrong figures pointed out (`lmscope.explain.examples`).
- `trace_token`: one token of any decoder-only or encoder-only model, layer by layer,
  recorded through the model's hook points in one forward (`lmscope.explain.trace`).
- `render_example(s)` / `render_trace`: rich tables for an 80-column terminal
  (`lmscope.explain.render`); ``dataclasses.asdict`` of the data is the JSON output.
"""

from __future__ import annotations

from lmscope.explain.data import Array, Check, Discrepancy, Example, Step
from lmscope.explain.examples import EXAMPLES, worked_example, worked_examples
from lmscope.explain.render import render_example, render_examples, render_trace
from lmscope.explain.trace import (
    HeadTrace,
    LayerTrace,
    MLPTrace,
    Neuron,
    Prediction,
    TokenTrace,
    trace_token,
)

__all__ = [
    "EXAMPLES",
    "Array",
    "Check",
    "Discrepancy",
    "Example",
    "HeadTrace",
    "LayerTrace",
    "MLPTrace",
    "Neuron",
    "Prediction",
    "Step",
    "TokenTrace",
    "render_example",
    "render_examples",
    "render_trace",
    "trace_token",
    "worked_example",
    "worked_examples",
]
