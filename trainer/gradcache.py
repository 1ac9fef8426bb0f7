"""One contrastive forward/backward, optionally with GradCache so big batches fit small memory.

InfoNCE needs every embedding of the batch at once, which caps the batch at what fits in
activation memory. GradCache (Gao et al., 2021) splits it: embed all chunks without a graph,
compute the loss and its gradient with respect to the embeddings, then re-embed chunk by
chunk with a graph and backpropagate those cached gradients. The result equals the
one-pass gradient; dropout matches because each chunk's re-run restores the random state
its first run started from.

Across ranks (torchrun), embeddings are all-gathered so every rank scores every query
against every passage of the global batch; the local slice keeps its graph, so each rank's
parameter gradients are its share of the global loss's gradient and summing them over
ranks gives the exact gradient.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from dramasearch.encoder import Encoder

LossFn = Callable[..., torch.Tensor]  # (queries, passages[, teacher]) -> loss


@dataclass
class TokenizedBatch:
    """Token ids of one (per-rank) batch: queries, and per query its positive then negatives;
    with distillation, the teacher's scores of each query's group ([queries, group])."""

    queries: list[list[int]]
    passages: list[list[int]]
    teacher: torch.Tensor | None = None

    def loss(self, loss_fn: LossFn, queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        """The loss of the global batch (every rank's rows gathered)."""
        extra = () if self.teacher is None else (gather_keep_local_grad(self.teacher.to(queries.device)),)
        return loss_fn(gather_keep_local_grad(queries), gather_keep_local_grad(passages), *extra)


def contrastive_step(
    encoder: Encoder,
    batch: TokenizedBatch,
    loss_fn: LossFn,
    chunk_size: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """Accumulate the gradient of `loss_fn` over the (global) batch into the model; return the loss.

    `chunk_size=None` embeds queries and passages in one pass each (with a graph);
    a number turns on GradCache with at most that many sequences per forward.
    """
    if chunk_size is None:
        with autocast():
            queries, passages = encoder.embed_ids(batch.queries), encoder.embed_ids(batch.passages)
        loss = batch.loss(loss_fn, queries, passages)
        loss.backward()
        return float(loss.detach())
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    query_chunks, passage_chunks = _chunks(batch.queries, chunk_size), _chunks(batch.passages, chunk_size)
    chunks = query_chunks + passage_chunks
    reps, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState.capture(encoder.device))
            with autocast():
                reps.append(encoder.embed_ids(chunk))
    queries = torch.cat(reps[: len(query_chunks)]).requires_grad_()
    passages = torch.cat(reps[len(query_chunks) :]).requires_grad_()
    loss = batch.loss(loss_fn, queries, passages)
    loss.backward()
    cached = [*queries.grad.split([len(c) for c in query_chunks]), *passages.grad.split([len(c) for c in passage_chunks])]
    for chunk, state, grad in zip(chunks, states, cached):
        state.restore()
        with autocast():
            rep = encoder.embed_ids(chunk)
        # d(loss)/d(params) = sum over rows of (d loss / d rep) . (d rep / d params)
        torch.dot(rep.flatten(), grad.flatten()).backward()
    return float(loss.detach())


def gather_keep_local_grad(local: torch.Tensor) -> torch.Tensor:
    """All ranks' rows in rank order; only this rank's own rows carry a graph."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.detach().contiguous())
    parts[dist.get_rank()] = local
    return torch.cat(parts)


def _chunks(items: Sequence[list[int]], size: int) -> list[list[list[int]]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class RandomState:
    """The torch random state (CPU, and the encoder's CUDA device) before a forward pass."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: str

    @classmethod
    def capture(cls, device: str) -> "RandomState":
        cuda = torch.cuda.get_rng_state(device) if device.startswith("cuda") else None
        return cls(torch.get_rng_state(), cuda, device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
