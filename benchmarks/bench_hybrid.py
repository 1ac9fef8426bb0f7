"""Hybrid retrieval quality: nDCG@10 of BM25, dense (MiniLM) and fused (RRF, linear) per collection.

Each collection is built once with `--bm25` (dense vectors and BM25 postings in the same
generation) and searched through `Searcher.batch_search` in four modes on the same snapshot:
dense (`hybrid=None`), `bm25`, `rrf` (k=60) and `linear` (min-max, dense weight 0.5), each
taking `--depth` candidates per ranking. qmsum-val is built in chunk mode (128/16, maxp): its
dense side is aggregated per meeting before fusing; its BM25 side indexes whole meetings.

Also reported:
- `bm25s direct`: bm25s run on the raw corpus with the same tokenizer and k1/b (no dramasearch
  code), to show the index's BM25 equals the library's;
- a linear-weight sweep fused offline from the same two rankings with `hybrid.fuse` (the
  0.5 point is checked against the Searcher's own linear run). It is tuned on the test
  queries, so it is a diagnostic of sensitivity, never a result to quote as "fused".

Builds resume: a folder whose shards were encoded before (e.g. `build-index ... --shard 0/1`)
is assembled without re-encoding. Run under the shared lock:
    python benchmarks/bench_hybrid.py --out benchmarks/out/hybrid/results.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dramasearch.evaluate import evaluate_run, retrieve
from dramasearch.hybrid import Fusion, fuse
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.lexical import LexicalConfig, tokenizer
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels, read_queries

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
COLLECTIONS = {
    "qmsum-val": dict(long_doc="chunk", chunk_tokens=128, stride=16),
    "scifact": {},
    "cranfield": {},
    "nfcorpus-preprocessed": {},
}
MODES = ("dense", "bm25", "rrf", "linear")
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def bm25s_direct(corpus: Path, queries, qrels, k: int) -> dict:
    """bm25s on the raw corpus (title + text), same tokenizer settings: the library's own numbers."""
    import bm25s

    from dramasearch.corpus import iter_documents

    config = LexicalConfig()
    tokenize = tokenizer(config)
    docs = list(iter_documents(corpus))
    retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    retriever.index(tokenize([d.content() for d in docs]), show_progress=False)
    run = {}
    for q, tokens in zip(queries, tokenize([q.text for q in queries])):
        scores = retriever.get_scores(tokens) if tokens else np.zeros(len(docs))
        top = np.argsort(-scores, kind="stable")[:k]
        run[q.id] = {docs[i].id: float(scores[i]) for i in top if scores[i] > 0}
    return evaluate_run(run, qrels).metrics


def run_collection(name: str, args) -> dict:
    folder = args.data / name
    out = args.indexes / name
    started = time.perf_counter()
    report = build_index(BuildSettings(corpus=str(folder), output=str(out), model=args.model, bm25=True,
                                       show_progress=False, **COLLECTIONS.get(name, {})))
    build_s = time.perf_counter() - started
    queries = read_queries(folder)
    qrels = read_qrels(folder)
    rows, runs = {}, {}
    with Searcher(out) as searcher:
        for mode in MODES:
            fusion = None if mode == "dense" else Fusion(mode, depth=args.depth)
            started = time.perf_counter()
            runs[mode] = retrieve(searcher, queries, args.depth, hybrid=fusion)
            seconds = time.perf_counter() - started
            rows[mode] = evaluate_run(runs[mode], qrels).metrics | {"ms_per_query": 1000 * seconds / len(queries)}
            print(f"{name} {mode}: {rows[mode]}", flush=True)
    sweep = {}
    for weight in SWEEP:
        fused = {}
        for qid in runs["dense"]:
            ranked = lambda run: sorted(run.get(qid, {}).items(), key=lambda t: (-t[1], t[0]))
            fused[qid] = dict(fuse(ranked(runs["dense"]), ranked(runs["bm25"]), Fusion("linear", weight=weight)))
        sweep[weight] = evaluate_run(fused, qrels).metrics["nDCG@10"]
    assert abs(sweep[0.5] - rows["linear"]["nDCG@10"]) < 1e-9, (sweep[0.5], rows["linear"])
    direct = bm25s_direct(folder, queries, qrels, args.depth)
    print(f"{name} bm25s direct: {direct}", flush=True)
    return {"collection": name, "documents": report.documents, "rows": report.rows, "queries": len(queries),
            "build_s": build_s, "encoded_shards": len(report.shards_encoded), "modes": rows,
            "bm25s_direct": direct, "linear_sweep_ndcg10": sweep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--indexes", type=Path, default=REPO / "benchmarks" / "out" / "hybrid")
    parser.add_argument("--collections", default=",".join(COLLECTIONS))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--depth", type=int, default=100, help="candidates per ranking (and run depth)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = [run_collection(name, args) for name in args.collections.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("\n| collection | BM25 | dense | RRF | linear 0.5 | fused beats both? |")
    print("|---|---|---|---|---|---|")
    for r in results:
        m = {mode: r["modes"][mode]["nDCG@10"] for mode in MODES}
        best_single = max(m["bm25"], m["dense"])
        verdict = ", ".join(f"{f} {'yes' if m[f] > best_single else 'no'}" for f in ("rrf", "linear"))
        print(f"| {r['collection']} | {m['bm25']:.4f} | {m['dense']:.4f} | {m['rrf']:.4f} | {m['linear']:.4f} "
              f"| {verdict} |")


if __name__ == "__main__":
    main()
