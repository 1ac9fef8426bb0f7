"""`prune effir` and `prune sheared`: click commands for the `dramasearch` CLI (wired in via COMMANDS)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import click

CALIBRATION_OPTION = click.option(
    "--calibration", required=True, type=click.Path(exists=True),
    help="Calibration text: any corpus dramasearch reads (BEIR folder, .jsonl, .tsv, .parquet, .txt folder).",
)


def calibration_texts(path: str, count: int) -> list[str]:
    """The first `count` non-blank documents of a corpus, as title + text."""
    from dramasearch.corpus import iter_documents

    texts = (doc.content() for doc in iter_documents(path))
    chosen = list(itertools.islice((t for t in texts if t.strip()), count))
    if not chosen:
        raise click.BadParameter(f"{path} has no non-blank document", param_hint="--calibration")
    return chosen


@click.group("prune")
def prune() -> None:
    """Shrink a Llama: EffiR (redundant sub-layers and neurons, no training) or Sheared-LLaMA masks."""


@prune.command("effir")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder for the pruned encoder.")
@CALIBRATION_OPTION
@click.option("--num-texts", default=50, show_default=True, help="Calibration documents to read.")
@click.option("--max-length", default=128, show_default=True, help="Tokens per calibration document.")
@click.option("--drop-mlp", default=0, show_default=True, help="Remove this many of the most redundant MLP sub-layers.")
@click.option("--drop-attention", default=0, show_default=True, help="Remove this many of the most redundant attention sub-layers.")
@click.option("--mlp-keep", default=1.0, show_default=True, help="Fraction of each kept MLP's neurons to keep (by importance).")
def effir(model, output, calibration, num_texts, max_length, drop_mlp, drop_attention, mlp_keep) -> None:
    """Prune the DRAMA/Llama encoder in MODEL by EffiR redundancy scores; prints a JSON report."""
    from .effir import effir_prune

    report = effir_prune(Path(model), Path(output), calibration_texts(calibration, num_texts), drop_mlp=drop_mlp,
                         drop_attention=drop_attention, mlp_keep=mlp_keep, max_length=max_length)
    click.echo(json.dumps(report.to_dict(), indent=2))


@prune.command("sheared")
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder for the pruned causal LM.")
@CALIBRATION_OPTION
@click.option("--num-texts", default=1000, show_default=True, help="Training documents to read.")
@click.option("--target-layers", type=int, help="Number of layers to keep.")
@click.option("--target-heads", type=int, help="Query heads per layer (a multiple of the GQA group size).")
@click.option("--target-intermediate", type=int, help="MLP neurons per layer.")
@click.option("--target-hidden", type=int, help="Hidden size.")
@click.option("--steps", default=200, show_default=True)
@click.option("--warmup-steps", default=50, show_default=True, help="Steps over which the target ramps down from the full size.")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--max-length", default=128, show_default=True)
@click.option("--model-lr", default=1e-5, show_default=True, help="Learning rate of the weights (0 = masks only).")
@click.option("--mask-lr", default=0.1, show_default=True)
@click.option("--lagrangian-lr", default=0.1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--continue-steps", default=0, type=click.IntRange(min=0), show_default=True, help="Continued pre-training steps of the pruned model.")
@click.option("--continue-lr", default=1e-4, show_default=True)
@click.option("--eval-texts", default=0, type=click.IntRange(min=0), show_default=True,
              help="Documents after the training ones, held out to report the LM loss before, after pruning and after continuing.")
@click.option("--checkpoint-every", default=50, type=click.IntRange(min=0), show_default=True,
              help="Steps between checkpoints in OUTPUT.sheared-work (0: none).")
def sheared(model, output, calibration, num_texts, target_layers, target_heads, target_intermediate, target_hidden,
            steps, warmup_steps, batch_size, max_length, model_lr, mask_lr, lagrangian_lr, seed, continue_steps,
            continue_lr, eval_texts, checkpoint_every) -> None:
    """Learn hard-concrete masks on MODEL (a Llama causal LM) toward the target shape, then cut; prints a JSON report.

    Checkpoints every --checkpoint-every steps: rerun the same command after a crash to resume.
    """
    from .sheared import ShearedSettings, sheared_prune

    targets = {k: v for k, v in {"layers": target_layers, "heads": target_heads,
                                 "intermediate": target_intermediate, "hidden": target_hidden}.items() if v is not None}
    if not targets:
        raise click.UsageError("give at least one of --target-layers/--target-heads/--target-intermediate/--target-hidden")
    settings = ShearedSettings(targets=targets, steps=steps, warmup_steps=warmup_steps, batch_size=batch_size,
                               max_length=max_length, model_lr=model_lr, mask_lr=mask_lr,
                               lagrangian_lr=lagrangian_lr, seed=seed, continue_steps=continue_steps,
                               continue_lr=continue_lr, checkpoint_every=checkpoint_every)
    texts = calibration_texts(calibration, num_texts + eval_texts)
    if eval_texts and len(texts) <= eval_texts:
        raise click.BadParameter(f"{calibration} has {len(texts)} documents: too few to hold {eval_texts} out",
                                 param_hint="--eval-texts")
    cut = len(texts) - eval_texts
    report = sheared_prune(Path(model), Path(output), texts[:cut], settings, eval_texts=texts[cut:])
    click.echo(json.dumps(report.to_dict(), indent=2))


COMMANDS = [prune]
