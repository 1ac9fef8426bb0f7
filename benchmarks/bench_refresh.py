"""Refresh: SciFact built with MiniLM, then refreshed with a second encoder, while a reader searches.

Second encoder: the packaged MiniLM with CLS pooling instead of mean (a different model as far
as the index is concerned: other vectors, other fingerprint; no other retriever installs
offline). Reported: refresh time vs a fresh build with the same encoder, nDCG@10 of both
generations (`dramasearch evaluate` semantics), and a reader opened before the refresh that
searches throughout: its errors (must be 0) and whether its answers stayed those of the old
generation.

    python benchmarks/bench_refresh.py [--data ../shared/data/scifact] [--out benchmarks/out/refresh]
"""
from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

from bench_crash_safety import cls_copy
from dramasearch.evaluate import evaluate_run, retrieve
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.refresh import refresh
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels, read_queries


def ndcg(root: Path, encoder, queries, qrels) -> float:
    with Searcher(root, encoder=encoder) as searcher:
        return evaluate_run(retrieve(searcher, queries, 100), qrels).metrics["nDCG@10"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"))
    parser.add_argument("--out", default="benchmarks/out/refresh")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    queries, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels" / "test.tsv")
    minilm = load_encoder("minilm", device="cpu")  # default precision: bf16 on CPUs with native bf16
    second = load_encoder(str(cls_copy(out)), device="cpu")
    root, fresh = out / "index", out / "fresh"

    def build(path: Path, encoder) -> float:
        start = time.perf_counter()
        build_index(BuildSettings(corpus=str(data), output=str(path), model="minilm", store_text=True,
                                  show_progress=False), encoder=encoder)
        return time.perf_counter() - start

    report = {"build_minilm_s": build(root, minilm)}
    report["ndcg_generation_1"] = ndcg(root, minilm, queries, qrels)

    reader = Searcher(root, encoder=minilm)
    probe = [q.text for q in queries[:20]]
    before = [[h.docid for h in reader.search(q, k=10)] for q in probe]  # one at a time, as the loop searches
    stats = {"searches": 0, "errors": 0, "changed": 0}
    done = threading.Event()

    def read_loop() -> None:
        i = 0
        while not done.is_set():
            try:
                hits = reader.search(probe[i % len(probe)], k=10)
                stats["changed"] += [h.docid for h in hits] != before[i % len(probe)]
            except Exception:  # noqa: BLE001 - counted
                stats["errors"] += 1
            stats["searches"] += 1
            i += 1

    thread = threading.Thread(target=read_loop)
    thread.start()
    start = time.perf_counter()
    refresh(root, encoder=second, show_progress=False)
    report["refresh_s"] = time.perf_counter() - start
    time.sleep(0.5)
    done.set()
    thread.join()
    reader.close()
    report["reader_during_refresh"] = stats
    report["ndcg_generation_2"] = ndcg(root, second, queries, qrels)
    report["fresh_build_second_encoder_s"] = build(fresh, second)
    report["ndcg_fresh_build_second_encoder"] = ndcg(fresh, second, queries, qrels)
    report["refresh_over_fresh_build"] = report["refresh_s"] / report["fresh_build_second_encoder_s"]
    print(json.dumps(report))
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
