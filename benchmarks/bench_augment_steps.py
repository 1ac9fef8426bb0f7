"""Speed of three augmentation hot spots, each against the way it was done before, side by side.

Why: profiles of `adapt` on the CPU (RESULTS §13.14) found mining's exact top-k sorting whole
rows, the LLM prefill computing output logits it threw away, and top-p sampling sorting the whole
vocabulary at every step. Each fix is timed here against its predecessor in the same process,
interleaved, medians of `--repeats`:

- top_k: the partial sort (`retrieval.top_k`) vs a full lexsort of every row, 256 queries x
  `--docs` random unit vectors (Vaswani has 11,429), top 50; results must be equal;
- prefill: a forward of the base model vs the full model (with its output head) over 8 NFCorpus
  query-writing prompts, the work `CausalLM.prefill` does;
- nucleus: `ShortlistNucleus` vs transformers' temperature + top-p warpers on 64 rows of
  SmolLM2-sized (49,152) logits; kept sets must be equal.

    python benchmarks/bench_augment_steps.py --data ../shared/data/nfcorpus-preprocessed --out result.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from dramasearch.fsutil import atomic_write_bytes
from trainer.augment.queries import build_prompt
from trainer.augment.retrieval import top_k
from trainer.llm import ShortlistNucleus, load_causal_lm


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per candidate, each repeat running every candidate once in turn."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def full_sort_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ docs.T
    ids = np.broadcast_to(np.arange(docs.shape[0]), scores.shape)
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def bench_top_k(docs_count: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((docs_count, 384)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = rng.standard_normal((256, 384)).astype(np.float32)
    assert (top_k(queries, docs, 50)[1] == full_sort_top_k(queries, docs, 50)[1]).all()
    return interleaved({"full_sort": lambda: full_sort_top_k(queries, docs, 50),
                        "partial_sort": lambda: top_k(queries, docs, 50),
                        "matmul_only": lambda: queries @ docs.T}, repeats)


def bench_prefill(data: Path, repeats: int) -> dict:
    lm = load_causal_lm("smollm2")
    with open(data / "corpus.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line, _ in zip(f, range(8))]
    prompts = [build_prompt(lm, lm.truncate(f"{d.get('title', '')} {d['text']}", 256)) for d in docs]
    batch = lm._batch(prompts)

    def forward(module: torch.nn.Module) -> Callable[[], object]:
        return lambda: module(**batch, use_cache=False)

    with torch.inference_mode():
        return {"rows_tokens": list(batch["input_ids"].shape),
                **interleaved({"with_head": forward(lm.model), "base_model": forward(lm.model.base_model)}, repeats)}


def bench_nucleus(repeats: int) -> dict:
    scores = torch.randn(64, 49152, generator=torch.Generator().manual_seed(0)) * 4
    ids = torch.zeros(64, 1, dtype=torch.long)

    def warpers() -> torch.Tensor:
        return TopPLogitsWarper(0.9)(ids, TemperatureLogitsWarper(0.8)(ids, scores))

    def ours() -> torch.Tensor:
        return ShortlistNucleus(0.8, 0.9)(ids, scores)

    assert torch.equal(torch.isinf(warpers()), torch.isinf(ours()))
    return interleaved({"transformers_warpers": warpers, "shortlist_nucleus": ours}, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a BEIR collection for the prefill prompts")
    parser.add_argument("--docs", type=int, default=11429)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {"threads": torch.get_num_threads(), "top_k": bench_top_k(args.docs, args.repeats),
              "nucleus": bench_nucleus(args.repeats), "prefill": bench_prefill(args.data, max(1, args.repeats // 2))}
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
