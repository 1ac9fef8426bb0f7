"""A segment: the immutable rows that one build, add, compact, refresh or import writes.

    segments/<name>/
      NNNNN.vec.npy      fp16 [rows, full_dim] vectors
      NNNNN.ids.bin      document ids, UTF-8, concatenated     NNNNN.ids.off.npy   uint64 [docs + 1]
      NNNNN.docs.bin     msgpack [title, text] per document    NNNNN.docs.off.npy  uint64 [docs + 1]
                         (empty strings unless built with --store-text)
      NNNNN.hash.npy     uint64 [docs]: hash of each document's title and text (refresh checks it)
      NNNNN.rows.npy     chunk mode: int64 [rows, 4] = (document in shard, chunk, start, end)
      NNNNN.json         the shard's sidecar, written last: counts, corpus-slice hash, file checksums
      lookup.npy         sealed: [docs] (id hash, document number) sorted by hash, for docid lookups
      docrows.npy        sealed: int64 [docs + 1], first row of each document
      dim256-flat.faiss  one FAISS index per (dim, kind); FAISS id = row number in the segment
      segment.json       written last when sealed: shards, counts, checksums

A shard is the unit of resumable work (a crash loses at most the shard in flight); a segment is
the unit of visibility (a generation lists whole segments). Row = document outside chunk mode.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import msgpack
import numpy as np

from ..errors import IndexDamagedError
from ..fsutil import atomic_write_bytes
from .records import parse_record, read_record, record_bytes
from ..idhash import id_hashes
from .files import FileCache, file_problem, load_npy, npy_bytes, npy_header_problem, npy_header_size, read_npy_rows, \
    sha256_bytes

SEGMENT_FILE = "segment.json"
LOOKUP = "lookup.npy"
DOCROWS = "docrows.npy"
LOOKUP_DTYPE = np.dtype([("hash", "<u8"), ("doc", "<i8")])
SHARD_FILES = ("vec.npy", "ids.bin", "ids.off.npy", "docs.bin", "docs.off.npy", "hash.npy")
CHUNK_FILE = "rows.npy"


# Offsets of the documents one batch asks for are read in one piece when they span at most this
# many rows (512 KiB of uint64); wider spreads (huge shards) are read pair by pair.
OFFSETS_SPAN = 1 << 16
# Their records are read in one piece too when that reads at most 256 KiB (ids; texts rarely).
RECORDS_SPAN = 1 << 18


def shard_stem(number: int) -> str:
    return f"{number:05d}"


@dataclass(frozen=True)
class FileInfo:
    """Identity of a file when written: size, checksum and (for .npy) where the data starts."""

    bytes: int
    sha256: str
    header: int = 0


@dataclass(frozen=True)
class ShardInfo:
    number: int
    rows: int
    documents: int
    content_sha256: str  # the corpus slice it was made from ("" for imported vectors)
    files: dict[str, dict]  # file suffix -> FileInfo fields
    key_sha256: str = ""  # the settings it was encoded with (build-index): a rerun with others never reuses it
    empty: int = 0
    truncated: int = 0
    tokens: int = 0

    def file(self, suffix: str) -> FileInfo:
        return FileInfo(**self.files[suffix])


@dataclass(frozen=True)
class ShardData:
    """What an encoder (or an import) produced for one shard, before it is written."""

    vectors: np.ndarray  # [rows, dim]
    ids: Sequence[str]  # one per document
    fields: Sequence[tuple[str, str]]  # (title, text) per document, ("", "") when not stored
    content_hashes: np.ndarray  # uint64 per document
    chunk_rows: np.ndarray | None = None  # chunk mode: int64 [rows, 4]


def write_shard(folder: Path, number: int, data: ShardData, content_sha256: str, key_sha256: str = "",
                **stats: int) -> ShardInfo:
    """Write a shard's files atomically, then its sidecar: the shard exists once the sidecar does."""
    id_bytes = [d.encode("utf-8", "surrogatepass") for d in data.ids]
    doc_bytes = [msgpack.packb(list(f)) for f in data.fields]
    payloads = {
        "vec.npy": npy_bytes(np.asarray(data.vectors, dtype=np.float16)),
        "ids.bin": b"".join(id_bytes),
        "ids.off.npy": npy_bytes(_offsets(id_bytes)),
        "docs.bin": b"".join(doc_bytes),
        "docs.off.npy": npy_bytes(_offsets(doc_bytes)),
        "hash.npy": npy_bytes(np.asarray(data.content_hashes, dtype=np.uint64)),
    }
    if data.chunk_rows is not None:
        payloads[CHUNK_FILE] = npy_bytes(np.asarray(data.chunk_rows, dtype=np.int64).reshape(-1, 4))
    files = {}
    for suffix, payload in payloads.items():
        atomic_write_bytes(folder / f"{shard_stem(number)}.{suffix}", payload)
        header = npy_header_size(payload) if suffix.endswith(".npy") else 0
        files[suffix] = dataclasses.asdict(FileInfo(len(payload), sha256_bytes(payload), header))
    info = ShardInfo(number=number, rows=len(data.vectors), documents=len(data.ids),
                     content_sha256=content_sha256, files=files, key_sha256=key_sha256, **stats)
    atomic_write_bytes(folder / f"{shard_stem(number)}.json", record_bytes(dataclasses.asdict(info)))
    return info


def _offsets(parts: Sequence[bytes]) -> np.ndarray:
    out = np.zeros(len(parts) + 1, dtype=np.uint64)
    np.cumsum([len(p) for p in parts], out=out[1:])
    return out


def read_shard_info(folder: Path, number: int) -> ShardInfo | None:
    """The sidecar of a finished shard (None when absent or damaged: the shard is then encoded again)."""
    path = folder / f"{shard_stem(number)}.json"
    if not path.is_file():
        return None
    try:
        return ShardInfo(**read_record(path, "shard sidecar"))
    except (IndexDamagedError, TypeError):
        return None


def shard_is_whole(folder: Path, info: ShardInfo, full: bool = False) -> bool:
    """Resume's check: every file has the size its sidecar recorded (and, when `full`, its checksum:
    a repairing rerun re-encodes exactly the damaged shards)."""
    return not any(file_problem(folder / f"{shard_stem(info.number)}.{suffix}", fields, full, cached=False)
                   for suffix, fields in info.files.items())


@dataclass(frozen=True)
class SegmentInfo:
    """A sealed segment (segment.json)."""

    name: str
    rows: int
    documents: int
    dim: int  # full dimension of the stored vectors
    chunked: bool
    shards: list[dict]  # ShardInfo fields
    files: dict[str, dict] = field(default_factory=dict)  # lookup.npy, docrows.npy -> FileInfo fields
    empty: int = 0  # documents with no text
    truncated: int = 0  # documents cut at the model's max length

    def shard_infos(self) -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.shards]


def seal_segment(folder: Path, name: str, shards: Sequence[ShardInfo], dim: int, chunked: bool) -> SegmentInfo:
    """Write the docid lookup and document->rows tables, then segment.json."""
    hashes, doc_rows = [], [np.zeros(1, dtype=np.int64)]
    row_base = 0
    for info in shards:
        hashes.append(id_hashes(read_shard_ids(folder, info)))
        if chunked:
            docs_in_shard = load_npy(folder / f"{shard_stem(info.number)}.{CHUNK_FILE}")[:, 0]
            counts = np.bincount(docs_in_shard, minlength=info.documents)
        else:
            counts = np.ones(info.documents, dtype=np.int64)
        doc_rows.append(row_base + np.cumsum(counts))
        row_base += info.rows
    table = np.empty(sum(len(h) for h in hashes), dtype=LOOKUP_DTYPE)
    table["hash"] = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    table["doc"] = np.arange(len(table), dtype=np.int64)
    table = table[np.argsort(table["hash"], kind="stable")]
    files = {}
    for fname, array in ((LOOKUP, table), (DOCROWS, np.concatenate(doc_rows))):
        payload = npy_bytes(array)
        atomic_write_bytes(folder / fname, payload)
        files[fname] = dataclasses.asdict(FileInfo(len(payload), sha256_bytes(payload), npy_header_size(payload)))
    info = SegmentInfo(name=name, rows=row_base, documents=len(table), dim=dim, chunked=chunked,
                       shards=[dataclasses.asdict(s) for s in shards], files=files,
                       empty=sum(s.empty for s in shards), truncated=sum(s.truncated for s in shards))
    atomic_write_bytes(folder / SEGMENT_FILE, record_bytes(dataclasses.asdict(info)))
    return info


def read_shard_ids(folder: Path, info: ShardInfo) -> list[str]:
    stem = shard_stem(info.number)
    data = (folder / f"{stem}.ids.bin").read_bytes()
    offsets = load_npy(folder / f"{stem}.ids.off.npy").tolist()
    return [data[offsets[i]:offsets[i + 1]].decode("utf-8", "surrogatepass") for i in range(info.documents)]


def read_segment_info(folder: Path, sha256: str | None = None) -> SegmentInfo:
    """segment.json, checked against its own checksum and (when given) the one its generation recorded."""
    path = folder / SEGMENT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IndexDamagedError(f"{path}: segment record is missing") from None
    if sha256 and sha256_bytes(raw) != sha256:
        raise IndexDamagedError(f"{path}: segment record differs from the one its generation recorded "
                                "(swapped, edited or damaged)")
    try:
        return SegmentInfo(**parse_record(raw, path, "segment record"))
    except TypeError as exc:
        raise IndexDamagedError(f"{path}: segment record has unexpected fields ({exc})") from None


class Segment:
    """Reads one sealed segment: ids, stored fields and vectors by row, docid lookups.

    Holds O(shards) numbers in memory; every row read is a pread through the shared cache.
    """

    def __init__(self, folder: Path, info: SegmentInfo, cache: FileCache, info_sha256: str = ""):
        self.folder, self.info, self.cache, self.info_sha256 = folder, info, cache, info_sha256
        self._prefix = str(folder)
        self.shards = info.shard_infos()
        self.row_starts = np.cumsum([0] + [s.rows for s in self.shards])
        self.doc_starts = np.cumsum([0] + [s.documents for s in self.shards])

    @property
    def name(self) -> str:
        return self.info.name

    def _file(self, shard: ShardInfo, suffix: str) -> str:
        """A shard file's path as a string, for per-row reads (building a Path costs more than the pread)."""
        return f"{self._prefix}/{shard_stem(shard.number)}.{suffix}"

    def _path(self, shard: ShardInfo, suffix: str) -> Path:
        return Path(self._file(shard, suffix))

    def _shard_of(self, starts: np.ndarray, position: int) -> int:
        return int(np.searchsorted(starts, position, side="right")) - 1

    def _records(self, docs: Sequence[int], name: str) -> list[bytes]:
        """The `name`.bin records of `docs` (ids or docs), found through `name`.off.npy.

        Batched because a search batch touches thousands of rows: the offsets of each shard
        touched come in one read when they lie within OFFSETS_SPAN rows of each other, and the
        records in one read when they are close (ids), else one pread each (long texts).
        """
        docs = np.asarray(docs, dtype=np.int64).reshape(-1)
        out: list[bytes] = [b""] * len(docs)
        if not len(docs):
            return out
        shard_of = np.searchsorted(self.doc_starts, docs, side="right") - 1
        for s in np.unique(shard_of).tolist():
            where = np.nonzero(shard_of == s)[0]
            shard = self.shards[s]
            local = docs[where] - int(self.doc_starts[s])
            starts, ends = self._offset_pairs(shard, f"{name}.off.npy", local)
            path = self._file(shard, f"{name}.bin")
            first, last = min(starts), max(ends)
            if last - first <= RECORDS_SPAN:
                block = self.cache.pread(path, last - first, first)  # small records (ids): one read
                for i, start, end in zip(where.tolist(), starts, ends):
                    out[i] = block[start - first:end - first]
            else:
                for i, start, end in zip(where.tolist(), starts, ends):
                    out[i] = self.cache.pread(path, end - start, start)
        return out

    def _offset_pairs(self, shard: ShardInfo, suffix: str, local: np.ndarray) -> tuple[list[int], list[int]]:
        """(start, end) byte offsets of shard-local documents `local` from an offsets file."""
        header = shard.file(suffix).header
        path = self._file(shard, suffix)
        lo, hi = int(local.min()), int(local.max()) + 2
        if hi - lo <= OFFSETS_SPAN:
            offsets = read_npy_rows(self.cache, path, header, 8, np.uint64, (), lo, hi - lo)
            return offsets[local - lo].tolist(), offsets[local - lo + 1].tolist()
        pairs = [read_npy_rows(self.cache, path, header, 8, np.uint64, (), d, 2) for d in local.tolist()]
        return [int(p[0]) for p in pairs], [int(p[1]) for p in pairs]

    def docids(self, docs: Sequence[int]) -> list[str]:
        return [raw.decode("utf-8", "surrogatepass") for raw in self._records(docs, "ids")]

    def docid(self, doc: int) -> str:
        return self.docids([doc])[0]

    def fields_of(self, docs: Sequence[int]) -> list[tuple[str, str]]:
        """(title, text) of each of `docs`."""
        return [(title, text) for title, text in map(msgpack.unpackb, self._records(docs, "docs"))]

    def fields(self, doc: int) -> tuple[str, str]:
        return self.fields_of([doc])[0]

    def content_hash(self, doc: int) -> int:
        s = self._shard_of(self.doc_starts, doc)
        shard = self.shards[s]
        info = shard.file("hash.npy")
        return int(read_npy_rows(self.cache, self._file(shard, "hash.npy"), info.header, 8, np.uint64, (),
                                 doc - int(self.doc_starts[s]), 1)[0])

    def row_info(self, row: int) -> tuple[int, int, int, int]:
        """(document number in the segment, chunk, start, end); chunk fields are 0 outside chunk mode."""
        if not self.info.chunked:
            return row, 0, 0, 0
        s = self._shard_of(self.row_starts, row)
        shard = self.shards[s]
        info = shard.file(CHUNK_FILE)
        local = read_npy_rows(self.cache, self._file(shard, CHUNK_FILE), info.header, 32, np.int64, (4,),
                              row - int(self.row_starts[s]), 1)[0]
        return int(local[0] + self.doc_starts[s]), int(local[1]), int(local[2]), int(local[3])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """Stored full-dim vectors of `rows` as float32."""
        out = np.empty((len(rows), self.info.dim), dtype=np.float32)
        row_bytes = 2 * self.info.dim
        for i, row in enumerate(np.asarray(rows).tolist()):
            s = self._shard_of(self.row_starts, row)
            shard = self.shards[s]
            out[i] = read_npy_rows(self.cache, self._file(shard, "vec.npy"), shard.file("vec.npy").header, row_bytes,
                                   np.float16, (self.info.dim,), row - int(self.row_starts[s]), 1)[0]
        return out

    def shard_documents(self, number: int) -> tuple[list[str], list[tuple[str, str]]]:
        """One shard's ids and (title, text) records, read in bulk (compaction streams shard by shard)."""
        shard = self.shards[number]
        ids = read_shard_ids(self.folder, shard)
        data = self._path(shard, "docs.bin").read_bytes()
        offsets = load_npy(self._path(shard, "docs.off.npy")).tolist()
        fields = [tuple(msgpack.unpackb(data[offsets[i]:offsets[i + 1]])) for i in range(shard.documents)]
        return ids, fields

    def shard_vectors(self, number: int) -> np.ndarray:
        """One shard's vectors, memory-mapped (for streaming builds; the mapping closes when dropped)."""
        shard = self.shards[number]
        return np.load(self._path(shard, "vec.npy"), mmap_mode="r", allow_pickle=False)

    def vector_blocks(self):
        for number in range(len(self.shards)):
            yield np.asarray(self.shard_vectors(number))

    def doc_rows(self, doc: int) -> tuple[int, int]:
        info = self.info.files[DOCROWS]
        pair = read_npy_rows(self.cache, self.folder / DOCROWS, info["header"], 8, np.int64, (), doc, 2)
        return int(pair[0]), int(pair[1])

    def lookup_table(self) -> np.ndarray:
        """The whole (hash, doc) table in memory: 16 bytes per document, for batched lookups."""
        return load_npy(self.folder / LOOKUP)

    def find(self, docid: str, hash_value: int) -> int | None:
        """Document number of `docid`, by binary search over lookup.npy with preads."""
        info = self.info.files[LOOKUP]
        path, lo, hi = self.folder / LOOKUP, 0, self.info.documents
        while lo < hi:
            mid = (lo + hi) // 2
            entry = read_npy_rows(self.cache, path, info["header"], 16, LOOKUP_DTYPE, (), mid, 1)[0]
            if int(entry["hash"]) < hash_value:
                lo = mid + 1
            else:
                hi = mid
        while lo < self.info.documents:
            entry = read_npy_rows(self.cache, path, info["header"], 16, LOOKUP_DTYPE, (), lo, 1)[0]
            if int(entry["hash"]) != hash_value:
                return None
            if self.docid(int(entry["doc"])) == docid:
                return int(entry["doc"])
            lo += 1
        return None

    def problems(self, full: bool, cached: bool = True) -> list[str]:
        """Everything wrong with the segment's files: sizes and headers always, checksums when `full`."""
        found = []
        for shard in self.shards:
            sizes = [file_problem(self._path(shard, suffix), info, full, cached) for suffix, info in shard.files.items()]
            found += sizes if any(sizes) else self._shard_shapes(shard)
        for fname, info in self.info.files.items():
            found.append(file_problem(self.folder / fname, info, full, cached))
        if not any(found):
            dims = {LOOKUP: (LOOKUP_DTYPE, (self.info.documents,)), DOCROWS: (np.int64, (self.info.documents + 1,))}
            found += [npy_header_problem(self.cache, self.folder / f, self.info.files[f]["header"], *dims[f])
                      for f in dims]
        return [p for p in found if p]

    def _shard_shapes(self, shard: ShardInfo) -> list[str | None]:
        """Headers agree with the counts, and the id/field offsets end where their data files end."""
        rows, docs = shard.rows, shard.documents
        shapes = {"vec.npy": (np.float16, (rows, self.info.dim)), "ids.off.npy": (np.uint64, (docs + 1,)),
                  "docs.off.npy": (np.uint64, (docs + 1,)), "hash.npy": (np.uint64, (docs,))}
        if CHUNK_FILE in shard.files:
            shapes[CHUNK_FILE] = (np.int64, (rows, 4))
        found = [npy_header_problem(self.cache, self._path(shard, suffix), shard.file(suffix).header, *expected)
                 for suffix, expected in shapes.items()]
        if not any(found):
            for data, offsets in (("ids.bin", "ids.off.npy"), ("docs.bin", "docs.off.npy")):
                end = int(read_npy_rows(self.cache, self._path(shard, offsets), shard.file(offsets).header, 8,
                                        np.uint64, (), docs, 1)[0])
                if end != shard.file(data).bytes:
                    found.append(f"{self._path(shard, offsets)}: offsets end at {end}, but "
                                 f"{self._path(shard, data)} holds {shard.file(data).bytes} bytes")
        return found

    def sidecar_problems(self) -> list[str]:
        """Shard sidecars (used when a build resumes) must equal the sealed segment's copy."""
        found = []
        for shard in self.shards:
            path = self.folder / f"{shard_stem(shard.number)}.json"
            if read_shard_info(self.folder, shard.number) != shard:
                found.append(f"{path}: shard sidecar is missing, damaged, or differs from {SEGMENT_FILE}")
        return found
