"""What integrity checks cost at open: Searcher(checks="full") against checks="cheap".

An index of seeded Gaussian vectors is imported (flat FAISS), then each measurement opens it in
a fresh spawned interpreter (so nothing is cached in-process) and runs one search, which loads
the FAISS files. "full" hashes every file of the generation with sha256 before the first
search; "cheap" checks sizes, .npy headers and counts only. The files are read once beforehand,
so both sides read from the page cache and the difference is the hashing itself. Runs
alternate between the two, and medians are reported.

    python benchmarks/bench_open_checks.py [--rows 500000] [--dim 384] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from child_process import in_child, vm_kib
from bench_scale import write_vectors


def do_open(spec: dict) -> dict:
    from dramasearch.searcher import Searcher

    query = np.random.default_rng(1).standard_normal((1, spec["dim"]), dtype=np.float32)
    start = time.perf_counter()
    with Searcher(spec["index"], checks=spec["checks"]) as searcher:
        searcher.search_vectors(query, k=10)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": vm_kib("VmHWM") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/out/open_checks")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vectors, index = out / "vectors.npy", out / "index"
    if not vectors.is_file():
        write_vectors(vectors, args.rows, args.dim)
    if not (index / "generations").is_dir():
        from dramasearch.index.vectors import import_vectors

        import_vectors(str(vectors), str(index), index_kind="flat")
    files = [p for p in (index / "segments").rglob("*") if p.is_file()]
    index_bytes = sum(p.stat().st_size for p in files)
    for path in files:  # into the page cache, so both sides measure hashing, not the disk
        path.read_bytes()
    times: dict[str, list[float]] = {"full": [], "cheap": []}
    for _ in range(args.repeats):
        for checks in ("full", "cheap"):
            result = in_child(do_open, {"index": str(index), "dim": args.dim, "checks": checks}, checks)
            times[checks].append(result["seconds"])
    full, cheap = statistics.median(times["full"]), statistics.median(times["cheap"])
    report = {
        "rows": args.rows, "dim": args.dim, "index_bytes": index_bytes, "repeats": args.repeats,
        "open_and_first_search_seconds": {"full": full, "cheap": cheap}, "all_runs": times,
        "hashing_seconds": full - cheap, "hash_gb_per_s": index_bytes / 1e9 / max(full - cheap, 1e-9),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
