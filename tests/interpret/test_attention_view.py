"""One head's pattern: numbers, labels, the table (also truncated), the plot, errors."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from lmscope.errors import LmscopeError
from lmscope.interpret.attention_view import (
    attention_pattern,
    attention_table,
    plot_attention,
    print_attention,
)
from lmscope.model import build_model
from tests.conftest import small
from tests.interpret.induction_model import FIRST, PREVIOUS, induction_model

IDS = [0, 5, 9, 3, 5, 9, 3, 7]


class ToyTokenizer:
    """Token id i is the letter chr(97 + i); id 0 is a space."""

    def encode(self, text: str) -> list[int]:
        return [0 if c == " " else ord(c) - 96 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(" " if i == 0 else chr(96 + i) for i in ids)


def test_previous_token_head_pattern_is_the_shifted_identity():
    ap = attention_pattern(induction_model(), IDS, *PREVIOUS)
    expected = torch.zeros(8, 8)
    expected[0, 0] = 1.0
    expected[torch.arange(1, 8), torch.arange(0, 7)] = 1.0
    torch.testing.assert_close(ap.pattern, expected, atol=1e-6, rtol=0)
    assert ap.labels == [str(i) for i in IDS] and ap.tokens == IDS
    assert (ap.layer, ap.head) == PREVIOUS


def test_pattern_equals_the_full_runs_cached_pattern_for_gqa_heads():
    model = build_model(small("llama-tiny", n_kv_heads=2), seed=0).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer, head in [(0, 3), (1, 1), (-1, -1)]:
        ap = attention_pattern(model, ids, layer, head)
        torch.testing.assert_close(ap.pattern, cache["pattern", layer][0, head])
    assert torch.allclose(ap.pattern.sum(-1), torch.ones(6))


def test_text_is_encoded_and_labels_show_spaces():
    ap = attention_pattern(induction_model(), "ab ab", *FIRST, tokenizer=ToyTokenizer())
    assert ap.tokens == [1, 2, 0, 1, 2] and ap.labels == ["a", "b", "·", "a", "b"]
    assert ap.pattern[1:, 0].min() > 0.99  # the first-token head


def _rows(text: str) -> list[list[str]]:
    """The table's body: per query row, its cells (after the query's index and label)."""
    body = text.split("─\n", 1)[1]
    return [line.split()[2:] for line in body.splitlines() if line.strip()]


def test_table_lists_every_token_and_marks_strong_weights():
    ap = attention_pattern(induction_model(), IDS, *PREVIOUS)
    console = Console(record=True, width=200)
    print_attention(ap, console)
    text = console.export_text()
    assert "layer 0 head 0" in text and "…" not in text
    rows = _rows(text)
    assert len(rows) == 8 and all(len(row) == 8 for row in rows)
    # Row q: weight 1 on key q - 1 (row 0 on itself), the causal future shown as "·".
    assert [row.index("1") for row in rows] == [0, 0, 1, 2, 3, 4, 5, 6]
    assert all(cell == "·" for q, row in enumerate(rows) for cell in row[q + 1 :])


def test_long_inputs_keep_the_first_key_and_sum_hidden_keys_into_one_column():
    ids = list(range(1, 31))
    ap = attention_pattern(induction_model(), ids, *FIRST)
    console = Console(record=True, width=300)
    console.print(attention_table(ap, max_tokens=5))
    text = console.export_text()
    flat = " ".join(text.split())  # the title wraps at the table's width
    assert "last 5 of 30 tokens" in flat and "25 keys not shown" in flat
    queries = [line.split()[0] for line in text.split("─\n", 1)[1].splitlines() if line.strip()]
    assert queries == ["25", "26", "27", "28", "29"]
    # Key 0 stays visible and takes ~all the attention; the hidden keys ~none.
    assert [row[0] for row in _rows(text)] == ["1"] * 5
    assert all(row[-1] in (".00", "·") for row in _rows(text))


def test_print_attention_is_not_squeezed_when_written_to_a_file():
    ap = attention_pattern(induction_model(), list(range(1, 31)), *PREVIOUS)
    buffer = io.StringIO()
    print_attention(ap, Console(file=buffer, width=80))
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) > 80 and "query" in lines[3]  # not squeezed


def test_plot_writes_a_png(tmp_path):
    ap = attention_pattern(induction_model(), "ab ab", *PREVIOUS, tokenizer=ToyTokenizer())
    path = plot_attention(ap, tmp_path / "pattern.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ap.to_dict()["labels"] == ["a", "b", "·", "a", "b"]


def test_bad_layer_head_or_tokens_are_refused_clearly():
    model = induction_model()
    with pytest.raises(LmscopeError, match=r"layer 2 does not exist: this model has layers 0\.\.1"):
        attention_pattern(model, IDS, 2, 0)
    with pytest.raises(LmscopeError, match=r"head 4 does not exist: each layer has heads 0\.\.3"):
        attention_pattern(model, IDS, 0, 4)
    with pytest.raises(LmscopeError, match="no tokenizer"):
        attention_pattern(model, "text", 0, 0)
    with pytest.raises(LmscopeError, match="outside this model's vocabulary"):
        attention_pattern(model, [1, 999], 0, 0)
