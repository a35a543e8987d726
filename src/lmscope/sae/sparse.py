"""Sparse training paths: after the encoder's matmul, touch only the latents that fire.

A training step of an SAE has one unavoidable dense matmul, the encoder's
``x @ W_enc``: every pre-activation must be known to decide which latents fire. When few
fire, everything after it can skip the zeros:

- `SelectedPreActivations`: the values ``pre[rows, cols]`` of the selected entries, with
  a backward that builds the encoder's gradients from those entries alone (a sparse
  ``[d_sae, n] x [n, d_in]`` matmul instead of a dense ``[d_in, n] x [n, d_sae]`` one);
- `sparse_decode`: ``sum_j value_j W_dec[col_j]`` per input with ``embedding_bag``
  (its backward is sparse too) instead of a dense ``[n, d_sae] x [d_sae, d_out]`` matmul.

Of the dense step's five large matmuls (encoder forward and weight gradient, decoder
forward and both gradients) only the encoder forward remains. The selection is given
as flat ``(rows, cols)`` with rows ascending (input by input), which TopK, BatchTopK and
ReLU selections all produce. The values equal the dense computation's; gradients agree
up to float rounding (tested against the dense path).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: dtypes the sparse kernels handle on every device (bf16 sparse matmuls are not).
SPARSE_DTYPES = (torch.float32, torch.float64)


class SelectedPreActivations(torch.autograd.Function):
    """``pre[rows, cols]`` where ``pre = x @ weight + bias`` was computed without autograd.

    `pre` must be that product (it is read, not recomputed); the gradient flows to `x`,
    `weight` and `bias` through the selected entries only.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, pre: Tensor, rows: Tensor, cols: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x, weight, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, rows, cols = ctx.saved_tensors
        n, d_sae = x.shape[0], weight.shape[1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            selected = torch.sparse_coo_tensor(
                torch.stack([cols, rows]), grad, (d_sae, n), check_invariants=False
            )  # [d_sae, n]: the gradient of pre, transposed, nonzero where selected
            if ctx.needs_input_grad[1]:
                grad_w = torch.sparse.mm(selected, x).T.contiguous()
            if ctx.needs_input_grad[0]:
                grad_x = torch.sparse.mm(selected.t(), weight.T.contiguous())
        if ctx.needs_input_grad[2]:
            grad_b = grad.new_zeros(d_sae).index_add_(0, cols, grad)
        return grad_x, grad_w, grad_b, None, None, None


def select(
    x: Tensor, weight: Tensor, bias: Tensor, pre: Tensor, rows: Tensor, cols: Tensor
) -> Tensor:
    """The selected pre-activations, differentiable (see `SelectedPreActivations`)."""
    return SelectedPreActivations.apply(x, weight, bias, pre, rows, cols)


def row_offsets(rows: Tensor, n: int) -> Tensor:
    """Where each input's entries start in ascending `rows` (``embedding_bag`` offsets)."""
    return torch.searchsorted(rows, torch.arange(n, device=rows.device))


def sparse_decode(values: Tensor, rows: Tensor, cols: Tensor, n: int, weight: Tensor) -> Tensor:
    """``out[i] = sum over entries e of input i: values_e * weight[cols_e]`` (``[n, d_out]``)."""
    return F.embedding_bag(
        cols, weight, row_offsets(rows, n), mode="sum", per_sample_weights=values
    )


def grid_rows(n: int, per_row: int, device: torch.device) -> Tensor:
    """Rows of a selection with `per_row` entries per input (``[n, per_row]`` flattened)."""
    return torch.arange(n, device=device).repeat_interleave(per_row)


def sparse_path_ok(sae: Any, x: Tensor) -> bool:
    """Whether a training step of `sae` on `x` may take the sparse path: no hook needs the
    dense pre-activations or latents, a batch of rows, and a dtype the kernels handle."""
    hooked = sae.hook_sae_acts_pre.active or sae.hook_sae_acts_post.active
    return not hooked and x.dim() == 2 and x.dtype in SPARSE_DTYPES
