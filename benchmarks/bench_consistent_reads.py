"""Consistent reads: one thread searches in a loop while another process changes the index.

The writer process runs `dramasearch add`, `delete`, `refresh --model <MiniLM with CLS
pooling>` (a second encoder whose vectors differ) and `add --upsert`, one after another.
The reader is a `Searcher(follow=True)` in this process, searching every query over and over;
it switches generation, and after the refresh its encoder, between searches.

Afterwards, the expected top-k of every query is computed for each of the five states with
numpy alone (each state's encoder, its live documents, fp16-rounded vectors). Every result
list the reader saw must equal exactly one state's list: errors and mixed lists must be zero.

    python benchmarks/bench_consistent_reads.py [--out benchmarks/out/consistent]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench_crash_safety import cls_copy, write
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher

K = 10
TOL = 1e-4
CLI = [sys.executable, "-m", "dramasearch.cli"]


def content(d: dict) -> str:
    return f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]


def expected(encoder, live: list[dict], queries: list[str]) -> list[list[tuple[str, float]]]:
    docs = encoder.encode_documents([content(d) for d in live], show_progress=False).astype(np.float16).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = encoder.encode_queries(queries, show_progress=False)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ docs.T
    return [[(live[i]["_id"], float(row[i])) for i in np.argsort(-row, kind="stable")[:K]] for row in scores]


def matches(seen: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    if len(seen) != len(want) or any(abs(a[1] - b[1]) > TOL for a, b in zip(seen, want)):
        return False
    return all(a[0] == b[0] or any(abs(w[1] - a[1]) <= TOL and w[0] == a[0] for w in want) for a, b in zip(seen, want))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "adi"))
    parser.add_argument("--out", default="benchmarks/out/consistent")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = Path(args.data)
    docs = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines() if line]
    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").read_text().splitlines() if line]
    minilm = load_encoder("minilm", device="cpu", dtype=torch.float32)
    cls_dir = cls_copy(out)
    cls = load_encoder(str(cls_dir), device="cpu", dtype=torch.float32)

    base, extra, gone = docs[:60], docs[60:], [d["_id"] for d in docs[:10]]
    upserts = [dict(d, text=d["text"] + " (revised)") for d in docs[20:25]]
    root = out / "index"
    build_index(BuildSettings(corpus=str(write(out / "base.jsonl", base)), output=str(root), model="minilm",
                              dtype="fp32", store_text=True, show_progress=False), encoder=minilm)
    states = [(minilm, base)]
    states.append((minilm, base + extra))
    states.append((minilm, [d for d in base + extra if d["_id"] not in gone]))
    states.append((cls, states[-1][1]))
    changed = {d["_id"] for d in upserts}
    states.append((cls, [d for d in states[-1][1] if d["_id"] not in changed] + upserts))
    steps = [
        ["add", str(root), str(write(out / "extra.jsonl", extra)), "--dtype", "fp32"],
        ["delete", str(root), "--ids", ",".join(gone)],
        ["refresh", str(root), "--model", str(cls_dir), "--dtype", "fp32"],
        ["add", str(root), str(write(out / "upserts.jsonl", upserts)), "--upsert", "--dtype", "fp32"],
    ]

    seen: list[tuple[int, list[tuple[str, float]]]] = []
    errors: list[str] = []
    done = threading.Event()
    reader = Searcher(root, encoder=minilm, dtype=torch.float32, device="cpu", follow=True, follow_interval=0.0)

    def read_loop() -> None:
        i = 0
        while not done.is_set() or i % len(queries):
            try:
                hits = reader.search(queries[i % len(queries)], k=K)
                seen.append((i % len(queries), [(h.docid, h.score) for h in hits]))
            except Exception as exc:  # noqa: BLE001 - every error is counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
            i += 1

    thread = threading.Thread(target=read_loop)
    started = time.perf_counter()
    thread.start()
    for step in steps:
        subprocess.run(CLI + step, check=True, capture_output=True)
    time.sleep(1.0)
    done.set()
    thread.join()
    elapsed = time.perf_counter() - started
    reader.close()

    wanted = [expected(encoder, live, queries) for encoder, live in states]
    per_state, mixed = Counter(), 0
    for q, hits in seen:
        which = [s for s in range(len(states)) if matches(hits, wanted[s][q])]
        if not which:
            mixed += 1
        else:
            per_state[which[0]] += 1
    report = {"lists": len(seen), "errors": len(errors), "mixed_or_unexplained": mixed,
              "lists_per_state": {f"state {s}": per_state[s] for s in range(len(states))},
              "seconds": round(elapsed, 1), "error_examples": errors[:3]}
    print(json.dumps(report))
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
