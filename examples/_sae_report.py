"""The reports of the SAE studies (examples/sae_features.py, examples/sae_smollm2.py): tables,
pictures, what the numbers say.

Every sentence of the conclusions is computed from the measured numbers, so a rerun with
other settings (or ``--quick``) writes a report that matches its own results. The two
studies differ in the unit of their text (``numbers["unit"]``: character or token) and
their labels (``numbers["labels"]``).
"""

from __future__ import annotations

from typing import Any

import _sae
from _common import fmt, markdown_table
from _interpret import InterpretStudy, cell, code_block, image


def describe_sae(sae: Any) -> tuple[str, str]:
    """(variant label, its sparsity setting) for the table."""
    cfg = sae.cfg
    if cfg.arch == "standard":
        return "ReLU-L1", f"L1 coefficient {cfg.l1_coefficient:g}"
    if cfg.arch == "topk":
        return "TopK", f"k = {cfg.k}"
    start = (
        f"thresholds from the data (L0 {cfg.jumprelu_init_l0:g})"
        if cfg.jumprelu_init_l0 is not None
        else f"thresholds from {cfg.jumprelu_init_threshold:g}"
    )
    return "JumpReLU", f"quadratic L0 loss, target {cfg.target_l0:g}; {start}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sae_section(study: InterpretStudy, numbers: dict[str, Any]) -> str:
    """Section 1: L0, FVU and loss recovered of every SAE, and the matched comparison."""
    args, table = study.args, numbers["table"]
    d_sae = next(iter(numbers["trained"]["saes"].values())).d_sae
    rows = [
        [
            r["label"],
            r["setting"],
            fmt(r["l0"], 1),
            fmt(r["fvu"]),
            fmt(r["loss_recovered"]),
            fmt(r["ce_clean"]),
            fmt(r["ce_spliced"]),
            fmt(r["ce_zero"]),
            _pct(r["dead_fraction"]),
        ]
        for r in table
    ]
    head = [
        "SAE",
        "sparsity setting",
        "L0",
        "FVU",
        "loss recovered",
        "CE clean",
        "CE spliced",
        "CE zero-ablated",
        "dead latents",
    ]
    trained, unit = numbers["trained"], numbers["unit"]
    text = (
        f"## 1. SAE quality at matched L0\n\nEvery SAE reads `{numbers['hook']}` "
        f"({study.model.cfg.d_model} wide) and has {d_sae} latents; all were trained together "
        f"on the same {trained['steps']} batches of {args.batch} activations from an on-disk "
        f"cache of {trained['cache_rows']:,} (one per {unit} of training text, windows of "
        f"{trained['context']} {unit}s; Adam, lr {args.lr:g}, linear decay over the last 20%, "
        "sparsity warm-up over the first 10%), then evaluated on "
        f"{numbers['n_rows']} held-out windows of {trained['context']} {unit}s spread over the "
        "validation split (the end of every play). TopK keeps exactly k latents; JumpReLU's "
        f"quadratic loss pulls its L0 towards k = {args.k}, from thresholds set on the first "
        "batch where each latent fires on k / d_sae of it; ReLU-L1 has no L0 knob, so a sweep "
        f"of L1 coefficients brackets k. CE: next-{unit} cross-entropy (nats) of the clean "
        "model, with the reconstruction replacing the activation, and with the activation "
        "zeroed.\n\n" + markdown_table(head, rows)
    )
    return (
        text
        + "\n\n"
        + matched_section(table, args.k)
        + "\n\n"
        + image(study, study.picture(), "FVU and loss recovered against L0")
    )


#: How far from the target L0 an SAE may land and still count as matched.
MATCH_TOLERANCE = 0.15


def matched_rows(table: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """One row per family at the target L0: TopK and JumpReLU as measured, ReLU-L1 read
    off its sweep at the target (`metrics.at_l0`, linear in log L0), or None if the
    sweep does not reach it."""
    out = [dict(r, how="measured") for r in table if r["arch"] != "standard"]
    relu = sorted((r for r in table if r["arch"] == "standard"), key=lambda r: r["l0"])
    fvu, rec = (_sae.relu_interp(table, target, key) for key in ("fvu", "loss_recovered"))
    if fvu is not None and rec is not None:
        below = [r for r in relu if r["l0"] <= target]
        above = [r for r in relu if r["l0"] >= target]
        ends = f"{below[-1]['setting']} and {above[0]['setting']}" if below and above else ""
        out.insert(
            0,
            {
                "label": "ReLU-L1",
                "how": f"interpolated in log L0 between {ends}",
                "l0": target,
                "fvu": fvu,
                "loss_recovered": rec,
            },
        )
    for r in out:
        r["matched"] = abs(r["l0"] - target) <= MATCH_TOLERANCE * target
    return out


def matched_section(table: list[dict[str, Any]], target: float) -> str:
    """The table of the three families at the target L0, and whether each got there."""
    rows = matched_rows(table, target)
    body = [
        [
            r["label"],
            r["how"],
            fmt(r["l0"], 1),
            fmt(r["fvu"]),
            fmt(r["loss_recovered"]),
            "yes" if r["matched"] else "no",
        ]
        for r in rows
    ]
    head = ["SAE", "how", "L0", "FVU", "loss recovered", f"within {MATCH_TOLERANCE:.0%}"]
    text = f"### At matched L0 (target {target:g})\n\n" + markdown_table(head, body)
    if not any(r["label"] == "ReLU-L1" for r in rows):
        text += (
            f"\n\nThe ReLU-L1 sweep does not reach L0 {target:g}, so ReLU-L1 has no point at "
            "the target; compare the points in the picture."
        )
    return text


def feature_section(study: InterpretStudy, numbers: dict[str, Any]) -> str:
    """Section 2: the best detector of each label in each SAE, then the TopK features shown."""
    found, base = numbers["features"]["found"], numbers["features"]["base_rates"]
    unit, labels = numbers["unit"], numbers["labels"]
    rows = []
    for label in labels:
        for name, picks in found.items():
            p = picks[label]
            rows.append(
                [
                    label if name == next(iter(found)) else "",
                    name,
                    p["feature"],
                    fmt(p["auc"]),
                    fmt(p["precision"], 2),
                    fmt(p["recall"], 2),
                    fmt(p["f1"], 2),
                    _pct(p["density"]),
                ]
            )
    described = "; ".join(
        f"**{k}**: {d} ({_pct(base[k])} of held-out {unit}s)" for k, (d, _) in labels.items()
    )
    text = (
        "## 2. Features that detect speaker names, line starts and archaic words\n\n"
        f"Labels, per {unit}: {described}. For every SAE and label, each latent's activation is "
        f"scored as a detector on half of {numbers['n_feature_rows']} held-out windows (the even "
        "ones); the latent with "
        "the best F1 of *fires vs. labelled* is kept, and its scores are measured on the other "
        f"half (AUC: probability that a labelled {unit} gets a higher activation than an "
        "unlabelled one, ties counted half; precision / recall / F1 of activation > 0; density: "
        "how often it fires).\n\n"
        + markdown_table(
            ["label", "SAE", "latent", "AUC", "precision", "recall", "F1", "density"], rows
        )
    )
    shown, (before, after) = numbers["shown"], numbers["window"]
    text += (
        "\n\n### The TopK SAE's features\n\nTop contexts on the held-out windows (the strongest "
        f"first; `⏎` is a newline; the window is cut {before} {unit}s before and {after} after "
        f"the maximum), and the {unit}s each feature's decoder direction promotes most through "
        "the unembedding:\n\n"
    )
    for label, p in found["topk"].items():
        promoted = " ".join(cell(t) for t in shown["promoted"][label])
        text += f"**{label}**, feature {p['feature']} (promotes {promoted}):\n\n"
        text += code_block("\n".join(t.replace("\n", "⏎") for t in shown["texts"][label])) + "\n\n"
    html = shown["html"].relative_to(study.out).as_posix()
    return text + (
        f"The same features in an offline dashboard: [{html}]({html}) (top contexts, quantile "
        "samples, logit effects). Cards: each feature's top contexts shaded by activation, and "
        "the distribution of its nonzero activations on and off its label (measurement half).\n\n"
        + image(study, study.picture("cards"), "feature cards")
    )


def clamp_section(study: InterpretStudy, numbers: dict[str, Any]) -> str:
    """Section 3: generations with the speaker feature clamped, measured."""
    args, clamps, unit, labels = study.args, numbers["clamps"], numbers["unit"], numbers["labels"]
    f, max_act = numbers["speaker_feature"], numbers["shown"]["max_act"][numbers["speaker_feature"]]
    head = [
        "condition",
        "latent value",
        *[f"{k} (% chars)" for k in labels],
        "capitals (% letters)",
        "speaker lines / 1k chars",
    ]
    rows = [
        [
            r["condition"],
            "-" if r["value"] is None else fmt(r["value"], 2),
            *[f"{100 * r['rates'][k]:.2f} ± {100 * r['sem'][k]:.2f}" for k in [*labels, "upper"]],
            fmt(r["speaker_lines_per_1k"], 2),
        ]
        for r in clamps
    ]
    examples = "\n\n".join(f"{r['condition']}:\n{r['example']}" for r in clamps)
    return (
        f"## 3. Clamping the speaker-name feature\n\nThe TopK SAE spliced in at "
        f"`{numbers['hook']}` with its reconstruction error kept (`clamp_features`), feature "
        f"{f} set to a fixed value at every position (0 = ablated; multiples of its largest "
        f"held-out activation, {max_act:.2f}). {args.samples} prompts (the first "
        f"{numbers['prompt_tokens']} {unit}s of held-out windows) continued by "
        f"{args.new_tokens} sampled {unit}s (temperature 0.8, seed {args.seed}: the same draws "
        "in every condition); the labels are measured per character of the generated text, "
        "and the share of generated letters that are capitals (mean over continuations ± "
        "standard error).\n\n"
        + markdown_table(head, rows)
        + "\n\n"
        + image(study, study.picture("clamping"), "label rates under clamping")
        + "\n\nThe first continuation under each condition:\n\n"
        + code_block(examples)
    )


def conclusions(numbers: dict[str, Any]) -> str:
    """What the numbers show, read off the numbers."""
    clamps = numbers["clamps"]
    clean = clamps[0]
    clamped = clamps[2:]
    top = max(clamped, key=lambda r: r["rates"]["speaker"])
    topk = numbers["features"]["found"]["topk"]
    label, best = max(topk.items(), key=lambda kv: kv[1]["f1"])
    rate = {r["condition"]: f"{100 * r['rates']['speaker']:.2f}%" for r in clamps}
    gap = top["rates"]["speaker"] - clean["rates"]["speaker"]
    noise = 2 * (top["sem"]["speaker"] ** 2 + clean["sem"]["speaker"] ** 2) ** 0.5
    verdict = "more than" if gap > noise else "not more than"
    caps = {r["condition"]: f"{100 * r['rates']['upper']:.1f}%" for r in clamps}
    return (
        "## What the numbers show\n\n"
        + matched_summary(numbers["table"], numbers["k"])
        + f" The clearest TopK feature by F1 is the {label} detector (feature {best['feature']}: "
        f"precision {best['precision']:.2f}, recall {best['recall']:.2f}, AUC "
        f"{best['auc']:.3f} on windows it was not chosen on). Clamped to "
        f"{top['condition']}, the speaker-name feature made {rate[top['condition']]} of the "
        f"generated characters fall inside speaker-name lines, against {rate['clean']} for the "
        f"clean model ({verdict} twice the standard error of the difference); ablated, "
        f"{rate['ablated']}. Capitals made up {caps['clean']} of the clean model's generated "
        f"letters and {caps[top['condition']]} under {top['condition']}. Per condition: "
        + ", ".join(f"{r['condition']} {rate[r['condition']]}" for r in clamps)
        + ". One model, one seed of each SAE, and a few dozen sampled continuations: the "
        "comparison is of these samples, not of the model's behaviour in general."
    )


def matched_summary(table: list[dict[str, Any]], target: float) -> str:
    """One sentence per family at the target L0, from `matched_rows`."""
    rows = matched_rows(table, target)
    parts = [
        f"{r['label']} {'at' if r['matched'] else 'missed the target, at'} L0 {r['l0']:.1f}: "
        f"FVU {r['fvu']:.3f}, loss recovered {_pct(r['loss_recovered'])}"
        + (" (interpolated)" if r["how"].startswith("interpolated") else "")
        for r in rows
    ]
    best = min((r for r in rows if r["matched"]), key=lambda r: r["fvu"], default=None)
    lead = f"At L0 {target:g}: " + "; ".join(parts) + "."
    return lead + (f" {best['label']} reconstructs best there." if best else "")


def write_report(study: InterpretStudy, numbers: dict[str, Any], title: str, intro: str) -> None:
    """Write ``<out>/<study name>.md`` from the numbers of `_sae_study.run_analyses`."""
    sections = [
        sae_section(study, numbers),
        feature_section(study, numbers),
        clamp_section(study, numbers),
        conclusions(numbers),
    ]
    path = study.write(title, intro, sections)
    if study.args.model is None:  # the model was trained by the study, not loaded
        path.write_text(path.read_text().replace("of it loading the model", "of it training it"))
