"""The base of every sparse autoencoder: parameters, encode / decode, hooks, loss, save.

An SAE reads an activation ``x`` (``d_in`` wide) and writes it as a sparse, non-negative
combination of ``d_sae`` learned directions, the rows of ``W_dec``:

    pre  = (x * s - b_dec) @ W_enc + b_enc          hidden pre-activations
    acts = activation(pre)                          sparse latents (the variant)
    x^   = (acts @ W_dec + b_dec) / s               reconstruction

``s`` is the input normalisation factor (`SAEConfig.activation_scale`, 1 when off);
``b_dec`` is subtracted from the input only when ``apply_b_dec_to_input``. Each variant
(one module each) supplies the activation and its sparsity loss; the loss, hooks and saving
live here once, decoder-norm helpers and folding in `folding.py`.

Hook points follow SAELens: ``hook_sae_input``, ``hook_sae_acts_pre``,
``hook_sae_acts_post``, ``hook_sae_recons``, ``hook_sae_error`` and ``hook_sae_output``;
they are `lmscope.hooks.HookPoint`s, so features are read and edited with the same
``sae.hooks(...)`` / ``run_with_hooks`` as any model activation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.hooks import HookedModule, HookPoint
from lmscope.sae.config import SAEConfig
from lmscope.sae.errors import SAEError
from lmscope.sae.folding import DecoderNormsAndFolding
from lmscope.sae.outputs import LossOutput, TrainForward
from lmscope.serialization import write_json, write_safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight + bias`` for any leading shape (one fused addmm for matrices)."""
    if x.dim() == 2:
        return torch.addmm(bias, x, weight)
    return x @ weight + bias


class SAE(DecoderNormsAndFolding, HookedModule):
    """Base class: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec``.

    Subclasses set `arch` and implement `activation` (pre-activations -> latents) and
    `_extra_losses` (the sparsity penalty and any auxiliary loss).
    """

    arch: ClassVar[str] = ""
    #: Whether rescaling a latent's encoder by c and decoder by 1/c leaves the outputs
    #: unchanged (false for TopK: the rescale changes which latents win).
    scale_invariant_latents: ClassVar[bool] = True

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if self.arch and cfg.arch != self.arch:
            raise SAEError(f"{type(self).__name__} is the {self.arch!r} SAE, got arch={cfg.arch!r}")
        self.cfg = cfg
        kw = {"dtype": cfg.torch_dtype}
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.output_dim, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.output_dim, **kw))
        self._init_latent_params()
        self.hook_sae_input = HookPoint()  # [*, d_in], before normalisation
        self.hook_sae_acts_pre = HookPoint()  # [*, d_sae]
        self.hook_sae_acts_post = HookPoint()  # [*, d_sae]
        self.hook_sae_recons = HookPoint()  # [*, d_out], normalised units
        self.hook_sae_error = HookPoint()  # [*, d_out], with use_error_term
        self.hook_sae_output = HookPoint()  # [*, d_out]
        self.setup_hooks()
        self.reset_parameters()

    # --- parameters ----------------------------------------------------------------------
    def _init_latent_params(self) -> None:
        """Create the per-latent encoder parameters (``b_enc``; Gated has others)."""
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    def latent_params(self) -> dict[str, int]:
        """Parameters with one slice per latent, and the axis of that slice (resampling)."""
        return {"W_enc": 1, "b_enc": 0, "W_dec": 0}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as Anthropic (April 2024) / OpenAI: random decoder rows of a fixed
        norm (1 when kept at unit norm, else ``decoder_init_norm``), encoder = decoder^T
        (when the widths match), zero biases."""
        if self.W_dec.is_meta:  # built to be loaded into: no values to set
            return
        nn.init.kaiming_uniform_(self.W_dec)
        norm = 1.0 if self.cfg.normalize_decoder else self.cfg.decoder_init_norm
        self.W_dec.mul_(norm / self.W_dec.norm(dim=1, keepdim=True))
        if self.cfg.output_dim == self.cfg.d_in:
            self.W_enc.copy_(self.W_dec.T)
        else:  # a transcoder reads another space than it writes: independent, same norm
            nn.init.kaiming_uniform_(self.W_enc)
            self.W_enc.mul_(norm / self.W_enc.norm(dim=0, keepdim=True))
        self.b_dec.zero_()
        self._reset_latents(torch.arange(self.cfg.d_sae, device=self.W_dec.device))

    @torch.no_grad()
    def _reset_latents(self, latents: Tensor) -> None:
        """Set the per-latent parameters other than W_enc / W_dec to their initial values."""
        self.b_enc[latents] = 0

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups; each ``lr_scale`` multiplies the trainer's
        learning rate for its parameters (1 for all, unless a variant says otherwise)."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    @torch.no_grad()
    def initialise_from_data(self, x: Float[Tensor, "n d_in"]) -> None:
        """Set data-dependent parameters from a first batch of normalised inputs `x`
        (after b_dec; none by default, JumpReLU's thresholds with ``jumprelu_init_l0``)."""

    @property
    def d_in(self) -> int:
        """Input width."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.cfg.d_sae

    @property
    def input_scale(self) -> float | None:
        """The input normalisation factor in use (None: inputs are taken as they come)."""
        if self.cfg.normalize_activations == "expected_average_only_in":
            return self.cfg.activation_scale
        return None

    @property
    def output_scale(self) -> float | None:
        """The normalisation factor of the reconstructed activation."""
        return self.input_scale

    # --- encode / decode -----------------------------------------------------------------
    def normalize_input(
        self, x: Float[Tensor, "*batch d_in"], *, prescaled: bool = False
    ) -> Float[Tensor, "*batch d_in"]:
        """Check the width, cast to the SAE's dtype, run ``hook_sae_input``, scale.

        `prescaled`: `x` was already multiplied by the factor (an activation store that
        normalises its batches), so only the checks and the hook apply.
        """
        if x.shape[-1] != self.cfg.d_in:
            raise SAEError(
                f"this SAE reads activations of width d_in={self.cfg.d_in}, got a tensor of "
                f"shape {list(x.shape)} (last dimension {x.shape[-1]}). "
                f"It was trained on {self.cfg.hook_name or 'an unnamed hook'}."
            )
        x = self.hook_sae_input(x.to(self.W_enc.dtype))
        scale = self.input_scale
        return x * scale if scale is not None and not prescaled else x

    def _center(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _encoder_bias(self, bias: Tensor) -> Tensor:
        """`bias` with the input centring folded in: ``(x - b_dec) W + b = x W + (b - b_dec W)``.

        Mathematically the same pre-activations; but b_dec's gradient through the
        centring then costs a vector-matrix product instead of a full ``[n, d_sae] x
        [d_sae, d_in]`` matmul (x itself needs no gradient).
        """
        return bias - self.b_dec @ self.W_enc if self.cfg.apply_b_dec_to_input else bias

    def _hidden_pre(self, x: Tensor) -> Tensor:
        """Pre-activations of normalised inputs."""
        return self.hook_sae_acts_pre(affine(x, self.W_enc, self._encoder_bias(self.b_enc)))

    def activation(self, hidden_pre: Float[Tensor, "*batch d_sae"]) -> Tensor:
        """The variant's non-linearity: pre-activations -> sparse latents."""
        raise NotImplementedError

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(latents, pre-activations) of normalised inputs."""
        pre = self._hidden_pre(x)
        return self.hook_sae_acts_post(self.activation(pre)), pre

    def _decode(self, acts: Tensor) -> Tensor:
        """Reconstruction in normalised units."""
        return self.hook_sae_recons(acts @ self.W_dec + self.b_dec)

    def encode_with_hidden_pre(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch d_sae"]]:
        """Latents and the pre-activations they came from."""
        return self._encode(self.normalize_input(x))

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Latents (feature activations) of raw activations `x`."""
        return self._encode(self.normalize_input(x))[0]

    def decode(self, acts: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_out"]:
        """The activation that latents `acts` stand for (raw units)."""
        if acts.shape[-1] != self.cfg.d_sae:
            raise SAEError(
                f"decode takes latents of width d_sae={self.cfg.d_sae}, got shape "
                f"{list(acts.shape)}."
            )
        return self._unscale(self._decode(acts.to(self.W_dec.dtype)))

    def _unscale(self, out: Tensor) -> Tensor:
        scale = self.output_scale
        return out / scale if scale is not None else out

    def _skip(self, x: Tensor) -> Tensor | None:
        """A transcoder's linear skip path on normalised inputs (None: there is none)."""
        return None

    def _reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction (raw units) of raw inputs, skip path included."""
        x_n = self.normalize_input(x)
        out = self._decode(self._encode(x_n)[0])
        skip = self._skip(x_n)
        return self._unscale(out if skip is None else out + skip)

    def forward(
        self, x: Float[Tensor, "*batch d_in"], *, use_error_term: bool = False
    ) -> Float[Tensor, "*batch d_out"]:
        """Reconstruction of `x`.

        With `use_error_term`, the error of the unhooked reconstruction (``x - x^``) is
        added back through ``hook_sae_error``: the output equals `x` exactly until a hook
        edits a latent, and then changes by exactly that edit's effect.
        """
        out = self._reconstruct(x)
        if use_error_term:
            with torch.no_grad(), self.hooks_paused():
                clean = self._reconstruct(x)
            out = out + self.hook_sae_error(x.to(out.dtype) - clean)
        return self.hook_sae_output(out)

    @contextmanager
    def hooks_paused(self) -> Iterator[None]:
        """Run the body with every hook of this SAE detached (they come back afterwards)."""
        saved = [(p, p._fwd, p._bwd) for p in self.hook_points().values()]
        try:
            for point, _, _ in saved:
                point._fwd, point._bwd = [], []
            yield
        finally:
            for point, fwd, bwd in saved:
                point._fwd, point._bwd = fwd, bwd

    # --- training --------------------------------------------------------------------------
    def _training_target(self, x: Tensor, target: Tensor | None, prescaled: bool) -> Tensor:
        """What the reconstruction is compared with: the input itself (transcoders differ)."""
        if target is not None:
            raise SAEError(
                "an SAE reconstructs its own input: pass no target (a transcoder, with d_out "
                "or hook_name_out in its config, takes one)."
            )
        return x

    def _training_forward(self, x: Tensor, dead_mask: Tensor | None) -> TrainForward:
        """Encode and decode normalised inputs for a training step (variants may specialise;
        `dead_mask` is for those whose auxiliary loss needs it during the forward pass)."""
        return self._training_forward_from(*self._encode(x))

    def _training_forward_from(self, acts: Tensor, pre: Tensor) -> TrainForward:
        """The training forward pass once latents `acts` (from `pre`) are known."""
        flat = acts.detach().reshape(-1, acts.shape[-1])
        counts = (flat > 0).sum(0)  # latents are >= 0 in every variant
        return TrainForward(
            reconstruction=self._decode(acts),
            hidden_pre=pre,
            firing_counts=counts,
            l0=counts.sum() / flat.shape[0],  # one pass over the latents for both
            acts=acts,
        )

    def _extra_losses(
        self,
        x: Tensor,
        target: Tensor,
        fwd: TrainForward,
        sparsity_scale: float,
        dead_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(sparsity loss, auxiliary loss, extra metrics) of one step."""
        raise NotImplementedError

    def training_loss(
        self,
        x: Float[Tensor, "n d_in"],
        target: Float[Tensor, "n d_out"] | None = None,
        *,
        sparsity_scale: float = 1.0,
        dead_mask: Tensor | None = None,
        prescaled: bool = False,
    ) -> LossOutput:
        """The loss of one batch: ``mse + sparsity + aux``.

        `mse` is the squared error summed over the output dimension and averaged over
        inputs, in normalised units (as SAELens). `sparsity_scale` multiplies the
        sparsity coefficient (the trainer's warm-up); `dead_mask` (bool ``[d_sae]``)
        marks dead latents for the variants whose auxiliary loss revives them.
        `target` is the output activation of a transcoder (None for an SAE).
        `prescaled`: the batch was already normalised (see `normalize_input`).
        """
        x = self.normalize_input(x, prescaled=prescaled)
        target = self._training_target(x, target, prescaled)
        fwd = self._training_forward(x, dead_mask)
        recon = fwd.reconstruction
        skip = self._skip(x)
        if skip is not None:
            recon = fwd.reconstruction = recon + skip
        mse = (recon - target).pow(2).sum(-1).mean()
        sparsity, aux, extra = self._extra_losses(x, target, fwd, sparsity_scale, dead_mask)
        return LossOutput(
            total=mse + sparsity + aux,
            mse=mse,
            sparsity=sparsity,
            aux=aux,
            metrics=extra,
            reconstruction=recon.detach(),
            target=target,
            firing_counts=fwd.firing_counts,
            l0=fwd.l0,
        )

    # --- saving ----------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into directory `path` (atomically
        per file); `extra` (e.g. final training metrics) goes to ``metrics.json``."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: t.detach().cpu() for name, t in self.state_dict().items()}
        write_safetensors(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        self.cfg.to_json(directory / CONFIG_FILE)
        if extra is not None:
            write_json(directory / "metrics.json", extra)
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """Open an SAE directory (lmscope's or SAELens's format)."""
        from lmscope.sae.build import load_sae

        return load_sae(path, device=device)

    def extra_repr(self) -> str:
        c = self.cfg
        shape = f"d_in={c.d_in}, d_sae={c.d_sae}"
        if c.is_transcoder:
            shape += f", d_out={c.output_dim}"
        return f"{shape}, hook={c.hook_name!r}"
