"""Draw worked examples and token traces as rich tables that fit an 80-column terminal.

Computation lives in `lmscope.explain.examples` and `lmscope.explain.trace`; this module
only formats their data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from lmscope.explain.data import Array, Discrepancy, Example, Values
from lmscope.explain.trace import HeadTrace, LayerTrace, MLPTrace, TokenTrace

#: Vectors wider than this are shown as their first entries, "..." and the L2 norm
#: (with a 14-character label column, 6 numbers is what fits 80 columns).
_MAX_SHOWN = 6
#: Keys shown in a trace's attention table (those with the largest weights).
_MAX_KEYS = 8


def _num(v: float | int | None, digits: int = 6) -> str:
    if v is None:
        return "masked"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1e4:
        return f"{v:.3e}"
    return f"{v:.{digits}f}"


def _doc(value: object) -> str:
    """A document figure as the document writes it (short floats, strings as is)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_doc(v) for v in value) + "]"
    return str(value)


def _true(value: object) -> str:
    """A computed figure, to 6 decimals."""
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list):
        return "[" + ", ".join(_true(v) for v in value) + "]"
    return str(value)


# --- worked examples --------------------------------------------------------------------


def _vector_table(arrays: Sequence[Array]) -> Table:
    """Vectors sharing column labels, one row each."""
    cols = arrays[0].cols or [str(i) for i in range(len(arrays[0].values))]  # type: ignore[arg-type]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("")
    for c in cols:
        table.add_column(c, justify="right")
    for arr in arrays:
        assert isinstance(arr.values, list)
        table.add_row(arr.name, *(_num(v) for v in arr.values))  # type: ignore[arg-type]
    return table


def _matrix_table(arr: Array) -> Table:
    """A matrix with labelled rows and columns; its name heads the label column."""
    rows: list[list[float]] = arr.values  # type: ignore[assignment]
    cols = arr.cols or [str(j) for j in range(len(rows[0]))]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column(arr.name, style="bold")
    for c in cols:
        table.add_column(c, justify="right")
    for i, row in enumerate(rows):
        label = arr.rows[i] if arr.rows else str(i)
        table.add_row(label, *(_num(v) for v in row))
    return table


def _is_matrix(values: Values) -> bool:
    return isinstance(values, list) and bool(values) and isinstance(values[0], list)


def _render_arrays(arrays: list[Array], console: Console) -> None:
    group: list[Array] = []  # consecutive vectors with the same columns share a table

    def flush() -> None:
        if group:
            console.print(Padding(_vector_table(group), (0, 0, 1, 2), expand=False))
            group.clear()

    for arr in arrays:
        if not isinstance(arr.values, list):
            flush()
            console.print(f"  {arr.name} = [bold]{_num(arr.values)}[/]", highlight=False)
        elif _is_matrix(arr.values):
            flush()
            console.print(Padding(_matrix_table(arr), (0, 0, 1, 2), expand=False))
        else:
            if group and group[0].cols != arr.cols:
                flush()
            group.append(arr)
    flush()


def _render_discrepancy(d: Discrepancy, console: Console) -> None:
    text = Text()
    text.append(f"  ! {d.what}\n", style="bold yellow")
    text.append("    document says: ", style="yellow")
    text.append(_doc(d.document_value) + "\n")
    text.append("    true value:    ", style="green")
    text.append(_true(d.true_value) + "\n")
    console.print(text, end="")
    console.print(Padding(Text(d.note, style="dim"), (0, 0, 0, 4), expand=False))


def render_example(example: Example, console: Console) -> None:
    """Print one worked example: its steps with labelled tables, discrepancies, checks."""
    console.rule(f"[bold]{example.id}[/]  {example.title}")
    console.print(f"[dim]source:[/] {example.source}", highlight=False)
    console.print(f"[dim]computed by:[/] {example.modules}", highlight=False)
    for i, step in enumerate(example.steps, 1):
        console.print(f"\n[bold cyan]Step {i}. {step.label}[/]", highlight=False)
        console.print(step.explanation, highlight=False)
        _render_arrays(step.arrays, console)
    if example.discrepancies:
        console.print("\n[bold]Where the document differs[/]")
        for d in example.discrepancies:
            _render_discrepancy(d, console)
    else:
        console.print("\nThe document's figures agree with the modules (to its rounding).")
    for c in example.checks:
        mark = "[green]ok[/]" if c.passed else "[bold red]FAILED[/]"
        err = "" if c.max_error is None else f" (max error {c.max_error:.1e})"
        console.print(f"  {mark} {c.what}{err}", highlight=False)
    console.print()


def render_examples(examples: Sequence[Example], console: Console) -> None:
    """Print several worked examples one after the other."""
    for example in examples:
        render_example(example, console)


# --- token traces -------------------------------------------------------------------------


def _table(*columns: str, right: bool = True) -> Table:
    """A compact table; numeric columns (all but the first) right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if right and i else "left")
    return table


def _cell(v: float) -> str:
    """A number in 7 characters (fewer decimals for large values, so columns stay put)."""
    if abs(v) < 10:
        return f"{v:7.4f}"
    return f"{v:7.2f}" if abs(v) < 1e4 else f"{v:7.0e}"


def _short(values: list[float]) -> str:
    """A vector in one cell: its first entries, and '...' when there are more."""
    text = " ".join(_cell(v) for v in values[:_MAX_SHOWN])
    return text + " ..." if len(values) > _MAX_SHOWN else text


def _norm(values: list[float]) -> str:
    return _cell(math.sqrt(sum(v * v for v in values))).strip()


def _vectors(rows: list[tuple[str, list[float] | float | None]]) -> Table:
    """Quantities of one stage: name, L2 norm (|x|) and the (first) entries."""
    table = _table("quantity", "|x|", "values")
    table.columns[2].justify = "left"
    for name, v in rows:
        if isinstance(v, list):
            table.add_row(name, _norm(v), _short(v))
        elif v is not None:
            table.add_row(name, "", _cell(v))
    return table


def _attention(att: HeadTrace, trace: TokenTrace, console: Console) -> None:
    visible = [j for j, score in enumerate(att.scores) if score is not None]
    keys: Sequence[int] = visible
    caption = f"head {att.head}: attention from {trace.labels[trace.position]}"
    if len(visible) > _MAX_KEYS:  # the keys with the largest weights, in sequence order
        keys = sorted(sorted(visible, key=lambda j: -att.pattern[j])[:_MAX_KEYS])
        caption += f", the {_MAX_KEYS} largest of {len(visible)} weights"
    if len(visible) < len(att.scores):
        caption += f" ({len(att.scores) - len(visible)} masked keys not shown)"
    table = _table("key", "token", "score", "weight")
    table.columns[1].justify = "left"
    for j in keys:
        score = att.scores[j]
        table.add_row(
            str(j),
            trace.labels[j],
            "masked" if score is None else f"{score:.4f}",
            f"{att.pattern[j]:.4f}",
        )
    console.print("\n" + caption, highlight=False)
    console.print(table)


def _mlp(mlp: MLPTrace, console: Console) -> None:
    moe = mlp.experts is not None
    gated = any(n.linear is not None for n in mlp.top_neurons)
    caption = "top MLP neurons by |activation|"
    if moe:
        weights = mlp.expert_weights or []
        routed = ", ".join(
            f"{e} ({w:.3f})" for e, w in zip(mlp.experts or [], weights, strict=True)
        )
        caption += f"; routed to experts (weight) {routed}"
    columns = (["expert"] if moe else []) + ["neuron", "gate pre" if gated else "pre"]
    table = _table(*columns, *(["linear"] if gated else []), "post")
    for n in mlp.top_neurons:
        cells = ([str(n.expert)] if moe else []) + [str(n.index), f"{n.pre:.4f}"]
        if gated:
            cells.append("" if n.linear is None else f"{n.linear:.4f}")
        table.add_row(*cells, f"{n.post:.4f}")
    console.print("\n" + caption, highlight=False)
    console.print(table)


def _layer(layer: LayerTrace, trace: TokenTrace, console: Console) -> None:
    att = layer.attention
    where = "before" if trace.norm_placement == "pre" else "after"
    console.print(
        f"\n[bold cyan]layer {layer.layer}[/] [dim](ln1 scale: sqrt(var + eps) of the norm "
        f"{where} attention)[/]",
        highlight=False,
    )
    rows: list[tuple[str, list[float] | float | None]] = [
        ("resid_pre", layer.resid_pre),
        ("ln1 scale", layer.ln1_scale),
        (f"q (head {att.head})", att.q),
        (f"k (kv head {att.kv_head})", att.k),
        (f"v (kv head {att.kv_head})", att.v),
        ("q after RoPE", att.q_rot),
        ("k after RoPE", att.k_rot),
        (f"z (head {att.head})", att.z),
        ("attn_out", layer.attn_out),
        ("resid_mid", layer.resid_mid),
        ("mlp_out", layer.mlp.out if layer.mlp else None),
        ("resid_post", layer.resid_post),
    ]
    console.print(_vectors(rows))
    _attention(att, trace, console)
    if layer.mlp is not None:
        _mlp(layer.mlp, console)


def render_trace(trace: TokenTrace, console: Console) -> None:
    """Print a token trace: embedding, each layer, final state and top predictions."""
    label = trace.labels[trace.position]
    console.rule(f"[bold]{trace.model}[/]: position {trace.position} ({label})")
    console.print(
        f"{trace.architecture}, {trace.norm_placement}-norm, {len(trace.layers)} "
        f"layer{'' if len(trace.layers) == 1 else 's'}. "
        f"Vectors show their first {_MAX_SHOWN} dims; |x| is the L2 norm.",
        highlight=False,
    )
    tokens = Text("tokens (position:label=id): ")
    for i, (t, name) in enumerate(zip(trace.tokens, trace.labels, strict=True)):
        tokens.append(
            f"{i}:{name}" + ("" if name == str(t) else f"={t}"),
            style="bold reverse" if i == trace.position else "",
        )
        tokens.append(" ")
    console.print(tokens)

    console.print("\n[bold cyan]embedding[/]")
    into = trace.layers[0].resid_pre if trace.layers else None
    console.print(
        _vectors(
            [("token embed", trace.embed), ("pos embed", trace.pos_embed), ("into block 0", into)]
        )
    )
    for layer in trace.layers:
        _layer(layer, trace, console)

    console.print("\n[bold cyan]output[/]")
    console.print(
        _vectors([("final norm scale", trace.final_norm_scale), ("final hidden", trace.final)])
    )
    if trace.predictions is None:
        console.print("An encoder without a masked-LM head: the final hidden state is the output.")
        return
    table = _table("rank", "token", "label", "logit", "prob")
    table.columns[2].justify = "left"
    for rank, p in enumerate(trace.predictions, 1):
        table.add_row(str(rank), str(p.token), p.label, f"{p.logit:.4f}", f"{p.prob:.4f}")
    console.print("top predictions", highlight=False)
    console.print(table)
