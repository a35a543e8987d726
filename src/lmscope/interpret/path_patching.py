"""Path patching: how much of a head's effect travels along one path to other heads.

Activation patching says a head matters; path patching says *through what* (Wang et al.,
2022, "Interpretability in the Wild", section 3.1 and appendix B; Goldowsky-Dill et al.,
2023). A *sender* head's output is patched, and the change is allowed to reach the
*receivers* only directly, through one of their inputs: ``q``, ``k`` or ``v`` of
receiver heads, or ``resid_final`` (the final residual stream, i.e. the logits).

The algorithm (``direction="noise"``, the paper's; "run" = clean, "source" = corrupted):

1. Run the clean and the corrupted input; cache every head's output (``hook_z``, the
   output before ``W_O``) on both, and with ``freeze_mlps=True`` every MLP's output on
   the clean run.
2. Run the clean input again with every head's output *frozen* at its clean value,
   except the senders, which take their corrupted value (and with ``freeze_mlps``, the
   MLP outputs frozen at their clean values). The residual stream now differs from the
   clean run only by the senders' change (plus what MLPs, when not frozen, make of it).
   Record the receivers' ``q`` / ``k`` / ``v`` (``hook_q`` / ``hook_k`` / ``hook_v``),
   or, for ``resid_final``, the logits: that is the answer, skip step 3.
3. Run the clean input a third time, unfrozen, patching in only the receivers' inputs
   recorded in step 2. Measure the metric.

So a path through any intermediate head (sender -> C -> receiver) is cut: C is frozen
in step 2. ``direction="denoise"`` swaps the roles: run corrupted, senders from clean.
Values are normalised like activation patching: 0 = the corrupted run's metric, 1 = the
clean run's (so when noising, 1 = no effect; `PatchingResult.effect` is signed alike).

Senders in a layer at or after every receiver's layer cannot reach it (receivers read
the residual stream before their own layer writes to it): they get the unpatched value
without a forward pass. Under GQA a ``k``/``v`` receiver is its key/value head, shared by
its group of query heads. Each step batches `batch_size` sender sets per forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.errors import LmscopeError
from lmscope.hooks import HookPoint
from lmscope.interpret.indices import check_head, check_layer
from lmscope.interpret.metrics import Metric, evaluate, normalized_metric
from lmscope.interpret.patching import measure_copies, progress_bar, run_patched
from lmscope.interpret.patching_result import PatchingResult, position_labels
from lmscope.interpret.sites import (
    LAYOUTS,
    Site,
    check_choice,
    check_direction,
    check_pair,
    hook_name,
)

ReceiverInput = Literal["q", "k", "v", "resid_final"]
Head = tuple[int, int]


def _heads(model: Any, heads: Head | Sequence[Head] | None, what: str) -> list[Head]:
    """`heads` as a checked list of non-negative ``(layer, head)`` pairs."""
    if heads is None:
        return []
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [heads]  # type: ignore[list-item]
    checked = []
    for pair in heads:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise LmscopeError(f"{what} must be (layer, head) pairs, got {pair!r}.")
        checked.append((check_layer(model, pair[0]), check_head(model, pair[1])))
    return checked


def _receiver_sites(model: Any, receivers: list[Head], receiver_input: str) -> list[Site]:
    """The hook sites of the receivers' chosen input (key/value heads under GQA)."""
    group = model.cfg.n_heads // model.cfg.kv_heads if receiver_input in ("k", "v") else 1
    sites = {
        Site(hook_name(model, receiver_input, layer), LAYOUTS[receiver_input], head=head // group)
        for layer, head in receivers
    }
    return sorted(sites, key=lambda s: (s.hook, s.head))


@dataclass
class _PathProblem:
    """Checked inputs of a path-patching call: runs, receivers, the (normalised) metric."""

    clean: Tensor
    corrupted: Tensor
    run: Tensor  # the input every pass runs on (clean when noising)
    source: Tensor  # where the senders' values come from
    receivers: list[Head]
    receiver_input: str
    direction: str
    metric: Metric  # normalised when asked
    clean_value: float
    corrupted_value: float

    @classmethod
    def build(
        cls,
        model: Any,
        clean_tokens: Any,
        corrupted_tokens: Any,
        metric: Metric,
        receivers: Any,
        receiver_input: str,
        direction: str,
        normalize: bool,
        tokenizer: Any | None,
    ) -> _PathProblem:
        check_choice(receiver_input, get_args(ReceiverInput), "receiver_input")
        direction = check_direction(direction)
        clean, corrupted = check_pair(model, clean_tokens, corrupted_tokens, tokenizer)
        receiver_list = _heads(model, receivers, "receivers")
        if receiver_input == "resid_final" and receiver_list:
            raise LmscopeError(
                "receiver_input='resid_final' has no receiver heads: leave receivers=None."
            )
        if receiver_input != "resid_final" and not receiver_list:
            raise LmscopeError(
                f"receiver_input={receiver_input!r} needs receivers: (layer, head) pairs."
            )
        clean_value = float(evaluate(metric, model(clean)))
        corrupted_value = float(evaluate(metric, model(corrupted)))
        if normalize:
            metric = normalized_metric(metric, clean_value, corrupted_value)
        run, source = (clean, corrupted) if direction == "noise" else (corrupted, clean)
        return cls(
            clean,
            corrupted,
            run,
            source,
            receiver_list,
            receiver_input,
            direction,
            metric,
            clean_value,
            corrupted_value,
        )

    def reaches(self, senders: Sequence[Head]) -> bool:
        """Whether a sender is in a layer before some receiver (else no path exists)."""
        if self.receiver_input == "resid_final":
            return True
        last = max(layer for layer, _ in self.receivers)
        return any(layer < last for layer, _ in senders)

    def values(
        self,
        model: Any,
        sender_sets: Sequence[Sequence[Head]],
        freeze_mlps: bool,
        batch_size: int,
        progress: bool | None,
    ) -> Float[Tensor, " sets"]:
        """The metric after path patching each set of senders (steps 1-3 of the docstring)."""
        n_layers, run, batch = model.cfg.n_layers, self.run, self.run.shape[0]
        z_names = [hook_name(model, "z", layer) for layer in range(n_layers)]
        mlp_names = [hook_name(model, "mlp_out", i) for i in range(n_layers)] if freeze_mlps else []
        _, run_cache = model.run_with_cache(run, names_filter=z_names + mlp_names)
        _, source_cache = model.run_with_cache(self.source, names_filter=z_names)
        source_z = {name: source_cache[name] for name in z_names}
        receiver_sites = _receiver_sites(model, self.receivers, self.receiver_input)
        captured: dict[str, Tensor] = {}

        def freeze(act: Tensor, hook: HookPoint) -> Tensor:
            # Every head (and MLP) at its unpatched-run value; senders are patched after.
            frozen = run_cache[hook.name].to(act.dtype)
            return frozen.repeat(act.shape[0] // batch, *([1] * (frozen.dim() - 1)))

        def capture(act: Tensor, hook: HookPoint) -> None:
            captured[hook.name] = act.clone()

        # Hooks run in the order added: freeze first, then run_patched's sender patch.
        step2 = [(name, freeze) for name in z_names + mlp_names]
        step2 += [(name, capture) for name in sorted({site.hook for site in receiver_sites})]
        values: list[Tensor] = []
        description = f"path patching -> {self.receiver_input}"
        with progress_bar(len(sender_sets), description, progress) as advance:
            for start in range(0, len(sender_sets), batch_size):
                chunk = sender_sets[start : start + batch_size]
                copies = [[Site(z_names[i], LAYOUTS["z"], head=h) for i, h in s] for s in chunk]
                captured.clear()
                with model.hooks(fwd_hooks=step2):
                    logits = run_patched(model, run, source_z, copies)
                if self.receiver_input == "resid_final":
                    values += [
                        evaluate(self.metric, logits[k * batch : (k + 1) * batch]).reshape(1)
                        for k in range(len(chunk))
                    ]
                else:
                    receiver_copies = [receiver_sites] * len(chunk)
                    values.append(
                        measure_copies(
                            model,
                            run,
                            dict(captured),
                            receiver_copies,
                            self.metric,
                            batch_size=len(chunk),
                            progress=False,
                        )
                    )
                advance(len(chunk))
        return torch.cat([v.float().cpu() for v in values])


def path_patch(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    senders: Head | Sequence[Head],
    receivers: Head | Sequence[Head] | None = None,
    receiver_input: str = "v",
    freeze_mlps: bool = False,
    direction: str = "noise",
    normalize: bool = True,
    tokenizer: Any | None = None,
) -> float:
    """The metric after patching the path senders -> receivers' `receiver_input`.

    `senders`, `receivers`: ``(layer, head)`` pairs (receivers: None for
    ``resid_final``). Normalised: 0 = corrupted run, 1 = clean run. See the module
    docstring for the algorithm.
    """
    with torch.no_grad():
        problem = _PathProblem.build(
            model,
            clean_tokens,
            corrupted_tokens,
            metric,
            receivers,
            receiver_input,
            direction,
            normalize,
            tokenizer,
        )
        sender_list = _heads(model, senders, "senders")
        if not sender_list:
            raise LmscopeError("senders is empty: give (layer, head) pairs.")
        if not problem.reaches(sender_list):
            return float(evaluate(problem.metric, model(problem.run)))
        return float(problem.values(model, [sender_list], freeze_mlps, 1, False)[0])


def path_patch_sweep(
    model: Any,
    clean_tokens: Any,
    corrupted_tokens: Any,
    metric: Metric,
    *,
    receivers: Head | Sequence[Head] | None = None,
    receiver_input: str = "v",
    freeze_mlps: bool = False,
    direction: str = "noise",
    normalize: bool = True,
    batch_size: int = 16,
    progress: bool | None = None,
    tokenizer: Any | None = None,
) -> PatchingResult:
    """`path_patch` with every head as the lone sender: a ``[layer, head]`` grid."""
    if isinstance(batch_size, bool) or batch_size < 1:
        raise LmscopeError(f"batch_size must be a positive number of copies, got {batch_size!r}.")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        problem = _PathProblem.build(
            model,
            clean_tokens,
            corrupted_tokens,
            metric,
            receivers,
            receiver_input,
            direction,
            normalize,
            tokenizer,
        )
        values = torch.full(
            (n_layers * n_heads,), float(evaluate(problem.metric, model(problem.run)))
        )
        senders = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        live = [i for i, sender in enumerate(senders) if problem.reaches([sender])]
        if live:
            sets = [[senders[i]] for i in live]
            values[live] = problem.values(model, sets, freeze_mlps, batch_size, progress)
    return PatchingResult(
        values=values.reshape(n_layers, n_heads),
        axes=("layer", "head"),
        activation=f"path->{receiver_input}",
        method="path",
        direction=problem.direction,
        normalized=normalize,
        clean_metric=problem.clean_value,
        corrupted_metric=problem.corrupted_value,
        layers=list(range(n_layers)),
        labels=position_labels(problem.clean, problem.corrupted, tokenizer),
    )
