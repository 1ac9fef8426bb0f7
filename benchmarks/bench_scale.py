"""Scale: 10M vectors imported, opened, searched, 1% deleted, compacted.

Vectors: seeded Gaussian rows of dim 64 (the point is the store, not the ranking), written as
one .npy file, imported with `import_vectors` (ids are row numbers as strings). Each phase
runs in a fresh spawned interpreter, so the peak RSS it reports is its own. Reported per
phase: wall time, peak RSS; for the opened searcher: open descriptors, RSS above a bare
interpreter with the same imports, and the bytes per row held in RAM beside the FAISS vectors.

    python benchmarks/bench_scale.py [--rows 10000000] [--dim 64] [--out benchmarks/out/scale]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from child_process import in_child, reset_peak_rss, vm_kib

BLOCK = 1_000_000


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def write_vectors(path: Path, rows: int, dim: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    for start in range(0, rows, BLOCK):
        stop = min(start + BLOCK, rows)
        array[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    array.flush()
    del array


def do_import(spec: dict) -> dict:
    from dramasearch.index.vectors import import_vectors

    reset_peak_rss()
    start = time.perf_counter()
    report = import_vectors(spec["vectors"], spec["index"], index_kind="flat")
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": vm_kib("VmHWM") / 1024,
            "shards": report.shards_total}


def do_search(spec: dict) -> dict:
    import faiss  # noqa: F401 - loaded before the baseline so it is not counted per row

    from dramasearch.index.generation import IndexDir
    from dramasearch.searcher import Searcher

    base_rss, base_fds = vm_kib("VmRSS"), fds()
    gen = IndexDir(spec["index"]).read()
    faiss_bytes = sum(f["bytes"] for s in gen.segments for f in s["faiss"].values())
    reset_peak_rss()
    start = time.perf_counter()
    searcher = Searcher(spec["index"])
    queries = np.random.default_rng(1).standard_normal((spec["queries"], spec["dim"]), dtype=np.float32)
    searcher.search_vectors(queries[:1], k=10)  # loads the FAISS files (lazily, per segment)
    open_seconds = time.perf_counter() - start
    rss_open = vm_kib("VmRSS")
    start = time.perf_counter()
    hits = searcher.search_vectors(queries, k=10)
    search_seconds = time.perf_counter() - start
    open_fds = fds() - base_fds
    rss_after = vm_kib("VmRSS")
    extra = (rss_after - base_rss) * 1024 - faiss_bytes
    result = {
        "open_seconds": open_seconds, "queries": len(queries), "qps": len(queries) / search_seconds,
        "hits_per_query": len(hits[0]), "descriptors_held": open_fds, "segments": len(gen.segments),
        "shards": sum(1 for _ in (Path(spec["index"]) / "segments").rglob("[0-9]*.vec.npy")),
        "faiss_bytes": faiss_bytes, "rss_above_bare_mib": (rss_after - base_rss) / 1024,
        "rss_after_open_mib": rss_open / 1024, "peak_rss_mib": vm_kib("VmHWM") / 1024,
        "bytes_per_row_beside_faiss": extra / gen.rows, "live_rows": gen.rows,
    }
    searcher.close()
    return result


def do_delete(spec: dict) -> dict:
    from dramasearch.index.updates import delete_documents

    rows = spec["rows"]
    ids = [str(i) for i in np.random.default_rng(2).choice(rows, size=rows // 100, replace=False)]
    reset_peak_rss()
    start = time.perf_counter()
    report = delete_documents(spec["index"], ids)
    return {"seconds": time.perf_counter() - start, "deleted": report.deleted, "peak_rss_mib": vm_kib("VmHWM") / 1024}


def do_compact(spec: dict) -> dict:
    from dramasearch.index.updates import compact

    reset_peak_rss()
    start = time.perf_counter()
    compact(spec["index"], shard_size=100_000)
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": vm_kib("VmHWM") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/out/scale")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vectors, index = out / "vectors.npy", out / "index"
    if not vectors.is_file():
        write_vectors(vectors, args.rows, args.dim)
    shutil.rmtree(index, ignore_errors=True)
    spec = {"vectors": str(vectors), "index": str(index), "rows": args.rows, "dim": args.dim, "queries": args.queries}
    report = {"rows": args.rows, "dim": args.dim, "index_kind": "flat"}
    for phase, target in (("import", do_import), ("search", do_search), ("delete_1pct", do_delete),
                          ("search_after_delete", do_search), ("compact", do_compact),
                          ("search_after_compact", do_search)):
        report[phase] = in_child(target, spec, phase)
        print(json.dumps({phase: report[phase]}), flush=True)
    report["index_bytes_on_disk"] = sum(p.stat().st_size for p in index.rglob("*") if p.is_file())
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
