"""Hard-negative mining with a dense retriever over the corpus.

Negatives come from a rank window (default ranks 30-50, as in DRAMA): the top ranks hold
too many unlabelled positives. A relative margin (NV-Retriever's "TopK-PercPos") drops a
candidate scoring above `margin_ratio` x the positive's score, the likeliest false negatives.

With `teacher_weight` set, the ranking, the window and the margin are those of a hybrid teacher
(teacher.py: the dense score blended with BM25's), and every mined passage keeps its teacher score
for distillation, but those of `hard_ranks`: a deeper window whose negatives training calls wrong.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dramasearch.encoder import Encoder

from ..data import Passage, TrainingExample, read_examples_or_queries
from .resume import Progress, ResumableOutput, run_batches
from .retrieval import DenseCorpus, load_passages, top_k
from .teacher import LexicalScorer, teacher_top_k


# Ranks of the positive whose queries teach the most (adapt's hard_queries_first): the retriever misses
# it (rank 1 teaches little) but still finds it near the top (deeper, a crop is often too vague to name
# its document). Kept examples are counted in three bands: rank 1, these ranks, deeper.
INFORMATIVE_RANKS = (2, 20)
RANK_BANDS = ("positive_rank_1", "positive_rank_{}_{}".format(*INFORMATIVE_RANKS),
              f"positive_rank_over_{INFORMATIVE_RANKS[1]}")


def rank_band(rank: int) -> str:
    return RANK_BANDS[0] if rank < INFORMATIVE_RANKS[0] else RANK_BANDS[1] if rank <= INFORMATIVE_RANKS[1] else RANK_BANDS[2]


def is_informative(example: TrainingExample) -> bool:
    return example.mined_rank is not None and INFORMATIVE_RANKS[0] <= example.mined_rank <= INFORMATIVE_RANKS[1]


@dataclass(frozen=True)
class MiningConfig:
    negative_ranks: tuple[int, int] = (30, 50)  # 1-based, inclusive, over the retriever's full ranking
    max_negatives: int | None = None  # keep the best-ranked ones; None keeps all that pass
    top_positives: int = 0  # also take the retriever's top ranks as positives (DRAMA uses 10 for queries without labels)
    margin_ratio: float | None = 0.95  # None turns the false-negative filter off
    min_negatives: int = 1  # examples left with fewer are dropped
    dim: int | None = None  # Matryoshka dimension of the retriever's embeddings
    # the dense share of a hybrid teacher (teacher.py) that ranks and scores instead of the retriever alone
    teacher_weight: float | None = None
    teacher_depth: int = 100  # each query's candidate pool for the teacher's normalization: both top-N lists
    # with a teacher: a second, deeper window of the teacher's ranking whose negatives are kept without a
    # score, for training's hard label. margin_ratio and max_negatives then apply to it alone; the
    # teacher's window (negative_ranks) is kept whole, every passage with its score
    hard_ranks: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.negative_ranks
        if not 1 <= lo <= hi:
            raise ValueError(f"negative_ranks must be 1 <= first <= last, got {self.negative_ranks}")
        if self.margin_ratio is not None and not 0 < self.margin_ratio:
            raise ValueError(f"margin_ratio must be > 0, got {self.margin_ratio}")
        if self.teacher_weight is not None and not 0 <= self.teacher_weight <= 1:
            raise ValueError(f"teacher_weight must be in [0, 1] (the dense share), got {self.teacher_weight}")
        if self.teacher_depth < 1:
            raise ValueError(f"teacher_depth must be >= 1, got {self.teacher_depth}")
        if self.hard_ranks is not None:
            first, last = self.hard_ranks
            if self.teacher_weight is None or not hi < first <= last:
                raise ValueError(f"hard_ranks must follow the teacher's window {self.negative_ranks} and needs "
                                 f"teacher_weight, got {self.hard_ranks}")


def select_negatives(
    ranked: Sequence[int],
    scores: Sequence[float],
    positives: set[int],
    positive_score: float,
    config: MiningConfig,
) -> tuple[list[int], int]:
    """Corpus rows for negatives (best rank first) and how many the margin filter dropped.

    `ranked`/`scores` are the retriever's ranking (rank 1 first); positives never become
    negatives. The margin threshold is `margin_ratio * positive_score` for a positive score
    above 0; a non-positive score (an unrelated positive) falls back to the score itself.
    """
    lo, hi = config.negative_ranks
    threshold = np.inf
    if config.margin_ratio is not None:
        threshold = config.margin_ratio * positive_score if positive_score > 0 else positive_score
    chosen, dropped = [], 0
    for row, score in zip(ranked[lo - 1 : hi], scores[lo - 1 : hi]):
        if config.max_negatives is not None and len(chosen) == config.max_negatives:
            break
        if row in positives:
            continue
        if score > threshold:
            dropped += 1
            continue
        chosen.append(int(row))
    return chosen, dropped


def mine_batch(
    encoder: Encoder, corpus: DenseCorpus, examples: list[TrainingExample], config: MiningConfig,
    lexical: LexicalScorer | None = None,
) -> tuple[list[TrainingExample], dict[str, int]]:
    """Mined copies of `examples` (given positives kept, negatives replaced) and drop counts.

    `lexical` (BM25 over the same passages, in order) is the teacher's other half; it is needed
    exactly when `config.teacher_weight` is set."""
    if (config.teacher_weight is None) != (lexical is None):
        raise ValueError("a hybrid teacher (teacher_weight) needs the corpus's LexicalScorer, and only it does")
    if not examples:
        return [], {}
    queries = [e.query for e in examples]
    q = encoder.encode_queries(queries, dim=config.dim)
    depth = max(config.negative_ranks[1], config.top_positives, config.hard_ranks[1] if config.hard_ranks else 0)
    if lexical is None:
        scores, ranked = top_k(q, corpus.embeddings, depth)
        bm25 = blends = None
    else:
        bm25 = lexical.corpus_scores(queries)
        scores, ranked, blends = teacher_top_k(q @ corpus.embeddings.T, bm25, config.teacher_weight,
                                               config.teacher_depth, depth)
    positives_of = [_positives(example, ranked[i, : config.top_positives], corpus) for i, example in enumerate(examples)]
    # One encoder call for the batch's positives that are not corpus rows (cropped ones), not one per
    # example: on a GPU a call for one passage is mostly launch overhead (RESULTS §13.14).
    vectors = corpus.passage_vectors(encoder, [p for positives in positives_of for p in positives], config.dim)
    vectors_of = np.split(vectors, np.cumsum([len(positives) for positives in positives_of])[:-1])
    if config.hard_ranks is not None:  # the two windows' selections, built once for the batch
        teacher_window = dataclasses.replace(config, margin_ratio=None, max_negatives=None)
        hard_window = dataclasses.replace(config, negative_ranks=config.hard_ranks, hard_ranks=None)
    out, counts = [], {"dropped_by_margin": 0, "dropped_few_negatives": 0, "no_positive": 0, **dict.fromkeys(RANK_BANDS, 0)}
    for i, (example, positives, positive_vectors) in enumerate(zip(examples, positives_of, vectors_of)):
        if not positives:
            counts["no_positive"] += 1
            continue
        positive_scores = positive_vectors @ q[i]
        if blends is not None:  # a positive scored as it reads (a crop without its sentence), by the same blend
            positive_scores = blends[i](positive_scores, lexical.text_scores(example.query, [p.content() for p in positives]))
        # The least similar positive sets the bar: the strictest threshold against false negatives.
        positive_score = float(positive_scores.min())
        positive_rows = {r for p in positives if (r := corpus.position(p.docid)) is not None}
        hard: list[int] = []
        if config.hard_ranks is None:
            negatives, dropped = select_negatives(ranked[i], scores[i], positive_rows, positive_score, config)
        else:
            negatives, _ = select_negatives(ranked[i], scores[i], positive_rows, positive_score, teacher_window)
            hard, dropped = select_negatives(ranked[i], scores[i], positive_rows, positive_score, hard_window)
        counts["dropped_by_margin"] += dropped
        if len(negatives) < config.min_negatives or (config.hard_ranks and len(hard) < config.min_negatives):
            counts["dropped_few_negatives"] += 1
            continue
        rank = positive_rank(ranked[i], scores[i], positive_rows, positive_score)
        counts[rank_band(rank)] += 1
        negative_passages = [corpus.passages[r] for r in negatives]
        if blends is not None:
            teacher = dict(zip(ranked[i].tolist(), scores[i].tolist()))
            positives = [dataclasses.replace(p, score=float(s)) for p, s in zip(positives, positive_scores)]
            negative_passages = [dataclasses.replace(p, score=teacher[r]) for p, r in zip(negative_passages, negatives)]
            negative_passages += [corpus.passages[r] for r in hard]  # unscored: the hard label's
        out.append(TrainingExample(example.query_id, example.query, positives, negative_passages, mined_rank=rank))
    return out, counts


def positive_rank(ranked: Sequence[int], scores: Sequence[float], positives: set[int], positive_score: float) -> int:
    """1 + the ranked documents, positives aside, that score above the positive (so at most the mined
    depth + 1). A cropped positive is scored as cropped: a crop's rank says whether its document is
    found without the sentence the query was cut from."""
    return 1 + sum(1 for row, score in zip(ranked, scores) if score > positive_score and row not in positives)


def _positives(example: TrainingExample, top_rows: Sequence[int], corpus: DenseCorpus) -> list[Passage]:
    """The example's positives, then the retriever's top rows that are not among them."""
    positives = list(example.positives)
    seen = {p.docid for p in positives}
    for row in top_rows:
        if corpus.passages[row].docid not in seen:
            positives.append(corpus.passages[row])
            seen.add(corpus.passages[row].docid)
    return positives


def mine_negatives(
    examples: str | Path,
    corpus: str | Path,
    out: str | Path,
    encoder: Encoder,
    config: MiningConfig = MiningConfig(),
    *,
    batch_size: int = 64,
    corpus_limit: int | None = None,
) -> Progress:
    """Mine negatives for every example (or query) in `examples`; resumable (see resume.py).

    `examples` is Tevatron jsonl, or a queries file (BEIR queries.jsonl / tsv), whose queries
    then need `top_positives` > 0.
    """
    output = ResumableOutput(out, {
        "step": "mining", "examples": str(Path(examples).resolve()), "corpus": str(Path(corpus).resolve()), "corpus_limit": corpus_limit,
        "model": encoder.spec.name, "batch_size": batch_size, **asdict(config),
    })
    if output.progress.finished:
        return output.progress
    dense = DenseCorpus.encode(encoder, load_passages(corpus, corpus_limit), config.dim)
    lexical = LexicalScorer(dense.passages) if config.teacher_weight is not None else None
    inputs, total = read_examples_or_queries(examples)
    return run_batches(
        output, inputs, lambda _, batch: mine_batch(encoder, dense, batch, config, lexical),
        batch_size=batch_size, total=total, desc="mining",
    )
