"""Whole models: causality, equivariance, tying, gradients, KV-cache decoding, padding."""

from __future__ import annotations

import pytest
import torch

from lmscope import LmscopeError, build_model
from lmscope.presets import preset_names
from tests.conftest import small

POSITIONAL = [
    "none",
    "sinusoidal",
    "sinusoidal-concat",
    "learned",
    "relative",
    "t5-bias",
    "rope",
    "alibi",
]


@pytest.mark.parametrize("positional", POSITIONAL)
def test_changing_a_future_token_never_changes_earlier_logits(positional: str) -> None:
    model = build_model(small("gpt2-small", positional=positional)).eval()
    tokens = torch.randint(0, 61, (2, 12))
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 1) % 61
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], atol=1e-6, rtol=0)
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-4


def test_encoder_without_positions_is_permutation_equivariant() -> None:
    model = build_model(small("bert-base", positional="none", n_token_types=0)).eval()
    tokens = torch.randint(0, 61, (2, 9))
    perm = torch.randperm(9)
    with torch.no_grad():
        out, out_perm = model(tokens), model(tokens[:, perm])
    torch.testing.assert_close(out[:, perm], out_perm, atol=1e-5, rtol=0)
    # ... and an encoder with positions is not.
    positioned = build_model(small("bert-base", n_token_types=0)).eval()
    with torch.no_grad():
        assert (positioned(tokens)[:, perm] - positioned(tokens[:, perm])).abs().max() > 1e-3


def test_tied_unembedding_is_the_embedding_and_counted_once() -> None:
    tied = build_model(small("gpt2-small"))
    untied = build_model(small("gpt2-small", tie_embeddings=False))
    assert tied.unembed.weight is None
    assert tied.W_U.data_ptr() == tied.embed.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == 61 * 32
    x = torch.randn(1, 3, 32)
    torch.testing.assert_close(tied.unembed(x, tied.embed.weight), x @ tied.embed.weight.T)
    # A gradient through the logits reaches the one shared matrix.
    tied.unembed(x, tied.embed.weight).sum().backward()
    assert tied.embed.weight.grad is not None


@pytest.mark.parametrize("preset", preset_names())
def test_every_parameter_receives_a_gradient(preset: str) -> None:
    overrides = {"n_token_types": 2} if preset == "bert-base" else {}
    model = build_model(small(preset, **overrides)).train()
    tokens = torch.randint(0, 61, (4, 16))
    if model.cfg.architecture == "encoder-decoder":
        out = model(tokens, tokens)
    else:
        kwargs = {"token_type_ids": torch.randint(0, 2, (4, 16))} if overrides else {}
        out = model(tokens, **kwargs)
    loss = out.float().pow(2).mean() + model.aux_loss()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_relative_position_tables_receive_gradients() -> None:
    model = build_model(small("gpt2-small", positional="relative", relative_max_distance=3))
    model(torch.randint(0, 61, (2, 10))).pow(2).mean().backward()
    rel = model.blocks[0].attn.relative
    assert rel.key.grad.abs().sum() > 0 and rel.value.grad.abs().sum() > 0


CACHE_CASES = {
    "gpt2-learned": ("gpt2-small", {}),
    "llama-rope": ("llama-tiny", {}),
    "mistral-gqa-window": ("mistral-tiny", {"sliding_window": 4}),
    "mqa": ("llama-tiny", {"n_kv_heads": 1}),
    "alibi": ("gpt2-small", {"positional": "alibi"}),
    "t5-bias": ("gpt2-small", {"positional": "t5-bias"}),
    "relative": ("gpt2-small", {"positional": "relative", "relative_max_distance": 3}),
    "sinusoidal": ("gpt2-small", {"positional": "sinusoidal"}),
    "moe": ("mixtral-tiny", {}),
    "interleaved-partial-rope": (
        "llama-tiny",
        {"rope_layout": "interleaved", "rotary_fraction": 0.5},
    ),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_kv_cache_decoding_matches_full_forward(case: str) -> None:
    preset, overrides = CACHE_CASES[case]
    model = build_model(small(preset, **overrides)).eval()
    tokens = torch.randint(0, 61, (2, 14))
    with torch.no_grad():
        full = model(tokens)
        cache = model.make_cache(2, 14)
        # Prefill in two chunks (the second starts mid-cache), then one token at a time.
        steps = [model(tokens[:, :5], kv_cache=cache), model(tokens[:, 5:9], kv_cache=cache)]
        steps += [model(tokens[:, i : i + 1], kv_cache=cache) for i in range(9, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 14


@pytest.mark.parametrize("case", ["llama-rope", "mistral-gqa-window", "alibi", "gpt2-learned"])
def test_left_padded_batch_equals_each_sequence_alone_through_the_cache(case: str) -> None:
    preset, overrides = CACHE_CASES[case]
    model = build_model(small(preset, **overrides)).eval()
    short, long = torch.randint(0, 61, (1, 4)), torch.randint(0, 61, (1, 7))
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([torch.cat([pad, short], 1), long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    new = torch.randint(0, 61, (2, 3))
    with torch.no_grad():
        cache = model.make_cache(2, 10)
        prefill = model(batch, attention_mask=mask, kv_cache=cache)
        decoded = [model(new[:, i : i + 1], kv_cache=cache) for i in range(3)]
        alone_short = model(torch.cat([short, new[:1]], 1))
        alone_long = model(torch.cat([long, new[1:]], 1))
    torch.testing.assert_close(prefill[0, 3:], alone_short[0, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(prefill[1], alone_long[0, :7], atol=1e-5, rtol=0)
    steps = torch.cat(decoded, 1)
    torch.testing.assert_close(steps[0], alone_short[0, 4:], atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[1], alone_long[0, 7:], atol=1e-5, rtol=0)


def test_left_padded_full_forward_equals_unpadded_rows() -> None:
    model = build_model(small("llama-tiny")).eval()
    seq = torch.randint(0, 61, (1, 5))
    batch = torch.cat([torch.zeros(1, 2, dtype=torch.long), seq], 1)
    with torch.no_grad():
        padded = model(batch, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))
        alone = model(seq)
    torch.testing.assert_close(padded[0, 2:], alone[0], atol=1e-5, rtol=0)


def test_encoder_decoder_cached_decoding_matches_full_decode() -> None:
    model = build_model(small("t5-small")).eval()
    source = torch.randint(0, 61, (2, 9))
    source_mask = torch.ones(2, 9, dtype=torch.long)
    source_mask[0, 6:] = 0  # right padding on the source
    target = torch.randint(0, 61, (2, 6))
    with torch.no_grad():
        full = model(source, target, attention_mask=source_mask)
        encoded = model.encode(source, attention_mask=source_mask)
        cache = model.make_cache(2, 6)
        steps = [
            model.decode(target[:, i : i + 1], encoded, attention_mask=source_mask, kv_cache=cache)
            for i in range(6)
        ]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert all(pair is not None for pair in cache.cross)


def test_encoder_decoder_source_padding_is_ignored() -> None:
    model = build_model(small("t5-small")).eval()
    source, target = torch.randint(0, 61, (1, 5)), torch.randint(0, 61, (1, 4))
    padded = torch.cat([source, torch.randint(0, 61, (1, 3))], 1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded, target, attention_mask=mask), model(source, target), atol=1e-5, rtol=0
        )


def test_encoder_heads_mlm_logits_or_hidden_states() -> None:
    with_head = build_model(small("bert-base")).eval()
    without = build_model(small("bert-base", mlm_head=False)).eval()
    tokens = torch.randint(0, 61, (2, 5))
    assert with_head(tokens).shape == (2, 5, 61)
    assert without(tokens).shape == (2, 5, 32)
    with pytest.raises(LmscopeError, match="no unembedding"):
        _ = without.W_U


def test_token_types_change_the_encoding() -> None:
    model = build_model(small("bert-base", n_token_types=2)).eval()
    tokens = torch.randint(0, 61, (1, 5))
    with torch.no_grad():
        zero = model(tokens)
        assert torch.equal(model(tokens, token_type_ids=torch.zeros(1, 5, dtype=torch.long)), zero)
        assert not torch.allclose(
            model(tokens, token_type_ids=torch.ones(1, 5, dtype=torch.long)), zero
        )
    plain = build_model(small("gpt2-small"))
    with pytest.raises(LmscopeError, match="no token type embeddings"):
        plain(tokens, token_type_ids=torch.zeros(1, 5, dtype=torch.long))


def test_dropout_is_active_in_training_only() -> None:
    model = build_model(small("gpt2-small", dropout=0.3))
    tokens = torch.randint(0, 61, (1, 6))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))
    model.eval()
    assert torch.equal(model(tokens), model(tokens))


def test_clear_errors_for_bad_inputs() -> None:
    model = build_model(small("gpt2-small", max_seq_len=8)).eval()
    with pytest.raises(LmscopeError, match="beyond the 8 learned positions"):
        model(torch.randint(0, 61, (1, 9)))
    with pytest.raises(
        LmscopeError, match=r"token id 61 is outside this model's vocabulary \[0, 61\)"
    ):
        model(torch.tensor([[1, 61]]))
    cache = model.make_cache(1, 4)
    model(torch.randint(0, 61, (1, 3)), kv_cache=cache)
    with pytest.raises(LmscopeError, match="KV cache is full"):
        model(torch.randint(0, 61, (1, 2)), kv_cache=cache)


def test_inference_logits_equal_autograd_logits() -> None:
    # The inference path writes logits into row-padded memory; the values must not move.
    model = build_model(small("gpt2-small", vocab_size=61)).eval()
    tokens = torch.randint(0, 61, (2, 40))  # 80 rows: PADDED_MIN_ROWS or more
    with torch.inference_mode():
        fast = model(tokens)
    slow = model(tokens)
    assert not fast.is_contiguous() and slow.is_contiguous()
    assert torch.equal(fast, slow.detach())
    assert fast.view(-1, 61).shape == (80, 61)
    with torch.inference_mode():
        assert model(tokens[:, :5]).is_contiguous()  # few rows (decoding): plain product


def test_inference_logits_follow_autocast() -> None:
    model = build_model(small("gpt2-small")).eval()
    tokens = torch.randint(0, 61, (1, 5))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
    assert logits.dtype == torch.bfloat16  # the vocabulary projection ran under autocast
