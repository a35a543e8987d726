"""How projection weights sit in memory: ``[in, out]`` storage behind ``[out, in]`` shapes,
for fast float32 decoding on CPU.

Every projection keeps PyTorch's ``nn.Linear`` convention, a weight of shape
``[d_out, d_in]`` applied as ``x @ W.T``, so names, shapes, state dicts and checkpoints
are the usual ones. Only the *storage order* differs: the weight is the transpose of a
contiguous ``[d_in, d_out]`` tensor (strides ``(1, d_out)``), so ``W.T``, the matrix the
product actually reads, is contiguous.

Why: on CPU, MKL's float32 matrix product with the second operand in row-major
``[in, out]`` order (the "nn" case, as in GPT-2's original Conv1D) is much faster for
the few-row products of decoding than the ``[out, in]``-transposed "nt" case
``nn.Linear`` gives: the vocabulary projection of a GPT-2 shape takes 6.4 ms instead of
11.2 ms for one row on this project's 2-core machine, and a whole greedy decoding step
of ``gpt2-small`` about 20% less (BENCHMARKS.md, "Decoding"). float32 training steps
(many rows) run at the same speed either way (within 3% here, both directions), and
autograd keeps gradients and optimizer states in the parameter's layout. Values are
identical; only the order of the floating-point sums inside a product may differ, as
between any two BLAS paths.

Only there: CPU bfloat16 products (oneDNN) are 15-20x *slower* with ``[in, out]``
storage, and other devices gain nothing, so every other dtype and device keeps plain
row-major ``[out, in]`` weights.

When: models are built and loaded row-major, as PyTorch makes them (loading stays one
plain copy of the file; re-storing 2 GB of weights at load cost this machine ~6 s).
`lmscope.generate` re-stores a float32 CPU model's weights once, on its first call
(`use_preferred_layout`; ~0.35 s for GPT-2 small, repaid after ~40 tokens), and the
model keeps that order. A later ``.to()`` to another dtype or device goes back to
row-major (`undo_slow_layout`). Training a model that generated before is as fast in
fp32; for bfloat16 autocast on CPU call `use_row_major` first (autocast's bf16 copies
keep the fp32 weights' strides). The trainer builds its models row-major.

What it costs: code must not ``.view()`` a weight in a way that merges its two
dimensions (``W.view(-1)``; use ``reshape``); splitting one (``W.view(h, d_head, d)``)
is fine. Files are always written contiguous (`serialization.write_safetensors`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def is_column_major(t: Tensor) -> bool:
    """Whether 2-D `t` is the transpose of a contiguous tensor (``t.T.is_contiguous()``)."""
    return t.dim() == 2 and t.t().is_contiguous()


def column_major(t: Tensor) -> Tensor:
    """`t` ([d_out, d_in]) with the same values, stored as a contiguous [d_in, d_out]."""
    if is_column_major(t):
        return t
    out = torch.empty(t.shape[1], t.shape[0], dtype=t.dtype, device=t.device).t()
    return out.copy_(t)


def projection_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights applied as ``x @ W.T``: every ``nn.Linear``'s, and the unembedding's.

    A tied unembedding reads the token embedding, whose lookups (one row per token) do
    not care about its layout; an untied one has its own weight. Shared parameters are
    listed once.
    """
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            found.setdefault(id(module.weight), module.weight)
    unembed = getattr(model, "unembed", None)
    mlm_head = getattr(model, "mlm_head", None)
    heads = [h for h in (unembed, getattr(mlm_head, "unembed", None)) if h is not None]
    for head in heads:
        weight = head.weight if head.weight is not None else model.embed.weight  # type: ignore[union-attr]
        found.setdefault(id(weight), weight)
    return list(found.values())


@torch.no_grad()
def use_row_major(model: nn.Module) -> nn.Module:
    """Make every parameter of `model` contiguous again, in place; returns `model`.

    For code that needs plain contiguous parameters, such as FSDP's flattening, and
    for bfloat16 autocast on CPU.
    """
    for p in model.parameters():
        if not p.is_meta and not p.is_contiguous():
            p.data = p.data.contiguous()
    return model


def prefers_column_major(t: Tensor) -> bool:
    """Whether a projection weight like `t` is faster stored ``[in, out]``: fp32 on CPU."""
    return t.dtype == torch.float32 and t.device.type == "cpu"


@torch.no_grad()
def undo_slow_layout(model: nn.Module) -> nn.Module:
    """Row-major again for any ``[in, out]``-stored weight that is no longer fp32 on CPU."""
    for weight in projection_weights(model):
        if not weight.is_meta and not prefers_column_major(weight):
            weight.data = weight.data.contiguous()  # no copy when already contiguous
    return model


@torch.no_grad()
def use_preferred_layout(model: nn.Module) -> nn.Module:
    """Store each projection weight in the order that is fastest for its dtype and
    device (`prefers_column_major`), in place; returns `model`.

    Parameters keep their identity (optimizers and ties stay valid) and their values;
    weights already in their order are not copied, and one matrix is copied at a time.
    """
    undo_slow_layout(model)
    for weight in projection_weights(model):
        if not weight.is_meta and prefers_column_major(weight):
            weight.data = column_major(weight.data)  # no copy when already [in, out]
    return model
