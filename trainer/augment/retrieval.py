"""Exact dense retrieval in memory over an encoded corpus, for mining and round-trip filtering.

Uses only dramasearch's public API (iter_documents, Encoder.encode_*); the corpora used for
augmentation here fit in memory, and exact inner products avoid any approximate-index recall
loss in the labels. Score matrices are computed in document chunks to bound memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from dramasearch.corpus import iter_documents
from dramasearch.encoder import Encoder
from dramasearch.errors import InputError

from ..data import Passage

CHUNK_ROWS = 1 << 16
TIE_EPS = 1e-6


def load_passages(corpus: str | Path, limit: int | None = None) -> list[Passage]:
    """The first `limit` documents of a corpus (any format iter_documents reads) as Passages."""
    passages = []
    for doc in iter_documents(corpus):
        if limit is not None and len(passages) >= limit:
            break
        passages.append(Passage(doc.id, doc.title, doc.text))
    if not passages:
        raise InputError(corpus, None, None, "the corpus holds no documents")
    return passages


@dataclass
class DenseCorpus:
    passages: list[Passage]
    embeddings: np.ndarray  # (documents, dim) float32 unit rows, in passage order
    _positions: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._positions = {p.docid: i for i, p in enumerate(self.passages)}

    @classmethod
    def encode(cls, encoder: Encoder, passages: list[Passage], dim: int | None = None) -> "DenseCorpus":
        return cls(passages, encoder.encode_documents([p.content() for p in passages], dim=dim))

    def position(self, docid: str) -> int | None:
        return self._positions.get(docid)

    def passage_vectors(self, encoder: Encoder, passages: Iterable[Passage], dim: int | None = None) -> np.ndarray:
        """Embeddings of passages: the corpus row when the same passage is in the corpus, else encoded now."""
        passages = list(passages)
        out = np.zeros((len(passages), self.embeddings.shape[1]), dtype=np.float32)
        fresh = []
        for i, p in enumerate(passages):
            pos = self.position(p.docid)
            if pos is not None and self.passages[pos] == p:
                out[i] = self.embeddings[pos]
            else:  # not in the corpus, or edited (e.g. a cropped positive that lost its query sentence)
                fresh.append(i)
        if fresh:
            out[fresh] = encoder.encode_documents([passages[i].content() for i in fresh], dim=dim)
        return out


def top_k(queries: np.ndarray, docs: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The k best documents per query by inner product: (scores, indices), best first.

    Ties go to the lower document index, so results do not depend on the chunking.
    """
    k = min(k, docs.shape[0])
    best_scores = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, docs.shape[0], chunk_rows):
        scores = queries @ docs[start : start + chunk_rows].T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_scores, best_ids = best_of_rows(np.hstack([best_scores, scores]), np.hstack([best_ids, ids]), k)
    return best_scores, best_ids


def ranks_of(queries: np.ndarray, docs: np.ndarray, targets: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """1-based rank of document targets[i] for query i.

    Ties, up to float rounding (`TIE_EPS`; a product computed in two ways can differ in its last
    bits), count in the target's favour, and the target never outranks itself.
    """
    target_scores = np.einsum("ij,ij->i", queries, docs[targets])
    above = np.zeros(queries.shape[0], dtype=np.int64)
    for start in range(0, docs.shape[0], chunk_rows):
        scores = queries @ docs[start : start + chunk_rows].T
        inside = (targets >= start) & (targets < start + scores.shape[1])
        scores[inside, targets[inside] - start] = -np.inf
        above += (scores > target_scores[:, None] + TIE_EPS).sum(axis=1)
    return above + 1


def best_of_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k of each row by score descending, then id ascending.

    Sorting whole rows cost 0.30 s per 256 queries over Vaswani's 11k documents, 14x the matmul
    (benchmarks/bench_augment_steps.py): only the 2k best of a row are sorted, unless a tie at the
    k-th score reaches past them (duplicate documents), when whole rows are.
    """
    wide = min(scores.shape[1], 2 * k)
    if wide < scores.shape[1]:
        part = np.argpartition(-scores, wide - 1, axis=1)[:, :wide]
        part_scores = np.take_along_axis(scores, part, axis=1)
        kth = np.partition(part_scores, wide - k, axis=1)[:, wide - k]
        exact = kth > part_scores.min(axis=1)  # every score >= the k-th is among the candidates
        if exact.all():
            scores, ids = part_scores, np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
