"""The on-disk index: manifest, full-dimension embedding shards, docstore, FAISS files.

Layout of an index folder:

    manifest.json              written last and atomically; its presence makes the index loadable
    shards/00000.emb.npy       fp16 [rows, full_dim] embeddings, corpus order
    shards/00000.ids.msgpack   list of document ids of those rows
    shards/00000.docs.msgpack  concatenated [title, text] records (empty strings without --store-text)
    shards/00000.offsets.npy   uint64 byte offsets of those records (rows + 1), for random access
    shards/00000.spans.npy     chunk mode only: int64 [rows, 3] = (chunk number, start, end) character
                               offsets of each chunk in its document's text (title + " " + text)
    shards/00000.json          shard sidecar, written after the four files above: a shard exists
                               only once its sidecar does, which is what makes builds resumable
    faiss/dim256-hnsw.faiss    one FAISS index per (dim, kind)

Nothing is pickled: numpy files load with allow_pickle=False, the rest is msgpack and JSON.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import msgpack
import numpy as np

from .errors import IndexFormatError
from .fsutil import atomic_write, atomic_write_bytes

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    """What a finished shard holds; `content_sha256` detects a changed corpus on resume."""

    number: int
    rows: int  # one per document, or one per chunk in chunk mode
    content_sha256: str
    emb_sha256: str
    empty: int = 0
    truncated: int = 0
    tokens: int = 0
    documents: int = 0


@dataclass
class Manifest:
    encoder: dict
    build: dict  # settings that decide the shard contents (see build.BuildSettings)
    shards: list[dict]
    indexes: list[dict] = field(default_factory=list)  # IndexSpec dicts plus "file" and "bytes"
    documents: int = 0
    empty: int = 0
    truncated: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def dims(self) -> list[int]:
        return sorted({ix["dim"] for ix in self.indexes})


def shard_name(number: int) -> str:
    return f"{number:05d}"


class IndexFolder:
    """Paths and atomic reads/writes inside one index folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.shards_dir = self.root / "shards"
        self.faiss_dir = self.root / "faiss"

    # --- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def has_manifest(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> Manifest:
        if not self.has_manifest():
            hint = " (a build was started here but has not finished: rerun build-index to resume)" if self.shards_dir.is_dir() else ""
            raise IndexFormatError(f"{self.root}: not a dramasearch index: {MANIFEST} is missing{hint}")
        raw = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        if raw.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{self.manifest_path}: format version {raw.get('format_version')} is not {FORMAT_VERSION}; rebuild the index"
            )
        return Manifest(**raw)

    def write_manifest(self, manifest: Manifest) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(dataclasses.asdict(manifest), indent=2).encode())

    def remove_manifest(self) -> None:
        """Make the folder unloadable before changing what the manifest describes."""
        self.manifest_path.unlink(missing_ok=True)

    # --- shards ---------------------------------------------------------------------------
    def shard_path(self, number: int, suffix: str) -> Path:
        return self.shards_dir / f"{shard_name(number)}{suffix}"

    def read_shard_info(self, number: int) -> ShardInfo | None:
        path = self.shard_path(number, ".json")
        if not path.is_file():
            return None
        return ShardInfo(**json.loads(path.read_text(encoding="utf-8")))

    def write_shard(
        self,
        info: ShardInfo,
        embeddings: np.ndarray,
        ids: Sequence[str],
        fields: Sequence[tuple[str, str]],
        spans: Sequence[tuple[int, int, int]] | None = None,
    ) -> ShardInfo:
        """Write a shard's files, then its sidecar; returns the info with the embedding checksum."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float16)
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        emb_bytes = buf.getvalue()
        atomic_write_bytes(self.shard_path(info.number, ".emb.npy"), emb_bytes)
        atomic_write_bytes(self.shard_path(info.number, ".ids.msgpack"), msgpack.packb(list(ids)))
        offsets = np.zeros(len(fields) + 1, dtype=np.uint64)

        def write_docs(f) -> None:
            for i, record in enumerate(fields):
                f.write(msgpack.packb(list(record)))
                offsets[i + 1] = f.tell()

        atomic_write(self.shard_path(info.number, ".docs.msgpack"), write_docs)
        atomic_write(self.shard_path(info.number, ".offsets.npy"), lambda f: np.save(f, offsets, allow_pickle=False))
        if spans is not None:
            table = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
            atomic_write(self.shard_path(info.number, ".spans.npy"), lambda f: np.save(f, table, allow_pickle=False))
        info = dataclasses.replace(info, emb_sha256=hashlib.sha256(emb_bytes).hexdigest())
        atomic_write_bytes(self.shard_path(info.number, ".json"), json.dumps(dataclasses.asdict(info)).encode())
        return info

    def shard_is_intact(self, info: ShardInfo) -> bool:
        """A shard counts as finished only if its embeddings still hash to the sidecar's checksum."""
        path = self.shard_path(info.number, ".emb.npy")
        return path.is_file() and file_sha256(path) == info.emb_sha256

    def load_embeddings(self, number: int, mmap: bool = True) -> np.ndarray:
        return np.load(self.shard_path(number, ".emb.npy"), mmap_mode="r" if mmap else None, allow_pickle=False)

    def load_ids(self, number: int) -> list[str]:
        return msgpack.unpackb(self.shard_path(number, ".ids.msgpack").read_bytes())

    def iter_embedding_blocks(self, shards: Sequence[dict]) -> Iterator[np.ndarray]:
        for shard in shards:
            yield np.asarray(self.load_embeddings(shard["number"]))


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class DocStore:
    """Row -> (doc id, title, text[, chunk span]). Ids live in memory; titles and texts are read on demand.

    Reads use `os.pread`, which has no shared file position, so concurrent searches are safe.
    """

    def __init__(self, folder: IndexFolder, shards: Sequence[dict]):
        self.ids: list[str] = []
        starts: list[int] = []
        self._fds: list[int] = []
        self._offsets: list[np.ndarray] = []
        spans: list[np.ndarray] = []
        for shard in shards:
            starts.append(len(self.ids))
            self.ids.extend(folder.load_ids(shard["number"]))
            self._offsets.append(np.load(folder.shard_path(shard["number"], ".offsets.npy"), mmap_mode="r"))
            self._fds.append(os.open(folder.shard_path(shard["number"], ".docs.msgpack"), os.O_RDONLY))
            span_path = folder.shard_path(shard["number"], ".spans.npy")
            if span_path.is_file():
                spans.append(np.load(span_path, allow_pickle=False))
        self.starts = np.asarray(starts, dtype=np.int64)
        # Chunk mode: (chunk number, start, end) per row; None when rows are whole documents.
        self.spans: np.ndarray | None = np.concatenate(spans) if spans else None

    def __len__(self) -> int:
        return len(self.ids)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row within shard) for global row numbers."""
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return shard, rows - self.starts[shard]

    def fields(self, row: int) -> tuple[str, str]:
        """(title, text) of a row (in chunk mode: the chunk's text); empty without --store-text."""
        shard = int(np.searchsorted(self.starts, row, side="right")) - 1
        local = row - int(self.starts[shard])
        start, end = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
        title, text = msgpack.unpackb(os.pread(self._fds[shard], end - start, start))
        return title, text

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds, self._offsets = [], []  # the memory-mapped offsets hold file handles too
