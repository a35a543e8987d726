"""trace_token reports exactly what the model computes, for every kind of small model."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from lmscope.errors import LmscopeError
from lmscope.explain import render_trace, trace_token
from lmscope.model import build_model
from tests.conftest import small

TOKENS = [5, 17, 3, 42, 8, 8, 29, 1, 60, 12]
PRESETS = ["gpt2-small", "llama-tiny", "mistral-tiny", "mixtral-tiny", "attn-only-2l", "bert-base"]


def f32(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def record(
    model: torch.nn.Module, names: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An independent forward, reading `names` with plain recording hooks."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [(n, lambda x, h: seen.__setitem__(h.name, x.clone())) for n in names]
    with torch.no_grad():
        out = model.run_with_hooks(torch.tensor([TOKENS]), fwd_hooks=hooks)
    return out, seen


@pytest.mark.parametrize("preset", PRESETS)
def test_trace_matches_the_models_own_forward(preset: str) -> None:
    model = build_model(small(preset), seed=0).eval()
    pos, head = 6, 3
    trace = trace_token(model, TOKENS, position=pos, head=head, top_k=3)
    last = f"blocks.{model.cfg.n_layers - 1}."
    names = [last + "hook_resid_post", "blocks.0.hook_resid_pre"]
    if not model.cfg.attn_only:
        names.append(last + ("mlp.hook_expert_indices" if model.cfg.is_moe else "mlp.hook_post"))
    out, seen = record(model, names)

    assert trace.position == pos and len(trace.layers) == model.cfg.n_layers
    assert torch.allclose(
        f32(trace.layers[-1].resid_post), seen[last + "hook_resid_post"][0, pos], atol=1e-5
    )
    assert torch.allclose(
        f32(trace.layers[0].resid_pre), seen["blocks.0.hook_resid_pre"][0, pos], atol=1e-6
    )

    # Top predictions are the model's own logits and probabilities at that position.
    assert trace.predictions is not None and len(trace.predictions) == 3
    logits = out[0, pos]
    probs = logits.softmax(-1)
    top = trace.predictions[0]
    assert top.token == int(logits.argmax())
    assert top.logit == pytest.approx(float(logits.max()), abs=1e-5)
    assert top.prob == pytest.approx(float(probs.max()), abs=1e-6)
    assert [p.prob for p in trace.predictions] == sorted(
        (p.prob for p in trace.predictions), reverse=True
    )

    group = model.cfg.n_heads // model.cfg.kv_heads
    for layer in trace.layers:
        att = layer.attention
        assert att.head == head and att.kv_head == head // group
        assert len(att.q) == len(att.z) == model.cfg.head_dim
        assert sum(att.pattern) == pytest.approx(1.0, abs=1e-5)
        if model.cfg.is_causal:  # no weight on, and no score for, later keys
            assert all(s is None for s in att.scores[pos + 1 :])
            assert all(w == 0.0 for w in att.pattern[pos + 1 :])
        else:
            assert all(s is not None for s in att.scores)
        # One forward: the block's sums hold exactly for the recorded numbers.
        if layer.resid_mid is not None and model.cfg.norm_placement == "pre":
            assert torch.equal(f32(layer.resid_pre) + f32(layer.attn_out), f32(layer.resid_mid))
            assert layer.mlp is not None
            assert torch.equal(f32(layer.resid_mid) + f32(layer.mlp.out), f32(layer.resid_post))
        if model.cfg.attn_only:
            assert layer.mlp is None
            assert torch.equal(f32(layer.resid_pre) + f32(layer.attn_out), f32(layer.resid_post))

    mlp = trace.layers[-1].mlp
    if model.cfg.is_moe:
        assert mlp is not None and mlp.experts is not None and mlp.expert_weights is not None
        assert mlp.experts == seen[last + "mlp.hook_expert_indices"][0, pos].tolist()
        assert sum(mlp.expert_weights) == pytest.approx(1.0, abs=1e-5)
        assert {n.expert for n in mlp.top_neurons} <= set(mlp.experts)
    elif mlp is not None:
        post = seen[last + "mlp.hook_post"][0, pos]
        best = mlp.top_neurons[0]
        assert best.index == int(post.abs().argmax())
        assert best.post == pytest.approx(float(post[best.index]), abs=1e-5)
        assert [abs(n.post) for n in mlp.top_neurons] == sorted(
            (abs(n.post) for n in mlp.top_neurons), reverse=True
        )


def test_rope_models_show_rotated_queries_and_keys() -> None:
    model = build_model(small("llama-tiny"), seed=0)
    att = trace_token(model, TOKENS, position=4).layers[0].attention
    assert att.q_rot is not None and att.k_rot is not None
    assert att.q_rot != att.q  # position 4 rotates
    # The score of the token's own key is q_rot . k_rot * scale.
    own = sum(a * b for a, b in zip(att.q_rot, att.k_rot, strict=True)) * model.cfg.scale
    assert att.scores[4] == pytest.approx(own, abs=1e-5)


def test_sliding_window_masks_early_keys() -> None:
    model = build_model(small("mistral-tiny"), seed=0)  # window 5 after shrinking
    att = trace_token(model, TOKENS, position=-1).layers[0].attention
    assert [s is None for s in att.scores] == [True] * 5 + [False] * 5


def test_encoder_without_head_returns_the_final_hidden_state() -> None:
    model = build_model(small("bert-base", mlm_head=False), seed=0).eval()
    trace = trace_token(model, TOKENS, position=2)
    assert trace.predictions is None
    with torch.no_grad():
        hidden = model(torch.tensor([TOKENS]))[0, 2]
    assert torch.allclose(f32(trace.final), hidden, atol=1e-5)


def test_trace_leaves_the_model_as_it_was() -> None:
    model = build_model(small("gpt2-small", dropout=0.1), seed=0).train()
    trace_token(model, TOKENS)
    assert model.training
    assert not any(p.active for p in model.hook_points().values())


def test_bad_arguments_are_clear_errors() -> None:
    model = build_model(small("gpt2-small"), seed=0)
    with pytest.raises(LmscopeError, match="outside this model's vocabulary"):
        trace_token(model, [1, 61])
    with pytest.raises(LmscopeError, match="position 10"):
        trace_token(model, TOKENS, position=10)
    with pytest.raises(LmscopeError, match=r"heads 0\.\.3"):
        trace_token(model, TOKENS, head=4)
    with pytest.raises(LmscopeError, match="encoder-decoder"):
        trace_token(build_model(small("t5-small"), seed=0), TOKENS)


def test_trace_renders_within_80_columns() -> None:
    model = build_model(small("mixtral-tiny"), seed=0)
    labels = [f"tok{t}" for t in TOKENS]
    console = Console(width=80, record=True, file=io.StringIO())
    render_trace(trace_token(model, TOKENS, head=1, labels=labels), console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "top predictions" in text and "routed to experts" in text
    # Vectors are cut to 6 numbers and '...', not wrapped onto a second line.
    resid = next(line for line in text.splitlines() if line.startswith("resid_post"))
    assert resid.rstrip().endswith("...") and len(resid.split()) == 1 + 1 + 6 + 1
