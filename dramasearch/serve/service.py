"""The search service behind the HTTP layer: searchers that follow the index, and the micro-batcher.

It holds one `Searcher(follow=True)` for the default dim (and, on demand, one per other built
dim, sharing the encoder), so every commit (add, delete, compact, refresh) is picked up without a
restart, and searches in flight finish on the generation they started with.
"""
from __future__ import annotations

import asyncio
import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from ..encoder import DTYPES, default_batch_tokens
from ..errors import IndexFormatError, UsageError
from ..index.generation import Generation, IndexDir
from ..searcher import Hit, Searcher
from . import schemas
from .batcher import MicroBatcher


@dataclass(frozen=True)
class ServeSettings:
    index: str | Path
    dim: int | None = None  # default index dim (None: the largest built)
    model: str | None = None  # load the index's encoder from here (fingerprint checked)
    device: str | None = None
    dtype: str = "auto"
    batch_tokens: int | None = None  # padded tokens per encoder batch (default: the encoder's budget)
    max_batch: int = 64  # queries per batch
    max_wait_ms: float = 2.0  # how long the first query of a batch waits for company
    queue_size: int = 256  # queries waiting at most; more get 503 + Retry-After
    faiss_threads: int | None = 1  # OpenMP threads per FAISS search (None: FAISS's default)
    torch_threads: int | None = None  # intra-op threads for the encoder (None: torch's default)
    follow_interval: float = 0.5  # seconds between checks for a new generation
    retry_after: int = 1  # seconds, sent with every 503
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float | None = 30.0  # SIGTERM: how long requests in flight may take to finish

    def __post_init__(self) -> None:
        for name in ("max_batch", "queue_size", "retry_after", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("batch_tokens", "faiss_threads", "torch_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_wait_ms", "follow_interval"):
            if getattr(self, name) < 0:
                raise UsageError(name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class SearchKey:
    """Validated search options; queries with equal keys share one batch_search call."""

    dim: int | None
    k: int
    rerank_dim: int | None
    candidates: int | None
    aggregate: str | None
    fields: bool
    hybrid: str | None = None


class RequestError(Exception):
    """A request the service refuses, with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class SearchService:
    """Searches through the micro-batcher, documents, health and info; what the routes call."""

    def __init__(self, settings: ServeSettings):
        if settings.dtype not in DTYPES:
            raise UsageError("dtype", f"must be one of {sorted(DTYPES)}, got {settings.dtype!r}")
        self.settings = settings
        self.root = Path(settings.index)
        self._main = Searcher(self.root, dim=settings.dim, device=settings.device, model=settings.model,
                              dtype=DTYPES[settings.dtype], follow=True, follow_interval=settings.follow_interval)
        if self._main.encoder is None:
            self._main.close()
            raise UsageError("model", f"{self.root} holds imported vectors without an encoder: "
                                      "serve it with --model NAME (the encoder that made the vectors)")
        self._others: dict[int, Searcher] = {}
        self._lock = threading.Lock()
        self._record: tuple[int, Generation] | None = None  # (number, its commit record)
        budget = settings.batch_tokens or default_batch_tokens(self._main.encoder.device)
        self.batcher = MicroBatcher(self._search, self._count_tokens, max_tokens=budget, max_queries=settings.max_batch,
                                    max_wait=settings.max_wait_ms / 1000, capacity=settings.queue_size,
                                    setup=functools.partial(_set_threads, settings.faiss_threads, settings.torch_threads))

    # --- search --------------------------------------------------------------------------------
    async def search(self, queries: list[str], options: schemas.SearchOptions) -> list[list[Hit]]:
        """Queue the queries (all or none: QueueFull) and wait for their hits."""
        if len(queries) > self.batcher.capacity:  # could never be queued: not a "retry later"
            raise RequestError(422, f"queries: at most {self.batcher.capacity} per request (the queue size)")
        futures = self.batcher.submit(queries, self.key(options))
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def key(self, options: schemas.SearchOptions) -> SearchKey:
        """Checks that need the index (which dims are built, the encoder's dim) -> 422 with the reason."""
        record = self.record()
        dim = options.dim if options.dim != self._main.dim else None
        if dim is not None and dim not in record.dims:
            raise RequestError(422, f"dim: no index at dim {dim}; built dims: {record.dims}")
        full = record.encoder["dim"]
        if options.rerank_dim is not None and options.rerank_dim > full:
            raise RequestError(422, f"rerank_dim: {options.rerank_dim} is above the encoder's dim {full}")
        if options.hybrid is not None and record.settings.get("bm25") is None:
            raise RequestError(422, "hybrid: this index was built without --bm25, so it has no BM25 side; rebuild "
                                    "it with `dramasearch build-index ... --bm25`")
        return SearchKey(dim, options.k, options.rerank_dim, options.candidates, options.aggregate, options.fields,
                         options.hybrid)

    def _search(self, key: SearchKey, queries: list[str]) -> list[list[Hit]]:
        return self._searcher(key.dim).batch_search(queries, key.k, rerank_dim=key.rerank_dim, candidates=key.candidates,
                                                    aggregate=key.aggregate, with_fields=key.fields,
                                                    hybrid=key.hybrid)

    def _searcher(self, dim: int | None) -> Searcher:
        if dim is None:
            return self._main
        with self._lock:
            searcher = self._others.get(dim)
            if searcher is None:
                searcher = Searcher(self.root, dim=dim, encoder=self._main.encoder, device=self.settings.device,
                                    dtype=DTYPES[self.settings.dtype], follow=True,
                                    follow_interval=self.settings.follow_interval)
                self._others[dim] = searcher
            return searcher

    def _count_tokens(self, query: str) -> int:
        encoder = self._main.encoder
        return len(encoder.tokenize([query], encoder.spec.query_prefix)[0])

    # --- documents and state -------------------------------------------------------------------
    def document(self, docid: str) -> schemas.DocumentOut | None:
        doc = self._main.doc(docid)
        return None if doc is None else schemas.DocumentOut(docid=doc.docid, title=doc.title, text=doc.text)

    def record(self) -> Generation:
        """The commit record of the generation the default searcher pinned (re-read only when it changes)."""
        while True:
            number = self._main.generation
            cached = self._record
            if cached is not None and cached[0] == number:
                return cached[1]
            try:
                self._record = (number, IndexDir(self.root).read(number))
                return self._record[1]
            except IndexFormatError:
                if self._main.generation == number:  # not the race below: a real problem with the index
                    raise
                # the searcher moved to a newer generation and the one read was collected: read that one

    def health(self) -> schemas.HealthOut:
        counters = self.batcher.counters()
        return schemas.HealthOut(status="ok", generation=self._main.generation, queued=counters.queued,
                                 in_flight=counters.in_flight)

    def info(self) -> schemas.InfoOut:
        self._main.reopen()  # report the newest generation even when no search has run since it was committed
        g = self.record()
        e = g.encoder
        c = self.batcher.counters()
        return schemas.InfoOut(
            generation=g.generation, documents=g.documents, rows=g.rows, segments=len(g.segments), dims=g.dims,
            default_dim=self._main.dim, indexes=[schemas.IndexOut(dim=ix["dim"], kind=ix["kind"]) for ix in g.indexes],
            model=schemas.ModelOut(name=e["name"] or "", family=e["family"], dim=e["dim"], max_length=e["max_length"],
                                   fingerprint=e["fingerprint"]),
            store_text=bool(g.settings.get("store_text")), chunked=g.settings.get("long_doc") == "chunk",
            limits=self.limits(),
            batching=schemas.BatchingStats(
                queries=c.queries, batches=c.batches, encoder_calls=c.encoder_calls,
                mean_encoder_batch=c.queries / c.encoder_calls if c.encoder_calls else 0.0,
                mean_batch_tokens=c.batch_tokens / c.batches if c.batches else 0.0,
                rejected=c.rejected, queued=c.queued, capacity=c.capacity),
        )

    def limits(self) -> dict[str, int]:
        return {"max_k": schemas.MAX_K, "max_query_chars": schemas.MAX_QUERY_CHARS,
                "max_batch_queries": schemas.MAX_BATCH_QUERIES, "max_candidates": schemas.MAX_CANDIDATES,
                "queue_size": self.settings.queue_size, "max_body_bytes": self.settings.max_body_bytes,
                "batch_tokens": self.batcher.max_tokens}

    def close(self) -> None:
        """Answer what is queued, then release the index."""
        self.batcher.close()
        with self._lock:
            for searcher in self._others.values():
                searcher.close()
            self._others.clear()
        self._main.close()


def _set_threads(faiss_threads: int | None, torch_threads: int | None) -> None:
    """Run in the thread that searches: FAISS's OpenMP thread count is a per-thread setting, so set
    elsewhere it would not apply. It matters: with FAISS's default team (all cores) in the search
    thread, its spinning OpenMP workers starved the encoder's and one search took 20x longer (2 cores)."""
    if faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(faiss_threads)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
