"""LLM reranking pseudo-labels: the LLM reorders the retriever's top passages for a query.

The LLM's top-1 becomes the positive and a band of its lower ranks (default 10-20) the
negatives: close enough to the query to be hard, judged worse by a stronger model.
Two ways to rank:
- listwise (RankGPT-style): all candidates in one prompt, the answer is a permutation
  like "[4] > [2] > ...". Needs an LLM that follows the format; its output is parsed
  leniently and always yields a full permutation.
- pointwise: log p("yes") - log p("no") for "does this passage answer the query", one
  prompt per passage. Works with small LLMs that cannot write permutations.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from dramasearch.encoder import Encoder

from ..data import Passage, TrainingExample, read_examples_or_queries
from ..llm import CausalLM
from .resume import Progress, ResumableOutput, run_batches
from .retrieval import DenseCorpus, load_passages, top_k

LISTWISE_SYSTEM = "You rank passages by how well they answer a search query."
POINTWISE_SYSTEM = "You judge whether a passage answers a search query."
YES_WORDS, NO_WORDS = ("yes", "Yes"), ("no", "No")
_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_NUMBER = re.compile(r"\d+")

Ranker = Callable[[list[str], list[list[str]]], list[list[int]]]  # queries, candidate texts -> orders


@dataclass(frozen=True)
class RerankConfig:
    method: str = "listwise"  # or "pointwise"
    depth: int = 20  # retriever candidates given to the LLM
    max_passage_tokens: int = 100  # each candidate is cut to this many LLM tokens
    positive_rank: int = 1  # the LLM's rank that becomes the positive
    negative_ranks: tuple[int, int] = (10, 20)  # 1-based, inclusive, in the LLM's order
    dim: int | None = None  # Matryoshka dimension of the first-stage retriever

    def __post_init__(self) -> None:
        if self.method not in ("listwise", "pointwise"):
            raise ValueError(f"method must be 'listwise' or 'pointwise', got {self.method!r}")
        lo, hi = self.negative_ranks
        if not 1 <= lo <= hi or not 1 <= self.positive_rank <= self.depth:
            raise ValueError(f"ranks must lie in 1..depth={self.depth} (positive {self.positive_rank}, negatives {self.negative_ranks})")


def parse_permutation(text: str, n: int) -> list[int]:
    """A full 0-based permutation of n items from an LLM's "[4] > [2] > ..." answer.

    Bracketed numbers are read if there are any, else bare numbers. Numbers out of 1..n and
    repeats are ignored (the first mention counts); unmentioned items follow in their
    original order, so garbage yields the identity.
    """
    found = _BRACKETED.findall(text) or _NUMBER.findall(text)
    order: list[int] = []
    for token in found:
        index = int(token) - 1
        if 0 <= index < n and index not in order:
            order.append(index)
    mentioned = set(order)
    return order + [i for i in range(n) if i not in mentioned]


def listwise_prompt(lm: CausalLM, query: str, passages: Sequence[str]) -> str:
    numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
    user = (
        f"Here are {len(passages)} passages, each marked with a number in brackets.\n\n{numbered}\n\n"
        f"Search query: {query}\n\n"
        f"Order all {len(passages)} passages from most to least relevant to the query. Answer only with "
        "the numbers in brackets joined by >, for example [2] > [3] > [1], with no explanation."
    )
    return lm.chat_prompt(user, system=LISTWISE_SYSTEM, answer_prefix="[")


def pointwise_prompt(lm: CausalLM, query: str, passage: str) -> str:
    user = f"Search query: {query}\n\nPassage: {passage}\n\nDoes the passage answer the query? Answer yes or no."
    return lm.chat_prompt(user, system=POINTWISE_SYSTEM)


def listwise_ranker(lm: CausalLM) -> Ranker:
    def rank(queries: list[str], candidates: list[list[str]]) -> list[list[int]]:
        prompts = [listwise_prompt(lm, q, c) for q, c in zip(queries, candidates)]
        longest = max(len(c) for c in candidates)
        answers = lm.generate(prompts, max_new_tokens=6 * longest + 8)  # "[12] > " is at most ~6 tokens
        return [parse_permutation("[" + a[0], len(c)) for a, c in zip(answers, candidates)]

    return rank


def pointwise_ranker(lm: CausalLM, prompts_per_call: int = 16) -> Ranker:
    def rank(queries: list[str], candidates: list[list[str]]) -> list[list[int]]:
        prompts = [pointwise_prompt(lm, q, p) for q, c in zip(queries, candidates) for p in c]
        scores = torch.cat([
            relevance_scores(lm.next_token_logprobs(prompts[i : i + prompts_per_call], YES_WORDS + NO_WORDS))
            for i in range(0, len(prompts), prompts_per_call)
        ]).tolist()
        orders, start = [], 0
        for c in candidates:
            mine = scores[start : start + len(c)]
            orders.append(sorted(range(len(c)), key=lambda i: -mine[i]))  # stable: ties keep retriever order
            start += len(c)
        return orders

    return rank


def relevance_scores(logprobs: torch.Tensor) -> torch.Tensor:
    """log P(yes) - log P(no), each summed over its spellings (columns: YES_WORDS then NO_WORDS)."""
    k = len(YES_WORDS)
    return torch.logsumexp(logprobs[:, :k], dim=1) - torch.logsumexp(logprobs[:, k:], dim=1)


def label_from_order(example: TrainingExample, ranked: list[Passage], config: RerankConfig) -> TrainingExample | None:
    """The pseudo-labelled example from passages in the LLM's order (None if no negatives remain).

    Passages labelled positive in the input never become negatives.
    """
    if len(ranked) < config.positive_rank:
        return None
    positive = ranked[config.positive_rank - 1]
    given = {p.docid for p in example.positives} | {positive.docid}
    lo, hi = config.negative_ranks
    negatives = [p for p in ranked[lo - 1 : hi] if p.docid not in given]
    if not negatives:
        return None
    return TrainingExample(example.query_id, example.query, [positive], negatives)


def rerank_batch(
    encoder: Encoder, corpus: DenseCorpus, rank: Ranker, cut: Callable[[str], str],
    examples: list[TrainingExample], config: RerankConfig,
) -> tuple[list[TrainingExample], dict[str, int]]:
    q = encoder.encode_queries([e.query for e in examples], dim=config.dim)
    _, rows = top_k(q, corpus.embeddings, config.depth)
    candidates = [[corpus.passages[r] for r in row] for row in rows]
    orders = rank([e.query for e in examples], [[cut(p.content()) for p in c] for c in candidates])
    out, counts = [], {"kept": 0, "no_negatives": 0, "top1_changed": 0}
    for example, cands, order in zip(examples, candidates, orders):
        counts["top1_changed"] += order[0] != 0
        labelled = label_from_order(example, [cands[i] for i in order], config)
        if labelled is None:
            counts["no_negatives"] += 1
        else:
            out.append(labelled)
            counts["kept"] += 1
    return out, counts


def rerank_pseudo_labels(
    examples: str | Path,
    corpus: str | Path,
    out: str | Path,
    lm: CausalLM,
    encoder: Encoder,
    config: RerankConfig = RerankConfig(),
    *,
    batch_size: int = 4,
    corpus_limit: int | None = None,
) -> Progress:
    """Label every query of `examples` (Tevatron jsonl or a queries file) by LLM reranking; resumable."""
    output = ResumableOutput(out, {
        "step": "rerank", "examples": str(Path(examples).resolve()), "corpus": str(Path(corpus).resolve()), "corpus_limit": corpus_limit,
        "llm": lm.name, "retriever": encoder.spec.name, "batch_size": batch_size, **asdict(config),
    })
    if output.progress.finished:
        return output.progress
    dense = DenseCorpus.encode(encoder, load_passages(corpus, corpus_limit), config.dim)
    rank = listwise_ranker(lm) if config.method == "listwise" else pointwise_ranker(lm)

    def cut(text: str) -> str:
        return lm.truncate(text, config.max_passage_tokens)

    inputs, total = read_examples_or_queries(examples)
    return run_batches(
        output, inputs, lambda _, batch: rerank_batch(encoder, dense, rank, cut, batch, config),
        batch_size=batch_size, total=total, desc=f"rerank ({config.method})",
    )
