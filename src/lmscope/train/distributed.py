"""Several processes, one run: torchrun + DistributedDataParallel or FSDP.

The same command works alone or under ``torchrun --nproc_per_node N``. Every process
draws the same *global* batch from the shared data generator and trains on its own
slice of rows, so a run on N processes sees exactly the data of a single-process run
with the same global batch, and their losses agree (tested with 2 gloo processes).
Only rank 0 logs, draws pictures and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmscope.errors import LmscopeError
from lmscope.model.layout import use_row_major


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    def rows(self, n_rows: int) -> slice:
        """This process's share of a batch of `n_rows` rows."""
        if n_rows % self.world:
            raise LmscopeError(
                f"a batch of {n_rows} rows cannot be split evenly over {self.world} processes; "
                "use a batch_size divisible by the number of processes."
            )
        per = n_rows // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def setup(device_type: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def teardown(info: Dist) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: Dist, fsdp: bool, device: torch.device) -> nn.Module:
    """DDP (default) or FSDP around `model` when there are several processes."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        use_row_major(model)  # FSDP flattens parameters and refuses strided ones
        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for name in ("blocks", "encoder", "decoder"):
        stack = getattr(model, name, None)
        if isinstance(stack, nn.ModuleList):
            blocks += list(stack)
    return blocks


def unwrap(model: nn.Module) -> nn.Module:
    """The lmscope model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(unwrap_compiled(model), optimizer, options=options)
    return model_state, optim_state


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Load unsharded state into a (possibly wrapped / sharded) model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_state_dict(
        unwrap_compiled(model),
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=options,
    )


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """Strip only torch.compile's wrapper (DDP/FSDP stay, state-dict helpers need them)."""
    return getattr(model, "_orig_mod", model)


def all_sum(values: list[float], info: Dist, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: Dist) -> None:
    """Wait for every process."""
    if info.enabled:
        dist.barrier()


def broadcast_object(value: Any, info: Dist) -> Any:
    """Rank 0's `value`, on every process."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
