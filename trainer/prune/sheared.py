"""Sheared-LLaMA targeted structured pruning: learn hard-concrete masks under a language-modelling loss.

The model and the gates minimize next-token loss plus the Lagrangian penalty while the
Lagrange multipliers maximize it (gradient ascent), so the expected shape is pulled to a
target that ramps from the full size over the warm-up. At the end the gates keep exactly
the target shape and are folded into a smaller plain checkpoint (shapes.prune_llama).
Continued pre-training (`continue_steps`) then trains the smaller model on the same objective,
as Sheared-LLaMA does after pruning; held-out text measures the LM loss before pruning, right
after it, and after continued pre-training.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from dramasearch.hf_loading import load_pretrained
from dramasearch.models import load_encoder

from .effir import tokens_per_second
from .hardconcrete import Lagrangian, LlamaMasks, check_target, masked, masks_to_plan, ramped_target
from .shapes import ShapedLlamaForCausalLM, non_embedding_parameters, prune_llama, save_pruned
from .sheared_checkpoint import ShearedCheckpoint



@dataclass
class ShearedSettings:
    targets: dict[str, int]  # any of layers / heads (per layer) / intermediate (per layer) / hidden
    steps: int = 200
    warmup_steps: int = 50  # the target moves from the full size to `targets` over these steps
    batch_size: int = 4
    max_length: int = 128
    model_lr: float = 1e-5  # 0 freezes the weights and learns only the masks
    mask_lr: float = 0.1
    lagrangian_lr: float = 0.1
    seed: int = 0
    continue_steps: int = 0  # continued pre-training of the pruned model, same batches
    continue_lr: float = 1e-4
    checkpoint_every: int = 50  # steps between checkpoints of either stage (0: none)


@dataclass
class ShearedReport:
    layer_shapes: list[dict]
    hidden_size: int
    history: list[dict] = field(default_factory=list)  # per logged step: lm loss, expected sizes
    continue_history: list[dict] = field(default_factory=list)  # per logged step of continued pre-training
    lm_loss: dict[str, float] = field(default_factory=dict)  # held-out loss: full, pruned, continued
    parameters_before: int = 0  # non-embedding
    parameters_after: int = 0
    tokens_per_s_before: float = 0.0  # encoding as a bidirectional encoder, CPU fp32, on up to 32 training texts
    tokens_per_s_after: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def token_windows(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """BOS + text token ids of each text, cut into windows of `max_length` (windows of one token dropped)."""
    windows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = [tokenizer.bos_token_id, *ids] if tokenizer.bos_token_id is not None else ids
        windows += [ids[i : i + max_length] for i in range(0, len(ids), max_length) if len(ids[i : i + max_length]) > 1]
    if not windows:
        raise ValueError("the texts give no token window of 2 or more tokens")
    return windows


def _padded(windows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(map(len, windows))
    ids = torch.full((len(windows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), longest), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def lm_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int,
               generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random batches of BOS + text token windows (ids, attention mask), padded on the right."""
    windows = token_windows(tokenizer, texts, max_length)
    while True:
        chosen = torch.randint(len(windows), (batch_size,), generator=generator).tolist()
        yield _padded([windows[i] for i in chosen], _pad_id(tokenizer))


@torch.no_grad()
def held_out_loss(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every window of `texts`, weighted by predicted tokens."""
    was_training = model.training
    model.eval()
    windows = token_windows(tokenizer, texts, max_length)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids, mask = _padded(windows[start : start + batch_size], _pad_id(tokenizer))
        predicted = int(mask[:, 1:].sum())
        total += float(model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss) * predicted
        count += predicted
    model.train(was_training)
    return total / count


def continue_pretraining(model, batches, steps: int, lr: float, log_every: int = 10,
                         checkpoint: ShearedCheckpoint | None = None, resume: dict | None = None) -> list[dict]:
    """Next-token training of the pruned model (AdamW, constant lr); returns the logged losses.

    With `checkpoint`, the state is saved every `checkpoint_every` steps; `resume` (a saved
    "continue" state) restores the model, optimizer and random state and restarts at its step.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start, history = (resume["step"], resume["continue_history"]) if resume else (0, [])
    if resume and checkpoint:
        checkpoint.restore({"model": model}, [optimizer])
    model.train()
    bar = tqdm(range(start, steps), desc="continued pre-training", unit="step", disable=not steps,
               initial=start, total=steps)
    for step in bar:
        ids, mask = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"continued pre-training step {step}: the loss is {float(loss.detach())}; lower continue_lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "lm_loss": round(float(loss.detach()), 4)})
            bar.set_postfix(lm_loss=history[-1]["lm_loss"])
        if checkpoint and _due(checkpoint, step, steps):
            checkpoint.save("continue", step + 1, {"model": model}, [optimizer], {"continue_history": history}, pruned=model)
    model.eval()
    return history


def learn_masks(model: ShapedLlamaForCausalLM, batches, settings: ShearedSettings, log_every: int = 10,
                checkpoint: ShearedCheckpoint | None = None, resume: dict | None = None):
    """Run the pruning loop; returns the masks and a history of (step, loss, expected sizes).

    With `checkpoint`, the state is saved every `settings.checkpoint_every` steps; `resume` (a
    saved "masks" state) restores it and restarts at its step.
    """
    masks = LlamaMasks(model, kinds=tuple(settings.targets))
    for kind, target in settings.targets.items():
        check_target(masks.full, kind, target)
    lagrangian = Lagrangian(list(settings.targets))
    optimizers = [
        torch.optim.AdamW(masks.parameters(), lr=settings.mask_lr, weight_decay=0.0),
        torch.optim.SGD(lagrangian.parameters(), lr=settings.lagrangian_lr, maximize=True),
    ]
    if settings.model_lr > 0:
        optimizers.append(torch.optim.AdamW(model.parameters(), lr=settings.model_lr))
    else:
        model.requires_grad_(False)
    modules = {"model": model, "masks": masks, "lagrangian": lagrangian}
    start, history = (resume["step"], resume["history"]) if resume else (0, [])
    if resume and checkpoint:
        checkpoint.restore(modules, optimizers)
    model.train()
    masks.train()
    bar = tqdm(range(start, settings.steps), desc="learning masks", unit="step", initial=start, total=settings.steps)
    for step in bar:
        ids, mask = next(batches)
        labels = ids.masked_fill(mask == 0, -100)
        with masked(model, masks.values()):
            lm_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        targets = {k: ramped_target(masks.full.size(k), t, step, settings.warmup_steps) for k, t in settings.targets.items()}
        loss = lm_loss + lagrangian(masks, targets)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        if step % log_every == 0 or step == settings.steps - 1:
            expected = {k: round(float(masks.expected_size(k).detach()), 2) for k in settings.targets}
            history.append({"step": step, "lm_loss": round(float(lm_loss.detach()), 4), "expected": expected})
            bar.set_postfix(lm_loss=history[-1]["lm_loss"], **{k: f"{v:g}" for k, v in expected.items()})
        if checkpoint and _due(checkpoint, step, settings.steps):
            checkpoint.save("masks", step + 1, modules, optimizers, {"history": history})
    model.eval()
    masks.eval()
    return masks, history


def _due(checkpoint: ShearedCheckpoint, step: int, steps: int) -> bool:
    every = checkpoint.settings.checkpoint_every
    return every > 0 and (step + 1) % every == 0 and step + 1 < steps


def sheared_prune(model_dir: Path, out_dir: Path, texts: Sequence[str], settings: ShearedSettings,
                  eval_texts: Sequence[str] = (), work_dir: Path | None = None) -> ShearedReport:
    """Prune the causal LM in `model_dir` to `settings.targets` on `texts`, continue pre-training, save to `out_dir`.

    With `eval_texts` (held out from `texts`), the report has the LM loss of the full model,
    of the pruned one, and after continued pre-training. Checkpoints go to `work_dir` (default
    OUT.sheared-work); rerunning the same command resumes from the last one, and the folder is
    removed once the output is written.
    """
    started = time.perf_counter()
    work = Path(work_dir) if work_dir else Path(f"{out_dir}.sheared-work")
    checkpoint = ShearedCheckpoint(work, settings)
    state = checkpoint.load_state()
    torch.manual_seed(settings.seed)
    model, info = load_pretrained(ShapedLlamaForCausalLM, model_dir, dtype=torch.float32, output_loading_info=True)
    if "lm_head.weight" in info["missing_keys"]:
        raise ValueError(
            f"{model_dir}: no language-modelling head (lm_head.weight) and untied embeddings; "
            "Sheared pruning needs the causal LM the encoder comes from, not an encoder checkpoint"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm_loss = dict(state["lm_loss"]) if state else {}
    if eval_texts and "full" not in lm_loss:
        lm_loss["full"] = held_out_loss(model, tokenizer, eval_texts, settings.max_length)
    checkpoint.carry["lm_loss"] = lm_loss
    generator = torch.Generator().manual_seed(settings.seed)
    batches = lm_batches(tokenizer, texts, settings.max_length, settings.batch_size, generator)
    if state and state["stage"] == "continue":
        history, pruned = state["history"], checkpoint.pruned_model()
        _skip(batches, settings.steps + state["step"])
    else:
        _skip(batches, state["step"] if state else 0)
        masks, history = learn_masks(model, batches, settings, checkpoint=checkpoint, resume=state)
        pruned = prune_llama(model, masks_to_plan(model, masks.final_values(settings.targets)))
        if eval_texts:
            lm_loss["pruned"] = held_out_loss(pruned, tokenizer, eval_texts, settings.max_length)
        state = None
        if settings.checkpoint_every and settings.continue_steps:  # a crash from here on keeps the cut model
            checkpoint.save("continue", 0, {"model": pruned}, [], {"history": history, "continue_history": []},
                            pruned=pruned)
    checkpoint.carry["history"] = history
    continued = continue_pretraining(pruned, batches, settings.continue_steps, settings.continue_lr,
                                     checkpoint=checkpoint, resume=state)
    if eval_texts and settings.continue_steps:
        lm_loss["continued"] = held_out_loss(pruned, tokenizer, eval_texts, settings.max_length)
    save_pruned(pruned, out_dir, tokenizer_from=model_dir)
    shutil.rmtree(work, ignore_errors=True)
    before, after = (_encode_speed(folder, texts[:32], settings.max_length) for folder in (model_dir, out_dir))
    return ShearedReport(layer_shapes=pruned.config.layer_shapes, hidden_size=pruned.config.hidden_size, history=history,
                         continue_history=continued, lm_loss=lm_loss, parameters_before=non_embedding_parameters(model),
                         parameters_after=non_embedding_parameters(pruned), tokens_per_s_before=before, tokens_per_s_after=after,
                         seconds=round(time.perf_counter() - started, 1))


def _skip(batches, count: int) -> None:
    """Replay the seeded batch stream up to a resumed step (cheap: token ids only)."""
    for _ in range(count):
        next(batches)


def _encode_speed(folder: Path, texts: Sequence[str], max_length: int) -> float:
    return tokens_per_second(load_encoder(str(folder), device="cpu", dtype=torch.float32, max_length=max_length), texts)

