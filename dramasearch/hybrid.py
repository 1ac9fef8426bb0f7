"""Hybrid retrieval: one ranking of documents from a dense and a BM25 ranking.

Both rankings are of documents of the same pinned generation (in chunk mode the dense side
is aggregated per document first), each cut at `depth` candidates, then fused:

- `rrf` (reciprocal rank fusion, Cormack et al. 2009): score(d) = sum over the two lists of
  1 / (rrf_k + rank of d), ranks from 1; a list that misses d adds nothing. It needs no score
  calibration, which is why it is the default.
- `linear`: weight * dense' + (1 - weight) * bm25', where x' is the min-max normalization of
  that list's scores over its candidates for this query (best = 1, last = 0); a document a
  list misses gets 0 there, as if it were that list's last. Cosine and BM25 live on unrelated
  scales, so some normalization is needed; min-max is the common choice (and needs no
  corpus-level constants).
- `bm25`: the lexical ranking alone, through the same code (for evaluation).

Ties are broken by document id so runs are reproducible.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import UsageError
from .searcher import Hit

if TYPE_CHECKING:
    from .index.snapshot import Snapshot

HYBRID_MODES = ("rrf", "linear", "bm25")


@dataclass(frozen=True)
class Fusion:
    """How to fuse: `method` one of HYBRID_MODES; `weight` is the dense share in `linear`."""

    method: str = "rrf"
    rrf_k: float = 60.0
    weight: float = 0.5
    depth: int = 100  # candidates taken from each ranking (at least k)

    def check(self) -> None:
        if self.method not in HYBRID_MODES:
            raise UsageError("hybrid", f"must be one of {', '.join(HYBRID_MODES)}, got {self.method!r}")
        if not self.rrf_k > 0:
            raise UsageError("rrf_k", f"must be > 0, got {self.rrf_k}")
        if not 0.0 <= self.weight <= 1.0:
            raise UsageError("hybrid_weight", f"must be between 0 and 1 (the dense share), got {self.weight}")
        if self.depth < 1:
            raise UsageError("hybrid_depth", f"must be >= 1, got {self.depth}")


def as_fusion(value: "str | Fusion") -> Fusion:
    fusion = Fusion(method=value) if isinstance(value, str) else value
    if not isinstance(fusion, Fusion):
        raise UsageError("hybrid", f"must be one of {', '.join(HYBRID_MODES)} or a Fusion, got {value!r}")
    fusion.check()
    return fusion


Ranking = Sequence[tuple[str, float]]  # (docid, score), best first


def rrf(rankings: Sequence[Ranking], rrf_k: float = 60.0) -> dict[str, float]:
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, (docid, _) in enumerate(ranking, start=1):
            fused[docid] = fused.get(docid, 0.0) + 1.0 / (rrf_k + rank)
    return fused


def min_max(ranking: Ranking) -> dict[str, float]:
    """Scores mapped to [0, 1] over the list (all equal: all 1)."""
    if not ranking:
        return {}
    values = [s for _, s in ranking]
    low, high = min(values), max(values)
    if high == low:
        return {docid: 1.0 for docid, _ in ranking}
    return {docid: (s - low) / (high - low) for docid, s in ranking}


def linear(dense: Ranking, lexical: Ranking, weight: float = 0.5) -> dict[str, float]:
    d, x = min_max(dense), min_max(lexical)
    return {docid: weight * d.get(docid, 0.0) + (1.0 - weight) * x.get(docid, 0.0) for docid in d.keys() | x.keys()}


def fuse(dense: Ranking, lexical: Ranking, fusion: Fusion) -> list[tuple[str, float]]:
    """The fused ranking (best first, ties by docid) of two rankings of documents."""
    if fusion.method == "rrf":
        scores = rrf([dense, lexical], fusion.rrf_k)
    elif fusion.method == "linear":
        scores = linear(dense, lexical, fusion.weight)
    else:
        scores = dict(lexical)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def hybrid_search(snap: "Snapshot", queries: list[str], k: int, hybrid: "str | Fusion",
                  dense: Callable[[int], list[list[Hit]]], with_fields: bool) -> list[list[Hit]]:
    """Fused top-k hits per query; `dense(depth)` gives the dense document hits of the same snapshot.

    A hit the dense side found keeps its fields (in chunk mode: its best passage and offsets);
    a hit only BM25 found carries the stored title and text, without chunk offsets.
    """
    fusion = as_fusion(hybrid)
    if k < 1:
        raise UsageError("k", f"must be >= 1, got {k}")
    depth = max(fusion.depth, k)
    lexical = snap.lexical().search(queries, depth)
    dense_lists = dense(depth) if fusion.method != "bm25" else [[] for _ in queries]
    fetch = with_fields and snap.settings.get("store_text")
    results = []
    for lex, found in zip(lexical, dense_lists):
        by_id = {snap.segments[h.segment].docid(h.doc): h for h in lex}
        dense_by_id = {hit.docid: hit for hit in found}
        ranked = fuse([(h.docid, h.score) for h in found], [(d, h.score) for d, h in by_id.items()], fusion)
        hits = []
        for rank, (docid, score) in enumerate(ranked[:k], start=1):
            if docid in dense_by_id:
                hits.append(dataclasses.replace(dense_by_id[docid], score=score, rank=rank))
                continue
            h = by_id[docid]
            title, text = snap.segments[h.segment].fields(h.doc) if fetch else ("", "")
            hits.append(Hit(docid, score, rank, title, text))
        results.append(hits)
    return results
