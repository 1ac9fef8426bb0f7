"""Searcher: query text -> encoder -> vector[:dim] -> FAISS top-k per segment -> merged hits.

A searcher pins one generation of the index (a consistent snapshot). `reopen()` moves to the
newest generation without a pause: searches in flight finish on the snapshot they started
with, which is released when its last search returns. `follow=True` checks for new commits
before a search (at most every `follow_interval` seconds) and reopens by itself.

Funnel search (`rerank_dim=`) takes candidates from a cheap low-dim index and re-scores them
with the stored full-dimension vectors, the Matryoshka trick: most of the full-dim quality at
the low-dim index's cost.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from .aggregate import DocScore, aggregate as aggregate_chunks
from .encoder import Encoder, EncoderSpec
from . import validate
from .errors import IndexFormatError, ModelLoadError, UsageError
from .index.files import FileCache
from .index.snapshot import Snapshot, StoredDocument
from .index.writer import index_key
from .matryoshka import prepare
from .models import load_encoder

if TYPE_CHECKING:
    from .hybrid import Fusion

CHUNK_DEPTH = 20  # chunk rows fetched per requested document before aggregating
MAX_CHUNK_DEPTH = 20_000  # chunk mode never deepens past this many rows (or CHUNK_DEPTH * 16 * k)
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


def encoder_spec(raw: dict) -> EncoderSpec:
    """The EncoderSpec fields of a generation's encoder record (which also holds its source)."""
    names = {f.name for f in dataclasses.fields(EncoderSpec)}
    return EncoderSpec.from_dict({k: v for k, v in raw.items() if k in names})


class Searcher:
    """Top-k search over one index folder; safe to call from several threads at once."""

    def __init__(
        self,
        index_dir: str | Path,
        dim: int | None = None,
        device: str | None = None,
        *,
        kind: str | None = None,
        encoder: Encoder | None = None,
        model: str | None = None,
        dtype: torch.dtype | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        mmap: bool = False,
        generation: int | None = None,
        follow: bool = False,
        follow_interval: float = 0.5,
        checks: str = "full",
    ):
        """`checks="full"` verifies every file's checksum before the first search (once per process
        per file); "cheap" checks sizes, headers and counts only, for indexes too big to hash."""
        if not isinstance(index_dir, (str, Path)):
            raise UsageError("index_dir", f"expected a path, got {type(index_dir).__name__}")
        validate.optional_integer("dim", dim)
        validate.check_device(device)
        validate.optional_integer("nprobe", nprobe)
        validate.optional_integer("ef_search", ef_search)
        validate.optional_integer("generation", generation)
        if not isinstance(follow_interval, (int, float)) or follow_interval < 0:
            raise UsageError("follow_interval", f"expected seconds >= 0, got {follow_interval!r}")
        self.root = Path(index_dir)
        self._cache = FileCache()
        self._checks = checks
        self._snap = Snapshot(self.root, generation, cache=self._cache, checks=checks)
        self._users: dict[int, int] = {}
        self._retired: list[Snapshot] = []
        self._lock = threading.Lock()
        self._closed = False
        self.follow, self.follow_interval, self._checked = follow and generation is None, follow_interval, time.monotonic()
        self._requested_dim, self._requested_kind, self._nprobe, self._ef_search, self._mmap = dim, kind, nprobe, ef_search, mmap
        self._device, self._dtype = device, dtype
        spec = encoder_spec(self._snap.generation.encoder)
        self._encoder = encoder if encoder is not None else self._load_encoder(spec, model)
        self._check(self._encoder, spec)
        self._encoders = {spec.fingerprint: self._encoder}
        self._select_index(self._snap)

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self._snap.number

    @property
    def dim(self) -> int:
        return self._entry["dim"]

    @property
    def encoder(self) -> Encoder | None:
        return self._encoder

    @property
    def encoder_spec(self) -> EncoderSpec:
        return encoder_spec(self._snap.generation.encoder)

    def _check(self, encoder: Encoder | None, spec: EncoderSpec) -> None:
        if encoder is None:
            return
        if spec.family == "vectors":  # imported vectors: only the dimension can be checked
            if encoder.dim != spec.dim:
                raise IndexFormatError(f"{self.root} holds {spec.dim}-d vectors; the encoder gives {encoder.dim}-d")
            return
        check_encoder(encoder.spec, spec, self.root)

    def _load_encoder(self, spec: EncoderSpec, model: str | None = None) -> Encoder | None:
        if model is None and spec.family == "vectors":
            return None  # imported vectors without a named encoder: search_vectors only
        name = model or spec.name
        try:
            return load_encoder(name, device=self._device, dtype=self._dtype, max_length=spec.max_length)
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"{self.root} was built with encoder '{spec.name}' (fingerprint {spec.fingerprint}), which cannot be "
                f"loaded here: {exc}. Pass the same model from another place with --model PATH "
                "(Searcher(..., model=PATH)); its fingerprint must match"
            ) from None

    def _select_index(self, snap: Snapshot) -> None:
        self._entry = snap.index_entry(self._requested_dim, self._requested_kind)
        self._index_name = index_key(self._entry)
        self.index_kind = self._entry["kind"]

    def reopen(self) -> bool:
        """Move to the newest generation; returns whether it changed. Searches never pause.

        After a `refresh` with another model, the new generation's encoder is loaded first and
        both switch together, so every result list comes from one generation and its encoder.
        """
        if self._closed:
            raise IndexFormatError("this Searcher is closed")
        latest = self._snap.dir.latest()
        if latest == self._snap.number:
            return False
        fresh = Snapshot(self.root, cache=self._cache, previous=self._snap, checks=self._checks)
        try:
            spec = encoder_spec(fresh.generation.encoder)
            encoder = self._encoders.get(spec.fingerprint) or self._load_encoder(spec)
            self._check(encoder, spec)
        except Exception:
            fresh.close()
            raise
        with self._lock:
            self._encoders = {spec.fingerprint: encoder}  # the old one is dropped with the old generation
            old, self._snap, self._encoder = self._snap, fresh, encoder
            self._select_index(fresh)
            self._retire(old)
        return True

    def _retire(self, snap: Snapshot) -> None:
        if self._users.get(id(snap), 0) == 0:
            snap.close()
        else:
            self._retired.append(snap)

    @contextlib.contextmanager
    def _use(self) -> Iterator[tuple[Snapshot, Encoder | None, str, int]]:
        if self.follow and time.monotonic() - self._checked > self.follow_interval:
            self._checked = time.monotonic()
            with contextlib.suppress(IndexFormatError):
                self.reopen()
        with self._lock:
            if self._closed:
                raise IndexFormatError("this Searcher is closed")
            snap, encoder, name, dim = self._snap, self._encoder, self._index_name, self._entry["dim"]
            self._users[id(snap)] = self._users.get(id(snap), 0) + 1
        try:
            yield snap, encoder, name, dim
        finally:
            with self._lock:
                self._users[id(snap)] -= 1
                if self._users[id(snap)] == 0:
                    del self._users[id(snap)]
                    if snap in self._retired:
                        self._retired.remove(snap)
                        snap.close()
                    if self._closed and not self._users:
                        self._cache.close()

    def close(self) -> None:
        """Release files and the generation pin; searches still running finish first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._retire(self._snap)
            if not self._users:
                self._cache.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- documents -----------------------------------------------------------------------------
    def doc(self, docid: str) -> StoredDocument | None:
        """The stored document with this id in the pinned generation (None if absent or deleted)."""
        with self._use() as (snap, _, _, _):
            return snap.document(docid)

    # --- search --------------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, **kwargs) -> list[Hit]:
        return self.batch_search([validate.query(query)], k, **kwargs)[0]

    def batch_search(
        self,
        queries: Sequence[str],
        k: int = 10,
        *,
        rerank_dim: int | None = None,
        candidates: int | None = None,
        aggregate: str | None = None,
        with_fields: bool = True,
        hybrid: "str | Fusion | None" = None,
    ) -> list[list[Hit]]:
        """Top-k hits per query.

        `rerank_dim` re-scores `candidates` (default max(10k, 100)) rows at that dim. In a chunk-mode
        index, chunks are aggregated per document (`aggregate`: maxp, first or sum; default: the
        build's choice) and each document is returned once, with its best passage.
        `hybrid` ("rrf", "linear", "bm25" or a hybrid.Fusion; index built with --bm25) fuses the
        dense document ranking with BM25 (see dramasearch/hybrid.py).
        """
        queries = validate.queries(queries)
        with self._use() as state:
            encoder = state[1]
            if encoder is None:
                raise ModelLoadError(f"{self.root} holds imported vectors without an encoder: use search_vectors(), "
                                     "or open it with Searcher(..., model=NAME) / --model NAME")
            if hybrid is not None:  # --- hybrid / BM25 search (dramasearch/hybrid.py) ---
                from .hybrid import hybrid_search

                dense = lambda depth: self._search(state, encoder.encode_queries(list(queries), show_progress=False),
                                                   depth, rerank_dim, candidates, aggregate, with_fields)
                return hybrid_search(state[0], list(queries), k, hybrid, dense, with_fields)
            vectors = encoder.encode_queries(list(queries), show_progress=False)
            return self._search(state, vectors, k, rerank_dim, candidates, aggregate, with_fields)

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
        """Search with full-dim query vectors (already encoded). Every list comes from one generation."""
        with self._use() as state:
            return self._search(state, vectors, k, rerank_dim, candidates, aggregate, with_fields)

    def _search(self, state, vectors, k, rerank_dim, candidates, aggregate, with_fields) -> list[list[Hit]]:
        snap, _, name, dim = state
        spec = encoder_spec(snap.generation.encoder)
        validate.k(k)
        validate.optional_integer("rerank_dim", rerank_dim, maximum=spec.dim)
        validate.optional_integer("candidates", candidates, maximum=validate.MAX_K)
        validate.aggregate(aggregate)
        try:
            vectors = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise UsageError("vectors", f"expected a float array ({exc})") from None
        if vectors.ndim != 2 or vectors.shape[1] != spec.dim or not np.isfinite(vectors).all():
            raise UsageError("vectors", f"expected finite query vectors of shape (n, {spec.dim}), got {vectors.shape}")
        live = max(snap.generation.rows, 1)
        k_rows = min(k, live)  # k beyond the rows that exist costs nothing extra
        depth = k_rows if rerank_dim is None else min(max(candidates or 10 * k, k, 100), live)
        plan = (snap, name, dim, spec)
        if not snap.segments or not snap.segments[0].info.chunked:
            scores, segs, rows = self._rows(plan, vectors, depth, rerank_dim, k_rows)
            return self._hits(snap, scores, segs, rows, with_fields)
        how = aggregate or snap.settings.get("aggregate", "maxp")
        limit = min(live, max(MAX_CHUNK_DEPTH, CHUNK_DEPTH * 16 * k))
        results = []
        for query in vectors:
            d = min(max(depth, CHUNK_DEPTH * k), limit)
            while True:
                scores, segs, rows = self._rows(plan, query[None], d, rerank_dim, d)
                docs, parents = self._aggregate(snap, scores[0], segs[0], rows[0], how, k)
                if len(docs) >= k or d >= limit:
                    break
                d = min(d * 4, limit)
            results.append(self._chunk_hits(snap, docs, parents, with_fields))
        return results

    def _rows(self, plan, vectors: np.ndarray, depth: int, rerank_dim: int | None, keep: int):
        snap, name, dim, spec = plan
        queries = prepare(vectors, dim, spec.normalize)
        scores, segs, rows = snap.search(queries, depth, name, self._mmap, self._ef_search, self._nprobe)
        if rerank_dim is not None:
            scores, segs, rows = self._rerank(plan, vectors, segs, rows, rerank_dim, keep)
        return scores, segs, rows

    def _rerank(self, plan, queries: np.ndarray, segs: np.ndarray, rows: np.ndarray, dim: int, keep: int):
        snap, _, _, spec = plan
        q = prepare(queries, dim, spec.normalize)
        out_scores = np.full((len(rows), keep), -np.inf, dtype=np.float32)
        out_segs = np.full((len(rows), keep), -1, dtype=np.int64)
        out_rows = np.full((len(rows), keep), -1, dtype=np.int64)
        for i in range(len(rows)):
            valid = segs[i] >= 0
            cand_segs, cand_rows = segs[i][valid], rows[i][valid]
            vectors = np.empty((len(cand_rows), spec.dim), dtype=np.float32)
            for s in np.unique(cand_segs):
                where = np.nonzero(cand_segs == s)[0]
                vectors[where] = snap.segments[s].vectors(cand_rows[where])
            scores = prepare(vectors, dim, spec.normalize) @ q[i]
            top = np.argsort(-scores, kind="stable")[:keep]
            n = len(top)
            out_scores[i, :n], out_segs[i, :n], out_rows[i, :n] = scores[top], cand_segs[top], cand_rows[top]
        return out_scores, out_segs, out_rows

    def _aggregate(self, snap: Snapshot, scores, segs, rows, how: str, k: int) -> tuple[list[DocScore], list]:
        valid = segs >= 0
        scores, segs, rows = scores[valid], segs[valid], rows[valid]
        infos = [snap.segments[s].row_info(r) for s, r in zip(segs.tolist(), rows.tolist())]
        parents = [(int(s), info) for s, info in zip(segs.tolist(), infos)]
        keys = [(s, info[0]) for s, info in parents]
        ids, _ = _stored(snap, keys, fields=False)
        return aggregate_chunks(scores, [ids[key] for key in keys], [info[1] for _, info in parents], how, k), parents

    def _chunk_hits(self, snap: Snapshot, docs: list[DocScore], parents: list, with_fields: bool) -> list[Hit]:
        stores_text = with_fields and snap.settings.get("store_text")
        best = [parents[doc.best] for doc in docs]
        _, fields = _stored(snap, [(s, info[0]) for s, info in best], ids=False, fields=stores_text)
        hits = []
        for rank, (doc, (s, (number, chunk, start, end))) in enumerate(zip(docs, best), start=1):
            title, text = fields.get((s, number), ("", ""))
            passage = (f"{title} {text}".strip() if title else text)[start:end] if stores_text else ""
            hits.append(Hit(doc.docid, doc.score, rank, title, passage, chunk, start, end))
        return hits

    def _hits(self, snap: Snapshot, scores: np.ndarray, segs: np.ndarray, rows: np.ndarray,
              with_fields: bool) -> list[list[Hit]]:
        """Hits of every query in a batch; each (segment, row) is read once for the whole batch."""
        found = segs >= 0  # -1: fewer live documents than k
        ids, fields = _stored(snap, zip(segs[found].tolist(), rows[found].tolist()),
                              fields=with_fields and snap.settings.get("store_text"))
        empty = ("", "")
        return [
            [Hit(ids[key], score, rank, *fields.get(key, empty))
             for rank, (score, key) in enumerate(zip(q_scores, zip(q_segs, q_rows)), start=1) if key[0] >= 0]
            for q_scores, q_segs, q_rows in zip(scores.tolist(), segs.tolist(), rows.tolist())
        ]


def _stored(snap: Snapshot, keys, *, ids: bool = True, fields: bool) -> tuple[dict, dict]:
    """Ids and/or (title, text) of (segment, document) keys, each read once, batched per
    segment (Segment.docids / fields_of)."""
    by_segment: dict[int, set[int]] = {}
    for s, doc in keys:
        by_segment.setdefault(s, set()).add(doc)
    found: dict[tuple[int, int], str] = {}
    texts: dict[tuple[int, int], tuple[str, str]] = {}
    for s, docs in by_segment.items():
        wanted = sorted(docs)
        keyed = [(s, doc) for doc in wanted]
        segment = snap.segments[s]
        if ids:
            found.update(zip(keyed, segment.docids(wanted)))
        if fields:
            texts.update(zip(keyed, segment.fields_of(wanted)))
    return found, texts


def check_encoder(actual: EncoderSpec, expected: EncoderSpec, where: Path) -> None:
    """Refuse to query an index with an encoder other than the one that built it."""
    diffs = [f"{f}: index has {getattr(expected, f)!r}, encoder has {getattr(actual, f)!r}"
             for f in IDENTITY_FIELDS if getattr(actual, f) != getattr(expected, f)]
    if diffs:
        raise IndexFormatError(
            f"{where} was built with encoder '{expected.name}', which does not match the one given "
            f"('{actual.name}'): " + "; ".join(diffs)
        )
