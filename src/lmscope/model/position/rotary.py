"""Rotary position embedding (RoPE, Su et al., 2021) and its context-extension scalings.

RoPE rotates each pair of query/key dims by an angle ``position * freq_i``. Because a
rotation by ``a`` followed by the inverse of ``b`` is a rotation by ``a - b``, the score
``q_i . k_j`` depends on positions only through the offset ``i - j``.

Which dims form a pair is a convention that checkpoints bake in:
- ``interleaved`` (the paper, GPT-J, llama.cpp): dims (2i, 2i+1);
- ``rotate-half`` (GPT-NeoX, Hugging Face Llama): dims (i, i + d/2).
With ``rotary_fraction < 1`` only the first ``rotary_dim`` dims of each head rotate
(GPT-J, NeoX); the rest pass through.

Scalings stretch the frequencies so a model trained on ``original`` tokens works on
longer inputs; each follows the formula of its reference implementation:
- linear (Chen et al., 2023, position interpolation): every frequency / factor;
- ntk (bloc97's "NTK-aware" rule): base * factor^(d/(d-2)), high frequencies kept;
- dynamic (emozilla's dynamic NTK, Hugging Face's "dynamic"): no change up to
  ``original`` tokens; beyond, NTK with the factor grown to the input length
  ``L``: base * (factor * L / original - (factor - 1))^(d/(d-2)), ``L`` = largest
  position id of the forward + 1. Hugging Face keeps the largest ``L`` seen while above
  ``original``; here it is a function of each forward's positions, which is the same
  for one sequence decoded with a KV cache (positions only grow);
- yarn (Peng et al., 2023): per-dim blend of interpolated and original frequencies by
  wavelength, plus an attention temperature 0.1 ln(factor) + 1 on cos/sin;
- llama3 (Meta, 2024): long wavelengths / factor, short ones kept, a smooth ramp between.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import ModelConfig


def rope_frequencies(
    cfg: ModelConfig, seq_len: int | None = None
) -> tuple[Float[Tensor, " half"], float]:
    """Inverse frequencies (``rotary_dim / 2``) and the attention factor of `cfg`'s scaling.

    `seq_len` (the input length) only matters for ``rope_scaling='dynamic'``.
    """
    dim = cfg.rotary_dim
    base = cfg.rope_theta
    factor = cfg.rope_scaling_factor
    # Explicitly on the CPU: the table is tiny, and under `torch.device("meta")` (building a
    # model to load into) the maths would go through meta kernels that import torch._dynamo
    # (~1.5 s). Callers move it where the model lives.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    if cfg.rope_scaling == "ntk":
        base = base * factor ** (dim / (dim - 2))
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len
    if cfg.rope_scaling == "dynamic" and seq_len is not None and seq_len > original:
        base = base * (factor * seq_len / original - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponents)
    attention_factor = 1.0

    if cfg.rope_scaling == "linear":
        inv_freq = inv_freq / factor
    elif cfg.rope_scaling == "yarn":
        inv_freq, attention_factor = _yarn(cfg, base, exponents)
    elif cfg.rope_scaling == "llama3":
        inv_freq = _llama3(cfg, inv_freq)
    return inv_freq, attention_factor


def _yarn(cfg: ModelConfig, base: float, exponents: Tensor) -> tuple[Tensor, float]:
    dim, factor = cfg.rotary_dim, cfg.rope_scaling_factor
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len

    def correction_dim(rotations: float) -> float:
        # The dim whose wavelength fits `rotations` full turns into the original context.
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(cfg.rope_yarn_beta_fast)), 0)
    high = min(math.ceil(correction_dim(cfg.rope_yarn_beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(
        0, 1
    )
    extrapolate = 1 - ramp  # 1: keep the original frequency, 0: interpolate fully
    pos_freqs = base**exponents
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attention_factor


def _llama3(cfg: ModelConfig, inv_freq: Tensor) -> Tensor:
    factor = cfg.rope_scaling_factor
    low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    original = cfg.rope_original_max_seq_len or cfg.max_seq_len
    low_freq_wavelen, high_freq_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Computes RoPE's cos/sin for given positions; `apply_rotary` rotates q or k with them."""

    inv_freq: Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rotary_dim = cfg.rotary_dim
        self.layout = cfg.rope_layout
        self.attention_factor = 1.0
        self.register_buffer("inv_freq", torch.empty(self.rotary_dim // 2), persistent=False)
        self.init_buffers(self.inv_freq.device)

    def init_buffers(self, device: torch.device) -> None:
        """(Re)compute the frequency table on `device`."""
        inv_freq, self.attention_factor = rope_frequencies(self.cfg)
        self.inv_freq = inv_freq.to(device)

    # Keep the table in float32 on whatever device the model moves to: `.to(bf16)` would
    # otherwise round the frequencies, and bf16 cannot hold position * frequency.
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.init_buffers(self.inv_freq.device)
        return self

    def forward(
        self, positions: Int[Tensor, "#batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "#batch pos 1 rotary_dim"], Float[Tensor, "#batch pos 1 rotary_dim"]]:
        """cos and sin of every rotation angle, laid out like the dims they rotate."""
        # Angles in float32 whatever the model dtype: bf16 cannot hold position * freq.
        inv_freq = self.inv_freq
        if self.cfg.rope_scaling == "dynamic":  # frequencies depend on the input length
            seq_len = int(positions.max()) + 1 if positions.numel() else 0
            inv_freq = rope_frequencies(self.cfg, seq_len)[0].to(inv_freq.device)
        angles = positions.float()[..., None] * inv_freq.float()  # [batch, pos, half]
        if self.layout == "rotate-half":
            angles = torch.cat((angles, angles), dim=-1)
        else:
            angles = angles.repeat_interleave(2, dim=-1)
        cos = (angles.cos() * self.attention_factor).to(dtype)
        sin = (angles.sin() * self.attention_factor).to(dtype)
        return cos[:, :, None, :], sin[:, :, None, :]


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "#batch pos 1 rotary_dim"],
    sin: Float[Tensor, "#batch pos 1 rotary_dim"],
    layout: str,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``rotary_dim`` dims of each head of `x` by the given angles."""
    rotary_dim = cos.shape[-1]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if layout == "rotate-half":
        half = rotary_dim // 2
        # pair (i, i + half): (a, b) -> (a cos - b sin, b cos + a sin)
        rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    else:
        # pair (2i, 2i + 1): same rotation on adjacent dims
        rotated = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
    out = rot * cos + rotated * sin
    if rest.shape[-1] == 0:
        return out
    return torch.cat((out, rest), dim=-1)
