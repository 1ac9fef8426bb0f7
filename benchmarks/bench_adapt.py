"""adapt on one collection with default settings: nDCG@10 of the collection's test queries before and after.

The loop as a user runs it: an index of the corpus built with the starting model, then `adapt CORPUS
--model M -o OUT --index INDEX` (which reuses that index for mining and refreshes it at the end),
then the same evaluation (`dramasearch evaluate` semantics, flat index, full dim) on the refreshed
index. The test queries and qrels are read only here, for evaluation; adapt sees the corpus only.

A reader searches the index the whole time (`Searcher(follow=True)`, the test queries in turn, one
every --reader-pause seconds): the swap to the adapted model must fail none of its searches, and
after it the reader must be on the refreshed generation, encoding with the adapted model.

    nohup python benchmarks/bench_adapt.py --data ../shared/data/cranfield \\
        --out benchmarks/out/adapt/cranfield > benchmarks/out/adapt-cranfield.log 2>&1 &
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import threading
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


class Reader(threading.Thread):
    """Searches the index in a loop with a following Searcher; counts searches, errors, generations."""

    def __init__(self, index: Path, queries: list[str], pause: float):
        super().__init__(daemon=True)
        self.index, self.queries, self.pause = index, queries, pause
        self.done = threading.Event()
        self.stats = {"searches": 0, "errors": 0, "generations": [], "error_samples": []}

    def run(self) -> None:
        with Searcher(self.index, follow=True, follow_interval=0.2) as searcher:
            i = 0
            while not self.done.wait(self.pause):
                try:
                    searcher.search(self.queries[i % len(self.queries)], k=10)
                    if searcher.generation not in self.stats["generations"]:
                        self.stats["generations"].append(searcher.generation)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self.stats["errors"] += 1
                    self.stats["error_samples"] = (self.stats["error_samples"] + [repr(exc)])[:5]
                self.stats["searches"] += 1
                i += 1
            self.stats["fingerprint"] = searcher.encoder_spec.fingerprint

    def stop(self) -> dict:
        self.done.set()
        self.join()
        return self.stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--out", default="benchmarks/out/adapt/cranfield")
    parser.add_argument("--bm25", action="store_true", help="build the index with --bm25 (or reuse one built so)")
    parser.add_argument("--margin-ratio", default="0.95",
                        help="AdaptSettings.margin_ratio for ablations; 'none' turns the false-negative filter off")
    parser.add_argument("--llm-queries", type=int, default=None,
                        help="AdaptSettings.llm_queries, for the source ablation (default: the device's)")
    parser.add_argument("--crops-per-passage", type=int, default=None,
                        help="AdaptSettings.crops_per_passage, for the source ablation (0: LLM queries only)")
    parser.add_argument("--title-queries", action="store_true", help="AdaptSettings.title_queries, for the source arm")
    parser.add_argument("--hard-queries-first", action="store_true",
                        help="AdaptSettings.hard_queries_first, for the query-selection arm")
    parser.add_argument("--hybrid-teacher", action=argparse.BooleanOptionalAction, default=None,
                        help="AdaptSettings.hybrid_teacher (default: the device's; --no-hybrid-teacher runs the "
                             "crop-only CPU default before RESULTS §13.19)")
    parser.add_argument("--teacher-hard-negatives", type=int, default=None,
                        help="AdaptSettings.teacher_hard_negatives (default: the device's)")
    parser.add_argument("--seed", type=int, default=0, help="AdaptSettings.seed, for the spread between runs")
    parser.add_argument("--temperature", type=float, default=AdaptSettings.temperature,
                        help="AdaptSettings.temperature, for the training ablation")
    parser.add_argument("--attention-dropout", type=float, default=None,
                        help="AdaptSettings.attention_dropout, for the training ablation")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help="AdaptSettings.max_train_examples, for the data-size arm (default: the device's)")
    parser.add_argument("--reader-pause", type=float, default=0.5, help="seconds between the reader's searches")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queries, qrels = read_queries(data / "queries.jsonl"), read_qrels(data / "qrels" / "test.tsv")
    index = out / "index"

    started = time.perf_counter()
    build_index(BuildSettings(corpus=str(data), output=str(index), model=args.model, store_text=True,
                              bm25=args.bm25))
    build_seconds = time.perf_counter() - started
    before = evaluate(index, queries, qrels)
    print(f"before: {before}", flush=True)

    reader = Reader(index, [q.text for q in queries], args.reader_pause)
    reader.start()
    started = time.perf_counter()
    margin = None if args.margin_ratio.lower() == "none" else float(args.margin_ratio)
    report = adapt(AdaptSettings(corpus=str(data), model=args.model, output=str(out / "model"), index=str(index),
                                 margin_ratio=margin, llm_queries=args.llm_queries,
                                 crops_per_passage=args.crops_per_passage, title_queries=args.title_queries,
                                 hard_queries_first=args.hard_queries_first, hybrid_teacher=args.hybrid_teacher,
                                 teacher_hard_negatives=args.teacher_hard_negatives,
                                 seed=args.seed,
                                 temperature=args.temperature, max_train_examples=args.max_train_examples,
                                 attention_dropout=args.attention_dropout))
    adapt_seconds = time.perf_counter() - started
    time.sleep(1.0)  # past the follow interval: the reader's next search reopens on the last generation
    reader_stats = reader.stop()
    print(report.summary(), flush=True)
    print(f"reader: {reader_stats}", flush=True)
    after = evaluate(index, queries, qrels)
    print(f"after: {after}", flush=True)

    result = {
        "collection": data.name, "model": args.model, "arguments": vars(args), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared)", "build_seconds": round(build_seconds, 1), "adapt_seconds": round(adapt_seconds, 1),
        "before": before, "after": after, "ndcg10_delta": round(after["nDCG@10"] - before["nDCG@10"], 4),
        "reader_during_adapt": reader_stats,
        "report": dataclasses.asdict(report),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "report"}, indent=1))


if __name__ == "__main__":
    main()
