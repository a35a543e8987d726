"""SAE training throughput and quality: lmscope's trainer against SAELens's, same run.

Usage::

    python bench/sae_train.py [--quick] [--data PATH] [--rows 2000000] [--d-in 576]
                              [--expansion 8] [--batch 4096] [--steps 200] [--rounds 3]
                              [--k 32] [--l1 5.0 ...] [--threads N] [--json out.json]

Both trainers read the *same* pre-computed activations, in the same order, as
``[batch, d_in]`` tensors: SAELens's ``SAETrainer`` through its data-provider iterator
(no model, no activation store), lmscope's ``train_sae`` through the same iterator.
Same width (``d_in * expansion``), batch, learning rate and schedule (linear warm-up
over 5% of the steps, constant, linear decay to 0 over the last 20%), Adam (0.9,
0.999), gradient clipping at 1, dead window ``steps // 4`` batches, AuxK coefficient
1/32 (TopK). Each library keeps its own design choices: lmscope keeps TopK decoder rows at
unit norm and starts b_dec at the geometric median of the first batch
(``--lmscope-b-dec zero`` starts it at 0 instead); SAELens rescales pre-activations by
decoder norms and starts b_dec at 0.

Variants: TopK (k = ``--k``) and ReLU-L1 (decoder-norm-weighted L1, coefficient
``--l1``). Each round trains a fresh SAE of each variant with each library, in
alternating order; throughput (activations / s of ``fit``) is the median over rounds
and the ratio is lmscope / SAELens (the target is >= 1). Quality: L0 and FVU (fraction
of variance unexplained against the batch mean) on held-out activations. TopK's L0 is k
for both; for ReLU-L1, give several ``--l1`` values and FVU is compared at matched L0
by interpolating each library's (L0, FVU) curve in log L0.

Data: ``--data`` a ``.npy`` / ``.pt`` / ``.safetensors`` file of ``[rows, d_in]``
activations or an lmscope activation-cache directory (``--hook`` picks the hook).
Without it, structured synthetic activations are made once and kept in
``bench/.cache/``: a sparse sum of ``4 * d_in`` unit directions with Zipf-like
frequencies and log-normal magnitudes, a shared offset and a little noise, scaled to
mean norm sqrt(d_in).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _sibling import sibling

os.environ.setdefault("TQDM_DISABLE", "1")  # SAELens's progress bar would time itself
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch
from torch import Tensor

from lmscope.sae import build_sae, metrics
from lmscope.sae.trainer import train_sae

TARGET_RATIO = 1.0
CACHE = Path(__file__).resolve().parent / ".cache"
QUICK = {"rows": 12_000, "d_in": 64, "batch": 256, "steps": 24, "rounds": 2, "k": 8, "lr": 3e-3}
HELD_OUT = 8192


def _forward_bench() -> Any:
    """bench/forward.py (machine description), imported by path."""
    return sibling("forward")


# --- data ------------------------------------------------------------------------------
def synthetic(rows: int, d_in: int, path: Path, seed: int = 0, chunk: int = 65536) -> Path:
    """Write structured synthetic activations to `path` (.npy), once; returns the path."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    n_features, per_row = 4 * d_in, 24
    directions = torch.nn.functional.normalize(torch.randn(n_features, d_in, generator=gen), dim=1)
    freq = 1.0 / torch.arange(1, n_features + 1).float() ** 0.8  # Zipf-like: a few common ones
    offset = torch.randn(d_in, generator=gen) * 0.5
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, d_in))
    scale = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        which = torch.multinomial(freq, n * per_row, replacement=True, generator=gen)
        size = torch.exp(torch.randn(n * per_row, generator=gen) * 0.5)
        size *= torch.rand(n * per_row, generator=gen) < 0.5  # ~12 active per row
        x = torch.nn.functional.embedding_bag(
            which.view(n, per_row), directions, per_sample_weights=size.view(n, per_row), mode="sum"
        )
        x = x + offset + 0.05 * torch.randn(n, d_in, generator=gen)
        if scale is None:  # mean norm sqrt(d_in), as normalised activations
            scale = d_in**0.5 / float(x.norm(dim=1).mean())
        out[start : start + n] = (x * scale).numpy()
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def load_data(args: argparse.Namespace) -> Tensor:
    """The activations: ``--data`` or the cached synthetic set (memory-mapped when .npy)."""
    path = Path(args.data) if args.data else None
    if path is None:
        name = f"synthetic_{args.rows}x{args.d_in}.npy"
        path = synthetic(args.rows, args.d_in, Path(args.cache) / name)
    if path.is_dir():
        return _from_activation_cache(path, args.hook, args.rows)
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, mmap_mode="c"))[: args.rows]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return next(iter(tensors.values()))[: args.rows]
    return torch.load(path, weights_only=True)[: args.rows]


def _from_activation_cache(path: Path, hook: str | None, rows: int) -> Tensor:
    from lmscope.sae.disk_cache import DiskActivations

    cache = DiskActivations(path)
    name = hook or next(iter(cache.hooks))
    cache.check_hooks([name])
    parts, total = [], 0
    for shard, info in enumerate(cache.manifest["shards"]):
        take = min(int(info["rows"]), rows - total)
        if take <= 0:
            break
        parts.append(cache.read(shard, 0, take, [name])[name])
        total += take
    return torch.cat(parts)


def batches(data: Tensor, batch: int, steps: int, offset: int) -> Iterator[Tensor]:
    """`steps` consecutive batches from row `offset` (wrapping), as fresh float32 tensors."""
    n = data.shape[0] - HELD_OUT
    for i in range(steps):
        start = (offset + i * batch) % max(n - batch, 1)
        yield data[start : start + batch].float().clone()


# --- the two trainers ------------------------------------------------------------------
def schedule(steps: int) -> dict[str, int]:
    return {"warmup": max(steps // 20, 1), "decay": max(steps // 5, 1), "dead": max(steps // 4, 1)}


def lmscope_run(variant: dict[str, Any], args: argparse.Namespace, data: Iterator[Tensor]) -> Any:
    s = schedule(args.steps)
    sae = build_sae(d_in=args.d_in, expansion_factor=args.expansion, seed=0, **variant)
    train_sae(
        sae,
        data,
        total_steps=args.steps,
        lr=args.lr,
        lr_warmup_steps=s["warmup"],
        lr_schedule="linear",
        lr_decay_steps=s["decay"],
        dead_after_tokens=s["dead"] * args.batch,
        log_every=10**9,
        geometric_median_init=args.lmscope_b_dec == "median",
    )
    return sae


def saelens_run(variant: dict[str, Any], args: argparse.Namespace, data: Iterator[Tensor]) -> Any:
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    s = schedule(args.steps)
    d_sae = round(args.d_in * args.expansion)
    torch.manual_seed(0)
    if variant["arch"] == "topk":
        cfg = sae_lens.TopKTrainingSAEConfig(
            d_in=args.d_in, d_sae=d_sae, k=variant["k"], aux_loss_coefficient=1 / 32
        )
        sae = sae_lens.TopKTrainingSAE(cfg)
    else:
        cfg = sae_lens.StandardTrainingSAEConfig(
            d_in=args.d_in, d_sae=d_sae, l1_coefficient=variant["l1_coefficient"]
        )
        sae = sae_lens.StandardTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr,  # "constant" decays linearly from lr over lr_decay_steps
        lr_scheduler_name="constant",
        lr_warm_up_steps=s["warmup"],
        lr_decay_steps=s["decay"],
        dead_feature_window=s["dead"],
        feature_sampling_window=10**9,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(trainer_cfg, sae, data).fit()
    return sae.eval()


@torch.no_grad()
def quality(sae: Any, held_out: Tensor) -> dict[str, float]:
    """L0 and FVU of `sae` (either library's) on held-out activations."""
    acts = sae.encode(held_out)
    recon = sae.decode(acts)
    return {"l0": float(metrics.l0(acts)), "fvu": float(metrics.fvu(recon, held_out))}


def fvu_at_l0(points: list[dict[str, float]], l0: float) -> float | None:
    """FVU of a (L0, FVU) curve at `l0`, linear in log L0; None outside the curve."""
    return metrics.at_l0(((p["l0"], p["fvu"]) for p in points), l0)


# --- the run -----------------------------------------------------------------------------
def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out = {f"topk k={args.k}": {"arch": "topk", "k": args.k}}
    for l1 in args.l1:
        out[f"relu-l1 {l1:g}"] = {"arch": "standard", "l1_coefficient": l1}
    return out


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every variant with both libraries; returns the results (threads restored)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, log)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    data = load_data(args)
    args.d_in = data.shape[1]
    held_out = data[-HELD_OUT:].float().clone()
    trainers = {"lmscope": lmscope_run, "saelens": saelens_run}
    results: dict[str, Any] = {
        "machine": _forward_bench().machine_info(),
        "settings": {
            k: getattr(args, k)
            for k in ("rows", "d_in", "expansion", "batch", "steps", "lr", "lmscope_b_dec")
        },
        "data": args.data or "synthetic",
        "variants": {},
    }
    import sae_lens

    results["machine"]["sae_lens"] = sae_lens.__version__
    log(f"{data.shape[0]} x {args.d_in} activations, width {args.expansion}x, batch {args.batch}")
    for name, variant in variants(args).items():
        times: dict[str, list[float]] = {lib: [] for lib in trainers}
        last: dict[str, Any] = {}
        for r in range(args.rounds):
            order = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
            for lib in order:
                stream = batches(data, args.batch, args.steps, offset=r * args.batch)
                start = time.perf_counter()
                last[lib] = trainers[lib](variant, args, stream)
                times[lib].append(time.perf_counter() - start)
        row: dict[str, Any] = {}
        for lib in trainers:
            acts_per_s = args.steps * args.batch / statistics.median(times[lib])
            row[lib] = {
                "acts_per_s": acts_per_s,
                "seconds": times[lib],
                **quality(last[lib], held_out),
            }
        row["throughput_ratio"] = row["lmscope"]["acts_per_s"] / row["saelens"]["acts_per_s"]
        results["variants"][name] = row
        log(
            f"{name:>14}: lmscope {row['lmscope']['acts_per_s']:,.0f} acts/s (L0 "
            f"{row['lmscope']['l0']:.1f}, FVU {row['lmscope']['fvu']:.4f}) | SAELens "
            f"{row['saelens']['acts_per_s']:,.0f} acts/s (L0 {row['saelens']['l0']:.1f}, FVU "
            f"{row['saelens']['fvu']:.4f}) | ratio {row['throughput_ratio']:.2f}"
        )
    results["matched_l0"] = matched(results["variants"])
    return results


def matched(rows: dict[str, Any]) -> dict[str, Any]:
    """ReLU-L1: each library's FVU at the other's L0s (where both curves reach)."""
    relu = [row for name, row in rows.items() if name.startswith("relu")]
    curves = {lib: [r[lib] for r in relu] for lib in ("lmscope", "saelens")}
    out = []
    for point in curves["lmscope"] + curves["saelens"]:
        a, b = fvu_at_l0(curves["lmscope"], point["l0"]), fvu_at_l0(curves["saelens"], point["l0"])
        if a is not None and b is not None:
            out.append({"l0": point["l0"], "lmscope_fvu": a, "saelens_fvu": b})
    return {"relu_l1": out}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="Tiny sizes for a smoke test.")
    p.add_argument("--data", help=".npy/.pt/.safetensors activations or an activation cache.")
    p.add_argument("--hook", help="The hook to read from an activation cache.")
    p.add_argument("--cache", default=str(CACHE), help="Where the synthetic data is kept.")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--expansion", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--l1", type=float, nargs="+", default=[5.0])
    p.add_argument(
        "--lmscope-b-dec",
        choices=("median", "zero"),
        default="median",
        help="lmscope's b_dec start: the geometric median (its default) or 0 (SAELens's).",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default).")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse `argv`, run, write ``--json`` if asked; returns the results."""
    args = parse_args(argv)
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
