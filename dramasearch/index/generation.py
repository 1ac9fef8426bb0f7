"""Generations: numbered commits over immutable segments, as Lucene's segments_N and Lance's versions.

    INDEX/
      dramasearch-index.json   what this folder is and its format version (written at creation)
      generations/00000003.json  a commit: encoder, settings, index specs, segments, tombstones
      segments/<name>/         immutable segments (segment.py); del-NNNNNNNN.npy tombstones in them
      readers/00000003.lock    readers hold a shared flock on the generation they pinned
      work/<name>.json         an operation in progress (resumable; its segment survives cleanup)
      write.lock               held by the one process that writes

A commit writes the next generation file (temp file, fsync, rename, fsync the folder): that
rename is the only thing that makes a change visible, so a crash leaves the old generation or
the new one, never a mix. Old generations and the files only they use are removed once no
reader holds them. A reader's flock dies with its process (even on kill -9), so a crashed
reader never pins files forever. Where flock is unavailable (Windows), nothing old is removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import IndexDamagedError, IndexFormatError
from ..fsutil import atomic_write_bytes
from .files import file_sha256
from .records import read_record, record_bytes

try:
    import fcntl
except ImportError:  # Windows: no pins, no removal of old generations
    fcntl = None

FORMAT_VERSION = 3  # 3: every JSON record carries its checksum; index ids tie generations to their folder
MARKER = "dramasearch-index.json"
OLD_MANIFEST = "manifest.json"  # format 1


@dataclass
class SegmentRef:
    """A segment as one generation sees it: its key range and its tombstones."""

    name: str
    base: int  # stable keys: row r of this segment has key base + r, never reused
    rows: int
    documents: int
    deleted: int = 0  # deleted documents
    deleted_rows: int = 0
    deletes: dict | None = None  # {"file", "bytes", "sha256"}: sorted int64 deleted rows (cumulative)
    faiss: dict[str, dict] = field(default_factory=dict)  # "dim256-flat" -> {"file", "bytes", "sha256"}
    info_sha256: str = ""  # of segment.json, so a swapped or edited segment record is found at open
    lexical: dict | None = None  # {"file": "bm25.json", "bytes", "sha256"}: the BM25 sidecar (hybrid search)


@dataclass
class Generation:
    generation: int
    parent: int | None
    operation: str
    created: str
    encoder: dict  # EncoderSpec fields plus the portable model reference
    settings: dict  # what decides a row's contents: store_text, long_doc, chunk_tokens, stride, dtype...
    indexes: list[dict]  # IndexSpec dicts: every segment has one FAISS file per entry
    segments: list[dict]  # SegmentRef dicts
    next_key: int = 0
    next_segment: int = 0
    format_version: int = FORMAT_VERSION
    index_id: str = ""  # the folder's id (its marker): a generation copied from another index is refused

    def refs(self) -> list[SegmentRef]:
        return [SegmentRef(**s) for s in self.segments]

    @property
    def documents(self) -> int:
        return sum(s["documents"] - s["deleted"] for s in self.segments)

    @property
    def rows(self) -> int:
        return sum(s["rows"] - s["deleted_rows"] for s in self.segments)

    @property
    def dims(self) -> list[int]:
        return sorted({ix["dim"] for ix in self.indexes})

    def successor(self, operation: str, **changes) -> "Generation":
        return dataclasses.replace(self, generation=self.generation + 1, parent=self.generation, operation=operation,
                                   created=_now(), **changes)


def entry_files(entry: dict) -> list[dict]:
    """Every file a generation's FAISS entry names: the index, plus an on-disk index's data."""
    return [entry] + ([entry["data"]] if "data" in entry else [])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_generation(path: Path) -> Generation:
    raw = read_record(path, "generation file")
    try:
        return Generation(**raw)
    except TypeError as exc:
        raise IndexDamagedError(f"{path}: generation file has unexpected fields ({exc})") from None


def work_segment(path: Path) -> str:
    """The segment a work record protects; the work file's own name says it when the record is damaged."""
    return path.stem


def gen_name(number: int) -> str:
    return f"{number:08d}"


class IndexDir:
    """An index folder: its generations, locks and cleanup."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.generations = self.root / "generations"
        self.segments = self.root / "segments"
        self.readers = self.root / "readers"
        self.work = self.root / "work"

    # --- identity ------------------------------------------------------------------------------
    def is_index(self) -> bool:
        return (self.root / MARKER).is_file()

    def check_format(self) -> str:
        """Refuse folders that are not ours or are of another format, saying what to do; returns the index id."""
        if (self.root / OLD_MANIFEST).is_file() and not self.is_index():
            raise IndexFormatError(
                f"{self.root}: index format 1 (dramasearch 0.1); this version reads format {FORMAT_VERSION} "
                f"(generations, add/delete). Rebuild it: dramasearch build-index CORPUS -o NEW_FOLDER"
            )
        return self._marker_id()

    def _marker_id(self) -> str:
        """The id written at creation; every generation of this folder records the same one."""
        marker = self.root / MARKER
        if not marker.is_file():
            raise IndexFormatError(f"{self.root}: not a dramasearch index ({MARKER} is missing)")
        try:
            raw = json.loads(marker.read_bytes())
        except ValueError:
            raw = {}
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version != FORMAT_VERSION:
            raise IndexFormatError(
                f"{marker}: index format {version}; this version of dramasearch reads format {FORMAT_VERSION} "
                "(checksummed records since format 3): rebuild the index with "
                "`dramasearch build-index CORPUS -o NEW_FOLDER`"
            )
        record = read_record(marker, "the index marker")
        if record.get("format_version") != FORMAT_VERSION or not record.get("index_id"):
            raise IndexDamagedError(f"{marker}: the index marker lacks its format version or id")
        return record["index_id"]

    def create(self) -> None:
        """Claim a folder for a new index; never one that holds someone else's files."""
        if self.is_index():
            self.check_format()
            return
        if self.root.exists():
            if not self.root.is_dir():
                raise IndexFormatError(f"{self.root}: exists and is not a folder; choose another output path")
            # Another process creating the same index at once (--shard runs) leaves only its temp marker.
            foreign = sorted(p.name for p in self.root.iterdir() if not p.name.startswith(f".{MARKER}.tmp-"))
            if foreign:
                if (self.root / OLD_MANIFEST).is_file():
                    self.check_format()
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise IndexFormatError(
                    f"{self.root}: folder is not empty and is not a dramasearch index (it holds {shown}); "
                    "choose a new or empty output folder (nothing was written)"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_marker(uuid.uuid4().hex)

    def repair_marker(self) -> None:
        """build-index on its own damaged index: rewrite a damaged or swapped marker.

        The newest generation file that checks out is believed when the segment records it
        names are the ones on disk (a generation copied from another index fails that test);
        otherwise the marker, if readable, wins, and a fresh id is the last resort.
        """
        if not (self.generations.is_dir() or self.segments.is_dir()):
            return  # not an index of ours: create() refuses it
        try:
            marker_id = self._marker_id()
        except IndexDamagedError:
            marker_id = None
        for path in sorted(self.generations.glob("[0-9]*.json"), reverse=True) if self.generations.is_dir() else []:
            try:
                gen = read_generation(path)
            except IndexDamagedError:
                continue
            records = [self.segments / ref.name / "segment.json" for ref in gen.refs()]
            if gen.index_id != marker_id and all(
                    path.is_file() and file_sha256(path) == ref.info_sha256 for path, ref in zip(records, gen.refs())):
                self.write_marker(gen.index_id)
                return
            break
        if marker_id is None:
            self.write_marker(uuid.uuid4().hex)

    def write_marker(self, index_id: str) -> None:
        atomic_write_bytes(self.root / MARKER, record_bytes({"format": "dramasearch-index",
                                                             "format_version": FORMAT_VERSION, "index_id": index_id}))

    # --- generations ---------------------------------------------------------------------------
    def latest(self) -> int | None:
        if not self.generations.is_dir():
            return None
        numbers = [int(p.stem) for p in self.generations.glob("[0-9]*.json") if p.stem.isdigit()]
        return max(numbers) if numbers else None

    def read(self, number: int | None = None) -> Generation:
        index_id = self.check_format()
        if number is None:
            number = self.latest()
            if number is None:
                hint = " (a build started here has not finished: rerun it to resume)" if self.work.is_dir() else ""
                raise IndexFormatError(f"{self.root}: the index has no committed generation yet{hint}")
        path = self.generations / f"{gen_name(number)}.json"
        if not path.is_file():
            raise IndexFormatError(f"{path}: generation {number} does not exist (removed or never committed)")
        generation = read_generation(path)
        if generation.index_id != index_id or generation.generation != number:
            raise IndexDamagedError(f"{path}: generation file and the index marker {self.root / MARKER} disagree: "
                                    f"the generation is number {generation.generation} of index {generation.index_id}, "
                                    f"the marker names index {index_id} (one of them was copied from another index)")
        return generation

    def commit(self, generation: Generation) -> None:
        """Make `generation` visible: one atomic rename. The caller holds the writer lock."""
        latest = self.latest()
        expected = 1 if latest is None else latest + 1
        if generation.generation != expected:
            raise IndexFormatError(f"{self.root}: commit of generation {generation.generation} but the next is {expected}")
        generation.index_id = self.check_format()
        atomic_write_bytes(self.generations / f"{gen_name(generation.generation)}.json",
                           record_bytes(dataclasses.asdict(generation), indent=1))

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """The single-writer lock: a second writer fails at once with who holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "write.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    raise IndexFormatError(f"{self.root}: another process (pid {holder or '?'}) is writing this "
                                           "index; wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    # --- readers -------------------------------------------------------------------------------
    def pin(self, number: int | None = None) -> tuple[Generation, "Pin"]:
        """Pin a generation (the newest by default) so its files outlive later commits."""
        for _ in range(100):
            n = self.latest() if number is None else number
            if n is None:
                return self.read(None), Pin(None)  # raises the "no generation" error
            pin = Pin.acquire(self.readers / f"{gen_name(n)}.lock")
            if (self.generations / f"{gen_name(n)}.json").is_file():
                try:
                    return self.read(n), pin
                except IndexFormatError:
                    pin.release()
                    raise
            pin.release()
            if number is not None:
                raise IndexFormatError(f"{self.root}: generation {number} has been removed")
        raise IndexFormatError(f"{self.root}: could not pin a generation (commits are racing); retry")

    # --- cleanup -------------------------------------------------------------------------------
    def collect_garbage(self) -> list[Path]:
        """Remove generations no reader holds (never the newest), then files no generation uses."""
        if fcntl is None:
            return []
        latest = self.latest()
        removed: list[Path] = []
        for path in sorted(self.generations.glob("[0-9]*.json")):
            if not path.stem.isdigit() or int(path.stem) == latest:
                continue
            lock = self.readers / f"{path.stem}.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a reader still uses it
            path.unlink()
            lock.unlink(missing_ok=True)
            os.close(fd)
            removed.append(path)
        removed += self._remove_unreferenced()
        return removed

    def _remove_unreferenced(self) -> list[Path]:
        live: dict[str, set[str]] = {}
        for path in self.generations.glob("[0-9]*.json"):
            try:
                gen = read_generation(path)
            except IndexDamagedError:
                continue  # a damaged old generation (removed above unless pinned) keeps nothing alive
            for ref in gen.refs():
                names = live.setdefault(ref.name, set())
                names.update(f["file"] for entry in ref.faiss.values() for f in entry_files(entry))
                if ref.deletes:
                    names.add(ref.deletes["file"])
        working = {work_segment(p) for p in self.work.glob("*.json")} if self.work.is_dir() else set()
        removed = []
        for folder in sorted(self.segments.glob("*")) if self.segments.is_dir() else []:
            if folder.name in working:
                continue
            if folder.name not in live:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                continue
            for file in folder.iterdir():
                optional = file.suffix in (".faiss", ".ivfdata") or (file.name.startswith("del-") and file.suffix == ".npy")
                if optional and file.name not in live[folder.name]:
                    file.unlink(missing_ok=True)
                    removed.append(file)
        return removed


class Pin:
    """A shared flock on readers/N.lock: the generation's files stay while it is held."""

    def __init__(self, fd: int | None):
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path) -> "Pin":
        if fcntl is None:
            return cls(None)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # a read-only index (e.g. a mounted snapshot): nothing removes files there
            return cls(None)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return cls(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
