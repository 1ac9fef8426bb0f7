"""Hybrid retrieval: BM25 postings kept through build / add / upsert / delete / compact / refresh,
and RRF / linear fusion per document (chunk mode included).

BM25 references come from bm25s itself, indexed on exactly the documents that should be live
(so corpus-wide IDF and average length are checked, not only the formula); fusion references
are computed by hand from the two rankings. Corpus: examples/tiny (30 documents, 10 queries).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dramasearch.errors import IndexDamagedError, IndexFormatError, UsageError
from dramasearch.hybrid import Fusion, fuse, linear, rrf
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.lexical import SIDECAR, LexicalConfig
from dramasearch.index.refresh import refresh
from dramasearch.index.generation import IndexDir
from dramasearch.index.snapshot import Snapshot, verify_index
from dramasearch.index.updates import add_documents, compact, delete_documents
from dramasearch.searcher import Searcher

bm25s = pytest.importorskip("bm25s")
Stemmer = pytest.importorskip("Stemmer", reason="PyStemmer (the BM25 stemmer) is not installed")

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _content(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return _records(TINY / "corpus.jsonl")


@pytest.fixture(scope="module")
def queries() -> list[str]:
    return [q["text"] for q in _records(TINY / "queries.jsonl")] + ["zanzibar tyre bicycle bicycles", "the of and"]


def _build(corpus: Path, out: Path, encoder, **kw):
    settings = BuildSettings(corpus=str(corpus), output=str(out), model="minilm", dtype="fp32", store_text=True,
                             index_kind="flat", shard_size=kw.pop("shard_size", 8), show_progress=False, **kw)
    return build_index(settings, encoder=encoder)


def _bm25s_scores(live: list[dict], queries: list[str], config=LexicalConfig()) -> list[dict[str, float]]:
    """Reference: bm25s (Lucene BM25, same k1/b, same tokenizer) indexed on the live documents only."""
    stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
    tokens = lambda texts: bm25s.tokenize(texts, stopwords=config.stopwords, stemmer=stemmer, return_ids=False,
                                          show_progress=False)
    retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
    retriever.index(tokens([_content(d) for d in live]), show_progress=False)
    out = []
    for q in tokens(queries):
        scores = retriever.get_scores(q) if q else np.zeros(len(live))
        out.append({d["_id"]: float(s) for d, s in zip(live, scores)})
    return out


def _our_scores(root: Path, queries: list[str]) -> list[dict[str, float]]:
    """Every live document's BM25 as the index computes it (deleted documents left out)."""
    snap = Snapshot(root)
    try:
        reader = snap.lexical()
        out = []
        for q in queries:
            scores = {}
            for segment, values in zip(snap.segments, reader.scores(q)):
                for doc in np.nonzero(np.isfinite(values))[0].tolist():
                    scores[segment.docid(doc)] = float(values[doc])
            out.append(scores)
        return out
    finally:
        snap.close()


def _assert_bm25_equal(root: Path, live: list[dict], queries: list[str], config=LexicalConfig()) -> None:
    ours, ref = _our_scores(root, queries), _bm25s_scores(live, queries, config)
    for got, want in zip(ours, ref):
        assert got.keys() == want.keys()
        ids = sorted(want)
        np.testing.assert_allclose([got[i] for i in ids], [want[i] for i in ids], rtol=1e-5, atol=1e-6)


def _hand_bm25(docs: list[str], query: list[str], k1: float, b: float) -> list[float]:
    """Lucene BM25 written out by hand, for a corpus of already tokenized documents."""
    n, avgdl = len(docs), sum(len(d) for d in docs) / len(docs)
    out = []
    for d in docs:
        total = 0.0
        for term in query:
            df = sum(1 for other in docs if term in other)
            tf = d.count(term)
            if tf:
                idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
                total += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(total)
    return out


def test_bm25_equals_a_hand_computation_on_a_tiny_corpus(minilm, tmp_path):
    records = [{"_id": "a", "title": "", "text": "cats chase mice; cats sleep"},
               {"_id": "b", "title": "", "text": "dogs chase cats"},
               {"_id": "c", "title": "Mice", "text": "mice eat cheese and mice hide"}]
    root = tmp_path / "hand"
    _build(_write(tmp_path / "hand.jsonl", records), root, minilm, bm25=True)
    # bm25s's tokenizer with English stopwords and the Snowball stemmer: "cats" -> "cat", "and" dropped
    tokens = [["cat", "chase", "mice", "cat", "sleep"], ["dog", "chase", "cat"],
              ["mice", "mice", "eat", "chees", "mice", "hide"]]
    got = _our_scores(root, ["cat mice"])[0]
    want = _hand_bm25(tokens, ["cat", "mice"], 0.9, 0.4)
    np.testing.assert_allclose([got[i] for i in "abc"], want, rtol=1e-9)


def test_bm25_without_stemmer_is_recorded_and_used(minilm, docs, queries, tmp_path):
    root = tmp_path / "unstemmed"
    _build(_write(tmp_path / "c.jsonl", docs[:12]), root, minilm, bm25=True, bm25_stemmer=None)
    snap = Snapshot(root)
    assert snap.settings["bm25"]["stemmer"] is None
    snap.close()
    _assert_bm25_equal(root, docs[:12], queries, LexicalConfig(stemmer=None))
    assert _our_scores(root, ["tyres"])[0] != _our_scores(root, ["tyre"])[0]  # no stemming: different terms


def test_bm25_follows_add_upsert_delete_compact_refresh(minilm, docs, queries, tmp_path):
    base, extra = docs[:20], docs[20:]
    root = tmp_path / "living"
    _build(_write(tmp_path / "base.jsonl", base), root, minilm, bm25=True)
    _assert_bm25_equal(root, base, queries)

    add_documents(root, _write(tmp_path / "extra.jsonl", extra), encoder=minilm, show_progress=False)
    live = base + extra
    _assert_bm25_equal(root, live, queries)  # IDF and average length over both segments

    upserted = [dict(d, text=d["text"] + " zanzibar zanzibar") for d in base[:3]]
    add_documents(root, _write(tmp_path / "up.jsonl", upserted), encoder=minilm, upsert=True, show_progress=False)
    live = base[3:] + extra + upserted
    _assert_bm25_equal(root, live, queries)

    pinned = Searcher(root, encoder=minilm)  # pinned before the delete: keeps seeing its own generation
    gone = [base[5]["_id"], extra[0]["_id"], upserted[1]["_id"]]
    delete_documents(root, gone)
    live = [d for d in live if d["_id"] not in gone]
    _assert_bm25_equal(root, live, queries)
    with Searcher(root, encoder=minilm) as searcher:
        for mode in ("bm25", "rrf", "linear"):
            for hits in searcher.batch_search(queries, k=30, hybrid=mode):
                assert not {h.docid for h in hits} & set(gone)
        top = searcher.search("zanzibar", k=5, hybrid="bm25")
        assert {h.docid for h in top} == {upserted[0]["_id"], upserted[2]["_id"]}  # added text is found
        assert top[0].text.endswith("zanzibar zanzibar")
    old = {h.docid for h in pinned.search("zanzibar", k=5, hybrid="bm25")}
    assert old == {d["_id"] for d in upserted}  # the old generation, with its own statistics
    pinned.close()

    compact(root)
    _assert_bm25_equal(root, live, queries)
    snap = Snapshot(root)
    assert len(snap.segments) == 1 and snap.refs[0].deleted == 0
    snap.close()

    refresh(root, encoder=minilm, show_progress=False)  # same text, renumbered: postings carried over
    _assert_bm25_equal(root, live, queries)
    assert IndexDir(root).read().operation == "refresh" and verify_index(root)[1] == []


def test_bm25_files_are_checksummed_unpickled_and_verified(minilm, docs, tmp_path):
    root = tmp_path / "files"
    _build(_write(tmp_path / "c.jsonl", docs[:8]), root, minilm, bm25=True)
    folder = root / "segments" / "seg-000000"
    sidecar = json.loads((folder / SIDECAR).read_text())
    assert sidecar["documents"] == 8 and sidecar["config"] == LexicalConfig().to_dict()
    for name in sidecar["files"]:
        if name.endswith(".npy"):
            assert np.load(folder / name, allow_pickle=False).dtype.kind in "iu"
    assert verify_index(root)[1] == []
    tf = folder / "bm25.tf.npy"
    data = bytearray(tf.read_bytes())
    data[-1] ^= 0xFF
    tf.write_bytes(bytes(data))
    assert verify_index(root)[1] == [f"{tf}: contents differ from the checksum recorded when it was written "
                                     "(damaged or swapped)"]
    with pytest.raises(IndexDamagedError, match=r"bm25\.tf\.npy: contents differ"):
        Snapshot(root)  # never searched
    # A rerun of the same build repairs it.
    _build(_write(tmp_path / "c.jsonl", docs[:8]), root, minilm, bm25=True)
    assert verify_index(root)[1] == []


def test_fusion_equals_hand_computation():
    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    lexical = [("c", 12.0), ("d", 4.0)]
    scores = rrf([dense, lexical], 60)
    assert scores == pytest.approx({"a": 1 / 61, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62})
    assert [d for d, _ in fuse(dense, lexical, Fusion("rrf"))] == ["c", "a", "b", "d"]  # b/d tie: by docid
    # min-max: dense a=1, b=0.5, c=0; lexical c=1, d=0; weight 0.7 on dense
    assert linear(dense, lexical, 0.7) == pytest.approx({"a": 0.7, "b": 0.35, "c": 0.3, "d": 0.0})
    assert [d for d, _ in fuse(dense, lexical, Fusion("linear", weight=0.7))] == ["a", "b", "c", "d"]
    assert fuse(dense, lexical, Fusion("bm25")) == [("c", 12.0), ("d", 4.0)]


def _hand_fused(dense_hits, lexical_hits, fusion: Fusion, k: int):
    ranked = fuse([(h.docid, h.score) for h in dense_hits], [(h.docid, h.score) for h in lexical_hits], fusion)
    return ranked[:k]


@pytest.mark.parametrize("chunked", [False, True])
def test_searcher_fuses_dense_and_bm25_documents(minilm, docs, queries, tmp_path, chunked):
    root = tmp_path / ("chunk" if chunked else "full")
    extra = dict(long_doc="chunk", chunk_tokens=16, stride=4) if chunked else {}
    _build(_write(tmp_path / "c.jsonl", docs), root, minilm, bm25=True, **extra)
    if chunked:
        _assert_bm25_equal(root, docs, queries)  # the lexical unit is the whole document, not the chunk
    depth, k = 12, 6
    with Searcher(root, encoder=minilm) as searcher:
        dense = searcher.batch_search(queries, k=depth)
        lexical = searcher.batch_search(queries, k=depth, hybrid="bm25")
        for fusion in (Fusion("rrf", depth=depth), Fusion("linear", weight=0.3, depth=depth),
                       Fusion("rrf", rrf_k=5, depth=depth)):
            fused = searcher.batch_search(queries, k=k, hybrid=fusion)
            for got, d, x in zip(fused, dense, lexical):
                want = _hand_fused(d, x, fusion, k)
                assert [h.docid for h in got] == [w[0] for w in want]
                np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], rtol=1e-12)
                assert [h.rank for h in got] == list(range(1, len(got) + 1))
                assert len({h.docid for h in got}) == len(got)  # each document once, chunk mode too
                by_dense = {h.docid: h for h in d}
                for h in got:
                    if h.docid in by_dense:  # dense-found documents keep their best passage
                        assert (h.chunk, h.start, h.end, h.text) == (by_dense[h.docid].chunk, by_dense[h.docid].start,
                                                                     by_dense[h.docid].end, by_dense[h.docid].text)
                    else:
                        assert h.text and h.chunk is None
        # the lexical ranking through the searcher equals bm25s's ranking
        ref = _bm25s_scores(docs, queries)
        for hits, want in zip(lexical, ref):
            top = sorted(((s, d) for d, s in want.items() if s > 0), key=lambda t: (-t[0], t[1]))[:depth]
            np.testing.assert_allclose([h.score for h in hits], [s for s, _ in top], rtol=1e-5)
        assert searcher.search("the of and", k=5, hybrid="bm25") == []  # only stopwords: nothing matches


def test_hybrid_on_an_index_without_bm25_names_the_fix(minilm, docs, tmp_path):
    from click.testing import CliRunner

    from dramasearch.cli import cli

    root = tmp_path / "dense"
    _build(_write(tmp_path / "c.jsonl", docs[:10]), root, minilm)
    with Searcher(root, encoder=minilm) as searcher:
        with pytest.raises(UsageError, match=r"hybrid: .*built without --bm25.*build-index CORPUS -o NEW_INDEX --bm25"):
            searcher.search("tides", hybrid="rrf")
        with pytest.raises(UsageError, match="hybrid: must be one of rrf, linear, bm25"):
            searcher.search("tides", hybrid="max")
        with pytest.raises(UsageError, match="hybrid_weight"):
            searcher.search("tides", hybrid=Fusion("linear", weight=1.5))
        assert searcher.search("tides", k=3)  # dense search is unaffected
    result = CliRunner().invoke(cli, ["search", str(root), "tides", "--hybrid", "rrf"])
    assert isinstance(result.exception, UsageError) and "--bm25" in str(result.exception)
    with pytest.raises(IndexFormatError, match="built without --bm25"):  # a rerun cannot quietly add it
        _build(tmp_path / "c.jsonl", root, minilm, bm25=True)
