"""Residual-stream decompositions: the parts sum to the stream, on every supported wiring.

Each wiring is a small random model run once with every hook cached (per-head results
too). The identities are checked to 1e-5, and worked example E5 on a hand-set model.
"""

from __future__ import annotations

import pytest
import torch

from lmscope import LmscopeError, ModelConfig, build_model
from lmscope.cache import ActivationCache
from lmscope.decomposition import apply_slice
from tests.conftest import SHARED, small

B, T = 2, 6
ATOL = 1e-5

WIRINGS = {
    # GPT-2: LayerNorm, learned positions, biases everywhere.
    "gpt2": small("gpt2-small"),
    # Llama / Mistral: RMSNorm, RoPE, GQA, SwiGLU, no biases.
    "mistral": small("mistral-tiny", sliding_window=None),
    # GPT-NeoX style parallel attention + MLP with two norms; GPT-J style shared norm.
    "parallel": small("gpt2-small", parallel_attn_mlp=True),
    "parallel-shared": small("gpt2-small", parallel_attn_mlp=True, parallel_shared_norm=True),
    "attn-only": small("attn-only-2l"),
}


def run(cfg: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, ActivationCache]:
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # norms and biases away from their identity init, so they count
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    return model, logits, cache


@pytest.fixture(scope="module", params=list(WIRINGS))
def wiring(
    request: pytest.FixtureRequest,
) -> tuple[str, torch.nn.Module, torch.Tensor, ActivationCache]:
    return (request.param, *run(WIRINGS[request.param]))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_sublayer_outputs_sum_to_the_stream_at_every_depth(wiring) -> None:
    name, model, _, cache = wiring
    n = model.cfg.n_layers
    for layer in range(n + 1):
        stack, labels = cache.decompose_resid(layer, return_labels=True)
        target = cache["resid_pre", layer] if layer < n else cache["resid_post", -1]
        close(stack.sum(0), target)
        assert labels[0] == "embed" and len(labels) == stack.shape[0]
        if layer < n and name in ("gpt2", "mistral"):
            close(cache.decompose_resid(layer, mlp_input=True).sum(0), cache["resid_mid", layer])
    attn = cache.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)
    assert attn[1] == [f"{i}_attn_out" for i in range(n)]


def test_heads_and_neurons_sum_to_their_sublayer_with_its_bias(wiring) -> None:
    _, model, _, cache = wiring
    h = model.cfg.n_heads
    heads = cache.stack_head_results()
    for i, block in enumerate(model.blocks):
        bias = block.attn.out.bias if block.attn.out.bias is not None else 0.0
        close(heads[i * h : (i + 1) * h].sum(0) + bias, cache["attn_out", i])
        # hook_result (cached here) and z @ W_O give the same per-head writes.
        close(cache["result", i], torch.einsum("bphd,hdm->bphm", cache["z", i], block.attn.W_O))
        if block.mlp is not None:
            neurons = cache.stack_neuron_results(i + 1)[i * model.cfg.mlp_dim :]
            mlp_bias = block.mlp.fc_out.bias if block.mlp.fc_out.bias is not None else 0.0
            close(neurons.sum(0) + mlp_bias, cache["mlp_out", i])


def test_full_decomposition_and_remainders_sum_to_the_stream(wiring) -> None:
    _, model, _, cache = wiring
    n = model.cfg.n_layers
    for layer in (0, 1, n):
        target = cache["resid_pre", layer] if layer < n else cache["resid_post", -1]
        full, labels = cache.get_full_resid_decomposition(layer, return_labels=True)
        close(full.sum(0), target)
        assert labels[-1] == "bias" and "embed" in labels
        if model.cfg.attn_only:
            continue
        close(cache.get_full_resid_decomposition(layer, expand_neurons=False).sum(0), target)
        close(cache.stack_head_results(layer, incl_remainder=True).sum(0), target)
        close(cache.stack_neuron_results(layer, incl_remainder=True).sum(0), target)


def test_without_the_cached_result_heads_come_from_z(wiring) -> None:
    _, model, _, cache = wiring
    no_result = {k: v for k, v in cache.items() if not k.endswith("hook_result")}
    rebuilt = ActivationCache(no_result, model)
    close(rebuilt.stack_head_results(), cache.stack_head_results())


def test_apply_ln_uses_the_cached_scale_of_that_norm(wiring) -> None:
    name, model, logits, cache = wiring
    # The final norm's input, scaled per component, re-summed, is the norm's output
    # before its weight and bias (LayerNorm centres, RMSNorm does not).
    ln = model.ln_final
    full = cache.get_full_resid_decomposition(apply_ln=True).sum(0)
    bias = ln.bias if getattr(ln, "bias", None) is not None else 0.0
    close(full * ln.weight + bias, cache["normalized"])
    for layer in range(model.cfg.n_layers):
        block = model.blocks[layer]
        ln1 = block.ln1
        attn_in = cache.decompose_resid(layer, apply_ln=True).sum(0)
        ln1_bias = ln1.bias if getattr(ln1, "bias", None) is not None else 0.0
        close(attn_in * ln1.weight + ln1_bias, cache["normalized", layer, "ln1"])
        if name in ("gpt2", "mistral"):
            mlp_in = cache.decompose_resid(layer, mlp_input=True, apply_ln=True).sum(0)
            ln2_bias = block.ln2.bias if getattr(block.ln2, "bias", None) is not None else 0.0
            close(mlp_in * block.ln2.weight + ln2_bias, cache["normalized", layer, "ln2"])
    # The logit lens at the last layer is the model's own final norm: its logits.
    lens = cache.accumulated_resid(apply_ln=True)
    close(lens[-1] @ model.W_U, logits)


def test_logit_attrs_sum_to_the_logits_of_a_model_with_unit_norm_weights() -> None:
    model = build_model(small("gpt2-small")).eval()  # norms start as identity maps
    tokens = torch.randint(0, 61, (B, T))
    logits, cache = model.run_with_cache(tokens)
    stack = cache.get_full_resid_decomposition()
    attrs = cache.logit_attrs(stack, tokens)  # [component, batch, pos]
    close(attrs.sum(0), logits.gather(-1, tokens[..., None])[..., 0])
    # A logit difference at the last position, with a [batch] token per row.
    last = cache.get_full_resid_decomposition(pos_slice=-1)
    right, wrong = tokens[:, 0], tokens[:, 1]
    diff = cache.logit_attrs(last, right, wrong, pos_slice=-1).sum(0)
    close(diff, logits[range(B), -1, right] - logits[range(B), -1, wrong])
    one = cache.logit_attrs(last, 7, pos_slice=-1).sum(0)
    close(one, logits[:, -1, 7])
    with pytest.raises(LmscopeError, match="same shape"):
        cache.logit_attrs(last, right, 3, pos_slice=-1)


def test_slices_batchless_caches_and_labels() -> None:
    model, _, cache = run(small("gpt2-small"))
    stack = cache.decompose_resid()
    assert cache.decompose_resid(pos_slice=-1).shape == (stack.shape[0], B, model.cfg.d_model)
    close(cache.decompose_resid(pos_slice=(1, 4)), stack[:, :, 1:4])
    close(cache.decompose_resid(pos_slice=[0, 5]), stack[:, :, [0, 5]])
    close(cache.stack_head_results(pos_slice=2), cache.stack_head_results()[:, :, 2])
    assert apply_slice(torch.arange(10), (3,), 0).tolist() == [0, 1, 2]
    _, labels = cache.stack_neuron_results(1, neuron_slice=[3, 5], return_labels=True)
    assert labels == ["L0N3", "L0N5"]
    assert cache.stack_head_results(0).shape == (0, B, T, model.cfg.d_model)
    _, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    _, labels = cache.accumulated_resid(1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid"]

    single = ActivationCache({k: v[:1] for k, v in cache.items()}, model).remove_batch_dim()
    close(single.decompose_resid().sum(0), cache["resid_post", -1][0])
    close(single.decompose_resid(apply_ln=True), cache.decompose_resid(apply_ln=True)[:, 0])
    scaled = cache.apply_ln_to_stack(stack)
    # batch_slice picks rows of the stack (when it has a batch dim) and of the scale.
    close(cache.apply_ln_to_stack(stack, batch_slice=(1, 2)), scaled[:, 1:2])
    close(cache.apply_ln_to_stack(stack[:, 1], batch_slice=1, has_batch_dim=False), scaled[:, 1])


def test_unsupported_models_and_bad_arguments_are_refused() -> None:
    _, _, cache = run(small("gpt2-small"))
    with pytest.raises(LmscopeError, match="layer=5 is invalid"):
        cache.decompose_resid(5)
    with pytest.raises(LmscopeError, match="mlp_input"):
        cache.decompose_resid(mlp_input=True)
    partial = ActivationCache({"hook_embed": cache["hook_embed"]}, cache.model)
    with pytest.raises(LmscopeError, match=r"needs 'hook_pos_embed'.*names_filter"):
        partial.decompose_resid(1)
    with pytest.raises(LmscopeError, match="parallel"):
        run(WIRINGS["parallel"])[2].accumulated_resid(incl_mid=True)
    with pytest.raises(LmscopeError, match="dense MLPs"):
        run(small("mixtral-tiny", sliding_window=None))[2].stack_neuron_results(1)
    bert = run(small("bert-base", n_token_types=0, embedding_norm=False))[2]
    with pytest.raises(LmscopeError, match="post-norm"):
        bert.decompose_resid()
    with pytest.raises(LmscopeError, match="post-norm"):
        bert.apply_ln_to_stack(bert.accumulated_resid())
    t5 = build_model(small("t5-small")).eval()
    src = torch.randint(0, 61, (1, 4))
    _, t5_cache = t5.run_with_cache(src, src)
    with pytest.raises(LmscopeError, match="single stack"):
        t5_cache.decompose_resid()


def e5_model() -> torch.nn.Module:
    """One block, d_model 4, two heads, two ReLU neurons, no norms: E5's writes by hand.

    With one token, each head attends to itself, so its value is its output. Head h's
    value is ``x[0] / 0.4`` (= 1 for "Tower") and its W_O row 0 is the write E5 gives.
    The MLP's keys are E7's (activations 1.03 and 0.35); value rows and the output bias
    make its write E5's [0.1, 0.05, 1.12, 0.3].
    """
    cfg = ModelConfig(
        vocab_size=3, d_model=4, n_layers=1, n_heads=2, d_head=2, d_mlp=2, max_seq_len=4,
        positional="none", norm="none", activation="relu", tie_embeddings=False,
        qkv_bias=False,
    )  # fmt: skip
    model = build_model(cfg).eval()
    heads = torch.tensor([[0.1, 0.2, 0.0, 0.1], [0.2, 0.0, 0.3, 0.0]])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[1] = torch.tensor([0.4, 0.2, 0.2, 0.1])  # "Tower"
        attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
        for h in range(2):
            attn.W_V[h][0, 0] = 1 / 0.4  # views: these write into the fused weights
            attn.W_O[h][0] = heads[h]
        mlp.W_in[:, 0] = torch.tensor([0.8, 0.1, 0.9, -0.1])
        mlp.W_in[:, 1] = torch.tensor([0.1, 0.8, -0.2, 0.3])
        mlp.W_out[0] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # neuron 0: 1.03 on dim 2
        mlp.W_out[1] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # neuron 1: 0.35 on dim 3
        mlp.fc_out.bias.copy_(torch.tensor([0.1, 0.05, 0.09, -0.05]))
    return model


def test_worked_example_e5_residual_stream_arithmetic() -> None:
    model = e5_model()
    _, cache = model.run_with_cache(torch.tensor([[1]]), names_filter=lambda name: True)
    cache.remove_batch_dim()
    tower = [0.4, 0.2, 0.2, 0.1]
    head_writes = [[0.1, 0.2, 0.0, 0.1], [0.2, 0.0, 0.3, 0.0]]
    mlp_write = [0.1, 0.05, 1.12, 0.3]
    heads, labels = cache.stack_head_results(pos_slice=0, return_labels=True)
    assert labels == ["L0H0", "L0H1"]
    close(heads, torch.tensor(head_writes))
    close(cache["resid_mid", 0][0], torch.tensor([0.7, 0.4, 0.5, 0.2]))
    stack, labels = cache.decompose_resid(pos_slice=0, return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out"]
    close(stack, torch.tensor([tower, [0.3, 0.2, 0.3, 0.1], mlp_write]))
    close(stack.sum(0), torch.tensor([0.8, 0.45, 1.62, 0.5]))
    close(cache["resid_post", 0][0], torch.tensor([0.8, 0.45, 1.62, 0.5]))
    # Neurons (E7's activations 1.03 and 0.35) + the MLP bias give the MLP's write.
    full, labels = cache.get_full_resid_decomposition(pos_slice=0, return_labels=True)
    assert labels == ["L0H0", "L0H1", "L0N0", "L0N1", "embed", "bias"]
    close(full[2:4].sum(-1), torch.tensor([1.03, 0.35]))
    close(full.sum(0), torch.tensor([0.8, 0.45, 1.62, 0.5]))
    if (SHARED / "worked-examples.md").exists():
        assert "[0.8, 0.45, 1.62, 0.5]" in (SHARED / "worked-examples.md").read_text()


@pytest.mark.parametrize("preset", ["gpt2-small", "mistral-tiny"])
def test_after_weight_processing_logit_attrs_sum_to_the_logits(preset: str) -> None:
    """With the norms' weights folded away (fold_ln), attributions are exact logits."""
    from lmscope.model.processing import process_weights

    model, _, _ = run(small(preset, sliding_window=None))
    process_weights(model)
    tokens = torch.randint(0, 61, (B, T))
    logits, cache = model.run_with_cache(tokens)
    attrs = cache.logit_attrs(cache.get_full_resid_decomposition(), tokens)
    b_U = model.unembed.bias[tokens] if model.unembed.bias is not None else 0.0
    close(attrs.sum(0) + b_U, logits.gather(-1, tokens[..., None])[..., 0])
