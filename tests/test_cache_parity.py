"""Parity with TransformerLens 3.9: same weights, same cached activations and decompositions.

A random GPT-2 (2 layers, d_model 64, 4 heads, vocab 101, gelu_new, LayerNorm) is built
in Hugging Face transformers, with every weight (norms and biases included) moved off
its initial value, and loaded into both lmscope (`load_hf`) and TransformerLens
(``convert_gpt2_weights``; no weight processing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformer_lens = pytest.importorskip("transformer_lens")

from lmscope.io.hf import load_hf  # noqa: E402

ATOL = 1e-4
VOCAB, D, LAYERS, HEADS, CTX = 101, 64, 2, 4, 32


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=CTX,
        activation_function="gelu_new",
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    directory = Path(tmp_path_factory.mktemp("gpt2"))
    hf.save_pretrained(directory)
    ours = load_hf(directory).eval()

    cfg = HookedTransformerConfig(
        n_layers=LAYERS, d_model=D, n_ctx=CTX, d_head=D // HEADS, n_heads=HEADS, d_mlp=4 * D,
        d_vocab=VOCAB, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", eps=1e-5, device="cpu",
    )  # fmt: skip
    with pytest.warns(DeprecationWarning):
        tl = HookedTransformer(cfg)
    result = tl.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    # Only TransformerLens's causal-mask buffers and its (zero) unembedding bias are left.
    assert all(k.endswith(("attn.mask", "attn.IGNORE", "b_U")) for k in result.missing_keys)
    tl.eval()

    tokens = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    our_logits, our_cache = ours.run_with_cache(tokens)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(tokens)
    torch.testing.assert_close(our_logits, tl_logits, rtol=0, atol=ATOL)
    return ours, our_cache, tl, tl_cache, tokens


def close(ours: object, theirs: object) -> None:
    if isinstance(ours, tuple):
        assert ours[1] == theirs[1]  # labels
        ours, theirs = ours[0], theirs[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=ATOL)


def test_every_shared_hook_caches_the_same_tensor(pair) -> None:
    _, our_cache, tl, tl_cache, _ = pair
    tl_names = set(tl_cache.keys())
    # TransformerLens has two hooks around its unembedding; lmscope has no unembed hooks.
    assert tl_names - set(our_cache) == {"unembed.hook_in", "unembed.hook_out"}
    assert set(our_cache) <= tl_names
    for name in our_cache:
        if name.endswith("hook_normalized"):
            # lmscope hooks the norm's output, TransformerLens the value before its
            # weight and bias (docs/hooks.md): compare through them.
            ln = tl.get_submodule(name.rsplit(".", 1)[0])
            torch.testing.assert_close(
                our_cache[name], tl_cache[name] * ln.w + ln.b, rtol=0, atol=ATOL
            )
        else:
            torch.testing.assert_close(our_cache[name], tl_cache[name], rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"layer": 1},
        {"layer": 1, "mlp_input": True, "apply_ln": True},
        {"apply_ln": True},
        {"mode": "attn", "pos_slice": -1},
        {"mode": "mlp", "incl_embeds": False, "pos_slice": (1, 4)},
    ],
)
def test_decompose_resid(pair, kwargs: dict) -> None:
    _, ours, _, theirs, _ = pair
    close(
        ours.decompose_resid(return_labels=True, **kwargs),
        theirs.decompose_resid(return_labels=True, **kwargs),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"incl_mid": True},
        {"apply_ln": True},  # the logit lens: ln_final on every stream
        {"layer": 1, "apply_ln": True},
        {"layer": 1, "mlp_input": True, "apply_ln": True},
        {"pos_slice": [0, 3]},
    ],
)
def test_accumulated_resid(pair, kwargs: dict) -> None:
    _, ours, _, theirs, _ = pair
    close(
        ours.accumulated_resid(return_labels=True, **kwargs),
        theirs.accumulated_resid(return_labels=True, **kwargs),
    )


def test_head_neuron_and_full_stacks(pair) -> None:
    _, ours, _, theirs, _ = pair
    for kwargs in ({}, {"layer": 1}, {"incl_remainder": True}, {"apply_ln": True, "pos_slice": -1}):
        close(
            ours.stack_head_results(return_labels=True, **kwargs),
            theirs.stack_head_results(return_labels=True, **kwargs),
        )
    for kwargs in (
        {"layer": 2},
        {"layer": 1, "neuron_slice": (0, 10)},
        {"layer": 2, "apply_ln": True, "pos_slice": -1, "incl_remainder": True},
    ):
        close(
            ours.stack_neuron_results(return_labels=True, **kwargs),
            theirs.stack_neuron_results(return_labels=True, **kwargs),
        )
    for kwargs in (
        {},
        {"layer": 1, "mlp_input": True},
        {"expand_neurons": False, "apply_ln": True},
    ):
        close(
            ours.get_full_resid_decomposition(return_labels=True, **kwargs),
            theirs.get_full_resid_decomposition(return_labels=True, **kwargs),
        )


def test_logit_attrs(pair) -> None:
    _, ours, _, theirs, tokens = pair
    stack = ours.decompose_resid()
    close(ours.logit_attrs(stack, tokens), theirs.logit_attrs(theirs.decompose_resid(), tokens))
    close(ours.logit_attrs(stack, 5), theirs.logit_attrs(theirs.decompose_resid(), 5))
    last = ours.decompose_resid(pos_slice=-1)
    right, wrong = tokens[:, 0], tokens[:, 1]
    close(
        ours.logit_attrs(last, right, wrong, pos_slice=-1),
        theirs.logit_attrs(theirs.decompose_resid(pos_slice=-1), right, wrong, pos_slice=-1),
    )
