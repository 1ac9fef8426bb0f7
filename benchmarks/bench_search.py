"""Benchmark FAISS index kinds at Matryoshka dims: build time, size, QPS, recall@k.

Recall is measured against exact (flat) search at the SAME truncated dim, so it isolates
what the approximate index loses, not what truncation loses.

    python benchmarks/bench_search.py --vectors emb.npy --n 200000 --dims 256,full --out bench.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np


from dramasearch.index.faiss_index import build_index, choose_spec, save_index
from dramasearch.matryoshka import truncate_normalize

BLOCK_ROWS = 50_000
KINDS = ("flat", "hnsw", "ivfpq", "sq8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vectors", type=Path, required=True, help="full-dim L2-normalized .npy (float32/fp16)")
    p.add_argument("--query-vectors", type=Path, help="queries .npy; default: hold out rows of --vectors")
    p.add_argument("--n", type=int, help="corpus rows; tiled with noisy copies when above the file's")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--dims", default="256,full", help="comma-separated dims; 'full' = the file's dim")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="QPS is the median over these batch searches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    return p.parse_args(argv)


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def split_queries(vectors: np.ndarray, args: argparse.Namespace, rng: np.random.Generator):
    """Queries from --query-vectors, else a seeded hold-out (so no query is in the corpus)."""
    if args.query_vectors:
        return vectors, np.load(args.query_vectors)[: args.queries]
    order = rng.permutation(len(vectors))
    return vectors[order[args.queries :]], vectors[order[: args.queries]]


def tile(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n fp16 rows (as shards store them): base, then base + N(0, (0.05/sqrt(d))^2) copies.

    Noise of total norm ~0.05 makes near-duplicates, so a bigger corpus keeps real
    embedding structure instead of adding easy uniform-random distractors.
    """
    d = base.shape[1]
    out = np.empty((n, d), np.float16)
    sigma = 0.05 / math.sqrt(d)
    for start in range(0, n, len(base)):
        rows = min(len(base), n - start)
        copy = base[:rows].astype(np.float32)
        if start:
            copy += rng.normal(0.0, sigma, copy.shape).astype(np.float32)
        out[start : start + rows] = truncate_normalize(copy)
    return out


def parse_dims(text: str, full: int) -> list[int]:
    dims = [full if part.strip() == "full" else int(part) for part in text.split(",")]
    if not all(0 < d <= full for d in dims):
        raise SystemExit(f"--dims {text!r}: every dim must be in 1..{full}")
    return dims


def search_stats(index: faiss.Index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median-of-repeats QPS for one batch search of all queries, and the ids found."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        times.append(time.perf_counter() - t0)
    return len(queries) / statistics.median(times), ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return hits / truth.size


def bench_one(kind: str, dim: int, corpus: np.ndarray, queries: np.ndarray, args, tmp: Path):
    """Build, save and search one index; returns its row (recall filled in later) and ids."""
    spec = choose_spec(kind, dim, len(corpus))

    def batches():
        return (corpus[i : i + BLOCK_ROWS] for i in range(0, len(corpus), BLOCK_ROWS))

    t0 = time.perf_counter()
    index = build_index(spec, batches, len(corpus), seed=args.seed)
    build_s = time.perf_counter() - t0
    path = tmp / spec.filename
    save_index(index, path)
    index_bytes = path.stat().st_size
    path.unlink()
    qps, ids = search_stats(index, queries, args.k, args.repeats)
    row = {
        "kind": kind,
        "dim": dim,
        "params": spec.params,
        "build_s": round(build_s, 3),
        "index_bytes": index_bytes,
        "qps": round(qps, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    return row, ids


def markdown(rows: list[dict[str, Any]], k: int) -> str:
    head = f"| kind | dim | params | build s | index MiB | QPS | recall@{k} | peak RSS MiB |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        params = " ".join(f"{key}={v}" for key, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['kind']} | {r['dim']} | {params} | {r['build_s']:.2f} | {r['index_bytes'] / 2**20:.1f} "
            f"| {r['qps']:.0f} | {r[f'recall@{k}']:.4f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    base, queries = split_queries(np.load(args.vectors), args, rng)
    corpus = tile(base, args.n or len(base), rng)
    del base
    kinds = args.kinds.split(",")
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out.resolve().parent) as tmpdir:
        for dim in parse_dims(args.dims, corpus.shape[1]):
            q = truncate_normalize(queries, dim)
            flat = bench_one("flat", dim, corpus, q, args, Path(tmpdir))  # exact reference at this dim
            for kind in kinds:
                row, ids = flat if kind == "flat" else bench_one(kind, dim, corpus, q, args, Path(tmpdir))
                rows.append({**row, f"recall@{args.k}": round(recall_at_k(ids, flat[1]), 4)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {
        "vectors": str(args.vectors),
        "query_vectors": str(args.query_vectors) if args.query_vectors else None,
        "n": len(corpus),
        "full_dim": corpus.shape[1],
        "queries": len(queries),
        "k": args.k,
        "repeats": args.repeats,
        "seed": args.seed,
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "machine": platform.platform(),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(markdown(rows, args.k))


if __name__ == "__main__":
    main()
