"""The report of the SAE study (examples/sae_features.py): tables, pictures, what the numbers say.

Every sentence of the conclusions is computed from the measured numbers, so a rerun with
other settings (or ``--quick``) writes a report that matches its own results.
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
    return "JumpReLU", f"quadratic L0 loss, target {cfg.target_l0:g}"


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
    text = (
        f"## 1. SAE quality at (roughly) matched L0\n\nEvery SAE reads `{numbers['hook']}` "
        f"({study.model.cfg.d_model} wide) and has {d_sae} "
        f"latents; all were trained together on the same {numbers['trained']['steps']} batches of "
        f"{args.batch} activations from a cache of {args.sae_tokens:,} (Adam, lr 1e-3, linear "
        "decay over the last 20%, sparsity warm-up over the first 10%), then evaluated on "
        f"{numbers['n_rows']} held-out windows of {study.model.cfg.max_seq_len} characters spread "
        "over the validation split (the end of every play). TopK keeps exactly k latents; "
        f"JumpReLU's quadratic loss pulls its L0 towards k = {args.k}; ReLU-L1 has no L0 knob, so "
        "a sweep of L1 coefficients brackets it. CE: next-character cross-entropy (nats) of the "
        "clean model, with the reconstruction replacing the activation, and with the activation "
        "zeroed.\n\n" + markdown_table(head, rows)
    )
    matched = []
    for r in table:
        if r["arch"] == "standard":
            continue
        fvu, rec = (
            _sae.relu_interp(table, r["l0"], "fvu"),
            _sae.relu_interp(table, r["l0"], "loss_recovered"),
        )
        if fvu is not None and rec is not None:
            matched.append(
                f"at {r['label']}'s L0 ({r['l0']:.1f}) ReLU-L1 interpolates to FVU {fvu:.3f} and "
                f"loss recovered {rec:.3f} (against {r['fvu']:.3f} and {r['loss_recovered']:.3f})"
            )
    if matched:
        text += (
            "\n\nAt matched L0 (ReLU-L1 interpolated linearly in log L0 between its sweep "
            "points): " + "; ".join(matched) + "."
        )
    else:
        text += (
            "\n\nThe ReLU-L1 sweep does not bracket the other SAEs' L0, so no matched "
            "comparison is interpolated; compare the points in the picture."
        )
    return text + "\n\n" + image(study, study.picture(), "FVU and loss recovered against L0")


def feature_section(study: InterpretStudy, numbers: dict[str, Any]) -> str:
    """Section 2: the best detector of each label in each SAE, then the TopK features shown."""
    found, base = numbers["features"]["found"], numbers["features"]["base_rates"]
    rows = []
    for label in _sae.LABELS:
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
    labels = "; ".join(
        f"**{k}**: {d} ({_pct(base[k])} of held-out characters)"
        for k, (d, _) in _sae.LABELS.items()
    )
    text = (
        "## 2. Features that detect speaker names, line starts and archaic pronouns\n\n"
        f"Labels, per character: {labels}. For every SAE and label, each latent's activation is "
        "scored as a detector on half of the held-out windows (the even ones); the latent with "
        "the best F1 of *fires vs. labelled* is kept, and its scores are measured on the other "
        "half (AUC: probability that a labelled character gets a higher activation than an "
        "unlabelled one, ties counted half; precision / recall / F1 of activation > 0; density: "
        "how often it fires).\n\n"
        + markdown_table(
            ["label", "SAE", "latent", "AUC", "precision", "recall", "F1", "density"], rows
        )
    )
    shown = numbers["shown"]
    text += (
        "\n\n### The TopK SAE's features\n\nTop contexts on the held-out windows (the strongest "
        "first; `⏎` is a newline; the window is cut 40 characters before and 12 after the "
        "maximum), and the characters each feature's decoder direction promotes most through the "
        "unembedding:\n\n"
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
    args, clamps = study.args, numbers["clamps"]
    f, max_act = numbers["speaker_feature"], numbers["shown"]["max_act"][numbers["speaker_feature"]]
    head = [
        "condition",
        "latent value",
        *[f"{k} (% chars)" for k in _sae.LABELS],
        "capitals (% letters)",
        "speaker lines / 1k chars",
    ]
    rows = [
        [
            r["condition"],
            "-" if r["value"] is None else fmt(r["value"], 2),
            *[
                f"{100 * r['rates'][k]:.2f} ± {100 * r['sem'][k]:.2f}"
                for k in [*_sae.LABELS, "upper"]
            ],
            fmt(r["speaker_lines_per_1k"], 2),
        ]
        for r in clamps
    ]
    examples = "\n\n".join(f"{r['condition']}:\n{r['example']}" for r in clamps)
    return (
        f"## 3. Clamping the speaker-name feature\n\nThe TopK SAE spliced in at "
        f"`{numbers['hook']}` with its reconstruction error kept (`clamp_features`), feature "
        f"{f} set to a fixed value at every position (0 = ablated; multiples of its largest "
        f"held-out activation, {max_act:.2f}). {args.samples} prompts (the first 64 characters "
        f"of held-out windows) continued by {args.new_tokens} sampled characters (temperature "
        f"0.8, seed {args.seed}: the same draws in every condition); the labels are measured "
        "on the generated characters, and the share of generated letters that are capitals "
        "(mean over continuations ± standard error).\n\n"
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
        f"The clearest TopK feature by F1 is the {label} detector (feature {best['feature']}: "
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


def write_report(study: InterpretStudy, numbers: dict[str, Any]) -> None:
    """Write ``<out>/sae_features.md``."""
    intro = (
        "Sparse autoencoders (`lmscope.sae`) on the residual stream of a character-level "
        "Shakespeare model: how well ReLU-L1, TopK and JumpReLU SAEs reconstruct it at about "
        "the same sparsity, which of their latents detect speaker-name lines, line starts and "
        "archaic pronouns (found automatically, measured exactly), and what clamping the "
        "speaker-name feature does to generated text."
    )
    sections = [
        sae_section(study, numbers),
        feature_section(study, numbers),
        clamp_section(study, numbers),
        conclusions(numbers),
    ]
    path = study.write("Study: SAE features of a Shakespeare model", intro, sections)
    if study.args.model is None:  # the model was trained by the study, not loaded
        path.write_text(path.read_text().replace("of it loading the model", "of it training it"))
