"""Length-sorted, token-budget batching: the main lever for encoding speed and bounded memory.

Sorting by length keeps padding near zero; a budget on `batch_size x longest` (not a fixed
batch size) keeps one 8k-token document from sharing a batch that would blow up memory,
while short texts get large, efficient batches. A cap on padding splits a batch whose texts
differ a lot in length: a served batch of 32 random queries, padded to its longest, spent
most of its compute on padding (RESULTS.md section 9).
"""
from __future__ import annotations

from typing import Sequence

MAX_PADDING = 0.25  # padded tokens may exceed real tokens by at most this fraction


def token_budget_batches(
    lengths: Sequence[int], budget: int, max_batch: int = 512, max_padding: float = MAX_PADDING
) -> list[list[int]]:
    """Group indices (longest first) so each batch's padded size `len(batch) * longest` is at
    most `budget` and at most `1 + max_padding` times its real token count.

    A single text longer than the budget still gets a batch of its own.
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    if max_padding < 0:
        raise ValueError(f"max_padding must be >= 0, got {max_padding}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in order:
        size = max(lengths[i], 1)
        if current:
            padded = (len(current) + 1) * longest
            if padded > budget or len(current) >= max_batch or padded > (1 + max_padding) * (real + size):
                batches.append(current)
                current = []
        if not current:
            longest, real = size, 0
        current.append(i)
        real += size
    if current:
        batches.append(current)
    return batches
