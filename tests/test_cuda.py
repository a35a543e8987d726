"""The same models on a CUDA device: numbers equal the CPU's, decoding, caches, training.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py``. fp32 comparisons keep TF32 off (PyTorch's default for
matmuls), so the 1e-4 logit tolerance of the CPU parity tests applies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmscope
from lmscope.generate import generate
from lmscope.model import BaseTransformer
from tests.conftest import small

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PRESETS = ["gpt2-small", "llama-tiny", "mistral-tiny", "mixtral-tiny", "bert-base", "t5-small"]
DECODERS = ["gpt2-small", "llama-tiny", "mistral-tiny", "mixtral-tiny"]


def pair(preset: str) -> tuple[BaseTransformer, BaseTransformer]:
    """The same seeded random model on CPU and on CUDA (eval mode)."""
    cfg = small(preset, tie_embeddings=False, init_std=0.2)
    cpu = lmscope.build_model(cfg, seed=0).eval()
    gpu = lmscope.build_model(cfg, seed=0).eval().to("cuda")
    return cpu, gpu


def tokens_for(model: BaseTransformer, batch: int = 2, pos: int = 12) -> torch.Tensor:
    return torch.randint(
        0, model.cfg.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_logits_equal_cpu(preset: str) -> None:
    cpu, gpu = pair(preset)
    tokens = tokens_for(cpu)
    with torch.no_grad():
        if cpu.cfg.architecture == "encoder-decoder":
            want = cpu(tokens, decoder_tokens=tokens[:, :5])
            got = gpu(tokens.cuda(), decoder_tokens=tokens[:, :5].cuda())
        else:
            want, got = cpu(tokens), gpu(tokens.cuda())
    assert got.device.type == "cuda"
    assert (got.cpu() - want).abs().max() <= 1e-4


@pytest.mark.parametrize("preset", DECODERS)
def test_greedy_decoding_equals_cpu(preset: str) -> None:
    cpu, gpu = pair(preset)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8], [9], [10, 11, 12]]
    want = generate(cpu, prompts, max_new_tokens=12).new_tokens
    got = generate(gpu, prompts, max_new_tokens=12).new_tokens
    assert got == want
    # Batched left-padded decoding on the GPU equals one prompt at a time there.
    for prompt, new in zip(prompts, got, strict=True):
        assert generate(gpu, [prompt], max_new_tokens=12).new_tokens[0] == new


def test_sampling_is_seeded_on_cuda() -> None:
    _, gpu = pair("llama-tiny")
    kwargs = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": 3}
    first = generate(gpu, [[1, 2, 3]], **kwargs).new_tokens
    assert generate(gpu, [[1, 2, 3]], **kwargs).new_tokens == first


def test_run_with_cache_on_cuda_equals_cpu() -> None:
    cpu, gpu = pair("llama-tiny")
    tokens = tokens_for(cpu)
    _, want = cpu.run_with_cache(tokens)
    logits, got = gpu.run_with_cache(tokens.cuda())
    assert logits.device.type == "cuda"
    assert set(got.keys()) == set(want.keys())
    for name in want:
        assert got[name].device.type == "cuda"
        # assert_close: masked scores are -inf on both sides (their difference is NaN).
        torch.testing.assert_close(got[name].cpu(), want[name], atol=1e-4, rtol=0, msg=name)
    # device= moves what is cached, not the model.
    _, moved = gpu.run_with_cache(tokens.cuda(), device="cpu")
    assert all(t.device.type == "cpu" for t in moved.values())


def test_training_defaults_on_cuda(tmp_path: Path) -> None:
    """`lmscope train` with the defaults on a CUDA machine: device auto = cuda, bf16
    autocast and torch.compile; the loss falls and the exported model loads and decodes.

    Run as a subprocess: the test suite's runtime type checker (beartype through
    jaxtyping's import hook) cannot be traced by torch.compile.
    """
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 400)
    config = tmp_path / "model.json"
    small("llama-tiny", d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=32).to_json(config)
    settings = {
        "data": text,
        "batch_size": 8,
        "block_size": 32,
        "max_steps": 60,
        "eval_every": 30,
        "eval_batches": 2,
        "lr": 3e-3,
        "warmup_steps": 5,
    }
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lmscope",
        "train",
        str(config),
        "--out",
        str(run),
        *sets,
        "--no-progress",
        "--no-sample",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cuda:0, bf16, compiled" in done.stdout, done.stdout[-2000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line.get("loss") is not None]
    assert losses[-1] < losses[0] - 0.5, losses
    loaded = lmscope.load(run / "model", device="cuda")
    assert loaded.device.type == "cuda"
    out = generate(loaded, [[1, 2, 3]], max_new_tokens=8)
    assert len(out.new_tokens[0]) == 8
