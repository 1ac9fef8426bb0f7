"""Chunk hits -> document hits: in chunk mode a query retrieves chunks, users want documents.

`maxp` (a document is as good as its best passage) is the usual choice for long-document
retrieval; `first` (score by the opening window) suits documents whose start summarizes them;
`sum` rewards documents with many matching passages.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

AGGREGATIONS = ("maxp", "first", "sum")


@dataclass(frozen=True)
class DocScore:
    docid: str
    score: float
    best: int  # position in the input arrays of the document's best-scoring chunk (its snippet)


def aggregate(
    scores: np.ndarray, parents: Sequence[str], chunk_index: Sequence[int], how: str, k: int
) -> list[DocScore]:
    """Rank documents from the scores of their retrieved chunks; each document appears once.

    - `maxp`: a document's score is its best chunk's score.
    - `first`: the score of its chunk 0. Documents whose chunk 0 was not retrieved rank after
      every document whose chunk 0 was, ordered among themselves by their best chunk's score
      (which is the score they report).
    - `sum`: the sum of its retrieved chunks' scores.

    Ties are broken by doc id (ascending) so runs are reproducible; `best` always points at the
    document's highest-scoring chunk (the earliest position among equal scores). Each chunk is
    expected once in the input, as one top-k search returns it. Returns the top `k`.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")
    values = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
    if not len(values) == len(parents) == len(chunk_index):
        raise ValueError(
            f"scores, parents and chunk_index must have one entry per chunk, got {len(values)}, "
            f"{len(parents)} and {len(chunk_index)}"
        )
    best: dict[str, int] = {}
    total: dict[str, float] = {}
    first: dict[str, float] = {}
    for pos, (docid, score, index) in enumerate(zip(parents, values, chunk_index)):
        if docid not in best or score > values[best[docid]]:
            best[docid] = pos
        total[docid] = total.get(docid, 0.0) + score
        if index == 0:
            first[docid] = score

    def key(docid: str) -> tuple[int, float, str]:
        if how == "maxp":
            return 0, -values[best[docid]], docid
        if how == "sum":
            return 0, -total[docid], docid
        if docid in first:
            return 0, -first[docid], docid
        return 1, -values[best[docid]], docid

    ranked = sorted(best, key=key)[: max(k, 0)]
    return [DocScore(docid=docid, score=-key(docid)[1], best=best[docid]) for docid in ranked]
