"""Stacks of residual-stream components: sublayers, heads, neurons (see the package doc)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lmscope.decomposition.view import CacheView, SliceInput, apply_slice
from lmscope.errors import LmscopeError


class ResidualDecomposition(CacheView):
    """Mixin of `ActivationCache`: the residual stream split into what wrote it."""

    # --- whole sublayers ----------------------------------------------------------------
    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream entering `layer` as embeddings + each sublayer's output.

        Returns ``[component, *batch, pos, d_model]`` (``pos`` gone for an int
        `pos_slice`) with labels ``embed``, ``pos_embed``, ``{l}_attn_out``,
        ``{l}_mlp_out``. `mlp_input`: the MLP's input instead (adds ``{layer}_attn_out``;
        not for parallel blocks, whose MLP reads the same stream as attention). `mode`
        keeps only attention or MLP terms; `incl_embeds` False drops the embeddings.
        With everything included, the components sum to ``resid_pre[layer]``.
        """
        if mode not in ("all", "mlp", "attn"):
            raise LmscopeError(f"mode={mode!r} is invalid: use 'all', 'mlp' or 'attn'.")
        self._blocks()  # refuses models whose stream is not a sum of writes
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and self._has_mlp()
        parts: list[tuple[str, str]] = []
        if incl_embeds:
            parts += [(n, n.removeprefix("hook_")) for n in ("hook_embed", "hook_pos_embed")]
            parts = [(n, label) for n, label in parts if n in self.model.hook_points()]
        for i in range(layer):
            if incl_attn:
                parts.append((f"blocks.{i}.hook_attn_out", f"{i}_attn_out"))
            if incl_mlp:
                parts.append((f"blocks.{i}.hook_mlp_out", f"{i}_mlp_out"))
        if mlp_input and incl_attn and not self._parallel():
            parts.append((f"blocks.{layer}.hook_attn_out", f"{layer}_attn_out"))
        if not parts:
            stack = self._empty(pos_slice)
        else:
            tensors = [self._get(n, "decompose_resid") for n, _ in parts]
            stack = torch.stack([apply_slice(t, pos_slice, -2) for t in tensors])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        labels = [label for _, label in parts]
        return (stack, labels) if return_labels else stack

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream at each depth up to `layer`: ``[depth, *batch, pos, d_model]``.

        Labels ``{l}_pre`` (entering block l), ``{l}_mid`` (after its attention, with
        `incl_mid`, or for `layer` itself with `mlp_input`) and ``final_post`` (after
        the last block, when `layer` is the depth). `apply_ln`: for the final layer each
        stream goes through ``ln_final`` itself, weight and bias included (the logit
        lens, TransformerLens 3.9's ``recompute_ln``); for an inner layer the cached
        scale of that layer's norm is applied (`apply_ln_to_stack`).
        """
        n, layer = self._depth(), self._layer(layer)
        if (incl_mid or mlp_input) and (self._parallel() or not self._has_mlp()):
            raise LmscopeError(
                "incl_mid / mlp_input need resid_mid, which parallel and attention-only "
                "blocks do not have."
            )
        self._check_mlp_input(layer, mlp_input)
        names: list[tuple[str, str]] = []
        for i in range(layer + 1):
            if i == n:
                names.append((f"blocks.{n - 1}.hook_resid_post", "final_post"))
                continue
            names.append((f"blocks.{i}.hook_resid_pre", f"{i}_pre"))
            if (incl_mid and i < layer) or (mlp_input and i == layer):
                names.append((f"blocks.{i}.hook_resid_mid", f"{i}_mid"))
        tensors = [self._get(name, "accumulated_resid") for name, _ in names]
        stack = torch.stack([apply_slice(t, pos_slice, -2) for t in tensors])
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input, pos_slice=pos_slice, recompute_ln=layer == n
            )
        labels = [label for _, label in names]
        return (stack, labels) if return_labels else stack

    # --- heads and neurons --------------------------------------------------------------
    def head_results(self, layer: int) -> Tensor:
        """Each head's write of block `layer`: ``[*batch, pos, head, d_model]``.

        The cached ``hook_result`` when there is one, else ``z[h] @ W_O[h]`` from the
        cached ``hook_z`` (the same numbers to float rounding; no bias).
        """
        name = f"blocks.{layer}.attn.hook_result"
        if name in self.cache_dict:
            return self.cache_dict[name]
        z = self._get(f"blocks.{layer}.attn.hook_z", "per-head results")
        W_O = self.model.blocks[layer].attn.W_O.detach().to(z)
        return torch.einsum("...hd,hdm->...hm", z, W_O)

    def stack_head_results(
        self,
        layer: int | None = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceInput = None,
        apply_ln: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every head's write before `layer`: ``[layer * n_heads (+1), *batch, pos, d_model]``.

        Labels ``L{l}H{h}``; `incl_remainder` adds ``remainder`` = the residual stream
        entering `layer` minus the heads (embeddings, biases, MLPs), so that the stack
        sums to it. See the module doc for where per-head writes come from.
        """
        layer = self._layer(layer)
        heads = [apply_slice(self.head_results(i), pos_slice, -3) for i in range(layer)]
        labels = [f"L{i}H{h}" for i in range(layer) for h in range(self.model.cfg.n_heads)]
        # [..., head, d_model] per layer -> [layer * head, ..., d_model]
        stack = torch.cat(heads, dim=-2).movedim(-2, 0) if heads else self._empty(pos_slice)
        if incl_remainder:
            stack = self._with_remainder(stack, layer, pos_slice)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_neuron_results(
        self,
        layer: int | None,
        pos_slice: SliceInput = None,
        neuron_slice: SliceInput = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every MLP neuron's write before `layer`: ``[layer * neurons (+1), *batch, pos, d]``.

        Neuron n of block l writes ``post[l, n] * W_out[l][n]`` (its activation times its
        value vector; the gate is inside ``post`` for gated MLPs). Labels ``L{l}N{n}``;
        `neuron_slice` picks neurons; `incl_remainder` as in `stack_head_results`. This
        is ``d_mlp`` times the memory of the MLP output: slice positions or neurons on
        big inputs.
        """
        layer = self._layer(layer)
        if not self._has_mlp() or self.model.cfg.is_moe:
            raise LmscopeError(
                "stack_neuron_results needs dense MLPs; this model is attention-only or a "
                "mixture of experts."
            )
        ids = apply_slice(torch.arange(self.model.cfg.mlp_dim), neuron_slice, 0).reshape(-1)
        parts, labels = [], []
        for i, block in enumerate(self.model.blocks[:layer]):
            post = apply_slice(
                self._get(f"blocks.{i}.mlp.hook_post", "neuron results"), pos_slice, -2
            )
            post = post[..., ids.to(post.device)]
            W_out = block.mlp.W_out.detach()[ids].to(post)
            parts.append(post.unsqueeze(-1) * W_out)  # [..., neuron, d_model]
            labels += [f"L{i}N{n}" for n in ids.tolist()]
        stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else self._empty(pos_slice)
        if incl_remainder:
            stack = self._with_remainder(stack, layer, pos_slice)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _with_remainder(self, stack: Tensor, layer: int, pos_slice: SliceInput) -> Tensor:
        """`stack` plus one term, the residual stream entering `layer` minus the stack."""
        self._blocks()  # refuses models whose stream is not a sum of writes
        name = f"blocks.{layer - 1}.hook_resid_post" if layer else "blocks.0.hook_resid_pre"
        resid = apply_slice(self._get(name, "incl_remainder"), pos_slice, -2)
        return torch.cat([stack, (resid - stack.sum(0))[None]])

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceInput = None,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The stream entering `layer` as heads + neurons + embeddings + biases.

        Order and labels as TransformerLens: ``L{l}H{h}`` for every head, then
        ``L{l}N{n}`` for every neuron (``{l}_mlp_out`` with `expand_neurons` False, biases
        included), ``embed``, ``pos_embed``, and ``bias``: the attention output biases
        (and with expanded neurons the MLP output biases) of the blocks covered. The
        components sum to the residual stream exactly (float rounding).
        """
        self._blocks()  # refuses models whose stream is not a sum of writes
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        head_layer = layer + (1 if mlp_input and not self._parallel() else 0)
        heads, labels = self.stack_head_results(head_layer, True, pos_slice=pos_slice)
        parts = [heads]
        if self._has_mlp() and layer > 0:
            if expand_neurons:
                mlp, mlp_labels = self.stack_neuron_results(layer, pos_slice, return_labels=True)
            else:
                mlp, mlp_labels = self.decompose_resid(
                    layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp", return_labels=True
                )
            parts.append(mlp)
            labels += mlp_labels
        for name in ("hook_embed", "hook_pos_embed"):
            if name in self.model.hook_points():
                parts.append(apply_slice(self._get(name, "the decomposition"), pos_slice, -2)[None])
                labels.append(name.removeprefix("hook_"))
        bias = self._accumulated_bias(head_layer, layer, include_mlp=expand_neurons)
        parts.append(bias.to(heads).expand(1, *heads.shape[1:]))
        labels.append("bias")
        stack = torch.cat(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _accumulated_bias(self, attn_layers: int, mlp_layers: int, include_mlp: bool) -> Tensor:
        """Sum of the output biases of the first attention / MLP sublayers: ``[d_model]``."""
        blocks = self._blocks()
        total = torch.zeros(self.model.cfg.d_model, device=self.model.W_E.device)
        for i in range(attn_layers):
            if blocks[i].attn.out.bias is not None:
                total = total + blocks[i].attn.out.bias.detach()
        for i in range(mlp_layers if include_mlp and self._has_mlp() else 0):
            if blocks[i].mlp.fc_out.bias is not None:
                total = total + blocks[i].mlp.fc_out.bias.detach()
        return total
