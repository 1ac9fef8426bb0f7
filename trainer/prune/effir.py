"""EffiR coarse-to-fine pruning of a DRAMA/Llama encoder from calibration text, without training.

Coarse: a sub-layer whose output barely turns the residual stream is redundant. For the
residual h entering a sub-layer F (attention or MLP) the score is cos(h, h + F(norm(h)))
averaged over non-padding calibration tokens; the n highest-scoring MLPs (or attentions)
are removed. Fine: an MLP neuron matters as much as what it writes, mean |activation|
times the norm of its down_proj column; the least important neurons of each kept MLP are
cut. Calibration runs through the encoder's own `encode_ids`, so framing, truncation and
batching are exactly those of serving.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from dramasearch.encoder import Encoder
from dramasearch.errors import UsageError
from dramasearch.models import load_encoder

from .shapes import PrunePlan, full_plan, prune_llama, save_pruned


@dataclass
class Calibration:
    """Per-layer redundancy scores (None where the sub-layer is absent) and MLP neuron importance."""

    attention: list[float | None]
    mlp: list[float | None]
    neuron_importance: list[torch.Tensor | None]
    tokens: int

    def most_redundant(self, kind: str, n: int) -> list[int]:
        """The n layers whose `kind` ('mlp' or 'attention') sub-layer is most redundant (highest score)."""
        scores = {"mlp": self.mlp, "attention": self.attention}[kind]
        present = [i for i, s in enumerate(scores) if s is not None]
        if n > len(present):
            raise UsageError(f"drop_{kind}", f"cannot drop {n} {kind} sub-layers: the model has {len(present)}")
        return sorted(sorted(present, key=lambda i: -scores[i])[:n])


class _Accumulator:
    """Forward hooks on an encoder that sum cosines and |activations| over real tokens."""

    def __init__(self, model):
        self.model = model
        n = len(model.layers)
        self.cos_sum = {"attention": [0.0] * n, "mlp": [0.0] * n}
        self.abs_act = [None] * n
        self.tokens = 0
        self.real: torch.Tensor | None = None
        self.entering: dict[int, torch.Tensor] = {}
        self.attended: dict[int, torch.Tensor] = {}
        self.handles = [model.register_forward_pre_hook(self._batch, with_kwargs=True)]
        for i, layer in enumerate(model.layers):
            self.handles.append(layer.register_forward_pre_hook(self._enter(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._leave(i)))
            if layer.self_attn is not None:
                self.handles.append(layer.self_attn.register_forward_hook(self._attend(i)))
            if layer.mlp is not None:
                self.handles.append(layer.mlp.down_proj.register_forward_pre_hook(self._activations(i)))

    def _batch(self, module, args, kwargs):
        self.real = kwargs["attention_mask"].bool()
        self.tokens += int(self.real.sum())

    def _enter(self, i):
        def hook(module, args, kwargs):
            self.entering[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _attend(self, i):
        def hook(module, args, out):
            self.attended[i] = out[0]
        return hook

    def _leave(self, i):
        def hook(module, args, out):
            h = self.entering.pop(i).float()
            layer = self.model.layers[i]
            if layer.self_attn is not None:
                after_attention = h + self.attended.pop(i).float()
                self.cos_sum["attention"][i] += self._cos_total(h, after_attention)
                h = after_attention
            if layer.mlp is not None:
                self.cos_sum["mlp"][i] += self._cos_total(h, out.float())
        return hook

    def _activations(self, i):
        def hook(module, args):
            summed = (args[0].float().abs() * self.real[..., None]).sum(dim=(0, 1))
            self.abs_act[i] = summed if self.abs_act[i] is None else self.abs_act[i] + summed
        return hook

    def _cos_total(self, before: torch.Tensor, after: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(before, after, dim=-1)[self.real].sum())

    def close(self) -> Calibration:
        for handle in self.handles:
            handle.remove()
        n = max(self.tokens, 1)
        layers = self.model.layers
        importance = [
            None if layer.mlp is None else (acts / n) * layer.mlp.down_proj.weight.detach().float().norm(dim=0)
            for layer, acts in zip(layers, self.abs_act)
        ]
        return Calibration(
            attention=[None if l.self_attn is None else s / n for l, s in zip(layers, self.cos_sum["attention"])],
            mlp=[None if l.mlp is None else s / n for l, s in zip(layers, self.cos_sum["mlp"])],
            neuron_importance=importance,
            tokens=self.tokens,
        )


def calibrate(encoder: Encoder, texts: Sequence[str], batch_tokens: int = 2048) -> Calibration:
    """Redundancy scores and neuron importance of `encoder`'s Llama over `texts` (as documents)."""
    accumulator = _Accumulator(encoder.model)
    try:
        encoder.encode_ids(encoder.tokenize(texts, encoder.spec.document_prefix), batch_tokens=batch_tokens)
    finally:
        calibration = accumulator.close()
    return calibration


def effir_plan(model, calibration: Calibration, drop_mlp: int = 0, drop_attention: int = 0,
               mlp_keep: float = 1.0) -> PrunePlan:
    """Drop the most redundant MLP / attention sub-layers, then keep the top `mlp_keep` fraction of each MLP's neurons."""
    if not 0.0 < mlp_keep <= 1.0:
        raise UsageError("mlp_keep", f"must be in (0, 1], got {mlp_keep}")
    plan = full_plan(model)
    for i in calibration.most_redundant("mlp", drop_mlp):
        plan.layers[i].neurons = []
    for i in calibration.most_redundant("attention", drop_attention):
        plan.layers[i].groups = []
    for keep, importance in zip(plan.layers, calibration.neuron_importance):
        if keep.neurons and mlp_keep < 1.0:
            width = max(1, round(mlp_keep * len(keep.neurons)))
            keep.neurons = sorted(torch.topk(importance, width).indices.tolist())
    return plan


def tokens_per_second(encoder: Encoder, texts: Sequence[str], batch_tokens: int = 2048) -> float:
    """Encoding throughput over `texts` (tokens include the special ones), after one warm-up batch."""
    ids = encoder.tokenize(texts, encoder.spec.document_prefix)
    encoder.encode_ids(ids[:4], batch_tokens=batch_tokens)
    start = time.perf_counter()
    encoder.encode_ids(ids, batch_tokens=batch_tokens)
    return sum(map(len, ids)) / (time.perf_counter() - start)


@dataclass
class EffirReport:
    attention_scores: list[float | None]
    mlp_scores: list[float | None]
    dropped_mlp: list[int]
    dropped_attention: list[int]
    layer_shapes: list[dict]
    parameters_before: int
    parameters_after: int
    tokens_per_s_before: float
    tokens_per_s_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def effir_prune(model_dir: Path, out_dir: Path, texts: Sequence[str], *, drop_mlp: int = 0, drop_attention: int = 0,
                mlp_keep: float = 1.0, max_length: int = 128, dtype: torch.dtype = torch.float32) -> EffirReport:
    """Prune the encoder in `model_dir` with calibration `texts` and write the smaller checkpoint to `out_dir`."""
    encoder = load_encoder(str(model_dir), device="cpu", dtype=dtype, max_length=max_length)
    calibration = calibrate(encoder, texts)
    plan = effir_plan(encoder.model, calibration, drop_mlp, drop_attention, mlp_keep)
    pruned = prune_llama(encoder.model, plan)
    save_pruned(pruned, out_dir, tokenizer_from=model_dir)
    speed_before = tokens_per_second(encoder, texts)
    after = load_encoder(str(out_dir), device="cpu", dtype=dtype, max_length=max_length)
    return EffirReport(
        attention_scores=calibration.attention,
        mlp_scores=calibration.mlp,
        dropped_mlp=calibration.most_redundant("mlp", drop_mlp),
        dropped_attention=calibration.most_redundant("attention", drop_attention),
        layer_shapes=pruned.config.layer_shapes,
        parameters_before=sum(p.numel() for p in encoder.model.parameters()),
        parameters_after=sum(p.numel() for p in after.model.parameters()),
        tokens_per_s_before=speed_before,
        tokens_per_s_after=tokens_per_second(after, texts),
    )
