"""One call for "does this layer know the label?": a neuron search and a linear probe.

`probe_texts` runs a labelled text set (`lmscope.interpret.datasets`) through the model
once, caching only two hook points of one layer: the MLP neurons (``mlp.hook_post``),
searched one by one with `neuron_search`, and the residual stream (``hook_resid_post``),
read by a logistic probe with `train_probe`. Each text is pooled to one row (mean over
its tokens by default, since a sentence's sentiment is spread over its words).
`ProbeStudy.corpus_contexts` then shows where the top neurons fire in a corpus, with
the token highlighted (`lmscope.interpret.neurons`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lmscope.cache import get_act_name
from lmscope.errors import LmscopeError
from lmscope.interpret.activations import collect_activations, prompt_batches
from lmscope.interpret.datasets import LabelledTexts
from lmscope.interpret.indices import check_layer
from lmscope.interpret.neurons import ActivatingContext, post_hook, top_contexts_of_neurons
from lmscope.interpret.probes import NeuronSearch, Probe, neuron_search, train_probe


@dataclass
class ProbeStudy:
    """The neuron search and the probe of one layer over one labelled set."""

    dataset: str
    layer: int
    neuron_hook: str
    probe_hook: str
    positions: str
    search: NeuronSearch
    probe: Probe
    #: For each top neuron, the text of the set on which it is largest.
    top_texts: list[str]

    def rows(self) -> list[dict[str, Any]]:
        """The neuron search's top rows, each with its top text."""
        return [
            row | {"top_text": text}
            for row, text in zip(self.search.rows(), self.top_texts, strict=True)
        ]

    def corpus_contexts(
        self,
        model: Any,
        tokenizer: Any | None,
        batches: Iterable[Tensor],
        k: int = 5,
        n_neurons: int = 3,
    ) -> dict[int, list[ActivatingContext]]:
        """The top `n_neurons` neurons' `k` top-activating contexts over a corpus.

        `batches`: ``[batch, pos]`` token ids, e.g. `corpus_token_batches(tokenizer)`;
        one scan for all neurons (`lmscope.interpret.neurons.top_contexts_of_neurons`).
        """
        if self.neuron_hook != post_hook(self.layer):
            raise LmscopeError(
                f"corpus contexts are for MLP neurons ({post_hook(self.layer)}); this "
                f"search looked at {self.neuron_hook}."
            )
        chosen = self.search.top[:n_neurons]
        return top_contexts_of_neurons(model, tokenizer, batches, self.layer, chosen, k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: where it looked, the probe's metrics, the top neurons."""
        return {
            "dataset": self.dataset,
            "layer": self.layer,
            "neuron_hook": self.neuron_hook,
            "probe_hook": self.probe_hook,
            "positions": self.positions,
            "probe": self.probe.to_dict(),
            "neurons": self.rows(),
        }


def probe_texts(
    model: Any,
    tokenizer: Any,
    data: LabelledTexts,
    *,
    layer: int,
    neuron_hook: str = "post",
    probe_hook: str = "resid_post",
    positions: Literal["mean", "last"] = "mean",
    top: int = 10,
    seed: int = 0,
    l2: float = 1e-3,
    test_fraction: float = 0.25,
    batch_size: int = 16,
) -> ProbeStudy:
    """Neuron search on `neuron_hook` and a logistic probe on `probe_hook`, at `layer`.

    Hooks are short names (``post``, ``resid_post``, ``mlp_out`` ...) or full names.
    """
    if positions not in ("mean", "last"):
        raise LmscopeError(f"positions={positions!r} is invalid: use 'mean' or 'last'.")
    if tokenizer is None:
        raise LmscopeError("probing a text set needs the model's tokenizer; this model has none.")
    layer = check_layer(model, layer)
    names = [h if "." in h else get_act_name(h, layer) for h in (neuron_hook, probe_hook)]
    batches = prompt_batches(list(data.texts), tokenizer, batch_size)
    acts = collect_activations(
        model, batches, list(dict.fromkeys(names)), positions=positions, progress=False
    )
    labels = torch.tensor(data.labels)
    neurons = _rows(acts[names[0]], names[0])
    search = neuron_search(
        neurons, labels, top=top, names=[f"L{layer}N{i}" for i in range(neurons.shape[1])]
    )
    probe = train_probe(
        _rows(acts[names[1]], names[1]), labels, l2=l2, test_fraction=test_fraction, seed=seed
    )
    best = neurons[:, search.top].argmax(0).tolist()
    return ProbeStudy(
        data.name,
        layer,
        names[0],
        names[1],
        positions,
        search,
        probe,
        [data.texts[i] for i in best],
    )


def _rows(act: Tensor, name: str) -> Tensor:
    """A pooled activation as [texts, features] (heads and their dims flattened)."""
    if act.dim() < 2:
        raise LmscopeError(f"{name} has no feature axis to search or probe.")
    return act.flatten(1).float()


__all__ = ["ProbeStudy", "probe_texts"]
