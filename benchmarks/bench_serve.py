"""Load on `dramasearch serve`: 1, 8 and 32 concurrent clients on loopback, then a living-index run.

The service runs as a subprocess (`python -m dramasearch.cli serve`) over SciFact encoded with the
packaged MiniLM; this process drives it with asyncio, each client sending SciFact's queries one at
a time over its own keep-alive connection (bounded by --requests and --time-limit per run).
Reported per client count (median of --repeats, a fresh server each repetition): throughput,
p50 / p99 latency, mean encoder batch (from /info; it includes each client's one warm-up request),
errors; then every hit list is compared with `Searcher.search` in this process (docids, with swaps
only between tied scores, and scores within --tol).

Living run (--live): a copy of the index is served while 32 clients search and a writer
deletes --live-docs documents, adds them back, then deletes them again (three commits, real
`dramasearch` subprocesses); errors must be 0 and /info must reach the last generation.

    python benchmarks/bench_serve.py [--live]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # compare with the dramasearch the server runs (it gets PYTHONPATH=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dramasearch serve` in a subprocess; ready when /health answers."""

    def __init__(self, index: Path, extra: list[str], log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "dramasearch.cli", "serve", str(index), "--port",
                                      str(self.port), "--log-level", "warning", *extra],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"{self.base}/health", timeout=2).raise_for_status()
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {log}")
                time.sleep(0.2)

    def info(self) -> dict:
        return httpx.get(f"{self.base}/info", timeout=30).json()

    def stop(self) -> int:
        self.proc.terminate()  # SIGTERM: graceful
        code = self.proc.wait(60)
        self.log.close()
        return code


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON. The driver's own, because httpx spent about
    a millisecond of CPU per request, on the same 2 cores the server needs: the load generator
    would have measured itself."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % (path.encode(), self.host.encode(), len(body)) + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
            length = int(next(v for k, v in headers.items() if k.lower() == b"content-length"))
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.close()
            raise
        if any(k.lower() == b"connection" and v.strip().lower() == b"close" for k, v in headers.items()):
            self.close()
        return int(lines[0].split()[1]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(base: str, queries: list[str], clients: int, requests: int, time_limit: float, k: int,
                done: asyncio.Event | None = None) -> dict:
    """`clients` concurrent loops, each on its own connection sending the next query and waiting for
    its answer, until `requests` were sent, `time_limit` passed or `done` is set."""
    latencies: list[float] = []
    errors: list[str] = []
    answers: dict[int, list[dict]] = {}
    bodies = [json.dumps({"query": q, "k": k}).encode() for q in queries]
    next_request = 0
    stop_at = time.monotonic() + time_limit

    async def one_client():
        nonlocal next_request
        connection = Connection(base)
        await connection.post("/search", bodies[0])  # connect and warm up, not timed
        await ready.wait()
        while next_request < requests and time.monotonic() < stop_at and not (done and done.is_set()):
            q = next_request % len(queries)
            next_request += 1
            start = time.perf_counter()
            try:
                status, payload = await connection.post("/search", bodies[q])
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(f"{status}: {payload[:200]!r}")
                elif q not in answers:
                    answers[q] = json.loads(payload)["hits"]
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
        connection.close()

    ready = asyncio.Event()
    tasks = [asyncio.create_task(one_client()) for _ in range(clients)]
    await asyncio.sleep(0.5)  # every client connected and warmed up
    start = time.perf_counter()
    ready.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "wall_s": wall, "qps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "errors": len(errors), "error_samples": errors[:5], "answers": answers}


def load_runs(args, queries: list[str], out: Path) -> list[dict]:
    runs = []
    for rep in range(args.repeats):
        server = Server(Path(args.index), args.server_args, out / "server.log")
        try:
            for clients in args.clients:
                before = server.info()["batching"]
                run = asyncio.run(drive(server.base, queries, clients, args.requests, args.time_limit, args.k))
                after = server.info()["batching"]
                calls = after["encoder_calls"] - before["encoder_calls"]
                run["mean_encoder_batch"] = (after["queries"] - before["queries"]) / calls if calls else 0.0
                run["repeat"] = rep
                runs.append(run)
                print(f"rep {rep} clients {clients:>2}: {run['qps']:7.1f} q/s  p50 {run['p50_ms']:7.1f} ms  "
                      f"p99 {run['p99_ms']:7.1f} ms  batch {run['mean_encoder_batch']:5.2f}  errors {run['errors']}",
                      flush=True)
        finally:
            run_code = server.stop()
        if run_code != 0:
            raise RuntimeError(f"the server exited with {run_code} after SIGTERM")
    return runs


def compare(index: Path, queries: list[str], runs: list[dict], k: int, dtype: str, tol: float) -> dict:
    """Every hit list the service returned against Searcher.search for the same query, in this process."""
    import faiss

    from dramasearch.encoder import DTYPES
    from dramasearch.searcher import Searcher

    faiss.omp_set_num_threads(1)  # as the service searches (FAISS's spinning team slows the encoder beside it)

    lists = same_order = 0
    worst = 0.0
    mismatches = []
    with Searcher(index, dtype=DTYPES[dtype]) as searcher:
        expected = {}
        for run in runs:
            for q, hits in run["answers"].items():
                if q not in expected:
                    expected[q] = searcher.search(queries[q], k)
                ref = expected[q]
                lists += 1
                got_ids, ref_ids = [h["docid"] for h in hits], [h.docid for h in ref]
                diff = max(abs(h["score"] - r.score) for h, r in zip(hits, ref)) if ref else 0.0
                worst = max(worst, diff)
                same_order += got_ids == ref_ids
                tied = all(g == r or abs(h["score"] - e.score) <= tol
                           for g, r, h, e in zip(got_ids, ref_ids, hits, ref))
                if len(hits) != len(ref) or diff > tol or not tied:
                    mismatches.append(queries[q])
    return {"lists": lists, "same_docid_order": same_order, "max_score_diff": worst, "mismatches": len(mismatches),
            "mismatch_samples": mismatches[:5]}


def live_run(args, queries: list[str], out: Path) -> dict:
    """32 clients while a writer deletes, re-adds and deletes documents in the served index."""
    live = out / "live-index"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(args.index, live)
    corpus = [json.loads(line) for line in open(Path(args.data) / "corpus.jsonl", encoding="utf-8")]
    chosen = corpus[: args.live_docs]
    (out / "live-docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in chosen), encoding="utf-8")
    ids = ",".join(d["_id"] for d in chosen)
    cli = [sys.executable, "-m", "dramasearch.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    steps = [[*cli, "delete", str(live), "--ids", ids], [*cli, "add", str(live), str(out / "live-docs.jsonl")],
             [*cli, "delete", str(live), "--ids", ids]]
    server = Server(live, args.server_args, out / "server-live.log")
    try:
        first = server.info()["generation"]

        async def run():
            done = asyncio.Event()
            load = asyncio.create_task(drive(server.base, queries, 32, 10**9, args.live_time_limit, args.k, done))
            await asyncio.sleep(1)  # the clients are running before the first commit
            timings = []
            for step in steps:
                start = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(*step, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                            stderr=asyncio.subprocess.DEVNULL)
                if await proc.wait() != 0:
                    raise RuntimeError(f"{' '.join(step[2:4])} failed")
                timings.append(time.perf_counter() - start)
            await asyncio.sleep(2 * args.follow_wait)  # requests keep coming while the service moves on
            done.set()
            return timings, await load

        timings, result = asyncio.run(run())
        info = server.info()
        gone = httpx.get(f"{server.base}/documents/{chosen[0]['_id']}", timeout=10).status_code
    finally:
        code = server.stop()
    result.pop("answers")
    return {**result, "commits": len(steps), "commit_seconds": timings, "generation_before": first,
            "generation_after": info["generation"], "documents_after": info["documents"],
            "deleted_doc_status": gone, "server_exit": code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--index", default="benchmarks/out/scifact-minilm")
    parser.add_argument("--out", default="benchmarks/out/serve")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--time-limit", type=float, default=120.0, help="Seconds per run at most.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--dtype", default="auto", help="Must match the server's --dtype for the comparison.")
    parser.add_argument("--tol", type=float, default=1e-4, help="Score tolerance against Searcher.search.")
    parser.add_argument("--live", action="store_true", help="Also run the living-index load run.")
    parser.add_argument("--live-docs", type=int, default=50)
    parser.add_argument("--live-time-limit", type=float, default=300.0)
    parser.add_argument("--follow-wait", type=float, default=0.5)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("server_args", nargs="*", help="Passed to `dramasearch serve` (after --).")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.server_args = [*args.server_args, "--dtype", args.dtype]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.index).is_dir():
        raise SystemExit(f"{args.index} is missing: build it with `dramasearch build-index {args.data} -o {args.index} "
                         "--model minilm --store-text`")
    queries = [json.loads(line)["text"] for line in open(Path(args.data) / "queries.jsonl", encoding="utf-8")]
    report: dict = {"command": " ".join(sys.argv), "server_args": args.server_args, "queries": len(queries)}
    if not args.skip_load:
        runs = load_runs(args, queries, out)
        report["equality"] = compare(Path(args.index), queries, runs, args.k, args.dtype, args.tol)
        summary = {}
        for clients in args.clients:
            mine = [r for r in runs if r["clients"] == clients]
            summary[clients] = {key: statistics.median(r[key] for r in mine)
                                for key in ("qps", "p50_ms", "p99_ms", "mean_encoder_batch")}
            summary[clients]["errors"] = sum(r["errors"] for r in mine)
            summary[clients]["requests"] = sum(r["requests"] for r in mine)
        report["median"] = summary
        report["speedup_32_vs_1"] = summary.get(32, {}).get("qps", 0) / summary.get(1, {}).get("qps", 1)
        report["runs"] = [{k: v for k, v in r.items() if k != "answers"} for r in runs]
        print(json.dumps({"median": summary, "speedup_32_vs_1": report["speedup_32_vs_1"],
                          "equality": report["equality"]}, indent=1))
    if args.live:
        report["live"] = live_run(args, queries, out)
        print(json.dumps(report["live"], indent=1))
    (out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
