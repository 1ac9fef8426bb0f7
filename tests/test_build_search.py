"""build-index -> Searcher end to end, on real code paths: the packaged MiniLM, a real corpus (ADI, 82 docs).

The expected numbers are computed here without dramasearch's index code: documents are encoded
with the encoder, rounded to fp16 (the documented storage precision of shard files),
renormalized with numpy, and scored with dot products. Builds use shard_size=10 so ADI spans
9 shards (8 x 10 + 2) and every resume / sharding path crosses shard boundaries.

One module-scoped build (`baseline`) is shared by most tests; tests that change a folder work on
a copy, so each model forward pass over the corpus happens as few times as possible.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from conftest import LLAMA3_TOKENIZER, shared_path
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.index.snapshot import Snapshot
from dramasearch.index.updates import add_dims
from dramasearch.errors import IndexFormatError
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher

SHARD_SIZE = 10
N_DOCS = 82  # ADI
N_SHARDS = 9
TOL = 1e-4
CLI = Path(sys.executable).parent / "dramasearch"  # the installed console script (entry dramasearch.cli:main)
CLI_TIMEOUT = 240


# --- data -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus() -> Path:
    return shared_path("data", "adi", "corpus.jsonl")


@pytest.fixture(scope="module")
def raw_docs(corpus) -> list[dict]:
    """The corpus as plain dicts, read with json only."""
    return [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def queries() -> list[str]:
    path = shared_path("data", "adi", "queries.jsonl")
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _content(doc: dict) -> str:
    """Title and text joined by a space (the MTEB/BEIR convention the index documents)."""
    return f"{doc['title']} {doc['text']}".strip() if doc.get("title") else doc["text"]


def _unit(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)[..., :dim].copy()
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def reference(minilm, raw_docs) -> np.ndarray:
    """Full-dim document vectors from the encoder alone, rounded to fp16 as shards store them."""
    vectors = minilm.encode_documents([_content(d) for d in raw_docs], show_progress=False)
    return vectors.astype(np.float16).astype(np.float32)


def _settings(corpus: Path, output: Path, **kw) -> BuildSettings:
    base = dict(
        corpus=str(corpus), output=str(output), model="minilm", dims=(64, 384), index_kind="flat",
        store_text=True, shard_size=SHARD_SIZE, dtype="fp32", show_progress=False,
    )
    return BuildSettings(**(base | kw))


@pytest.fixture(scope="module")
def baseline(minilm, corpus, tmp_path_factory):
    """One uninterrupted library build: flat at dims 64 and 384, texts stored, 9 shards."""
    settings = _settings(corpus, tmp_path_factory.mktemp("baseline") / "index")
    report = build_index(settings, encoder=minilm)
    return settings, report


@pytest.fixture(scope="module")
def searcher(baseline, minilm) -> Searcher:
    return Searcher(baseline[0].output, encoder=minilm)


def _copy_index(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _segment_dir(root) -> Path:
    """The folder of the single segment a build writes."""
    return Path(root) / "segments" / "seg-000000"


def _vector_files(root) -> list[Path]:
    return sorted(_segment_dir(root).glob("*.vec.npy"))


def _stored_embeddings(root) -> np.ndarray:
    return np.concatenate([np.load(p, allow_pickle=False).astype(np.float32) for p in _vector_files(root)])


def _stored_ids(root) -> list[str]:
    snap = Snapshot(root)
    try:
        segment = snap.segments[0]
        return [segment.docid(d) for d in range(segment.info.documents)]
    finally:
        snap.close()


def _sealed_shards(root) -> list[dict]:
    return json.loads((_segment_dir(root) / "segment.json").read_text())["shards"]


def _check_hits(hits, expected_scores: np.ndarray, ids: list[str], k: int, tol: float = TOL) -> None:
    """Hits are a top-k under `expected_scores` (tie-robust) and each hit's score is its document's."""
    assert len(hits) == k
    assert [h.rank for h in hits] == list(range(1, k + 1))
    scores = np.array([h.score for h in hits])
    assert np.all(np.diff(scores) <= 0), f"scores not descending: {scores}"
    np.testing.assert_allclose(scores, np.sort(expected_scores)[::-1][:k], atol=tol)
    position = {doc_id: i for i, doc_id in enumerate(ids)}
    for h in hits:
        assert abs(h.score - expected_scores[position[h.docid]]) <= tol, h
    assert len({h.docid for h in hits}) == k


def _sidecars(root: Path) -> list[Path]:
    """Finished shards: sidecar files named NNNNN.json (not the .tmp-PID files of a write in flight)."""
    return sorted(_segment_dir(root).glob("[0-9][0-9][0-9][0-9][0-9].json"))


def _key(hits):
    return [(h.docid, h.rank, h.score) for h in hits]


def _run_main(args: list[str], monkeypatch, capsys, encoder) -> tuple[int, str, str]:
    """Run `dramasearch ARGS` through the console script's `main()` in this process.

    Only model loading is short-cut (to the already loaded fixture encoder, after checking what
    the CLI asked for); argument parsing, the build, the summary and error handling are main()'s.
    """
    from dramasearch import cli
    from dramasearch.index import build

    def load(name, device=None, dtype=None, max_length=None, compile=False):  # noqa: ARG001
        assert (name, dtype, max_length, compile) == ("minilm", torch.float32, None, False), (name, dtype, max_length)
        return encoder

    monkeypatch.setattr(build, "load_encoder", load)
    monkeypatch.setattr(sys, "argv", ["dramasearch", *args])
    capsys.readouterr()
    try:
        code = cli.main() or 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- 1. build then search -------------------------------------------------------------------

def test_build_then_search_matches_numpy(baseline, searcher, minilm, raw_docs, reference, queries):
    settings, report = baseline
    assert (report.documents, report.shards_total, report.shards_encoded) == (N_DOCS, N_SHARDS, list(range(N_SHARDS)))
    assert report.complete and report.shards_reused == 0
    assert "(9 encoded, 0 reused)" in report.summary()
    ids = [d["_id"] for d in raw_docs]
    assert _stored_ids(settings.output) == ids
    # The shards hold the encoder's vectors, in corpus order, at fp16 precision.
    np.testing.assert_allclose(_stored_embeddings(settings.output), reference, atol=1e-3)
    docs = _unit(reference)

    # A document's own title+text finds that document first, from every part of the corpus.
    by_id = {d["_id"]: d for d in raw_docs}
    for i in (0, 10, 41, 81):  # first and last shard, shard boundaries
        hits = searcher.search(_content(raw_docs[i]), k=5)
        assert hits[0].docid == raw_docs[i]["_id"], (i, hits[0])
        assert hits[0].score == pytest.approx(1.0, abs=2e-3)

    k = 10
    some = queries[:5]
    singles = []
    for query in some:
        singles.append(hits := searcher.search(query, k=k))
        q = _unit(minilm.encode_queries([query], show_progress=False))[0]
        _check_hits(hits, docs @ q, ids, k)
        for h in hits:  # stored fields come back
            assert (h.title, h.text) == (by_id[h.docid]["title"], by_id[h.docid]["text"])

    # A batch gives the per-query answers (batched encoding pads, so scores may differ in the last bits).
    batched = searcher.batch_search(some, k=k)
    for hits, single in zip(batched, singles):
        assert [(h.docid, h.rank, h.title, h.text) for h in hits] == [(h.docid, h.rank, h.title, h.text) for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)

    # k beyond the corpus: every document once, no padding rows.
    everything = searcher.search(queries[0], k=200)
    assert sorted(h.docid for h in everything) == sorted(ids)
    # with_fields=False skips the docstore.
    assert all(h.title == h.text == "" for h in searcher.batch_search(some[:1], k=3, with_fields=False)[0])


@pytest.mark.parametrize("spans", ["one read per shard", "one read per record"])
def test_batched_record_reads_equal_the_corpus(baseline, raw_docs, spans, monkeypatch):
    """Searches read ids and fields in batches; both read plans give each asked document's own
    record, in the asked order, repeats included."""
    from dramasearch.index import segment as segment_module

    if spans == "one read per record":
        monkeypatch.setattr(segment_module, "OFFSETS_SPAN", 1)
        monkeypatch.setattr(segment_module, "RECORDS_SPAN", 0)
    docs = np.random.default_rng(0).integers(0, N_DOCS, size=60)  # every shard, repeats, any order
    docs[:3] = [81, 0, 81]
    snap = Snapshot(baseline[0].output)
    try:
        segment = snap.segments[0]
        assert segment.docids(docs) == [raw_docs[d]["_id"] for d in docs]
        assert segment.fields_of(docs) == [(raw_docs[d]["title"], raw_docs[d]["text"]) for d in docs]
        assert segment.docids([]) == [] and segment.fields(10) == (raw_docs[10]["title"], raw_docs[10]["text"])
    finally:
        snap.close()


# --- 2. resume after kill -9 ----------------------------------------------------------------

def test_resume_after_kill_reencodes_only_unfinished_shards(baseline, minilm, corpus, tmp_path, queries, monkeypatch, capsys):
    if not CLI.is_file():
        pytest.skip(f"{CLI} is absent: install the package (pip install -e .) for the console script")
    out = tmp_path / "index"
    args = ["build-index", str(corpus), "-o", str(out), "--model", "minilm",
            "--shard-size", str(SHARD_SIZE), "--index", "flat", "--dtype", "fp32"]
    cmd = [str(CLI), *args]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + CLI_TIMEOUT
            while len(seen := _sidecars(out)) < 2:
                assert proc.poll() is None, f"build exited ({proc.returncode}) before 2 shards: " \
                                            f"{(tmp_path / 'killed.log').read_text(errors='replace')}"
                assert time.monotonic() < deadline, "no 2 shards in time"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = _sidecars(out)
    assert len(finished) >= len(seen)
    assert len(finished) < N_SHARDS, "the build finished every shard before the kill; nothing was resumed"
    assert IndexDir(out).latest() is None
    with pytest.raises(IndexFormatError, match=r"no committed generation yet.*has not finished"):
        Searcher(out, encoder=minilm)

    # The same command again, to completion (in this process, to reuse the loaded model).
    code, stdout, stderr = _run_main(args, monkeypatch, capsys, minilm)
    assert code == 0, stderr
    match = re.search(r"(\d+) documents in (\d+) shards \((\d+) encoded, (\d+) reused\)", stdout)
    assert match, stdout
    documents, total, encoded, reused = map(int, match.groups())
    assert (documents, total) == (N_DOCS, N_SHARDS)
    assert reused >= len(seen)
    assert reused == len(finished), "every shard with a sidecar is intact and must be reused"
    assert encoded == N_SHARDS - reused  # only the shards that had not finished, the one in flight included

    # Same vectors and same search results as the uninterrupted build (the baseline fixture uses
    # the same corpus, model, dtype and shard size; --store-text and extra dims do not change vectors).
    for mine, theirs in zip(_vector_files(out), _vector_files(baseline[0].output), strict=True):
        assert mine.read_bytes() == theirs.read_bytes(), mine.name
    assert _stored_ids(out) == _stored_ids(baseline[0].output)
    assert [s["files"]["vec.npy"] for s in _sealed_shards(out)] == \
           [s["files"]["vec.npy"] for s in _sealed_shards(baseline[0].output)]
    assert (_segment_dir(out) / "dim384-flat.faiss").read_bytes() == \
           (_segment_dir(baseline[0].output) / "dim384-flat.faiss").read_bytes()
    mine, theirs = Searcher(out, encoder=minilm), Searcher(baseline[0].output, dim=384, encoder=minilm)
    for query in queries[:5]:
        hits = mine.search(query, k=10)
        assert _key(hits) == _key(theirs.search(query, k=10))
        assert all(h.title == "" and h.text == "" for h in hits)  # built without --store-text


# --- 3. bad inputs through the CLI ----------------------------------------------------------

BAD_LINE = 4  # with --shard-size 2: shard 0 (lines 1-2) is encoded, then shard 1 (lines 3-4) fails

BAD_CASES = {
    # name: (line bytes, what stderr must say beyond file:line, field or None)
    "malformed-json": (b'{"_id": "bad", "text": "unterminated', "malformed JSON", None),
    "missing-text": (b'{"_id": "bad", "title": "no text here"}', "missing", "text"),
    "duplicate-id": (b'{"_id": "3", "title": "", "text": "another doc with id 3"}', "duplicate id '3' (first seen on line 3)", "_id"),
    "invalid-utf8": (b'{"_id": "bad", "text": "caf\xe9 au lait"}', "not valid UTF-8", None),
}
SUBPROCESS_CASE = "invalid-utf8"  # through the installed console script; the others through main() in-process


def test_bad_inputs_fail_with_location_and_leave_no_index(corpus, minilm, tmp_path, monkeypatch, capsys):
    if not CLI.is_file():
        pytest.skip(f"{CLI} is absent: install the package (pip install -e .) for the console script")
    good = corpus.read_bytes().splitlines()
    cases = {}
    for name, (line, _, _) in BAD_CASES.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"\n".join(good[: BAD_LINE - 1] + [line] + good[BAD_LINE - 1 : BAD_LINE + 2]) + b"\n")
        out = tmp_path / f"{name}-index"
        args = ["build-index", str(path), "-o", str(out), "--model", "minilm",
                "--shard-size", "2", "--index", "flat", "--dtype", "fp32"]
        cases[name] = (path, out, args)

    path, out, args = cases[SUBPROCESS_CASE]
    proc = subprocess.Popen([str(CLI), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {name: _run_main(args, monkeypatch, capsys, minilm)
               for name, (_, _, args) in cases.items() if name != SUBPROCESS_CASE}
    stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    results[SUBPROCESS_CASE] = (proc.returncode, stdout, stderr)

    for name, (code, stdout, stderr) in results.items():
        path, out, _ = cases[name]
        _, says, field = BAD_CASES[name]
        assert code not in (0, None), (name, stdout)
        message = stderr.strip().splitlines()[-1]
        assert message.startswith(f"error: {path}:{BAD_LINE}: "), (name, stderr)
        assert says in message, (name, message)
        if field:
            assert f"field '{field}'" in message, (name, message)
        assert "Traceback" not in stderr, (name, stderr)
        assert IndexDir(out).latest() is None, name
        assert [p.name for p in _sidecars(out)] == ["00000.json"], name  # shard 0 was done before the bad line
        with pytest.raises(IndexFormatError, match=r"no committed generation yet.*has not finished"):
            Searcher(out, encoder=minilm)


# --- 4. threads -----------------------------------------------------------------------------

def test_concurrent_searches_equal_sequential(searcher, queries):
    """8 threads, each with its own queries, search at once, 3 rounds; answers equal sequential ones."""
    threads, rounds = 8, 3
    per_thread = [queries[i::threads][:2] for i in range(threads)]
    expected = {q: searcher.search(q, k=10) for qs in per_thread for q in qs}
    start = threading.Barrier(threads)

    def work(qs):
        start.wait(timeout=60)
        return [(q, searcher.search(q, k=10)) for _ in range(rounds) for q in qs]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [r for batch in pool.map(work, per_thread) for r in batch]
    assert len(results) == threads * rounds * 2
    for query, hits in results:
        assert hits == expected[query], query


# --- 5. a mismatched encoder ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A seeded random 2-layer Llama with the Llama-3 tokenizer: a DRAMA-shaped encoder that is not MiniLM."""
    tokenizer_dir = shared_path("models", LLAMA3_TOKENIZER.name)
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        bos_token_id=128000, eos_token_id=128001,
    )
    transformers.LlamaModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return load_encoder(str(folder), device="cpu", dtype=torch.float32)


def test_mismatched_encoder_is_refused(baseline, tiny_llama):
    with pytest.raises(IndexFormatError) as caught:
        Searcher(baseline[0].output, encoder=tiny_llama)
    message = str(caught.value)
    for field in ("family", "dim", "query_prefix", "wrap_bos_eos", "fingerprint"):
        assert f"{field}: index has" in message, (field, message)
    assert "dim: index has 384, encoder has 32" in message
    assert "pooling:" not in message and "normalize:" not in message  # equal fields are not listed


# --- 6. Matryoshka dims and funnel search ---------------------------------------------------

def test_matryoshka_dims_funnel_and_add_dim(baseline, searcher, minilm, raw_docs, reference, queries, tmp_path):
    from click.testing import CliRunner

    from dramasearch.cli import cli

    root = _copy_index(baseline[0].output, tmp_path / "index")
    ids = [d["_id"] for d in raw_docs]
    low = Searcher(root, dim=64, encoder=minilm)
    assert low.dim == 64 and searcher.dim == 384
    for query in queries[:6]:
        q = minilm.encode_queries([query], show_progress=False)
        _check_hits(low.search(query, k=10), _unit(reference, 64) @ _unit(q, 64)[0], ids, 10)
        # Candidates from dim 64 covering the corpus, re-scored at 384 == the exact 384 search.
        funnel = low.search(query, k=10, rerank_dim=384, candidates=N_DOCS)
        exact = searcher.search(query, k=10)
        assert [(h.docid, h.rank, h.title, h.text) for h in funnel] == [(h.docid, h.rank, h.title, h.text) for h in exact]
        np.testing.assert_allclose([h.score for h in funnel], [h.score for h in exact], atol=1e-5)

    embeddings = _vector_files(root)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in embeddings}
    sidecars_before = {p.name: p.read_bytes() for p in _sidecars(root)}
    new = add_dims(root, [128])
    assert [(ix["dim"], ix["kind"]) for ix in new] == [(128, "flat")]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in embeddings} == before  # nothing re-encoded
    assert {p.name: p.read_bytes() for p in _sidecars(root)} == sidecars_before
    assert IndexDir(root).read().dims == [64, 128, 384]
    mid = Searcher(root, dim=128, encoder=minilm)
    q = minilm.encode_queries([queries[0]], show_progress=False)
    _check_hits(mid.search(queries[0], k=10), _unit(reference, 128) @ _unit(q, 128)[0], ids, 10)

    result = CliRunner().invoke(cli, ["info", str(root)])
    assert result.exit_code == 0, result.output
    assert [int(d) for d in re.findall(r"^index: dim (\d+) flat", result.output, re.M)] == [64, 128, 384]
    assert f"documents: {N_DOCS} live, 0 deleted" in result.output and "in 1 segments" in result.output


# --- 7. sharded builds ----------------------------------------------------------------------

def test_shard_runs_then_assembly_equal_single_build(baseline, searcher, minilm, tmp_path, queries):
    settings = dataclasses.replace(baseline[0], output=str(tmp_path / "index"))
    folder = IndexDir(settings.output)
    first = build_index(dataclasses.replace(settings, shard=(0, 2)), encoder=minilm)
    assert first.shards_encoded == [0, 2, 4, 6, 8] and not first.complete
    assert f"dramasearch merge {settings.output}" in first.summary()
    assert folder.latest() is None
    second = build_index(dataclasses.replace(settings, shard=(1, 2)), encoder=minilm)
    assert second.shards_encoded == [1, 3, 5, 7] and second.shards_reused == 5 and not second.complete
    assert folder.latest() is None
    assert not set(first.shards_encoded) & set(second.shards_encoded)

    final = build_index(settings, encoder=minilm)
    assert final.shards_encoded == [] and final.shards_reused == N_SHARDS and final.complete
    assert final.documents == N_DOCS
    assert _sealed_shards(settings.output) == _sealed_shards(baseline[0].output)
    sharded = Searcher(settings.output, encoder=minilm)
    for query in queries[:5]:
        assert sharded.search(query, k=10) == searcher.search(query, k=10)


def test_two_device_workers_equal_one_process(raw_docs, corpus, baseline, tmp_path):
    """devices=("cpu", "cpu"): two spawned workers (each loads the model) encode interleaved shards."""
    subset = tmp_path / "corpus30.jsonl"
    subset.write_bytes(b"\n".join(corpus.read_bytes().splitlines()[:30]) + b"\n")
    settings = _settings(subset, tmp_path / "index", devices=("cpu", "cpu"))
    started = time.perf_counter()
    report = build_index(settings)  # no encoder: the workers and the assembling run load their own
    elapsed = time.perf_counter() - started
    # The workers encoded every shard; the assembling run only reused them.
    assert report.shards_encoded == [] and report.shards_reused == 3 and report.complete
    for n in range(3):  # the subset's shards are the baseline's first three, same contents
        assert _vector_files(settings.output)[n].read_bytes() == _vector_files(baseline[0].output)[n].read_bytes(), n
    assert _sealed_shards(settings.output) == _sealed_shards(baseline[0].output)[:3]
    print(f"two-worker build of 30 docs: {elapsed:.1f}s")


# --- 8. changed settings --------------------------------------------------------------------

def test_rerun_with_other_settings_is_refused_and_same_settings_reuse_everything(baseline, minilm, tmp_path):
    root = _copy_index(baseline[0].output, tmp_path / "index")
    settings = dataclasses.replace(baseline[0], output=str(root))
    for change in ({"shard_size": 20}, {"store_text": False}):
        with pytest.raises(IndexFormatError, match=rf"other settings \({next(iter(change))} differ\)"):
            build_index(dataclasses.replace(settings, **change), encoder=minilm)
    assert IndexDir(root).latest() == 1  # a refused run leaves the index loadable

    faiss_files = sorted(_segment_dir(root).glob("*.faiss"))
    mtimes = [p.stat().st_mtime_ns for p in faiss_files]
    again = build_index(settings, encoder=minilm)
    assert again.shards_encoded == [] and again.shards_reused == N_SHARDS and again.complete
    assert [p.stat().st_mtime_ns for p in faiss_files] == mtimes  # FAISS indexes reused too


def test_dims_beyond_the_model_fail_before_any_encoding(minilm, corpus, tmp_path):
    settings = BuildSettings(corpus=str(corpus), output=str(tmp_path / "ix"), model="minilm", dims=(256, 999))
    with pytest.raises(ValueError, match="dims: dim 999 is outside 1..384"):
        build_index(settings, encoder=minilm)
    assert not (tmp_path / "ix").exists()


def test_searcher_as_context_manager_releases_its_files(baseline, minilm):
    before = len(os.listdir("/proc/self/fd"))
    with Searcher(baseline[0].output, encoder=minilm) as s:
        assert s.search("information retrieval", k=1)
        assert len(os.listdir("/proc/self/fd")) > before
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_failing_device_worker_reports_its_real_error(corpus, tmp_path):
    """A bad input line inside a worker's shard reaches the user as the worker's own error message."""
    lines = corpus.read_bytes().splitlines()[:12]
    lines[7] = b'{"_id": "bad", "title": "no text"}'  # line 8: in shard 1 with shard_size 5
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    settings = _settings(bad, tmp_path / "index", devices=("cpu", "cpu"), shard_size=5)
    with pytest.raises(IndexFormatError, match=rf"encoding workers failed on devices \[.*\]: cpu: {re.escape(str(bad))}:8: "
                                               r"field 'text': missing or null"):
        build_index(settings)
    assert IndexDir(settings.output).latest() is None
