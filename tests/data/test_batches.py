"""get_batch / iter_eval_batches: windows equal the token slices; resumable; clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.data import (
    DataError,
    ShardedTokens,
    TokenData,
    eval_starts,
    get_batch,
    iter_eval_batches,
    prepare,
    resolve_sources,
)
from lmscope.tokenizers import CharTokenizer

TOKENS = np.arange(1000, dtype=np.uint16) % 97  # a simple, known token stream


def test_batch_windows_are_token_slices_at_generator_offsets() -> None:
    x, y = get_batch(TOKENS, 8, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    # nanoGPT's draw: ix = torch.randint(len(data) - block_size, (batch_size,))
    starts = torch.randint(1000 - 16, (8,), generator=torch.Generator().manual_seed(3))
    for row, s in enumerate(starts.tolist()):
        assert x[row].tolist() == TOKENS[s : s + 16].tolist()
        assert y[row].tolist() == TOKENS[s + 1 : s + 17].tolist()


def test_restoring_the_generator_state_resumes_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    get_batch(TOKENS, 4, 8, gen)
    state = gen.get_state()
    expected = [get_batch(TOKENS, 4, 8, gen)[0] for _ in range(3)]
    resumed = torch.Generator()
    resumed.set_state(state)
    for want in expected:
        assert torch.equal(get_batch(TOKENS, 4, 8, resumed)[0], want)


def test_memmap_batches_equal_the_tokenized_text(tmp_path: Path) -> None:
    text = "".join(f"line {i}: all the world's a stage\n" for i in range(200))
    (tmp_path / "a.txt").write_text(text)
    tok = CharTokenizer.from_text(text)
    prepare(resolve_sources(tmp_path / "a.txt"), tmp_path / "out", tok, shard_tokens=500)
    data = TokenData(tmp_path / "out")
    train = data.split("train")
    assert isinstance(train, ShardedTokens)  # windows may straddle two shards
    gen = torch.Generator().manual_seed(1)
    x, y = get_batch(train, 32, 64, gen)
    for row_x, row_y in zip(x, y, strict=True):
        chunk = tok.decode(row_x) + tok.decode(row_y[-1:])
        assert chunk in text  # every window is a piece of the original text
        assert tok.decode(row_y) == chunk[1:]


def test_block_longer_than_the_data_says_what_to_change() -> None:
    tokens = np.arange(50, dtype=np.uint16)
    with pytest.raises(DataError, match=r"block_size 64 is longer .* needs .* 65 tokens .* 50\."):
        get_batch(tokens, 2, 64, torch.Generator())
    with pytest.raises(DataError, match=r"smaller --block-size \(at most 49\)"):
        list(iter_eval_batches(tokens, 2, 50, 1))
    x, _ = get_batch(tokens, 2, 49, torch.Generator())  # the longest block that fits
    assert x.shape == (2, 49)
    with pytest.raises(DataError, match="at least 1"):
        get_batch(tokens, 0, 4, torch.Generator())


def test_eval_batches_are_fixed_and_spread_over_the_split() -> None:
    batches = list(iter_eval_batches(TOKENS, 4, 10, max_batches=3))
    again = list(iter_eval_batches(TOKENS, 4, 10, max_batches=3))
    assert len(batches) == 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    starts = eval_starts(1000, 10, 12)
    assert starts[0] == 0 and starts[-1] == 1000 - 10 - 1  # first and last windows
    assert [b[0][:, 0].tolist() for b in batches] == [
        TOKENS[starts[i : i + 4]].tolist() for i in range(0, 12, 4)
    ]
    # Few tokens, many batches asked: still full batches (overlapping windows).
    short = list(iter_eval_batches(TOKENS[:30], 8, 10, max_batches=2))
    assert [b[0].shape for b in short] == [(8, 10), (8, 10)]


def test_eval_without_a_limit_covers_each_token_once() -> None:
    batches = list(iter_eval_batches(TOKENS, 8, 10))
    targets = torch.cat([y.flatten() for _, y in batches])
    assert len(targets) == (1000 - 1) // 10 * 10  # 99 windows of 10
    assert targets.tolist() == TOKENS[1 : 1 + len(targets)].tolist()
    assert [x.shape[0] for x, _ in batches] == [8] * 12 + [3]


def test_tensor_tokens_are_accepted() -> None:
    tokens = torch.arange(100)
    x, y = get_batch(tokens, 2, 5, torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1)
