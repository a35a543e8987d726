"""Every family against transformers: a random checkpoint saved by ``save_pretrained``,
loaded by lmscope, gives the same logits and hidden states (fp32, max abs diff <= 1e-4),
with and without padding; greedy decoding through the KV cache picks the same tokens;
and the model exported back loads into transformers with the same logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import GenerationConfig

import lmscope
from lmscope.io.hf import save_hf
from lmscope.model.base import BaseTransformer
from tests.io.hf.cases import CASES, FIRST_TOKEN, VOCAB, Case

TOL = 1e-4
SEQ = 11  # longer than the sliding windows (4) and dynamic RoPE's 8 positions


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Any, Path]]:
    """Each case built once: (HF model, lmscope model, checkpoint directory), lazily."""
    return _Lazy(tmp_path_factory)  # type: ignore[return-value]


class _Lazy(dict):
    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, name: str) -> tuple[nn.Module, Any, Path]:
        directory = self.factory.mktemp(name)
        hf = CASES[name].build()
        hf.save_pretrained(directory)
        self[name] = (hf, lmscope.load(directory), directory)
        return self[name]


def _tokens(batch: int, n: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_TOKEN, VOCAB, (batch, n), generator=gen)


def _padding_mask(batch: int, n: int, left: bool) -> Tensor:
    """Row 0 full, row 1 with 3 pad tokens on the left (decoders) or the right."""
    mask = torch.ones(batch, n, dtype=torch.long)
    if left:
        mask[1, :3] = 0
    else:
        mask[1, -3:] = 0
    return mask


def _run_both(
    case: Case,
    hf: nn.Module,
    ours: Any,
    tokens: Tensor,
    mask: Tensor | None,
    target: Tensor | None = None,
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Logits and per-layer hidden states of both models (hidden states as HF lists them).

    Encoder-decoders decode `target` (default: 7 fixed random tokens per row).
    """
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: Any) -> None:
        store[hook.name] = x

    stack = "encoder" if case.kind == "encoder-decoder" else "blocks"
    wanted = (lambda n: n.startswith(stack) and n.endswith("hook_resid_pre"), keep)
    with torch.no_grad(), ours.hooks(fwd_hooks=[wanted]):
        if case.kind == "encoder-decoder":
            target = _tokens(tokens.shape[0], 7, seed=2) if target is None else target
            out = hf(
                input_ids=tokens,
                attention_mask=mask,
                decoder_input_ids=target,
                output_hidden_states=True,
            )
            encoded = ours.encode(tokens, attention_mask=mask)
            logits = ours.decode(target, encoded, attention_mask=mask)
            theirs_hidden, last = out.encoder_hidden_states, encoded
            ref = out.logits
        elif case.kind == "encoder":
            out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
            logits = ours(tokens, attention_mask=mask)
            theirs_hidden = out.hidden_states
            last = logits if ours.mlm_head is None else None
            ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
        else:
            kwargs: dict[str, Any] = {}
            if mask is not None:  # HF counts positions from the first real token only if told
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True, **kwargs)
            logits = ours(tokens, attention_mask=mask)
            theirs_hidden, last, ref = out.hidden_states, None, out.logits
    n = len(theirs_hidden) - 1
    ours_hidden = [store[f"{stack}.{i}.hook_resid_pre"] for i in range(n)]
    if last is not None:
        ours_hidden.append(last)
    return ref, logits, list(theirs_hidden[: len(ours_hidden)]), ours_hidden


def _max_diff(a: Tensor, b: Tensor, mask: Tensor | None) -> float:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_every_hidden_state_match_transformers(name: str, loaded: dict) -> None:
    hf, ours, _ = loaded[name]
    case = CASES[name]
    ref, logits, theirs, mine = _run_both(case, hf, ours, _tokens(2, SEQ), None)
    assert logits.shape == ref.shape
    assert _max_diff(ref, logits, None) <= TOL
    assert len(mine) >= 2
    for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        assert _max_diff(a, b, None) <= TOL, f"hidden state {i}"


@pytest.mark.parametrize("name", list(CASES))
def test_padded_batch_matches_transformers_on_real_tokens(name: str, loaded: dict) -> None:
    hf, ours, _ = loaded[name]
    case = CASES[name]
    mask = _padding_mask(2, SEQ, left=case.kind == "decoder")
    tokens, target = _tokens(2, SEQ), _tokens(2, 7, seed=2)
    ref, logits, theirs, mine = _run_both(case, hf, ours, tokens, mask, target)
    logits_mask = None if case.kind == "encoder-decoder" else mask
    assert _max_diff(ref, logits, logits_mask) <= TOL
    for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        assert _max_diff(a, b, mask) <= TOL, f"hidden state {i}"
    if ours.cfg.rope_scaling == "dynamic":
        return  # its frequencies follow the batch's longest row, in transformers too
    # The padded row computes what it computes alone.
    real = mask[1].bool()
    alone = _run_both(case, hf, ours, tokens[1:, real], None, target[1:])[1]
    padded_row = logits[1:] if case.kind == "encoder-decoder" else logits[1:, real]
    assert _max_diff(alone, padded_row, None) <= TOL


def _greedy(model: BaseTransformer, prompt: Tensor, n: int) -> Tensor:
    """Greedy decoding through the KV cache (one token per forward after the prompt)."""
    cache = model.make_cache(prompt.shape[0], prompt.shape[1] + n)
    logits = model(prompt, kv_cache=cache)
    out = []
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, kv_cache=cache)
    return torch.cat(out, dim=1)


def _greedy_seq2seq(model: Any, source: Tensor, n: int, start: int) -> Tensor:
    encoded = model.encode(source)
    cache = model.make_cache(source.shape[0], n + 1)
    nxt = torch.full((source.shape[0], 1), start)
    out = []
    for _ in range(n):
        logits = model.decode(nxt, encoded, kv_cache=cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
    return torch.cat(out, dim=1)


#: One case per family and per feature that decoding changes (windows, dynamic RoPE,
#: MoE, deeper decoders): transformers' generate costs ~0.1 s per step here.
GENERATION = [
    "gpt2",
    "gptj-partial-interleaved",
    "neox-parallel-partial",
    "llama-gqa",
    "llama-rope-dynamic",
    "mistral-window",
    "qwen2-window",
    "gemma",
    "mixtral",
    "t5-relu-tied",
    "t5-v1.1-gated-untied",
]


@pytest.mark.parametrize("name", GENERATION)
def test_greedy_generation_picks_the_same_tokens(name: str, loaded: dict) -> None:
    hf, ours, _ = loaded[name]
    prompt, n = _tokens(2, 5, seed=3), 8  # 13 tokens: past the windows and 8 positions
    # No end-of-sequence token: both run n steps (min_new_tokens would mask EOS in HF).
    settings = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=0)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        if CASES[name].kind == "encoder-decoder":
            # transformers' cache cannot hold decoders deeper than their encoder.
            use_cache = hf.config.num_decoder_layers == hf.config.num_layers
            ref = hf.generate(
                prompt, generation_config=settings, decoder_start_token_id=0, use_cache=use_cache
            )[:, 1:]
            mine = _greedy_seq2seq(ours, prompt, n, start=0)
        else:
            ref = hf.generate(prompt, generation_config=settings)[:, prompt.shape[1] :]
            mine = _greedy(ours, prompt, n)
    assert torch.equal(ref, mine)


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_in_transformers_with_the_same_logits(
    name: str, loaded: dict, tmp_path: Path
) -> None:
    hf, ours, directory = loaded[name]
    save_hf(ours, tmp_path, family=hf.config.model_type)
    # Every exported tensor is the checkpoint's own, bit for bit.
    original, exported = (
        load_file(directory / "model.safetensors"),
        load_file(tmp_path / "model.safetensors"),
    )
    assert set(exported) <= set(original)
    for key, tensor in exported.items():
        assert torch.equal(tensor, original[key]), key
    again = type(hf).from_pretrained(tmp_path).eval()
    case = CASES[name]
    ref, logits, _, _ = _run_both(case, again, ours, _tokens(2, SEQ, seed=4), None)
    assert _max_diff(ref, logits, None) <= TOL
    # And lmscope reads its own export back to identical weights.
    reloaded = lmscope.load(tmp_path)
    assert reloaded.cfg.replace(name=None) == ours.cfg.replace(name=None)
    for (key, a), (_, b) in zip(
        ours.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key
