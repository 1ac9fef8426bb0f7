"""Changing a living index: add (and upsert), delete, compact, add-dim, each one commit.

Every operation holds the writer lock, reads the newest generation through a snapshot, writes
new files only (a new segment, new tombstone files, new FAISS files), and ends with one
commit. A crash anywhere before the commit leaves the old generation as it was; a rerun
resumes the new segment's shards.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import validate
from ..corpus import iter_documents
from ..encoder import DTYPES, Encoder
from ..errors import IndexFormatError, InputError, UsageError
from ..fsutil import atomic_write_bytes
from ..idhash import id_hashes
from ..models import load_encoder
from .faiss_index import choose_spec
from .files import file_sha256, npy_bytes
from .generation import Generation, IndexDir, gen_name
from .lexical import carry_over, generation_config, write_from_documents
from .segment import SegmentInfo, ShardData, read_shard_info, seal_segment, shard_is_whole, write_shard
from .snapshot import Snapshot
from .writer import DEFAULT_SHARD_SIZE, RowSettings, SegmentReport, build_segment_faiss, \
    encode_documents, finish_work, index_key, new_ref, segment_name, start_work


@dataclass
class UpdateReport:
    operation: str
    root: str
    generation: int = 0
    added: int = 0
    replaced: int = 0
    deleted: int = 0
    not_found: list[str] = field(default_factory=list)
    segment: SegmentReport | None = None

    def summary(self) -> str:
        parts = [f"{self.root}: {self.operation} committed generation {self.generation}"]
        if self.added:
            parts.append(f"{self.added} documents {'re-encoded' if self.operation == 'refresh' else 'added'}")
        if self.replaced:
            parts.append(f"{self.replaced} replaced")
        if self.deleted:
            parts.append(f"{self.deleted} deleted")
        if self.not_found:
            shown = ", ".join(repr(d) for d in self.not_found[:5]) + (", ..." if len(self.not_found) > 5 else "")
            parts.append(f"{len(self.not_found)} ids not found ({shown})")
        if self.segment and self.segment.shards_total:
            parts.append(f"{len(self.segment.shards_encoded)} shards encoded, {self.segment.shards_reused} reused")
        return "; ".join(parts)


@contextlib.contextmanager
def writing(index_dir: str | Path, checks: str) -> Iterator[tuple[IndexDir, Snapshot]]:
    """The writer lock and a snapshot of the newest generation; cleanup after a successful commit.

    `checks`: "full" for operations that copy old rows into new files (compact, refresh,
    add-dim), so damage is never sealed under fresh checksums; "cheap" for add and delete,
    which only look ids up, so they stay fast on a big index.
    """
    idx = IndexDir(index_dir)
    idx.check_format()
    with idx.writer():
        snap = Snapshot(idx.root, checks=checks)
        try:
            yield idx, snap
        finally:
            snap.close()
        idx.collect_garbage()


def commit_segment(idx: IndexDir, gen: Generation, operation: str, folder: Path, infos: Sequence, dim: int,
                   chunked: bool, normalize: bool, kept: list[dict], **changes) -> tuple[Generation, SegmentInfo]:
    """Seal a written segment, build its FAISS files, and commit it after the `kept` segments."""
    info = seal_segment(folder, folder.name, infos, dim, chunked)
    ref = new_ref(folder, info, gen.next_key, gen.indexes, normalize)
    new = gen.successor(operation, segments=kept + [dataclasses.asdict(ref)], next_key=gen.next_key + info.rows,
                        next_segment=gen.next_segment + 1, **changes)
    idx.commit(new)
    finish_work(idx, folder.name)
    return new, info


def index_encoder(generation: Generation, model: str | None = None, encoder: Encoder | None = None,
                  device: str | None = None, dtype: str = "auto") -> Encoder:
    """The encoder that wrote the generation (or a `model` with the same fingerprint)."""
    from ..searcher import check_encoder, encoder_spec

    spec = encoder_spec(generation.encoder)
    if spec.family == "vectors" and encoder is None and model is None:
        raise IndexFormatError("this index holds imported vectors without an encoder; name one with --model")
    encoder = encoder or load_encoder(model or spec.name, device=device, dtype=DTYPES[dtype], max_length=spec.max_length)
    if spec.family != "vectors":
        check_encoder(encoder.spec, spec, Path("the index"))
    return encoder


def find_documents(snap: Snapshot, docids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """docid -> (segment position, document number) of live documents, with lookup tables in memory.

    Tables cost 16 bytes per indexed document while the call runs; every hash match is
    confirmed by reading the stored id.
    """
    hashes = id_hashes(docids)
    found: dict[str, tuple[int, int]] = {}
    for i in reversed(range(len(snap.segments))):
        segment = snap.segments[i]
        table = segment.lookup_table()
        left = np.searchsorted(table["hash"], hashes, side="left")
        right = np.searchsorted(table["hash"], hashes, side="right")
        for j in np.nonzero(right > left)[0].tolist():
            docid = docids[j]
            if docid in found:
                continue
            for doc in table["doc"][left[j]:right[j]].tolist():
                if segment.docid(doc) == docid and snap.is_live(i, segment.doc_rows(doc)[0]):
                    found[docid] = (i, doc)
                    break
    return found


def _tombstones(snap: Snapshot, idx: IndexDir, generation: int, hits: Iterable[tuple[int, int]]) -> list[dict]:
    """The segment list with the given (segment, document) pairs deleted: new tombstone files only."""
    by_segment: dict[int, list[int]] = {}
    for i, doc in hits:
        by_segment.setdefault(i, []).append(doc)
    refs = [dataclasses.asdict(r) for r in snap.refs]
    for i, docs in by_segment.items():
        segment = snap.segments[i]
        rows = [np.arange(*segment.doc_rows(doc)) for doc in docs]
        merged = np.union1d(snap.deleted_rows(i), np.concatenate(rows)).astype(np.int64)
        name = f"del-{gen_name(generation)}.npy"
        payload = npy_bytes(merged)
        atomic_write_bytes(segment.folder / name, payload)
        refs[i]["deletes"] = {"file": name, "bytes": len(payload), "sha256": file_sha256(segment.folder / name)}
        refs[i]["deleted"] += len(set(docs))
        refs[i]["deleted_rows"] = len(merged)
    return refs


def add_documents(index_dir: str | Path, corpus: str | Path, *, upsert: bool = False, encoder: Encoder | None = None,
                  model: str | None = None, id_field: str | None = None, title_field: str | None = None,
                  text_field: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "auto",
                  show_progress: bool = True) -> UpdateReport:
    """Append a corpus as a new segment; an id already live is an error, or replaced with `upsert`."""
    validate.integer("shard_size", shard_size)
    docs = lambda: iter_documents(corpus, id_field=id_field, title_field=title_field, text_field=text_field)
    report = UpdateReport("add", str(index_dir))
    with writing(index_dir, "cheap") as (idx, snap):
        gen = snap.generation
        existing = _existing_ids(snap, docs())
        if existing and not upsert:
            shown = ", ".join(repr(d) for d in list(existing)[:5])
            raise InputError(corpus, None, "id", f"{len(existing)} document ids are already in the index "
                             f"({shown}); use --upsert to replace them, or delete them first")
        encoder = index_encoder(gen, model, encoder, dtype=dtype)
        rows = RowSettings.from_dict(gen.settings)
        name = segment_name(gen.next_segment)
        key = {"operation": "add", "corpus": str(corpus), "encoder": encoder.spec.to_dict(), "rows": rows.to_dict(),
               "shard_size": shard_size, "fields": [id_field, title_field, text_field]}
        folder = start_work(idx, "add", name, key)
        report.segment = SegmentReport()
        infos = encode_documents(folder, docs(), encoder, rows, shard_size, report.segment, show_progress=show_progress)
        kept = _tombstones(snap, idx, gen.generation + 1, existing.values())
        lexical = generation_config(gen.settings)
        if lexical is not None:  # --- hybrid: the new segment's BM25 postings, from the same documents
            write_from_documents(folder, docs(), lexical)
        new, info = commit_segment(idx, gen, "add", folder, infos, encoder.dim, rows.long_doc == "chunk",
                                   encoder.spec.normalize, kept)
    report.generation, report.added, report.replaced = new.generation, info.documents, len(existing)
    return report


def _existing_ids(snap: Snapshot, documents) -> dict[str, tuple[int, int]]:
    """Live documents whose ids the new corpus repeats, checked in batches of 100k ids."""
    found: dict[str, tuple[int, int]] = {}
    batch: list[str] = []
    for doc in documents:
        batch.append(doc.id)
        if len(batch) == 100_000:
            found.update(find_documents(snap, batch))
            batch = []
    if batch:
        found.update(find_documents(snap, batch))
    return found


def delete_documents(index_dir: str | Path, docids: Sequence[str]) -> UpdateReport:
    """Tombstone documents by id; they disappear from searches of the new generation at once."""
    if isinstance(docids, str) or not all(isinstance(d, str) and d for d in docids):
        raise UsageError("docids", "expected a list of non-empty id strings")
    report = UpdateReport("delete", str(index_dir))
    unique = list(dict.fromkeys(docids))
    with writing(index_dir, "cheap") as (idx, snap):
        gen = snap.generation
        found = find_documents(snap, unique)
        report.not_found = [d for d in unique if d not in found]
        new = gen.successor("delete", segments=_tombstones(snap, idx, gen.generation + 1, found.values()))
        idx.commit(new)
    report.generation, report.deleted = new.generation, len(found)
    return report


def compact(index_dir: str | Path, shard_size: int = DEFAULT_SHARD_SIZE) -> UpdateReport:
    """Rewrite every live row into one new segment without tombstones, and rebuild FAISS.

    Output shard j is source shard j with its deleted rows left out, so a rerun after a crash
    keeps the shards already written. Stable keys are assigned anew (Lucene renumbers on merge).
    """
    validate.integer("shard_size", shard_size)
    report = UpdateReport("compact", str(index_dir))
    with writing(index_dir, "full") as (idx, snap):
        gen = snap.generation
        name = segment_name(gen.next_segment)
        folder = start_work(idx, "compact", name, {"operation": "compact", "parent": gen.generation})
        folder.mkdir(parents=True, exist_ok=True)
        infos, number = [], 0
        for i, segment in enumerate(snap.segments):
            for s, shard in enumerate(segment.shards):
                digest = f"{segment.name}/{shard.number}/{gen.generation}"
                existing = read_shard_info(folder, number)
                if existing is None or existing.content_sha256 != digest or not shard_is_whole(folder, existing):
                    existing = write_shard(folder, number, _live_shard(snap, i, s), digest)
                infos.append(existing)
                number += 1
        chunked = bool(snap.segments) and snap.segments[0].info.chunked
        lexical = generation_config(gen.settings)
        if lexical is not None:  # --- hybrid: carry the live documents' postings over, in the same order
            order = ((i, doc) for i in range(len(snap.segments)) for doc, _, _ in snap.live_documents(i))
            carry_over(folder, snap, order, sum(info.documents for info in infos), lexical)
        new, _ = commit_segment(idx, gen, "compact", folder, infos, gen.encoder["dim"], chunked,
                                gen.encoder.get("normalize", True), [])
    report.generation = new.generation
    return report


def _live_shard(snap: Snapshot, i: int, s: int) -> ShardData:
    """Source shard s of segment i without its deleted documents."""
    segment = snap.segments[i]
    shard = segment.shards[s]
    row0 = int(segment.row_starts[s])
    deleted = snap.deleted_rows(i)
    local_deleted = deleted[(deleted >= row0) & (deleted < row0 + shard.rows)] - row0
    live_rows = np.ones(shard.rows, dtype=bool)
    live_rows[local_deleted] = False
    vectors = np.asarray(segment.shard_vectors(s))[live_rows]
    if segment.info.chunked:
        table = np.load(segment.folder / f"{shard.number:05d}.rows.npy", allow_pickle=False)
        row_docs = table[:, 0]
        live_docs = np.ones(shard.documents, dtype=bool)
        live_docs[np.unique(row_docs[~live_rows])] = False
        kept = table[live_rows].copy()
        renumber = np.cumsum(live_docs) - 1
        kept[:, 0] = renumber[kept[:, 0]]
        chunk_rows = kept
    else:
        live_docs, chunk_rows = live_rows, None
    ids, fields = segment.shard_documents(s)
    keep = np.nonzero(live_docs)[0].tolist()
    hashes = np.load(segment.folder / f"{shard.number:05d}.hash.npy", allow_pickle=False)
    return ShardData(vectors=vectors, ids=[ids[d] for d in keep], fields=[fields[d] for d in keep],
                     content_hashes=hashes[live_docs], chunk_rows=chunk_rows)


def add_dims(index_dir: str | Path, dims: Sequence[int], kind: str = "auto") -> list[dict]:
    """FAISS indexes at more dims from the stored full-dim vectors (no re-encoding), one commit."""
    validate.index_kind(kind)
    with writing(index_dir, "full") as (idx, snap):
        gen = snap.generation
        validate.dims(dims, gen.encoder["dim"])
        rows = sum(r.rows for r in snap.refs)
        new_specs = [{"dim": d, "kind": choose_spec(kind, d, rows).kind} for d in dims]
        new_specs = [s for s in new_specs if s not in gen.indexes]
        refs = [dataclasses.asdict(r) for r in snap.refs]
        for ref, segment in zip(refs, snap.segments):
            for spec in new_specs:
                ref["faiss"][index_key(spec)] = build_segment_faiss(
                    segment.folder, segment.info, spec["kind"], spec["dim"], gen.encoder.get("normalize", True))
        indexes = sorted(gen.indexes + new_specs, key=lambda s: (s["dim"], s["kind"]))
        idx.commit(gen.successor("add-dim", segments=refs, indexes=indexes))
    return [s | {"bytes": sum(r["faiss"][index_key(s)]["bytes"] for r in refs)} for s in new_specs]
