"""Model selection on a dev set: encode corpus and queries, exact inner-product top-k, nDCG@10.

Uses dramasearch's own readers, `Encoder.encode_*` (the serving path, in eval mode) and
`evaluate_run` (trec_eval semantics), so a dev score is what a built index would measure
with a flat index.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from dramasearch.corpus import iter_documents
from dramasearch.encoder import Encoder
from dramasearch.evaluate import Qrels, evaluate_run
from dramasearch.matryoshka import prepare
from dramasearch.topics import read_qrels, read_queries

DEPTH = 100  # enough for Recall@100; nDCG@10 needs only 10


@dataclass(frozen=True)
class DevSet:
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: Qrels

    @classmethod
    def load(cls, corpus: str | Path, queries: str | Path, qrels: str | Path) -> "DevSet":
        """Read a corpus (any dramasearch corpus format), queries and qrels; keep judged queries only."""
        docs = list(iter_documents(corpus))
        judgments = read_qrels(qrels)
        judged = [q for q in read_queries(queries) if judgments.get(q.id)]
        if not judged:
            raise ValueError(f"{queries}: no query has judgments in {qrels}; check that the ids match")
        return cls([d.id for d in docs], [d.content() for d in docs], [q.id for q in judged],
                   [q.text for q in judged], judgments)


def evaluate_encoder_dims(encoder: Encoder, dev: DevSet, dims: Sequence[int | None]) -> dict[int | None, float]:
    """Mean nDCG@10 at each Matryoshka dim (None: full), as trec_eval averages it."""
    return {dim: mean(scores) for dim, scores in per_query_ndcg10(encoder, dev, dims).items()}


def per_query_ndcg10(encoder: Encoder, dev: DevSet, dims: Sequence[int | None]) -> dict[int | None, np.ndarray]:
    """nDCG@10 of each dev query (in `dev.query_ids` order) at each dim, encoding `dev` once at full dim.

    A truncation of the full vector, renormalized, is what encoding at that dim gives
    (`matryoshka.prepare`), so one encode serves every dim.
    """
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        docs = encoder.encode_documents(dev.doc_texts)
        queries = encoder.encode_queries(dev.query_texts)
    finally:
        encoder.model.train(was_training)
    norm = encoder.spec.normalize
    return {dim: _ndcg10_per_query(prepare(docs, dim, norm), prepare(queries, dim, norm), dev) for dim in dims}


def mean(scores: Sequence[float]) -> float:
    return math.fsum(scores) / len(scores)


def gain_confidence(baseline: Sequence[float], candidate: Sequence[float], seed: int = 0,
                    resamples: int = 10_000) -> float:
    """Paired bootstrap over the dev queries: the share of resampled query sets on which
    `candidate` scores a higher mean than `baseline`.

    Why: a cropped-sentence dev set can be small (16 queries on an 82-document corpus), where a
    mean that rose by one query's luck picked a model that lost 1.7 points on real queries.
    """
    if len(baseline) != len(candidate) or not len(baseline):
        raise ValueError(f"need two equal-length, non-empty score lists; got {len(baseline)} and {len(candidate)}")
    gains = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    rng, wins = np.random.default_rng(seed), 0
    for start in range(0, resamples, 1000):  # bounded memory for large dev sets
        picks = rng.integers(0, len(gains), size=(min(1000, resamples - start), len(gains)))
        wins += int(np.count_nonzero(gains[picks].sum(axis=1) > 1e-12))
    return wins / resamples


def _ndcg10_per_query(docs: np.ndarray, queries: np.ndarray, dev: DevSet) -> np.ndarray:
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(DEPTH, len(dev.doc_ids)))
    run = {
        qid: {dev.doc_ids[r]: float(s) for r, s in zip(row_ids, row_scores) if r >= 0}
        for qid, row_ids, row_scores in zip(dev.query_ids, rows, scores)
    }
    per_query = evaluate_run(run, dev.qrels).per_query
    return np.array([per_query[qid]["nDCG@10"] for qid in dev.query_ids])
