"""SAELens's format both ways, checked against sae-lens itself (a test-only dependency)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from lmscope.sae import SAE, build_sae, load_sae
from lmscope.sae.interop import SAELensFormatError, convert, load_saelens, save_saelens

sae_lens = pytest.importorskip("sae_lens")
warnings.filterwarnings("ignore", module="sae_lens")

D_IN, D_SAE = 16, 64
HOOK = "blocks.1.hook_resid_post"


def randomised(sae: SAE) -> SAE:
    """Nonzero biases, non-unit decoder rows: nothing hides behind an initial value."""
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if name == "threshold":
                p.abs_()
    return sae.eval()


def same_outputs(ours: SAE, theirs: object, d_in: int = D_IN) -> None:
    x = torch.randn(20, d_in) * 2
    acts = ours.encode(x)
    assert (acts > 0).any()
    assert torch.allclose(acts, theirs.encode(x), atol=1e-5)
    assert torch.allclose(ours.decode(acts), theirs.decode(acts), atol=1e-5)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


LMSCOPE_TO_SAELENS = [
    ("standard", {}, "StandardSAE"),
    ("topk", {"k": 6}, "TopKSAE"),
    ("batchtopk", {"k": 6}, "JumpReLUSAE"),  # SAELens saves BatchTopK as JumpReLU too
    ("jumprelu", {}, "JumpReLUSAE"),
    ("gated", {}, "GatedSAE"),
    ("standard", {"d_out": 10, "hook_name_out": "blocks.1.hook_mlp_out"}, "Transcoder"),
    ("jumprelu", {"d_out": 10, "skip_connection": True}, "JumpReLUSkipTranscoder"),
]


@pytest.mark.parametrize(("arch", "kw", "their_class"), LMSCOPE_TO_SAELENS)
def test_lmscope_saes_open_in_saelens_with_the_same_outputs(
    arch: str, kw: dict, their_class: str, tmp_path: Path
) -> None:
    ours = randomised(build_sae(d_in=D_IN, d_sae=D_SAE, arch=arch, hook_name=HOOK, seed=0, **kw))
    if arch == "batchtopk":
        ours.threshold.fill_(0.3)
    save_saelens(ours, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(theirs).__name__ == their_class
    assert theirs.cfg.metadata.hook_name == HOOK
    same_outputs(ours, theirs)
    back = load_sae(tmp_path).eval()  # and back into lmscope
    same_outputs(back, theirs)


def test_the_normalisation_factor_is_folded_for_saelens(tmp_path: Path) -> None:
    ours = randomised(
        build_sae(
            d_in=D_IN,
            d_sae=D_SAE,
            arch="topk",
            k=5,
            normalize_activations="expected_average_only_in",
            activation_scale=0.2,
            seed=0,
        )
    )
    save_saelens(ours, tmp_path)
    assert ours.cfg.activation_scale == 0.2  # the SAE itself is not changed
    data = json.loads((tmp_path / "cfg.json").read_text())
    assert data["normalize_activations"] == "none"
    assert data["metadata"]["norm_scaling_factor"] == 0.2
    same_outputs(ours, sae_lens.SAE.load_from_disk(tmp_path))


def _saelens_sae(cls_name: str, **cfg: object) -> object:
    cls = getattr(sae_lens, cls_name)
    config = getattr(sae_lens, cls_name + "Config")(d_in=D_IN, d_sae=D_SAE, **cfg)
    sae = cls(config)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
            if "threshold" in name:
                p.abs_()
    return sae


SAELENS_TO_LMSCOPE = [
    ("StandardSAE", {}, "standard"),
    ("TopKSAE", {"k": 6}, "topk"),
    ("TopKSAE", {"k": 6, "rescale_acts_by_decoder_norm": True}, "topk"),
    ("JumpReLUSAE", {}, "jumprelu"),
    ("GatedSAE", {}, "gated"),
    ("StandardTrainingSAE", {"l1_coefficient": 2.5}, "standard"),
    ("TopKTrainingSAE", {"k": 6}, "topk"),  # trains with rescaled pre-activations
    ("JumpReLUTrainingSAE", {"jumprelu_bandwidth": 0.02}, "jumprelu"),
]


@pytest.mark.parametrize(("their_class", "cfg", "arch"), SAELENS_TO_LMSCOPE)
def test_saelens_saes_open_in_lmscope_with_the_same_outputs(
    their_class: str, cfg: dict, arch: str, tmp_path: Path
) -> None:
    theirs = _saelens_sae(their_class, **cfg).eval()
    theirs.save_model(str(tmp_path))
    ours = load_sae(tmp_path).eval()
    assert ours.cfg.arch == arch
    same_outputs(ours, theirs)
    if their_class == "StandardTrainingSAE":
        assert ours.cfg.l1_coefficient == 2.5  # training settings come along
    if their_class == "JumpReLUTrainingSAE":
        assert ours.cfg.jumprelu_bandwidth == 0.02


def test_a_saelens_batchtopk_training_checkpoint_opens_as_batchtopk(tmp_path: Path) -> None:
    theirs = _saelens_sae("BatchTopKTrainingSAE", k=4)
    theirs.topk_threshold.fill_(0.4)
    theirs.save_model(str(tmp_path / "ckpt"))
    ours = load_sae(tmp_path / "ckpt").eval()
    assert ours.cfg.arch == "batchtopk" and float(ours.threshold) == pytest.approx(0.4)
    theirs.save_inference_model(str(tmp_path / "inference"))  # their JumpReLU form
    same_outputs(ours, sae_lens.SAE.load_from_disk(tmp_path / "inference"))


def test_a_saelens_scaler_file_gives_the_normalisation_factor(tmp_path: Path) -> None:
    theirs = _saelens_sae("StandardSAE", normalize_activations="expected_average_only_in")
    theirs.save_model(str(tmp_path))
    (tmp_path / "activation_scaler.json").write_text('{"scaling_factor": 0.5}')
    ours = load_sae(tmp_path).eval()
    assert ours.input_scale == 0.5
    x = torch.randn(4, D_IN)  # we take raw inputs; SAELens's SAE expects them pre-scaled
    assert torch.allclose(ours.encode(x), theirs.encode(x * 0.5), atol=1e-5)


def test_convert_both_ways_and_clear_refusals(tmp_path: Path) -> None:
    ours = randomised(build_sae(d_in=D_IN, d_sae=D_SAE, arch="gated", seed=0))
    ours.save(tmp_path / "lm")
    convert(tmp_path / "lm", "saelens", tmp_path / "sl")
    convert(tmp_path / "sl", "lmscope", tmp_path / "lm2")
    x = torch.randn(5, D_IN)
    assert torch.allclose(load_sae(tmp_path / "lm2")(x), ours(x), atol=1e-6)
    with pytest.raises(SAELensFormatError, match="no topk transcoder"):
        save_saelens(build_sae(d_in=8, d_sae=16, arch="topk", k=2, d_out=4), tmp_path / "x")
    with pytest.raises(SAELensFormatError, match="'saelens' or 'lmscope'"):
        convert(tmp_path / "lm", "hf", tmp_path / "y")
    data = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    data["architecture"] = "temporal"
    (tmp_path / "sl" / "cfg.json").write_text(json.dumps(data))
    with pytest.raises(SAELensFormatError, match="'temporal' has no lmscope variant"):
        load_saelens(tmp_path / "sl")
