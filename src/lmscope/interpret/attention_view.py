"""One head's attention pattern on one input: as numbers, a table, and a heatmap.

The seeds' exercise, "print the attention weights of a head and look for structure":
``attention_pattern(model, "The cat sat on the mat", layer=1, head=4, tokenizer=tok)``
runs the model up to that layer only (``stop_at_layer``) with the pattern of that
layer cached, and returns the head's ``[query, key]`` matrix with token labels.
`print_attention` shows it as a rich table (row = the token that looks, column = the
token looked at; each row sums to 1), `plot_attention` as a heatmap.

Long inputs: the table shows the last `max_tokens` queries; its key columns are the
first token (where many heads park attention: the "attention sink") and the last
``max_tokens - 1`` keys, and a ``…`` column holds the mass on the keys left out, so
every row still sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from lmscope.interpret.indices import check_head, check_layer
from lmscope.interpret.tokens import Prompt, prompt_ids, token_labels

#: Queries and keys the table shows by default (fits a 120-column terminal).
MAX_TABLE_TOKENS = 16
#: Characters of a token label in the table's header (longer ones end in "…").
LABEL_CHARS = 6


@dataclass(frozen=True)
class AttentionPattern:
    """Head `head` of layer `layer` on one input: ``pattern[q, k]``, rows summing to 1."""

    pattern: Float[Tensor, "q k"]
    tokens: list[int]
    labels: list[str]
    layer: int
    head: int

    def to_dict(self) -> dict[str, Any]:
        """Layer, head, token ids and labels, and the pattern as nested lists."""
        return {
            "layer": self.layer,
            "head": self.head,
            "tokens": self.tokens,
            "labels": self.labels,
            "pattern": self.pattern.tolist(),
        }


def attention_pattern(
    model: Any, tokens: Prompt, layer: int, head: int, *, tokenizer: Any | None = None
) -> AttentionPattern:
    """The attention pattern of (`layer`, `head`) on `tokens` (text or ids), labelled.

    Runs blocks ``0..layer`` only; GQA models give the query head's own pattern.
    """
    layer, head = check_layer(model, layer), check_head(model, head)
    ids = prompt_ids(model, tokens, tokenizer)
    _, cache = model.run_with_cache(
        ids, names_filter=f"blocks.{layer}.attn.hook_pattern", stop_at_layer=layer + 1
    )
    pattern = cache["pattern", layer][0, head].float().cpu()
    id_list = ids[0].tolist()
    return AttentionPattern(pattern, id_list, token_labels(tokenizer, id_list), layer, head)


def _shown(n: int, max_tokens: int) -> tuple[list[int], list[int]]:
    """Query rows and key columns the table shows for `n` tokens (see module docstring)."""
    if n <= max_tokens:
        return list(range(n)), list(range(n))
    rows = list(range(n - max_tokens, n))
    return rows, [0, *range(n - max_tokens + 1, n)]


def attention_table(ap: AttentionPattern, max_tokens: int = MAX_TABLE_TOKENS) -> Any:
    """`ap` as a rich `Table` (bold: >= 0.5, dim: < 0.05; see module docstring for long inputs)."""
    from rich import box
    from rich.table import Table

    n = len(ap.labels)
    rows, cols = _shown(n, max(2, max_tokens))
    hidden = [k for k in range(n) if k not in set(cols)]
    title = f"Attention of layer {ap.layer} head {ap.head} (row: query, column: key)"
    if hidden:
        title += (
            f"\nlast {len(rows)} of {n} tokens; … = attention to the {len(hidden)} keys not shown"
        )
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    table.add_column("query", no_wrap=True)
    for k in cols:
        table.add_column(f"{k}\n{_short(ap.labels[k])}", justify="right", no_wrap=True)
    if hidden:
        table.add_column("…", justify="right", no_wrap=True)
    for q in rows:
        cells = [_cell(float(ap.pattern[q, k])) for k in cols]
        if hidden:
            cells.append(_cell(float(ap.pattern[q, hidden].sum())))
        table.add_row(f"{q} {_short(ap.labels[q])}", *cells)
    return table


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _cell(value: float) -> str:
    """A weight in three characters (".52", "1"), styled by size; "·" for exactly 0."""
    if value == 0.0:
        return "[dim]·[/]"
    text = "1" if value >= 0.995 else f"{value:.2f}".removeprefix("0")
    if value >= 0.5:
        return f"[bold magenta]{text}[/]"
    if value >= 0.2:
        return f"[magenta]{text}[/]"
    return f"[dim]{text}[/]" if value < 0.05 else text


def print_attention(
    ap: AttentionPattern, console: Any | None = None, max_tokens: int = MAX_TABLE_TOKENS
) -> None:
    """Print `attention_table(ap, max_tokens)` to `console` (default: a new rich Console).

    Written to a file or pipe (not a terminal), the table gets the width it needs
    instead of being squeezed into 80 columns.
    """
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console()
    table = attention_table(ap, max_tokens)
    if console.is_terminal:
        console.print(table)
        return
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    # print(width=...) cannot exceed the console's width: widen the console meanwhile.
    saved = console._width
    console.width = max(console.width, needed)
    try:
        console.print(table)
    finally:
        console._width = saved


def plot_attention(ap: AttentionPattern, path: str | Path, *, title: str | None = None) -> Path:
    """Heatmap of `ap` (query rows, key columns, token labels on both axes) into `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    from lmscope.serialization import atomic_write

    n = len(ap.labels)
    size = min(3.0 + 0.28 * n, 24.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(ap.pattern.numpy(), vmin=0.0, vmax=1.0, cmap="Blues")
    fontsize = max(4, min(9, int(400 / max(n, 1))))
    ticks = range(n)
    names = [f"{i} {label}" for i, label in enumerate(ap.labels)]
    ax.set_xticks(ticks, names, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, names, fontsize=fontsize)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title or f"layer {ap.layer}, head {ap.head}")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention")
    fig.tight_layout()
    target = Path(path)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return target
