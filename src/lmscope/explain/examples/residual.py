"""E5: residual stream arithmetic for "Tower" (document 001, "A Standing Example").

A 1-layer `Transformer` (no norms, no positions) whose numbers are the document's:
"Eiffel" and "Tower" embeddings, two heads that each write a fixed vector, an MLP
neuron that writes another. The document does not say how its heads compute their
writes, so each head's value is a constant (its value bias, with ``W_V = 0``): whatever
it attends to, it writes exactly that vector. The stream is then read at the model's
hook points and decomposed into what each component wrote.
"""

from __future__ import annotations

import torch

from lmscope.config import ModelConfig
from lmscope.explain.data import Array, Example, Step, check, quietly, values, zero_
from lmscope.model.mlp import MLP
from lmscope.model.transformer import Transformer

EIFFEL = [0.5, 0.3, 0.1, 0.0]
TOWER = [0.4, 0.2, 0.2, 0.1]
HEAD_WRITES = [[0.1, 0.2, 0.0, 0.1], [0.2, 0.0, 0.3, 0.0]]
MLP_WRITE = [0.1, 0.05, 1.12, 0.3]
DIMS = ["d0", "d1", "d2", "d3"]
HOOKS = {
    "embedding": "blocks.0.hook_resid_pre",
    "pattern": "blocks.0.attn.hook_pattern",
    "heads": "blocks.0.attn.hook_result",
    "resid_mid": "blocks.0.hook_resid_mid",
    "mlp": "blocks.0.hook_mlp_out",
    "resid_post": "blocks.0.hook_resid_post",
}


def _model() -> Transformer:
    cfg = ModelConfig(
        vocab_size=2,
        d_model=4,
        n_layers=1,
        n_heads=2,
        d_head=4,
        d_mlp=1,
        positional="none",
        norm="none",
        activation="relu",
        attn_out_bias=False,
    )
    model = zero_(quietly(lambda: Transformer(cfg)))
    assert isinstance(model, Transformer)
    block = model.blocks[0]
    mlp = block.mlp
    assert isinstance(mlp, MLP)
    with torch.no_grad():
        model.embed.weight.copy_(torch.tensor([EIFFEL, TOWER]))
        # W_Q = W_K = W_V = 0; the value bias of head h is its write (W_O = [I; I]).
        block.attn.qkv.bias[-8:] = torch.tensor(HEAD_WRITES).flatten()
        block.attn.out.weight.copy_(torch.cat([torch.eye(4), torch.eye(4)], dim=1))
        # One neuron, always on (bias 1, ReLU(1) = 1), whose value row is the MLP write.
        mlp.fc_in.bias.fill_(1.0)
        mlp.fc_out.weight.copy_(torch.tensor(MLP_WRITE)[:, None])
    return model


def e5_residual_stream() -> Example:
    """Embedding + head 1 + head 2 = [0.7, 0.4, 0.5, 0.2]; + MLP = [0.8, 0.45, 1.62, 0.5]."""
    model = _model()
    seen: dict[str, torch.Tensor] = {}
    names = {v: k for k, v in HOOKS.items()}
    hooks = [(n, lambda x, h: seen.__setitem__(names[h.name], x[0])) for n in HOOKS.values()]
    with torch.no_grad(), model.hooks(hooks):
        model(torch.tensor([[0, 1]]))  # "Eiffel Tower"
    t = 1  # "Tower"
    embed, heads = seen["embedding"][t], seen["heads"][t]  # heads: [head, d_model]
    mid, mlp, post = seen["resid_mid"][t], seen["mlp"][t], seen["resid_post"][t]
    # The sum in the order the model adds (heads summed first, then each residual add),
    # so the recomposition is bit-exact, not just close.
    recomposed = (embed + (heads[0] + heads[1])) + mlp
    return Example(
        id="E5",
        title="Residual stream arithmetic",
        source='001, "A Standing Example" (attention and MLP)',
        modules="Transformer(d_model=4, 1 layer, 2 heads, d_mlp=1, norm='none', "
        "positional='none') on 'Eiffel Tower'; each head's value bias is its write",
        steps=[
            Step(
                'Embedding of "Tower"',
                "What enters block 0 (blocks.0.hook_resid_pre).",
                [Array("embedding", values(embed), cols=DIMS)],
            ),
            Step(
                "Each head writes to the stream",
                "Per-head writes z_h @ W_O[h] from blocks.0.attn.hook_result. Both heads "
                "attend to Eiffel and Tower (pattern), but their values are constant here.",
                [
                    Array(
                        "pattern (Tower row)",
                        values(seen["pattern"][:, t]),
                        rows=["head 1", "head 2"],
                        cols=["Eiffel", "Tower"],
                    ),
                    Array("head 1 write", values(heads[0]), cols=DIMS),
                    Array("head 2 write", values(heads[1]), cols=DIMS),
                    Array("stream after attention", values(mid), cols=DIMS),
                ],
            ),
            Step(
                "The MLP writes",
                "blocks.0.hook_mlp_out, added to give blocks.0.hook_resid_post.",
                [
                    Array("MLP write", values(mlp), cols=DIMS),
                    Array("stream after the MLP", values(post), cols=DIMS),
                ],
            ),
            Step(
                "Decomposition",
                "The stream is nothing but the sum of what each component wrote: "
                "embedding + head 1 + head 2 + MLP.",
                [
                    Array(
                        "components",
                        values(torch.stack([embed, heads[0], heads[1], mlp])),
                        rows=["embedding", "head 1", "head 2", "MLP"],
                        cols=DIMS,
                    ),
                    Array("sum of components", values(recomposed), cols=DIMS),
                ],
            ),
        ],
        checks=[
            check(
                "embedding + heads = stream after attention",
                embed + (heads[0] + heads[1]),
                mid,
                tol=0.0,
            ),
            check("sum of components = final stream (bit-exact)", recomposed, post, tol=0.0),
        ],
    )
