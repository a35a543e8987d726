"""E2: sinusoidal positional encoding, d_model = 4 (document 001, "Positional Encoding")."""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.explain.data import Array, Discrepancy, Example, Step, quietly, values, zero_
from lmscope.model.position import SinusoidalPositionEmbedding
from lmscope.model.transformer import Transformer

WORDS = ["The", "cat", "sat"]
DIMS = ["d0", "d1", "d2", "d3"]
CAT = [0.5, 0.3, -0.2, 0.8]


def e2_positional_encoding() -> Example:
    """PE at positions 0, 1, 2 and the input of "cat" = embedding + PE(1)."""
    positions = torch.arange(3)[None]  # [batch, pos]
    interleaved = SinusoidalPositionEmbedding(4)(positions)[0]
    concat = SinusoidalPositionEmbedding(4, interleaved=False)(positions)[0]

    # The sum goes through a real model's embedding step, read at its hook points.
    cfg = ModelConfig(vocab_size=3, d_model=4, n_layers=1, n_heads=1, positional="sinusoidal")
    model = zero_(quietly(lambda: Transformer(cfg)))
    with torch.no_grad():
        model.embed.weight[1] = torch.tensor(CAT)
    names = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"]
    seen: dict[str, torch.Tensor] = {}
    with (
        torch.no_grad(),
        model.hooks([(n, lambda x, h: seen.__setitem__(h.name, x)) for n in names]),
    ):
        model(positions)
    embed, pe, stream = (seen[n][0, 1] for n in names)

    return Example(
        id="E2",
        title="Sinusoidal positional encoding",
        source='001, "Example of Positional Encoding"',
        modules="SinusoidalPositionEmbedding(4) (positional='sinusoidal', interleaved); "
        "a 1-layer Transformer's embedding step for the sum",
        steps=[
            Step(
                "Position encodings",
                "PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): dims "
                "2i and 2i+1 share the frequency 1 / 10000^(2i/d), so d = 4 has two "
                "frequencies, 1 and 1/100.",
                [Array("PE", values(interleaved), rows=["pos 0", "pos 1", "pos 2"], cols=DIMS)],
            ),
            Step(
                'Add to the word embedding of "cat" (position 1)',
                "The model adds the position vector to the token vector; block 0 reads "
                "the sum (blocks.0.hook_resid_pre).",
                [
                    Array("embedding(cat)", values(embed), cols=DIMS),
                    Array("PE(1)", values(pe), cols=DIMS),
                    Array("input to block 0", values(stream), cols=DIMS),
                ],
            ),
            Step(
                "Other layout: positional='sinusoidal-concat'",
                "Many libraries put all sines first, then all cosines: the same features "
                "in another order (checkpoints are not interchangeable).",
                [
                    Array(
                        "PE (concatenated)",
                        values(concat),
                        rows=["pos 0", "pos 1", "pos 2"],
                        cols=["sin f0", "sin f1", "cos f0", "cos f1"],
                    )
                ],
            ),
        ],
        discrepancies=[
            Discrepancy(
                what="meaning of i in the formula",
                document_value="i = 0, 1, 2, 3 (the dimension index)",
                true_value="i = 0, 1 (dims 2i and 2i+1 share one frequency)",
                note="its numbers use i as the pair index, so they are right: "
                "[0.841, 0.540, 0.010, 1.000] at position 1.",
            )
        ],
    )
