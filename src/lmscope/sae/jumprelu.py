"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"), as in SAELens 6.

Each latent has a learned threshold theta: ``acts = pre * (pre > theta)``. The step in
that function has zero gradient almost everywhere, so theta learns through a
straight-through estimator: the derivative of the step ``H(pre - theta)`` with respect to
theta is replaced by a rectangle kernel of width epsilon (``jumprelu_bandwidth``):

    d/dtheta  H(pre - theta)        ~  -(1/eps)     * rect((pre - theta) / eps)
    d/dtheta  pre * H(pre - theta)  ~  -(theta/eps) * rect((pre - theta) / eps)

where ``rect(u) = 1`` for ``|u| < 1/2``. Pre-activations still get their ordinary gradient
where the latent is on. The sparsity loss, times ``l0_coefficient``, is one of:

- ``step``: the L0 itself, ``sum_j H(pre_j - theta_j)``, through the estimator (DeepMind);
- ``tanh``: ``sum_j tanh(c * acts_j * |W_dec[j]|)``, a smooth L0 (Anthropic);
- ``quadratic``: ``2 / target_l0 * (L0 - target_l0)^2``, pulling L0 to ``target_l0``.

Thresholds are the raw parameter (SAELens 6; a log parameterisation barely moves under
Adam's ~lr-sized steps) and are projected to >= 0 before each training step.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.sae.base import SAE, TrainForward


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to `shape` (the threshold's ``[d_sae]``)."""
    return grad.reshape(-1, *shape).sum(0)


class JumpReLUFunction(torch.autograd.Function):
    """``pre * (pre > theta)`` with the straight-through gradient for theta."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * ((pre > threshold) & (pre > 0))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * ((pre > threshold) & (pre > 0))
        ste = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad_pre, _sum_to(ste, threshold.shape), None


class StepFunction(torch.autograd.Function):
    """``H(pre - theta)`` with the straight-through gradient for theta (none for pre)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        ste = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad
        return None, _sum_to(ste, threshold.shape), None


class JumpReLUSAE(SAE):
    """JumpReLU with learned per-latent thresholds."""

    arch = "jumprelu"

    def _init_latent_params(self) -> None:
        super()._init_latent_params()
        self.threshold = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    def latent_params(self) -> dict[str, int]:
        return {**super().latent_params(), "threshold": 0}

    @torch.no_grad()
    def _reset_latents(self, latents: Tensor) -> None:
        super()._reset_latents(latents)
        self.threshold[latents] = self.cfg.jumprelu_init_threshold

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """``pre`` where it exceeds the latent's threshold (and 0), else 0."""
        threshold = self.threshold.to(hidden_pre.dtype)
        return JumpReLUFunction.apply(hidden_pre, threshold, self.cfg.jumprelu_bandwidth)

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        with torch.no_grad():  # a negative threshold would let negative pre-activations through
            self.threshold.clamp_(min=0.0)
        return super()._training_forward(x, dead_mask)

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        mode = self.cfg.jumprelu_sparsity_loss
        pre = fwd.hidden_pre
        if mode == "tanh":
            assert fwd.acts is not None
            scaled = self.cfg.jumprelu_tanh_scale * fwd.acts * self.decoder_norms()
            per_input = torch.tanh(scaled).sum(-1)
        else:
            threshold = self.threshold.to(pre.dtype)
            l0 = StepFunction.apply(pre, threshold, self.cfg.jumprelu_bandwidth).sum(-1)
            if mode == "quadratic":
                target_l0 = float(self.cfg.target_l0)
                per_input = 2.0 / target_l0 * (l0 - target_l0).pow(2)
            else:
                per_input = l0
        penalty = per_input.mean()
        sparsity = (self.cfg.l0_coefficient * sparsity_scale) * penalty
        return sparsity, penalty.new_zeros(()), {"l0_penalty": penalty.detach()}

    @torch.no_grad()
    def _scale_latents_(self, factors: Tensor) -> None:
        super()._scale_latents_(factors)
        self.threshold.mul_(factors.to(self.threshold.dtype))  # thresholds live in pre units
