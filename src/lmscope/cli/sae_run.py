"""``lmscope sae train | eval | features | steer``: SAEs on a model, from the command line.

Thin wrappers over `lmscope.sae.pipeline.train_on_model`, `lmscope.sae.evaluate`,
`lmscope.sae.features` / `lmscope.sae.dashboard` and `lmscope.sae.splice`. MODEL is
anything `open_model` opens (a run or model directory, a .gguf file, smollm2, a
preset); commands that read an SAE default to the model it was trained on. Data
defaults to what the SAE was trained on, else the Shakespeare corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from lmscope.cli.common import console, open_model, print_json
from lmscope.cli.sae import sae_app
from lmscope.errors import LmscopeError

SaePath = Annotated[str, typer.Argument(help="SAE directory (lmscope's or SAELens's format).")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Model the SAE reads (default: the one it was trained on)."),
]
DataOpt = Annotated[
    str | None,
    typer.Option(help="Text file / folder / glob, or a `lmscope data prepare` directory."),
]
Contexts = Annotated[int, typer.Option(help="Token windows to read.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _open(sae_path: str, model_spec: str | None) -> tuple[Any, Any, Any, str]:
    """The SAE, and the model (with tokenizer and label) it belongs to."""
    from lmscope.sae import load_sae

    sae = load_sae(sae_path)
    spec = model_spec or sae.cfg.run
    if spec is None:
        raise LmscopeError(
            f"{sae_path} does not record the model it was trained on; pass --model MODEL."
        )
    model, tokenizer, label = open_model(spec)
    sae = sae.to(next(model.parameters()).device)
    return sae, model, tokenizer, label


def _data(sae: Any, data: str | None) -> Any:
    """--data, else the data the SAE was trained on, else the default corpus."""
    from lmscope.sae.pipeline import default_data

    return default_data(data if data is not None else sae.cfg.metadata.get("data"))


@sae_app.command()
def train(
    model: Annotated[str, typer.Argument(help="Model: run or model directory, .gguf, preset.")],
    hook: Annotated[
        list[str], typer.Option(help="Hook point to read (repeat: one SAE per hook, one pass).")
    ],
    arch: Annotated[str, typer.Option(help="standard, topk, batchtopk, jumprelu or gated.")] = (
        "topk"
    ),
    k: Annotated[float | None, typer.Option("-k", "--k", help="Latents per input (topk).")] = None,
    width: Annotated[str, typer.Option(help="Latents: 8x (times d_in) or a count.")] = "8x",
    l1: Annotated[float | None, typer.Option(help="L1 coefficient (standard, gated).")] = None,
    data: DataOpt = None,
    tokens: Annotated[int, typer.Option(help="Activations (tokens) to train on.")] = 1_000_000,
    out: Annotated[Path | None, typer.Option(help="Where to save (default: sae-ARCH).")] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache activations on disk here (reused if present).")
    ] = None,
    context_size: Annotated[int, typer.Option(help="Tokens per window.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Activations per training step.")] = 4096,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    normalize: Annotated[bool, typer.Option(help="Scale inputs to mean norm sqrt(d_in).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the SAE's initialisation and shuffling.")] = 0,
    json: Json = False,
) -> None:
    """Train SAEs on a model's activations at one or more hook points."""
    from lmscope.sae.pipeline import train_on_model

    loaded, tokenizer, label = open_model(model, seed=seed)
    target = out or Path(f"sae-{arch}")
    result = train_on_model(
        loaded,
        tokenizer,
        hook,
        data,
        arch=arch,
        k=k,
        width=width,
        l1_coefficient=l1,
        n_tokens=tokens,
        out=target,
        cache_dir=cache_dir,
        context_size=context_size,
        batch_size=batch_size,
        normalize=normalize,
        seed=seed,
        model_name=label,
        run=model,
        progress=not json,
        console=console,
        lr=lr,
    )
    report = {
        "out": str(target),
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": result.elapsed_s,
        "metrics": result.metrics,
    }
    if json:
        print_json(report)
        return
    for name, line in result.metrics.items():
        console.print(
            f"{name}: L0 {line['l0']:.1f}, FVU {line['fvu']:.4f}, dead "
            f"{100 * line['dead_fraction']:.1f}% after {result.tokens:,} activations "
            f"({result.elapsed_s:.1f} s)",
            highlight=False,
        )
    console.print(f"saved to {target}", highlight=False)


@sae_app.command("eval")
def evaluate(
    sae: SaePath,
    model: ModelOpt = None,
    data: DataOpt = None,
    contexts: Contexts = 64,
    context_size: Annotated[int | None, typer.Option(help="Tokens per window.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the density histogram (PNG).")] = None,
    json: Json = False,
) -> None:
    """L0, MSE, FVU, loss recovered (clean / spliced / zero-ablated), dead and dense fractions."""
    from lmscope.sae.evaluate import evaluate_sae, plot_feature_density

    loaded, lm, tokenizer, _ = _open(sae, model)
    result = evaluate_sae(
        lm,
        loaded,
        _data(loaded, data),
        tokenizer=tokenizer,
        context_size=context_size or loaded.cfg.context_size or 128,
        max_contexts=contexts,
    )
    if plot is not None:
        plot_feature_density(result.density, plot, title=f"{sae} at {loaded.cfg.hook_name}")
    if json:
        print_json(result.to_dict())
        return
    table = Table(title=f"{sae} at {loaded.cfg.hook_name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in result.to_dict().items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else f"{value:.4f}")
    console.print(table)


def _example_text(example: Any, tokenizer: Any) -> Text:
    """An example's window with the peak token highlighted, others shaded by activation."""
    text = Text()
    top = max(example.max_act, 1e-9)
    for i, (token, act) in enumerate(zip(example.tokens, example.acts, strict=True)):
        if token < 0:
            continue
        piece = tokenizer.decode([token]) if tokenizer is not None else f"<{token}>"
        piece = piece.replace("\n", "\u21b5")
        if i == example.peak:
            text.append(piece, style="bold black on yellow")
        elif act > 0:
            text.append(piece, style="underline" if act > 0.3 * top else "")
        else:
            text.append(piece, style="dim")
    text.append(f"  ({example.max_act:.3g})", style="dim")
    return text


def _token_list(pairs: list[tuple[int, float]], tokenizer: Any) -> str:
    show = (lambda t: repr(tokenizer.decode([t]))) if tokenizer is not None else str
    return ", ".join(f"{show(t)} {v:+.3f}" for t, v in pairs)


@sae_app.command()
def features(
    sae: SaePath,
    model: ModelOpt = None,
    data: DataOpt = None,
    contexts: Contexts = 512,
    feature: Annotated[list[int] | None, typer.Option(help="Show this feature (repeat).")] = None,
    search: Annotated[str | None, typer.Option(help="Find features that fire on a token.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the offline HTML dashboard.")] = None,
    top: Annotated[int, typer.Option(help="Top contexts per feature.")] = 10,
    json: Json = False,
) -> None:
    """Top contexts, quantile samples and logit effects of features; search; dashboard."""
    from lmscope.sae.dashboard import write_dashboard
    from lmscope.sae.features import collect_features, search_features

    loaded, lm, tokenizer, _ = _open(sae, model)
    only = feature if feature and search is None and html is None else None
    stats = collect_features(
        lm,
        loaded,
        _data(loaded, data),
        features=only,
        k=top,
        tokenizer=tokenizer,
        context_size=loaded.cfg.context_size or 128,
        max_contexts=contexts,
    )
    report: dict[str, Any] = {"n_tokens": stats.n_tokens}
    if html is not None:
        write_dashboard(stats, html, tokenizer=tokenizer, title=f"{sae} ({loaded.cfg.hook_name})")
        report["html"] = str(html)
        if not json:
            console.print(f"dashboard of {len(stats.features)} features: {html}", highlight=False)
    if search is not None:
        found = search_features(stats, search, tokenizer)
        report["search"] = found
        if not json:
            table = Table(title=f"features firing on {search!r}")
            for column in ("feature", "mean act", "top contexts on it", "density"):
                table.add_column(column, justify="right")
            for m in found[:20]:
                table.add_row(
                    str(m["feature"]),
                    f"{m['mean_activation']:.3f}",
                    f"{100 * m['fraction']:.0f}%",
                    f"{m['density']:.2e}",
                )
            console.print(table if found else f"no feature peaks on {search!r}.")
    shown = feature or ([] if html is not None or search is not None else _busiest(stats, 5))
    report["features"] = []
    for f in shown:
        effect = stats.logit_effect(f)
        examples = stats.top_examples(f)
        report["features"].append(
            {
                "feature": f,
                "density": float(stats.density[stats.row(f)]),
                "top": [{"tokens": e.tokens, "acts": e.acts, "max": e.max_act} for e in examples],
                **effect,
            }
        )
        if json:
            continue
        console.rule(f"feature {f}  density {float(stats.density[stats.row(f)]):.2e}")
        for e in examples:
            console.print(_example_text(e, tokenizer))
        console.print(
            f"promotes: {_token_list(effect['promoted'][:8], tokenizer)}", highlight=False
        )
        console.print(
            f"suppresses: {_token_list(effect['suppressed'][:8], tokenizer)}", highlight=False
        )
    if json:
        print_json(report)


def _busiest(stats: Any, n: int) -> list[int]:
    """The `n` features with the strongest top activation (what a first look shows)."""
    order = stats.top.value[:, 0].argsort(descending=True)[:n]
    return [stats.features[int(i)] for i in order]


@sae_app.command()
def steer(
    sae: SaePath,
    feature: Annotated[int, typer.Option(help="Feature to steer with.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    model: ModelOpt = None,
    coef: Annotated[float, typer.Option(help="Add coef * W_dec[feature] at every position.")] = (
        5.0
    ),
    clamp: Annotated[
        float | None, typer.Option(help="Clamp the feature to this value instead of adding.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 40,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for sampling.")] = None,
    json: Json = False,
) -> None:
    """Generate with and without a feature edit (steering, or clamping with --clamp)."""
    from lmscope.generate import generate
    from lmscope.sae.splice import splice_sae

    loaded, lm, tokenizer, _ = _open(sae, model)
    if tokenizer is None:
        raise LmscopeError("steering from a text prompt needs the model's tokenizer.")
    kwargs = {"tokenizer": tokenizer, "max_new_tokens": max_new_tokens}
    kwargs |= {"temperature": temperature, "seed": seed}
    base = generate(lm, prompt, **kwargs)
    with splice_sae(lm, loaded) as splice:
        if clamp is not None:
            splice.clamp_features({feature: clamp})
        else:
            splice.steer_with_feature(feature, coef)
        edited = generate(lm, prompt, **kwargs)
    edit = f"clamp {clamp:g}" if clamp is not None else f"coef {coef:g}"
    report = {
        "prompt": prompt,
        "feature": feature,
        "edit": edit,
        "baseline": (base.texts or [""])[0],
        "steered": (edited.texts or [""])[0],
    }
    if json:
        print_json(report)
        return
    console.rule("baseline")
    console.print(Text(prompt, style="bold") + Text(report["baseline"]))
    console.rule(f"feature {feature}, {edit}")
    console.print(Text(prompt, style="bold") + Text(report["steered"]))
