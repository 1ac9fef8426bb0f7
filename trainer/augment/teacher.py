"""A hybrid teacher for mining: the starting model's similarity blended with BM25's, per query.

Why: on the shared collections, fusing BM25 with MiniLM beats MiniLM alone by 3-8 nDCG@10 points
(benchmarks/RESULTS.md §10.2), so the blend knows something about a corpus (its rare terms) that the
dense model misses. Mining with it ranks candidates by the blend, and every mined passage keeps its
blend score, which training distils (losses.py) instead of calling each hard negative wrong.

The blend is in the model's own units, so student and teacher share one softmax temperature: per
query, BM25's scores are mapped onto the mean and spread the dense scores have over the query's
candidate pool (the union of both top-`depth` lists), then

    teacher = weight * dense + (1 - weight) * bm25_mapped

(z-score fusion; it ranks as the linear fusion of `dramasearch.hybrid` does, up to the normalization).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dramasearch.index.lexical import LexicalConfig, tokenizer

from ..data import Passage
from .retrieval import best_of_rows


class LexicalScorer:
    """BM25 (Lucene's variant, dramasearch's tokenizer and k1/b) of queries against the corpus rows,
    and against any other text (a cropped positive) with the corpus's statistics, so both are one scale."""

    def __init__(self, passages: Sequence[Passage], config: LexicalConfig = LexicalConfig()):
        from scipy import sparse

        self.config = config
        self._tokenize = tokenizer(config)
        self.vocab: dict[str, int] = {}
        rows, cols, counts = [], [], []
        lengths = np.zeros(len(passages), dtype=np.float64)
        for i, terms in enumerate(self._tokenize([p.content() for p in passages])):
            lengths[i] = len(terms)
            for term, tf in Counter(terms).items():
                rows.append(i)
                cols.append(self.vocab.setdefault(term, len(self.vocab)))
                counts.append(tf)
        n = len(passages)
        df = np.bincount(np.asarray(cols, dtype=np.int64), minlength=len(self.vocab))
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        self.average_length = float(lengths.mean()) if n else 0.0
        tf, rows = np.asarray(counts, dtype=np.float64), np.asarray(rows, dtype=np.int64)
        weights = self.idf[cols] * tf / (tf + self._norm(lengths[rows]))
        self._weights = sparse.csr_matrix((weights, (rows, cols)), shape=(n, len(self.vocab)))

    def _norm(self, lengths: np.ndarray) -> np.ndarray:
        k1, b = self.config.k1, self.config.b
        return k1 * (1.0 - b + b * lengths / max(self.average_length, 1e-9))

    def _query_counts(self, queries: Sequence[str]):
        from scipy import sparse

        rows, cols, counts = [], [], []
        for i, terms in enumerate(self._tokenize(list(queries))):
            for term, count in Counter(terms).items():  # a repeated query term counts as often as it appears
                if term in self.vocab:  # a term no document has adds 0, as in bm25s
                    rows.append(i)
                    cols.append(self.vocab[term])
                    counts.append(count)
        return sparse.csr_matrix((counts, (rows, cols)), shape=(len(queries), len(self.vocab)), dtype=np.float64)

    def corpus_scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 of every corpus row for each query: float64 [queries, documents]."""
        return (self._query_counts(queries) @ self._weights.T).toarray()

    def text_scores(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """BM25 of texts that need not be corpus rows, for one query, with the corpus's idf and average length."""
        wanted = Counter(t for t in self._tokenize([query])[0] if t in self.vocab)
        out = np.zeros(len(texts), dtype=np.float64)
        for i, terms in enumerate(self._tokenize(list(texts))):
            tf = Counter(terms)
            norm = float(self._norm(np.array([len(terms)], dtype=np.float64))[0])
            out[i] = sum(count * self.idf[self.vocab[term]] * tf[term] / (tf[term] + norm)
                         for term, count in wanted.items() if tf[term])
        return out


@dataclass(frozen=True)
class Blend:
    """One query's teacher: `weight * dense + (1 - weight) * (slope * bm25 + intercept)`."""

    weight: float
    slope: float
    intercept: float

    def __call__(self, dense: np.ndarray | float, bm25: np.ndarray | float) -> np.ndarray | float:
        return self.weight * dense + (1.0 - self.weight) * (self.slope * bm25 + self.intercept)


def blends(dense: np.ndarray, bm25: np.ndarray, weight: float, depth: int) -> list[Blend]:
    """Per row, BM25 mapped onto the dense scores' mean and spread over the union of both top-`depth` lists
    (BM25's list holds only documents sharing a term with the query: it retrieves no others)."""
    depth = min(depth, dense.shape[1])
    out = []
    for d, x in zip(dense, bm25):
        lexical = np.argpartition(-x, depth - 1)[:depth]
        pool = np.union1d(np.argpartition(-d, depth - 1)[:depth], lexical[x[lexical] > 0])
        spread = float(x[pool].std())
        slope = float(d[pool].std()) / spread if spread > 0 else 0.0
        out.append(Blend(weight, slope, float(d[pool].mean()) - slope * float(x[pool].mean())))
    return out


def teacher_top_k(dense: np.ndarray, bm25: np.ndarray, weight: float, depth: int, k: int
                  ) -> tuple[np.ndarray, np.ndarray, list[Blend]]:
    """The k best documents per query by the teacher's score: (scores, indices, each row's blend).

    `dense` and `bm25` are full [queries, documents] score matrices (the in-memory corpora mining
    handles); ties go to the lower document index, as in retrieval.top_k."""
    rows = blends(dense, bm25, weight, depth)
    scores = np.stack([blend(d, x) for blend, d, x in zip(rows, dense, bm25)]).astype(np.float32)
    ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    best, order = best_of_rows(scores, ids, min(k, scores.shape[1]))
    return best, order, rows
