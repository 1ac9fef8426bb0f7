"""`train(settings)`: single-stage contrastive training with Matryoshka InfoNCE (the DRAMA recipe).

The model is trained through `Encoder.embed_ids`, the same tokenization, framing, prefix,
pooling and normalization that serving runs. Everything that decides a step (which
examples, which positive and negatives, dropout) is a function of (seed, step, rank), so a
run resumed from a checkpoint repeats the uninterrupted run's losses exactly.

Output folder:

    checkpoint/   the latest resumable state (trainer.checkpoint), replaced atomically
    best/         with a dev set: the best exported encoder so far (step 0 = zero-shot baseline)
    last/         the exported encoder after the final step
    report.json   the TrainReport

Multi-GPU: launch with `torchrun --nproc-per-node N`; each rank takes its slice of every
global batch, embeddings are all-gathered for in-batch negatives (trainer.gradcache), and
gradients are summed across ranks. Only rank 0 evaluates and writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dramasearch.encoder import Encoder, default_dtype
from dramasearch.errors import InputError
from dramasearch.fsutil import atomic_write_bytes
from dramasearch.models import load_encoder

from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .data import Passage, TrainingExample, read_examples
from .devset import DevSet, gain_confidence, mean, per_query_ndcg10
from .export import export_encoder
from .gradcache import TokenizedBatch, contrastive_step
from .losses import MatryoshkaInfoNCE

PRECISIONS = ("auto", "fp32", "bf16")
# Settings that may change between a run and its resumption (they do not change any step's result).
RESUMABLE_CHANGES = {"save_steps", "eval_steps", "show_progress", "device"}


@dataclass
class TrainSettings:
    model: str  # alias, hub id or folder, as dramasearch's load_encoder takes
    train_data: str | Path  # Tevatron jsonl(.gz): query_id, query, positive_passages, negative_passages
    output: str | Path
    negatives_per_query: int = 7
    batch_size: int = 32  # queries per optimizer step, over all ranks
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    learning_rate: float = 1e-5
    warmup_steps: int = 0  # linear warmup from 0, then linear decay to 0 at the last step
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    temperature: float = 0.02
    # judge each query's hard negatives by the teacher scores mining stored with them (a hybrid teacher,
    # augment/teacher.py) through KL, instead of as wrong answers (losses.distilled_info_nce)
    distill: bool = False
    # with distill: this many of each query's negatives_per_query are drawn from its unscored negatives
    # (deep ranks, judged wrong by the hard label), the rest from its teacher-scored ones (judged by KL)
    hard_negatives: int = 0
    matryoshka_dims: tuple[int, ...] = ()  # () = full dimension only
    matryoshka_weights: tuple[float, ...] = ()  # () = 1 for each dim
    chunk_size: int | None = None  # GradCache: sequences per forward; None = whole batch in one pass
    gradient_checkpointing: bool = False
    # dropout on the attention probabilities while training; None = the model's own (MiniLM's 0.1). 0 lets
    # the CPU's fused attention kernel run: half a MiniLM step on a 2-core AVX2 host (bench_train_step.py)
    attention_dropout: float | None = None
    precision: str = "auto"  # auto = bf16 autocast on CUDA and native-bf16 CPUs, else fp32
    max_length: int | None = None  # truncation while training, and of the exported model; None = model's
    seed: int = 0
    save_steps: int = 500
    eval_steps: int = 500
    dev_corpus: str | Path | None = None
    dev_queries: str | Path | None = None
    dev_qrels: str | Path | None = None
    eval_dim: int | None = None  # Matryoshka dim for dev nDCG@10; None = full
    # A checkpoint replaces the baseline only if it beats it on at least this share of paired
    # bootstrap resamples of the dev queries; 0 = any higher mean.
    min_dev_confidence: float = 0.0
    device: str | None = None
    show_progress: bool = True

    def check(self) -> None:
        if self.negatives_per_query < 0:
            raise ValueError(f"negatives_per_query must be >= 0, got {self.negatives_per_query}")
        if self.hard_negatives and not (self.distill and 0 < self.hard_negatives < self.negatives_per_query):
            raise ValueError(f"hard_negatives={self.hard_negatives} needs distill and fewer than negatives_per_query="
                             f"{self.negatives_per_query}: the rest of the negatives are the teacher's")
        if self.batch_size < 1 or self.epochs < 1 or self.save_steps < 1 or self.eval_steps < 1:
            raise ValueError("batch_size, epochs, save_steps and eval_steps must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if not 0.0 <= self.min_dev_confidence < 1.0:
            raise ValueError(f"min_dev_confidence must be in [0, 1), got {self.min_dev_confidence}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        dev = (self.dev_corpus, self.dev_queries, self.dev_qrels)
        if any(dev) and not all(dev):
            raise ValueError("a dev set needs all three of dev_corpus, dev_queries and dev_qrels")

    @property
    def has_dev(self) -> bool:
        return self.dev_corpus is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON values (paths as strings, tuples as lists), as checkpoints store them."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


@dataclass
class TrainReport:
    steps: int
    examples: int  # training examples read
    losses: list[float]  # one per step, from step 1
    # (step, dev nDCG@10, confidence of beating the baseline); step 0 = the baseline, confidence None
    evaluations: list[tuple[int, float, float | None]] = field(default_factory=list)
    baseline: float | None = None
    baseline_per_query: list[float] = field(default_factory=list)  # dev queries' nDCG@10 at step 0
    min_dev_confidence: float = 0.0
    best_step: int | None = None
    best_score: float | None = None
    baseline_kept: bool = False  # no evaluation after training beat the zero-shot model: best/ is the baseline
    model_dir: str = ""  # the encoder to use: best/ with a dev set, else last/
    resumed_from: int | None = None
    repeated_negatives: int = 0  # examples with fewer negatives than asked, sampled with repetition
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"trained {self.steps} steps on {self.examples} examples in {self.seconds:.0f}s; "
                 f"final loss {self.losses[-1]:.4f}" if self.losses else f"no steps run ({self.examples} examples)"]
        if self.baseline is not None:
            lines.append(f"dev nDCG@10: baseline {self.baseline:.4f}, best {self.best_score:.4f} at step {self.best_step}")
        if self.baseline_kept:
            lines.append("training did not beat the zero-shot baseline on the dev set: the exported model is the baseline")
        if self.selection_note:
            lines.append(self.selection_note)
        lines.append(f"model: {self.model_dir}")
        return "\n".join(lines)

    @property
    def selection_note(self) -> str:
        """Why a checkpoint with a higher dev mean than the chosen one was passed over, if one was."""
        passed_over = [e for e in self.evaluations
                       if self.best_score is not None and e[1] > self.best_score and e[2] is not None]
        if not passed_over:
            return ""
        step, score, confidence = max(passed_over, key=lambda e: e[1])
        return (f"step {step} scored higher ({score:.4f}) but beat the baseline on only {confidence:.0%} of bootstrap "
                f"resamples of the dev queries ({self.min_dev_confidence:.0%} needed), so it was not kept")


def train(settings: TrainSettings) -> TrainReport:
    """Train, checkpoint, evaluate and export as `settings` say; resumes from output/checkpoint if present."""
    settings.check()
    started = time.perf_counter()
    rank, world = _init_distributed()
    device = settings.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if settings.batch_size % world:
        raise ValueError(f"batch_size={settings.batch_size} must be divisible by the number of ranks ({world})")
    output = Path(settings.output)

    encoder = load_encoder(settings.model, device=device, dtype=torch.float32, max_length=settings.max_length)
    loss_fn = MatryoshkaInfoNCE(settings.temperature, tuple(settings.matryoshka_dims), tuple(settings.matryoshka_weights),
                                normalize=encoder.spec.normalize)
    loss_fn.check_dim(encoder.dim)
    examples = list(read_examples(settings.train_data))
    repeated = _check_examples(examples, settings)
    steps_per_epoch = len(examples) // settings.batch_size
    total_steps = settings.max_steps or settings.epochs * steps_per_epoch

    model = encoder.model
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if settings.attention_dropout is not None:
        set_attention_dropout(model, settings.attention_dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(settings.warmup_steps, total_steps))
    autocast = _autocast(settings.precision, device)

    report = TrainReport(steps=0, examples=len(examples), losses=[], repeated_negatives=repeated,
                         min_dev_confidence=settings.min_dev_confidence)
    if has_checkpoint(output / "checkpoint"):
        state = load_checkpoint(output / "checkpoint", model, optimizer, scheduler, device)
        _check_same_run(state["settings"], settings, output / "checkpoint")
        report.steps, report.resumed_from = state["step"], state["step"]
        report.losses = state["losses"]
        report.evaluations = [tuple(e) for e in state["evaluations"]]
        report.baseline_per_query = state["baseline_per_query"]
        if report.evaluations:
            _recount_best(report)
    dev = DevSet.load(settings.dev_corpus, settings.dev_queries, settings.dev_qrels) if settings.has_dev and rank == 0 else None
    if dev is not None and report.steps == 0:
        _evaluate(encoder, dev, settings, report, output, autocast)

    model.train()
    bar = tqdm(total=total_steps, initial=report.steps, unit="step", disable=not settings.show_progress or rank != 0)
    window_start, window_examples = time.perf_counter(), 0
    for step in range(report.steps, total_steps):
        torch.manual_seed(_step_seed(settings.seed, step, rank))
        batch = _batch(encoder, examples, step, steps_per_epoch, settings, rank, world)
        optimizer.zero_grad(set_to_none=True)
        loss = contrastive_step(encoder, batch, loss_fn, settings.chunk_size, autocast)
        if not math.isfinite(loss):
            raise FloatingPointError(f"step {step + 1}: the loss is {loss}; lower the learning rate or raise the "
                                     f"temperature, then resume from {output / 'checkpoint'}")
        _sum_gradients(model, world)
        if settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        report.steps = step + 1
        report.losses.append(loss)
        window_examples += settings.batch_size
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{window_examples / max(time.perf_counter() - window_start, 1e-9):.1f}")
        last = report.steps == total_steps
        if dev is not None and (report.steps % settings.eval_steps == 0 or last):
            _evaluate(encoder, dev, settings, report, output, autocast)
        if report.steps % settings.save_steps == 0 or last:
            if rank == 0:
                save_checkpoint(output / "checkpoint", model, optimizer, scheduler, _state(report, settings, steps_per_epoch))
            _barrier(world)
    bar.close()

    if rank == 0:
        export_encoder(encoder, output / "last", extra=_training_facts(settings, report.steps))
        report.model_dir = str(output / ("best" if settings.has_dev else "last"))
        report.seconds = time.perf_counter() - started
        atomic_write_bytes(output / "report.json", json.dumps(dataclasses.asdict(report), indent=1).encode())
    _barrier(world)
    return report


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute layer activations in backward (transformers renamed this from gradient_checkpointing_enable)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on attention probabilities (not on hidden states) to `p`; return how many
    attention layers changed. Knows the two places transformers keeps it: an `attention_dropout`
    float (Llama and most decoder models) and the `dropout` module of a `*SelfAttention` (BERT family)."""
    changed = 0
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
            changed += 1
        elif type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            module.dropout.p = p
            changed += 1
    if not changed:
        raise ValueError(f"attention_dropout: found no attention dropout to set in {type(model).__name__}; "
                         "leave attention_dropout unset for this model")
    return changed


def _check_examples(examples: list[TrainingExample], settings: TrainSettings) -> int:
    """Fail early on data that cannot make a batch; count examples whose negatives will repeat."""
    if len(examples) < settings.batch_size:
        raise InputError(settings.train_data, None, None,
                         f"{len(examples)} training examples, fewer than batch_size={settings.batch_size}")
    repeated = 0
    for example in examples:
        if settings.negatives_per_query and not example.negatives:
            raise InputError(settings.train_data, None, "negative_passages",
                             f"query {example.query_id!r} has no negatives; mine negatives or set negatives_per_query=0")
        scored, unscored = _split_negatives(example) if settings.distill else (example.negatives, [])
        repeated += (len(scored) < settings.negatives_per_query - settings.hard_negatives
                     or len(unscored) < settings.hard_negatives)
        if not settings.distill:
            continue
        where = ("positive_passages" if any(p.score is None for p in example.positives)
                 else "negative_passages" if unscored and not settings.hard_negatives else None)
        if where:
            raise InputError(settings.train_data, None, f"{where}[].score",
                             f"query {example.query_id!r} has a passage without a teacher score; distillation "
                             "needs data mined with a hybrid teacher (adapt --hybrid-teacher), or distill=False")
        if settings.hard_negatives and not (scored and unscored):
            raise InputError(settings.train_data, None, "negative_passages[].score",
                             f"query {example.query_id!r} has {len(scored)} teacher-scored and {len(unscored)} "
                             f"unscored negatives; hard_negatives={settings.hard_negatives} needs some of each "
                             "(adapt --hybrid-teacher --teacher-hard-negatives N mines both)")
    return repeated


def _split_negatives(example: TrainingExample) -> tuple[list[Passage], list[Passage]]:
    """(teacher-scored, unscored) negatives, each in its mined order."""
    return ([p for p in example.negatives if p.score is not None], [p for p in example.negatives if p.score is None])


def _batch(encoder: Encoder, examples, step: int, steps_per_epoch: int, settings: TrainSettings, rank: int, world: int):
    """This rank's share of global batch `step`: a seeded per-epoch shuffle, drop-last, then the rank's slice.

    Each example's positive and negatives are drawn from a generator seeded by (seed, epoch,
    example index), so they depend on nothing but the step.
    """
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([settings.seed, epoch]).permutation(len(examples))
    per_rank = settings.batch_size // world
    start = position * settings.batch_size + rank * per_rank
    queries, passages = [], []
    teacher = []
    for index in order[start : start + per_rank]:
        example = examples[index]
        rng = np.random.default_rng([settings.seed, epoch, int(index)])
        pools = _split_negatives(example) if settings.hard_negatives else (example.negatives, [])
        # teacher-scored draws first: the loss scores a group's first passages by the teacher
        drawn = []
        for negatives, n in zip(pools, (settings.negatives_per_query - settings.hard_negatives, settings.hard_negatives)):
            picks = rng.choice(len(negatives), n, replace=len(negatives) < n) if n else []
            drawn.extend(negatives[int(i)] for i in picks)
        queries.append(example.query)
        group = [example.positives[int(rng.integers(len(example.positives)))], *drawn]
        passages.extend(group)
        if settings.distill:
            teacher.append([p.score for p in group[: len(group) - settings.hard_negatives]])
    teacher = torch.tensor(teacher, dtype=torch.float32) if settings.distill else None
    return TokenizedBatch(encoder.tokenize(queries, encoder.spec.query_prefix),
                          encoder.tokenize([p.content() for p in passages], encoder.spec.document_prefix), teacher)


def _evaluate(encoder: Encoder, dev: DevSet, settings: TrainSettings, report: TrainReport, output: Path, autocast) -> None:
    """Score the current model; export it to best/ when it beats every earlier eligible score
    (baseline included) and beats the baseline with the confidence the settings ask for."""
    with autocast():
        per_query = per_query_ndcg10(encoder, dev, [settings.eval_dim])[settings.eval_dim]
    score, confidence = mean(per_query), None
    if report.steps == 0:
        report.baseline_per_query = per_query.tolist()
    elif report.baseline_per_query:
        confidence = gain_confidence(report.baseline_per_query, per_query, seed=settings.seed)
    report.evaluations.append((report.steps, score, confidence))
    better = report.best_score is None or score > report.best_score
    if better and _eligible(report.evaluations[-1], settings.min_dev_confidence):
        export_encoder(encoder, output / "best", extra={**_training_facts(settings, report.steps), "dev_ndcg@10": score})
    _recount_best(report)
    note = "" if confidence is None else f" (beats the baseline on {confidence:.0%} of bootstrap resamples)"
    tqdm.write(f"step {report.steps}: dev nDCG@10 {score:.4f}" + (" (baseline)" if report.steps == 0 else note))


def _eligible(evaluation: tuple[int, float, float | None], min_confidence: float) -> bool:
    return evaluation[2] is None or evaluation[2] >= min_confidence


def _recount_best(report: TrainReport) -> None:
    report.baseline = report.evaluations[0][1] if report.evaluations and report.evaluations[0][0] == 0 else None
    eligible = [e for e in report.evaluations if _eligible(e, report.min_dev_confidence)]
    report.best_step, report.best_score, _ = max(eligible, key=lambda e: (e[1], -e[0]))
    report.baseline_kept = report.baseline is not None and report.best_step == 0 and len(report.evaluations) > 1


def _state(report: TrainReport, settings: TrainSettings, steps_per_epoch: int) -> dict[str, Any]:
    epoch, position = divmod(report.steps, steps_per_epoch)
    return {"step": report.steps, "data_position": {"epoch": epoch, "batch": position},
            "losses": report.losses, "evaluations": report.evaluations, "baseline_per_query": report.baseline_per_query,
            "settings": settings.to_dict()}


def _check_same_run(saved: dict[str, Any], settings: TrainSettings, where: Path) -> None:
    current = settings.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(f"{where} was written with other settings ({diffs}); use the same settings "
                         "to resume, or another output folder to start a new run")


def _training_facts(settings: TrainSettings, step: int) -> dict[str, Any]:
    return {"training": {"step": step, "matryoshka_dims": list(settings.matryoshka_dims),
                         "temperature": settings.temperature, "train_data": str(settings.train_data)}}


def _linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _autocast(precision: str, device: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast (fp32 master weights) where bf16 is fast: CUDA, and CPUs with native bf16."""
    bf16 = precision == "bf16" or (precision == "auto" and default_dtype(device) == torch.bfloat16)
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun; (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        # Other ranks wait in the next all-gather while rank 0 evaluates the dev set: allow for it.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size()


def _sum_gradients(model: torch.nn.Module, world: int) -> None:
    """Each rank holds its share of the global loss's gradient; the sum is the whole of it."""
    if world == 1:
        return
    pending = [dist.all_reduce(p.grad, async_op=True) for p in model.parameters() if p.grad is not None]
    for work in pending:
        work.wait()


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
