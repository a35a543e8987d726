"""Weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases).

Every step must leave the log-probabilities unchanged, leave a model that saves and
loads back as itself, and reproduce TransformerLens 3.9's processed weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

import lmscope
from lmscope import ModelConfig
from lmscope.errors import LmscopeError
from lmscope.model import (
    build_model,
    center_unembed,
    center_writing_weights,
    fold_ln,
    fold_value_biases,
    process_weights,
)
from lmscope.model.base import BaseTransformer
from tests.conftest import small

TOL = 1e-4
TOKENS = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))

#: GPT-2 shape (LayerNorm, biases, tied head, learned positions); Llama shape (RMSNorm,
#: GQA, SwiGLU, RoPE, no biases); Qwen2 shape (Llama + value biases, no output bias).
GPT2 = small("gpt2-small")
LLAMA = small("llama-tiny", n_kv_heads=2)
QWEN = small("llama-tiny", n_kv_heads=2, qkv_bias=True, tie_embeddings=True)
#: Architectures the steps must also handle: parallel blocks with one shared norm and no
#: attention biases (GPT-J), separate norms (NeoX), MoE with RMSNorm, Gemma's w - 1 norm,
#: LayerNorm without shift, attention-only.
MORE = {
    "gptj": small(
        "gpt2-small",
        parallel_attn_mlp=True,
        parallel_shared_norm=True,
        qkv_bias=False,
        attn_out_bias=False,
        tie_embeddings=False,
        unembed_bias=True,
    ),
    "neox": small("gpt2-small", parallel_attn_mlp=True, positional="rope"),
    "mixtral": small("mixtral-tiny"),
    "gemma": small("llama-tiny", norm_weight_offset=1.0, embed_scale=5.0, tie_embeddings=True),
    "no-shift": small("shakespeare-char"),
    "attn-only": small("attn-only-2l"),
}

STEPS: dict[str, Callable[[BaseTransformer], BaseTransformer]] = {
    "fold_ln": fold_ln,
    "center_writing_weights": center_writing_weights,
    "center_unembed": center_unembed,
    "fold_value_biases": fold_value_biases,
    "process_weights": process_weights,
}


def _random_model(cfg: ModelConfig, seed: int = 0) -> BaseTransformer:
    """A model whose every parameter (norm weights and biases included) is far from init."""
    model = build_model(cfg, seed=seed).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" in name or name.startswith("ln_"):  # norms: scales in [0.5, 1.5]
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_()
            else:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _log_probs(model: BaseTransformer) -> Tensor:
    with torch.no_grad():
        return model(TOKENS).log_softmax(-1)


def _assert_same_structure_as_built(model: BaseTransformer) -> None:
    """The processed structure is exactly what building from the processed config gives."""
    fresh = build_model(model.cfg)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize(
    ("cfg", "step"),
    [
        pytest.param(cfg, step, id=f"{name}-{step}")
        for name, cfg in {"gpt2": GPT2, "llama": LLAMA, "qwen2": QWEN}.items()
        for step in STEPS
        # Centring needs LayerNorm: its refusal for RMSNorm is tested below.
        if step != "center_writing_weights" or cfg.norm == "layernorm"
    ],
)
def test_each_step_alone_keeps_the_log_probs(cfg: ModelConfig, step: str) -> None:
    model = _random_model(cfg)
    before = _log_probs(model)
    assert STEPS[step](model) is model
    torch.testing.assert_close(_log_probs(model), before, atol=TOL, rtol=0)
    _assert_same_structure_as_built(model)


@pytest.mark.parametrize("name", list(MORE))
def test_process_weights_keeps_the_log_probs_of_other_architectures(name: str) -> None:
    model = _random_model(MORE[name])
    before = _log_probs(model)
    process_weights(model)
    torch.testing.assert_close(_log_probs(model), before, atol=TOL, rtol=0)
    _assert_same_structure_as_built(model)
    assert not model.cfg.norm_affine
    assert not any(".ln" in n or n.startswith("ln_") for n, _ in model.named_parameters())


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_affine_false_norms_only_normalise(norm: str) -> None:
    from lmscope.model.norm import make_norm

    module = make_norm(small("gpt2-small", norm=norm, norm_affine=False))
    assert not list(module.parameters())
    x = torch.randn(3, 32) * 3 + 1
    centred = x - x.mean(-1, keepdim=True) if norm == "layernorm" else x
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
    torch.testing.assert_close(module(x), expected)
    scales: list[Tensor] = []
    with module.hook_scale.add_hook(lambda s, h: scales.append(s)):  # the hooked path
        torch.testing.assert_close(module(x), expected)
    assert scales


def test_a_weight_offset_without_a_weight_is_refused() -> None:
    with pytest.raises(LmscopeError, match="norm_affine=false"):
        small("llama-tiny", norm_affine=False, norm_weight_offset=1.0)


def test_fold_ln_centres_the_readers_of_layernorm_and_moves_the_shift_into_biases() -> None:
    model = _random_model(MORE["gptj"])  # no q/k/v biases: the shift needs new ones
    fold_ln(model)
    assert model.cfg.qkv_bias and model.cfg.unembed_bias and not model.cfg.tie_embeddings
    for block in model.blocks:
        for weight in (block.attn.qkv.weight, block.mlp.fc_in.weight):
            assert weight.mean(-1).abs().max() < 1e-6  # reads a mean-free input
        assert block.attn.qkv.bias.abs().max() > 0.01
    assert model.unembed.weight.mean(-1).abs().max() < 1e-6


def test_fold_ln_on_rmsnorm_folds_the_weight_and_centres_nothing() -> None:
    model = _random_model(LLAMA)
    scale = model.blocks[0].ln1.weight.detach().clone()
    w_q = model.blocks[0].attn.W_Q.detach().clone()
    fold_ln(model)
    torch.testing.assert_close(model.blocks[0].attn.W_Q, w_q * scale[None, :, None])
    assert not model.cfg.qkv_bias  # RMSNorm has no shift: no biases appear


def test_fold_ln_twice_is_a_no_op() -> None:
    model = fold_ln(_random_model(GPT2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fold_ln(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_every_write_into_the_residual_stream_is_mean_free_after_processing() -> None:
    model = process_weights(_random_model(GPT2))
    writes: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: object) -> None:
        writes[hook.name] = x  # type: ignore[attr-defined]

    wanted = ("hook_embed", "hook_pos_embed", "hook_attn_out", "hook_mlp_out")
    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: n.endswith(wanted), keep)]):
        model(TOKENS)
    assert len(writes) == 2 + 2 * GPT2.n_layers
    for name, x in writes.items():
        assert x.mean(-1).abs().max() < 1e-5, name
    for block in model.blocks:  # the matrices themselves, column by column
        assert block.attn.out.weight.mean(0).abs().max() < 1e-6
        assert block.mlp.fc_out.weight.mean(0).abs().max() < 1e-6


def test_center_unembed_shifts_each_position_s_logits_by_one_constant() -> None:
    model = _random_model(GPT2)
    with torch.no_grad():
        before = model(TOKENS)
        center_unembed(model)
        after = model(TOKENS)
    shift = after - before
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), atol=TOL, rtol=0)
    assert shift.abs().max() > 1e-3  # the logits did move
    assert model.W_U.mean(-1).abs().max() < 1e-6  # zero mean over the vocabulary


def test_fold_value_biases_with_gqa_moves_them_into_a_new_output_bias() -> None:
    model = _random_model(QWEN)
    assert not model.cfg.attn_out_bias
    attn = model.blocks[1].attn
    b_v = attn.qkv.bias[attn.q_dim + attn.kv_dim :].detach().view(2, -1)  # [kv_head, d_head]
    # Query heads 0, 1 read key/value head 0; heads 2, 3 read head 1.
    expected = sum(b_v[h // 2] @ attn.W_O[h] for h in range(4)).detach()
    fold_value_biases(model)
    assert model.cfg.attn_out_bias
    torch.testing.assert_close(attn.out.bias.detach(), expected)
    assert attn.qkv.bias[attn.q_dim + attn.kv_dim :].abs().max() == 0


def test_process_weights_skips_centring_for_rmsnorm_but_the_step_alone_refuses() -> None:
    model = _random_model(LLAMA)
    w_e = model.embed.weight.detach().clone()
    process_weights(model)
    assert torch.equal(model.embed.weight, w_e)  # not centred
    with pytest.raises(LmscopeError, match="needs a LayerNorm"):
        center_writing_weights(model)


@pytest.mark.parametrize(
    ("cfg", "step", "message"),
    [
        (small("bert-base"), fold_ln, "pre-norm decoders"),
        (small("gpt2-small", norm_placement="post"), process_weights, "post-norm"),
        (small("t5-small"), center_unembed, "single-stack"),
        (small("gpt2-small", embedding_norm=True), center_writing_weights, "embedding norm"),
        (small("mixtral-tiny", norm="layernorm"), fold_ln, "router has no bias"),
        (small("gpt2-small", final_norm=False), process_weights, "final_norm=false"),
    ],
    ids=["encoder", "post-norm", "encoder-decoder", "embedding-norm", "moe-layernorm", "no-final"],
)
def test_unsupported_models_are_refused_clearly(
    cfg: ModelConfig, step: Callable[[BaseTransformer], BaseTransformer], message: str
) -> None:
    model = build_model(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LmscopeError, match=message):
        step(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched


def test_a_processed_model_saves_and_loads_back_as_itself(tmp_path: Path) -> None:
    model = process_weights(_random_model(GPT2))
    loaded = lmscope.load(model.save(tmp_path / "processed"))
    assert loaded.cfg == model.cfg and not loaded.cfg.norm_affine
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS), model(TOKENS))


def test_load_with_process_weights_processes_at_load(tmp_path: Path) -> None:
    model = _random_model(LLAMA)
    directory = model.save(tmp_path / "raw")
    loaded = lmscope.load(directory, process_weights=True)
    process_weights(model)
    assert loaded.cfg == model.cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(TOKENS), model(TOKENS), atol=0, rtol=0)


def test_a_processed_model_cannot_be_exported_as_a_hugging_face_checkpoint(
    tmp_path: Path,
) -> None:
    from lmscope.io.hf import save_hf

    with pytest.raises(LmscopeError, match="norm_affine"):
        save_hf(process_weights(_random_model(GPT2)), tmp_path / "hf", family="gpt2")


# --- parity with TransformerLens 3.9 ---------------------------------------------------


def test_processed_gpt2_matches_transformer_lens(tmp_path: Path) -> None:
    tl = pytest.importorskip("transformer_lens")
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    from tests.io.hf.cases import CASES

    hf = CASES["gpt2"].build()
    hf.save_pretrained(tmp_path)
    ours = lmscope.load(tmp_path, process_weights=True)
    c = hf.config
    cfg = tl.HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_ctx=c.n_positions,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        default_prepend_bos=False,
    )
    ref = tl.HookedTransformer(cfg)
    no = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    ref.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_value_biases=False, **no)
    # process_weights_ also folds the value biases (load_and_process_state_dict's default).
    ref.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    theirs = {k: v.detach() for k, v in ref.state_dict().items()}

    def close(a: Tensor, name: str) -> None:
        torch.testing.assert_close(a.detach(), theirs[name], atol=1e-5, rtol=0, msg=name)

    close(ours.W_E, "embed.W_E")
    close(ours.pos_embed.W_pos, "pos_embed.W_pos")
    close(ours.W_U, "unembed.W_U")
    close(ours.unembed.bias, "unembed.b_U")
    for i, block in enumerate(ours.blocks):
        attn, mlp, n_heads = block.attn, block.mlp, block.attn.n_heads
        b_q, b_k, b_v = attn.qkv.bias.view(3, n_heads, -1)
        for name, mine in {
            "attn.W_Q": attn.W_Q,
            "attn.W_K": attn.W_K,
            "attn.W_V": attn.W_V,
            "attn.W_O": attn.W_O,
            "attn.b_Q": b_q,
            "attn.b_K": b_k,
            "attn.b_V": b_v,
            "attn.b_O": attn.out.bias,
            "mlp.W_in": mlp.W_in,
            "mlp.b_in": mlp.fc_in.bias,
            "mlp.W_out": mlp.W_out,
            "mlp.b_out": mlp.fc_out.bias,
        }.items():
            close(mine, f"blocks.{i}.{name}")
    tokens = TOKENS.clamp(min=3)  # ids 0-2 are special in the case's config
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), ref(tokens), atol=1e-4, rtol=0)
        reference = hf(tokens).logits.log_softmax(-1)
        torch.testing.assert_close(ours(tokens).log_softmax(-1), reference, atol=1e-4, rtol=0)
