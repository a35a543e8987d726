"""Reading safetensors straight into the final tensors (`CheckpointReader.read_into`) and
the loader's choice between that and the memory-mapped path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmscope
from lmscope import CheckpointError
from lmscope.io.hf import load_hf
from lmscope.io.hf.reader import CheckpointReader
from tests.io.hf.cases import CASES, saved


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("llama")
    saved(CASES["llama-gqa"], directory)
    return directory


def test_read_into_gives_the_stored_tensors_and_their_row_stack(llama_dir: Path) -> None:
    stored = load_file(llama_dir / "model.safetensors")
    reader = CheckpointReader(llama_dir)
    for name, tensor in stored.items():
        out = torch.empty_like(tensor)
        reader.read_into([name], out)
        assert torch.equal(out, tensor), name
    qkv = [f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkv"]
    fused = torch.empty(sum(stored[n].shape[0] for n in qkv), stored[qkv[0]].shape[1])
    reader.read_into(qkv, fused)
    assert torch.equal(fused, torch.cat([stored[n] for n in qkv]))


def test_read_into_refuses_a_target_of_another_size(llama_dir: Path) -> None:
    reader = CheckpointReader(llama_dir)
    with pytest.raises(ValueError, match="the target has"):
        reader.read_into(["model.norm.weight"], torch.empty(3))


def test_same_dtype_loads_without_memory_mapping(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = load_hf(llama_dir)

    def refuse(self: CheckpointReader, names: list[str]) -> None:
        raise AssertionError(f"memory-mapped path taken for {names}")

    monkeypatch.setattr(CheckpointReader, "open", refuse)
    direct = load_hf(llama_dir, dtype=torch.float32)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(direct.state_dict()[name], tensor), name
    with pytest.raises(AssertionError, match="memory-mapped path"):
        load_hf(llama_dir, dtype=torch.bfloat16)  # a cast needs the mapped path


def test_file_cut_after_opening_is_named(llama_dir: Path, tmp_path: Path) -> None:
    for f in llama_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    reader = CheckpointReader(tmp_path)  # header checked while the file was whole
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-64])
    last = max(reader.names(), key=lambda n: reader._spans[n][1])
    with pytest.raises(CheckpointError, match=r"ends 64 bytes early.*truncated or corrupt"):
        reader.read_into([last], torch.empty(reader.shape(last), dtype=reader.dtype(last)))


def test_loaded_model_matches_hugging_face_logits(llama_dir: Path) -> None:
    hf = saved(CASES["llama-gqa"], llama_dir / "again")
    model = lmscope.load(llama_dir / "again")
    tokens = torch.randint(3, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = hf(input_ids=tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=0)
