"""Length-sorted, token-budget batching: the main lever for encoding speed and bounded memory.

Sorting by length keeps padding near zero; a budget on `batch_size x longest` (not a fixed
batch size) keeps one 8k-token document from sharing a batch that would blow up memory,
while short texts get large, efficient batches.
"""
from __future__ import annotations

from typing import Sequence


def token_budget_batches(lengths: Sequence[int], budget: int, max_batch: int = 512) -> list[list[int]]:
    """Group indices (longest first) so each batch's padded size `len(batch) * longest` <= budget.

    A single text longer than the budget still gets a batch of its own.
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and ((len(current) + 1) * longest > budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        if not current:
            longest = max(lengths[i], 1)
        current.append(i)
    if current:
        batches.append(current)
    return batches
