"""Trainer commands for the `dramasearch` CLI: thin layers over `train()` and `export_encoder()`.

`COMMANDS` lists them; the `dramasearch` group registers them (entry point), so this module
must stay cheap to import: torch and the trainer load inside each command.
"""
from __future__ import annotations

import click

DIMS_HELP = "Comma-separated Matryoshka dims for the loss, e.g. 256,512,768 (default: the full dim only)."


def _ints(value: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",")) if value else ()
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 256,768, got {value!r}")


def _floats(value: str | None) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",")) if value else ()
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 1,0.5, got {value!r}")


ATTENTION_DROPOUT = click.option(
    "--attention-dropout", type=float, default=None,
    help="Dropout on attention probabilities while training (default: the model's own). 0 lets the CPU's fused "
         "attention kernel run: about half the step time for MiniLM on a CPU without bf16.")


@click.command("train")
@click.argument("train_data", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoint/ (resumed when present), best/, last/, report.json.")
@click.option("--model", default="facebook/drama-base", show_default=True,
              help="Model to start from: hub id, alias (drama-base, minilm) or local folder.")
@click.option("--negatives", "negatives_per_query", type=int, default=7, show_default=True, help="Hard negatives per query.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Queries per step, over all GPUs.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps (overrides --epochs).")
@click.option("--lr", "learning_rate", type=float, default=1e-5, show_default=True)
@click.option("--warmup-steps", type=int, default=0, show_default=True, help="Linear warmup, then linear decay to 0.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Gradient clipping; 0 turns it off.")
@click.option("--temperature", type=float, default=0.02, show_default=True, help="InfoNCE temperature (scale = 1/T).")
@click.option("--distill", is_flag=True,
              help="Judge hard negatives by the teacher scores stored with them (\"score\" per passage, as "
                   "`adapt --hybrid-teacher` mines them) through KL, instead of as wrong answers.")
@click.option("--hard-negatives", type=int, default=0, show_default=True,
              help="With --distill: of each query's --negatives, this many are drawn from its unscored negatives "
                   "(judged wrong), the rest from its teacher-scored ones.")
@ATTENTION_DROPOUT
@click.option("--matryoshka-dims", default=None, help=DIMS_HELP)
@click.option("--matryoshka-weights", default=None, help="One weight per Matryoshka dim (default: all 1).")
@click.option("--chunk-size", type=int, default=None,
              help="GradCache: sequences per forward pass, so big batches fit in memory (same gradients).")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward: less memory, slower.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto = bf16 autocast on CUDA and native-bf16 CPUs, else fp32.")
@click.option("--max-length", type=int, default=None, help="Max tokens per text while training and in the exported model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--save-steps", type=int, default=500, show_default=True, help="Checkpoint every N steps.")
@click.option("--eval-steps", type=int, default=500, show_default=True, help="Dev evaluation every N steps.")
@click.option("--dev-corpus", type=click.Path(exists=True), default=None, help="Dev corpus (any build-index format).")
@click.option("--dev-queries", type=click.Path(exists=True), default=None)
@click.option("--dev-qrels", type=click.Path(exists=True), default=None)
@click.option("--eval-dim", type=int, default=None, help="Matryoshka dim for dev nDCG@10 (default: full).")
@click.option("--min-dev-confidence", type=float, default=0.0, show_default=True,
              help="A checkpoint replaces the starting model only if it beats it on this share of paired bootstrap resamples of the dev queries; 0: any higher dev nDCG@10.")
@click.option("--device", default=None, help="Default: cuda (the rank's GPU under torchrun) when available, else cpu.")
def train_cmd(train_data, output, matryoshka_dims, matryoshka_weights, max_grad_norm, **options) -> None:
    """Contrastive training on TRAIN_DATA (Tevatron jsonl); launch with torchrun for several GPUs."""
    from .train import TrainSettings, train

    settings = TrainSettings(
        train_data=train_data, output=output, matryoshka_dims=_ints(matryoshka_dims),
        matryoshka_weights=_floats(matryoshka_weights), max_grad_norm=max_grad_norm or None, **options,
    )
    report = train(settings)
    if report.model_dir:  # rank 0
        click.echo(report.summary())


@click.command("export-encoder")
@click.argument("model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--max-length", type=int, default=None, help="Max tokens recorded in the export (default: the model's).")
def export_cmd(model, out_dir, max_length) -> None:
    """Write MODEL (hub id, alias or folder) as a plain self-describing encoder folder OUT_DIR."""
    import torch

    from dramasearch.models import load_encoder

    from .export import export_encoder

    encoder = load_encoder(model, device="cpu", dtype=torch.float32, max_length=max_length)
    click.echo(f"wrote {export_encoder(encoder, out_dir)}")


@click.command("adapt")
@click.argument("corpus", type=click.Path(exists=True))
@click.option("--model", required=True, help="Encoder to start from: alias (minilm, drama-base), hub id or folder.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the adapted encoder (replaced by the export; a foreign folder is refused).")
@click.option("--index", "index", type=click.Path(exists=True, file_okay=False), default=None,
              help="A dramasearch index to refresh with the adapted model at the end.")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="Step outputs (mining index, augmented data, checkpoints); default OUTPUT.adapt-work. "
                   "Rerun the same command to resume: finished steps are reused.")
@click.option("--llm-queries", type=int, default=None,
              help="Passages to write LLM queries for (SmolLM2-135M by default). Default 0 on CPU, where it takes "
                   "~9 s per passage; 2000 on a GPU.")
@click.option("--crops-per-passage", type=int, default=None,
              help="Cropped-sentence queries per passage (default: 1, more for a small corpus; 0: none; "
                   "then give --llm-queries or --title-queries).")
@click.option("--title-queries/--no-title-queries", default=False, show_default=True,
              help="Also use each document's title as a query for its body (nothing for documents without one).")
@click.option("--hard-queries-first/--random-queries", "hard_queries_first", default=False, show_default=True,
              help="When there are more augmented queries than the cap, keep first those whose document the starting "
                   "model ranks 2nd-20th (a query it already answers at rank 1 teaches little), not a random share.")
@click.option("--hybrid-teacher/--no-hybrid-teacher", "hybrid_teacher", default=None,
              help="Mine with the starting model blended with BM25 as a teacher: negatives from its top 10, and "
                   "training distils its scores of them (KL) instead of the margin filter (default: on for CPU, "
                   "off on GPU).")
@click.option("--teacher-hard-negatives", type=int, default=None,
              help="With the hybrid teacher: of each query's --negatives, this many come from the teacher's ranks "
                   "30-50 (margin-filtered, judged wrong as without a teacher), the rest from its top 10 (distilled; "
                   "default 1 on CPU, 0 on GPU).")
@click.option("--llm", default="smollm2", show_default=True, help="Causal LM for --llm-queries: smollm2, a .gguf, a folder or hub id.")
@click.option("--max-train-examples", type=int, default=None, help="Cap on training pairs (default 1200 on CPU, 20000 on GPU).")
@click.option("--max-steps", type=int, default=None, help="Training steps (default: one pass over the training pairs).")
@click.option("--batch-size", type=int, default=None, help="Queries per step (default 32 on CPU, 64 on GPU).")
@click.option("--negatives", "negatives_per_query", type=int, default=None, help="Hard negatives per query (default 3 on CPU, 7 on GPU).")
@click.option("--lr", "learning_rate", type=float, default=2e-5, show_default=True)
@click.option("--temperature", type=float, default=0.05, show_default=True, help="InfoNCE temperature.")
@ATTENTION_DROPOUT
@click.option("--matryoshka-dims", default=None, help=DIMS_HELP)
@click.option("--max-length", type=int, default=None, help="Max tokens per text in training and in the export (default: the model's).")
@click.option("--dev-queries", type=int, default=200, show_default=True, help="Held-out augmented queries for model selection.")
@click.option("--min-dev-confidence", type=float, default=0.95, show_default=True,
              help="A checkpoint replaces the starting model only if it beats it on this share of paired bootstrap resamples of the dev queries; 0: any higher dev nDCG@10.")
@click.option("--fine-tuned-weight", type=float, default=0.5, show_default=True,
              help="Export (1 - W) x the starting model + W x the checkpoint (WiSE-FT weight averaging); "
                   "1: the checkpoint itself.")
@click.option("--export-from", type=click.Choice(["best", "last"]), default="last", show_default=True,
              help="The checkpoint to export: the last step, or the dev set's choice. Anything but the chosen "
                   "checkpoint itself must pass --min-dev-confidence on the dev set, else the starting model is kept.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="Default: cuda when available, else cpu.")
def adapt_cmd(corpus, matryoshka_dims, **options) -> None:
    """Adapt an encoder to CORPUS without labels (augment, mine, train, export), then refresh --index.

    Defaults fit a ~5k-document corpus in about an hour on a 2-core CPU with MiniLM. The
    collection's queries and qrels are never used: the dev set is carved from the augmented data,
    and when training does not beat the starting model there, the starting model is kept.
    """
    from .adapt import AdaptSettings, adapt

    report = adapt(AdaptSettings(corpus=corpus, matryoshka_dims=_ints(matryoshka_dims), **options))
    click.echo(report.summary())


COMMANDS = [train_cmd, export_cmd, adapt_cmd]
