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

import numpy as np

from dramasearch.models import load_encoder
from trainer.devset import DevSet, gain_confidence, mean, per_query_ndcg10


def work_dev_set(work_dir: Path) -> DevSet:
    """The dev set an adapt run carved from its own augmented data (WORK_DIR/dev)."""
    dev_dir = work_dir / "dev"
    return DevSet.load(dev_dir / "corpus.jsonl", dev_dir / "queries.jsonl", dev_dir / "qrels.tsv")


def compared(start: np.ndarray, candidate: np.ndarray) -> dict:
    """A candidate's mean nDCG@10 and its per-query comparison with the start's scores."""
    gains = candidate - start
    return {"nDCG@10": round(mean(candidate), 4), "wins": int((gains > 0).sum()), "losses": int((gains < 0).sum()),
            "ties": int((gains == 0).sum()), "confidence": gain_confidence(start, candidate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="an adapt work folder (OUT.adapt-work)")
    parser.add_argument("--model", default="minilm", help="the starting model the run adapted")
    args = parser.parse_args()
    dev = work_dev_set(args.work_dir)
    start = per_query_ndcg10(load_encoder(args.model, device="cpu"), dev, [None])[None]
    best = per_query_ndcg10(load_encoder(args.work_dir / "train" / "best", device="cpu"), dev, [None])[None]
    row = compared(start, best)
    print(json.dumps({"work_dir": str(args.work_dir), "dev_queries": len(start), "start": round(mean(start), 4),
                      "best": row.pop("nDCG@10"), **row}))


if __name__ == "__main__":
    main()
