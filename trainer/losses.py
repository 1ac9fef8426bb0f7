"""Contrastive loss of the DRAMA recipe: InfoNCE over in-batch and hard negatives, per Matryoshka dim.

Passages come in groups, one per query: its positive first, then its hard negatives. Every
passage of the batch is a candidate for every query, so the other queries' positives and
negatives act as in-batch negatives. Scores are the model's own similarity divided by the
temperature: cosine for models that normalize (at each Matryoshka dim the embeddings are
truncated and re-normalized first), the plain dot product of the truncations for models
without a Normalize step, exactly as `Encoder.encode_*(dim=d)` and an index serve them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dramasearch.encoder import truncate_normalize_tensor


def info_nce(queries: torch.Tensor, passages: torch.Tensor, temperature: float, normalize: bool = True) -> torch.Tensor:
    """Mean cross-entropy of each query's positive among all passages (similarity / temperature).

    `passages` holds `len(queries)` equal groups; row `i * group` is query i's positive.
    """
    if passages.shape[0] % queries.shape[0]:
        raise ValueError(f"{passages.shape[0]} passages do not split into {queries.shape[0]} equal groups (1 positive + negatives)")
    group = passages.shape[0] // queries.shape[0]
    if normalize:
        queries, passages = truncate_normalize_tensor(queries), truncate_normalize_tensor(passages)
    scores = queries @ passages.T / temperature
    targets = torch.arange(queries.shape[0], device=queries.device) * group
    return F.cross_entropy(scores, targets)


@dataclass(frozen=True)
class MatryoshkaInfoNCE:
    """`sum_d weight_d * info_nce(q[:, :d], p[:, :d])`; no dims means the full dimension only.

    `normalize` is the model's `EncoderSpec.normalize`: False scores dot products (an index of
    such a model compares unnormalized vectors, so training on cosine would optimize another
    similarity than the one served)."""

    temperature: float = 0.02
    dims: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    normalize: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.weights and len(self.weights) != len(self.dims):
            raise ValueError(f"{len(self.weights)} Matryoshka weights for {len(self.dims)} dims; give one weight per dim")
        if any(d <= 0 for d in self.dims):
            raise ValueError(f"Matryoshka dims must be positive, got {self.dims}")

    def check_dim(self, full: int) -> None:
        """Fail before training, not at the first step, when a dim exceeds the model's."""
        too_big = [d for d in self.dims if d > full]
        if too_big:
            raise ValueError(f"Matryoshka dims {too_big} exceed the model's embedding dimension {full}")

    def __call__(self, queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        if not self.dims:
            return info_nce(queries, passages, self.temperature, self.normalize)
        weights = self.weights or (1.0,) * len(self.dims)
        total = queries.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, weights):
            total = total + weight * info_nce(queries[:, :dim], passages[:, :dim], self.temperature, self.normalize)
        return total
