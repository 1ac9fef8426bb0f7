"""What batching buys the encoder on short queries, in-process: per-query cost of SciFact's test
queries encoded one at a time, in batches of B padded to their longest, and in the same batches
split by the padding cap (`batching.MAX_PADDING`, what `Encoder.encode` does), median of
--repeats. The service's micro-batches are such batches of random queries (RESULTS.md section 9).

    python benchmarks/bench_query_batching.py [--batches 8,20,32]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dramasearch.batching import token_budget_batches
from dramasearch.encoder import default_batch_tokens
from dramasearch.models import load_encoder
from dramasearch.topics import read_queries

REPO = Path(__file__).resolve().parents[1]


def per_query_ms(encoder, groups: list[list[list[int]]], queries: int, repeats: int) -> float:
    """Median over repeats of (time to run every group through the model) / queries, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            for group in groups:
                encoder._forward(group)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / queries * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "scifact"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batches", default="8,20,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(args.model, device="cpu")
    texts = [q.text for q in read_queries(Path(args.data) / "queries.jsonl")]  # SciFact's 300 test queries
    ids = encoder.tokenize(texts, encoder.spec.query_prefix)
    lengths = [len(x) for x in ids]
    report = {"queries": len(ids), "mean_tokens": statistics.mean(lengths), "longest": max(lengths),
              "threads": args.threads, "dtype": str(encoder.dtype), "single_ms": per_query_ms(encoder, [[x] for x in ids],
                                                                                              len(ids), args.repeats)}
    for size in map(int, args.batches.split(",")):
        batches = [ids[i : i + size] for i in range(0, len(ids), size)]  # arrival order: random lengths
        capped = [[batch[j] for j in group] for batch in batches
                  for group in token_budget_batches([len(x) for x in batch], default_batch_tokens("cpu"))]
        report[f"batch{size}"] = {"padded_ms": per_query_ms(encoder, batches, len(ids), args.repeats),
                                  "capped_ms": per_query_ms(encoder, capped, len(ids), args.repeats),
                                  "groups_per_batch": len(capped) / len(batches)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
