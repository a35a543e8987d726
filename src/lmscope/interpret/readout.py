"""Reading the residual stream out as logits: the final norm and the unembedding.

A decoder's logits are ``unembed(ln_final(resid))``, where ``unembed(h) = s * h @ W_U + b_U``
(``s`` is the unembedding scale, 1 except for T5-style heads). The logit lens applies
this read-out to intermediate streams; direct logit attribution linearises it:

    ln_final(x) = centre(x) / sigma(x) * w + b      (RMSNorm: no centring, no b)

so with the scale ``sigma`` frozen at its value on the full stream, the logit of token t
is ``sum_c centre(c) / sigma . d_t + const_t`` over any components ``c`` that sum to
``x``, with the *logit direction* ``d_t = s * w * W_U[:, t]`` and the constant
``const_t = s * b . W_U[:, t] + b_U[t]`` (`logit_direction`, `logit_constant`).
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor, nn

from lmscope.errors import LmscopeError
from lmscope.model.norm import LayerNorm, RMSNorm


def check_readout_model(model: Any, analysis: str) -> None:
    """Refuse models whose residual stream is not read out by ``ln_final`` + ``unembed``.

    The lenses and attribution need a decoder-only stack with an LM head and pre-norm
    (or parallel) blocks, where ``hook_resid_post`` of the last block is what the final
    norm reads; post-norm blocks renormalise the stream after every layer.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.architecture != "decoder" or getattr(model, "unembed", None) is None:
        arch = getattr(cfg, "architecture", type(model).__name__)
        raise LmscopeError(
            f"{analysis} needs a decoder-only model with an LM head (unembedding); got {arch!r}."
        )
    if cfg.norm_placement != "pre":
        raise LmscopeError(
            f"{analysis} needs pre-norm blocks (the residual stream is summed, then read "
            f"by the final norm); this model's norm_placement is {cfg.norm_placement!r}."
        )


def final_norm_affine(model: Any) -> tuple[Tensor | None, Tensor | None]:
    """The final norm's elementwise weight and bias ``(w, b)``; None where it has none."""
    norm: nn.Module = model.ln_final
    if isinstance(norm, LayerNorm):
        return norm.weight, norm.bias
    if isinstance(norm, RMSNorm):
        # Gemma stores w - 1 and scales by 1 + w (weight_offset).
        return norm.weight + norm.weight_offset if norm.weight_offset else norm.weight, None
    if isinstance(norm, nn.Identity):
        return None, None
    raise LmscopeError(f"unsupported final norm {type(norm).__name__}.")


def _unembed_column(model: Any, token: int, baseline: int | None) -> Float[Tensor, " d_model"]:
    column = model.W_U[:, token]
    return column if baseline is None else column - model.W_U[:, baseline]


def logit_direction(
    model: Any, token: int, baseline: int | None = None
) -> Float[Tensor, " d_model"]:
    """``d = s * w * (W_U[:, token] - W_U[:, baseline])``: the direction whose dot product
    with the normalised-but-unweighted stream (``centre(x) / sigma``) is the logit
    (difference), up to `logit_constant`."""
    direction = _unembed_column(model, token, baseline) * model.unembed.scale
    weight, _ = final_norm_affine(model)
    return direction if weight is None else direction * weight


def logit_constant(model: Any, token: int, baseline: int | None = None) -> float:
    """The part of the logit (difference) that no component writes: the final norm's bias
    read by the unembedding, plus the unembedding bias."""
    total = 0.0
    _, bias = final_norm_affine(model)
    if bias is not None:
        total += float(bias @ _unembed_column(model, token, baseline)) * model.unembed.scale
    if model.unembed.bias is not None:
        b_u = model.unembed.bias
        total += float(b_u[token] - (b_u[baseline] if baseline is not None else 0.0))
    return total


def readout_logits(
    model: Any, resid: Float[Tensor, "*batch d_model"]
) -> Float[Tensor, "*batch vocab"]:
    """``unembed(ln_final(resid))``: what the model would predict if `resid` were its last
    residual stream (the final norm recomputes its statistics from `resid`)."""
    return model.unembed(model.ln_final(resid), model.embed.weight)
