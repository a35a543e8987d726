"""Positional schemes: worked values, the properties each scheme promises, reference parity."""

from __future__ import annotations

import math

import pytest
import torch

from lmscope import ModelConfig
from lmscope.model.position import (
    ALiBi,
    LearnedPositionEmbedding,
    RelativePositionEmbedding,
    RotaryEmbedding,
    SinusoidalPositionEmbedding,
    T5RelativeBias,
    alibi_slopes,
    apply_rotary,
    rope_frequencies,
    t5_relative_bucket,
)
from tests.conftest import small

SCALINGS = [
    {"rope_scaling": "none"},
    {"rope_scaling": "linear", "rope_scaling_factor": 4.0},
    {"rope_scaling": "ntk", "rope_scaling_factor": 4.0},
    {"rope_scaling": "yarn", "rope_scaling_factor": 4.0, "rope_original_max_seq_len": 32},
    {"rope_scaling": "llama3", "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 32},
]


def test_sinusoidal_interleaved_matches_worked_example_e2() -> None:
    pe = SinusoidalPositionEmbedding(4)(torch.tensor([[0, 1, 2]]))[0]
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [0.841471, 0.540302, 0.010000, 0.999950],
            [0.909297, -0.416147, 0.019999, 0.999800],
        ]
    )
    torch.testing.assert_close(pe, expected, atol=1e-6, rtol=0)


def test_sinusoidal_concat_layout_is_a_permutation_of_interleaved() -> None:
    pos = torch.arange(10)[None]
    inter = SinusoidalPositionEmbedding(8, interleaved=True)(pos)
    concat = SinusoidalPositionEmbedding(8, interleaved=False)(pos)
    order = [0, 2, 4, 6, 1, 3, 5, 7]  # sin f0..f3 then cos f0..f3
    torch.testing.assert_close(concat, inter[..., order])


def test_sinusoidal_odd_width_keeps_d_model_dims() -> None:
    pe = SinusoidalPositionEmbedding(5)(torch.arange(3)[None])
    assert pe.shape == (1, 3, 5)
    assert math.isclose(pe[0, 1, 4].item(), math.sin(1 / 10000 ** (4 / 5)), rel_tol=1e-6)


def test_learned_positions_reject_positions_beyond_table() -> None:
    emb = LearnedPositionEmbedding(4, 3)
    with pytest.raises(Exception, match="beyond the 4 learned positions"):
        emb(torch.tensor([[0, 4]]))


@pytest.mark.parametrize("layout", ["rotate-half", "interleaved"])
@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s["rope_scaling"])
def test_rope_scores_depend_only_on_offset(layout: str, scaling: dict) -> None:
    cfg = small("llama-tiny", rope_layout=layout, **scaling)
    rope = RotaryEmbedding(cfg)
    q, k = torch.randn(1, 1, 1, cfg.head_dim), torch.randn(1, 1, 1, cfg.head_dim)

    def score(i: int, j: int) -> float:
        cos_i, sin_i = rope(torch.tensor([[i]]), torch.float64)
        cos_j, sin_j = rope(torch.tensor([[j]]), torch.float64)
        qi = apply_rotary(q.double(), cos_i, sin_i, layout)
        kj = apply_rotary(k.double(), cos_j, sin_j, layout)
        return float((qi * kj).sum())

    for offset in (0, 1, 7):
        base = score(offset, 0)
        for shift in (3, 20, 100):
            # angles are float32 (as in the reference), so equal to float32 rounding
            assert math.isclose(score(offset + shift, shift), base, rel_tol=1e-6, abs_tol=1e-6)
    assert not math.isclose(score(5, 0), score(9, 0), rel_tol=1e-3)  # it does depend on offset


def test_rope_layouts_are_the_same_rotation_on_permuted_dims() -> None:
    cfg_half = small("llama-tiny", rope_layout="rotate-half")
    cfg_inter = small("llama-tiny", rope_layout="interleaved")
    d = cfg_half.head_dim
    x = torch.randn(1, 3, 2, d)
    pos = torch.arange(3)[None]
    # Pair i of rotate-half is dims (i, i + d/2); of interleaved, dims (2i, 2i + 1).
    to_interleaved = torch.stack(
        [torch.arange(d // 2), torch.arange(d // 2) + d // 2], -1
    ).flatten()
    out_half = apply_rotary(x, *RotaryEmbedding(cfg_half)(pos, torch.float32), "rotate-half")
    out_inter = apply_rotary(
        x[..., to_interleaved], *RotaryEmbedding(cfg_inter)(pos, torch.float32), "interleaved"
    )
    torch.testing.assert_close(out_inter, out_half[..., to_interleaved])


def test_partial_rotary_leaves_the_other_dims_unchanged() -> None:
    cfg = small("llama-tiny", rotary_fraction=0.5)
    assert cfg.rotary_dim == cfg.head_dim // 2
    x = torch.randn(2, 5, 3, cfg.head_dim)
    cos, sin = RotaryEmbedding(cfg)(torch.arange(5)[None], torch.float32)
    out = apply_rotary(x, cos, sin, cfg.rope_layout)
    torch.testing.assert_close(out[..., cfg.rotary_dim :], x[..., cfg.rotary_dim :])
    assert not torch.allclose(out[:, 1:, :, : cfg.rotary_dim], x[:, 1:, :, : cfg.rotary_dim])
    # Rotation preserves the norm of each pair, hence of the rotated part.
    torch.testing.assert_close(
        out[..., : cfg.rotary_dim].norm(dim=-1), x[..., : cfg.rotary_dim].norm(dim=-1)
    )


def _hf_rope(cfg: ModelConfig, rope_parameters: dict) -> tuple[torch.Tensor, float]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = LlamaConfig(
        hidden_size=cfg.d_model,
        num_attention_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_theta": cfg.rope_theta, **rope_parameters},
    )
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](hf_cfg, "cpu")


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            {"rope_scaling": "linear", "rope_scaling_factor": 4.0},
            {"rope_type": "linear", "factor": 4.0},
        ),
        (
            {"rope_scaling": "yarn", "rope_scaling_factor": 4.0, "rope_original_max_seq_len": 32},
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        ),
        (
            {"rope_scaling": "llama3", "rope_scaling_factor": 8.0, "rope_original_max_seq_len": 32},
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "original_max_position_embeddings": 32,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
            },
        ),
    ],
    ids=["linear", "yarn", "llama3"],
)
def test_rope_scaling_frequencies_match_transformers(ours: dict, theirs: dict) -> None:
    cfg = small("llama-tiny", d_model=256, n_heads=4, d_head=None, max_seq_len=128, **ours)
    inv_freq, factor = rope_frequencies(cfg)
    ref_freq, ref_factor = _hf_rope(cfg, theirs)
    torch.testing.assert_close(inv_freq, ref_freq.float(), atol=0, rtol=1e-6)
    assert math.isclose(factor, ref_factor, rel_tol=1e-9)


def test_ntk_scaling_raises_the_base_by_factor_to_d_over_d_minus_2() -> None:
    cfg = small("llama-tiny", rope_scaling="ntk", rope_scaling_factor=4.0)
    d = cfg.rotary_dim
    inv_freq, _ = rope_frequencies(cfg)
    base = cfg.rope_theta * 4.0 ** (d / (d - 2))
    expected = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    torch.testing.assert_close(inv_freq, expected)
    # The highest frequency is unchanged; the lowest is divided by the full factor.
    plain, _ = rope_frequencies(small("llama-tiny"))
    assert math.isclose(inv_freq[0].item(), plain[0].item())
    assert math.isclose(inv_freq[-1].item() * 4.0, plain[-1].item(), rel_tol=1e-5)


def test_alibi_slopes_power_of_two_follow_the_paper() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    torch.testing.assert_close(
        alibi_slopes(4), torch.tensor([2.0 ** (-2 * i) for i in range(1, 5)])
    )


@pytest.mark.parametrize("n_heads", [3, 6, 12, 24])
def test_alibi_slopes_other_head_counts_interleave_next_power(n_heads: int) -> None:
    closest = 2 ** math.floor(math.log2(n_heads))
    start, extra_start = 2 ** (-8 / closest), 2 ** (-8 / (2 * closest))
    expected = [start**i for i in range(1, closest + 1)]
    expected += [extra_start**i for i in range(1, 2 * closest + 1, 2)][: n_heads - closest]
    torch.testing.assert_close(alibi_slopes(n_heads), torch.tensor(expected))
    assert len(set(expected)) == n_heads  # every head gets its own slope


def test_alibi_bias_is_minus_slope_times_distance() -> None:
    bias = ALiBi(4)(torch.arange(5)[None], torch.arange(5)[None])
    slopes = alibi_slopes(4)
    assert bias.shape == (1, 4, 5, 5)
    assert bias[0, 2, 4, 1].item() == pytest.approx(-3 * slopes[2].item())
    assert bias[0, :, 3, 3].abs().sum() == 0


def test_t5_buckets_match_transformers() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :] + torch.zeros(3, 1, dtype=torch.long)
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            ours = t5_relative_bucket(relative, bidirectional, buckets, distance)
            ref = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(ours, ref)


def test_t5_bias_looks_up_one_scalar_per_head_and_bucket() -> None:
    bias = T5RelativeBias(n_heads=2, num_buckets=8, max_distance=20, bidirectional=True)
    with torch.no_grad():
        bias.weight.copy_(torch.arange(16.0).view(8, 2))
    out = bias(torch.arange(4)[None], torch.arange(4)[None])
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 1, 2, 2].item() == 1.0  # offset 0 -> bucket 0 -> weight[0, head 1]
    assert out[0, 0, 0, 1].item() == bias.weight[5, 0].item()  # key after query: bucket 4 + 1


def test_relative_clipping_makes_far_offsets_equal() -> None:
    rel = RelativePositionEmbedding(max_distance=3, d_head=4)
    with torch.no_grad():
        rel.key.copy_(torch.randn_like(rel.key))
    q_pos, k_pos = torch.tensor([[20]]), torch.arange(21)[None]
    index = rel.index(q_pos, k_pos)[0, 0]
    assert index[:18].unique().tolist() == [0]  # offsets -20 .. -3 share the clipped row
    q = torch.randn(1, 2, 1, 4)
    scores = rel.score_term(q, rel.index(q_pos, k_pos))
    assert torch.all(scores[..., :18] == scores[..., :1])
    assert len(scores[0, 0, 0, 17:].unique()) == 4  # offsets -3 .. 0 differ
