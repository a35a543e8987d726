"""Path patching on hand-wired attention-only models whose paths are known by construction.

Residual stream of width 16 in four 4-dim subspaces: TOK (token embeddings), A, C and B
(what heads A, C and B write). Heads have d_head 4; a head's value/query/key reads a
subspace with an identity block, its output writes its own subspace. Heads not named
are zero. No norms, no biases, no positions: every path is one we wired.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import lmscope
from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.metrics import logit_diff_metric, normalized_metric
from lmscope.interpret.patching import patch_heads
from lmscope.interpret.path_patching import path_patch, path_patch_sweep
from lmscope.model import build_model
from tests.conftest import small

TOK, A, C, B = (slice(4 * i, 4 * i + 4) for i in range(4))
VOCAB = 8
METRIC = logit_diff_metric(1, 2)
CLEAN = torch.tensor([[3, 5, 0, 6, 2, 7]])
CORRUPTED = torch.tensor([[3, 4, 0, 6, 2, 7]])  # differs at position 1
HEAD_A, HEAD_C = (0, 0), (1, 0)


def wired(
    n_layers: int, reads_into_unembed: slice, b_value_reads: tuple[slice, ...]
) -> lmscope.BaseTransformer:
    """Head A (0, 0): uniform attention, copies TOK into A. With 3 layers, head C (1, 0):
    uniform, copies A into C. Head B (last layer, 0): attends by token (q, k read TOK),
    its value reads `b_value_reads`, writes B. The unembedding reads one subspace."""
    cfg = small(
        "gpt2-small",
        n_layers=n_layers,
        d_model=16,
        n_heads=2,
        d_head=4,
        vocab_size=VOCAB,
        attn_only=True,
        norm="none",
        positional="none",
        qkv_bias=False,
        attn_out_bias=False,
        tie_embeddings=False,
    )
    model = build_model(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    eye = torch.eye(4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, TOK] = torch.randn(VOCAB, 4, generator=g)
        model.unembed.weight[:, reads_into_unembed] = torch.randn(VOCAB, 4, generator=g)
        head_a = model.blocks[0].attn
        head_a.W_V[0][TOK] = eye
        head_a.W_O[0][:, A] = eye
        if n_layers == 3:
            head_c = model.blocks[1].attn
            head_c.W_V[0][A] = eye
            head_c.W_O[0][:, C] = eye
        head_b = model.blocks[-1].attn
        head_b.W_Q[0][TOK] = 2 * eye
        head_b.W_K[0][TOK] = 2 * eye
        for space in b_value_reads:
            head_b.W_V[0][space] = eye
        head_b.W_O[0][:, B] = eye
    return model


def head_patch(
    model: lmscope.BaseTransformer, head: tuple[int, int], direction: str = "noise"
) -> float:
    """Plain activation patching of one head's output (all positions)."""
    grid = patch_heads(model, CLEAN, CORRUPTED, METRIC, direction=direction)
    return float(grid.values[head])


def test_a_path_through_b_values_carries_the_whole_effect() -> None:
    model = wired(2, reads_into_unembed=B, b_value_reads=(A,))
    receiver = [(1, 0)]
    full = head_patch(model, HEAD_A)
    assert abs(1.0 - full) > 0.2  # patching A matters (noising: 1 = no effect)
    via_v = path_patch(model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A, receivers=receiver)
    assert via_v == pytest.approx(full, abs=1e-5)
    for receiver_input in ("q", "k"):  # B's queries and keys read tokens only
        value = path_patch(
            model,
            CLEAN,
            CORRUPTED,
            METRIC,
            senders=HEAD_A,
            receivers=receiver,
            receiver_input=receiver_input,
        )
        assert value == pytest.approx(1.0, abs=1e-5)
    direct = path_patch(
        model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A, receiver_input="resid_final"
    )
    assert direct == pytest.approx(1.0, abs=1e-5)  # the unembedding does not read A
    denoised = path_patch(
        model, CLEAN, CORRUPTED, METRIC, senders=[HEAD_A], receivers=receiver, direction="denoise"
    )
    assert denoised == pytest.approx(head_patch(model, HEAD_A, "denoise"), abs=1e-5)


def test_a_head_writing_to_the_logits_has_no_path_through_b() -> None:
    model = wired(2, reads_into_unembed=A, b_value_reads=(A,))
    full = head_patch(model, HEAD_A)
    assert abs(1.0 - full) > 0.2
    for receiver_input in ("q", "k", "v"):  # B reads A but nothing reads B
        value = path_patch(
            model,
            CLEAN,
            CORRUPTED,
            METRIC,
            senders=HEAD_A,
            receivers=(1, 0),
            receiver_input=receiver_input,
        )
        assert value == pytest.approx(1.0, abs=1e-5)
    direct = path_patch(
        model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A, receiver_input="resid_final"
    )
    assert direct == pytest.approx(full, abs=1e-5)


def test_intermediate_heads_are_frozen_so_only_the_direct_path_counts() -> None:
    """A reaches B's values directly and through C; path patching A -> B(v) keeps only the
    direct part: A corrupted, C held at its clean output."""
    model = wired(3, reads_into_unembed=B, b_value_reads=(A, C))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(CLEAN, names_filter="blocks.1.attn.hook_z")
        _, corrupted_cache = model.run_with_cache(CORRUPTED, names_filter="blocks.0.attn.hook_z")
        norm = normalized_metric(
            METRIC, float(METRIC(model(CLEAN))), float(METRIC(model(CORRUPTED)))
        )

        def from_cache(cache: dict[str, Tensor], head: int):
            def patch(act: Tensor, hook: HookPoint) -> Tensor:
                out = act.clone()
                out[:, :, head] = cache[hook.name][:, :, head]
                return out

            return patch

        hooks = [
            ("blocks.0.attn.hook_z", from_cache(corrupted_cache, 0)),
            ("blocks.1.attn.hook_z", from_cache(clean_cache, 0)),
        ]
        expected = float(norm(model.run_with_hooks(CLEAN, fwd_hooks=hooks)))
    got = path_patch(model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A, receivers=(2, 0))
    assert got == pytest.approx(expected, abs=1e-5)
    full = head_patch(model, HEAD_A)  # A through C too
    assert abs(full - got) > 0.05
    via_c = path_patch(model, CLEAN, CORRUPTED, METRIC, senders=HEAD_C, receivers=(2, 0))
    assert via_c == pytest.approx(head_patch(model, HEAD_C), abs=1e-5)


def test_sweep_grid_matches_single_calls_and_skips_unreachable_senders() -> None:
    model = wired(3, reads_into_unembed=B, b_value_reads=(A, C))
    sweep = path_patch_sweep(model, CLEAN, CORRUPTED, METRIC, receivers=(2, 0), batch_size=3)
    assert sweep.values.shape == (3, 2) and sweep.axes == ("layer", "head")
    for layer, head in [(0, 0), (1, 0), (0, 1)]:
        single = path_patch(
            model, CLEAN, CORRUPTED, METRIC, senders=(layer, head), receivers=(2, 0)
        )
        assert sweep.values[layer, head] == pytest.approx(single, abs=1e-5)
    assert torch.equal(sweep.values[2], torch.ones(2))  # the receiver's own layer: no path
    assert sweep.top(1)[0][0] == {"layer": 0, "head": 0} or sweep.top(1)[0][0] == {
        "layer": 1,
        "head": 0,
    }


def test_gqa_receivers_and_frozen_mlps_run(tmp_path) -> None:
    model = build_model(small("llama-tiny", n_kv_heads=2, n_layers=3, init_std=0.15), seed=0).eval()
    clean = torch.tensor([[4, 9, 22, 7, 31, 5]])
    corrupted = clean.clone()
    corrupted[0, 2] = 50
    metric = logit_diff_metric(3, 8)
    for receiver_input in ("k", "v", "q"):
        sweep = path_patch_sweep(
            model,
            clean,
            corrupted,
            metric,
            receivers=[(2, 3)],
            receiver_input=receiver_input,
            freeze_mlps=True,
        )
        assert torch.equal(sweep.values[2], torch.ones(4))
        assert (sweep.values[:2] - 1).abs().max() > 1e-4
    final = path_patch_sweep(model, clean, corrupted, metric, receiver_input="resid_final")
    assert (final.values - 1).abs().max() > 1e-4
    assert final.plot(tmp_path / "path.png").exists()


def test_bad_path_patching_inputs_get_clear_errors() -> None:
    model = wired(2, reads_into_unembed=B, b_value_reads=(A,))
    with pytest.raises(LmscopeError, match="receiver_input 'z' is invalid"):
        path_patch(
            model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A, receivers=(1, 0), receiver_input="z"
        )
    with pytest.raises(LmscopeError, match="needs receivers"):
        path_patch(model, CLEAN, CORRUPTED, METRIC, senders=HEAD_A)
    with pytest.raises(LmscopeError, match="has no receiver heads"):
        path_patch(
            model,
            CLEAN,
            CORRUPTED,
            METRIC,
            senders=HEAD_A,
            receivers=(1, 0),
            receiver_input="resid_final",
        )
    with pytest.raises(LmscopeError, match="head 2 does not exist"):
        path_patch(model, CLEAN, CORRUPTED, METRIC, senders=(0, 2), receivers=(1, 0))
    with pytest.raises(LmscopeError, match="same shape"):
        path_patch(model, CLEAN, CORRUPTED[:, 1:], METRIC, senders=HEAD_A, receivers=(1, 0))
    with pytest.raises(LmscopeError, match="senders is empty"):
        path_patch(model, CLEAN, CORRUPTED, METRIC, senders=[], receivers=(1, 0))
