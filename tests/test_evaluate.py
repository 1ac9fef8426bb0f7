"""Tests for dramasearch.evaluate: hand-computed metrics, agreement with sentence-transformers, run files."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from dramasearch.errors import DramaSearchError, InputError
from dramasearch.evaluate import (
    EvalResult,
    Qrels,
    Run,
    evaluate_run,
    format_metrics,
    read_trec_run,
    write_trec_run,
)


def _log2(x: float) -> float:
    return math.log(x, 2)


def test_graded_metrics_match_hand_computation() -> None:
    qrels: Qrels = {
        "q1": {"d1": 3, "d2": 1, "d3": 2, "d4": 0, "d9": 1},
        "q2": {"e1": 1},
        "q3": {"f1": 1},  # judged but absent from the run
    }
    run: Run = {
        # ranking: d4 (rel 0), d1 (3), d7 (unjudged), d3 (2), d2 (1); d9 never retrieved
        "q1": {"d4": 0.9, "d1": 0.8, "d7": 0.7, "d3": 0.6, "d2": 0.5},
        # e1 is ranked 11th
        "q2": {**{f"x{i:02d}": 2.0 - i / 100 for i in range(10)}, "e1": 1.0},
        "q4": {"d1": 1.0},  # not judged: ignored
    }
    dcg = 3 / _log2(3) + 2 / _log2(5) + 1 / _log2(6)
    idcg = 3 / _log2(2) + 2 / _log2(3) + 1 / _log2(4) + 1 / _log2(5)
    q1 = {"nDCG@10": dcg / idcg, "Recall@100": 3 / 4, "MRR@10": 1 / 2}
    q2 = {"nDCG@10": 0.0, "Recall@100": 1.0, "MRR@10": 0.0}

    result = evaluate_run(run, qrels)
    assert result.num_queries == 2
    assert set(result.per_query) == {"q1", "q2"}
    for name in ("nDCG@10", "Recall@100", "MRR@10"):
        assert result.per_query["q1"][name] == pytest.approx(q1[name], abs=1e-9)
        assert result.per_query["q2"][name] == pytest.approx(q2[name], abs=1e-9)
        assert result.metrics[name] == pytest.approx((q1[name] + q2[name]) / 2, abs=1e-9)

    complete = evaluate_run(run, qrels, missing_as_zero=True)
    assert complete.num_queries == 3
    assert complete.per_query["q3"] == {"nDCG@10": 0.0, "Recall@100": 0.0, "MRR@10": 0.0}
    for name in ("nDCG@10", "Recall@100", "MRR@10"):
        assert complete.metrics[name] == pytest.approx((q1[name] + q2[name]) / 3, abs=1e-9)


def test_mrr_cut_at_10() -> None:
    qrels: Qrels = {"q": {"rel": 1}}
    run: Run = {"q": {**{f"n{i:02d}": 1.0 - i / 100 for i in range(10)}, "rel": 0.5}}
    assert evaluate_run(run, qrels).metrics["MRR@10"] == 0.0
    run["q"]["rel"] = 0.995  # now rank 2
    assert evaluate_run(run, qrels).metrics["MRR@10"] == pytest.approx(0.5, abs=1e-9)


def test_mrr_cut_uses_trec_eval_tie_order() -> None:
    # All scores tie: trec_eval orders by doc id descending, so "a" is 11th and cut off,
    # while "z" is 1st. The cut must agree with how trec_eval ranks the full run.
    qrels: Qrels = {"low": {"a": 1}, "high": {"z": 1}}
    docs = {d: 1.0 for d in "abcdefghijk"} | {"z": 1.0}
    run: Run = {"low": {d: 1.0 for d in "abcdefghijk"}, "high": docs}
    per_query = evaluate_run(run, qrels).per_query
    assert per_query["low"]["MRR@10"] == 0.0
    assert per_query["high"]["MRR@10"] == 1.0


def test_ignore_identical_ids_drops_self_match() -> None:
    qrels: Qrels = {"q1": {"d2": 1}}
    run: Run = {"q1": {"q1": 0.99, "d2": 0.5}}
    assert evaluate_run(run, qrels).metrics["MRR@10"] == pytest.approx(0.5, abs=1e-9)
    result = evaluate_run(run, qrels, ignore_identical_ids=True)
    assert result.metrics["MRR@10"] == 1.0
    assert result.metrics["nDCG@10"] == pytest.approx(1.0, abs=1e-9)


def test_no_overlap_between_run_and_qrels_is_an_error() -> None:
    with pytest.raises(DramaSearchError, match="same query ids"):
        evaluate_run({"a": {"d": 1.0}}, {"b": {"d": 1}})


def test_agrees_with_sentence_transformers_for_binary_relevance() -> None:
    """Same ranked lists through sentence-transformers' own metric code.

    Known difference: on tied scores sentence-transformers breaks ties by doc id
    ascending and trec_eval by doc id descending, so the run has no ties.
    sentence-transformers also skips queries without relevant docs; every query here has one.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    rng = random.Random(1234)
    corpus = {f"doc{i}": f"text {i}" for i in range(400)}
    doc_ids = list(corpus)
    queries = {f"q{i}": f"query {i}" for i in range(50)}
    qrels: Qrels = {}
    run: Run = {}
    for qid in queries:
        retrieved = rng.sample(doc_ids, 150)
        run[qid] = {d: rng.random() for d in retrieved}
        # relevant docs partly among the retrieved ones (any rank), partly never retrieved
        relevant = rng.sample(retrieved, rng.randint(0, 3)) + rng.sample(doc_ids, rng.randint(1, 3))
        qrels[qid] = {d: 1 for d in relevant}
    assert all(len(set(docs.values())) == len(docs) for docs in run.values()), "ties would make the orders differ"

    st = InformationRetrievalEvaluator(
        queries=queries,
        corpus=corpus,
        relevant_docs={qid: set(docs) for qid, docs in qrels.items()},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[100],
        map_at_k=[100],
        write_csv=False,
    )
    hits = [[{"corpus_id": d, "score": s} for d, s in run[qid].items()] for qid in st.queries_ids]
    expected = st.compute_metrics(hits)

    result = evaluate_run(run, qrels)
    assert result.num_queries == 50
    assert result.metrics["nDCG@10"] == pytest.approx(expected["ndcg@k"][10], abs=1e-9)
    assert result.metrics["MRR@10"] == pytest.approx(expected["mrr@k"][10], abs=1e-9)
    assert result.metrics["Recall@100"] == pytest.approx(expected["recall@k"][100], abs=1e-9)
    assert 0 < result.metrics["MRR@10"] < 1  # the comparison is not vacuous


def test_format_metrics() -> None:
    result = EvalResult(
        metrics={"nDCG@10": 0.64512, "Recall@100": 0.92531, "MRR@10": 0.61039},
        per_query={},
        num_queries=300,
    )
    assert format_metrics(result) == "nDCG@10 0.6451  Recall@100 0.9253  MRR@10 0.6104  (300 queries)"


def test_trec_run_round_trip(tmp_path: Path) -> None:
    run: Run = {"q1": {"d1": 0.1, "d2": 0.30000000000000004, "d3": -2.5e-7}, "q2": {"d9": 1.0, "d8": 1.0}}
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="exp1")

    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.30000000000000004 exp1"
    assert [line.split()[2:4] for line in lines[1:]] == [["d1", "2"], ["d3", "3"], ["d9", "1"], ["d8", "2"]]
    assert read_trec_run(path) == run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]  # no temp file left


def test_write_trec_run_rejects_whitespace_ids_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q": {"d": 1.0}})
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(path, {"q": {"bad id": 1.0}})
    assert read_trec_run(path) == {"q": {"d": 1.0}}  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.trec"]


@pytest.mark.parametrize(
    ("line", "field", "needle"),
    [
        ("q1 Q0 d2 2 high run", "score", "'high' is not a number"),
        ("q1 Q0 d2 2 nan run", "score", "not a finite number"),
        ("q1 Q0 d2 two 0.5 run", "rank", "not an integer"),
        ("q1 Q0 d1 2 0.5 run", "docid", "listed twice"),
        ("q1 Q0 d2 2 0.5", None, "expected 6"),
    ],
)
def test_read_trec_run_bad_line(tmp_path: Path, line: str, field: str | None, needle: str) -> None:
    path = tmp_path / "run.trec"
    path.write_text(f"q1 Q0 d1 1 0.9 run\n\n{line}\n", encoding="utf-8")
    with pytest.raises(InputError) as excinfo:
        read_trec_run(path)
    err = excinfo.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert needle in str(err)
    assert str(err).startswith(f"{path}:3: ")
