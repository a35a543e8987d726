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

Two additions make the L0 reachable in a short run:

- ``jumprelu_init_l0``: the first batch sets each threshold where its latent fires on
  ``init_l0 / d_sae`` of the inputs. A constant start (0.01) is far below the ~2 standard
  deviations of the pre-activations that an L0 of 1-2% of the latents needs, and Adam
  moves a threshold by about the learning rate per step, so from 0.01 the L0 falls for
  thousands of steps; from the quantile it starts near the target.
- ``jumprelu_threshold_lr_scale``: the thresholds' own learning rate. Adam moves each
  parameter by about the rate per step; at a rate suited to the weights (1e-3) a
  threshold of ~2 cannot follow the pre-activations as the encoder changes scale, and
  the L0 drifts away from its target whatever the sparsity loss says.
- ``pre_act_loss_coefficient`` (Anthropic, January 2025): ``sum_j relu(theta_j - pre_j) *
  |W_dec_j|``, a gradient that raises the pre-activations of latents that are off
  (dead ones only with ``pre_act_loss_dead_only``, as SAELens) and lowers their
  thresholds, so a latent that never fires, and so gets no reconstruction gradient,
  is pulled back into use.
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

    def param_groups(self) -> list[dict[str, Any]]:
        """The thresholds in a group of their own at ``jumprelu_threshold_lr_scale``."""
        scale = self.cfg.jumprelu_threshold_lr_scale
        if scale == 1.0:
            return super().param_groups()
        rest = [p for name, p in self.named_parameters() if name != "threshold"]
        return [{"params": rest, "lr_scale": 1.0}, {"params": [self.threshold], "lr_scale": scale}]

    @torch.no_grad()
    def _reset_latents(self, latents: Tensor) -> None:
        super()._reset_latents(latents)
        self.threshold[latents] = self.cfg.jumprelu_init_threshold

    @torch.no_grad()
    def initialise_from_data(self, x: Float[Tensor, "n d_in"]) -> None:
        """With ``jumprelu_init_l0``: each threshold at the quantile of its latent's
        pre-activations on `x` (normalised inputs) above which ``init_l0 / d_sae`` of them
        lie, so every latent starts firing equally often and the L0 starts at ~init_l0."""
        init_l0 = self.cfg.jumprelu_init_l0
        if init_l0 is None:
            return
        pre = self._hidden_pre(x.reshape(-1, x.shape[-1])).float()  # [n, d_sae]
        n = pre.shape[0]
        above = min(max(round(n * init_l0 / self.d_sae), 1), n)  # inputs each latent fires on
        # the (n - above)-th smallest value: `above` values lie strictly above it (no ties)
        kth = pre.kthvalue(max(n - above, 1), dim=0).values
        self.threshold.copy_(kth.clamp_min(0.0).to(self.threshold.dtype))

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
        extra = {"l0_penalty": penalty.detach()}
        aux = penalty.new_zeros(())
        if self.cfg.pre_act_loss_coefficient > 0:
            only = dead_mask if self.cfg.pre_act_loss_dead_only else None
            pre_act = self.pre_act_loss(pre, only)
            aux = self.cfg.pre_act_loss_coefficient * pre_act
            extra["pre_act_loss"] = pre_act.detach()
        return sparsity, aux, extra

    def pre_act_loss(self, pre: Float[Tensor, "n d_sae"], latents: Tensor | None = None) -> Tensor:
        """Anthropic's pre-activation loss (January 2025), before its coefficient:
        ``mean_n sum_j relu(theta_j - pre_nj) * |W_dec_j|`` over `latents` (a bool mask
        ``[d_sae]``; None: all). Zero where a latent is above its threshold, so only
        latents that are off get pushed up; a latent's push is as strong as its decoder
        row is long, so shrinking the row cannot escape it."""
        if latents is not None and not bool(latents.any()):
            return pre.new_zeros(())
        gap = (self.threshold.to(pre.dtype) - pre).relu() * self.decoder_norms().to(pre.dtype)
        if latents is not None:
            gap = gap * latents.to(pre.dtype)
        return gap.sum(-1).mean()

    @torch.no_grad()
    def _scale_latents_(self, factors: Tensor) -> None:
        super()._scale_latents_(factors)
        self.threshold.mul_(factors.to(self.threshold.dtype))  # thresholds live in pre units
