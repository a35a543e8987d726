"""Properties of random valid configs: every config the validator accepts builds, runs to
finite logits of the right shape, and survives save -> load bit-identically."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import lmscope
from lmscope import ConfigError, ModelConfig, build_model
from lmscope.model.base import BaseTransformer

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def config_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Fields of a tiny `ModelConfig`, drawn across every architecture and wiring choice.

    The config itself is built in the test (`_config`): under pytest the validator is
    beartype-checked, and beartype samples containers with the global `random`, which
    Hypothesis forbids inside strategies.
    """
    f: dict[str, Any] = {}
    arch = f["architecture"] = draw(st.sampled_from(["decoder", "encoder", "encoder-decoder"]))
    f["vocab_size"] = draw(st.integers(5, 50))
    f["n_layers"] = draw(st.integers(1, 2))
    if arch == "encoder-decoder" and draw(st.booleans()):
        f["n_decoder_layers"] = draw(st.integers(1, 2))
    f["max_seq_len"] = draw(st.integers(8, 16))

    # Heads: n_kv_heads divides n_heads; d_head either derived or explicit.
    n_heads = f["n_heads"] = draw(st.sampled_from([1, 2, 4]))
    if draw(st.booleans()):
        f["n_kv_heads"] = draw(st.sampled_from(_divisors(n_heads)))
    d_head = draw(st.sampled_from([2, 4, 6, 8]))
    if draw(st.booleans()):
        f["d_model"] = n_heads * d_head  # d_head derived
    else:
        f["d_model"], f["d_head"] = draw(st.sampled_from([8, 12, 16, 24, 32])), d_head
    if draw(st.booleans()):
        f["d_mlp"] = draw(st.integers(1, 40))

    # Positions.
    schemes = ["none", "sinusoidal", "sinusoidal-concat", "learned", "relative", "t5-bias", "rope"]
    if arch != "encoder-decoder":
        schemes.append("alibi")
    pos = f["positional"] = draw(st.sampled_from(schemes))
    if pos == "rope":
        pairs = draw(st.integers(1, d_head // 2))
        f["rotary_fraction"] = 2 * pairs / d_head
        f["rope_layout"] = draw(st.sampled_from(["rotate-half", "interleaved"]))
        f["rope_theta"] = draw(st.sampled_from([100.0, 10000.0, 500000.0]))
        scaling = f["rope_scaling"] = draw(
            st.sampled_from(["none", "linear", "ntk", "yarn", "llama3"])
        )
        if scaling != "none":
            f["rope_scaling_factor"] = draw(st.sampled_from([1.0, 2.0, 8.0]))
            if draw(st.booleans()):
                f["rope_original_max_seq_len"] = draw(st.integers(2, 16))
        if scaling == "llama3":
            low = f["rope_low_freq_factor"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
            f["rope_high_freq_factor"] = low + draw(st.sampled_from([0.5, 3.0]))
    elif pos == "relative":
        f["relative_max_distance"] = draw(st.integers(1, 4))
    elif pos == "t5-bias":
        buckets = f["t5_num_buckets"] = draw(st.sampled_from([4, 6, 8, 32]))
        f["t5_max_distance"] = buckets // 2 + draw(st.integers(1, 20))

    # Norms and blocks.
    f["norm"] = draw(st.sampled_from(["layernorm", "rmsnorm", "none"]))
    placement = f["norm_placement"] = draw(st.sampled_from(["pre", "post"]))
    f["norm_bias"] = draw(st.booleans())
    if draw(st.booleans()):
        f["final_norm"] = draw(st.booleans())
    f["activation"] = draw(
        st.sampled_from(
            ["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "geglu_tanh", "reglu"]
        )
    )
    attn_only = f["attn_only"] = draw(st.booleans())
    if not attn_only:
        if draw(st.booleans()):
            n_experts = f["n_experts"] = draw(st.integers(1, 4))
            f["experts_per_token"] = draw(st.integers(1, n_experts))
            f["moe_normalize_topk"] = draw(st.booleans())
        if placement == "pre" and draw(st.booleans()):
            f["parallel_attn_mlp"] = True
            f["parallel_shared_norm"] = draw(st.booleans())
    for name in ("qkv_bias", "attn_out_bias", "mlp_bias", "unembed_bias", "tie_embeddings"):
        f[name] = draw(st.booleans())
    f["n_token_types"] = draw(st.sampled_from([0, 2]))
    f["embedding_norm"] = draw(st.booleans())
    if arch == "encoder":
        f["mlm_head"] = draw(st.booleans())
        if draw(st.booleans()):
            f["causal"] = draw(st.booleans())

    # Attention.
    f["attention_scale"] = draw(st.sampled_from([None, "none", 0.5, 2]))
    if draw(st.booleans()):
        f["sliding_window"] = draw(st.integers(1, 8))
    f["attn_impl"] = draw(st.sampled_from(["auto", "sdpa", "explicit"]))
    f["dropout"] = draw(st.sampled_from([0.0, 0.1]))
    f["init_std"] = draw(st.sampled_from([0.02, 0.5]))
    return f


def _config(fields: dict[str, Any]) -> ModelConfig:
    """The config of `fields`; the rare combination the validator refuses is skipped."""
    try:
        return ModelConfig(**fields)
    except ConfigError:
        reject()


def _inputs(draw: st.DrawFn, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    src_len = draw(st.integers(1, 8))
    tokens = torch.randint(0, cfg.vocab_size, (batch, src_len), generator=gen)
    inputs = {"tokens": tokens}
    if cfg.architecture == "encoder-decoder":
        tgt_len = draw(st.integers(1, 8))
        inputs["decoder_tokens"] = torch.randint(0, cfg.vocab_size, (batch, tgt_len), generator=gen)
    if cfg.n_token_types and cfg.architecture != "encoder-decoder" and draw(st.booleans()):
        inputs["token_type_ids"] = torch.randint(0, cfg.n_token_types, tokens.shape, generator=gen)
    return inputs


def _run(model: BaseTransformer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        if model.cfg.architecture == "encoder-decoder":
            return model(inputs["tokens"], inputs["decoder_tokens"])
        return model(inputs["tokens"], token_type_ids=inputs.get("token_type_ids"))


def _expected_shape(cfg: ModelConfig, inputs: dict[str, torch.Tensor]) -> tuple[int, ...]:
    out_tokens = inputs.get("decoder_tokens", inputs["tokens"])
    has_head = cfg.architecture != "encoder" or cfg.mlm_head
    return (*out_tokens.shape, cfg.vocab_size if has_head else cfg.d_model)


@SETTINGS
@given(fields=config_fields(), data=st.data())
def test_valid_config_builds_runs_finite_and_round_trips_bit_identically(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    cfg = _config(fields)
    model = build_model(cfg, seed=0).eval()
    inputs = _inputs(data.draw, cfg)
    out = _run(model, inputs)
    assert out.shape == _expected_shape(cfg, inputs)
    assert torch.isfinite(out).all()

    with tempfile.TemporaryDirectory() as directory:
        model.save(directory)
        loaded = lmscope.load(directory)
    assert loaded.cfg == cfg
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(state)
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    assert torch.equal(_run(loaded, inputs), out)


@SETTINGS
@given(fields=config_fields())
def test_param_breakdown_sums_to_num_params(fields: dict[str, Any]) -> None:
    cfg = _config(fields)
    model = build_model(cfg, seed=0)
    parts = model.param_breakdown()
    assert set(parts) == {"embedding", "positional", "attention", "mlp", "norm", "unembedding"}
    assert sum(parts.values()) == model.num_params() == sum(p.numel() for p in model.parameters())
    if cfg.attn_only:
        assert parts["mlp"] == 0


@SETTINGS
@given(fields=config_fields(), data=st.data())
def test_causal_logits_do_not_depend_on_later_tokens(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    cfg = _config(fields)
    # An encoder-decoder's decoder is always causal: later target tokens change, the
    # source stays.
    if cfg.architecture != "encoder-decoder" and not cfg.is_causal:
        reject()
    model = build_model(cfg, seed=0).eval()
    inputs = _inputs(data.draw, cfg)
    key = "decoder_tokens" if cfg.architecture == "encoder-decoder" else "tokens"
    length = inputs[key].shape[1]
    cut = data.draw(st.integers(0, length - 1))
    changed = dict(inputs)
    changed[key] = inputs[key].clone()
    changed[key][:, cut + 1 :] = (inputs[key][:, cut + 1 :] + 1) % cfg.vocab_size
    if "token_type_ids" in inputs:
        changed["token_type_ids"] = inputs["token_type_ids"]
    before, after = _run(model, inputs), _run(model, changed)
    torch.testing.assert_close(after[:, : cut + 1], before[:, : cut + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", ["none", "linear", "ntk", "yarn", "llama3"])
@pytest.mark.parametrize("rotary_dim", [2, 4])
def test_every_rope_scaling_builds_with_the_fewest_rotary_dims(
    scaling: str, rotary_dim: int
) -> None:
    # The smallest rotary_dim the validator accepts is 2; ntk's exponent d / (d - 2)
    # needs d >= 4, and the config refuses ntk below that instead of dividing by zero.
    fields = dict(
        vocab_size=11,
        d_model=16,
        n_heads=2,
        n_layers=1,
        max_seq_len=8,
        positional="rope",
        rotary_fraction=rotary_dim / 8,
        rope_scaling=scaling,
        rope_scaling_factor=2.0 if scaling != "none" else 1.0,
    )
    if scaling == "ntk" and rotary_dim < 4:
        with pytest.raises(ConfigError, match="needs rotary_dim >= 4"):
            ModelConfig(**fields)
        return
    cfg = ModelConfig(**fields)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        out = model(torch.arange(8).view(1, 8))
    assert torch.isfinite(out).all()
