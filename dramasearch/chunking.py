"""Long documents -> overlapping token windows ("chunks") with character offsets.

Chunk mode indexes each window as its own row (parent doc id + offsets) and aggregates per
document at search time (`aggregate.py`). A document is tokenized once; every window is a
slice of that one token sequence, so what gets encoded is exactly what whole-document
tokenization would have produced for those tokens (no re-tokenization at window edges).

Offsets: HF fast tokenizers report, per token, the span of characters it came from. With
byte-level BPE (Llama-3, SmolLM2) a token such as `" world"` owns the space before the word,
so a window's raw span would start with whitespace. `Chunk.start` skips that leading
whitespace, so `text[start:end]` is a clean snippet to show or highlight. The price: the
slice does not always re-tokenize to exactly `token_ids` (its first word loses its leading
space, and a window that begins or ends inside a word tokenizes that partial word
differently); `token_ids` are the ground truth of what a chunk contains. Tokens that are byte
pieces of one character (CJK, emoji) all report that character's span, so neighbouring windows
may share a character at their edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .errors import UsageError


@dataclass(frozen=True)
class Chunk:
    """One window of a document: token ids without special tokens or prefix."""

    index: int  # 0-based position within the document
    start: int  # character offsets into the document text, end exclusive
    end: int
    token_ids: list[int]


def chunk_document(tokenizer, text: str, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Split one text into windows of `chunk_tokens` tokens sharing `overlap` tokens."""
    return chunk_documents(tokenizer, [text], chunk_tokens, overlap)[0]


def chunk_documents(tokenizer, texts: Sequence[str], chunk_tokens: int, overlap: int) -> list[list[Chunk]]:
    """Batch version of `chunk_document`: one tokenizer call for all texts (fast tokenizers parallelize it)."""
    _check_sizes(chunk_tokens, overlap)
    if isinstance(texts, str):
        raise TypeError("chunk_documents() takes a list of texts; use chunk_document() for one text")
    texts = list(texts)
    if not texts:
        return []
    # Text is data: a literal "<|end_of_text|>" inside it must not become the special token.
    encoded = tokenizer(
        texts, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True
    )
    return [
        _windows(text, ids, offsets, chunk_tokens, overlap)
        for text, ids, offsets in zip(texts, encoded["input_ids"], encoded["offset_mapping"])
    ]


def window_starts(n_tokens: int, chunk_tokens: int, overlap: int) -> list[int]:
    """Token index where each window starts: every `chunk_tokens - overlap` tokens until one reaches the end.

    The last window is the first one that reaches the end of the document, so it may be shorter
    than `chunk_tokens` but always holds more than `overlap` tokens (at least one token no other
    window has); the count is `1 + max(0, ceil((n_tokens - chunk_tokens) / stride))`.
    """
    _check_sizes(chunk_tokens, overlap)
    stride = chunk_tokens - overlap
    starts = [0]
    while starts[-1] + chunk_tokens < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


def _windows(
    text: str, ids: list[int], offsets: Sequence[tuple[int, int]], chunk_tokens: int, overlap: int
) -> list[Chunk]:
    if not ids:  # every document keeps one row, so it can still be found by id and counted
        return [Chunk(index=0, start=0, end=0, token_ids=[])]
    chunks = []
    for index, first in enumerate(window_starts(len(ids), chunk_tokens, overlap)):
        last = min(first + chunk_tokens, len(ids)) - 1
        raw_start, end = offsets[first][0], offsets[last][1]
        stripped = len(text[raw_start:end]) - len(text[raw_start:end].lstrip())
        chunks.append(Chunk(index=index, start=raw_start + stripped, end=end, token_ids=list(ids[first : last + 1])))
    return chunks


def _check_sizes(chunk_tokens: int, overlap: int) -> None:
    if chunk_tokens < 1:
        raise UsageError("chunk_tokens", f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise UsageError("chunk_tokens", 
            f"overlap ({overlap}) must be at least 0 and smaller than chunk_tokens ({chunk_tokens}), "
            "or windows would not advance"
        )
