"""LayerNorm and RMSNorm with hook points on the scale and the normalised output.

``hook_scale`` is the per-position divisor ``sqrt(var + eps)`` (``[batch, pos, 1]``):
analyses that linearise the residual stream (direct logit attribution,
``apply_ln_to_stack``) need it. LayerNorm takes PyTorch's fused kernel unless something
hooks the scale; without autograd (a cache, an analysis) it takes it even then, since
the kernel also returns the scale, and recomputes the output only when a hook changed
the scale. With autograd on, a hooked scale is computed explicitly so that gradients
flow through it.

With ``affine=False`` (config ``norm_affine: false``) a norm only normalises: no scale,
no shift. That is what `lmscope.model.processing.fold_ln` leaves behind once it has
moved the norm's weight and bias into the layers that read it (TransformerLens calls
these LNPre / RMSPre).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.hooks import HookPoint


class LayerNorm(nn.Module):
    """``(x - mean) / sqrt(var + eps) * w + b`` over the last dim (Ba et al., 2016)."""

    def __init__(self, d: int, eps: float = 1e-5, bias: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d)) if affine else None
        self.bias = nn.Parameter(torch.zeros(d)) if bias and affine else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        if not self.hook_scale.active:
            out = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
            return self.hook_normalized(out)
        if not _needs_grad(x, self.weight, self.bias):
            # Without autograd the fused kernel also returns the mean and 1 / scale (one
            # pass; `var_mean` and the arithmetic below are ~5x slower on CPU). Its
            # output is used when the hook only read the scale (the usual cache), so
            # caching the scale leaves the output bit for bit as without the hook.
            fused, mean, rstd = torch.native_layer_norm(
                x, x.shape[-1:], self.weight, self.bias, self.eps
            )
            read = rstd.reciprocal().to(x.dtype)
            # A hook may edit the scale in place and return None: keep a copy to tell
            # ([batch, pos, 1], negligible; version counters do not exist under
            # torch.inference_mode).
            before = read.clone()
            scale = self.hook_scale(read)
            if scale is read and torch.equal(read, before):
                return self.hook_normalized(fused)
        else:
            # One pass for mean and population variance (divide by N, as every
            # LayerNorm does).
            var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
            scale = self.hook_scale((var + self.eps).sqrt())
        # The output from the (possibly hooked) scale, so a hook that freezes or edits
        # the scale changes the output, as in TransformerLens.
        out = (x - mean.to(x.dtype)) / scale
        if self.weight is None:
            return self.hook_normalized(out)
        if self.bias is None:
            return self.hook_normalized(out * self.weight)
        return self.hook_normalized(torch.addcmul(self.bias, out, self.weight))


def _needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd would record an op on `tensors` (grad mode on, one requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * w``: LayerNorm without centring (Zhang & Sennrich, 2019).

    Computed in float32 and cast back before the weight, as Llama does, so that bf16
    models match the reference. With a `weight_offset` (Gemma stores ``w - 1`` and scales
    by ``1 + w``) the scaling also runs in float32 before the cast, as Gemma does.
    """

    def __init__(
        self, d: int, eps: float = 1e-6, weight_offset: float = 0.0, affine: bool = True
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight_offset = weight_offset
        self.weight = nn.Parameter(torch.full((d,), 1.0 - weight_offset)) if affine else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        x32 = x.float()
        scale = self.hook_scale((x32.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        if self.weight is None:
            return self.hook_normalized((x32 / scale).to(x.dtype))
        if self.weight_offset:
            out = (x32 / scale * (self.weight_offset + self.weight.float())).to(x.dtype)
            return self.hook_normalized(out)
        return self.hook_normalized((x32 / scale).to(x.dtype) * self.weight)


def make_norm(cfg: ModelConfig, d: int | None = None) -> nn.Module:
    """The norm `cfg` asks for, over width `d` (default d_model); identity for 'none'."""
    width = d or cfg.d_model
    if cfg.norm == "layernorm":
        return LayerNorm(width, cfg.norm_eps, bias=cfg.norm_bias, affine=cfg.norm_affine)
    if cfg.norm == "rmsnorm":
        return RMSNorm(width, cfg.norm_eps, cfg.norm_weight_offset, affine=cfg.norm_affine)
    return nn.Identity()
