"""The residual stream as a sum of what each component wrote: methods of `ActivationCache`.

In a pre-norm transformer the residual stream entering block ``L`` is exactly

    embed + pos_embed + sum over l < L of (attn_out[l] + mlp_out[l])

and each ``attn_out[l]`` is itself ``sum_h result[l, h] + b_O[l]`` (the heads' writes
plus the output bias), each ``mlp_out[l]`` is ``sum_n post[l, n] * W_out[l, n] + b_out[l]``
(the neurons' writes plus the output bias). These methods return those terms stacked
on a new first axis, with TransformerLens's names, arguments and semantics, so that
their sum is the residual stream to float rounding.

Where the biases go (the terms must add up, so each bias is in exactly one place):
- `decompose_resid`: inside ``{l}_attn_out`` and ``{l}_mlp_out`` (they are the hooked
  sublayer outputs).
- `stack_head_results` / `stack_neuron_results`: per-head / per-neuron writes only, no
  bias; ``incl_remainder=True`` adds a ``remainder`` term (the residual stream minus the
  stack: embeddings, biases and the other sublayers).
- `get_full_resid_decomposition`: heads, neurons (or ``{l}_mlp_out``), ``embed``,
  ``pos_embed`` and one ``bias`` term, the sum of the attention (and, with expanded
  neurons, MLP) output biases of the layers covered.

Per-head writes come from ``hook_result`` when it was cached, else they are computed
from the cached ``hook_z`` and ``W_O`` (``result[h] = z[h] @ W_O[h]``), as
TransformerLens's ``compute_head_results`` does. Per-neuron writes are
``post[n] * W_out[n]`` from the cached ``hook_post``.

``apply_ln`` (and `apply_ln_to_stack`) treats the stack as the input of a norm and
applies that norm's *cached* scale: centre (LayerNorm only; RMSNorm does not centre),
then divide by the ``hook_scale`` of that norm and position. As in TransformerLens the
norm's weight and bias are not applied: fold them into the next layer first
(``fold_ln``) for logit attributions that add up to the logits. Only for the final
layer, `accumulated_resid` (the logit lens) runs ``ln_final`` itself on each stream.

Supported: pre-norm stacks, sequential or parallel (GPT-J / NeoX) blocks, LayerNorm,
RMSNorm or none, GQA, RoPE, gated MLPs. Post-norm blocks (BERT), where the norm sits on
the residual path, are not sums of component writes: those methods raise.
"""

from lmscope.decomposition.stacks import ResidualDecomposition
from lmscope.decomposition.view import CacheView, SliceInput, apply_slice

__all__ = ["CacheView", "ResidualDecomposition", "SliceInput", "apply_slice"]
