"""Searcher overhead over raw FAISS: `search_vectors` vs the segment's `index.search` on the same query vectors.

Variants, timed interleaved after `gc.collect()`, median of `--repeats`, per batch size (1 = one
query per call):
- raw: the FAISS index of the index's single segment, `index.search(prepare(batch, dim), k)`;
- search_vectors: `searcher.search_vectors(batch, k)` (truncation, FAISS per segment, merge,
  tombstones, Hit objects, ids, fields);
- search_vectors with_fields=False (no stored-field reads).
Query vectors: the SciFact queries encoded once with the index's encoder, repeated cyclically up
to `--n-queries`. The hits of both paths are checked to be the same documents (raw FAISS row ids
mapped to docids through the segment). Measuring needs an index of one segment without deletions
(raw FAISS applies no tombstones): a fresh build, `--make-index` output, or a compacted index.

`--make-index OUT` writes a synthetic index instead of measuring: the live documents' full-dim
fp16 vectors of `--index` (a real, non-chunked index) tiled to `--rows` rows. Row r is source
row r % n; copy 0 is the source vector as stored, copies c >= 1 add Gaussian noise
N(0, (0.05 / sqrt(d))^2) per component (total norm ~0.05, i.e. near-duplicates) and are
L2-normalized again. Ids are `<source id>#<c>` for c >= 1; titles/texts are the source
document's stored fields (empty when the source was built without --store-text). The rows are
written as one segment (`write_shard` with the source build's shard size, `seal_segment`,
`new_ref` for the FAISS files at `--dims` / `--kind`) and committed as generation 1 with the
source's encoder and settings, as `import_vectors` does for bare vectors.

Reproduce (source index as in bench_matryoshka.py, built with --store-text for the fields path):
    python benchmarks/bench_search_overhead.py --index /tmp/ix/scifact --make-index /tmp/ix/synth200k --rows 200000 --kind auto
    python benchmarks/bench_search_overhead.py --index /tmp/ix/synth200k --out benchmarks/results/search_overhead_200k.json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import faiss
import numpy as np

from dramasearch import validate
from dramasearch.corpus import Document
from dramasearch.index.faiss_index import choose_spec
from dramasearch.index.generation import Generation, IndexDir, _now
from dramasearch.index.segment import ShardData, seal_segment, write_shard
from dramasearch.index.snapshot import Snapshot
from dramasearch.index.writer import (DEFAULT_SHARD_SIZE, content_sha256, document_hash, new_ref,
                                      segment_name)
from dramasearch.matryoshka import prepare, truncate_normalize
from dramasearch.searcher import Searcher
from dramasearch.topics import read_queries

REPO = Path(__file__).resolve().parents[1]
NOISE_NORM = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", type=Path, required=True, help="index folder (the source with --make-index)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/scifact", help="BEIR folder (queries)")
    p.add_argument("--dim", type=int, default=None, help="which index dim (default: the largest)")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--batch-sizes", default="all,1", help="queries per call; 'all' = every query at once")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, help="JSON results file (measuring mode)")
    g = p.add_argument_group("--make-index mode")
    g.add_argument("--make-index", type=Path, metavar="OUT", help="write a synthetic tiled index to OUT and exit")
    g.add_argument("--rows", type=int, default=200_000)
    g.add_argument("--kind", default="auto", help="FAISS kind (auto: hnsw at 100k..5M rows)")
    g.add_argument("--dims", default=None, help="comma-separated dims (default: the encoder's full dim)")
    g.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.make_index and not args.out:
        p.error("--out is required unless --make-index is given")
    return args


def make_index(source_dir: Path, out: Path, rows: int, kind: str, dims: list[int] | None, seed: int) -> None:
    """Tile the source's stored vectors and fields (noise past the first copy) into a new one-segment index."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"{out} is not an empty folder; pick a new one")
    source = Snapshot(source_dir)
    try:
        base, ids, fields = source_documents(source)
        source_gen = source.generation
    finally:
        source.close()
    encoder, d = source_gen.encoder, base.shape[1]
    dims = dims or [encoder["dim"]]
    validate.dims(dims, d)
    size = source_gen.settings.get("build_key", {}).get("shard_size", DEFAULT_SHARD_SIZE)
    rng = np.random.default_rng(seed)
    idx, name = IndexDir(out), segment_name(0)
    idx.create()
    with idx.writer():
        folder = idx.segments / name
        folder.mkdir(parents=True)
        infos = []
        for number, start in enumerate(range(0, rows, size)):
            row = np.arange(start, min(start + size, rows))
            src, copy = row % len(base), row // len(base)
            noise = rng.normal(0.0, NOISE_NORM / math.sqrt(d), (len(row), d)).astype(np.float32)
            vectors = np.where((copy > 0)[:, None], truncate_normalize(base[src] + noise), base[src])
            docs = [Document(f"{ids[i]}#{c}" if c else ids[i], *fields[i]) for i, c in zip(src, copy)]
            data = ShardData(vectors=vectors, ids=[doc.id for doc in docs], fields=[fields[i] for i in src],
                             content_hashes=np.array([document_hash(doc) for doc in docs], dtype=np.uint64))
            infos.append(write_shard(folder, number, data, content_sha256(docs)))
        info = seal_segment(folder, name, infos, d, chunked=False)
        specs = [{"dim": dim, "kind": choose_spec(kind, dim, info.rows).kind} for dim in dims]
        ref = new_ref(folder, info, 0, specs, encoder["normalize"])
        # Not a build of a corpus, and no BM25 postings are written for the synthetic rows.
        settings = {k: v for k, v in source_gen.settings.items() if k not in ("build_key", "bm25")}
        settings["corpus"] = f"synthetic: {source_dir} tiled to {rows} rows (bench_search_overhead.py)"
        idx.commit(Generation(generation=1, parent=None, operation="synthetic", created=_now(), encoder=encoder,
                              settings=settings, indexes=specs, segments=[dataclasses.asdict(ref)],
                              next_key=info.rows, next_segment=1))
    for entry in ref.faiss.values():
        spec = entry["spec"]
        print(f"{out}: {rows} rows, dim {spec['dim']} {spec['kind']} {spec['params']} ({entry['bytes']:,} bytes)")


def source_documents(snap: Snapshot) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Every live document of the pinned generation: float32 full-dim vectors, ids, (title, text)."""
    if snap.settings.get("long_doc") == "chunk":
        raise SystemExit(f"{snap.dir.root}: a chunk-mode index has several rows per document; "
                         "use a full-document index")
    vectors, ids, fields = [], [], []
    for i, segment in enumerate(snap.segments):
        live = [doc for doc, _, _ in snap.live_documents(i)]  # row = document outside chunk mode
        vectors.append(np.concatenate(list(segment.vector_blocks()))[live].astype(np.float32))
        shards = [segment.shard_documents(n) for n in range(len(segment.shards))]
        segment_ids = [docid for shard_ids, _ in shards for docid in shard_ids]
        segment_fields = [record for _, shard_fields in shards for record in shard_fields]
        ids += [segment_ids[doc] for doc in live]
        fields += [segment_fields[doc] for doc in live]
    if not ids:
        raise SystemExit(f"{snap.dir.root}: no live documents to tile")
    return np.concatenate(vectors), ids, fields


def raw_index(searcher: Searcher):
    """The FAISS index behind the searcher's (dim, kind): one segment without deletions, else not comparable."""
    snap = searcher._snap
    if len(snap.refs) != 1 or snap.refs[0].deleted_rows:
        deleted = sum(ref.deleted_rows for ref in snap.refs)
        raise SystemExit(f"{searcher.root}: raw FAISS needs one segment without deletions (it has {len(snap.refs)} "
                         f"segments, {deleted} deleted rows); run `dramasearch compact` first or use a fresh build")
    return snap.faiss_index(0, f"dim{searcher.dim}-{searcher.index_kind}")


def measure(args) -> None:
    searcher = Searcher(args.index, dim=args.dim)
    index, spec = raw_index(searcher)
    queries = read_queries(args.data)
    encoded = searcher.encoder.encode_queries([q.text for q in queries], show_progress=False)
    vectors = np.resize(encoded, (args.n_queries, encoded.shape[1]))  # cycles through the queries
    dim, k, normalize = searcher.dim, args.k, searcher.encoder_spec.normalize
    variants = {
        "raw faiss": lambda b: index.search(prepare(b, dim, normalize), k),
        "search_vectors": lambda b: searcher.search_vectors(b, k),
        "search_vectors with_fields=False": lambda b: searcher.search_vectors(b, k, with_fields=False),
    }
    check_same_hits(searcher, index, vectors[:50], k)
    rows = []
    for size_text in args.batch_sizes.split(","):
        size = len(vectors) if size_text == "all" else int(size_text)
        batches = [vectors[i : i + size] for i in range(0, len(vectors), size)]
        times = {name: [] for name in variants}
        for name, fn in variants.items():  # warm-up
            fn(batches[0])
        for _ in range(args.repeats):
            for name, fn in variants.items():
                gc.collect()  # same heap state for every variant
                start = time.perf_counter()
                for batch in batches:
                    fn(batch)
                times[name].append(time.perf_counter() - start)
        raw = statistics.median(times["raw faiss"])
        for name, ts in times.items():
            median = statistics.median(ts)
            rows.append({"batch_size": size, "variant": name, "times_s": [round(t, 5) for t in ts],
                         "qps": round(len(vectors) / median, 1), "us_per_query": round(1e6 * median / len(vectors), 2),
                         "overhead_pct": round(100 * (median / raw - 1), 2),
                         "overhead_us_per_query": round(1e6 * (median - raw) / len(vectors), 2)})
    generation = searcher._snap.generation
    corpus = generation.settings.get("corpus", "")
    meta = {"index": str(args.index), "generation": generation.generation, "documents": generation.documents,
            "index_kind": spec.kind, "params": spec.params, "dim": dim, "k": k, "n_queries": len(vectors),
            "repeats": args.repeats, "synthetic": corpus.startswith("synthetic"),
            "corpus": corpus, "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "machine": platform.platform(), "loadavg": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(markdown(rows, meta))


def check_same_hits(searcher: Searcher, index, vectors: np.ndarray, k: int) -> None:
    """Both paths must return the same documents, else the timing compares different work."""
    _, raw_rows = index.search(prepare(vectors, searcher.dim, searcher.encoder_spec.normalize), k)
    segment = searcher._snap.segments[0]  # FAISS id = row = document (not chunk mode)
    ours = searcher.search_vectors(vectors, k, with_fields=False)
    for rows, hits in zip(raw_rows, ours):
        if [segment.docid(int(r)) for r in rows if r >= 0] != [h.docid for h in hits]:
            raise SystemExit("search_vectors and raw FAISS index.search returned different documents")


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"{meta['documents']:,} rows ({'synthetic' if meta['synthetic'] else 'real'}), dim {meta['dim']} "
             f"{meta['index_kind']} {meta['params']}, k={meta['k']}, {meta['n_queries']} queries, "
             f"{meta['faiss_threads']} FAISS threads", "",
             "| batch | variant | QPS | µs/query | overhead % | overhead µs/query |", "|" + "---|" * 6]
    lines += [f"| {r['batch_size']} | {r['variant']} | {r['qps']:.0f} | {r['us_per_query']:.1f} "
              f"| {r['overhead_pct']:+.1f} | {r['overhead_us_per_query']:+.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.make_index:
        dims = [int(d) for d in args.dims.split(",")] if args.dims else None
        make_index(args.index, args.make_index, args.rows, args.kind, dims, args.seed)
    else:
        measure(args)


if __name__ == "__main__":
    main()
