"""Retrieval metrics with trec_eval semantics (via pytrec_eval) and TREC run files.

Conventions, chosen so our numbers match the MTEB/BEIR reference numbers:

* Ranking order is trec_eval's: score descending, ties broken by doc id descending
  (trec_eval ignores the rank column of a run file). sentence-transformers'
  InformationRetrievalEvaluator breaks ties by doc id *ascending*, so the two can
  differ only on tied scores.
* nDCG@10 is trec_eval ``ndcg_cut_10`` (gain = relevance grade, discount
  log2(rank + 1), ideal ranking built from all judged docs of the query).
* Recall@100 is trec_eval ``recall_100``.
* MRR@10 is trec_eval ``recip_rank`` on the run cut to each query's top 10
  (``recip_rank`` itself has no cutoff), as MTEB reports it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytrec_eval

from dramasearch.errors import DramaSearchError, InputError
from dramasearch.fsutil import atomic_write_bytes

Qrels = dict[str, dict[str, int]]
"""query id -> doc id -> relevance grade (0 = judged non-relevant)."""
Run = dict[str, dict[str, float]]
"""query id -> doc id -> score (higher is better)."""

METRIC_NAMES = ("nDCG@10", "Recall@100", "MRR@10")
_TREC_MEASURES = {"ndcg_cut_10": "nDCG@10", "recall_100": "Recall@100"}
_RUN_FIELDS = ("qid", "Q0", "docid", "rank", "score", "tag")


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics over the evaluated queries, plus the per-query values they average."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    num_queries: int


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Docs in trec_eval order: score descending, ties by doc id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def evaluate_run(
    run: Run,
    qrels: Qrels,
    *,
    ignore_identical_ids: bool = False,
    missing_as_zero: bool = False,
) -> EvalResult:
    """Score `run` against `qrels` with nDCG@10, Recall@100 and MRR@10.

    Which queries are averaged:

    * default (BEIR/MTEB, whose numbers are our reference): queries that have at
      least one judgment in `qrels` *and* appear in `run` (even with no docs,
      e.g. after `ignore_identical_ids` removed them all). Run queries without
      judgments are ignored, and so are judged queries the run does not contain.
    * ``missing_as_zero=True`` (trec_eval ``-c``): every query with at least one
      judgment in `qrels`; those missing from the run score 0 on every metric.

    Both modes count judged queries whose judgments are all 0 (they score 0), as
    trec_eval does, so they agree whenever the run covers every judged query.

    `ignore_identical_ids` drops docs whose id equals the query id, as BEIR does
    for datasets (e.g. ArguAna, Quora) where a query is also in the corpus.
    """
    if ignore_identical_ids:
        run = {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}
    top10 = {qid: dict(ranked(docs)[:10]) for qid, docs in run.items()}

    full = pytrec_eval.RelevanceEvaluator(qrels, set(_TREC_MEASURES)).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    per_query = {
        qid: {
            **{name: float(values[measure]) for measure, name in _TREC_MEASURES.items()},
            "MRR@10": float(cut[qid]["recip_rank"]),
        }
        for qid, values in full.items()
    }
    if missing_as_zero:
        for qid, judged in qrels.items():
            if judged and qid not in per_query:
                per_query[qid] = dict.fromkeys(METRIC_NAMES, 0.0)

    if not per_query:
        raise DramaSearchError(
            "no query of the run has judgments in the qrels; check that the run and "
            "qrels use the same query ids"
        )
    n = len(per_query)
    metrics = {name: math.fsum(q[name] for q in per_query.values()) / n for name in METRIC_NAMES}
    return EvalResult(metrics=metrics, per_query=per_query, num_queries=n)


def format_metrics(result: EvalResult) -> str:
    """One line for logs and the CLI, e.g. 'nDCG@10 0.6451  Recall@100 0.9253  MRR@10 0.6104  (300 queries)'."""
    cells = "  ".join(f"{name} {result.metrics[name]:.4f}" for name in METRIC_NAMES)
    return f"{cells}  ({result.num_queries} queries)"


def write_trec_run(path: str | Path, run: Run, tag: str = "dramasearch") -> None:
    """Write `run` as a 6-column TREC run file, atomically.

    Ranks are 1..n in trec_eval order, so the rank column agrees with how
    trec_eval reads the scores. Scores are written with repr() so that reading
    the file back gives the exact same floats. The write is atomic (temp file in
    the same folder, fsync, os.replace), so a crash never leaves a half-written
    run that would silently evaluate as worse.
    """
    _check_token(tag, "tag")
    lines = []
    for qid, docs in run.items():
        _check_token(qid, "qid")
        for rank, (docid, score) in enumerate(ranked(docs), start=1):
            _check_token(docid, "docid")
            lines.append(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")

    atomic_write_bytes(path, "".join(lines).encode("utf-8"))


def _check_token(value: str, field: str) -> None:
    """Ids and tags are whitespace-separated columns, so they must be non-empty and space-free."""
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{field} {value!r} cannot be written to a TREC run: it is empty or contains whitespace")


def read_trec_run(path: str | Path) -> Run:
    """Read a 6-column TREC run file (`qid Q0 docid rank score tag`); blank lines are skipped.

    Like trec_eval, only qid, docid and score matter; the rank must still be an
    integer because a non-integer there usually means shifted columns. A doc
    listed twice for one query is an error rather than silently keeping one score.
    """
    run: Run = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.split()
            if not cols:
                continue
            if len(cols) != len(_RUN_FIELDS):
                raise InputError(
                    path, lineno, None,
                    f"expected 6 whitespace-separated columns (qid Q0 docid rank score tag), got {len(cols)}",
                )
            qid, _, docid, rank, score_text, _ = cols
            try:
                int(rank)
            except ValueError:
                raise InputError(path, lineno, "rank", f"{rank!r} is not an integer") from None
            try:
                score = float(score_text)
            except ValueError:
                raise InputError(path, lineno, "score", f"{score_text!r} is not a number") from None
            if not math.isfinite(score):
                raise InputError(path, lineno, "score", f"{score_text!r} is not a finite number")
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise InputError(path, lineno, "docid", f"{docid!r} is listed twice for query {qid!r}")
            docs[docid] = score
    return run


def retrieve(searcher, queries: list, k: int = 100, batch_size: int = 256, **search_kwargs) -> Run:
    """Run every query through `searcher.batch_search` (a Searcher), as a Run for evaluation."""
    run: Run = {}
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        hits = searcher.batch_search([q.text for q in batch], k, with_fields=False, **search_kwargs)
        for query, query_hits in zip(batch, hits):
            run[query.id] = {hit.docid: hit.score for hit in query_hits}
    return run
