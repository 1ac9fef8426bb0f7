"""One training step of adapt's CPU shape with the model's attention dropout vs none, side by side.

Why: a profile of an fp32 MiniLM step on a 2-core AVX2 host (RESULTS §13.13) put 19% of it in
dropout masks. With dropout on the attention probabilities, PyTorch's CPU attention cannot use its
fused kernel and materializes every (query, key) score; `--attention-dropout 0` (TrainSettings)
turns only that dropout off. This times `contrastive_step` (forward + backward, the trainer's own
code) on adapt's CPU batch: 32 cropped queries (first sentences) and 128 passages (one positive and
3 negatives each) from a real corpus, interleaved, medians of `--repeats`.

    python benchmarks/bench_train_step.py --data ../shared/data/scifact --out result.json
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
from pathlib import Path

import torch

from dramasearch.corpus import iter_documents
from dramasearch.fsutil import atomic_write_bytes
from dramasearch.models import load_encoder
from trainer.gradcache import TokenizedBatch, contrastive_step
from trainer.losses import MatryoshkaInfoNCE
from trainer.train import set_attention_dropout

from bench_augment_steps import interleaved


def _lengths(ids: list[list[int]]) -> list[float]:
    return [round(sum(map(len, ids)) / len(ids), 1), max(map(len, ids))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a BEIR folder; its first 160 documents make the batch")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--passages-per-query", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    passages_count = args.queries * args.passages_per_query
    docs = [d.content() for d, _ in zip(iter_documents(Path(args.data)), range(args.queries + passages_count))]
    queries = [text.split(". ")[0] for text in docs[:args.queries]]
    passages = docs[args.queries:]
    loss = MatryoshkaInfoNCE(0.05, (), (), normalize=True)
    steps, lengths = {}, None
    for name, p in (("model_dropout", None), ("attention_dropout_0", 0.0)):
        encoder = load_encoder(args.model, device="cpu", dtype=torch.float32)
        if p is not None:
            set_attention_dropout(encoder.model, p)
        encoder.model.train()
        batch = TokenizedBatch(encoder.tokenize(queries, encoder.spec.query_prefix),
                               encoder.tokenize(passages, encoder.spec.document_prefix))

        def step(encoder=encoder, batch=batch) -> float:
            encoder.model.zero_grad(set_to_none=True)
            return contrastive_step(encoder, batch, loss)

        step()  # warm-up, outside the timings
        steps[name], lengths = step, _lengths(batch.passages)
    seconds = interleaved(steps, args.repeats)
    result = {
        "data": args.data, "model": args.model, "queries": args.queries, "passages": passages_count,
        "passage_tokens_mean_max": lengths,
        "seconds_per_step": seconds, "speedup": round(seconds["model_dropout"] / seconds["attention_dropout_0"], 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
    }
    atomic_write_bytes(Path(args.out), json.dumps(result, indent=1).encode())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
