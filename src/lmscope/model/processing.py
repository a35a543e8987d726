"""Weight processing: the same model, rewritten so that its weights read more simply.

TransformerLens (3.9) processes weights at load; these are its four steps, with its
maths, applied in place by `process_weights` in this order:

1. `fold_ln`: a norm's learned scale ``w`` and shift ``b`` move into every linear map
   that reads the norm's output, ``x_norm (w * W) + (b_W + b W)``; the norm is left
   only normalising. LayerNorm output has zero mean over d_model, so each reading
   matrix is also centred over d_model (no effect on outputs). RMSNorm does not centre:
   only its weight is folded, nothing is centred.
2. `center_writing_weights`: every matrix and bias that writes into the residual
   stream (``W_E``, ``W_pos``, ``W_O``, ``b_O``, ``W_out``, ``b_out``) gets zero mean
   over d_model. Every reader of the stream is a LayerNorm, which subtracts the mean
   anyway, so outputs do not change; each component's write is then mean-free.
3. `center_unembed`: ``W_U`` (and ``b_U``) get zero mean over the vocabulary. Logits
   move by a per-position constant: log-probabilities do not change.
4. `fold_value_biases`: attention patterns sum to one, so a value bias adds the same
   ``b_V @ W_O`` at every position; it moves into ``b_O`` (``b_V`` becomes zero).

What the steps leave behind is written to the config, so that a processed model saves
and loads back as the same processed model: norms lose their parameters
(``norm_affine=False``); a linear map that must absorb a norm's shift or the value
biases gains a bias (``qkv_bias``, ``mlp_bias``, ``attn_out_bias``, ``unembed_bias``);
a tied unembedding is untied, since ``W_U`` and ``W_E`` are no longer transposes.

Supported: single-stack pre-norm decoders (GPT-2, Llama, Mistral, GPT-J/NeoX parallel
blocks, MoE with RMSNorm, Gemma's offset RMSNorm). `center_unembed` and
`fold_value_biases` also work on encoders. Encoder-decoders, post-norm stacks and an
embedding norm are refused where a step would need them (the error says which).

This module lives in `lmscope.model`, not `lmscope.interpret`: it changes the model's
structure and config (what `io.load(..., process_weights=True)` applies at load), and
`lmscope.io` depends on the model, never on the analyses.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lmscope.errors import LmscopeError
from lmscope.model.base import BaseTransformer
from lmscope.model.moe import MoE
from lmscope.model.norm import LayerNorm, RMSNorm
from lmscope.model.position.absolute import LearnedPositionEmbedding
from lmscope.model.transformer import Transformer

#: Each step returns the model it was given (processed in place).
M = TypeVar("M", bound=BaseTransformer)


def fold_ln(model: M) -> M:
    """Fold every norm's scale and shift into the layers that read it; in place.

    Leaves ``norm_affine=False`` norms. LayerNorm: the shift becomes a bias of the
    readers and each reading matrix is centred over d_model. RMSNorm: the weight (for
    Gemma, ``offset + weight``) is folded, nothing is centred. A model whose norms have
    no parameters (already folded, or ``norm='none'``) is returned unchanged.
    """
    cfg = _pre_norm_decoder(model, "fold_ln")
    if cfg.norm == "none" or not cfg.norm_affine:
        return model
    has_shift = cfg.norm == "layernorm" and cfg.norm_bias
    if has_shift and cfg.is_moe:
        raise LmscopeError(
            "fold_ln: an MoE router has no bias to absorb the LayerNorm shift; folding "
            "is supported for MoE models with RMSNorm or with norm_bias=false."
        )
    changes: dict[str, Any] = {"norm_affine": False, "norm_bias": False, "norm_weight_offset": 0.0}
    if has_shift:
        changes.update(qkv_bias=True, mlp_bias=cfg.mlp_bias or not cfg.attn_only)
        changes["unembed_bias"] = cfg.unembed_bias or cfg.final_norm
    if cfg.final_norm:
        _untie(model)  # W_U is rescaled, W_E is not
    _update_config(model, **changes)
    centre = cfg.norm == "layernorm"
    with torch.no_grad():
        for norm, readers in _norm_readers(model):  # after the biases were added
            scale, shift = _affine(norm)
            for weight, bias, factor in readers:
                _fold_into(weight, bias, scale, shift, centre, factor)
            norm.weight = None
            if isinstance(norm, LayerNorm):
                norm.bias = None
            else:
                norm.weight_offset = 0.0
    return model


def center_writing_weights(model: M) -> M:
    """Give every write into the residual stream zero mean over d_model; in place.

    Needs LayerNorm before every reader of the stream (the mean it removes is the mean
    we remove here); RMSNorm models are refused (`process_weights` skips them, as
    TransformerLens does). Sinusoidal position vectors are computed, not weights, and
    stay as they are; the outputs are unchanged either way.
    """
    _check_centring(model)
    _untie(model)  # centring W_E must not move W_U
    with torch.no_grad():
        _centre(model.embed.weight, dim=-1)
        if isinstance(model.pos_embed, LearnedPositionEmbedding):
            _centre(model.pos_embed.weight, dim=-1)
        for block in model.blocks:
            for linear in _writers(block):
                _centre(linear.weight, dim=0)  # [d_model, d_in]: each column is a write
                if linear.bias is not None:
                    _centre(linear.bias, dim=0)
    return model


def center_unembed(model: M) -> M:
    """Give ``W_U`` and ``b_U`` zero mean over the vocabulary; in place.

    Softmax ignores a constant added to every logit, so log-probabilities are unchanged
    while each logit reads as "relative to the average token". Unties a tied head.
    """
    _single_stack(model, "center_unembed")
    head = _unembed(model)
    _untie(model)
    assert head.weight is not None
    with torch.no_grad():
        _centre(head.weight, dim=0)  # [vocab, d_model]
        if head.bias is not None:
            _centre(head.bias, dim=0)
    return model


def fold_value_biases(model: M) -> M:
    """Move each layer's value biases into its output bias: ``b_O += sum_h b_V[h] W_O[h]``.

    Exact because each query's attention weights sum to one. With GQA a key/value head's
    bias is counted once for every query head that reads it. Adds an output bias
    (``attn_out_bias=True``) where there was none; a model without value biases is
    returned unchanged.
    """
    cfg = _single_stack(model, "fold_value_biases")
    if not cfg.qkv_bias:
        return model
    if not cfg.attn_out_bias:
        _update_config(model, attn_out_bias=True)
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            assert attn.qkv.bias is not None and attn.out.bias is not None
            b_v = attn.qkv.bias[attn.q_dim + attn.kv_dim :]  # [kv_head * d_head]
            per_head = b_v.view(attn.n_kv_heads, attn.d_head).repeat_interleave(
                attn.n_heads // attn.n_kv_heads, dim=0
            )  # [head, d_head]: query head h reads key/value head h // group
            # out.weight is [d_model, head * d_head]: W_O summed over heads in one matmul.
            folded = _work(attn.out.weight) @ _work(per_head).reshape(-1)
            attn.out.bias.copy_(_work(attn.out.bias) + folded)
            b_v.zero_()
    return model


def process_weights(
    model: M,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> M:
    """Apply the chosen steps in TransformerLens' order, in place; returns `model`.

    Rules: `center_writing_weights` is skipped for models without LayerNorm (RMSNorm,
    no norm), as TransformerLens does; after `fold_value_biases` the output biases are
    centred again when writing weights were centred. Other unsupported cases raise.
    Log-probabilities are unchanged (to float rounding).
    """
    centred = center_writing_weights and model.cfg.norm == "layernorm"
    if centred:  # refuse before anything is changed
        _check_centring(model)
    if fold_ln:
        _STEPS["fold_ln"](model)
    if centred:
        _STEPS["center_writing_weights"](model)
    if center_unembed:
        _STEPS["center_unembed"](model)
    if fold_value_biases:
        _STEPS["fold_value_biases"](model)
        if centred:  # the folded b_V @ W_O is not mean-free in general
            with torch.no_grad():
                for block in model.blocks:
                    if block.attn.out.bias is not None:
                        _centre(block.attn.out.bias, dim=0)
    return model


#: The steps by name (process_weights' flags shadow the function names).
_STEPS = {
    "fold_ln": fold_ln,
    "center_writing_weights": center_writing_weights,
    "center_unembed": center_unembed,
    "fold_value_biases": fold_value_biases,
}

# --- what each step may touch ---------------------------------------------------------


def _single_stack(model: Any, step: str) -> Any:
    """The config of a decoder-only or encoder-only model; an error for anything else."""
    if not isinstance(model, Transformer):
        arch = getattr(getattr(model, "cfg", None), "architecture", type(model).__name__)
        raise LmscopeError(
            f"{step} supports single-stack models (decoder-only, encoder-only); got {arch!r}."
        )
    return model.cfg


def _pre_norm_decoder(model: Any, step: str) -> Any:
    """The config of a pre-norm decoder without an embedding norm; an error otherwise."""
    cfg = _single_stack(model, step)
    if cfg.architecture != "decoder" or cfg.norm_placement != "pre":
        raise LmscopeError(
            f"{step} supports pre-norm decoders; this model is a {cfg.norm_placement}-norm "
            f"{cfg.architecture}, whose norms sit after the residual additions (nothing "
            "to fold them into without changing the stream)."
        )
    if cfg.embedding_norm:
        raise LmscopeError(
            f"{step}: the embedding norm (embedding_norm=true) writes the residual stream "
            "itself, so it can neither be folded nor centred; not supported."
        )
    return cfg


def _check_centring(model: Any) -> None:
    """Refuse `center_writing_weights` unless a LayerNorm precedes every reader."""
    cfg = _pre_norm_decoder(model, "center_writing_weights")
    if cfg.norm != "layernorm" or not cfg.final_norm:
        what = f"norm={cfg.norm!r}" if cfg.norm != "layernorm" else "final_norm=false"
        raise LmscopeError(
            "center_writing_weights needs a LayerNorm before every reader of the residual "
            f"stream (it removes the mean we would remove); this model has {what}. Use "
            "process_weights(), which skips this step where it does not apply."
        )


def _unembed(model: Transformer) -> Any:
    """The unembedding module (a decoder's head or an encoder's MLM head)."""
    head = model.unembed or (model.mlm_head.unembed if model.mlm_head else None)
    if head is None:
        raise LmscopeError("center_unembed: this encoder has no unembedding (mlm_head=false).")
    return head


def _mlp_readers(block: nn.Module) -> list[nn.Linear]:
    """The linear maps that read the MLP's input (router and every expert for MoE)."""
    mlp = block.mlp
    if mlp is None:
        return []
    if isinstance(mlp, MoE):
        return [mlp.router, *(expert.fc_in for expert in mlp.experts)]
    return [mlp.fc_in]


def _writers(block: nn.Module) -> list[nn.Linear]:
    """The linear maps of `block` whose outputs are added to the residual stream."""
    mlp = block.mlp
    out = [block.attn.out]
    if isinstance(mlp, MoE):
        out += [expert.fc_out for expert in mlp.experts]
    elif mlp is not None:
        out.append(mlp.fc_out)
    return out


Reader = tuple[nn.Parameter, nn.Parameter | None, float]


def _norm_readers(model: Transformer) -> list[tuple[nn.Module, list[Reader]]]:
    """Each affine norm with the (weight, bias, shift factor) of every map reading it.

    Weights are ``[d_out, d_model]``. The shift factor is what multiplies the norm's
    output before the map (the unembedding's `unembed_scale`, else 1).
    """
    groups: list[tuple[nn.Module, list[Reader]]] = []
    for block in model.blocks:
        mlp = _mlp_readers(block)
        attn = [block.attn.qkv] + (mlp if block.mlp_norm_name == "ln1" else [])
        groups.append((block.ln1, [(m.weight, m.bias, 1.0) for m in attn]))
        if mlp and block.mlp_norm_name != "ln1":
            groups.append((block.ln_mlp, [(m.weight, m.bias, 1.0) for m in mlp]))
    if model.cfg.final_norm and model.unembed is not None:
        head = model.unembed
        groups.append((model.ln_final, [(head.weight, head.bias, head.scale)]))
    return groups


# --- maths ------------------------------------------------------------------------------


def _work(t: Tensor) -> Tensor:
    """`t` in at least float32: folding in bf16 would round every product."""
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def _affine(norm: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The effective scale and shift a norm applies after normalising."""
    if isinstance(norm, RMSNorm):
        assert norm.weight is not None
        return norm.weight_offset + _work(norm.weight), None
    assert isinstance(norm, LayerNorm) and norm.weight is not None
    return _work(norm.weight), None if norm.bias is None else _work(norm.bias)


def _fold_into(
    weight: nn.Parameter,
    bias: nn.Parameter | None,
    scale: Tensor,
    shift: Tensor | None,
    centre: bool,
    factor: float,
) -> None:
    """``W <- W diag(scale)`` (centred over d_model if asked), ``b <- b + factor W shift``."""
    w = _work(weight)
    if shift is not None:
        assert bias is not None, "biases are added before folding (_update_config)"
        bias.copy_(_work(bias) + factor * (w @ shift))
    w = w * scale
    if centre:
        w = w - w.mean(-1, keepdim=True)
    weight.copy_(w)


def _centre(p: Tensor, dim: int) -> None:
    """Subtract the mean along `dim`, in place."""
    w = _work(p)
    p.copy_(w - w.mean(dim, keepdim=True))


# --- structure and config ---------------------------------------------------------------


def _untie(model: Transformer) -> None:
    """Give a tied unembedding its own copy of ``W_E`` (the two will now differ)."""
    if not model.cfg.tie_embeddings:
        return
    head = _unembed(model)
    head.weight = nn.Parameter(model.embed.weight.detach().clone())
    head.tied = False
    _update_config(model, tie_embeddings=False)


def _update_config(model: Transformer, **changes: Any) -> None:
    """Apply `changes` to the config every module holds, then add the biases it implies.

    Added biases are zero, so the outputs do not change; the structure then matches
    what building from the new config gives, which is what makes save/load exact.
    """
    cfg = model.cfg.replace(**changes)
    for module in model.modules():
        if hasattr(module, "cfg"):
            module.cfg = cfg
    for block in model.blocks:
        if cfg.qkv_bias:
            _ensure_bias(block.attn.qkv)
        if cfg.attn_out_bias:
            _ensure_bias(block.attn.out)
        if cfg.mlp_bias:
            mlp = block.mlp
            for dense in mlp.experts if isinstance(mlp, MoE) else [] if mlp is None else [mlp]:
                _ensure_bias(dense.fc_in)
                _ensure_bias(dense.fc_out)
    if cfg.unembed_bias and model.unembed is not None:
        _ensure_bias(model.unembed)


def _ensure_bias(module: nn.Module) -> None:
    """Give `module` (a Linear or the unembedding) a zero bias if it has none."""
    if module.bias is None:
        like = module.weight
        assert like is not None, "a tied unembedding is untied before it gets a bias"
        module.bias = nn.Parameter(torch.zeros(like.shape[0], dtype=like.dtype, device=like.device))
