"""`dramasearch serve`: hits equal Searcher.search, bad input gets 4xx, overload gets 503, the
service follows a living index without failing a request, the OpenAPI schema holds under
fuzzing, and SIGTERM lets requests in flight finish.

Index: examples/tiny (30 documents we wrote) encoded with the packaged MiniLM at 128 and 384 dims.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.refresh import refresh
from dramasearch.index.updates import add_documents, delete_documents
from dramasearch.searcher import Searcher
from dramasearch.serve import SearchService, ServeSettings, create_app
from dramasearch.serve.batcher import MicroBatcher, QueueFull
from dramasearch.serve.schemas import MAX_K, MAX_QUERY_CHARS, SearchOptions

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "tiny"
QUERIES = [json.loads(line)["text"] for line in (TINY / "queries.jsonl").read_text().splitlines() if line.strip()]


def _build(path: Path, minilm) -> Path:
    settings = BuildSettings(corpus=str(TINY), output=str(path), model="minilm", dims=(128, 384), store_text=True,
                             dtype="fp32")
    build_index(settings, encoder=minilm)
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory, minilm) -> Path:
    return _build(tmp_path_factory.mktemp("serve") / "tiny", minilm)


@pytest.fixture(scope="module")
def service(index):
    svc = SearchService(ServeSettings(index=index, dtype="fp32", max_wait_ms=50, max_body_bytes=64 * 1024))
    yield svc
    svc.close()


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


def _assert_same(got: list[dict], expected, tol=1e-5) -> None:
    """Same documents at the same ranks and equal scores; swaps only between tied scores."""
    assert [h["rank"] for h in got] == list(range(1, len(expected) + 1))
    assert [h["score"] for h in got] == pytest.approx([h.score for h in expected], abs=tol)
    for g, e in zip(got, expected):
        if g["docid"] != e.docid:
            assert abs(g["score"] - e.score) <= tol, (got, expected)


def test_concurrent_hits_equal_searcher_and_share_batches(service, index):
    app = create_app(service)
    before = service.batcher.counters()

    async def run():
        async with _client(app) as client:
            singles = await asyncio.gather(*(client.post("/search", json={"query": q, "k": 5}) for q in QUERIES))
            funnel = await asyncio.gather(*(client.post("/search", json={"query": q, "k": 5, "dim": 128,
                                                                         "rerank_dim": 384}) for q in QUERIES))
            batch = await client.post("/search/batch", json={"queries": QUERIES, "k": 1000, "fields": False})
            return singles, funnel, batch

    singles, funnel, batch = asyncio.run(run())
    after = service.batcher.counters()
    fp32 = torch.float32  # the service's precision: auto is bf16 on a native-bf16 CPU
    with Searcher(index, dtype=fp32) as ref, Searcher(index, dim=128, dtype=fp32) as ref128:
        for q, r in zip(QUERIES, singles):
            assert r.status_code == 200, r.text
            expected = ref.search(q, 5)
            _assert_same(r.json()["hits"], expected)
            assert [h["text"] for h in r.json()["hits"]] == [h.text for h in expected]  # stored fields come back
        for q, r in zip(QUERIES, funnel):
            _assert_same(r.json()["hits"], ref128.search(q, 5, rerank_dim=384))
        assert batch.status_code == 200
        results = batch.json()["results"]
        for q, hits in zip(QUERIES, results):
            assert len(hits["hits"]) == 30  # k=1000 is capped at the 30 live documents
            assert all(h["text"] == "" for h in hits["hits"])
            _assert_same(hits["hits"], ref.search(q, 30))
    queries, calls = after.queries - before.queries, after.encoder_calls - before.encoder_calls
    assert queries == 3 * len(QUERIES)
    assert calls < 2 * len(QUERIES)  # concurrent single queries shared encoder calls
    info = asyncio.run(_get(app, "/info"))
    assert info["batching"]["mean_encoder_batch"] > 1
    assert info["documents"] == 30 and info["dims"] == [128, 384] and info["model"]["name"] == "minilm"


async def _get(app, path: str) -> dict:
    async with _client(app) as client:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.mark.parametrize("body, status, words", [
    (b'{"query": "tides", "k": ', 400, "not valid JSON"),
    ({"query": 5}, 422, "query"),
    ({"query": "tides", "k": "ten"}, 422, "k"),
    ({"query": "tides", "k": True}, 422, "valid integer"),
    (b"[" * 50_000, 400, "error parsing the body"),
    ({"query": "tides", "k": 0}, 422, "greater than or equal to 1"),
    ({"query": "tides", "k": MAX_K + 1}, 422, "less than or equal"),
    ({"query": ""}, 422, "query"),
    ({"query": " \t\n "}, 422, "query"),
    ({"query": "x" * (MAX_QUERY_CHARS + 1)}, 422, f"at most {MAX_QUERY_CHARS} characters"),
    ({"query": "tides\ud800"}, 422, "unicode"),
    ({"query": "tides", "hybrid": "rrf"}, 422, "built without --bm25"),
    ({"query": "tides", "hybrid": "max"}, 422, "hybrid"),
    ({"query": "tides", "dim": 64}, 422, "no index at dim 64"),
    ({"query": "tides", "rerank_dim": 512}, 422, "above the encoder's dim 384"),
    ({"query": "tides", "aggregate": "max"}, 422, "aggregate"),
    ({"query": "y" * 70_000}, 413, "larger than"),
    ([1, 2], 422, "body"),
])
def test_bad_input_gets_4xx_with_a_message(service, body, status, words):
    app = create_app(service)

    async def post():
        async with _client(app) as client:
            if isinstance(body, bytes):
                return await client.post("/search", content=body, headers={"content-type": "application/json"})
            return await client.post("/search", content=json.dumps(body), headers={"content-type": "application/json"})

    response = asyncio.run(post())
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_documents_and_batch_limits(service):
    app = create_app(service)

    async def run():
        async with _client(app) as client:
            return (await client.get("/documents/bike-01"), await client.get("/documents/no-such-doc"),
                    await client.get("/documents/" + "z" * 2000), await client.post("/search/batch", json={"queries": []}),
                    await client.post("/search/batch", json={"queries": ["a"] * 129}))

    found, missing, too_long, empty, too_many = asyncio.run(run())
    assert found.status_code == 200 and found.json()["title"] == "Fixing a flat bicycle tyre"
    assert missing.status_code == 404 and "no-such-doc" in missing.json()["detail"]
    assert too_long.status_code == 422
    assert empty.status_code == 422 and too_many.status_code == 422


def test_batcher_is_bounded_budgeted_and_drains():
    release = threading.Event()
    calls: list[list[str]] = []

    def search(options, queries):
        release.wait(10)
        calls.append(list(queries))
        return [f"{options}:{q}" for q in queries]

    batcher = MicroBatcher(search, len, max_tokens=12, max_queries=8, max_wait=0.02, capacity=4)
    try:
        first = batcher.submit(["aaaa"], "A")  # the worker takes it and blocks in search
        time.sleep(0.1)
        queued = batcher.submit(["bbbb", "cccc"], "A") + batcher.submit(["dd", "ee"], "B")
        with pytest.raises(QueueFull):
            batcher.submit(["overflow"], "A")  # 4 waiting: full, refused at once
        assert batcher.counters().rejected == 1
        release.set()
        assert [f.result(5) for f in first + queued] == ["A:aaaa", "A:bbbb", "A:cccc", "B:dd", "B:ee"]
    finally:
        batcher.close()
    # budget 12 padded tokens: "bbbb","cccc" (2x4=8) fit, adding "dd" would make 3x4=12 (fits), "ee" 4x4=16 does not
    assert calls[0] == ["aaaa"]
    assert sorted(map(tuple, calls[1:3])) == [("bbbb", "cccc"), ("dd",)]
    assert calls[3] == ["ee"]
    with pytest.raises(QueueFull):
        batcher.submit(["late"], "A")  # closed: refuses new work


def test_full_queue_gets_503_with_retry_after(index):
    svc = SearchService(ServeSettings(index=index, dtype="fp32", queue_size=4, max_batch=1, retry_after=3))
    long = " ".join(["the tide rises and falls with the moon"] * 40)  # ~250 tokens: slow to encode
    try:
        key = svc.key(SearchOptions())
        busy = svc.batcher.submit([long], key)
        while svc.batcher.counters().queued:  # the worker took it: it is busy encoding for a while
            time.sleep(0.001)
        busy += svc.batcher.submit([f"{i} {long}" for i in range(4)], key)  # the queue is full now

        async def run():
            async with _client(create_app(svc)) as client:
                return (await client.post("/search/batch", json={"queries": ["tides"] * 2}),
                        await client.post("/search/batch", json={"queries": ["tides"] * 5}))

        full, too_many = asyncio.run(run())
        assert full.status_code == 503
        assert full.headers["retry-after"] == "3"
        assert "queue is full" in full.json()["detail"]
        assert too_many.status_code == 422 and "at most 4 per request" in too_many.json()["detail"]
        assert all(len(f.result(60)) == 10 for f in busy)  # the queued queries are still answered
    finally:
        svc.close()


def test_follows_add_delete_refresh_without_a_failed_request(tmp_path, minilm):
    index = _build(tmp_path / "living", minilm)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "zz-volcano", "title": "Volcanic eruptions",
                               "text": "Magma rises through the crust and erupts as lava and ash from a volcano."}) + "\n")
    svc = SearchService(ServeSettings(index=index, dtype="fp32", follow_interval=0.05))
    statuses: list[int] = []
    app = create_app(svc)

    def write():
        add_documents(index, new, encoder=minilm, show_progress=False)
        delete_documents(index, ["bike-01"])
        refresh(index, encoder=minilm, show_progress=False)

    async def run():
        async with _client(app) as client:
            writer = asyncio.get_running_loop().run_in_executor(None, write)

            async def load(i):
                while not writer.done():
                    r = await client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "k": 3})
                    statuses.append(r.status_code)

            await asyncio.gather(writer, *(load(i) for i in range(4)))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the next follow check picks up the last commit
                hits = (await client.post("/search", json={"query": "lava erupting from a volcano", "k": 1})).json()
                gone = await client.get("/documents/bike-01")
                if hits["hits"][0]["docid"] == "zz-volcano" and gone.status_code == 404:
                    break
                await asyncio.sleep(0.05)
            return hits, gone, (await client.get("/info")).json()

    try:
        hits, gone, info = asyncio.run(run())
    finally:
        svc.close()
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {sorted(set(statuses))}"
    assert hits["hits"][0]["docid"] == "zz-volcano"
    assert gone.status_code == 404
    assert info["generation"] == 4 and info["documents"] == 30  # add, delete, refresh: 30 + 1 - 1


def test_index_gone_is_503_and_pinned_searches_go_on(index, tmp_path):
    """An index that cannot be read is the server's state, not the client's mistake: 503, not 500."""
    copy = tmp_path / "copy"
    shutil.copytree(index, copy)
    svc = SearchService(ServeSettings(index=copy, dtype="fp32", follow_interval=0, retry_after=7))
    try:
        async def run():
            async with _client(create_app(svc)) as client:
                assert (await client.post("/search", json={"query": "tides", "k": 2})).status_code == 200
                shutil.rmtree(copy)
                return await client.get("/info"), await client.post("/search", json={"query": "tides", "k": 2})

        info, search = asyncio.run(run())
    finally:
        svc.close()
    assert info.status_code == 503 and info.headers["retry-after"] == "7"
    assert "index unavailable" in info.json()["detail"]
    assert search.status_code == 200 and search.json()["hits"][0]["docid"] == "astro-03"  # open files still serve


def test_openapi_schema_fuzzed_no_500_no_undocumented_status(service):
    """schemathesis: positive and negative examples per operation through the in-process ASGI app.

    Fixed examples by default (15 per operation and mode); SERVE_FUZZ_EXAMPLES=N explores N random ones.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                                   response_schema_conformance, status_code_conformance)

    explore = "SERVE_FUZZ_EXAMPLES" in os.environ
    examples = int(os.environ.get("SERVE_FUZZ_EXAMPLES", 15))
    app = create_app(service)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    tried: dict[str, int] = {}
    statuses: collections.Counter = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw
        has_input = bool(raw.get("parameters") or raw.get("requestBody"))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None, derandomize=not explore,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                tried[operation.label] = tried.get(operation.label, 0) + 1
                statuses[case.call_and_validate(checks=checks).status_code] += 1

            check()
    print(f"schemathesis examples per operation: {tried} (total {sum(tried.values())}); statuses {dict(statuses)}")
    assert len(tried) == 5 and sum(tried.values()) >= 6 * examples
    assert {200, 422} <= set(statuses)  # both valid and invalid requests were generated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(index):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "dramasearch.cli", "serve", str(index), "--port", str(port),
                             "--dtype", "fp32", "--log-level", "warning"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/health", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        long = " ".join(["the tide rises and falls with the moon"] * 40)
        queries = [f"{i} {long}" for i in range(32)]  # ~250 tokens each: a second or more of encoding
        answer: dict = {}

        def post():
            answer["r"] = httpx.post(f"{base}/search/batch", json={"queries": queries, "k": 3}, timeout=60)
            answer["at"] = time.monotonic()

        slow = threading.Thread(target=post)
        slow.start()
        while httpx.get(f"{base}/health", timeout=5).json()["in_flight"] == 0:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        slow.join(60)
        assert proc.wait(30) == 0, proc.stdout.read().decode()
        log = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    response = answer["r"]
    assert answer["at"] > signalled  # it was still in flight when SIGTERM came
    assert response.status_code == 200, (response.text, log)
    assert len(response.json()["results"]) == 32 and all(len(r["hits"]) == 3 for r in response.json()["results"])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)  # the port is closed
