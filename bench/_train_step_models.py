"""The three implementations of bench/train_step.py (lmscope, Hugging Face's GPT-2, litgpt's
GPT), built with the same shape and lmscope's weights, and how each is called."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor, nn

from _forward_models import gpt2_config
from lmscope import ModelConfig, build_model
from lmscope.model import BaseTransformer

#: ``--quick``: the preset shrunk for a smoke test (seconds).
QUICK_SHAPE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}

#: How an implementation is called: ``call(module, tokens) -> logits [batch, pos, vocab]``;
#: the module may be the model or its ``torch.compile`` wrapper.
Call = Callable[[nn.Module, Tensor], Tensor]


def have_litgpt() -> bool:
    """Whether litgpt can be imported (it is an optional benchmark dependency)."""
    return importlib.util.find_spec("litgpt") is not None


def model_config(quick: bool) -> ModelConfig:
    """The shakespeare-char preset with dropout 0 (timing), shrunk with `quick`."""
    cfg = ModelConfig.from_preset("shakespeare-char").replace(dropout=0.0)
    return cfg.replace(**QUICK_SHAPE) if quick else cfg


def call_module(module: nn.Module, tokens: Tensor) -> Tensor:
    """Logits of lmscope and litgpt models: ``module(tokens)``."""
    return module(tokens)


def call_hf(module: nn.Module, tokens: Tensor) -> Tensor:
    """Logits of a Hugging Face model: a plain forward, no KV cache."""
    return module(input_ids=tokens, use_cache=False).logits


def build_hf(cfg: ModelConfig, source: BaseTransformer) -> nn.Module:
    """GPT2LMHeadModel of the same shape holding `source`'s weights (zero biases)."""
    from transformers import GPT2LMHeadModel

    hf_cfg = gpt2_config(
        cfg,
        n_inner=cfg.mlp_dim,
        activation_function="gelu",  # the preset's exact GELU (GPT-2's default is tanh)
        layer_norm_epsilon=cfg.norm_eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_cfg)
    ours = source.state_dict()
    theirs = {"transformer.wte.weight": ours["embed.weight"]}
    theirs["transformer.wpe.weight"] = ours["pos_embed.weight"]
    theirs["transformer.ln_f.weight"] = ours["ln_final.weight"]
    names = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.out"}
    names |= {"mlp.c_fc": "mlp.fc_in", "mlp.c_proj": "mlp.fc_out"}
    for i in range(cfg.n_layers):
        theirs[f"transformer.h.{i}.ln_1.weight"] = ours[f"blocks.{i}.ln1.weight"]
        theirs[f"transformer.h.{i}.ln_2.weight"] = ours[f"blocks.{i}.ln2.weight"]
        for hf_name, our_name in names.items():  # Conv1D stores [in, out]
            theirs[f"transformer.h.{i}.{hf_name}.weight"] = ours[
                f"blocks.{i}.{our_name}.weight"
            ].t()
    _copy_into(model, theirs)
    return model


def build_litgpt(cfg: ModelConfig, source: BaseTransformer) -> nn.Module:
    """litgpt's GPT of the same shape (RoPE instead of learned positions), tied head."""
    import litgpt

    lit_cfg = litgpt.Config(
        name="shakespeare-char",
        block_size=cfg.max_seq_len,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_embd=cfg.d_model,
        vocab_size=cfg.vocab_size,
        padded_vocab_size=cfg.vocab_size,  # litgpt pads to a multiple of 512 by default
        intermediate_size=cfg.mlp_dim,
        bias=False,
        parallel_residual=False,
        rotary_percentage=1.0,
        norm_class_name="LayerNorm",
        norm_eps=cfg.norm_eps,
        mlp_class_name="GptNeoxMLP",
        gelu_approximate="none",
    )
    model = litgpt.GPT(lit_cfg)
    model.lm_head.weight = model.transformer.wte.weight  # tie, as the other two
    ours = source.state_dict()
    theirs = {"transformer.wte.weight": ours["embed.weight"]}
    theirs["transformer.ln_f.weight"] = ours["ln_final.weight"]
    names = {"norm_1": "ln1", "norm_2": "ln2", "attn.qkv": "attn.qkv", "attn.proj": "attn.out"}
    names |= {"mlp.fc": "mlp.fc_in", "mlp.proj": "mlp.fc_out"}
    for i in range(cfg.n_layers):
        for lit_name, our_name in names.items():  # same [Q; K; V] row layout as ours
            theirs[f"transformer.h.{i}.{lit_name}.weight"] = ours[f"blocks.{i}.{our_name}.weight"]
    _copy_into(model, theirs)
    return model


def _copy_into(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Copy `weights` into `model`; every other parameter (biases) becomes zero."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])
            else:
                param.zero_()


def build(impl: str, cfg: ModelConfig) -> tuple[nn.Module, Call]:
    """Model `impl` in training mode, starting from lmscope's seed-0 weights."""
    ours = build_model(cfg, seed=0)
    if impl == "hf":
        return build_hf(cfg, ours).train(), call_hf
    if impl == "litgpt":
        return build_litgpt(cfg, ours).train(), call_module
    return ours.train(), call_module


def n_params(model: nn.Module) -> int:
    """Parameters, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters())
