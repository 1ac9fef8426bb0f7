"""Living index == fresh build: add 10%, upsert 5%, delete 10% of SciFact, then compact.

After each step, the top-100 hits of all 300 queries from the updated index are compared with
a fresh build of the corpus that should be live at that step, for a flat and an HNSW index
(both kinds live in the same index at dim 384, so every step maintains both). Compaction must
keep the hits equal with fewer bytes on disk.

Equality: same document at every rank; a difference counts only where the two scores differ
by more than 1e-5 (rank swaps between tied scores are allowed and counted separately).

    python benchmarks/bench_living_equality.py [--data ../shared/data/scifact] [--out benchmarks/out/living]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.index.updates import add_documents, add_dims, compact, delete_documents
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher
from dramasearch.topics import read_queries

K = 100
TOL = 1e-5


def write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def build(corpus: Path, out: Path, encoder) -> None:
    shutil.rmtree(out, ignore_errors=True)
    build_index(BuildSettings(corpus=str(corpus), output=str(out), model="minilm", dtype="fp32", index_kind="flat",
                              store_text=True, show_progress=False), encoder=encoder)
    add_dims(out, [384], "hnsw")


def compare(a: Path, b: Path, encoder, queries: list[str]) -> dict:
    """Per kind: how many top-100 lists are identical, differ only by tied swaps, or differ; and for
    HNSW (approximate) the recall@100 of each index against the exact (flat) answer of the same corpus."""
    result = {}
    vectors = encoder.encode_queries(queries, show_progress=False)
    hits = {}
    for kind in ("flat", "hnsw"):
        with Searcher(a, encoder=encoder, kind=kind) as left, Searcher(b, encoder=encoder, kind=kind) as right:
            hits[kind] = (left.search_vectors(vectors, k=K), right.search_vectors(vectors, k=K))
        ours, theirs = hits[kind]
        identical = tie_swaps = different = 0
        max_score_diff = 0.0
        for x, y in zip(ours, theirs):
            if [h.docid for h in x] == [h.docid for h in y]:
                identical += 1
            elif all(h.docid == g.docid or abs(h.score - g.score) <= TOL for h, g in zip(x, y)) and len(x) == len(y):
                tie_swaps += 1
            else:
                different += 1
            max_score_diff = max(max_score_diff, max(abs(h.score - g.score) for h, g in zip(x, y)))
        result[kind] = {"identical": identical, "tie_swaps": tie_swaps, "different": different,
                        "max_score_diff": float(max_score_diff)}
    exact = hits["flat"][1]
    for side, name in ((0, "updated"), (1, "fresh")):
        overlap = [len({h.docid for h in approx} & {h.docid for h in truth}) / len(truth)
                   for approx, truth in zip(hits["hnsw"][side], exact)]
        result["hnsw"][f"recall@{K}_{name}"] = float(sum(overlap) / len(overlap))
    return result


def segment_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "segments").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"))
    parser.add_argument("--out", default="benchmarks/out/living")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    encoder = load_encoder("minilm", device="cpu", dtype=torch.float32)
    docs = [json.loads(line) for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
    queries = [q.text for q in read_queries(data / "queries.jsonl")]
    rng = random.Random(0)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n = len(docs)
    held_out = sorted(order[: n // 10])  # added later
    base = [docs[i] for i in range(n) if i not in set(held_out)]
    extra = [docs[i] for i in held_out]
    upserts = [dict(d, text=d["text"] + " Revised.") for d in rng.sample(base, n // 20)]
    deletes = [d["_id"] for d in rng.sample(base + extra, n // 10)]

    root = out / "living"
    report = {"documents": n, "queries": len(queries), "k": K}
    started = time.perf_counter()
    build(write(out / "base.jsonl", base), root, encoder)
    report["base_build_s"] = time.perf_counter() - started

    steps = []
    live = list(base)

    def step(name: str, action) -> None:
        t = time.perf_counter()
        action()
        elapsed = time.perf_counter() - t
        fresh = out / f"fresh-{name}"
        t = time.perf_counter()
        build(write(out / f"live-{name}.jsonl", live), fresh, encoder)
        fresh_s = time.perf_counter() - t
        row = {"step": name, "seconds": elapsed, "fresh_build_s": fresh_s, "live": len(live),
               "generation": IndexDir(root).latest(), "segments": len(IndexDir(root).read().segments),
               "bytes": segment_bytes(root), "fresh_bytes": segment_bytes(fresh)}
        row |= compare(root, fresh, encoder, queries)
        steps.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(fresh)

    def do_add():
        add_documents(root, write(out / "extra.jsonl", extra), encoder=encoder, show_progress=False)
        live.extend(extra)

    def do_upsert():
        add_documents(root, write(out / "upserts.jsonl", upserts), encoder=encoder, upsert=True, show_progress=False)
        changed = {d["_id"] for d in upserts}
        live[:] = [d for d in live if d["_id"] not in changed] + upserts

    def do_delete():
        delete_documents(root, deletes)
        gone = set(deletes)
        live[:] = [d for d in live if d["_id"] not in gone]

    step("add", do_add)
    step("upsert", do_upsert)
    step("delete", do_delete)
    step("compact", lambda: compact(root))
    report["steps"] = steps
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}))


if __name__ == "__main__":
    main()
