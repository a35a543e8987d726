"""`generate`: KV-cache decoding against full-forward reference loops, batching, stopping,
streaming, hooks, encoder-decoder models and the errors bad input gets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmscope
from lmscope.generate import GenerationError, SamplingSettings, StreamEvent, generate, next_tokens
from lmscope.model import BaseTransformer
from tests.conftest import small
from tests.generate.tokenizers import CharTokenizer

DECODERS = ["gpt2-small", "llama-tiny", "mistral-tiny", "mixtral-tiny"]


def model_for(preset: str, **overrides: object) -> BaseTransformer:
    # Untied, larger init: a random model whose greedy outputs vary from token to token.
    cfg = small(preset, tie_embeddings=False, init_std=0.2, **overrides)
    return lmscope.build_model(cfg, seed=0).eval()


def reference_decode(
    model: BaseTransformer,
    prompt: list[int],
    n: int,
    settings: SamplingSettings = SamplingSettings(),  # noqa: B008
    seed: int | None = None,
) -> list[int]:
    """No KV cache: a full forward over the whole sequence for every new token."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    seq = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(n):
            logits = model(seq)[:, -1]
            nxt = next_tokens(logits, settings, generator=gen)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[0, len(prompt) :].tolist()


# --- parity with references ---------------------------------------------------------------
@pytest.mark.parametrize("preset", DECODERS)
def test_kv_cache_generation_equals_full_forwards(preset: str) -> None:
    model = model_for(preset)
    prompt = [3, 14, 15, 9, 26, 5, 35]  # longer than mistral's sliding window (5)
    result = generate(model, [prompt], max_new_tokens=12)
    assert result.new_tokens[0] == reference_decode(model, prompt, 12)
    assert len(set(result.new_tokens[0])) > 2  # a non-trivial continuation
    sampled = generate(model, [prompt], max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7)
    settings = SamplingSettings(temperature=0.8, top_p=0.9)
    assert sampled.new_tokens[0] == reference_decode(model, prompt, 12, settings, seed=7)


@pytest.mark.parametrize("preset", DECODERS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])  # 1.0 with top_k=1: sampling, greedy result
def test_batched_left_padded_equals_one_by_one(preset: str, temperature: float) -> None:
    model = model_for(preset)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9], [10, 11, 12], [40, 41, 42, 43, 44, 45]]
    kwargs = {"max_new_tokens": 10, "temperature": temperature, "top_k": 1, "seed": 0}
    batched = generate(model, prompts, **kwargs)
    for prompt, new in zip(prompts, batched.new_tokens, strict=True):
        assert new == generate(model, [prompt], **kwargs).new_tokens[0]
    assert batched.sequences == [p + n for p, n in zip(prompts, batched.new_tokens, strict=True)]


def test_tensor_prompts_with_mask_equal_lists() -> None:
    model = model_for("llama-tiny")
    tokens = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    from_tensor = generate(model, tokens, attention_mask=mask, max_new_tokens=6)
    from_lists = generate(model, [[5, 6, 7], [1, 2, 3, 4, 5]], max_new_tokens=6)
    assert from_tensor.new_tokens == from_lists.new_tokens
    one_dim = generate(model, torch.tensor([5, 6, 7]), max_new_tokens=6)
    assert one_dim.new_tokens[0] == from_lists.new_tokens[0]
    from_numpy = generate(model, np.array([5, 6, 7]), max_new_tokens=6)
    assert from_numpy.new_tokens[0] == from_lists.new_tokens[0]


def test_top_k_one_equals_greedy() -> None:
    model = model_for("gpt2-small")
    prompts = [[4, 8, 15], [16, 23, 42, 7]]
    greedy = generate(model, prompts, max_new_tokens=15)
    top1 = generate(model, prompts, max_new_tokens=15, temperature=1.3, top_k=1, seed=3)
    assert top1.new_tokens == greedy.new_tokens


def test_temperature_to_zero_approaches_greedy() -> None:
    model = model_for("gpt2-small")
    greedy = generate(model, [[4, 8, 15]], max_new_tokens=15).new_tokens
    cold = generate(model, [[4, 8, 15]], max_new_tokens=15, temperature=1e-4, seed=1)
    hot = generate(model, [[4, 8, 15]], max_new_tokens=15, temperature=2.0, seed=1)
    assert cold.new_tokens == greedy
    assert hot.new_tokens != greedy
    assert generate(model, [[4, 8, 15]], max_new_tokens=15, temperature=None).new_tokens == greedy


def test_seed_makes_sampling_reproducible() -> None:
    model = model_for("llama-tiny")
    kwargs = {"max_new_tokens": 20, "temperature": 1.0, "num_samples": 3}
    a = generate(model, [[1, 2, 3]], seed=11, **kwargs).new_tokens
    assert a == generate(model, [[1, 2, 3]], seed=11, **kwargs).new_tokens
    assert a != generate(model, [[1, 2, 3]], seed=12, **kwargs).new_tokens
    assert len({tuple(row) for row in a}) == 3  # num_samples draws differ from each other
    torch.manual_seed(5)
    b = generate(model, [[1, 2, 3]], **kwargs).new_tokens  # seed=None: torch's global RNG
    torch.manual_seed(5)
    assert b == generate(model, [[1, 2, 3]], **kwargs).new_tokens


def test_repetition_penalty_matches_reference_processor() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    model = model_for("gpt2-small")
    prompt = [4, 4, 9, 4]
    ours = generate(model, [prompt], max_new_tokens=12, repetition_penalty=1.8).new_tokens[0]
    processor = RepetitionPenaltyLogitsProcessor(1.8)
    seq = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(12):
            logits = processor(seq, model(seq)[:, -1].clone())
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert ours == seq[0, 4:].tolist()
    assert ours != generate(model, [prompt], max_new_tokens=12).new_tokens[0]


# --- stopping -------------------------------------------------------------------------------
def test_max_new_tokens_is_respected() -> None:
    model = model_for("gpt2-small")
    result = generate(model, [[1], [2, 3, 4]], max_new_tokens=7, eos_token_id=[])
    assert [len(t) for t in result.new_tokens] == [7, 7]
    assert result.finish_reasons == ["length", "length"]


def test_eos_ends_a_row_and_leaves_the_others_unchanged() -> None:
    model = model_for("gpt2-small")
    prompts = [[1, 2, 3], [30, 31]]
    free = generate(model, prompts, max_new_tokens=12).new_tokens
    # An EOS id that the first row produces at step 4 and the second row never does.
    step, eos = next((i, t) for i, t in enumerate(free[0]) if t not in free[1] and i >= 3)
    result = generate(model, prompts, max_new_tokens=12, eos_token_id=eos)
    assert result.new_tokens[0] == free[0][: step + 1]  # EOS included in the ids
    assert result.finish_reasons == ["eos", "length"]
    assert result.new_tokens[1] == free[1]  # frozen row 0 does not disturb row 1


def test_stop_strings_cut_text_and_tokens() -> None:
    model = model_for("gpt2-small")
    tok = CharTokenizer()
    kwargs = {"tokenizer": tok, "max_new_tokens": 30, "temperature": 1.0, "seed": 2}
    free = generate(model, "Hello", eos_token_id=[], **kwargs)
    text = free.texts[0]
    stop = text[12:14]
    cut = text.find(stop)
    result = generate(model, "Hello", eos_token_id=[], stop=[stop, "never here!"], **kwargs)
    assert result.texts == [text[:cut]]
    assert result.finish_reasons == ["stop"]
    assert result.new_tokens[0] == free.new_tokens[0][: cut + len(stop)]  # char tokenizer
    assert generate(model, "Hello", eos_token_id=[], stop=stop.upper() + "?!", **kwargs).texts == [
        text
    ]


def test_tokenizer_eos_is_the_default_and_not_in_the_text() -> None:
    tok = CharTokenizer()
    model = model_for("gpt2-small", unembed_bias=True)
    free = generate(model, "Hi", tokenizer=tok, max_new_tokens=10)
    assert free.finish_reasons == ["length"] and len(free.texts[0]) == 10
    with torch.no_grad():
        model.unembed.bias[tok.eos_id] = 1e4  # the model now always says EOS
    forced = generate(model, "Hi", tokenizer=tok, max_new_tokens=10)
    assert forced.new_tokens == [[tok.eos_id]] and forced.finish_reasons == ["eos"]
    assert forced.texts == [""]
    ignored = generate(model, "Hi", tokenizer=tok, max_new_tokens=3, eos_token_id=[])
    assert ignored.new_tokens == [[tok.eos_id] * 3] and ignored.finish_reasons == ["length"]


# --- streaming and hooks --------------------------------------------------------------------
def test_stream_sees_every_token_and_text_in_order() -> None:
    model = model_for("llama-tiny")
    tok = CharTokenizer()
    events: list[StreamEvent] = []
    result = generate(
        model,
        ["Once upon", "A"],
        tokenizer=tok,
        max_new_tokens=16,
        temperature=1.0,
        seed=4,
        stop=["e", "ab"],
        stream=events.append,
    )
    assert [e.step for e in events] == list(range(len(events)))
    for row in range(2):
        ids = [e.token_ids[row] for e in events if e.token_ids[row] is not None]
        assert ids == result.new_tokens[row]
        assert "".join(e.texts[row] for e in events) == result.texts[row]
        assert events[-1].finished[row] == result.finish_reasons[row]


def test_hooks_fire_during_generation_and_can_steer_it() -> None:
    model = model_for("gpt2-small")
    shapes: list[tuple[int, ...]] = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: shapes.append(tuple(x.shape)))]):
        generate(model, [[1, 2, 3], [4]], max_new_tokens=5)
    # One prefill of the padded batch, then one token per step (the last is not fed).
    assert shapes == [(2, 3, 32)] + [(2, 1, 32)] * 4

    def zero_final(x: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.zeros_like(x)

    with model.hooks(fwd_hooks=[("ln_final.hook_normalized", zero_final)]):
        steered = generate(model, [[1, 2, 3]], max_new_tokens=5)
    assert steered.new_tokens == [[0] * 5]  # all-zero logits: argmax is token 0
    assert generate(model, [[1, 2, 3]], max_new_tokens=5).new_tokens != steered.new_tokens


def test_training_mode_is_restored_and_inference_mode_is_fine() -> None:
    model = lmscope.build_model(small("gpt2-small", dropout=0.5, init_std=0.2), seed=0)
    model.train()
    a = generate(model, [[1, 2]], max_new_tokens=8)
    assert model.training
    with torch.inference_mode():
        b = generate(model, [[1, 2]], max_new_tokens=8)
    assert a.new_tokens == b.new_tokens  # no dropout during generation
    assert model.generate([[1, 2]], max_new_tokens=8).new_tokens == a.new_tokens


# --- encoder-decoder ------------------------------------------------------------------------
def seq2seq_reference(
    model: BaseTransformer,
    source: list[int],
    start: int,
    n: int,
    settings: SamplingSettings = SamplingSettings(),  # noqa: B008
    seed: int | None = None,
) -> list[int]:
    """No KV cache: encode and decode the whole target for every new token."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    src, tgt = torch.tensor([source]), torch.tensor([[start]])
    with torch.inference_mode():
        for _ in range(n):
            nxt = next_tokens(model(src, tgt)[:, -1], settings, generator=gen)
            tgt = torch.cat([tgt, nxt[:, None]], dim=1)
    return tgt[0, 1:].tolist()


def test_encoder_decoder_generation_equals_reference_loop() -> None:
    model = model_for("t5-small")
    sources = [[5, 6, 7, 8, 9, 10], [11, 12]]
    result = generate(model, sources, max_new_tokens=10, decoder_start_token_id=0)
    for source, new, seq in zip(sources, result.new_tokens, result.sequences, strict=True):
        assert new == seq2seq_reference(model, source, 0, 10)
        assert seq == [0, *new]
    other_start = generate(model, sources[:1], max_new_tokens=10, decoder_start_token_id=3)
    assert other_start.new_tokens[0] == seq2seq_reference(model, sources[0], 3, 10)
    settings = SamplingSettings(temperature=1.0, top_k=20)
    sampled = generate(model, sources[:1], max_new_tokens=10, temperature=1.0, top_k=20, seed=9)
    assert sampled.new_tokens[0] == seq2seq_reference(model, sources[0], 0, 10, settings, seed=9)
    assert len(set(sampled.new_tokens[0])) > 3


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompts", "kwargs", "message"),
    [
        ("hello", {}, "text prompts need a tokenizer"),
        ([[1, 2]], {"stop": "x"}, "stop strings .* need a tokenizer"),
        ([], {}, "no prompts were given"),
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1, 99]], {}, "prompt 0 has token id 99, outside this model's vocabulary"),
        ([[1, 2]], {"max_new_tokens": 63}, "max_new_tokens=63 does not fit.*max_new_tokens <= 62"),
        ([[1] * 65], {}, "longest prompt has 65 tokens, more than .*max_seq_len=64"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
        ([[1, 2]], {"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
        ([[1, 2]], {"eos_token_id": 61}, "eos_token_id=61 is outside"),
        ([[1, 2]], {"num_samples": 0}, "num_samples=0 must be >= 1"),
        ([[1, 2]], {"stop": [""], "tokenizer": CharTokenizer()}, "non-empty strings"),
        (
            torch.tensor([[1, 2, 0]]),
            {"attention_mask": torch.tensor([[1, 1, 0]])},
            "must be left-padded",
        ),
        (torch.tensor([[0.5]]), {}, "must hold integer ids"),
    ],
)
def test_bad_input_gets_a_clear_error(prompts: object, kwargs: dict, message: str) -> None:
    model = model_for("gpt2-small")
    with pytest.raises(GenerationError, match=message):
        generate(model, prompts, **kwargs)


def test_encoder_only_models_are_refused() -> None:
    model = lmscope.build_model(small("bert-base"), seed=0)
    with pytest.raises(GenerationError, match=r"is an encoder: .* cannot generate"):
        generate(model, [[1, 2]])


def test_encoder_decoder_limits_name_the_source() -> None:
    model = model_for("t5-small")
    with pytest.raises(GenerationError, match="longest source has 70 tokens"):
        generate(model, [[1] * 70])
    with pytest.raises(GenerationError, match=r"decoder start token.*max_new_tokens <= 63"):
        generate(model, [[1, 2]], max_new_tokens=64)


# --- sliding context --------------------------------------------------------------------
def reference_slide(model: BaseTransformer, prompt: list[int], n: int) -> list[int]:
    """Greedy without a cache, with the documented sliding rule: the window grows until it
    fills its room (the context, or less when few tokens are asked for), then restarts
    from the last half context of everything so far."""
    context, new = model.cfg.max_seq_len, n
    history, window = list(prompt), list(prompt[-context:])
    room = min(context, len(window) + new)
    out = []
    with torch.inference_mode():
        for _ in range(n):
            token = int(model(torch.tensor([window]))[0, -1].argmax())
            out.append(token)
            history.append(token)
            if len(window) >= room:
                window = history[-(context // 2) :]
                room = min(context, len(window) + new)
            else:
                window.append(token)
    return out


@pytest.mark.parametrize("preset", ["gpt2-small", "llama-tiny"])  # learned and rotary positions
def test_sliding_context_generates_past_max_seq_len(preset: str) -> None:
    model = model_for(preset, max_seq_len=12)
    prompt = [3, 14, 15, 9, 26]
    with pytest.raises(GenerationError, match="does not fit"):
        generate(model, [prompt], max_new_tokens=30)
    result = generate(model, [prompt], max_new_tokens=30, overflow="slide")
    assert len(result.new_tokens[0]) == 30
    assert result.new_tokens[0] == reference_slide(model, prompt, 30)
    # A prompt longer than the context is cut to its last max_seq_len tokens.
    long_prompt = list(range(1, 20))
    cut = generate(model, [long_prompt], max_new_tokens=20, overflow="slide")
    assert cut.new_tokens[0] == reference_slide(model, long_prompt, 20)
    assert cut.sequences[0][:19] == long_prompt


def test_sliding_batch_shares_its_rebuilds() -> None:
    """A batch's rows share one cache, so they slide together (when the longest row fills
    the context): up to then each row equals its one-by-one continuation; the longest
    row, whose window decides, equals it throughout."""
    model = model_for("llama-tiny", max_seq_len=10)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [10, 11, 12]]
    batched = generate(model, prompts, max_new_tokens=25, overflow="slide")
    assert batched.new_tokens[0] == reference_slide(model, prompts[0], 25)
    before_first_slide = 10 - 7 + 1
    for prompt, tokens in zip(prompts, batched.new_tokens, strict=True):
        alone = reference_slide(model, prompt, 25)
        assert tokens[:before_first_slide] == alone[:before_first_slide]


def test_sliding_is_refused_for_encoder_decoders() -> None:
    model = lmscope.build_model(small("t5-small"), seed=0)
    with pytest.raises(GenerationError, match="decoder-only"):
        generate(model, [[1, 2]], max_new_tokens=4, overflow="slide")
