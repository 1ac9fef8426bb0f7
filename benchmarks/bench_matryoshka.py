"""Matryoshka dims and funnel search on SciFact: quality, index size and search-only QPS.

For each index (dim, kind) of the index's generation: nDCG@10 / Recall@100 / MRR@10
(`evaluate_run`), its FAISS files' bytes summed over segments, and QPS. Funnel rows take
`candidates` (100, 200) from a low-dim index (64, 128) and re-score them with the stored full-dim
vectors (`rerank_dim=384`; those fp16 `*.vec.npy` shards are reported as "rerank bytes").
Queries are encoded once at full dim; every row then calls
`Searcher.search_vectors(vectors, k, with_fields=False)` on all queries in one batch, so QPS is
search only (truncation, FAISS, rerank, hit objects), median of `--repeats`, rows interleaved,
`gc.collect()` before each timed call (else a periodic full collection lands on one row).

Index, built by the lead:
    dramasearch build-index ../shared/data/scifact -o /tmp/ix/scifact --model minilm --dims 64,128,256,384 --index flat
Full run:
    python benchmarks/bench_matryoshka.py --index /tmp/ix/scifact --out benchmarks/results/matryoshka_scifact.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from pathlib import Path

import faiss

from dramasearch.encoder import DTYPES
from dramasearch.evaluate import METRIC_NAMES, evaluate_run
from dramasearch.index.snapshot import Snapshot
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels, read_queries

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="index folder with several dims")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/scifact", help="BEIR folder (queries, qrels)")
    p.add_argument("--funnel-dims", default="64,128", help="candidate dims for funnel rows")
    p.add_argument("--candidates", default="100,200", help="funnel candidate depths")
    p.add_argument("--rerank-dim", type=int, default=None, help="default: the encoder's full dim")
    p.add_argument("-k", type=int, default=100, help="hits per query (Recall@100 needs 100)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="auto", choices=list(DTYPES), help="query encoder precision")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    queries, qrels = read_queries(args.data), read_qrels(args.data)
    full = Searcher(args.index, dtype=DTYPES[args.dtype])  # largest dim; loads the index's own encoder
    encoder, snap = full.encoder, full._snap
    generation = snap.generation
    vectors = encoder.encode_queries([q.text for q in queries], show_progress=False)
    rerank_dim = args.rerank_dim or encoder.dim
    shard_bytes = sum(shard.file("vec.npy").bytes for segment in snap.segments for shard in segment.shards)

    rows = [{"dim": ix["dim"], "kind": ix["kind"], "rerank_dim": None, "candidates": None,
             "index_bytes": index_bytes(snap, ix), "rerank_bytes": 0}
            for ix in sorted(generation.indexes, key=lambda ix: ix["dim"])]
    built = {r["dim"]: r for r in rows}
    for dim in (int(d) for d in args.funnel_dims.split(",") if d):
        if dim not in built:
            raise SystemExit(f"--funnel-dims: no index at dim {dim} in {args.index} (built: {sorted(built)})")
        rows += [{**built[dim], "rerank_dim": rerank_dim, "candidates": int(c), "rerank_bytes": shard_bytes}
                 for c in args.candidates.split(",") if c]
    searchers = {dim: full if dim == full.dim and row["kind"] == full.index_kind
                 else Searcher(args.index, dim=dim, kind=row["kind"], encoder=encoder) for dim, row in built.items()}

    def search(row):
        return searchers[row["dim"]].search_vectors(
            vectors, args.k, rerank_dim=row["rerank_dim"], candidates=row["candidates"], with_fields=False)

    for row in rows:  # warm-up (first rerank maps the shards) and the run that is evaluated
        hits = search(row)
        run = {q.id: {h.docid: h.score for h in hs} for q, hs in zip(queries, hits)}
        row.update({m: round(v, 4) for m, v in evaluate_run(run, qrels).metrics.items()})
    for _ in range(args.repeats):
        for row in rows:
            gc.collect()  # same heap state for every row: a full collection would land on one row only
            start = time.perf_counter()
            search(row)
            row.setdefault("times_s", []).append(time.perf_counter() - start)
    for row in rows:
        row["qps"] = round(len(queries) / statistics.median(row["times_s"]), 1)
        row["times_s"] = [round(t, 5) for t in row["times_s"]]

    meta = {"index": str(args.index), "generation": generation.generation, "segments": len(snap.refs),
            "documents": generation.documents, "encoder": generation.encoder["name"],
            "query_dtype": str(encoder.dtype),
            "queries": len(queries), "k": args.k, "repeats": args.repeats, "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(), "machine": platform.platform(), "loadavg": os.getloadavg()}
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(markdown(rows, meta))


def index_bytes(snap: Snapshot, entry: dict) -> int:
    """One index's size: its FAISS file in every segment, as the generation records them."""
    name = f"dim{entry['dim']}-{entry['kind']}"
    return sum(ref.faiss[name]["bytes"] for ref in snap.refs)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"{meta['documents']} docs, {meta['queries']} queries, k={meta['k']}, "
             f"{meta['faiss_threads']} FAISS threads; QPS = search_vectors on pre-encoded queries",
             "", "| search | " + " | ".join(METRIC_NAMES) + " | index bytes | rerank bytes | QPS |", "|" + "---|" * 7]
    for r in rows:
        name = f"dim {r['dim']} {r['kind']}"
        if r["rerank_dim"]:
            name += f" → top {r['candidates']} reranked at {r['rerank_dim']}"
        metrics = " | ".join(f"{r[m]:.4f}" for m in METRIC_NAMES)
        lines.append(f"| {name} | {metrics} | {r['index_bytes']:,} | {r['rerank_bytes']:,} | {r['qps']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
