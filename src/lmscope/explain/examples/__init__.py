"""The worked examples of the source documents (E1 to E7), one module per concept.

Each function builds the real lmscope module(s) an example is about, sets the
example's weights into them and reads the numbers from their hook points. The data
they return is in `lmscope.explain.data`; ``shared/worked-examples.md`` lists the
figures they must match.
"""

from __future__ import annotations

from collections.abc import Callable

from lmscope.errors import LmscopeError, did_you_mean
from lmscope.explain.data import Example
from lmscope.explain.examples.attention import e3_attention_row
from lmscope.explain.examples.block import e4_block
from lmscope.explain.examples.memory import e7_key_value_memory
from lmscope.explain.examples.norm import e1_layer_norm
from lmscope.explain.examples.position import e2_positional_encoding
from lmscope.explain.examples.residual import e5_residual_stream
from lmscope.explain.examples.tying import e6_weight_tying

#: Every worked example, by id, in order.
EXAMPLES: dict[str, Callable[[], Example]] = {
    "E1": e1_layer_norm,
    "E2": e2_positional_encoding,
    "E3": e3_attention_row,
    "E4": e4_block,
    "E5": e5_residual_stream,
    "E6": e6_weight_tying,
    "E7": e7_key_value_memory,
}


def worked_example(example_id: str) -> Example:
    """Compute one worked example by id (``E3`` or ``e3``)."""
    key = example_id.strip().upper()
    if key not in EXAMPLES:
        hint = did_you_mean(key, EXAMPLES)
        raise LmscopeError(
            f"no worked example {example_id!r}; choose one of {', '.join(EXAMPLES)}. {hint}".strip()
        )
    return EXAMPLES[key]()


def worked_examples() -> list[Example]:
    """Compute every worked example, E1 to E7."""
    return [fn() for fn in EXAMPLES.values()]


__all__ = [
    "EXAMPLES",
    "e1_layer_norm",
    "e2_positional_encoding",
    "e3_attention_row",
    "e4_block",
    "e5_residual_stream",
    "e6_weight_tying",
    "e7_key_value_memory",
    "worked_example",
    "worked_examples",
]
