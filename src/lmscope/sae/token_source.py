"""Token windows for SAE work: fixed-length contexts cut from prepared shards, text or tensors.

`TokenWindows(source, tokenizer, context_size)` turns what a user has into a numbered
sequence of windows of `context_size` tokens, read in order and in batches:

- a directory prepared by ``lmscope data prepare`` (its ``meta.json``): the split is
  memory-mapped and window ``i`` is a slice of it, so skipping ahead costs nothing;
- text (a file, a folder, a glob, or a list of them, via `lmscope.data.resolve_sources`):
  streamed chunk by chunk through the tokenizer, documents joined as ``data prepare``
  joins them (`lmscope.data.separator_ids`);
- token ids: a tensor (1-D stream or 2-D rows), or a list / iterable of them: flattened
  into one stream in order.

Windows never overlap and the last incomplete one is dropped, as in training. With
`prepend_bos` each window is the BOS token followed by ``context_size - 1`` stream
tokens (SAELens's convention: the context size includes the BOS). Windows are numbered,
so a consumer can record "n windows read" and resume exactly from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.data import META, Source, TokenData, resolve_sources, separator_ids
from lmscope.errors import LmscopeError
from lmscope.tokenizers import Tokenizer

#: Bytes of text tokenized at a time: small enough that its ids (int64) stay a few MiB.
_TEXT_CHUNK_BYTES = 1 << 18

#: What `TokenWindows` accepts as a source of tokens.
TokenSourceLike = str | Path | Source | Sequence[str | Path | Source] | Tensor | Iterable[Any]


class TokenSourceError(LmscopeError, ValueError):
    """A token source that cannot be read as asked (no tokenizer for text, too short...)."""


class TokenWindows:
    """Fixed-length token windows from prepared data, text, or token tensors, in order.

    `special_ids` are the ids of the tokenizer's special tokens (BOS, EOS, pad...), which
    activation collection usually leaves out. `n_windows` is known for prepared data and
    tensors held in memory, else None until a full pass has been read.
    """

    def __init__(
        self,
        source: TokenSourceLike,
        tokenizer: Tokenizer | None = None,
        context_size: int = 128,
        *,
        prepend_bos: bool = False,
        split: str = "train",
    ) -> None:
        if context_size < 1 + int(prepend_bos):
            raise TokenSourceError(
                f"context_size must be at least {1 + int(prepend_bos)}, got {context_size}."
            )
        self.context_size = context_size
        self.prepend_bos = prepend_bos
        self._data: TokenData | None = None
        self._text: list[Source] | None = None
        self._tensors: list[Tensor] | None = None
        self._iterable: Iterable[Any] | None = None
        self.kind: str
        if isinstance(source, (str, Path)) and (Path(source) / META).is_file():
            self._data = TokenData(source)
            self._split = self._data.split(split)
            tokenizer = tokenizer if tokenizer is not None else self._data.tokenizer
            self.kind = "prepared"
        elif isinstance(source, (str, Path, Source)) or (
            isinstance(source, Sequence)
            and source
            and all(isinstance(s, (str, Path, Source)) for s in source)
        ):
            if tokenizer is None:
                raise TokenSourceError(
                    "reading text needs a tokenizer: pass the model's tokenizer, or prepare the "
                    "text first with `lmscope data prepare` and pass that directory."
                )
            self._text = resolve_sources(source)  # type: ignore[arg-type]
            self.kind = "text"
        elif isinstance(source, Tensor) or (
            isinstance(source, Sequence) and all(isinstance(s, Tensor) for s in source)
        ):
            tensors = [source] if isinstance(source, Tensor) else list(source)
            self._tensors = [_as_id_tensor(t) for t in tensors]
            self.kind = "tensors"
        elif isinstance(source, Iterable):
            self._iterable = source
            self.kind = "iterable"
        else:
            raise TokenSourceError(
                f"cannot read tokens from a {type(source).__name__}: pass a prepared data "
                "directory, a text file / folder / glob, a token tensor, or an iterable of them."
            )
        self.tokenizer = tokenizer
        if prepend_bos and (tokenizer is None or tokenizer.bos_id is None):
            raise TokenSourceError(
                "prepend_bos needs a tokenizer with a BOS token; this one has none."
            )
        self.special_ids: list[int] = (
            sorted(set(tokenizer.special_tokens().values())) if tokenizer is not None else []
        )
        self._counted: int | None = None

    @property
    def stream_per_window(self) -> int:
        """Stream tokens each window consumes (one less than its length with a BOS)."""
        return self.context_size - int(self.prepend_bos)

    @property
    def n_windows(self) -> int | None:
        """Number of windows in one pass, when known without reading it."""
        if self._data is not None:
            return len(self._split) // self.stream_per_window
        if self._tensors is not None:
            return sum(t.numel() for t in self._tensors) // self.stream_per_window
        return self._counted

    @property
    def reiterable(self) -> bool:
        """Whether the source can be read more than once (a one-shot iterator cannot)."""
        return self._iterable is None or iter(self._iterable) is not self._iterable

    def describe(self) -> dict[str, Any]:
        """What the windows come from, for manifests and reports."""
        where: Any = None
        if self._data is not None:
            where = str(self._data.directory)
        elif self._text is not None:
            where = [str(s.path) for s in self._text]
        return {
            "kind": self.kind,
            "source": where,
            "context_size": self.context_size,
            "prepend_bos": self.prepend_bos,
        }

    def batches(self, n_contexts: int, start: int = 0) -> Iterator[Int[Tensor, "n ctx"]]:
        """Windows `start`, `start + 1`, ... in batches of `n_contexts` (the last may be short)."""
        if n_contexts < 1:
            raise TokenSourceError(f"n_contexts must be positive, got {n_contexts}.")
        batch: list[Tensor] = []
        for window in self.windows(start):
            batch.append(window)
            if len(batch) == n_contexts:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    def windows(self, start: int = 0) -> Iterator[Int[Tensor, " ctx"]]:
        """Every window from number `start` on, one at a time (int64 tensors)."""
        step = self.stream_per_window
        bos = (
            torch.tensor([self.tokenizer.bos_id])
            if self.prepend_bos and self.tokenizer is not None and self.tokenizer.bos_id is not None
            else None
        )
        index = start
        if self._data is not None:
            n = len(self._split) // step
            for index in range(start, n):
                ids = torch.from_numpy(np.array(self._split[index * step : (index + 1) * step]))
                yield _with_bos(ids.long(), bos)
            return
        carry = torch.zeros(0, dtype=torch.long)
        skip = start * step  # stream tokens before window `start`, dropped as they pass
        count = 0
        for piece in self._stream():
            if skip:
                drop = min(skip, piece.numel())
                piece, skip = piece[drop:], skip - drop
            if carry.numel():  # complete the window begun by the previous piece
                need = step - carry.numel()
                carry, piece = torch.cat([carry, piece[:need]]), piece[need:]
                if carry.numel() < step:
                    continue
                count += 1
                yield _with_bos(carry, bos)
            # Windows are views of the piece: nothing the size of the piece is copied.
            n_full = piece.numel() // step
            for i in range(n_full):
                count += 1
                yield _with_bos(piece[i * step : (i + 1) * step], bos)
            carry = piece[n_full * step :].clone()
        if skip == 0:
            self._counted = start + count

    def _stream(self) -> Iterator[Tensor]:
        """The token stream in pieces (1-D int64 tensors)."""
        if self._tensors is not None:
            for t in self._tensors:
                yield t.reshape(-1)
            return
        if self._text is not None:
            assert self.tokenizer is not None
            separator = torch.tensor(separator_ids(self.tokenizer), dtype=torch.long)
            first = True
            for source in self._text:
                for chunk in source.iter_chunks(chunk_bytes=_TEXT_CHUNK_BYTES):
                    if chunk.starts_document and not first and separator.numel():
                        yield separator
                    first = False
                    yield torch.from_numpy(self.tokenizer.encode_array(chunk.text))
            return
        assert self._iterable is not None
        if not self.reiterable and getattr(self, "_consumed", False):
            raise TokenSourceError(
                "this token source is a one-shot iterator and has been read already; pass a "
                "list of tensors (or a prepared directory) to read it again."
            )
        self._consumed = True
        for item in self._iterable:
            yield _as_id_tensor(item).reshape(-1)


#: What evaluation and feature collection read: a store, windows, token rows, or a source.
TokenBatchesLike = Any


def token_batches(
    data: TokenBatchesLike,
    *,
    tokenizer: Tokenizer | None = None,
    context_size: int = 128,
    batch_size: int = 8,
    max_contexts: int | None = None,
    exclude_special: bool | Sequence[int] = True,
) -> tuple[Iterator[Int[Tensor, "n ctx"]], list[int]]:
    """Batches of `batch_size` token rows from `data`, and the token ids to leave out of
    per-token statistics.

    `data`: an `ActivationStore` computing from a model (its windows and exclusions), a
    `TokenWindows`, a 2-D token tensor [n, ctx] (its rows), or any `TokenWindows` source
    (with `tokenizer` and `context_size`). At most `max_contexts` rows are read.
    """
    producer = getattr(data, "producer", None)
    excluded: list[int] | None = None
    if producer is not None:
        if not hasattr(producer, "windows"):
            raise TokenSourceError(
                "this activation store reads an activation cache, which holds no tokens; "
                "evaluating or browsing an SAE needs the tokens: pass the text, prepared "
                "data or token tensors instead."
            )
        data, excluded = producer.windows, list(producer.excluded_ids)
    if isinstance(data, Tensor) and data.ndim == 2:
        rows = _as_id_tensor(data)[:max_contexts]
        batches: Iterator[Tensor] = iter(rows.split(batch_size))
        specials = sorted(set(tokenizer.special_tokens().values())) if tokenizer else []
    else:
        windows = (
            data if isinstance(data, TokenWindows) else TokenWindows(data, tokenizer, context_size)
        )
        batches = _limited(windows.batches(batch_size), max_contexts)
        specials = windows.special_ids
    if excluded is None:
        if exclude_special is True:
            excluded = specials
        elif exclude_special is False:
            excluded = []
        else:
            excluded = [int(i) for i in exclude_special]
    return batches, excluded


def _limited(batches: Iterator[Tensor], max_contexts: int | None) -> Iterator[Tensor]:
    """`batches` cut after `max_contexts` rows in all."""
    left = max_contexts
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            batch = batch[:left]
            left -= batch.shape[0]
        yield batch


def _as_id_tensor(item: Any) -> Tensor:
    """Token ids as an int64 tensor, with a clear error for anything else."""
    t = item if isinstance(item, Tensor) else torch.as_tensor(np.asarray(item))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TokenSourceError(f"token ids must be integers, got a {t.dtype} tensor.")
    if t.ndim not in (1, 2):
        raise TokenSourceError(
            f"token tensors must be 1-D (a stream) or 2-D (rows), got shape {list(t.shape)}."
        )
    return t.long().cpu()


def _with_bos(ids: Tensor, bos: Tensor | None) -> Tensor:
    return ids if bos is None else torch.cat([bos, ids])


__all__ = [
    "TokenBatchesLike",
    "TokenSourceError",
    "TokenSourceLike",
    "TokenWindows",
    "token_batches",
]
