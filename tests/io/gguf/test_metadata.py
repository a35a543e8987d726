"""GGUF metadata -> `ModelConfig`, and a clear `CheckpointError` for what lmscope cannot hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmscope.errors import CheckpointError
from lmscope.io.gguf import GGUFFile, is_gguf, load_gguf, open_gguf, read_gguf_config
from tests.io.gguf.synthetic import SHAPE, tiny_llama_gguf

pytest.importorskip("transformers")


def test_smollm2_config(smollm2_file: GGUFFile) -> None:
    cfg = read_gguf_config(smollm2_file)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads) == (30, 576, 9, 3)
    assert (cfg.head_dim, cfg.mlp_dim, cfg.vocab_size, cfg.max_seq_len) == (64, 1536, 49152, 8192)
    assert cfg.rope_theta == 100000.0 and cfg.rope_layout == "rotate-half"
    assert cfg.norm == "rmsnorm" and cfg.norm_eps == pytest.approx(1e-5)
    assert cfg.activation == "swiglu" and cfg.positional == "rope"
    assert cfg.tie_embeddings  # the file has no output.weight
    assert not (cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias)


def test_tiny_config_follows_metadata(tmp_path: Path) -> None:
    tiny_llama_gguf(tmp_path / "m.gguf", metadata={"llama.rope.freq_base": 1234.5})
    cfg = read_gguf_config(tmp_path / "m.gguf")
    assert cfg.rope_theta == 1234.5 and cfg.kv_heads == SHAPE["kv_heads"]
    assert cfg.name == "tiny-llama" and cfg.max_seq_len == 128 and not cfg.tie_embeddings


def test_linear_rope_scaling_is_mapped(tmp_path: Path) -> None:
    scaling = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    tiny_llama_gguf(tmp_path / "m.gguf", metadata=scaling)
    cfg = read_gguf_config(tmp_path / "m.gguf")
    assert (cfg.rope_scaling, cfg.rope_scaling_factor) == ("linear", 4.0)


BROKEN: dict[str, tuple[dict[str, Any], str]] = {
    "architecture": ({"metadata": {"general.architecture": "gpt2"}}, "holds a 'gpt2' model"),
    "missing key": (
        {"metadata": {"llama.block_count": None}},
        "no metadata key 'llama.block_count'",
    ),
    "experts": ({"metadata": {"llama.expert_count": 8}}, "mixture-of-experts"),
    "yarn": ({"metadata": {"llama.rope.scaling.type": "yarn"}}, "RoPE scaling 'yarn'"),
    "missing tensor": ({"drop": ("blk.1.ffn_up.weight",)}, "missing tensor 'blk.1.ffn_up"),
    "extra tensor": (
        {"extra": {"blk.0.attn_q_norm.weight": np.ones(16)}},
        "no place for: 'blk.0.attn_q_norm.weight'",
    ),
    "rope factors": ({"extra": {"rope_freqs.weight": np.ones(8)}}, "rope_freqs"),
    "unsupported type": ({"types": {"ffn_up": "Q5_0"}}, "types Q5_0 are not supported"),
    "wrong shape": (
        {"metadata": {"llama.feed_forward_length": 128}},
        r"'blk.0.ffn_gate.weight' has shape \[256, 64\], expected \[128, 64\]",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_unsupported_or_broken_files_are_named(tmp_path: Path, case: str) -> None:
    kwargs, message = BROKEN[case]
    tiny_llama_gguf(tmp_path / "m.gguf", **kwargs)
    with pytest.raises(CheckpointError, match=message):
        load_gguf(tmp_path / "m.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not gguf")
    assert not is_gguf(tmp_path / "x.gguf") and not is_gguf(tmp_path / "missing.gguf")
    with pytest.raises(CheckpointError, match="is not a GGUF file"):
        open_gguf(tmp_path / "x.gguf")
    with pytest.raises(CheckpointError, match="no GGUF file at"):
        open_gguf(tmp_path / "missing.gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    assert is_gguf(tmp_path / "cut.gguf")
    with pytest.raises(CheckpointError, match=r"cannot read .* as GGUF"):
        open_gguf(tmp_path / "cut.gguf")
