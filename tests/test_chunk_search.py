"""Long documents end to end: chunk-mode build + search, truncation counts, MLDR-format evaluation.

Expected values are computed here from the encoder and numpy, not from the index code: every
chunk of every document is encoded, and a document's MaxP score is the max over its chunks.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_path
from dramasearch import cli as cli_module
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.chunking import chunk_documents
from dramasearch.corpus import iter_documents
from dramasearch.evaluate import evaluate_run, read_trec_run
from dramasearch.searcher import Searcher
from dramasearch.topics import read_qrels

CHUNK, STRIDE = 48, 12


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory) -> Path:
    """Eight real meeting transcripts (QMSum), each cut to ~2,500 characters: several chunks per doc."""
    source = shared_path("data", "qmsum-val", "corpus.jsonl")
    out = tmp_path_factory.mktemp("qmsum") / "corpus.jsonl"
    with source.open(encoding="utf-8") as f, out.open("w", encoding="utf-8") as g:
        for _, line in zip(range(8), f):
            doc = json.loads(line)
            g.write(json.dumps({"_id": doc["_id"], "title": "", "text": doc["text"][:2500]}) + "\n")
    return out


@pytest.fixture(scope="module")
def chunk_index(long_corpus, minilm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chunk-index")
    settings = BuildSettings(
        corpus=str(long_corpus), output=str(out), model="minilm", long_doc="chunk", chunk_tokens=CHUNK,
        stride=STRIDE, store_text=True, index_kind="flat", shard_size=3, show_progress=False,
    )
    report = build_index(settings, encoder=minilm)
    assert report.documents == 8 and report.truncated == 0
    return out


def expected_maxp(minilm, corpus: Path, query: str) -> dict[str, tuple[float, int]]:
    """docid -> (best chunk score, best chunk number), from every chunk encoded independently."""
    docs = list(iter_documents(corpus))
    windows = chunk_documents(minilm.tokenizer, [d.content() for d in docs], CHUNK, STRIDE)
    q = minilm.encode_queries([query])[0]
    best = {}
    for doc, chunks in zip(docs, windows):
        vectors = minilm.encode_ids([minilm.frame(c.token_ids) for c in chunks])
        vectors = vectors.astype(np.float16).astype(np.float32)  # shards store fp16
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = vectors @ q
        best[doc.id] = (float(scores.max()), int(scores.argmax()))
    return best


def test_chunk_search_returns_each_document_once_with_its_best_passage(chunk_index, long_corpus, minilm):
    query = "what did the group decide about the remote control design"
    hits = Searcher(chunk_index, encoder=minilm).search(query, k=8)
    assert [h.rank for h in hits] == list(range(1, 9))
    assert len({h.docid for h in hits}) == 8  # every document once
    expected = expected_maxp(minilm, long_corpus, query)
    assert [h.docid for h in hits] == sorted(expected, key=lambda d: -expected[d][0])
    contents = {d.id: d.content() for d in iter_documents(long_corpus)}
    for hit in hits:
        score, chunk = expected[hit.docid]
        assert hit.score == pytest.approx(score, abs=1e-4)
        assert hit.chunk == chunk
        assert hit.text == contents[hit.docid][hit.start : hit.end]  # the passage is the slice it claims
        assert hit.text


def test_chunk_search_aggregations_differ_and_first_uses_chunk_zero(chunk_index, minilm):
    searcher = Searcher(chunk_index, encoder=minilm)
    query = "budget and costs of the project"
    first = searcher.search(query, k=8, aggregate="first")
    assert all(h.chunk is not None for h in first)
    summed = searcher.search(query, k=8, aggregate="sum")
    maxp = searcher.search(query, k=8)
    assert summed[0].score > maxp[0].score  # a sum over several retrieved chunks exceeds the best one
    assert len({h.docid for h in summed}) == len(summed)


def test_full_mode_counts_truncated_documents(long_corpus, minilm, tmp_path):
    settings = BuildSettings(
        corpus=str(long_corpus), output=str(tmp_path / "ix"), model="minilm", index_kind="flat", show_progress=False
    )
    report = build_index(settings, encoder=minilm)
    lengths = [len(ids) for ids in minilm.tokenizer([d.content() for d in iter_documents(long_corpus)],
                                                  add_special_tokens=True)["input_ids"]]
    assert report.truncated == sum(n > minilm.spec.max_length for n in lengths) > 0
    info = CliRunner().invoke(cli_module.cli, ["info", str(tmp_path / "ix")])
    assert f"{report.truncated} truncated" in info.output


def test_mldr_format_round_trips_through_build_and_evaluate(tmp_path, minilm, monkeypatch):
    """MLDR layout: corpus {docid, text}; queries {query_id, query, positive_passages, negative_passages}."""
    docs = {
        "doc-a": "The committee approved the new library opening hours starting in spring.",
        "doc-b": "Heavy rain flooded the river valley and closed two bridges for a week.",
        "doc-c": "The football club signed a young goalkeeper from the regional league.",
    }
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"docid": k, "text": v}) + "\n" for k, v in docs.items()))
    queries = [("q1", "when will the library be open", "doc-a"), ("q2", "bridges closed by floods", "doc-b"),
               ("q3", "new goalkeeper signing", "doc-c")]
    (tmp_path / "queries.jsonl").write_text("".join(
        json.dumps({"query_id": q, "query": t, "positive_passages": [{"docid": d, "text": docs[d], "title": ""}],
                    "negative_passages": []}) + "\n" for q, t, d in queries))
    monkeypatch.setattr("dramasearch.index.build.load_encoder", lambda *a, **k: minilm)
    monkeypatch.setattr("dramasearch.searcher.load_encoder", lambda *a, **k: minilm)
    runner = CliRunner()
    built = runner.invoke(cli_module.cli, ["build-index", str(tmp_path / "corpus.jsonl"), "-o", str(tmp_path / "ix"),
                                           "--model", "minilm", "--long-doc", "chunk", "--chunk-tokens", "16",
                                           "--stride", "4"])
    assert built.exit_code == 0, built.output
    run_file = tmp_path / "run.trec"
    result = runner.invoke(cli_module.cli, ["evaluate", str(tmp_path / "ix"), "--queries", str(tmp_path / "queries.jsonl"),
                                            "--run", str(run_file)])
    assert result.exit_code == 0, result.output
    qrels = read_qrels(tmp_path / "queries.jsonl")
    assert qrels == {"q1": {"doc-a": 1}, "q2": {"doc-b": 1}, "q3": {"doc-c": 1}}
    run = read_trec_run(run_file)
    assert all(len(ranking) == 3 for ranking in run.values())  # documents, not chunks, each once
    metrics = evaluate_run(run, qrels).metrics
    assert f"nDCG@10 {metrics['nDCG@10']:.4f}" in result.output
    assert metrics["MRR@10"] == 1.0
