"""An on-disk IVF index (ivf-disk) over millions of real embeddings: build RAM, search RAM, recall, QPS.

Vectors: the SciFact corpus (5,183 documents) encoded with the packaged MiniLM (384-d), tiled
to `--rows` rows: row r = normalize(base[r % 5183] + 0.5 * base[j] + noise), j a seeded random
document and noise Gaussian with norm ~0.5, so rows are neither copies nor unstructured.
Queries: the 300 SciFact test queries encoded with the same model. The vectors go through
`import_vectors(..., index_kind="ivf-disk")`, the path a user takes (`dramasearch
import-vectors --index ivf-disk`): one segment of fp16 rows, its .faiss header and .ivfdata.

Each phase runs in a fresh spawned interpreter (peak RSS is its own, from /proc VmHWM):
- build: import + on-disk IVF build (train on a 262,144-row sample, add in parts, merge);
- search: open the index and search it at several nprobe values; peak RSS, split into
  anonymous memory (the process's own) and file pages mapped from the .ivfdata (page cache
  the kernel can drop), against the index size; recall@10 against exact search over the
  same stored rows (fp16, renormalized), computed by brute force in blocks in the parent.
`--memory-limit 1G` runs the search in a memory cgroup (page cache included); the default is no
limit. bench_ondisk_pagecache.py varies the mapping's readahead under such a limit.
Also prints the memory-budget rule's choice at three budgets for this index's shape.

    python benchmarks/bench_ondisk.py [--rows 2000000] [--out benchmarks/out/ondisk]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from child_process import in_child, reset_peak_rss, vm_kib

BLOCK = 262_144
K = 10


def status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def encode_scifact(spec: dict) -> dict:
    """Document vectors and query vectors: encoded with MiniLM, or (`--vectors-from INDEX`) the
    stored vectors of an existing SciFact index and its own encoder for the queries."""
    import torch

    from dramasearch.corpus import iter_documents
    from dramasearch.index.snapshot import Snapshot
    from dramasearch.models import load_encoder
    from dramasearch.searcher import Searcher
    from dramasearch.topics import read_queries

    texts = [q.text for q in read_queries(spec["queries_file"])]
    start = time.perf_counter()
    if spec["vectors_from"]:
        snap = Snapshot(spec["vectors_from"])
        base = np.concatenate([np.concatenate(list(s.vector_blocks())) for s in snap.segments]).astype(np.float32)
        snap.close()
        with Searcher(spec["vectors_from"], device="cpu", dtype=torch.float32) as searcher:
            queries = searcher.encoder.encode_queries(texts, show_progress=False)
            model = searcher.encoder.spec.to_dict().get("name") or spec["vectors_from"]
    else:
        encoder = load_encoder("minilm", device="cpu", dtype=torch.float32)
        base = encoder.encode_documents([d.content() for d in iter_documents(spec["corpus"])], show_progress=False)
        queries = encoder.encode_queries(texts, show_progress=False)
        model = "minilm"
    np.save(spec["base"], np.asarray(base, dtype=np.float32))
    np.save(spec["queries"], np.asarray(queries, dtype=np.float32))
    return {"model": str(model), "documents": len(base), "queries": len(queries),
            "seconds": time.perf_counter() - start}


def write_tiled(base: np.ndarray, path: Path, rows: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, base.shape[1]))
    rng = np.random.default_rng(0)
    noise_scale = 0.5 / np.sqrt(base.shape[1])
    for start in range(0, rows, BLOCK):
        stop = min(start + BLOCK, rows)
        own = base[np.arange(start, stop) % len(base)]
        other = base[rng.integers(0, len(base), stop - start)]
        x = own + 0.5 * other + noise_scale * rng.standard_normal(own.shape, dtype=np.float32)
        array[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    array.flush()
    del array


class PeakSampler:
    """Peak anonymous memory (the process's own) and peak file-backed resident memory (mapped
    files: page cache), sampled every 0.2 s; VmHWM alone mixes the two."""

    def __init__(self) -> None:
        import threading

        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        self.anon = max(self.anon, status_kib("RssAnon"))
        self.file = max(self.file, status_kib("RssFile"))

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        return {"peak_anon_mib": self.anon / 1024, "peak_file_mib": self.file / 1024}


def do_build(spec: dict) -> dict:
    from dramasearch.index.vectors import import_vectors

    cgroup = join_memory_cgroup(spec["build_memory_limit"]) if spec["build_memory_limit"] else ""
    reset_peak_rss()
    sampler = PeakSampler()
    start = time.perf_counter()
    import_vectors(spec["vectors"], spec["index"], index_kind="ivf-disk")
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": vm_kib("VmHWM") / 1024, **sampler.stop(),
            "cgroup": cgroup, "memory_limit": spec["build_memory_limit"]}


def mapped_kib(suffix: str) -> int:
    """Resident KiB of this process's mappings of files ending with `suffix` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[-1].endswith(suffix)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


def join_memory_cgroup(limit: int) -> str:
    """Put this process in a memory cgroup of its own with `limit` bytes (cgroup v1, else v2);
    "" where neither can be created (then the search runs unlimited and the report says so)."""
    for root, limit_file in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
                             ("/sys/fs/cgroup/unified", "memory.max"), ("/sys/fs/cgroup", "memory.max")):
        if not (Path(root) / "cgroup.procs").is_file():
            continue  # not a cgroup file system
        folder = Path(root) / f"dramasearch-bench-ondisk-{os.getpid()}"
        try:
            folder.mkdir()
            if not (folder / limit_file).is_file():  # no memory controller here
                folder.rmdir()
                continue
            (folder / limit_file).write_text(str(limit))
            (folder / "cgroup.procs").write_text(str(os.getpid()))
            return str(folder)
        except OSError:
            continue
    return ""


def drop_file_cache(path: Path) -> None:
    """Evict one file's clean pages from the page cache, so the search starts cold (this file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def do_search(spec: dict) -> dict:
    import faiss

    from dramasearch.index.snapshot import Snapshot

    faiss.omp_set_num_threads(spec["threads"])
    queries = np.load(spec["queries"])
    cgroup = join_memory_cgroup(spec["memory_limit"]) if spec["memory_limit"] else ""
    for data in Path(spec["index"]).rglob("*.ivfdata"):
        drop_file_cache(data)
    bare = vm_kib("VmRSS")
    reset_peak_rss()
    sampler = PeakSampler()
    start = time.perf_counter()
    snap = Snapshot(spec["index"])
    name = f"dim{queries.shape[1]}-ivf-disk"
    index, index_spec = snap.faiss_index(0, name)
    open_seconds = time.perf_counter() - start
    after_open = {"rss_mib": vm_kib("VmRSS") / 1024, "anon_mib": status_kib("RssAnon") / 1024,
                  "ivfdata_resident_mib": mapped_kib(".ivfdata") / 1024}
    runs = {}
    for nprobe in spec["nprobes"]:
        start = time.perf_counter()
        snap.search(queries, K, name, nprobe=nprobe)  # first pass: lists come from storage (or cache)
        first = time.perf_counter() - start
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            _, _, rows = snap.search(queries, K, name, nprobe=nprobe)
            times.append(time.perf_counter() - start)
        single = time.perf_counter()
        for q in queries[:50]:
            snap.search(q[None, :], K, name, nprobe=nprobe)
        single = (time.perf_counter() - single) / 50
        runs[str(nprobe)] = {"first_pass_qps": len(queries) / first, "batch_qps": len(queries) / float(np.median(times)),
                             "single_query_ms": single * 1000, "rows": rows.tolist(),
                             "ivfdata_resident_mib": mapped_kib(".ivfdata") / 1024}
    peak = {"peak_rss_mib": vm_kib("VmHWM") / 1024, "rss_before_open_mib": bare / 1024, **sampler.stop(),
            "anon_mib": status_kib("RssAnon") / 1024, "ivfdata_resident_mib": mapped_kib(".ivfdata") / 1024}
    snap.close()
    return {"open_seconds": open_seconds, "cgroup": cgroup, "memory_limit": spec["memory_limit"],
            "after_open": after_open, "end": peak, "runs": runs,
            "default_nprobe": index_spec.params["nprobe"], "nlist": index_spec.params["nlist"]}


def exact_topk(vectors_path: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k over the rows as the index stores them (fp16, renormalized)."""
    from dramasearch.matryoshka import prepare

    data = np.load(vectors_path, mmap_mode="r")
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(data), BLOCK):
        block = prepare(np.asarray(data[start : start + BLOCK], dtype=np.float16), data.shape[1], True)
        scores = queries @ block.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_rows = np.concatenate([best_rows, top + start], axis=1)
        order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(cand_scores, order, axis=1)
        best_rows = np.take_along_axis(cand_rows, order, axis=1)
    return best_rows


def budget_choices(rows: int, dim: int) -> dict:
    from dramasearch.index.budget import choose_kind, default_budget, parse_size

    out = {}
    for text in ("8G", "1G", "64M"):
        choice = choose_kind(dim, rows, parse_size(text))
        out[text] = {"kind": choice.kind, "explain": choice.explain()}
    out["default (half of available RAM now)"] = {"kind": choose_kind(dim, rows, default_budget()).kind,
                                                  "explain": choose_kind(dim, rows, default_budget()).explain()}
    return out


def main() -> None:
    from dramasearch.index.budget import parse_size
    from dramasearch.searcher import Searcher

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--out", default="benchmarks/out/ondisk")
    parser.add_argument("--scifact", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"))
    parser.add_argument("--vectors-from", default=None,
                        help="an existing SciFact index: use its stored vectors and encoder instead of encoding")
    parser.add_argument("--nprobes", default="16,64,256")
    parser.add_argument("--build-memory-limit", default="0",
                        help="run the build in a memory cgroup with this limit (page cache included); 0: none")
    parser.add_argument("--memory-limit", default="0",
                        help="run the search in a memory cgroup with this limit (page cache included); 0: none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse-index", action="store_true", help="search the index a --keep run left, no rebuild")
    parser.add_argument("--keep", action="store_true", help="keep the vectors and index (several GB) afterwards")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base, queries_path = out / "scifact-minilm.npy", out / "scifact-queries-minilm.npy"
    vectors, index = out / "vectors.npy", out / "index"
    report: dict = {"rows": args.rows}
    if not base.is_file() or not queries_path.is_file():
        report["encode"] = in_child(encode_scifact, {"corpus": args.scifact, "queries_file": args.scifact,
                                                     "vectors_from": args.vectors_from, "base": str(base),
                                                     "queries": str(queries_path)}, "encode")
        print(json.dumps(report["encode"]), flush=True)
    if not vectors.is_file():
        write_tiled(np.load(base), vectors, args.rows)
    dim = int(np.load(base, mmap_mode="r").shape[1])
    reuse = args.reuse_index and (index / "generations").is_dir()
    if not reuse:
        shutil.rmtree(index, ignore_errors=True)
    spec = {"vectors": str(vectors), "index": str(index), "queries": str(queries_path),
            "nprobes": [int(n) for n in args.nprobes.split(",")], "repeats": args.repeats, "threads": args.threads,
            "memory_limit": parse_size(args.memory_limit) if args.memory_limit != "0" else 0,
            "build_memory_limit": parse_size(args.build_memory_limit) if args.build_memory_limit != "0" else 0}
    try:
        report["build"] = "reused" if reuse else in_child(do_build, spec, "build")
    finally:
        for folder in Path("/sys/fs/cgroup").glob("*/dramasearch-bench-ondisk-*"):
            folder.rmdir()
    print(json.dumps({"build": report["build"]}), flush=True)
    files = {p.name: p.stat().st_size for p in (index / "segments").rglob("dim*-ivf-disk.*")}
    report["index_files_bytes"] = files
    report["store_bytes"] = sum(p.stat().st_size for p in index.rglob("*.vec.npy"))
    try:
        search = in_child(do_search, spec, "search")
    finally:
        for folder in Path("/sys/fs/cgroup").glob("*/dramasearch-bench-ondisk-*"):
            folder.rmdir()  # the child's cgroup, empty once it has exited
    with Searcher(index) as searcher:  # the user's path, hits come back as docids (= row numbers here)
        search["searcher_top_docids"] = [[h.docid for h in hs[:3]] for hs in searcher.search_vectors(
            np.load(queries_path)[:3], k=K)]
    truth = exact_topk(vectors, np.load(queries_path), K)
    for nprobe, run in search["runs"].items():
        rows = np.array(run.pop("rows"))
        run["recall_at_10"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(rows, truth)]))
    report["search"] = search
    report["budget_choices"] = budget_choices(args.rows, dim)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not args.keep:  # the base and query vectors (small) stay for the next run
        shutil.rmtree(index, ignore_errors=True)
        vectors.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
