"""E1: layer normalisation of x = [2, 4, 6, 8] (document 001, "Layer Normalization")."""

from __future__ import annotations

import torch

from lmscope.explain.data import Array, Example, Step, check, recording, values
from lmscope.model.norm import LayerNorm

DIMS = ["x0", "x1", "x2", "x3"]


def e1_layer_norm() -> Example:
    """LayerNorm(4, eps=1e-5) with gamma = 1, beta = 0 on [2, 4, 6, 8]."""
    eps = 1e-5
    ln = LayerNorm(4, eps=eps)  # weight 1, bias 0: the document's "no learned scale/shift"
    x = torch.tensor([[[2.0, 4.0, 6.0, 8.0]]])  # [batch, pos, d]
    with torch.no_grad(), recording({"scale": ln.hook_scale}) as seen:
        out = ln(x)
    scale = seen["scale"][0, 0, 0]
    # The module does not expose the mean; it follows from its own output:
    # out = (x - mean) / scale, so mean = x - out * scale (the same for every entry).
    mean = (x - out * scale)[0, 0].mean()
    variance = scale**2 - eps
    return Example(
        id="E1",
        title="Layer normalization of one vector",
        source='001, "Transformer Block: Layer Normalization"',
        modules="LayerNorm(4, eps=1e-5), weight 1 and bias 0; hook_scale recorded",
        steps=[
            Step(
                "Input",
                "One token's vector in a 4-dim residual stream.",
                [Array("x", values(x[0, 0]), cols=DIMS)],
            ),
            Step(
                "Mean and variance",
                "Over the 4 entries of this one token (not over the batch); the variance "
                "is the population one (divide by N = 4). The module's hook_scale holds "
                "sqrt(variance + eps).",
                [
                    Array("mean", float(mean)),
                    Array("variance", float(variance)),
                    Array("scale = sqrt(variance + eps)", float(scale)),
                ],
            ),
            Step(
                "Normalize",
                "(x - mean) / scale, then * gamma + beta (1 and 0 here). The output has "
                "mean 0 and variance 5 / (5 + eps) = 0.999998, which the document rounds "
                "to 1.",
                [Array("LayerNorm(x)", values(out[0, 0]), cols=DIMS)],
            ),
        ],
        checks=[
            check("output has mean 0", out.mean(-1).flatten(), torch.zeros(1), tol=1e-6),
        ],
    )
