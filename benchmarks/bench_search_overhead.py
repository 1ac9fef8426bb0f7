"""Searcher overhead over raw FAISS: `search_vectors` vs `index.search` on the same query vectors.

Variants, timed interleaved after `gc.collect()`, median of `--repeats`, per batch size (1 = one
query per call):
- raw: `searcher.index.search(truncate_normalize(batch, dim), k)`;
- search_vectors: `searcher.search_vectors(batch, k)` (truncation, FAISS, Hit objects, ids, fields);
- search_vectors with_fields=False (no docstore reads).
Query vectors: the SciFact queries encoded once with the index's encoder, repeated cyclically up
to `--n-queries`. The hits of both paths are checked to be the same documents.

`--make-index OUT` writes a synthetic index instead of measuring: the full-dim fp16 vectors of
`--index` (a real index) tiled to `--rows` rows. Row r is source row r % n; copy 0 is the
source vector as stored, copies c >= 1 add Gaussian noise N(0, (0.05 / sqrt(d))^2) per
component (total norm ~0.05, i.e. near-duplicates) and are L2-normalized again. Ids are
`<source id>#<c>` for c >= 1; titles/texts are the source row's stored fields (empty when the
source was built without --store-text). Shards go through `IndexFolder.write_shard` with the
source's shard size; the manifest is the source's with these shards, `documents=--rows` and no
indexes; then `dramasearch.build.add_dims(OUT, dims, kind)` builds the FAISS indexes.

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

from dramasearch.build import add_dims, content_sha256
from dramasearch.corpus import Document
from dramasearch.matryoshka import truncate_normalize
from dramasearch.searcher import Searcher
from dramasearch.store import DocStore, IndexFolder, ShardInfo
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
    g.add_argument("--kind", default="auto", help="FAISS kind for add_dims (auto: hnsw at 100k..5M rows)")
    g.add_argument("--dims", default=None, help="comma-separated dims (default: the encoder's full dim)")
    g.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.make_index and not args.out:
        p.error("--out is required unless --make-index is given")
    return args


def make_index(source_dir: Path, out: Path, rows: int, kind: str, dims: list[int] | None, seed: int) -> None:
    """Tile the source's stored vectors (with noise past the first copy) into a new index folder."""
    source, dest = IndexFolder(source_dir), IndexFolder(out)
    if dest.has_manifest() or dest.shards_dir.exists():
        raise SystemExit(f"{out} already holds an index; pick a new folder")
    manifest = source.read_manifest()
    base = np.concatenate([source.load_embeddings(s["number"]) for s in manifest.shards]).astype(np.float32)
    store = DocStore(source, manifest.shards)
    size, d = manifest.build["shard_size"], base.shape[1]
    rng = np.random.default_rng(seed)
    shards = []
    for number, start in enumerate(range(0, rows, size)):
        row = np.arange(start, min(start + size, rows))
        src, copy = row % len(base), row // len(base)
        noise = rng.normal(0.0, NOISE_NORM / math.sqrt(d), (len(row), d)).astype(np.float32)
        vectors = np.where((copy > 0)[:, None], truncate_normalize(base[src] + noise), base[src])
        docs = [Document(f"{store.ids[i]}#{c}" if c else store.ids[i], *store.fields(int(i))) for i, c in zip(src, copy)]
        info = ShardInfo(number=number, rows=len(row), content_sha256=content_sha256(docs), emb_sha256="")
        info = dest.write_shard(info, vectors, [doc.id for doc in docs], [(doc.title, doc.text) for doc in docs])
        shards.append(dataclasses.asdict(info))
    store.close()
    dest.write_manifest(dataclasses.replace(
        manifest, shards=shards, indexes=[], documents=rows, empty=0, truncated=0,
        build=manifest.build | {"corpus": f"synthetic: {source_dir} tiled to {rows} rows (bench_search_overhead.py)"},
    ))
    for ix in add_dims(out, dims or [manifest.encoder["dim"]], kind):
        print(f"{out}: {rows} rows, dim {ix['dim']} {ix['kind']} {ix['params']} ({ix['bytes']:,} bytes)")


def measure(args) -> None:
    searcher = Searcher(args.index, dim=args.dim)
    queries = read_queries(args.data)
    encoded = searcher.encoder.encode_queries([q.text for q in queries], show_progress=False)
    vectors = np.resize(encoded, (args.n_queries, encoded.shape[1]))  # cycles through the queries
    dim, k = searcher.dim, args.k
    variants = {
        "raw faiss": lambda b: searcher.index.search(truncate_normalize(b, dim), k),
        "search_vectors": lambda b: searcher.search_vectors(b, k),
        "search_vectors with_fields=False": lambda b: searcher.search_vectors(b, k, with_fields=False),
    }
    check_same_hits(searcher, vectors[:50], k)
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
    m = searcher.manifest
    meta = {"index": str(args.index), "documents": m.documents, "index_kind": searcher.index_spec.kind,
            "params": searcher.index_spec.params, "dim": dim, "k": k, "n_queries": len(vectors),
            "repeats": args.repeats, "synthetic": m.build.get("corpus", "").startswith("synthetic"),
            "corpus": m.build.get("corpus"), "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
            "machine": platform.platform(), "loadavg": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(markdown(rows, meta))


def check_same_hits(searcher: Searcher, vectors: np.ndarray, k: int) -> None:
    """Both paths must return the same documents, else the timing compares different work."""
    _, raw_rows = searcher.index.search(truncate_normalize(vectors, searcher.dim), k)
    ours = searcher.search_vectors(vectors, k, with_fields=False)
    for rows, hits in zip(raw_rows, ours):
        if [searcher.docstore.ids[r] for r in rows if r >= 0] != [h.docid for h in hits]:
            raise SystemExit("search_vectors and raw index.search returned different documents")


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
