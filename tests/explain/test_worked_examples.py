"""E1 to E7 reproduce the corrected figures of shared/worked-examples.md through lmscope modules."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.explain import worked_example, worked_examples
from lmscope.explain.data import Example
from tests.conftest import SHARED

TOL = 1e-4


def close(got: object, want: object, tol: float = TOL) -> bool:
    return torch.allclose(
        torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), atol=tol
    )


@pytest.fixture(scope="module")
def examples() -> dict[str, Example]:
    return {e.id: e for e in worked_examples()}


def test_every_example_is_there_in_order(examples: dict[str, Example]) -> None:
    assert list(examples) == [f"E{i}" for i in range(1, 8)]


def test_every_check_passes(examples: dict[str, Example]) -> None:
    failed = [
        (e.id, c.what, c.max_error) for e in examples.values() for c in e.checks if not c.passed
    ]
    assert failed == []


def test_e1_layer_norm(examples: dict[str, Example]) -> None:
    e = examples["E1"]
    assert close(e.array("mean").values, 5.0)
    assert close(e.array("variance").values, 5.0)
    assert close(e.array("scale = sqrt(variance + eps)").values, math.sqrt(5 + 1e-5))
    assert close(e.array("LayerNorm(x)").values, [-1.341639, -0.447213, 0.447213, 1.341639])
    assert e.discrepancies == []


def test_e2_positional_encoding(examples: dict[str, Example]) -> None:
    e = examples["E2"]
    pe = [
        [0.0, 1.0, 0.0, 1.0],
        [0.841471, 0.540302, 0.010000, 0.999950],
        [0.909297, -0.416147, 0.019999, 0.999800],
    ]
    assert close(e.array("PE").values, pe)
    assert close(e.array("input to block 0").values, [1.341471, 0.840302, -0.190000, 1.799950])
    # The concatenated layout holds the same features as [sin..., cos...].
    concat = [[row[0], row[2], row[1], row[3]] for row in pe]
    assert close(e.array("PE (concatenated)").values, concat)


def test_e3_attention_row(examples: dict[str, Example]) -> None:
    e = examples["E3"]
    assert close(e.array("raw scores").values, [0.3, 2.1, 1.2, 1.6, 1.8])
    assert close(e.array("scaled scores").values, [0.0375, 0.2625, 0.15, 0.2, 0.225])
    softmax = [0.173790, 0.217641, 0.194483, 0.204455, 0.209631]
    assert close(e.array("softmax").values, softmax)
    assert close(e.array("z_sat").values, [0.332049, 0.280613, 0.239698, 0.335829])
    # The document's own weights, forced through hook_pattern.
    doc_w = [0.157, 0.197, 0.176, 0.185, 0.192]
    v = e.array("V").values
    z_doc = [sum(w * row[d] for w, row in zip(doc_w, v, strict=True)) for d in range(4)]
    assert close(e.array("z_sat with the document's weights").values, z_doc)


def test_e3_discrepancies_carry_the_documents_figures(examples: dict[str, Example]) -> None:
    by_what = {d.what: d for d in examples["E3"].discrepancies}
    weights = by_what["softmax weights of sat"]
    assert weights.document_value == [0.157, 0.197, 0.176, 0.185, 0.192]
    assert round(sum(weights.document_value), 3) == 0.907
    assert "0.907" in weights.note
    assert close(weights.true_value, [0.173790, 0.217641, 0.194483, 0.204455, 0.209631])
    z = by_what["z_sat"]
    assert z.document_value == [0.32, 0.30, 0.25, 0.36]
    assert close(z.true_value, [0.332049, 0.280613, 0.239698, 0.335829])


def test_e4_block(examples: dict[str, Example]) -> None:
    e = examples["E4"]
    a, b = 0.669762, 0.330238
    assert close(e.array("scores").values, [[0.707107, 0.0], [0.0, 0.707107]])
    assert close(e.array("weights").values, [[a, b], [b, a]])
    assert close(e.array("o").values, [[a, b], [b, a]])
    assert close(e.array("z").values, [[1.669762, 0.330238], [0.330238, 1.669762]])
    assert close(e.array("y").values, [[3.339523, 0.660477], [0.660477, 3.339523]])


def test_e4_discrepancies_carry_the_documents_figures(examples: dict[str, Example]) -> None:
    by_what = {d.what: d for d in examples["E4"].discrepancies}
    assert by_what["attention weights"].document_value == [[1.0, 0.0], [0.0, 1.0]]
    assert close(
        by_what["attention weights"].true_value, [[0.669762, 0.330238], [0.330238, 0.669762]]
    )
    y = by_what["block output y"]
    assert "3x" in y.document_value
    assert close(y.true_value, [[3.339523, 0.660477], [0.660477, 3.339523]])
    # Forcing the document's one-hot weights into the real block gives 4x, not 3x.
    assert "[[4.0, 0.0], [0.0, 4.0]] = 4x" in y.note


def test_e5_components_sum_exactly_to_the_stream(examples: dict[str, Example]) -> None:
    e = examples["E5"]
    assert close(e.array("head 1 write").values, [0.1, 0.2, 0.0, 0.1])
    assert close(e.array("head 2 write").values, [0.2, 0.0, 0.3, 0.0])
    assert close(e.array("stream after attention").values, [0.7, 0.4, 0.5, 0.2])
    assert close(e.array("MLP write").values, [0.1, 0.05, 1.12, 0.3])
    post = e.array("stream after the MLP").values
    assert close(post, [0.8, 0.45, 1.62, 0.5])
    # Recomposed in the model's order (heads first, then each residual add), in fp32.
    emb, h1, h2, mlp = (torch.tensor(r, dtype=torch.float32) for r in e.array("components").values)
    assert torch.equal((emb + (h1 + h2)) + mlp, torch.tensor(post, dtype=torch.float32))
    assert all(c.passed and c.max_error == 0.0 for c in e.checks)


def test_e6_weight_tying(examples: dict[str, Example]) -> None:
    e = examples["E6"]
    E = torch.tensor(e.array("E").values)
    h = torch.tensor(e.array("h").values)
    assert close(e.array("model logits").values, (h @ E.T).tolist(), tol=1e-6)
    tied, untied = e.array("parameters (tied)").values, e.array("parameters (untied twin)").values
    assert untied - tied == 5 * 4  # vocab x d_model, counted once when tied
    assert {c.what for c in e.checks if c.passed} >= {
        "unembed has no weight of its own",
        "W_U shares storage with W_E",
    }


def test_e7_key_value_memory(examples: dict[str, Example]) -> None:
    e = examples["E7"]
    assert close(e.array("x . key").values, [1.03, 0.35])
    assert close(e.array("MLP output").values, [1.12, 1.24, 0.74])
    contributions = torch.tensor(e.array("contributions").values)
    assert close(contributions.sum(0).tolist(), e.array("MLP output").values, tol=1e-5)
    assert close(e.array("sum over all 5433 neurons").values, [1.12, 1.24, 0.74], tol=1e-5)
    (d,) = e.discrepancies
    assert d.document_value == [1.2, 0.4]
    assert close(d.true_value, [1.03, 0.35])
    assert "elides" in d.note


def test_examples_are_json_and_leave_the_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    data = [dataclasses.asdict(e) for e in worked_examples()]
    assert torch.equal(torch.rand(3), before)
    assert json.loads(json.dumps(data, allow_nan=False))[2]["id"] == "E3"


def test_worked_example_by_id() -> None:
    assert worked_example("e7").id == "E7"
    with pytest.raises(LmscopeError, match="E1, E2"):
        worked_example("E8")


@pytest.mark.skipif(not (SHARED / "worked-examples.md").exists(), reason="no shared folder")
def test_cross_check_with_the_shared_document(examples: dict[str, Example]) -> None:
    text = (SHARED / "worked-examples.md").read_text()

    def numbers(pattern: str) -> list[float]:
        match = re.search(pattern, text)
        assert match, pattern
        return [float(x) for x in match.group(1).split(",")]

    assert close(examples["E3"].array("softmax").values, numbers(r"- softmax: \[([^\]]+)\]"))
    assert close(
        examples["E3"].array("z_sat").values, numbers(r"z_sat = softmax \. V = \[([^\]]+)\]")
    )
    assert close(
        examples["E1"].array("LayerNorm(x)").values, numbers(r"LayerNorm\(x\) = \[([^\]]+)\]")
    )
