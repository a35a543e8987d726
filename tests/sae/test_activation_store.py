"""ActivationStore: the activations of a direct forward, shuffled, cached on disk, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmscope.data import prepare
from lmscope.errors import LmscopeError
from lmscope.sae import build_sae, metrics
from lmscope.sae.activation_sources import model_activations, stop_layer
from lmscope.sae.activation_store import ActivationStore, cache_activations
from lmscope.sae.disk_cache import DiskActivations
from lmscope.sae.token_source import TokenWindows
from lmscope.sae.trainer import train_sae
from lmscope.tokenizers import CharTokenizer
from tests.sae.tiny import HOOK, char_corpus, tiny_model, token_stream

CTX = 16


def direct(model: torch.nn.Module, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    """Activations at `hook` from a full forward with a plain hook: [rows, d] in order."""
    seen: list[torch.Tensor] = []
    with model.hooks([(hook, lambda x, h: seen.append(x.detach().clone()))]), torch.no_grad():
        model(tokens)
    return seen[0].reshape(-1, seen[0].shape[-1])


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order (a multiset comparison of two row sets)."""
    for col in reversed(range(x.shape[1])):
        x = x[torch.sort(x[:, col], stable=True).indices]
    return x


def drain(store: ActivationStore) -> list[torch.Tensor]:
    return list(store)  # type: ignore[arg-type]


def test_producer_chunks_are_the_direct_forward_in_order() -> None:
    model = tiny_model()
    stream = token_stream(10 * CTX)
    producer = model_activations(model, None, stream, [HOOK], context_size=CTX)
    producer.n_contexts = 4  # 3 model batches: 4 + 4 + 2 windows
    rows = torch.cat([c[HOOK] for c in producer.chunks(loop=False)])
    torch.testing.assert_close(rows, direct(model, stream.reshape(10, CTX), HOOK))


def test_stop_at_layer_runs_only_the_blocks_the_hooks_need() -> None:
    model = tiny_model(n_layers=3)
    ran: list[int] = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda _m, _a, _o, i=i: ran.append(i))
    assert stop_layer(model, [HOOK]) == 1
    assert stop_layer(model, ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"]) == 2
    assert stop_layer(model, ["hook_embed"]) == 0
    assert stop_layer(model, ["ln_final.hook_normalized"]) is None
    store = ActivationStore(
        model, None, token_stream(8 * CTX), HOOK, context_size=CTX, store_batch_size=16,
        buffer_tokens=64, batch_size_tokens=4 * CTX,
    )  # fmt: skip
    next(store)
    assert ran and set(ran) == {0}


def test_shuffled_pass_is_the_same_multiset_and_not_the_same_order() -> None:
    model = tiny_model()
    stream = token_stream(24 * CTX)  # 384 rows = 12 batches of 32
    store = ActivationStore(
        model, None, stream, HOOK, context_size=CTX, batch_size_tokens=4 * CTX,
        store_batch_size=32, buffer_tokens=128, loop=False,
    )  # fmt: skip
    served = torch.cat(drain(store))
    expected = direct(model, stream.reshape(24, CTX), HOOK)
    assert served.shape == expected.shape
    assert not torch.equal(served, expected)  # shuffled
    torch.testing.assert_close(sort_rows(served), sort_rows(expected), rtol=0, atol=0)


def test_special_positions_are_left_out() -> None:
    model = tiny_model()
    stream = token_stream(8 * CTX)
    stream[::5] = 7  # an "EOS" every 5 tokens
    store = ActivationStore(
        model, None, stream, HOOK, context_size=CTX, store_batch_size=1,
        buffer_tokens=1024, loop=False, exclude_special=[7],
    )  # fmt: skip
    served = torch.cat(drain(store))
    keep = stream != 7
    expected = direct(model, stream.reshape(8, CTX), HOOK)[keep]
    assert served.shape[0] == int(keep.sum())
    torch.testing.assert_close(sort_rows(served), sort_rows(expected), rtol=0, atol=0)


def test_several_hooks_share_one_shuffle() -> None:
    # resid_post of block 0 *is* resid_pre of block 1: aligned rows must be equal.
    model = tiny_model()
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.mlp.hook_post"]
    store = ActivationStore(
        model, None, token_stream(8 * CTX), hooks, context_size=CTX, store_batch_size=16,
        buffer_tokens=64,
    )  # fmt: skip
    for _ in range(5):
        batch = next(store)
        assert isinstance(batch, dict) and list(batch) == hooks
        torch.testing.assert_close(batch[hooks[0]], batch[hooks[1]], rtol=0, atol=0)
        assert batch[hooks[2]].shape == (16, model.cfg.d_mlp)


def test_text_and_prepared_sources_give_the_same_windows(tmp_path: Path) -> None:
    path, tokenizer = char_corpus(tmp_path / "plays.txt", 60)
    ids = torch.tensor(tokenizer.encode(path.read_text()))
    text = TokenWindows(path, tokenizer, CTX)
    n = len(ids) // CTX
    torch.testing.assert_close(torch.cat(list(text.batches(7))), ids[: n * CTX].reshape(n, CTX))
    prepared = prepare([path], tmp_path / "data", tokenizer, val_fraction=0.0)
    shards = TokenWindows(prepared.directory, None, CTX)  # the tokenizer comes with the data
    assert shards.n_windows == n and shards.special_ids == [tokenizer.eos_id]
    torch.testing.assert_close(
        torch.cat(list(shards.batches(5, start=3))), ids[3 * CTX : n * CTX].reshape(-1, CTX)
    )
    torch.testing.assert_close(
        torch.cat(list(text.batches(5, start=3))), ids[3 * CTX : n * CTX].reshape(-1, CTX)
    )
    bos_tokenizer = CharTokenizer(tokenizer.chars, special_tokens=["<bos>"])
    with_bos = TokenWindows(ids, bos_tokenizer, CTX, prepend_bos=True)
    first, second = list(with_bos.windows())[:2]
    assert first[0] == bos_tokenizer.bos_id and torch.equal(first[1:], ids[: CTX - 1])
    assert torch.equal(second[1:], ids[CTX - 1 : 2 * CTX - 2])


def test_disk_cache_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    stream = token_stream(20 * CTX)  # 320 rows -> shards of 96, 96, 96, 32
    hooks = [HOOK, "blocks.1.hook_resid_post"]
    manifest = cache_activations(
        model, None, stream, hooks, tmp_path / "acts", context_size=CTX,
        batch_size_tokens=3 * CTX, shard_rows=96,
    )  # fmt: skip
    assert [s["rows"] for s in manifest["shards"]] == [96, 96, 96, 32]
    disk = DiskActivations(tmp_path / "acts")
    in_order = {h: torch.cat([disk.read(i, 0, 96, [h])[h] for i in range(4)]) for h in hooks}
    for h in hooks:
        torch.testing.assert_close(in_order[h], direct(model, stream.reshape(20, CTX), h))
    store = ActivationStore(
        None, None, tmp_path / "acts", hooks, batch_size_tokens=24, store_batch_size=32,
        buffer_tokens=96, loop=False,
    )  # fmt: skip
    served = drain(store)
    for h in hooks:
        rows = torch.cat([b[h] for b in served])
        torch.testing.assert_close(sort_rows(rows), sort_rows(in_order[h]), rtol=0, atol=0)
    # Chunks of all shards are interleaved: the first buffer already mixes shards.
    plan = disk.chunk_plan(24, epoch=0, seed=0)
    assert len({shard for shard, _, _ in plan[:4]}) > 1
    with pytest.raises(LmscopeError, match=r"has no 'blocks\.2\.hook_resid_post'"):
        ActivationStore(None, None, tmp_path / "acts", "blocks.2.hook_resid_post")
    with pytest.raises(LmscopeError, match="already holds an activation cache"):
        cache_activations(model, None, stream, hooks, tmp_path / "acts", context_size=CTX)


def test_cache_stops_after_n_tokens(tmp_path: Path) -> None:
    manifest = cache_activations(
        tiny_model(), None, token_stream(20 * CTX), HOOK, tmp_path / "a", context_size=CTX,
        n_tokens=100, shard_rows=64,
    )  # fmt: skip
    assert manifest["rows"] == 100 and [s["rows"] for s in manifest["shards"]] == [64, 36]


@pytest.mark.parametrize("source", ["model", "disk"])
def test_memory_is_bounded_whatever_the_corpus_size(tmp_path: Path, source: str) -> None:
    model = tiny_model()
    peaks = []
    for n_windows in (16, 64):  # 4x more data
        stream = token_stream(n_windows * CTX, seed=n_windows)
        data: object = stream
        if source == "disk":
            data = tmp_path / f"acts{n_windows}"
            cache_activations(model, None, stream, HOOK, data, context_size=CTX, shard_rows=64)
        store = ActivationStore(
            model, None, data, HOOK, context_size=CTX, batch_size_tokens=4 * CTX,
            store_batch_size=16, buffer_tokens=128, loop=False,
        )  # fmt: skip
        n_rows = sum(b.shape[0] for b in drain(store))
        assert n_rows == n_windows * CTX
        peaks.append(store.peak_buffer_rows)
    assert peaks[0] == peaks[1] <= 128 + 4 * CTX


def test_normalisation_to_sqrt_d_and_back() -> None:
    model = tiny_model()
    stream = token_stream(8 * CTX)
    raw = direct(model, stream.reshape(8, CTX), HOOK)
    store = ActivationStore(
        model, None, stream, HOOK, context_size=CTX, store_batch_size=16, buffer_tokens=128,
        loop=False, normalize="expected_average_only_in",
    )  # fmt: skip
    factor = store.estimate_norm_scaling_factors()[HOOK]
    assert factor == pytest.approx(32**0.5 / float(raw.norm(dim=1).mean()), rel=1e-5)
    served = torch.cat(drain(store))  # one buffer holds the whole pass: exact mean norm
    assert float(served.norm(dim=1).mean()) == pytest.approx(32**0.5, rel=1e-5)
    torch.testing.assert_close(sort_rows(store.unscale(served)), sort_rows(raw))


@pytest.mark.parametrize("source", ["model", "disk"])
def test_resume_gives_exactly_the_same_batches(tmp_path: Path, source: str) -> None:
    model = tiny_model()
    stream = token_stream(12 * CTX)
    data: object = stream
    if source == "disk":
        data = tmp_path / "acts"
        cache_activations(model, None, stream, HOOK, data, context_size=CTX, shard_rows=50)

    def make() -> ActivationStore:
        return ActivationStore(
            model, None, data, HOOK, context_size=CTX, batch_size_tokens=4 * CTX,
            store_batch_size=16, buffer_tokens=64, normalize="expected_average_only_in", seed=3,
        )  # fmt: skip

    first = make()
    for _ in range(7):
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(20)]  # past the end of the data: loops
    second = make()
    second.load_state_dict(state)
    got = [next(second) for _ in range(20)]
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clear_errors() -> None:
    model = tiny_model()
    with pytest.raises(LmscopeError, match=r"no hook point named 'blocks\.0\.hook_resid_pots'"):
        ActivationStore(model, None, token_stream(64), "blocks.0.hook_resid_pots", context_size=8)
    with pytest.raises(LmscopeError, match="at least twice store_batch_size"):
        ActivationStore(model, None, token_stream(64), HOOK, store_batch_size=64, buffer_tokens=100)
    with pytest.raises(LmscopeError, match="reading text needs a tokenizer"):
        ActivationStore(model, None, __file__, HOOK)
    with pytest.raises(LmscopeError, match="less than one context"):
        next(ActivationStore(model, None, token_stream(10), HOOK, context_size=16))


def test_the_factor_travels_with_the_sae_and_is_undone_at_inference() -> None:
    model = tiny_model()
    stream = token_stream(32 * CTX)
    store = ActivationStore(
        model, None, stream, HOOK, context_size=CTX, batch_size_tokens=8 * CTX,
        store_batch_size=64, buffer_tokens=256, normalize="expected_average_only_in",
    )  # fmt: skip
    sae = build_sae(d_in=32, d_sae=64, arch="topk", k=8, hook_name=HOOK, seed=0)
    train_sae(sae, store, total_steps=40, lr=1e-2, log_every=20)
    factor = store.scaling_factors[HOOK]
    assert sae.cfg.activation_scale == pytest.approx(factor) and factor != pytest.approx(1.0)
    raw = direct(model, stream[: 4 * CTX].reshape(4, CTX), HOOK)
    with torch.no_grad():
        recon = sae(raw)  # raw activations in, raw activations out
        assert float(metrics.fvu(recon, raw)) < 0.5
        latents = sae.encode(raw)
        torch.testing.assert_close(recon, (latents @ sae.W_dec + sae.b_dec) / factor)
        sae.fold_activation_norm_scaling_factor()
        torch.testing.assert_close(sae(raw), recon, rtol=1e-5, atol=1e-5)


def test_exact_resume_through_the_trainer(tmp_path: Path) -> None:
    model = tiny_model()
    stream = token_stream(12 * CTX)

    def run(out: Path, stop_at: int | None = None) -> torch.Tensor:
        store = ActivationStore(
            model, None, stream, HOOK, context_size=CTX, batch_size_tokens=4 * CTX,
            store_batch_size=32, buffer_tokens=96, normalize="expected_average_only_in",
        )  # fmt: skip
        sae = build_sae(d_in=32, d_sae=48, arch="topk", k=4, hook_name=HOOK, seed=0)

        def stop(trainer) -> None:
            if trainer.step == stop_at:
                trainer.request_stop()

        train_sae(sae, store, total_steps=12, lr=1e-2, checkpoint_every=100, out=out, on_step=stop)
        return sae.W_dec.detach().clone()

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_at=5)  # interrupted: checkpoint at step 5, store mid-buffer
    resumed = run(tmp_path / "b")
    torch.testing.assert_close(resumed, straight, rtol=0, atol=0)
