"""Searcher: query text -> encoder -> vector[:dim] -> FAISS top-k -> docstore -> Hits.

Funnel search (`rerank_dim=`) takes candidates from a cheap low-dim index and re-scores them
with the stored full-dimension vectors, the Matryoshka trick: most of the full-dim quality at
the low-dim index's cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .aggregate import DocScore, aggregate as aggregate_chunks
from .encoder import Encoder, EncoderSpec
from .errors import IndexFormatError
from .faiss_index import IndexSpec, apply_search_params, load_index
from .matryoshka import truncate_normalize
from .models import load_encoder
from .store import DocStore, IndexFolder

CHUNK_DEPTH = 20  # chunk rows fetched per requested document before aggregating
# Fields that must agree between the index's encoder and the one used for queries.
IDENTITY_FIELDS = ("family", "dim", "pooling", "normalize", "query_prefix", "document_prefix", "wrap_bos_eos", "fingerprint")


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~2x, and hits are built on the hot path
class Hit:
    docid: str
    score: float
    rank: int  # 1-based
    title: str = ""
    text: str = ""  # stored fields: empty unless the index was built with --store-text
    # Chunk-mode indexes: `text` is the document's best-matching passage, which is
    # content[start:end] of the document's encoded text (title + " " + text); `chunk` is its number.
    chunk: int | None = None
    start: int | None = None
    end: int | None = None


class Searcher:
    """Top-k search over one index folder; safe to call from several threads at once."""

    def __init__(
        self,
        index_dir: str | Path,
        dim: int | None = None,
        device: str | None = None,
        *,
        encoder: Encoder | None = None,
        dtype: torch.dtype | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        mmap: bool = False,
    ):
        self.folder = IndexFolder(index_dir)
        self.manifest = self.folder.read_manifest()
        self.encoder_spec = EncoderSpec.from_dict(self.manifest.encoder)
        self.encoder = encoder or load_encoder(
            self.encoder_spec.name, device=device, dtype=dtype, max_length=self.encoder_spec.max_length
        )
        check_encoder(self.encoder.spec, self.encoder_spec, self.folder.root)
        entry = _pick_index(self.manifest.indexes, dim, self.folder.root)
        self.index_spec = IndexSpec.from_dict(entry)
        self.index = load_index(self.folder.root / entry["file"], self.index_spec, mmap=mmap)
        if nprobe is not None or ef_search is not None:
            apply_search_params(self.index, self.index_spec, nprobe=nprobe, ef_search=ef_search)
        self.docstore = DocStore(self.folder, self.manifest.shards)
        self.chunked = self.docstore.spans is not None
        self.stores_text = bool(self.manifest.build.get("store_text"))
        self.default_aggregate = self.manifest.build.get("aggregate", "maxp")
        self._vectors: list[np.ndarray] | None = None  # full-dim shards, memory-mapped on first rerank

    @property
    def dim(self) -> int:
        return self.index_spec.dim

    def close(self) -> None:
        """Release the docstore's open files (also on leaving a `with Searcher(...)` block)."""
        self.docstore.close()
        self._vectors = None

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, query: str, k: int = 10, **kwargs) -> list[Hit]:
        return self.batch_search([query], k, **kwargs)[0]

    def batch_search(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        rerank_dim: int | None = None,
        candidates: int | None = None,
        aggregate: str | None = None,
        with_fields: bool = True,
    ) -> list[list[Hit]]:
        """Top-k hits per query.

        `rerank_dim` re-scores `candidates` (default max(10k, 100)) rows at that dim. In a chunk-mode
        index, chunks are aggregated per document (`aggregate`: maxp, first or sum; default: the
        build's choice) and each document is returned once, with its best passage.
        """
        if isinstance(queries, str):
            raise TypeError("batch_search() takes a list of queries; use search() for one")
        vectors = self.encoder.encode_queries(list(queries), show_progress=False)
        return self.search_vectors(
            vectors, k, rerank_dim=rerank_dim, candidates=candidates, aggregate=aggregate, with_fields=with_fields
        )

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        rerank_dim: int | None = None,
        candidates: int | None = None,
        aggregate: str | None = None,
        with_fields: bool = True,
    ) -> list[list[Hit]]:
        """Search with full-dim query vectors (already encoded)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        depth = k if rerank_dim is None else max(candidates or 10 * k, k, 100)
        if not self.chunked:
            scores, rows = self._rows(vectors, depth, rerank_dim, k)
            return [self._hits(s, r, with_fields) for s, r in zip(scores, rows)]
        how = aggregate or self.default_aggregate
        # Several chunks of one document compete for the same slots: look deeper, and deeper
        # again for a query whose chunks came from fewer than k documents.
        depth = min(max(depth, CHUNK_DEPTH * k), self.index.ntotal)
        results = []
        for query in vectors:
            while True:
                scores, rows = self._rows(query[None], depth, rerank_dim, depth)
                docs = self._aggregate(scores[0], rows[0], how, k)
                if len(docs) >= k or depth >= self.index.ntotal:
                    break
                depth = min(depth * 4, self.index.ntotal)
            results.append(self._chunk_hits(docs, rows[0], with_fields))
        return results

    def _rows(self, vectors: np.ndarray, depth: int, rerank_dim: int | None, keep: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(truncate_normalize(vectors, self.dim), depth)
        if rerank_dim is not None:
            scores, rows = self._rerank(vectors, rows, rerank_dim, keep)
        return scores, rows

    def _aggregate(self, scores: np.ndarray, rows: np.ndarray, how: str, k: int) -> list[DocScore]:
        valid = rows >= 0
        scores, rows = scores[valid], rows[valid]
        parents = [self.docstore.ids[r] for r in rows]
        return aggregate_chunks(scores, parents, self.docstore.spans[rows, 0], how, k)

    def _chunk_hits(self, docs: list[DocScore], rows: np.ndarray, with_fields: bool) -> list[Hit]:
        rows = rows[rows >= 0]
        hits = []
        for rank, doc in enumerate(docs, start=1):
            row = int(rows[doc.best])
            title, text = self.docstore.fields(row) if with_fields and self.stores_text else ("", "")
            chunk, start, end = (int(v) for v in self.docstore.spans[row])
            hits.append(Hit(doc.docid, doc.score, rank, title, text, chunk, start, end))
        return hits

    def _rerank(self, queries: np.ndarray, rows: np.ndarray, dim: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = truncate_normalize(queries, dim)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(rows), k), -1, dtype=np.int64)
        for i, candidate_rows in enumerate(rows):
            valid = candidate_rows[candidate_rows >= 0]
            docs = truncate_normalize(self._gather(valid), dim)
            scores = docs @ q[i]
            top = np.argsort(-scores, kind="stable")[:k]
            out_scores[i, : len(top)], out_rows[i, : len(top)] = scores[top], valid[top]
        return out_scores, out_rows

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Full-dim stored vectors of `rows`, read from the memory-mapped fp16 shards."""
        if self._vectors is None:
            self._vectors = [self.folder.load_embeddings(s["number"]) for s in self.manifest.shards]
        out = np.empty((len(rows), self.encoder_spec.dim), dtype=np.float32)
        shard_of, local = self.docstore.locate(rows)
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            out[where] = self._vectors[shard][local[where]]
        return out

    def _hits(self, scores: np.ndarray, rows: np.ndarray, with_fields: bool) -> list[Hit]:
        ids, fetch = self.docstore.ids, with_fields and self.stores_text
        hits = []
        for rank, (score, row) in enumerate(zip(scores.tolist(), rows.tolist()), start=1):
            if row < 0:  # fewer than k documents
                break
            title, text = self.docstore.fields(row) if fetch else ("", "")
            hits.append(Hit(ids[row], score, rank, title, text))
        return hits


def check_encoder(actual: EncoderSpec, expected: EncoderSpec, where: Path) -> None:
    """Refuse to query an index with an encoder other than the one that built it."""
    diffs = [f"{f}: index has {getattr(expected, f)!r}, encoder has {getattr(actual, f)!r}"
             for f in IDENTITY_FIELDS if getattr(actual, f) != getattr(expected, f)]
    if diffs:
        raise IndexFormatError(
            f"{where} was built with encoder '{expected.name}', which does not match the one given "
            f"('{actual.name}'): " + "; ".join(diffs)
        )


def _pick_index(indexes: list[dict], dim: int | None, where: Path) -> dict:
    """The index at `dim`, or the largest dim built when none is asked for."""
    if not indexes:
        raise IndexFormatError(f"{where}: the manifest lists no FAISS index")
    if dim is None:
        return max(indexes, key=lambda ix: ix["dim"])
    for entry in indexes:
        if entry["dim"] == dim:
            return entry
    built = sorted(ix["dim"] for ix in indexes)
    raise IndexFormatError(f"{where}: no index at dim {dim}; built dims: {built} (add one with `dramasearch add-dim`)")
