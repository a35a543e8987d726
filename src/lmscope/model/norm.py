"""LayerNorm and RMSNorm with hook points on the scale and the normalised output.

``hook_scale`` is the per-position divisor ``sqrt(var + eps)`` (``[batch, pos, 1]``):
analyses that linearise the residual stream (direct logit attribution,
``apply_ln_to_stack``) need it. Computing it costs extra passes over the activation,
so LayerNorm takes PyTorch's fused kernel unless something hooks the scale.

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
        # One pass for mean and population variance (divide by N, as every LayerNorm
        # does); the output is then computed from the (possibly hooked) scale, so a hook
        # that freezes or edits the scale changes the output, as in TransformerLens.
        var, mean = torch.var_mean(x, -1, keepdim=True, correction=0)
        scale = self.hook_scale((var + self.eps).sqrt())
        out = (x - mean) / scale
        if self.weight is None:
            return self.hook_normalized(out)
        if self.bias is None:
            return self.hook_normalized(out * self.weight)
        return self.hook_normalized(torch.addcmul(self.bias, out, self.weight))


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
