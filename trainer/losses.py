"""Contrastive loss of the DRAMA recipe: InfoNCE over in-batch and hard negatives, per Matryoshka dim.

Passages come in groups, one per query: its positive first, then its hard negatives. Every
passage of the batch is a candidate for every query, so the other queries' positives and
negatives act as in-batch negatives. Scores are the model's own similarity divided by the
temperature: cosine for models that normalize (at each Matryoshka dim the embeddings are
truncated and re-normalized first), the plain dot product of the truncations for models
without a Normalize step, exactly as `Encoder.encode_*(dim=d)` and an index serve them.

With teacher scores (mining with a hybrid teacher), a query's teacher-scored hard negatives are judged
by the teacher instead (`distilled_info_nce`); unscored ones stay under the hard label.
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


def distilled_info_nce(queries: torch.Tensor, passages: torch.Tensor, teacher: torch.Tensor, temperature: float,
                       normalize: bool = True) -> torch.Tensor:
    """InfoNCE of each positive against every passage but its own teacher-scored ones, plus
    KL(teacher || model) over those (the positive and the hard negatives the teacher scored), both
    softmaxes at `temperature`.

    The teacher-scored negatives are the teacher's own top ranks, where unlabelled positives crowd:
    called wrong outright they would teach the model to push relevant documents away (the margin
    filter ablation, RESULTS §13.3); under the KL one the teacher rates high stays close. `teacher` is
    [queries, k] in the model's similarity units (augment/teacher.py) for the first k passages of each
    query's group; the rest of the group (deep-ranked negatives, `TrainSettings.hard_negatives`) stays
    under the hard label with the other queries' passages.
    """
    n = queries.shape[0]
    k = teacher.shape[1] if teacher.dim() == 2 else 0
    if passages.shape[0] % n or teacher.shape[0] != n or not 1 <= k <= passages.shape[0] // n:
        raise ValueError(f"{passages.shape[0]} passages and teacher scores {tuple(teacher.shape)} do not form "
                         f"{n} equal groups (1 positive + negatives) with one teacher row per query, "
                         "scoring the first 1 to group-size passages of each")
    group = passages.shape[0] // n
    if normalize:
        queries, passages = truncate_normalize_tensor(queries), truncate_normalize_tensor(passages)
    scores = queries @ passages.T
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature  # bf16 autocast: softmax in fp32
    own = torch.arange(n, device=scores.device)
    columns = torch.arange(scores.shape[1], device=scores.device)
    scored = (columns[None, :] // group == own[:, None]) & (columns[None, :] % group != 0) & (columns[None, :] % group < k)
    contrastive = F.cross_entropy(scores.masked_fill(scored, float("-inf")), own * group)
    student = F.log_softmax(scores.view(n, n, group)[own, own, :k], dim=1)
    target = F.log_softmax(teacher.to(scores.device, scores.dtype) / temperature, dim=1)
    return contrastive + F.kl_div(student, target, log_target=True, reduction="batchmean")


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

    def __call__(self, queries: torch.Tensor, passages: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        """`teacher` (scores per query's group) turns each dim's term into `distilled_info_nce`."""
        def one(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            if teacher is None:
                return info_nce(q, p, self.temperature, self.normalize)
            return distilled_info_nce(q, p, teacher, self.temperature, self.normalize)

        if not self.dims:
            return one(queries, passages)
        weights = self.weights or (1.0,) * len(self.dims)
        total = queries.new_zeros((), dtype=torch.float32)
        for dim, weight in zip(self.dims, weights):
            total = total + weight * one(queries[:, :dim], passages[:, :dim])
        return total
