"""lmscope's own format: ``model.save(dir)`` -> ``lmscope.load(dir)`` is bit-exact, and every
broken directory gives a `CheckpointError` that says what is wrong."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import lmscope
from lmscope import CheckpointError, ModelConfig, build_model
from lmscope.model.base import BaseTransformer
from lmscope.presets import preset_names
from lmscope.serialization import atomic_write
from tests.conftest import small

#: Every preset at test size, plus wirings that no preset covers.
CASES: dict[str, ModelConfig] = {name: small(name) for name in preset_names()}
CASES |= {
    "encoder-without-head": small("bert-base", mlm_head=False),
    "encoder-alibi": small("bert-base", positional="alibi"),
    "decoder-alibi": small("gpt2-small", positional="alibi"),
    "decoder-relative": small("gpt2-small", positional="relative", relative_max_distance=3),
    "decoder-sinusoidal": small("gpt2-small", positional="sinusoidal"),
    "decoder-parallel-partial-rope": small(
        "gpt2-small",
        positional="rope",
        rotary_fraction=0.5,
        rope_layout="interleaved",
        parallel_attn_mlp=True,
        parallel_shared_norm=True,
    ),
    "decoder-unembed-bias-yarn": small(
        "llama-tiny", unembed_bias=True, rope_scaling="yarn", rope_scaling_factor=2.0
    ),
    "encoder-decoder-rope": small("t5-small", positional="rope"),
    # One head of width 2, no positions, no biases: the narrowest wiring.
    "decoder-width-8": ModelConfig(
        vocab_size=5,
        d_model=8,
        n_layers=1,
        n_heads=1,
        d_head=2,
        d_mlp=32,
        max_seq_len=8,
        positional="none",
        activation="relu",
        qkv_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        norm_bias=False,
        tie_embeddings=False,
    ),
    "encoder-decoder-learned-gqa": small("t5-small", positional="learned", n_kv_heads=2),
}
TIED = [
    name
    for name, cfg in CASES.items()
    if cfg.tie_embeddings and (cfg.architecture != "encoder" or cfg.mlm_head)
]


def _tokens(cfg: ModelConfig, length: int = 6) -> Tensor:
    return torch.randint(0, cfg.vocab_size, (2, length))


def _run(model: BaseTransformer, tokens: Tensor) -> Tensor:
    with torch.no_grad():
        if model.cfg.architecture == "encoder-decoder":
            return model(tokens, tokens[:, :4])
        return model(tokens)


def _saved(cfg: ModelConfig, directory: Path, seed: int = 0) -> BaseTransformer:
    model = build_model(cfg, seed=seed).eval()
    model.save(directory)
    return model


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_round_trip_is_bit_identical(case: str, tmp_path: Path) -> None:
    cfg = CASES[case]
    model = _saved(cfg, tmp_path)
    loaded = lmscope.load(tmp_path)
    assert type(loaded) is type(model)
    assert loaded.cfg == cfg
    original, again = model.state_dict(), loaded.state_dict()
    assert list(again) == list(original)
    for name, tensor in original.items():
        assert again[name].dtype == tensor.dtype, name
        assert torch.equal(again[name], tensor), name
    tokens = _tokens(cfg)
    assert torch.equal(_run(loaded, tokens), _run(model, tokens))
    one = tokens[:1, :1]  # one token: matrix-vector products, another kernel
    assert torch.equal(_run(loaded, one), _run(model, one))


@pytest.mark.parametrize("case", list(CASES))
def test_loaded_model_is_in_eval_mode_trainable_and_on_cpu(case: str, tmp_path: Path) -> None:
    _saved(CASES[case], tmp_path)
    loaded = lmscope.load(tmp_path)
    assert not loaded.training
    assert not any(m.training for m in loaded.modules())
    for name, p in loaded.named_parameters():
        assert p.requires_grad, name
        assert p.device.type == "cpu", name
    # Non-persistent buffers (RoPE frequencies, ALiBi slopes) are rebuilt on the device too.
    for name, b in loaded.named_buffers():
        assert b.device.type == "cpu", name


@pytest.mark.parametrize("case", TIED)
def test_tied_weights_stay_shared_after_load(case: str, tmp_path: Path) -> None:
    _saved(CASES[case], tmp_path)
    loaded = lmscope.load(tmp_path)
    head = loaded.mlm_head.unembed if getattr(loaded, "mlm_head", None) else loaded.unembed
    assert head.weight is None
    assert loaded.W_U.data_ptr() == loaded.embed.weight.data_ptr()
    assert torch.equal(loaded.W_U, loaded.embed.weight.T)
    assert not any(name.endswith("unembed.weight") for name in loaded.state_dict())
    # Editing the embedding edits the unembedding: one parameter, not a copy.
    with torch.no_grad():
        loaded.embed.weight[3, 0] += 1.0
    assert loaded.W_U[0, 3] == loaded.embed.weight[3, 0]


def test_untied_unembedding_is_its_own_tensor_after_load(tmp_path: Path) -> None:
    model = _saved(small("llama-tiny"), tmp_path)
    loaded = lmscope.load(tmp_path)
    assert loaded.unembed.weight is not None
    assert loaded.unembed.weight.data_ptr() != loaded.embed.weight.data_ptr()
    assert torch.equal(loaded.unembed.weight, model.unembed.weight)


@pytest.mark.parametrize("case", ["gpt2-small", "llama-tiny", "bert-base", "t5-small"])
def test_bfloat16_load_gives_bfloat16_params_equal_to_a_cast(case: str, tmp_path: Path) -> None:
    cfg = CASES[case]
    model = _saved(cfg, tmp_path)
    loaded = lmscope.load(tmp_path, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    cast = model.to(torch.bfloat16)
    for name, p in loaded.named_parameters():
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p, cast.get_parameter(name)), name
    tokens = _tokens(cfg)
    out = _run(loaded, tokens)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()


def test_bfloat16_load_keeps_rope_frequencies_in_float32(tmp_path: Path) -> None:
    # The rotary module computes angles in float32 because bf16 cannot hold
    # position * freq; the frequency table itself must not be rounded to bf16 either.
    _saved(small("llama-tiny", rope_theta=500000.0), tmp_path)
    loaded = lmscope.load(tmp_path, dtype=torch.bfloat16)
    reference = build_model(small("llama-tiny", rope_theta=500000.0)).rotary.inv_freq
    assert loaded.rotary.inv_freq.dtype == torch.float32
    assert torch.equal(loaded.rotary.inv_freq.cpu(), reference)


# --- broken checkpoints -------------------------------------------------------------------


def _edit_weights(directory: Path, edit: Callable[[dict[str, Tensor]], object]) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named_with_its_expected_shape(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    _edit_weights(tmp_path, lambda t: t.pop("blocks.1.attn.qkv.weight"))
    with pytest.raises(
        CheckpointError,
        match=r"missing tensor 'blocks\.1\.attn\.qkv\.weight' \(expected shape \[96, 32\]\)",
    ):
        lmscope.load(tmp_path)


def test_extra_tensor_is_named(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    _edit_weights(tmp_path, lambda t: t.update({"blocks.0.attn.qkv.wieght": torch.zeros(3)}))
    with pytest.raises(
        CheckpointError,
        match=r"unexpected tensor 'blocks\.0\.attn\.qkv\.wieght' "
        r"\(Did you mean 'blocks\.0\.attn\.qkv\.weight'\?\)",
    ):
        lmscope.load(tmp_path)


def test_wrong_shape_tensor_is_named_with_found_and_expected_shapes(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    _edit_weights(tmp_path, lambda t: t.update({"embed.weight": torch.zeros(60, 32)}))
    with pytest.raises(
        CheckpointError, match=r"tensor 'embed\.weight' has shape \[60, 32\], expected \[61, 32\]"
    ):
        lmscope.load(tmp_path)


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)

    def edit(t: dict[str, Tensor]) -> None:
        t.pop("ln_final.weight")
        t["embed.weight"] = torch.zeros(1, 32)
        t["stray"] = torch.zeros(1)

    _edit_weights(tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        lmscope.load(tmp_path)
    message = str(info.value)
    assert "'ln_final.weight'" in message and "'embed.weight'" in message
    assert "'stray'" in message


def test_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"is not a model directory: it has no config\.json"):
        lmscope.load(tmp_path)


def test_nonexistent_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        lmscope.load(tmp_path / "nothing-here")


def test_hugging_face_config_is_refused_saying_so(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(CheckpointError, match=r"Hugging Face checkpoint \(model_type='gpt2'\)"):
        lmscope.load(tmp_path)


def test_config_json_that_is_not_json_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        lmscope.load(tmp_path)


def test_missing_weights_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights file at .*model\.safetensors"):
        lmscope.load(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bad-header"])
def test_corrupt_weights_file_is_a_checkpoint_error(damage: str, tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # header length says 8 bytes, header is not JSON
        path.write_bytes((8).to_bytes(8, "little") + b"{{{{{{{{" + data[16:])
    with pytest.raises(CheckpointError, match=r"cannot read .*model\.safetensors as safetensors"):
        lmscope.load(tmp_path)


# --- atomic writes --------------------------------------------------------------------------


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "model"
    returned = build_model(small("gpt2-small")).save(directory)
    assert returned == directory
    assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]


def test_saving_over_an_existing_save_replaces_it(tmp_path: Path) -> None:
    _saved(small("gpt2-small"), tmp_path, seed=0)
    second_cfg = small("llama-tiny")
    second = _saved(second_cfg, tmp_path, seed=1)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = lmscope.load(tmp_path)
    assert loaded.cfg == second_cfg
    for name, tensor in second.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    target.write_text("old contents\n")

    def half_write(tmp: Path) -> None:
        tmp.write_text("new con")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_write_keeps_the_old_file_on_keyboard_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_write_replaces_the_file_when_the_writer_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["file.txt"]


def test_failed_save_keeps_the_previous_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _saved(small("gpt2-small"), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("lmscope.serialization.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        build_model(small("gpt2-small"), seed=1).save(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    monkeypatch.undo()
    loaded = lmscope.load(tmp_path)
    assert torch.equal(loaded.embed.weight, first.embed.weight)
