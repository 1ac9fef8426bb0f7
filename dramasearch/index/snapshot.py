"""A snapshot: one pinned generation, read through a bounded descriptor cache.

Search, `get`, updates and verification all read an index through a snapshot, so they see one
generation from start to end. Deletes are applied at search time as a FAISS IDSelectorBitmap
of live rows per segment (flat, IVF and HNSW all honour it), so k live results come back
without over-fetching.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexDamagedError, IndexFormatError, UsageError
from ..idhash import id_hash
from .faiss_index import IndexSpec, load_index, search_params
from .files import FileCache, file_problem, load_npy
from .generation import IndexDir, SegmentRef, entry_files
from .lexical import lexical_problems
from .segment import SEGMENT_FILE, Segment, read_segment_info


CHECKS = ("full", "cheap")  # full: every file's checksum once per process before the first read; cheap: sizes,
# headers and counts only (for indexes too big to hash at open; `dramasearch verify` still finds the rest)


@dataclass(frozen=True)
class StoredDocument:
    docid: str
    title: str
    text: str  # empty unless the index stores text
    segment: str
    key: int  # stable key of the document's first row


class Snapshot:
    """The segments of one generation, their tombstones and (on demand) their FAISS indexes."""

    def __init__(self, root: str | Path, generation: int | None = None, *, cache: FileCache | None = None,
                 previous: "Snapshot | None" = None, checks: str = "full"):
        if checks not in CHECKS:
            raise UsageError("checks", f"must be one of {CHECKS}, got {checks!r}")
        self.dir = IndexDir(root)
        self.generation, self._pin = self.dir.pin(generation)
        try:
            self.cache = cache or FileCache()
            self.refs: list[SegmentRef] = self.generation.refs()
            reuse = {(s.name, s.info_sha256): s for s in previous.segments} if previous else {}
            self.segments = [reuse.get((r.name, r.info_sha256)) or Segment(
                self.dir.segments / r.name, read_segment_info(self.dir.segments / r.name, r.info_sha256), self.cache,
                r.info_sha256) for r in self.refs]
            problems = self.problems(full=checks == "full")
            if problems:
                shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
                raise IndexDamagedError(f"{self.dir.root}: generation {self.number} cannot be read:\n  {shown}",
                                        files=problems)
        except BaseException:
            self._pin.release()
            raise
        self._deleted: dict[int, np.ndarray] = {}
        self._selectors: dict[int, tuple] = {}
        self._faiss: dict[tuple[int, str], faiss.Index] = {}
        self._previous_faiss = previous._faiss_by_file() if previous else {}
        self._lock = threading.Lock()
        self._lexical = None  # --- hybrid: BM25 side (lexical.py), loaded on first use
        self._previous_lexical = previous._lexical if previous else None

    @property
    def number(self) -> int:
        return self.generation.generation

    @property
    def settings(self) -> dict:
        return self.generation.settings

    def close(self) -> None:
        self._pin.release()

    # --- tombstones ----------------------------------------------------------------------------
    def deleted_rows(self, i: int) -> np.ndarray:
        """Sorted deleted rows of segment i (empty when none)."""
        if i not in self._deleted:
            ref = self.refs[i]
            if ref.deletes is None:
                rows = np.empty(0, dtype=np.int64)
            else:
                rows = load_npy(self.segments[i].folder / ref.deletes["file"]).astype(np.int64)  # checked at open
            self._deleted[i] = rows
        return self._deleted[i]

    def selector(self, i: int):
        """A FAISS selector of segment i's live rows, or None when nothing is deleted."""
        if self.refs[i].deleted_rows == 0:
            return None
        with self._lock:
            if i not in self._selectors:
                live = np.ones(self.refs[i].rows, dtype=bool)
                live[self.deleted_rows(i)] = False
                bitmap = np.packbits(live, bitorder="little")
                # The selector reads the bitmap through a raw pointer: keep the array alive with it.
                self._selectors[i] = (faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap)), bitmap)
            return self._selectors[i][0]

    def is_live(self, i: int, row: int) -> bool:
        rows = self.deleted_rows(i)
        j = int(np.searchsorted(rows, row))
        return not (j < len(rows) and rows[j] == row)

    # --- FAISS ---------------------------------------------------------------------------------
    def index_entry(self, dim: int | None, kind: str | None = None) -> dict:
        """The generation's index at `dim` (and `kind`), by default the largest dim built."""
        indexes = [ix for ix in self.generation.indexes if kind is None or ix["kind"] == kind]
        if not indexes:
            built = [f"{ix['dim']}/{ix['kind']}" for ix in self.generation.indexes]
            raise UsageError("kind", f"{self.dir.root}: generation {self.number} has no {kind or 'FAISS'} index "
                                     f"(built: {built}); add one with `dramasearch add-dim`")
        if dim is None:
            return max(indexes, key=lambda ix: ix["dim"])
        for entry in indexes:
            if entry["dim"] == dim:
                return entry
        raise UsageError("dim", f"{self.dir.root} has no index at dim {dim}; built dims: {self.generation.dims} "
                                "(add one with `dramasearch add-dim`)")

    def faiss_index(self, i: int, name: str, mmap: bool = False) -> tuple[faiss.Index, IndexSpec]:
        with self._lock:
            entry = self.refs[i].faiss.get(name)
            if entry is None:
                raise IndexFormatError(f"{self.segments[i].folder}: no FAISS file for {name} in generation "
                                       f"{self.number}; the index is damaged: run `dramasearch verify`")
            spec = IndexSpec.from_dict(entry["spec"])
            path = self.segments[i].folder / entry["file"]
            key = (i, name)
            if key not in self._faiss:
                reused = self._previous_faiss.get((str(path), entry["sha256"]))
                if reused is None:  # its files (an on-disk index's .ivfdata too) were checked at open
                    try:
                        reused = load_index(path, spec, mmap=mmap)
                    except RuntimeError as exc:  # FAISS reports unreadable files as RuntimeError
                        raise IndexDamagedError(f"{path}: FAISS cannot read it ({str(exc).splitlines()[0]})") from None
                    if reused.ntotal != self.refs[i].rows or reused.d != spec.dim:
                        raise IndexDamagedError(f"{path}: holds {reused.ntotal} vectors of dim {reused.d}, but the "
                                                f"segment has {self.refs[i].rows} rows at dim {spec.dim}")
                self._faiss[key] = reused
            return self._faiss[key], spec

    def _faiss_by_file(self) -> dict[tuple[str, str], faiss.Index]:
        out = {}
        for (i, name), index in self._faiss.items():
            entry = self.refs[i].faiss[name]
            out[(str(self.segments[i].folder / entry["file"]), entry["sha256"])] = index
        return out

    def search(self, queries: np.ndarray, depth: int, name: str, mmap: bool = False,
               ef_search: int | None = None, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-`depth` live rows over all segments: (scores, segment positions, rows), each [nq, depth].

        Missing results (fewer live rows than depth) have segment -1.
        """
        nq = len(queries)
        all_scores, all_segs, all_rows = [], [], []
        for i, ref in enumerate(self.refs):
            if ref.rows - ref.deleted_rows == 0:
                continue
            index, spec = self.faiss_index(i, name, mmap)
            k = min(depth, ref.rows)
            params = search_params(spec, self.selector(i), k, ef_search=ef_search, nprobe=nprobe)
            scores, rows = index.search(queries, k, params=params)
            all_scores.append(scores)
            all_rows.append(rows)
            all_segs.append(np.where(rows >= 0, i, -1))
        if not all_scores:
            empty = np.full((nq, 0), -1, dtype=np.int64)
            return np.zeros((nq, 0), dtype=np.float32), empty, empty
        scores = np.concatenate(all_scores, axis=1)
        segs = np.concatenate(all_segs, axis=1)
        rows = np.concatenate(all_rows, axis=1)
        scores = np.where(segs >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        take = lambda a: np.take_along_axis(a, order, axis=1)
        return take(scores), take(segs), take(rows)

    # --- lexical (indexes built with --bm25) ---------------------------------------------------
    def lexical(self):
        """The BM25 side of this generation (lexical.LexicalReader); an error names the fix if absent."""
        with self._lock:
            if self._lexical is None:
                from .lexical import LexicalReader

                self._lexical = LexicalReader(self, self._previous_lexical)
                self._previous_lexical = None
            return self._lexical

    # --- documents -----------------------------------------------------------------------------
    def find(self, docid: str) -> tuple[int, int] | None:
        """(segment position, document number) of the live document `docid`, newest segment first."""
        h = id_hash(docid)
        for i in reversed(range(len(self.segments))):
            doc = self.segments[i].find(docid, h)
            if doc is not None:
                first_row, _ = self.segments[i].doc_rows(doc)
                if self.is_live(i, first_row):
                    return i, doc
        return None

    def document(self, docid: str) -> StoredDocument | None:
        found = self.find(docid)
        if found is None:
            return None
        i, doc = found
        title, text = self.segments[i].fields(doc)
        first_row, _ = self.segments[i].doc_rows(doc)
        return StoredDocument(docid, title, text, self.refs[i].name, self.refs[i].base + first_row)

    def live_documents(self, i: int):
        """(document number, first row, end row) of segment i's live documents, in order."""
        deleted = self.deleted_rows(i)
        segment = self.segments[i]
        bounds = np.load(segment.folder / "docrows.npy", mmap_mode="r", allow_pickle=False)
        for doc in range(segment.info.documents):
            start, end = int(bounds[doc]), int(bounds[doc + 1])
            j = int(np.searchsorted(deleted, start))
            if j < len(deleted) and deleted[j] < end:
                continue
            yield doc, start, end

    def problems(self, full: bool, cached: bool = True) -> list[str]:
        """Everything wrong with the generation's files (sizes, headers, counts; checksums when `full`)."""
        lexical = self.settings.get("bm25") is not None
        return [p for segment, ref in zip(self.segments, self.refs)
                for p in segment_problems(segment, ref, self.number, full, cached, lexical)]


def segment_problems(segment: Segment, ref: SegmentRef, number: int, full: bool, cached: bool = True,
                     lexical: bool = False) -> list[str]:
    if segment.info.rows != ref.rows or segment.info.documents != ref.documents:
        return [f"{segment.folder / SEGMENT_FILE}: {segment.info.rows} rows, {segment.info.documents} documents; "
                f"generation {number} records {ref.rows} and {ref.documents}"]
    found = segment.problems(full, cached) + (segment.sidecar_problems() if full else [])
    for entry in ([ref.deletes] if ref.deletes else []) + [f for e in ref.faiss.values() for f in entry_files(e)]:
        found.append(file_problem(segment.folder / entry["file"], entry, full, cached))
    if lexical:  # the segment's BM25 postings (hybrid search): the sidecar as recorded, then its files
        sidecar = file_problem(segment.folder / ref.lexical["file"], ref.lexical, full, cached) if ref.lexical \
            else f"{segment.folder}: generation {number} records no BM25 sidecar for this segment"
        found += [sidecar] if sidecar else lexical_problems(segment.folder, full, cached)
    return [p for p in found if p]


def verify_index(root: str | Path, generation: int | None = None) -> tuple[int, list[str]]:
    """`dramasearch verify`: (generation, problems), every checksum read afresh from disk.
    Damage to the marker or the generation file raises (nothing else can be checked without them)."""
    idx = IndexDir(root)
    gen, pin = idx.pin(generation)
    cache = FileCache()
    try:
        found = []
        for ref in gen.refs():
            folder = idx.segments / ref.name
            try:
                segment = Segment(folder, read_segment_info(folder, ref.info_sha256), cache, ref.info_sha256)
            except IndexDamagedError as exc:
                found.append(str(exc).splitlines()[0])
                continue
            found += segment_problems(segment, ref, gen.generation, full=True, cached=False,
                                      lexical=gen.settings.get("bm25") is not None)
        return gen.generation, found
    finally:
        cache.close()
        pin.release()

