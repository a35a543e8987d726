"""E6: weight tying, logits = h . E^T (document 001, "The Language Modelling Head")."""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.explain.data import Array, Check, Example, Step, check, quietly, values
from lmscope.model.transformer import Transformer

WORDS = ["Thanks", "for", "all", "the", "fish"]


def e6_weight_tying() -> Example:
    """A tiny tied model: its logits are h @ W_E^T, and W_E is one parameter counted once."""
    cfg = ModelConfig(
        name="tied-toy", vocab_size=5, d_model=4, n_layers=1, n_heads=1, max_seq_len=8
    )
    # Random weights (seed 0): the identity holds for any weights.
    model = quietly(lambda: Transformer(cfg), seed=0)
    with torch.device("meta"):  # the twin is only counted: no memory, no init
        untied = Transformer(cfg.replace(tie_embeddings=False))
    tokens = torch.tensor([[0, 1, 2, 3]])  # "Thanks for all the"
    seen: dict[str, torch.Tensor] = {}
    hook = ("ln_final.hook_normalized", lambda x, h: seen.__setitem__("h", x))
    with torch.no_grad(), model.hooks([hook]):
        logits = model(tokens)[0, -1]
    h = seen["h"][0, -1]  # final residual stream of "the", after the final norm
    E = model.embed.weight.detach()
    by_hand = h @ E.T
    assert model.unembed is not None
    tied_n, untied_n = model.num_params(), untied.num_params()
    extra = cfg.vocab_size * cfg.d_model
    return Example(
        id="E6",
        title="Weight tying: the unembedding is E transposed",
        source='001, "The Language Modelling Head"',
        modules="Transformer(vocab 5, d_model=4, 1 layer, tie_embeddings=True), random "
        "weights (seed 0), and an untied twin for the parameter count",
        steps=[
            Step(
                "Token embedding E (|V| x d)",
                "One row per token; embedding a token looks up its row.",
                [Array("E", values(E), rows=WORDS, cols=[f"d{i}" for i in range(4)])],
            ),
            Step(
                "Final stream of the last token",
                'h for "the" after the final norm (ln_final.hook_normalized).',
                [Array("h", values(h), cols=[f"d{i}" for i in range(4)])],
            ),
            Step(
                "Unembedding",
                "The model's logits for the next token equal h @ E^T: the score of each "
                "token is the dot product of h with that token's embedding.",
                [
                    Array("model logits", values(logits), cols=WORDS),
                    Array("h @ E^T", values(by_hand), cols=WORDS),
                ],
            ),
            Step(
                "One parameter, counted once",
                "model.unembed holds no weight: it is handed the embedding's, so both "
                "share storage and an untied twin has exactly |V| x d more parameters.",
                [
                    Array("parameters (tied)", tied_n),
                    Array("parameters (untied twin)", untied_n),
                    Array("difference = |V| x d", untied_n - tied_n),
                ],
            ),
        ],
        checks=[
            check("logits = h @ E^T", logits, by_hand, tol=1e-6),
            Check("unembed has no weight of its own", model.unembed.weight is None),
            Check(
                "W_U shares storage with W_E",
                model.W_U.data_ptr() == model.embed.weight.data_ptr(),
            ),
            Check("untied twin has |V| x d more parameters", untied_n - tied_n == extra),
        ],
    )
