"""Damage is detected, never searched, and a rerun of build-index repairs it.

For every kind of file in a chunk-mode index with BM25 postings (so chunk spans and the lexical
files are covered too), three kinds of
damage: one flipped bit, a truncation, and a swap with the same file of another index built
from a different corpus of the same shape (so many swapped files have the right size and only
their checksums tell). Each case must fail at open with a message naming the file, be listed
by verify, and be repaired by rerunning the same build-index: afterwards verify is clean and
the hits equal those of the undamaged index.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dramasearch.errors import IndexFormatError
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.snapshot import verify_index
from dramasearch.searcher import Searcher

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["how do I keep a sourdough starter alive", "tomato plants in pots", "fixing a flat bicycle tire"]
DAMAGE = ("flip", "truncate", "swap")
SHIFT = str.maketrans("abcdefghijklmnopqrstuvwxyz", "bcdefghijklmnopqrstuvwxyza")


def _settings(corpus: Path, out: Path) -> BuildSettings:
    return BuildSettings(corpus=str(corpus), output=str(out), model="minilm", dims=(384, 64), index_kind="flat",
                         store_text=True, shard_size=10, long_doc="chunk", chunk_tokens=32, stride=8,
                         dtype="fp32", bm25=True, show_progress=False)


def _other_corpus(path: Path) -> Path:
    """Same number of documents and shard byte totals, other contents: each shard's ids and texts
    are rotated by one place (so offsets differ), ids upper-cased, words reversed and their letters
    shifted (so the BM25 vocabulary differs too)."""
    records = [json.loads(line) for line in (REPO / "examples" / "tiny" / "corpus.jsonl").read_text().splitlines()]
    originals = [dict(r) for r in records]
    for i, r in enumerate(records):
        source = originals[i // 10 * 10 + (i + 1) % 10]
        r["_id"] = source["_id"].upper()
        r["title"] = source["title"]
        r["text"] = " ".join(reversed(source["text"].split(" "))).translate(SHIFT)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _hits(root: Path, encoder) -> list[list[tuple[str, float]]]:
    with Searcher(root, encoder=encoder) as searcher:
        return [[(h.docid, round(h.score, 4)) for h in hits] for hits in searcher.batch_search(QUERIES, k=5)]


def _kinds(root: Path) -> dict[str, Path]:
    """One file per kind: shard numbers and generation numbers collapse to N; lock files are not data."""
    kinds: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"):
        kinds.setdefault(re.sub(r"\d{5,}", "N", str(path.relative_to(root))), path.relative_to(root))
    return kinds


@pytest.fixture(scope="module")
def indexes(minilm, tmp_path_factory):
    base = tmp_path_factory.mktemp("corruption")
    good, other = base / "good", base / "other"
    build_index(_settings(REPO / "examples" / "tiny" / "corpus.jsonl", good), encoder=minilm)
    build_index(_settings(_other_corpus(base / "other.jsonl"), other), encoder=minilm)
    return good, other, _hits(good, minilm)


def test_every_kind_of_file_is_covered(indexes):
    good, _, _ = indexes
    kinds = set(_kinds(good))
    expected = {"dramasearch-index.json", "generations/N.json", "segments/seg-N/segment.json",
                "segments/seg-N/lookup.npy", "segments/seg-N/docrows.npy", "segments/seg-N/dim384-flat.faiss",
                "segments/seg-N/dim64-flat.faiss"} | {f"segments/seg-N/N.{s}" for s in (
                    "json", "vec.npy", "ids.bin", "ids.off.npy", "docs.bin", "docs.off.npy", "hash.npy", "rows.npy")} \
        | {f"segments/seg-N/bm25.{s}" for s in (
            "json", "terms.bin", "terms.off.npy", "ptr.npy", "docs.npy", "tf.npy", "len.npy")}
    assert kinds == expected


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        assert other.read_bytes() != data
        shutil.copyfile(other, path)


@pytest.mark.parametrize("how", DAMAGE)
def test_damage_is_detected_never_searched_and_rebuild_repairs_it(indexes, minilm, tmp_path, how):
    good, other, expected = indexes
    report = []
    for kind, relative in _kinds(good).items():
        root = tmp_path / re.sub(r"\W", "_", kind)
        shutil.copytree(good, root, ignore=shutil.ignore_patterns("*.lock"))
        _damage(root / relative, how, other / relative)

        with pytest.raises(IndexFormatError) as opened:
            Searcher(root, encoder=minilm)
        assert relative.name in str(opened.value), f"{kind}/{how}: the error does not name the file: {opened.value}"
        assert "build-index" in str(opened.value), f"{kind}/{how}: the error gives no repair command"
        try:
            _, problems = verify_index(root)
            listed = "\n".join(problems)
        except IndexFormatError as exc:  # a damaged marker or generation: verify cannot go further
            listed = str(exc)
        assert relative.name in listed, f"{kind}/{how}: verify does not list the file: {listed}"

        result = build_index(_settings(REPO / "examples" / "tiny" / "corpus.jsonl", root), encoder=minilm)
        assert result.complete
        assert verify_index(root)[1] == [], f"{kind}/{how}: still damaged after the rerun"
        assert _hits(root, minilm) == expected, f"{kind}/{how}: repaired hits differ"
        report.append((kind, result.repaired, result.shards_encoded))
        shutil.rmtree(root)
    # Damage inside one shard's files re-encodes that shard alone.
    for kind, repaired, encoded in report:
        if kind.startswith("segments/seg-N/N.") and not kind.endswith(".json"):
            assert encoded == [0], (kind, encoded)
