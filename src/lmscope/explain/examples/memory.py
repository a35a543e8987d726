"""E7: the MLP as a key-value memory (document 001, "Key/Value layer of MLP").

An `MLP` as wide as the document's numbering needs (d_model 159, d_mlp 5433), so that
neurons 2847 and 5432 and output dims 42, 73, 158 are the real indices. Only the
numbers the document shows are set; everything else, including the dims it elides
with "...", is zero.
"""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.explain.data import (
    Array,
    Discrepancy,
    Example,
    Step,
    check,
    quietly,
    recording,
    values,
    zero_,
)
from lmscope.model.mlp import MLP

X = [0.7, 0.4, 0.5, 0.2]
NEURONS = [2847, 5432]
KEYS = [[0.8, 0.1, 0.9, -0.1], [0.1, 0.8, -0.2, 0.3]]
OUT_DIMS = [42, 73, 158]
VALUES = [[0.9, 0.8, 0.6], [0.1, 0.7, 0.05]]
DOC_PRE = [1.2, 0.4]
DOC_OUT = [1.12, 1.24, 0.74]


def _mlp() -> MLP:
    cfg = ModelConfig(d_model=159, n_heads=1, d_mlp=5433, activation="relu", mlp_bias=False)
    mlp = zero_(quietly(lambda: MLP(cfg)))
    assert isinstance(mlp, MLP)
    with torch.no_grad():
        for n, key, val in zip(NEURONS, KEYS, VALUES, strict=True):
            mlp.fc_in.weight[n, :4] = torch.tensor(key)  # key = row of the first layer
            mlp.fc_out.weight[OUT_DIMS, n] = torch.tensor(val)  # value = column of the second
    return mlp


def e7_key_value_memory() -> Example:
    """Keys match the stream (1.03, 0.35); values write a . V = [1.12, 1.24, 0.74]."""
    mlp = _mlp()
    x = torch.zeros(1, 1, 159)
    x[0, 0, :4] = torch.tensor(X)
    with torch.no_grad(), recording({"pre": mlp.hook_pre, "post": mlp.hook_post}) as seen:
        natural_out = mlp(x)[0, 0]
    pre = seen["pre"][0, 0, NEURONS]
    post = seen["post"][0, 0, NEURONS]

    # The document's activations, forced into the value layer through hook_post.
    forced = torch.zeros(1, 1, mlp.d_mlp)
    forced[0, 0, NEURONS] = torch.tensor(DOC_PRE)
    with torch.no_grad(), mlp.hook_post.add_hook(lambda a, hook: forced):
        out = mlp(x)[0, 0]
    with torch.no_grad():
        contributions = mlp.neuron_contributions(forced)[0, 0]  # [d_mlp, d_model]
    total = contributions.sum(0)  # + b_out, which is absent here

    rows = [f"neuron {n}" for n in NEURONS]
    cols = [f"d{d}" for d in OUT_DIMS]
    return Example(
        id="E7",
        title="The MLP as a key-value memory",
        source='001, "A Standing Example: Key/Value layer of MLP"',
        modules="MLP(d_model=159, d_mlp=5433, ReLU, no bias); keys in fc_in rows 2847 "
        "and 5432, values in fc_out columns (output dims 42, 73, 158)",
        steps=[
            Step(
                'Residual stream of "Tower" before the MLP',
                "The four dims the document shows; the dims it elides are 0 here.",
                [Array("x", X, cols=["d0", "d1", "d2", "d3"])],
            ),
            Step(
                "Keys: pre-activations",
                "Each neuron's key is a row of the first layer; its pre-activation is "
                "x . key (hook_pre), then ReLU (hook_post).",
                [
                    Array(
                        "keys",
                        values(mlp.fc_in.weight[NEURONS, :4]),
                        rows=rows,
                        cols=["d0", "d1", "d2", "d3"],
                    ),
                    Array("x . key", values(pre), cols=rows),
                    Array("ReLU", values(post), cols=rows),
                ],
            ),
            Step(
                "Values: the document's activations",
                "Forcing a = [1.2, 0.4] through hook_post: each neuron writes its "
                "activation times its value row; output dims 42, 73, 158.",
                [
                    Array(
                        "value rows", values(mlp.W_out[NEURONS][:, OUT_DIMS]), rows=rows, cols=cols
                    ),
                    Array("a", DOC_PRE, cols=rows),
                    Array("MLP output", values(out[OUT_DIMS]), cols=cols),
                    Array("output with a = [1.03, 0.35]", values(natural_out[OUT_DIMS]), cols=cols),
                ],
            ),
            Step(
                "Per-neuron contributions",
                "MLP.neuron_contributions: a_i * value_i for every neuron; they sum "
                "(plus the output bias, none here) to the MLP output.",
                [
                    Array(
                        "contributions",
                        values(contributions[NEURONS][:, OUT_DIMS]),
                        rows=rows,
                        cols=cols,
                    ),
                    Array("sum over all 5433 neurons", values(total[OUT_DIMS]), cols=cols),
                ],
            ),
        ],
        discrepancies=[
            Discrepancy(
                what="pre-activations of neurons 2847 and 5432",
                document_value=DOC_PRE,
                true_value=values(pre),
                note="the document's dot products include dims it elides with '...'; "
                "the four dims it shows give 1.03 and 0.35 (its value-layer figures use "
                "1.2 and 0.4 and are right for those).",
            )
        ],
        checks=[
            check("contributions sum to the MLP output", total, out, tol=1e-5),
            check(
                "output is the document's [1.12, 1.24, 0.74]",
                out[OUT_DIMS],
                torch.tensor(DOC_OUT),
                tol=1e-5,
            ),
        ],
    )
