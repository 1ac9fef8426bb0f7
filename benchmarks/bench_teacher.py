"""How good is adapt's hybrid teacher as a retriever? nDCG@10 on a collection's test queries of the
starting model, BM25, the teacher's blend (trainer/augment/teacher.py) and dramasearch's linear fusion.

A diagnostic for RESULTS §13.17, not part of adapt (which never reads test queries): distillation can
at best move the model towards its teacher, so the teacher's own lead over the model bounds the gain.

    python benchmarks/bench_teacher.py --data ../shared/data/scifact --out benchmarks/out/teacher_scifact.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dramasearch.evaluate import evaluate_run
from dramasearch.hybrid import Fusion, fuse
from dramasearch.models import load_encoder
from dramasearch.topics import read_qrels, read_queries
from trainer.adapt import TEACHER_WEIGHT
from trainer.augment.retrieval import DenseCorpus, load_passages
from trainer.augment.teacher import LexicalScorer, teacher_top_k

DEPTH = 100


def _run(ids: list[str], docids: list[str], scores: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, float]]:
    return {q: {docids[j]: float(s) for j, s in zip(r, sc)} for q, r, sc in zip(ids, rows, scores)}


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = Path(args.data)
    queries, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels" / "test.tsv")
    queries = [q for q in queries if q.id in qrels]
    started = time.perf_counter()
    encoder = load_encoder(args.model)
    corpus = DenseCorpus.encode(encoder, load_passages(data))
    lexical = LexicalScorer(corpus.passages)
    docids = [p.docid for p in corpus.passages]
    ids, texts = [q.id for q in queries], [q.text for q in queries]
    dense = encoder.encode_queries(texts) @ corpus.embeddings.T
    bm25 = lexical.corpus_scores(texts)
    teacher_scores, teacher_rows, _ = teacher_top_k(dense, bm25, TEACHER_WEIGHT, DEPTH, DEPTH)
    runs = {"dense": _run(ids, docids, *_top(dense, DEPTH)), "bm25": _run(ids, docids, *_top(bm25, DEPTH)),
            "teacher (z-score blend)": _run(ids, docids, teacher_scores, teacher_rows)}
    runs["linear fusion (dramasearch --hybrid linear)"] = {
        q: dict(fuse(sorted(runs["dense"][q].items(), key=lambda x: -x[1]), sorted(runs["bm25"][q].items(), key=lambda x: -x[1]),
                     Fusion(method="linear", weight=TEACHER_WEIGHT))[:DEPTH]) for q in ids}
    result = {"collection": data.name, "model": args.model, "queries": len(ids), "depth": DEPTH,
              "seconds": round(time.perf_counter() - started, 1),
              "nDCG@10": {name: round(evaluate_run(run, qrels).metrics["nDCG@10"], 4) for name, run in runs.items()}}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
