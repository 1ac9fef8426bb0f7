"""How sure an adapt run's dev set was that its chosen model beats the starting model.

Re-scores a finished `adapt` work folder: per-query dev nDCG@10 of the starting model and of
train/best, wins/losses/ties, and `trainer.devset.gain_confidence` (the share of paired bootstrap
resamples on which best beats the start), the number adapt's --min-dev-confidence is compared with.

    python benchmarks/dev_confidence.py WORK_DIR [--model minilm]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dramasearch.models import load_encoder
from trainer.devset import DevSet, gain_confidence, mean, per_query_ndcg10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="an adapt work folder (OUT.adapt-work)")
    parser.add_argument("--model", default="minilm", help="the starting model the run adapted")
    args = parser.parse_args()
    dev_dir = args.work_dir / "dev"
    dev = DevSet.load(dev_dir / "corpus.jsonl", dev_dir / "queries.jsonl", dev_dir / "qrels.tsv")
    start = per_query_ndcg10(load_encoder(args.model, device="cpu"), dev, [None])[None]
    best = per_query_ndcg10(load_encoder(args.work_dir / "train" / "best", device="cpu"), dev, [None])[None]
    gains = best - start
    print(json.dumps({
        "work_dir": str(args.work_dir), "dev_queries": len(gains), "start": round(mean(start), 4),
        "best": round(mean(best), 4), "wins": int((gains > 0).sum()), "losses": int((gains < 0).sum()),
        "ties": int((gains == 0).sum()), "confidence": gain_confidence(start, best),
    }))


if __name__ == "__main__":
    main()
