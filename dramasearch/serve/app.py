"""The HTTP layer: FastAPI routes over a `SearchService`, and how each failure becomes a status code.

Status codes (each declared in the OpenAPI schema of the routes that can return it):
- 400 the body is not JSON;  413 the body is larger than `max_body_bytes`;
- 422 the JSON does not fit the request schema (wrong types, k or lengths out of range, empty
  or blank query, unknown field) or the index (a dim that is not built, rerank_dim above the
  encoder's dim); dramasearch's UsageError and InputError (bad arguments / data) map here too;
- 404 no live document with that id (or no such route);
- 503 with Retry-After: the queue is full, or the index cannot be read right now
  (IndexFormatError, IndexDamagedError, ModelLoadError: a server-side state an operator or the
  next commit fixes, not the client's mistake);
- 500 a bug: anything else, reported as "internal error" with its type.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import IndexFormatError, InputError, ModelLoadError, UsageError
from ..searcher import Hit
from . import schemas
from .batcher import QueueFull
from .service import RequestError, SearchService

log = logging.getLogger("dramasearch.serve")

_ERROR = {"model": schemas.ErrorOut}
_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_UNAVAILABLE = {503: {**_ERROR, "description": "Queue full or index unavailable; retry later.", "headers": _RETRY}}
_BUG = {500: {**_ERROR, "description": "Internal error (a bug in dramasearch)."}}
_POST = {
    400: {**_ERROR, "description": "The body is not valid JSON."},
    413: {**_ERROR, "description": "The body is larger than the service accepts."},
    422: {**_ERROR, "description": "The request does not fit the schema or the index."},
    **_UNAVAILABLE, **_BUG,
}


def create_app(service: SearchService, *, close_service_on_shutdown: bool = False) -> FastAPI:
    """The ASGI app. `close_service_on_shutdown`: the server owns the service (uvicorn's lifespan
    ends it after the last request); tests keep their service across app instances."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if close_service_on_shutdown:
            service.close()

    app = FastAPI(title="dramasearch", version="1", lifespan=lifespan,
                  description="Dense retrieval over a dramasearch index that follows new generations.")
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)
    _error_handlers(app, service.settings.retry_after)

    # The search routes build their JSON directly (the hits are plain data already): re-validating
    # every hit through the response model cost more than the rest of the HTTP path. The schema still
    # declares the model, and the fuzz test checks the responses against it.
    @app.post("/search", response_model=schemas.SearchResponse, responses=_POST)
    async def search(request: schemas.SearchRequest) -> JSONResponse:
        """Top-k hits for one query; concurrent queries share encoder batches."""
        hits = (await service.search([request.query], request))[0]
        return JSONResponse({"hits": [_hit(h) for h in hits]})

    @app.post("/search/batch", response_model=schemas.BatchSearchResponse, responses=_POST)
    async def batch_search(request: schemas.BatchSearchRequest) -> JSONResponse:
        """Top-k hits for each query, in order (all queued together, or 503 if they do not fit)."""
        results = await service.search(request.queries, request)
        return JSONResponse({"results": [{"hits": [_hit(h) for h in hits]} for hits in results]})

    @app.get("/documents/{docid:path}", response_model=schemas.DocumentOut,
             responses={404: {**_ERROR, "description": "No live document with this id."},
                        422: {**_ERROR, "description": "The id is too long."}, **_UNAVAILABLE, **_BUG})
    def document(docid: str = Path(max_length=schemas.MAX_DOCID_CHARS)) -> schemas.DocumentOut:
        """The stored document (title and text are empty unless the index stores text)."""
        doc = service.document(docid)
        if doc is None:
            raise RequestError(404, f"no live document with id {docid!r}")
        return doc

    @app.get("/health", response_model=schemas.HealthOut, responses=_BUG)
    def health() -> schemas.HealthOut:
        """Liveness, the pinned generation and the queue's depth."""
        return service.health()

    @app.get("/info", response_model=schemas.InfoOut, responses={**_UNAVAILABLE, **_BUG})
    def info() -> schemas.InfoOut:
        """The newest generation: documents, dims, encoder; limits; micro-batching counters."""
        return service.info()

    return app


def _hit(hit: Hit) -> dict[str, Any]:
    return {"docid": hit.docid, "score": hit.score, "rank": hit.rank, "title": hit.title, "text": hit.text,
            "chunk": hit.chunk, "start": hit.start, "end": hit.end}


def _error(status: int, detail: str, errors: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "errors": errors or []}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI, retry_after: int) -> None:
    retry = {"Retry-After": str(retry_after)}

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                   "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return _error(400, "the body is not valid JSON", errors)
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return _error(422, summary or "invalid request", errors)

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(QueueFull)
    async def busy(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, f"busy: {exc}", headers=retry)

    @app.exception_handler(UsageError)
    @app.exception_handler(InputError)
    async def bad_argument(_: Request, exc: Exception) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(IndexFormatError)
    @app.exception_handler(ModelLoadError)
    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.error("index unavailable: %s", exc)
        return _error(503, f"index unavailable: {exc}", headers=retry)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, f"internal error ({type(exc).__name__}): {exc}")


class BodyLimit:
    """ASGI middleware: bodies above `max_bytes` get 413 before any route reads them.

    The body is buffered (at most `max_bytes`) and replayed, so a chunked upload without
    Content-Length is bounded too.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = _error(413, f"the body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)
