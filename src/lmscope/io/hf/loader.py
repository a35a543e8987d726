"""`load_hf`: a Hugging Face checkpoint directory -> a normal lmscope model.

Steps, each able to fail with a message that names the problem:
1. ``config.json`` -> the family (by ``model_type``) -> `ModelConfig` (options lmscope
   does not implement are refused).
2. The checkpoint's tensor names and shapes (headers only) are checked against the
   family's rules for that config: every missing, mis-shaped or unknown tensor is listed
   in one error before anything is read.
3. The model is built on the meta device (no memory, no random init), and each lmscope
   tensor is made from its sources and assigned; then the RoPE / ALiBi buffers are
   computed. A tensor that is its sources' rows in order (a renamed tensor, fused q/k/v
   or gate/up rows: `Rule.rows`) and needs no cast is read from the file straight into
   its final memory, the only copy made; the others are read through a memory map,
   converted and cast (`_materialise`). Either way the result owns fresh, 64-byte
   aligned memory, so peak memory is the model plus one tensor group at most.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmscope.config import ModelConfig
from lmscope.errors import CheckpointError
from lmscope.io.hf.family import Family, HFConfig, family_for
from lmscope.io.hf.reader import CheckpointReader
from lmscope.io.hf.rules import Rule
from lmscope.model import ARCHITECTURES
from lmscope.model.base import BaseTransformer


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face directory, as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object.")
    return data


def hf_model_config(directory: str | Path) -> tuple[Family, ModelConfig, CheckpointReader]:
    """The family, the `ModelConfig` and a reader of a Hugging Face checkpoint directory."""
    directory = Path(directory)
    raw = read_hf_config(directory)
    source = str(directory / "config.json")
    family = family_for(raw.get("model_type"), source)
    try:
        reader = CheckpointReader(directory)
    except CheckpointError as exc:
        # Name the format: a config.json alone is often a download that stopped early.
        raise CheckpointError(
            f"{directory} is a Hugging Face checkpoint (model_type={family.model_type!r}) "
            f"but its weights cannot be read: {exc}"
        ) from exc
    full = family.full_names(reader.names())
    cfg = family.config(HFConfig(raw, family, source, name=directory.name), set(full))
    return family, cfg, reader


def load_hf(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> BaseTransformer:
    """Load a Hugging Face model directory as an lmscope model (eval mode).

    `dtype` defaults to the checkpoint's (the floating dtype of most of its elements);
    `device` to the CPU. Weights are read one tensor group at a time (see `reader`).
    """
    family, cfg, reader = hf_model_config(path)
    full = family.full_names(reader.names())
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](cfg)
    rules = family.rules(cfg)
    check_checkpoint(family, cfg, model, rules, full, reader)
    target = dtype or reader.main_dtype()
    where = torch.device(device) if device is not None else torch.device("cpu")
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tensors: dict[str, Tensor] = {}
    try:
        with ThreadPoolExecutor(max_workers=read_threads()) as pool:
            reads = []
            for rule in rules:
                names = [full[s] for s in rule.sources]
                if rule.rows and where.type == "cpu" and reader.can_read_into(names, target):
                    tensor = torch.empty(shapes[rule.target], dtype=target)
                    reads.append(pool.submit(reader.read_into, names, tensor))
                else:
                    with reader.open(names) as views:
                        tensor = _materialise(rule.join(views), views, target, where)
                tensors[rule.target] = tensor
            for read in reads:
                read.result()  # raises what the read raised
    finally:
        reader.close()
    for name, tensor in tensors.items():
        _assign(model, name, tensor)
    model.init_buffers()
    return model.eval()


def read_threads() -> int:
    """Threads that read tensors into fresh memory at once: torch's thread count, at most 8.

    Copying from the page cache is cheap; faulting in the fresh pages that receive the
    bytes is not, and the kernel serves the faults of different threads in parallel (on
    the 2-vCPU benchmark machine, two readers fill 2 GB ~1.4x faster than one).
    """
    return max(1, min(torch.get_num_threads(), 8))


def check_checkpoint(
    family: Family,
    cfg: ModelConfig,
    model: nn.Module,
    rules: list[Rule],
    full: dict[str, str],
    reader: CheckpointReader,
) -> None:
    """Raise one `CheckpointError` listing every missing, mis-shaped or unknown tensor."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    covered = {rule.target for rule in rules}
    if covered != set(expected):  # a bug in a family's rules, not in the checkpoint
        raise RuntimeError(
            f"{family.model_type} rules do not cover the model: missing "
            f"{sorted(set(expected) - covered)}, extra {sorted(covered - set(expected))}"
        )
    problems: list[str] = []
    used: set[str] = set()
    for rule in rules:
        for name, shape in zip(
            rule.sources, rule.expected_shapes(expected[rule.target]), strict=True
        ):
            used.add(name)
            if name not in full:
                problems.append(f"missing tensor {name!r} (expected shape {list(shape)})")
            elif reader.shape(full[name]) != shape:
                found = list(reader.shape(full[name]))
                problems.append(
                    f"tensor {name!r} has shape {found}, expected {list(shape)} from config.json"
                )
    ignored = [re.compile(p) for p in family.ignored]
    if cfg.tie_embeddings:
        ignored.append(re.compile(re.escape(family.head) + "$"))
    unknown = sorted(n for n in full if n not in used and not any(p.search(n) for p in ignored))
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        problems.append(
            f"tensors the {family.model_type} mapping does not use: {shown}{more} (an "
            "architecture option lmscope does not implement; not loaded approximately)"
        )
    if problems:
        shown = "; ".join(problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"{reader.directory} does not match its config.json: {shown}{more}.")


def _materialise(
    tensor: Tensor, views: list[Tensor], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """`tensor` in fresh, 64-byte aligned memory of `dtype` on `device`, owning its data.

    Views into the file must be copied (the file is closed after this group), and so
    must tensors at unaligned addresses (MKL rounds differently on them; see
    `serialization._aligned`). A join that already made a fresh tensor of the right
    dtype and device is kept as it is.
    """
    storage = tensor.untyped_storage().data_ptr()
    fresh = all(storage != v.untyped_storage().data_ptr() for v in views)
    if (
        fresh
        and tensor.dtype == dtype
        and tensor.device == device
        and tensor.is_contiguous()
        and tensor.data_ptr() % 64 == 0
    ):
        return tensor
    out = torch.empty(tensor.shape, dtype=dtype, device=device)
    out.copy_(tensor)
    return out


def _assign(model: nn.Module, name: str, tensor: Tensor) -> None:
    """Replace parameter `name` (a meta tensor) with `tensor`."""
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, leaf, nn.Parameter(tensor))
