"""Why the on-disk lists are mapped MADV_RANDOM: one index searched under a memory cgroup with the
mapping's advice and FAISS's list prefetch varied, each variant in a fresh process.

Reads the index a `bench_ondisk.py --keep` run left (default benchmarks/out/ondisk). Per variant:
the .ivfdata evicted from the page cache, the process put in a memory cgroup of `--limit` (page
cache included), the index opened through `Snapshot` (which advises MADV_RANDOM), then the
advice reset to MADV_NORMAL for the readahead variants, `prefetch_nthread` set, and the 300
SciFact queries searched `--passes` times as one batch at `--nprobe`. Reported: QPS per pass, bytes
read from disk (/proc/self/io read_bytes) and VmHWM.

    python benchmarks/bench_ondisk_pagecache.py [--limit 1G] [--nprobe 16]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import time
from pathlib import Path

import numpy as np

from bench_ondisk import K, drop_file_cache, join_memory_cgroup
from child_process import in_child, vm_kib

VARIANTS = [("random", 32), ("random", 0), ("normal", 0), ("normal", 32)]  # (advice, FAISS prefetch threads)


def read_bytes() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("read_bytes:")).split()[1])


def do_variant(spec: dict) -> dict:
    import faiss

    from dramasearch.index import ondisk
    from dramasearch.index.snapshot import Snapshot

    faiss.omp_set_num_threads(spec["threads"])
    queries = np.load(spec["queries"])
    cgroup = join_memory_cgroup(spec["limit"])
    for data in Path(spec["index"]).rglob("*.ivfdata"):
        drop_file_cache(data)
    snap = Snapshot(spec["index"])
    name = f"dim{queries.shape[1]}-ivf-disk"
    index, _ = snap.faiss_index(0, name)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.prefetch_nthread = spec["prefetch"]
    if spec["advice"] == "normal":  # undo read_ondisk's advice: the kernel's default readahead
        ondisk._madvise(ctypes.c_void_p(int(lists.ptr)), ctypes.c_size_t(lists.totsize), mmap.MADV_NORMAL)
    before = read_bytes()
    qps = []
    for _ in range(spec["passes"]):
        start = time.perf_counter()
        snap.search(queries, K, name, nprobe=spec["nprobe"])
        qps.append(round(len(queries) / (time.perf_counter() - start), 1))
    result = {"advice": spec["advice"], "prefetch": spec["prefetch"], "cgroup": cgroup, "qps": qps,
              "read_gb": round((read_bytes() - before) / 1e9, 2), "vmhwm_mib": round(vm_kib("VmHWM") / 1024)}
    snap.close()
    return result


def main() -> None:
    from dramasearch.index.budget import parse_size

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/out/ondisk", help="folder of a `bench_ondisk.py --keep` run")
    parser.add_argument("--limit", default="1G")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(f"{a}:{p}" for a, p in VARIANTS),
                        help="advice:prefetch_threads, comma-separated")
    args = parser.parse_args()
    out = Path(args.out)
    results = []
    for variant in args.variants.split(","):
        advice, prefetch = variant.split(":")
        spec = {"index": str(out / "index"), "queries": str(out / "scifact-queries-minilm.npy"),
                "limit": parse_size(args.limit), "nprobe": args.nprobe, "passes": args.passes,
                "threads": args.threads, "advice": advice, "prefetch": int(prefetch)}
        try:
            result = in_child(do_variant, spec, f"{advice} readahead, prefetch {prefetch}")
        finally:
            for folder in Path("/sys/fs/cgroup").glob("*/dramasearch-bench-ondisk-*"):
                folder.rmdir()  # the child's cgroup, empty once it has exited
        print(json.dumps({"limit": args.limit, "nprobe": args.nprobe, **result}), flush=True)
        results.append(result)
    (out / f"pagecache-{args.limit}-nprobe{args.nprobe}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
