"""adapt on one collection with default settings: nDCG@10 of the collection's test queries before and after.

The loop as a user runs it: an index of the corpus built with the starting model, then `adapt CORPUS
--model M -o OUT --index INDEX` (which reuses that index for mining and refreshes it at the end),
then the same evaluation (`dramasearch evaluate` semantics, flat index, full dim) on the refreshed
index. The test queries and qrels are read only here, for evaluation; adapt sees the corpus only.

    nohup python benchmarks/bench_adapt.py --data ../shared/data/cranfield \\
        --out benchmarks/out/adapt/cranfield > benchmarks/out/adapt-cranfield.log 2>&1 &
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from dramasearch.evaluate import evaluate_run, retrieve
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels, read_queries
from trainer.adapt import AdaptSettings, adapt


def evaluate(index: Path, queries, qrels) -> dict[str, float]:
    with Searcher(index) as searcher:
        return evaluate_run(retrieve(searcher, queries, 100), qrels).metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--out", default="benchmarks/out/adapt/cranfield")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels" / "test.tsv")
    index = out / "index"

    started = time.perf_counter()
    build_index(BuildSettings(corpus=str(data), output=str(index), model=args.model, store_text=True))
    build_seconds = time.perf_counter() - started
    before = evaluate(index, queries, qrels)
    print(f"before: {before}", flush=True)

    started = time.perf_counter()
    report = adapt(AdaptSettings(corpus=str(data), model=args.model, output=str(out / "model"), index=str(index)))
    adapt_seconds = time.perf_counter() - started
    print(report.summary(), flush=True)
    after = evaluate(index, queries, qrels)
    print(f"after: {after}", flush=True)

    result = {
        "collection": data.name, "model": args.model, "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared)", "build_seconds": round(build_seconds, 1), "adapt_seconds": round(adapt_seconds, 1),
        "before": before, "after": after, "ndcg10_delta": round(after["nDCG@10"] - before["nDCG@10"], 4),
        "report": dataclasses.asdict(report),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=1))


if __name__ == "__main__":
    main()
