"""Building and opening SAEs: the variant registry, `build_sae` and `load_sae`.

``build_sae(SAEConfig(d_in=576, expansion_factor=8, arch="topk", k=32))`` makes a fresh
SAE of the config's variant (a transcoder when the config has ``d_out`` or
``hook_name_out``). `load_sae` opens a directory in lmscope's format
(``config.json`` + ``model.safetensors``) or SAELens's (``cfg.json`` +
``sae_weights.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lmscope.errors import CheckpointError, did_you_mean
from lmscope.sae.base import CONFIG_FILE, SAE, WEIGHTS_FILE
from lmscope.sae.batchtopk import BatchTopKSAE
from lmscope.sae.config import ARCHS, SAEConfig
from lmscope.sae.gated import GatedSAE
from lmscope.sae.jumprelu import JumpReLUSAE
from lmscope.sae.standard import StandardSAE
from lmscope.sae.topk import TopKSAE
from lmscope.sae.transcoder import transcoder_class
from lmscope.serialization import check_state_dict, read_safetensors

#: The class of each ``arch``.
ARCHITECTURES: dict[str, type[SAE]] = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
}
assert set(ARCHITECTURES) == set(ARCHS)


def sae_class(cfg: SAEConfig) -> type[SAE]:
    """The class that implements `cfg` (its variant, as a transcoder if it is one)."""
    cls = ARCHITECTURES[cfg.arch]
    return transcoder_class(cls) if cfg.is_transcoder else cls


def build_sae(
    cfg: SAEConfig | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int | None = None,
    **fields: Any,
) -> SAE:
    """A freshly initialised SAE: ``build_sae(cfg)`` or ``build_sae(d_in=64, d_sae=256, ...)``.

    `seed` makes the initial weights reproducible without touching the global RNG's
    later draws.
    """
    if cfg is None:
        cfg = SAEConfig(**fields)
    elif fields:
        cfg = cfg.replace(**fields)
    if seed is None:
        sae = sae_class(cfg)(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sae = sae_class(cfg)(cfg)
    return sae.to(device) if device is not None else sae


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Open an SAE directory, in lmscope's format or SAELens's (detected by its files)."""
    directory = Path(path)
    if (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file():
        cfg = SAEConfig.from_json(directory / CONFIG_FILE)
        with torch.device("meta"):
            sae = sae_class(cfg)(cfg)
        state = read_safetensors(directory / WEIGHTS_FILE, device=device)
        check_state_dict(sae, state)
        sae.load_state_dict(state, assign=True)
        return sae.to(device)
    from lmscope.sae.interop import SAELENS_CONFIG, load_saelens

    if (directory / SAELENS_CONFIG).is_file():
        return load_saelens(directory, device=device)
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    hint = did_you_mean(CONFIG_FILE, found)
    raise CheckpointError(
        f"{directory} is not an SAE directory: expected {CONFIG_FILE} + {WEIGHTS_FILE} "
        f"(lmscope) or {SAELENS_CONFIG} + sae_weights.safetensors (SAELens); found "
        f"{', '.join(found) or 'nothing'}. {hint}".strip()
    )
