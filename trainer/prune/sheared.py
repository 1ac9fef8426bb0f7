"""Sheared-LLaMA targeted structured pruning: learn hard-concrete masks under a language-modelling loss.

The model and the gates minimize next-token loss plus the Lagrangian penalty while the
Lagrange multipliers maximize it (gradient ascent), so the expected shape is pulled to a
target that ramps from the full size over the warm-up. At the end the gates keep exactly
the target shape and are folded into a smaller plain checkpoint (shapes.prune_llama).
This is the short pruning stage only; continued pre-training of the pruned model is separate.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoTokenizer

from .hardconcrete import Lagrangian, LlamaMasks, check_target, masked, masks_to_plan, ramped_target
from .shapes import ShapedLlamaForCausalLM, prune_llama, save_pruned

log = logging.getLogger(__name__)


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


@dataclass
class ShearedReport:
    layer_shapes: list[dict]
    hidden_size: int
    history: list[dict] = field(default_factory=list)  # per logged step: lm loss, expected sizes

    def to_dict(self) -> dict:
        return asdict(self)


def lm_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int,
               generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random batches of BOS + text token windows (ids, attention mask), padded on the right."""
    windows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = [tokenizer.bos_token_id, *ids] if tokenizer.bos_token_id is not None else ids
        windows += [ids[i : i + max_length] for i in range(0, len(ids), max_length) if len(ids[i : i + max_length]) > 1]
    if not windows:
        raise ValueError("the calibration texts give no token window of 2 or more tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    while True:
        chosen = torch.randint(len(windows), (batch_size,), generator=generator).tolist()
        longest = max(len(windows[i]) for i in chosen)
        ids = torch.full((batch_size, longest), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, longest), dtype=torch.long)
        for row, i in enumerate(chosen):
            ids[row, : len(windows[i])] = torch.tensor(windows[i])
            mask[row, : len(windows[i])] = 1
        yield ids, mask


def learn_masks(model: ShapedLlamaForCausalLM, batches, settings: ShearedSettings, log_every: int = 10):
    """Run the pruning loop; returns the masks and a history of (step, loss, expected sizes)."""
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
    model.train()
    masks.train()
    history = []
    for step in range(settings.steps):
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
            log.info("step %d lm_loss %.4f expected %s", step, history[-1]["lm_loss"], expected)
    model.eval()
    masks.eval()
    return masks, history


def sheared_prune(model_dir: Path, out_dir: Path, texts: Sequence[str], settings: ShearedSettings) -> ShearedReport:
    """Prune the causal LM in `model_dir` to `settings.targets` on `texts` and save it to `out_dir`."""
    torch.manual_seed(settings.seed)
    model, info = ShapedLlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    if "lm_head.weight" in info["missing_keys"]:
        raise ValueError(
            f"{model_dir}: no language-modelling head (lm_head.weight) and untied embeddings; "
            "Sheared pruning needs the causal LM the encoder comes from, not an encoder checkpoint"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(settings.seed)
    batches = lm_batches(tokenizer, texts, settings.max_length, settings.batch_size, generator)
    masks, history = learn_masks(model, batches, settings)
    pruned = prune_llama(model, masks_to_plan(model, masks.final_values(settings.targets)))
    save_pruned(pruned, out_dir, tokenizer_from=model_dir)
    return ShearedReport(layer_shapes=pruned.config.layer_shapes, hidden_size=pruned.config.hidden_size, history=history)
