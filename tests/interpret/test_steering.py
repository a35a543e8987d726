"""Steering vectors (difference of means), `steer` during KV-cached generation, the effect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lmscope
from lmscope.errors import LmscopeError
from lmscope.generate.prompts import left_pad
from lmscope.generate.steps import decoder_steps
from lmscope.interpret.steering import (
    SteeringVector,
    generate_steered,
    steer,
    steering_vector,
)
from lmscope.interpret.steering_effect import steering_effect
from tests.conftest import small

PROMPTS = [[5, 9, 2, 7], [11, 3], [8, 8, 1, 4, 6]]


@pytest.fixture(scope="module")
def model() -> lmscope.Transformer:
    return lmscope.build_model(small("gpt2-small", init_std=0.1), seed=0).eval()


@pytest.fixture(scope="module")
def vector(model: lmscope.Transformer) -> SteeringVector:
    return steering_vector(model, None, [[1, 2, 3], [4, 5]], [[6, 7, 8], [9]], layer=1)


def _unembedding_direction(model: lmscope.Transformer, token: int) -> torch.Tensor:
    """The unembedding column of `token`, centred (LayerNorm removes the mean anyway)."""
    column = model.W_U[:, token].detach().clone()
    return column - column.mean()


def _no_hooks(model: lmscope.Transformer) -> bool:
    points = model.hook_points().values()
    return not any(p.active for p in points) and not model._forward_pre_hooks


def test_vector_is_the_difference_of_means_of_single_runs(model: lmscope.Transformer) -> None:
    pos, neg = [[1, 2, 3], [4, 5], [7, 7, 7, 7]], [[6, 7, 8], [9]]
    name = "blocks.1.hook_resid_post"
    for position in ("last", "mean"):
        expected = []
        for prompts in (pos, neg):
            acts = []
            for row in prompts:
                _, cache = model.run_with_cache(torch.tensor([row]), names_filter=name)
                act = cache[name][0]
                acts.append(act[-1] if position == "last" else act.mean(0))
            expected.append(torch.stack(acts).mean(0))
        # Ragged prompts are left-padded into one batch: the padding must not leak in.
        vec = steering_vector(model, None, pos, neg, layer=1, hook="resid_post", position=position)
        assert vec.hook == name and vec.layer == 1
        torch.testing.assert_close(vec.vector, expected[0] - expected[1], atol=1e-5, rtol=0)
        assert vec.metadata["positive"] == pos and vec.metadata["position"] == position


def test_prefix_tokens_are_never_read(model: lmscope.Transformer) -> None:
    pos, neg, bos = [[1], [4, 5]], [[6, 7, 8]], [0]
    name = "blocks.0.hook_resid_post"
    for position in ("last", "mean"):
        expected = []
        for prompts in (pos, neg):
            acts = []
            for row in prompts:
                _, cache = model.run_with_cache(torch.tensor([bos + row]), names_filter=name)
                act = cache[name][0, 1:]  # the prompt's own positions
                acts.append(act[-1] if position == "last" else act.mean(0))
            expected.append(torch.stack(acts).mean(0))
        vec = steering_vector(
            model, None, pos, neg, layer=0, hook="resid_post", position=position, prefix=bos
        )
        torch.testing.assert_close(vec.vector, expected[0] - expected[1], atol=1e-5, rtol=0)
        assert vec.metadata["prefix"] == bos


def test_coefficient_zero_is_bit_exact(model: lmscope.Transformer, vector: SteeringVector) -> None:
    tokens, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    plain = model(tokens, attention_mask=mask)
    plain_gen = model.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
    for positions in ("all", "new", 2):
        with steer(model, vector, 0.0, positions=positions):
            assert torch.equal(model(tokens, attention_mask=mask), plain)
            steered = model.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
        assert steered.new_tokens == plain_gen.new_tokens
    with steer(model, vector, 3.0):  # the control: a non-zero coefficient changes the logits
        assert not torch.allclose(model(tokens, attention_mask=mask), plain, atol=1e-3)
    assert _no_hooks(model)


def test_unembedding_direction_raises_its_token_monotonically(model: lmscope.Transformer) -> None:
    coefs = [-4.0, -2.0, 0.0, 1.0, 2.0, 4.0, 8.0]
    for layer, token in ((1, 17), (0, 42)):
        direction = SteeringVector(
            _unembedding_direction(model, token), f"blocks.{layer}.hook_resid_post", layer
        )
        effect = steering_effect(
            model, None, PROMPTS, direction, coefs, [token], baseline_words=[3]
        )
        logprob = effect.target_logprob[:, 0]
        assert torch.all(logprob[1:] > logprob[:-1]), logprob
        rows = effect.rows()
        assert [r["coefficient"] for r in rows] == coefs
        assert rows[2]["delta"] == 0.0 and rows[-1]["delta"] > 1.0
        # Log-probs of one distribution: pushing one token up pulls the other down.
        assert rows[-1]["baseline_delta"] < 0 < rows[-1]["delta_vs_baseline"]


def test_effect_adds_coefficient_zero_and_reads_continuations(
    model: lmscope.Transformer, tmp_path: Path
) -> None:
    direction = SteeringVector(_unembedding_direction(model, 17), "blocks.1.hook_resid_pre", 1)
    effect = steering_effect(
        model, None, PROMPTS, direction, [4.0, 2.0], [17, 23], continuation_tokens=5
    )
    assert effect.coefficients == [0.0, 2.0, 4.0]
    assert effect.continuation_logprob is not None
    assert effect.continuation_logprob.shape == (3, 2)
    assert effect.rows()[-1]["continuation_delta"] > 0.5
    # "new" never steers the prompt: the next-token effect is exactly zero, the
    # continuation's is not.
    new = steering_effect(
        model, None, PROMPTS, direction, [4.0], [17], positions="new", continuation_tokens=5
    )
    assert torch.equal(new.target_logprob[0], new.target_logprob[1])
    assert new.rows()[-1]["continuation_delta"] > 0.5
    out = effect.plot(tmp_path / "effect.png")
    assert out.stat().st_size > 1000
    assert set(effect.to_dict()) == {"targets", "baselines", "rows"}


def _cached_logits(
    model: lmscope.Transformer, tokens: torch.Tensor, mask: torch.Tensor | None, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding through the KV cache, exactly as `generate` steps: logits, tokens."""
    with torch.no_grad():
        logits, step = decoder_steps(model, tokens, mask, n)
        seen, chosen = [logits], []
        for _ in range(n - 1):
            chosen.append(logits.argmax(-1))
            logits = step(chosen[-1])
            seen.append(logits)
        chosen.append(logits.argmax(-1))
    return torch.stack(seen, 1), torch.stack(chosen, 1)


@pytest.mark.parametrize("positions", ["all", "new", "from new token 3"])
def test_kv_cached_steering_equals_recomputation(
    model: lmscope.Transformer, positions: str
) -> None:
    direction = SteeringVector(_unembedding_direction(model, 17), "blocks.1.hook_resid_pre", 1)
    tokens, mask = left_pad(PROMPTS, 0, torch.device("cpu"))
    n, width = 6, tokens.shape[1]
    # Without a cache, "new" is "absolute positions from the first generated token on".
    during, again, unsteered = {
        "all": ("all", "all", 0),
        "new": ("new", width, 1),
        "from new token 3": (width + 2, width + 2, 3),
    }[positions]
    with steer(model, direction, 2.0, positions=during):  # type: ignore[arg-type]
        cached, chosen = _cached_logits(model, tokens, mask, n)
        generated = model.generate(PROMPTS, max_new_tokens=n, eos_token_id=[])
    assert generated.new_tokens == chosen.tolist()
    full = torch.cat([tokens, chosen[:, :-1]], 1)
    full_mask = torch.cat([mask, torch.ones_like(chosen[:, :-1])], 1)
    with torch.no_grad(), steer(model, direction, 2.0, positions=again):  # type: ignore[arg-type]
        recomputed = model(full, attention_mask=full_mask)[:, width - 1 :]
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        plain = model(full, attention_mask=full_mask)[:, width - 1 :]
    # The first `unsteered` new tokens are predicted before any steered position.
    changed = [not torch.allclose(plain[:, i], cached[:, i], atol=1e-4) for i in range(n)]
    assert changed == [i >= unsteered for i in range(n)]


def test_hooks_are_removed_after_an_exception(
    model: lmscope.Transformer, vector: SteeringVector
) -> None:
    tokens = torch.tensor([PROMPTS[0]])
    plain = model(tokens)
    for positions in ("all", "new"):
        with (
            pytest.raises(RuntimeError, match="boom"),
            steer(model, vector, 5.0, positions=positions),
        ):  # type: ignore[arg-type]
            model(tokens)
            raise RuntimeError("boom")
        assert _no_hooks(model)
    assert torch.equal(model(tokens), plain)


def test_save_and_load_round_trip(vector: SteeringVector, tmp_path: Path) -> None:
    path = vector.save(tmp_path / "love-hate")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.vector, vector.vector)
    assert (loaded.hook, loaded.layer, loaded.metadata) == (
        vector.hook,
        vector.layer,
        vector.metadata,
    )
    with pytest.raises(LmscopeError, match="not a saved steering vector"):
        SteeringVector.load(tmp_path)


def test_generate_steered_uses_one_seed_for_all_coefficients(
    model: lmscope.Transformer, vector: SteeringVector
) -> None:
    from lmscope.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ,.!?ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    net = lmscope.build_model(
        small("gpt2-small", vocab_size=tok.vocab_size, init_std=0.2), seed=1
    ).eval()
    # "Love"/"Hate" end in the same character: the last-token difference entering block
    # 0 would be zero, so take the mean over tokens after the block.
    vec = steering_vector(
        net,
        tok,
        ["Love", "I love"],
        ["Hate", "I hate"],
        layer=0,
        hook="resid_post",
        position="mean",
    )
    assert vec.norm > 0.1
    texts = generate_steered(
        net, tok, "I think", vec, [0, 40], max_new_tokens=12, temperature=0.8, seed=5
    )
    plain = net.generate("I think", tokenizer=tok, max_new_tokens=12, temperature=0.8, seed=5)
    assert texts[0.0] == plain.texts
    assert texts[40.0] != plain.texts and len(texts[40.0][0]) == 12


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hook": "pattern"}, "cannot be steered"),
        ({"layer": 7}, "layer 7 does not exist"),
        ({"hook": "blocks.1.hook_resid_pr"}, "no hook point named"),
    ],
)
def test_bad_vector_arguments(model: lmscope.Transformer, kwargs: dict, message: str) -> None:
    args = {"layer": 1, **kwargs}
    with pytest.raises(LmscopeError, match=message):
        steering_vector(model, None, [[1]], [[2]], **args)


def test_bad_steer_arguments(model: lmscope.Transformer, vector: SteeringVector) -> None:
    wrong = SteeringVector(torch.ones(7), vector.hook, vector.layer)
    with pytest.raises(LmscopeError, match="size 7 needs"), steer(model, wrong, 1.0):
        model(torch.tensor([[1, 2]]))
    assert _no_hooks(model)
    with pytest.raises(LmscopeError, match="NaN or infinite"):
        SteeringVector(torch.tensor([1.0, float("nan")]), vector.hook)
    with pytest.raises(LmscopeError, match="must be a single token"):
        from lmscope.tokenizers import CharTokenizer

        tok = CharTokenizer.from_text("abc ")
        steering_effect(model, tok, "ab", vector, [1.0], ["ab"])
