"""Checkpoint formats, dtypes and every way a Hugging Face directory can be wrong: each
format loads to the same weights, and each broken directory gives one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmscope
from lmscope import CheckpointError
from lmscope.io.hf import (
    UnsupportedCheckpointError,
    hf_model_config,
    load_hf,
    supported_model_types,
)
from lmscope.io.hf.reader import CheckpointReader
from tests.io.hf.cases import CASES, saved


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("llama")
    saved(CASES["llama-gqa"], directory)
    return directory


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def _state(model: lmscope.model.BaseTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- formats ----------------------------------------------------------------------------
def test_sharded_safetensors_load_the_same_weights(llama_dir: Path, tmp_path: Path) -> None:
    hf = CASES["llama-gqa"].build()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert _same_weights(_state(lmscope.load(tmp_path)), _state(lmscope.load(llama_dir)))


def test_pytorch_model_bin_loads_with_weights_only(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(_tensors(llama_dir), tmp_path / "pytorch_model.bin")
    assert _same_weights(_state(lmscope.load(tmp_path)), _state(lmscope.load(llama_dir)))


def test_base_model_checkpoint_without_prefix_loads(tmp_path: Path) -> None:
    hf = CASES["llama-gqa"].build()
    hf.model.save_pretrained(tmp_path)  # LlamaModel: no "model." prefix, no lm_head
    assert not any(k.startswith("model.") for k in _tensors(tmp_path))
    with pytest.raises(CheckpointError, match=r"missing tensor 'lm_head.weight'"):
        lmscope.load(tmp_path)  # the untied head is needed for logits


def test_dtype_defaults_to_the_checkpoints_and_can_be_requested(tmp_path: Path) -> None:
    hf = CASES["llama-gqa"].build().to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = lmscope.load(tmp_path)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.embed.weight, hf.model.embed_tokens.weight)
    wide = lmscope.load(tmp_path, dtype=torch.float32)
    assert wide.dtype == torch.float32
    assert torch.equal(wide.embed.weight, hf.model.embed_tokens.weight.float())
    assert model.rotary.inv_freq.dtype == torch.float32  # RoPE tables stay float32


def test_loaded_tensors_own_aligned_memory(llama_dir: Path) -> None:
    model = load_hf(llama_dir)
    for name, p in model.named_parameters():
        assert p.device.type == "cpu" and p.data_ptr() % 64 == 0, name
        assert p.is_contiguous(), name
    assert not model.training


def test_reader_reports_shapes_without_reading_data(llama_dir: Path) -> None:
    reader = CheckpointReader(llama_dir)
    assert reader.shape("model.embed_tokens.weight") == (61, 32)
    assert reader.main_dtype() == torch.float32
    assert reader.format == "safetensors"


# --- errors -----------------------------------------------------------------------------
class Opaque:
    """An arbitrary Python object: unpickling it could run any code."""


def test_missing_tensor_is_named_with_its_expected_shape(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    tensors = _tensors(tmp_path)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"missing tensor 'model.layers.1.self_attn.k_proj.weight' "
        r"\(expected shape \[16, 32\]\)",
    ):
        lmscope.load(tmp_path)


def test_wrong_shape_is_named_with_found_and_expected(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    tensors = _tensors(tmp_path)
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(40, 32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"'model.layers.0.mlp.up_proj.weight' has shape \[40, 32\], expected \[48, 32\]",
    ):
        lmscope.load(tmp_path)


def test_unknown_tensor_is_refused_not_ignored(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    tensors = _tensors(tmp_path)
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)  # a Qwen3-style norm
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"q_norm.weight'.*not loaded approximately"):
        lmscope.load(tmp_path)


def test_unknown_model_type_lists_the_supported_ones(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    with pytest.raises(UnsupportedCheckpointError) as info:
        lmscope.load(tmp_path)
    message = str(info.value)
    assert "model_type 'falcon' is not supported" in message
    assert all(t in message for t in supported_model_types())


@pytest.mark.parametrize(
    ("case", "change", "match"),
    [
        ("llama-gqa", {"rope_parameters": {"rope_type": "longrope"}}, r"rope_type='longrope'"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx"),
        ("gpt2", {"activation_function": "gelu_fast"}, r"activation_function='gelu_fast'"),
        (
            "bert-mlm",
            {"position_embedding_type": "relative_key"},
            r"position_embedding_type='relative_key'",
        ),
        (
            "qwen2-window",
            {"max_window_layers": 1, "layer_types": None},
            r"one attention window for every layer",
        ),
        (
            "llama-rope-yarn",
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 8,
                    "mscale": 0.7,
                }
            },
            r"mscale=0.7",
        ),
    ],
    ids=[
        "longrope",
        "gpt2-inverse-layer-scaling",
        "gelu-fast",
        "bert-relative",
        "qwen2-mixed",
        "yarn-mscale",
    ],
)
def test_unimplemented_options_are_refused_saying_what_is_supported(
    case: str, change: dict, match: str, tmp_path: Path
) -> None:
    saved(CASES[case], tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UnsupportedCheckpointError, match=match) as info:
        hf_model_config(tmp_path)
    assert "not implemented" in str(info.value) or "one attention window" in str(info.value)


def test_pickle_file_with_python_objects_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    state = {"model.embed_tokens.weight": torch.zeros(2), "extra": Opaque()}
    torch.save(state, tmp_path / "pytorch_model.bin")  # weights_only refuses Opaque
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely.*weights_only=True"):
        lmscope.load(tmp_path)


def test_truncated_safetensors_is_a_clear_error(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        lmscope.load(tmp_path)


def test_config_without_weights_says_it_is_a_hugging_face_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(
        CheckpointError, match=r"Hugging Face checkpoint \(model_type='llama'\).*no weights"
    ):
        lmscope.load(tmp_path)


def test_shard_index_naming_a_missing_file_is_refused(llama_dir: Path, tmp_path: Path) -> None:
    _copy(llama_dir, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002.safetensors"):
        lmscope.load(tmp_path)
