"""Weight interpolation between the starting model and an adapted one, scored on dev and test.

Why: small contrastive fine-tunes can hurt as often as they help, and averaging the fine-tuned
weights with the starting ones (WiSE-FT, Wortsman et al. 2022) is a known way to keep most of a
gain while giving back less where the fine-tune over-fits. This measures, from a finished
`adapt` work folder, the candidates a selection rule could choose from: the start, train/best,
train/last, `(1 - a) * start + a * last` for each a, and `(1 - a) * start + a * best` when an
earlier step than the last won. For each: dev nDCG@10 and its paired
bootstrap confidence over the start (the number adapt's --min-dev-confidence bar reads) with
wins/losses/ties, and the same on the collection's test queries, which adapt never sees.

    python benchmarks/interpolate_adapted.py WORK_DIR --data ../shared/data/vaswani --out result.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_smollm2_retriever import load_dev
from dev_confidence import compared, work_dev_set
from dramasearch.encoder import Encoder, default_dtype
from dramasearch.fsutil import atomic_write_bytes
from dramasearch.models import load_encoder
from trainer.average import average_with_start
from trainer.devset import per_query_ndcg10


def _interpolated(start_fp32, end: Path, alpha: float) -> Encoder:
    """The encoder in folder `end`, its weights replaced by (1 - alpha) * start + alpha * end, averaged
    in fp32 as adapt's export does (bf16 weights are too coarse for a fine-tune's small steps), then
    cast to the precision every other candidate is scored at."""
    averaged = average_with_start(start_fp32, load_encoder(end, device="cpu", dtype=torch.float32), alpha)
    return Encoder(averaged.model, averaged.tokenizer, averaged.spec, "cpu", default_dtype("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="an adapt work folder (OUT.adapt-work)")
    parser.add_argument("--data", type=Path, required=True, help="the BEIR collection adapt was run on")
    parser.add_argument("--model", default="minilm", help="the starting model the run adapted")
    parser.add_argument("--alphas", default="0.25,0.5,0.75")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not (args.work_dir / "adapt-report.json").is_file():
        parser.error(f"{args.work_dir}: no adapt-report.json; give the work folder of a finished adapt run")
    report = json.loads((args.work_dir / "adapt-report.json").read_text())
    sets = {"dev": work_dev_set(args.work_dir), "test": load_dev(args.data)}
    start = load_encoder(args.model, device="cpu")
    last_dir = args.work_dir / "train" / "last"
    candidates = {"start": start, "last": load_encoder(last_dir, device="cpu")}
    # train/best is a copy of the start or of last unless an earlier step won: encode it only then
    best_is = "start" if report["baseline_kept"] else "last" if report["best_step"] == report["steps"] else None
    if best_is is None:
        candidates["best"] = load_encoder(args.work_dir / "train" / "best", device="cpu")
    start_fp32 = load_encoder(args.model, device="cpu", dtype=torch.float32)
    for alpha in (float(a) for a in args.alphas.split(",")):
        candidates[f"lerp{alpha:g}"] = _interpolated(start_fp32, last_dir, alpha)
        if best_is is None:
            candidates[f"best-lerp{alpha:g}"] = _interpolated(start_fp32, args.work_dir / "train" / "best", alpha)
    scores, rows = {}, {}
    for name, encoder in candidates.items():  # "start" first: every row is compared with it
        scores[name] = {split: per_query_ndcg10(encoder, data, [None])[None] for split, data in sets.items()}
        rows[name] = {split: compared(scores["start"][split], per_query) for split, per_query in scores[name].items()}
        print(name, json.dumps(rows[name]), flush=True)
    if best_is is not None:
        rows["best"] = rows[best_is]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps({
        "collection": args.data.name, "steps": report["steps"], "best_step": report["best_step"],
        "baseline_kept": report["baseline_kept"], "dev_queries": len(sets["dev"].query_ids),
        "test_queries": len(sets["test"].query_ids), "candidates": rows,
    }, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
