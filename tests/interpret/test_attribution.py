"""Direct logit attribution: the exact sum identity, a hand-built model whose one head
writes the answer, TransformerLens parity, the result's views and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope import build_model
from lmscope.errors import LmscopeError
from lmscope.interpret.attribution import direct_logit_attribution
from tests.conftest import small


def _model(preset: str, **overrides: object) -> torch.nn.Module:
    """A random model whose biases and norm weights are random too (not their init)."""
    options: dict = {"n_layers": 3, "init_std": 0.3, **overrides}
    model = build_model(small(preset, **options), seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln_final"):
                p.add_(0.2 * torch.randn_like(p))
    return model


CASES = [
    ("gpt2-small", "components", None),
    ("gpt2-small", "heads", None),
    ("gpt2-small", "neurons", 1),
    ("gpt2-small", "neurons", None),
    ("llama-tiny", "heads", None),
    ("llama-tiny", "neurons", -1),
    ("attn-only-2l", "heads", None),
]


@pytest.mark.parametrize(("preset", "granularity", "layer"), CASES)
def test_attributions_sum_to_the_models_logit(
    preset: str, granularity: str, layer: int | None
) -> None:
    model = _model(preset)
    tokens = torch.randint(0, 61, (1, 9))
    with torch.no_grad():
        logits = model(tokens)[0]
    for baseline, position in ((None, -1), (11, -1), (11, 4)):
        result = direct_logit_attribution(
            model,
            tokens,
            target=5,
            baseline=baseline,
            position=position,
            granularity=granularity,  # type: ignore[arg-type]
            layer=layer,
        )
        row = logits[position]
        expected = float(row[5] - (row[baseline] if baseline is not None else 0.0))
        assert abs(result.logit - expected) < 1e-4
        assert abs(result.total - expected) < 1e-4, (baseline, position, result.total, expected)
        assert result.labels[-1] == "final_bias" and len(set(result.labels)) == len(result.labels)


def test_component_labels_per_granularity() -> None:
    model = _model("gpt2-small")
    kw = {"target": 5, "position": -1}
    labels = direct_logit_attribution(model, [1, 2, 3], **kw).labels
    assert labels == [
        "embed", "pos_embed",
        "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out", "2_attn_out", "2_mlp_out",
        "final_bias",
    ]  # fmt: skip
    heads = direct_logit_attribution(model, [1, 2, 3], granularity="heads", **kw)
    assert sum(k == "head" for k in heads.kinds) == 3 * 4
    assert {"0_mlp_out", "embed", "bias"} <= set(heads.labels)
    neurons = direct_logit_attribution(model, [1, 2, 3], granularity="neurons", layer=1, **kw)
    assert sum(k == "neuron" for k in neurons.kinds) == model.cfg.mlp_dim
    assert "1_mlp_out" not in neurons.labels and "1_mlp_bias" in neurons.labels
    assert neurons.layer == 1 and "0_mlp_out" in neurons.labels


def _one_head_writes(target: int) -> torch.nn.Module:
    """GPT-2-shaped model where only head 2 of layer 1 writes, and it writes 10 W_U[:, t].

    Its value is a constant (zero W_V, bias 1 per dimension), so whatever it attends
    to, z = 1 and the head's output is 1 @ W_O = 10 * W_U[:, target]. Every other head
    and every MLP writes nothing; the embeddings are small.
    """
    model = build_model(small("gpt2-small", n_layers=2, init_std=0.02), seed=0).eval()
    attn, d_head = model.blocks[1].attn, model.cfg.head_dim
    with torch.no_grad():
        for block in model.blocks:
            block.attn.out.weight.zero_()
            block.mlp.fc_out.weight.zero_()
        v_rows = slice(attn.q_dim + attn.kv_dim, None)
        head = slice(2 * d_head, 3 * d_head)
        attn.qkv.weight[v_rows][head] = 0.0
        attn.qkv.bias[v_rows][head] = 1.0
        # out.weight is [d_model, head * d_head]: head 2's columns map z to d_model.
        attn.out.weight[:, head] = (10 * model.W_U[:, target] / d_head)[:, None]
    return model


def test_a_head_that_alone_writes_the_target_gets_nearly_all_the_attribution() -> None:
    model = _one_head_writes(target=9)
    result = direct_logit_attribution(model, [3, 14, 15, 9, 26], target=9, granularity="heads")
    top_label, top_value = result.top(1)[0]
    assert top_label == "L1H2"
    rest = sum(abs(v) for label, v in zip(result.labels, result.values.tolist(), strict=True)
               if label != "L1H2")  # fmt: skip
    assert top_value > 20 * rest, (top_value, rest)
    assert result.head_matrix()[1, 2] == top_value
    assert result.head_matrix().abs().sum() == pytest.approx(abs(top_value))
    components = direct_logit_attribution(model, [3, 14, 15, 9, 26], target=9)
    assert components.top(1)[0][0] == "1_attn_out"


def _transformer_lens_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same GPT-2-shaped weights in a TransformerLens HookedTransformer (fold_ln)."""
    tl = pytest.importorskip("transformer_lens")
    cfg, d_head, n_heads = model.cfg, model.cfg.head_dim, model.cfg.n_heads
    tl_cfg = tl.HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_ctx=cfg.max_seq_len, d_head=d_head,
        n_heads=n_heads, d_mlp=cfg.mlp_dim, d_vocab=cfg.vocab_size, act_fn="gelu_new",
        normalization_type="LN", eps=cfg.norm_eps, default_prepend_bos=False,
    )  # fmt: skip
    sd = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.pos_embed.weight}
    for i, block in enumerate(model.blocks):
        a, q, kv = block.attn, block.attn.q_dim, block.attn.kv_dim
        b_q, b_k, b_v = a.qkv.bias.split([q, kv, kv])
        sd |= {
            f"blocks.{i}.ln1.w": block.ln1.weight, f"blocks.{i}.ln1.b": block.ln1.bias,
            f"blocks.{i}.ln2.w": block.ln2.weight, f"blocks.{i}.ln2.b": block.ln2.bias,
            f"blocks.{i}.attn.W_Q": a.W_Q, f"blocks.{i}.attn.W_K": a.W_K,
            f"blocks.{i}.attn.W_V": a.W_V, f"blocks.{i}.attn.W_O": a.W_O,
            f"blocks.{i}.attn.b_Q": b_q.view(n_heads, d_head),
            f"blocks.{i}.attn.b_K": b_k.view(n_heads, d_head),
            f"blocks.{i}.attn.b_V": b_v.view(n_heads, d_head),
            f"blocks.{i}.attn.b_O": a.out.bias,
            f"blocks.{i}.mlp.W_in": block.mlp.W_in, f"blocks.{i}.mlp.b_in": block.mlp.fc_in.bias,
            f"blocks.{i}.mlp.W_out": block.mlp.W_out,
            f"blocks.{i}.mlp.b_out": block.mlp.fc_out.bias,
        }  # fmt: skip
    sd |= {
        "ln_final.w": model.ln_final.weight, "ln_final.b": model.ln_final.bias,
        "unembed.W_U": model.W_U, "unembed.b_U": torch.zeros(cfg.vocab_size),
    }  # fmt: skip
    reference = tl.HookedTransformer(tl_cfg)
    # fold_ln puts ln_final's weight into W_U, as our logit direction does; centring the
    # writing weights changes no attribution (the final LayerNorm centres anyway); value
    # biases stay in their heads and W_U uncentred, so per-head, single-token values match.
    reference.load_and_process_state_dict(
        {k: v.detach().clone() for k, v in sd.items()},
        fold_ln=True, center_writing_weights=True, center_unembed=False, fold_value_biases=False,
    )  # fmt: skip
    return reference.eval()


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")
def test_matches_transformer_lens_logit_attrs() -> None:
    model = _model("gpt2-small")
    reference = _transformer_lens_copy(model)
    tokens = torch.randint(0, 61, (1, 9))
    with torch.no_grad():
        logits, cache = reference.run_with_cache(tokens)
        torch.testing.assert_close(logits, model(tokens), atol=1e-4, rtol=0)
        stacks = {
            "components": cache.decompose_resid(pos_slice=-1, return_labels=True),
            "heads": cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True),
            "neurons": cache.stack_neuron_results(
                layer=model.cfg.n_layers, pos_slice=-1, return_labels=True
            ),
        }
    for baseline in (None, 11):
        for granularity, (stack, labels) in stacks.items():
            expected = cache.logit_attrs(stack, tokens=5, incorrect_tokens=baseline, pos_slice=-1)
            ours = direct_logit_attribution(
                model,
                tokens,
                target=5,
                baseline=baseline,
                granularity=granularity,  # type: ignore[arg-type]
            )
            values = dict(zip(ours.labels, ours.values.tolist(), strict=True))
            mine = torch.tensor([values[label] for label in labels])
            torch.testing.assert_close(mine, expected[:, 0].float(), atol=1e-4, rtol=0)


def test_views_json_and_plots(tmp_path: Path) -> None:
    model = _model("gpt2-small")
    result = direct_logit_attribution(model, [1, 2, 3, 4], target=5, granularity="heads")
    ranked = result.ranked()
    assert [v for _, v in ranked] == sorted(result.values.tolist(), reverse=True)
    heads = result.top(3, kind="head")
    assert len(heads) == 3 and all(label.startswith("L") for label, _ in heads)
    by_abs = result.top(4, by="abs")
    assert [abs(v) for _, v in by_abs] == sorted((abs(v) for v in result.values.tolist()),
                                                 reverse=True)[:4]  # fmt: skip
    grid = result.head_matrix()
    assert grid.shape == (3, 4) and grid[2, 1] == result.values[result.labels.index("L2H1")]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["total"] == pytest.approx(data["logit"], abs=1e-4)
    assert data["components"][0]["label"] == ranked[0][0]
    assert result.plot(tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"
    components = direct_logit_attribution(model, [1, 2, 3, 4], target=5)
    assert components.plot(tmp_path / "c.png", top=5).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(LmscopeError, match="granularity='heads'"):
        components.head_matrix()
    with pytest.raises(LmscopeError, match="does not occur"):
        components.top(3, kind="neuron")


@pytest.mark.parametrize(
    ("preset", "kwargs", "message"),
    [
        ("gpt2-small", {"layer": 1}, "granularity='neurons'"),
        ("gpt2-small", {"granularity": "neurons", "layer": 5}, "layers 0..1"),
        ("attn-only-2l", {"granularity": "neurons"}, "no MLP"),
        ("mixtral-tiny", {"granularity": "neurons", "layer": 0}, "mixture of experts"),
        ("gpt2-small", {"baseline": 5}, "baseline is the target"),
        ("gpt2-small", {"position": 3}, "position 3 does not exist"),
        ("gpt2-small", {"target": "x"}, "no tokenizer"),
        ("bert-base", {}, "decoder-only"),
    ],
)
def test_bad_requests_are_refused_clearly(preset: str, kwargs: dict, message: str) -> None:
    model = build_model(small(preset), seed=0).eval()
    options = {"target": 5, **kwargs}
    with pytest.raises(LmscopeError, match=message):
        direct_logit_attribution(model, [1, 2, 3], **options)
