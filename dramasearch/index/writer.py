"""Writing a new segment: resumable shards from documents (or vectors), then seal and FAISS.

Every writer (build, add, refresh, compact, import) produces exactly one new segment through
this module, so they share one resume rule: shard j holds the j-th slice of the input; a rerun
keeps every shard whose sidecar exists, whose input slice hashes the same and whose files have
their recorded sizes. A work record (work/<segment>.json) names the segment and the settings
it is being written with, so a rerun with other settings starts that segment over.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..corpus import Document
from ..encoder import Encoder
from ..errors import IndexDamagedError
from ..fsutil import atomic_write_bytes
from ..idhash import id_hash
from .faiss_index import DISK_KINDS, build_index as build_faiss, save_index, segment_spec
from .files import FileCache, file_sha256
from .generation import IndexDir, SegmentRef
from .lexical import SIDECAR as LEXICAL_SIDECAR
from .ondisk import build_ondisk
from .records import as_read, read_record, record_bytes
from .segment import SEGMENT_FILE, Segment, SegmentInfo, ShardData, ShardInfo, read_shard_info, shard_is_whole, write_shard

DEFAULT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class RowSettings:
    """What decides a row's contents besides the encoder (recorded in every generation)."""

    store_text: bool = False
    long_doc: str = "full"  # "full" or "chunk"
    chunk_tokens: int | None = None  # chunk mode: resolved window length
    stride: int = 64
    aggregate: str = "maxp"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "RowSettings":
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


@dataclass
class SegmentReport:
    """What writing a segment did (for summaries and for tests that count re-encoded shards)."""

    documents: int = 0
    rows: int = 0
    empty: int = 0
    truncated: int = 0
    tokens: int = 0
    shards_total: int = 0
    shards_encoded: list[int] = field(default_factory=list)
    shards_reused: int = 0
    encode_seconds: float = 0.0
    shard_digests: list[str] = field(default_factory=list)  # content_sha256 of every input slice, in order

    def count_documents(self, docs: Sequence[Document]) -> None:
        self.documents += len(docs)
        self.empty += sum(1 for d in docs if not d.content().strip())

    def count_shard(self, info: ShardInfo) -> None:
        self.tokens += info.tokens
        self.truncated += info.truncated
        self.rows += info.rows


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def start_work(idx: IndexDir, operation: str, segment: str, key: dict, keep: bool = False) -> Path:
    """Record (or resume) the operation writing `segment`; other settings restart the segment.

    `keep`: a repair rewrites a committed segment in place, so its files stay (each shard is
    checked against its sidecar and settings before it is reused).
    """
    path = idx.work / f"{segment}.json"
    record = {"operation": operation, "segment": segment, "key": key}
    if read_work(idx, segment) == as_read(record):
        return idx.segments / segment
    if not keep:
        shutil.rmtree(idx.segments / segment, ignore_errors=True)  # uncommitted work of other settings
    atomic_write_bytes(path, record_bytes(record, indent=1))
    return idx.segments / segment


def finish_work(idx: IndexDir, segment: str) -> None:
    (idx.work / f"{segment}.json").unlink(missing_ok=True)


def read_work(idx: IndexDir, segment: str) -> dict | None:
    """The work record of `segment`; None when absent or damaged (the operation then starts over)."""
    path = idx.work / f"{segment}.json"
    if not path.is_file():
        return None
    try:
        return read_record(path, "work record")
    except IndexDamagedError:
        return None


def content_sha256(docs: Sequence[Document]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        for part in (doc.id, doc.title, doc.text):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()


def document_hash(doc: Document) -> int:
    """64-bit hash of a document's title and text: refresh checks supplied text against it."""
    return id_hash(f"{doc.title}\0{doc.text}")


def batched(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def encode_documents(
    folder: Path, documents: Iterable[Document], encoder: Encoder, rows: RowSettings, shard_size: int,
    report: SegmentReport, owns: Callable[[int], bool] = lambda n: True, show_progress: bool = True,
    batch_tokens: int | None = None, key_sha256: str = "", verify: bool = False,
) -> list[ShardInfo | None]:
    """Walk the documents shard by shard; encode the owned shards that are missing or stale.

    `key_sha256` names the settings (a shard made with others is redone); `verify` checksums each
    finished shard before reusing it (a repairing rerun), where a plain resume checks sizes only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    infos: list[ShardInfo | None] = []
    for number, docs in enumerate(batched(documents, shard_size)):
        digest = content_sha256(docs)
        info = reusable_shard(folder, number, digest, key_sha256, verify)
        if info is not None:
            report.shards_reused += 1
        elif owns(number):
            started = time.perf_counter()
            data, stats = encode_shard(encoder, rows, docs, show_progress, batch_tokens)
            info = write_shard(folder, number, data, digest, key_sha256, **stats)
            report.encode_seconds += time.perf_counter() - started
            report.shards_encoded.append(number)
        infos.append(info)
        report.shard_digests.append(digest)
        report.count_documents(docs)
        if info is not None:
            report.count_shard(info)
    report.shards_total = len(infos)
    remove_stale_sidecars(folder, len(infos))
    return infos


def reusable_shard(folder: Path, number: int, digest: str, key_sha256: str = "",
                   verify: bool = False) -> ShardInfo | None:
    """The finished shard `number` if it was made from the input slice hashing to `digest` with
    the settings hashing to `key_sha256` (checksummed first when `verify`: a repairing rerun)."""
    info = read_shard_info(folder, number)
    if info is not None and info.content_sha256 == digest and info.key_sha256 == key_sha256 \
            and shard_is_whole(folder, info, full=verify):
        return info
    return None


def encode_shard(encoder: Encoder, rows: RowSettings, docs: list[Document], show_progress: bool,
                 batch_tokens: int | None) -> tuple[ShardData, dict]:
    """One shard's rows and stats; the same code runs in a local build and in a Ray actor."""
    contents = [d.content() for d in docs]
    chunk_rows = None
    if rows.long_doc == "chunk":
        windows = encoder.windows(contents, rows.chunk_tokens, rows.stride)
        flat = [(d, chunk) for d, chunks in enumerate(windows) for chunk in chunks]
        token_ids = [encoder.frame(chunk.token_ids, encoder.document_prefix_ids) for _, chunk in flat]
        chunk_rows = np.array([(d, c.index, c.start, c.end) for d, c in flat], dtype=np.int64).reshape(-1, 4)
        truncated = 0
    else:
        token_ids, truncated = encoder.tokenize_counting(contents, encoder.spec.document_prefix)
    vectors = encoder.encode_ids(token_ids, batch_tokens=batch_tokens, show_progress=show_progress)
    fields = [(d.title, d.text) if rows.store_text else ("", "") for d in docs]
    data = ShardData(vectors=vectors, ids=[d.id for d in docs], fields=fields,
                     content_hashes=np.array([document_hash(d) for d in docs], dtype=np.uint64), chunk_rows=chunk_rows)
    stats = {"truncated": truncated, "tokens": sum(len(t) for t in token_ids),
             "empty": sum(1 for c in contents if not c.strip())}
    return data, stats


def remove_stale_sidecars(folder: Path, count: int) -> None:
    """An input that shrank leaves shards past its end; drop their sidecars so they never count."""
    for sidecar in folder.glob("[0-9]*.json"):
        if sidecar.stem.isdigit() and int(sidecar.stem) >= count:
            sidecar.unlink()


def build_segment_faiss(folder: Path, info: SegmentInfo, kind: str, dim: int, normalize: bool,
                        use_gpu: bool | None = None) -> dict:
    """The FAISS index of one segment at one (dim, kind): FAISS id = row number in the segment."""
    spec = segment_spec(kind, dim, info.rows)
    path = folder / spec.filename
    segment = Segment(folder, info, FileCache(4))
    # --- scale hook: on-disk IVF kinds write an index + .ivfdata pair, built in parts ---
    if spec.kind in DISK_KINDS:
        return build_ondisk(spec, segment.vector_blocks, info.rows, path, normalize=normalize,
                            use_gpu=use_gpu) | {"spec": spec.to_dict()}
    # --- end scale hook ---
    index = build_faiss(spec, segment.vector_blocks, info.rows, normalize=normalize, use_gpu=use_gpu)
    save_index(index, path)
    return {"file": spec.filename, "bytes": path.stat().st_size, "sha256": file_sha256(path), "spec": spec.to_dict()}


def index_key(spec: dict) -> str:
    return f"dim{spec['dim']}-{spec['kind']}"


def new_ref(folder: Path, info: SegmentInfo, base: int, specs: Sequence[dict], normalize: bool,
            use_gpu: bool | None = None) -> SegmentRef:
    """A sealed segment with a FAISS file per index spec, ready to list in a generation."""
    faiss_files = {index_key(s): build_segment_faiss(folder, info, s["kind"], s["dim"], normalize, use_gpu)
                   for s in specs}
    sidecar = folder / LEXICAL_SIDECAR  # written before the ref when the index keeps BM25 postings
    lexical = {"file": sidecar.name, "bytes": sidecar.stat().st_size, "sha256": file_sha256(sidecar)} \
        if sidecar.is_file() else None
    return SegmentRef(name=info.name, base=base, rows=info.rows, documents=info.documents, faiss=faiss_files,
                      info_sha256=file_sha256(folder / SEGMENT_FILE), lexical=lexical)
