"""The service's JSON shapes: requests, responses and errors, as pydantic models.

The limits live in the models so the OpenAPI schema states them exactly: a client (or a
fuzzer) can tell from the schema alone what the service accepts. Request models forbid
unknown fields, so a misspelt option is a 422 rather than silently ignored; new options
(e.g. `hybrid`) are added as fields of `SearchOptions`.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .. import validate

MAX_QUERY_CHARS = validate.MAX_QUERY_CHARS  # the library's rule, so the service and the API agree
MAX_K = 1000  # per request: stricter than the library's 100,000, since a service answers many clients
MAX_CANDIDATES = 100_000
MAX_BATCH_QUERIES = 128  # per batch request; the queue bounds the total
MAX_DOCID_CHARS = 1024


Query = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S"),  # \S: not empty or blank
]  # pydantic also refuses lone surrogates ("\ud800"), which JSON allows and no tokenizer reads


class SearchOptions(BaseModel):
    """Options shared by single and batch search; what `Searcher.batch_search` takes."""

    model_config = ConfigDict(extra="forbid", strict=True)  # "k": true or "10" is a mistake, not 1 or 10

    k: int = Field(10, ge=1, le=MAX_K, description="Hits per query; capped at the live documents.")
    dim: int | None = Field(None, ge=1, description="Which FAISS index to search (a built dim; default: the service's).")
    rerank_dim: int | None = Field(None, ge=1, description="Re-score candidates with stored vectors at this dim "
                                                            "(at most the encoder's dim).")
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES, description="Funnel depth for rerank_dim "
                                                                               "(default max(10k, 100)).")
    aggregate: Literal["maxp", "first", "sum"] | None = Field(
        None, description="Chunk-mode indexes: document score from its chunks (default: the build's choice).")
    fields: bool = Field(True, description="Return stored titles and texts (empty unless built with --store-text).")
    hybrid: Literal["rrf", "linear", "bm25"] | None = Field(
        None, description="Fuse BM25 with the dense hits (rrf or linear), or BM25 alone; the index must have been "
                          "built with --bm25 (422 otherwise).")


class SearchRequest(SearchOptions):
    query: Query


class BatchSearchRequest(SearchOptions):
    queries: list[Query] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


class HitOut(BaseModel):
    docid: str
    score: float
    rank: int
    title: str
    text: str
    chunk: int | None = None  # chunk-mode indexes: the best passage's number and offsets
    start: int | None = None
    end: int | None = None


class SearchResponse(BaseModel):
    hits: list[HitOut]


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class DocumentOut(BaseModel):
    docid: str
    title: str
    text: str


class BatchingStats(BaseModel):
    """Counters of the micro-batcher since the service started."""

    queries: int
    batches: int  # collections of queued queries taken together
    encoder_calls: int  # batch_search calls: one per group of equal options within a batch
    mean_encoder_batch: float  # queries per encoder call
    mean_batch_tokens: float  # padded tokens (queries x longest) per batch
    rejected: int  # queries refused with 503 because the queue was full
    queued: int  # waiting now
    capacity: int


class HealthOut(BaseModel):
    status: Literal["ok"]
    generation: int
    queued: int
    in_flight: int  # queries accepted and not yet answered (queued or being searched)


class ModelOut(BaseModel):
    name: str
    family: str
    dim: int
    max_length: int
    fingerprint: str


class IndexOut(BaseModel):
    dim: int
    kind: str


class InfoOut(BaseModel):
    generation: int
    documents: int
    rows: int
    segments: int
    dims: list[int]
    default_dim: int
    indexes: list[IndexOut]
    model: ModelOut
    store_text: bool
    chunked: bool
    limits: dict[str, int]
    batching: BatchingStats


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error the service returns has this shape."""

    detail: str
    errors: list[FieldError] = []
