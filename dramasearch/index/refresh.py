"""refresh: re-encode every live document with a new encoder into one new generation.

The text comes from the index itself when it stores text, else from `--corpus`, whose
documents are checked against the stored ids and content hashes (a refresh must not quietly
index other text than the index holds). Every dim and index kind of the old generation is
rebuilt. Readers keep searching the old generation until the single commit at the end, and a
crash resumes the new segment's shards like a build.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from .. import validate
from ..corpus import Document, iter_documents
from ..encoder import DTYPES, Encoder
from ..errors import IndexFormatError, InputError, UsageError
from ..models import load_encoder
from .lexical import carry_over, generation_config
from .segment import read_shard_ids
from .snapshot import Snapshot
from .updates import UpdateReport, commit_segment, find_documents, writing
from .writer import DEFAULT_SHARD_SIZE, RowSettings, SegmentReport, batched, document_hash, \
    encode_documents, segment_name, start_work


def refresh(index_dir: str | Path, model: str | None = None, *, encoder: Encoder | None = None,
            corpus: str | Path | None = None, dtype: str = "auto", max_length: int | None = None,
            shard_size: int = DEFAULT_SHARD_SIZE, batch_tokens: int | None = None, show_progress: bool = True,
            id_field: str | None = None, title_field: str | None = None, text_field: str | None = None) -> UpdateReport:
    """Commit a generation whose rows are the live documents encoded by `model` (or `encoder`)."""
    validate.integer("shard_size", shard_size)
    validate.batch_tokens(batch_tokens)
    if encoder is None and model is None:
        raise UsageError("model", "refresh needs the new model (--model)")
    report = UpdateReport("refresh", str(index_dir))
    with writing(index_dir, "full") as (idx, snap):
        gen = snap.generation
        if not gen.settings.get("store_text") and corpus is None:
            raise IndexFormatError(f"{idx.root} does not store document text (built without --store-text): "
                                   "pass the corpus with --corpus PATH")
        encoder = encoder or load_encoder(model, dtype=DTYPES[dtype], max_length=max_length)
        validate.dims(gen.dims, encoder.dim)
        old = RowSettings.from_dict(gen.settings)
        if old.long_doc == "chunk" and old.chunk_tokens > encoder.room(encoder.document_prefix_ids):
            raise UsageError("model", f"chunk_tokens={old.chunk_tokens} of this index does not fit {encoder.spec.name}'s "
                             f"max length {encoder.spec.max_length}")
        rows = dataclasses.replace(old, dtype=str(encoder.dtype).removeprefix("torch."))
        name = segment_name(gen.next_segment)
        key = {"operation": "refresh", "parent": gen.generation, "encoder": encoder.spec.to_dict(),
               "rows": rows.to_dict(), "corpus": None if corpus is None else str(corpus), "shard_size": shard_size}
        folder = start_work(idx, "refresh", name, key)
        documents = (_stored_documents(snap) if corpus is None else
                     _checked_corpus(snap, corpus, id_field, title_field, text_field))
        report.segment = SegmentReport()
        infos = encode_documents(folder, documents, encoder, rows, shard_size, report.segment,
                                 show_progress=show_progress, batch_tokens=batch_tokens)
        settings = gen.settings | rows.to_dict() | {"refreshed_from": gen.encoder.get("name")}
        settings.pop("build_key", None)
        lexical = generation_config(gen.settings)
        if lexical is not None:  # --- hybrid: same documents, new numbering: carry their postings over
            carry_over(folder, snap, _old_positions(snap, folder, infos), sum(i.documents for i in infos), lexical)
        new, info = commit_segment(idx, gen, "refresh", folder, infos, encoder.dim, rows.long_doc == "chunk",
                                   encoder.spec.normalize, [], encoder=encoder.spec.to_dict(), settings=settings)
    report.generation, report.added = new.generation, info.documents
    return report


def _old_positions(snap: Snapshot, folder: Path, infos) -> Iterator[tuple[int, int]]:
    """(segment, document) in `snap` of each document of the new segment, in its order."""
    for info in infos:
        ids = read_shard_ids(folder, info)
        found = find_documents(snap, ids)
        yield from (found[docid] for docid in ids)


def _stored_documents(snap: Snapshot) -> Iterator[Document]:
    for i, segment in enumerate(snap.segments):
        for doc, _, _ in snap.live_documents(i):
            title, text = segment.fields(doc)
            yield Document(segment.docid(doc), title, text)


def _checked_corpus(snap: Snapshot, corpus, id_field, title_field, text_field) -> Iterator[Document]:
    """The corpus's documents that are live in the index, each checked against its stored hash."""
    seen = 0
    for batch in batched(iter_documents(corpus, id_field=id_field, title_field=title_field, text_field=text_field),
                         10_000):
        found = find_documents(snap, [d.id for d in batch])
        for doc in batch:
            where = found.get(doc.id)
            if where is None:
                continue  # deleted from the index, or never added: not part of this refresh
            segment = snap.segments[where[0]]
            if segment.content_hash(where[1]) != document_hash(doc):
                raise InputError(corpus, None, "text", f"document {doc.id!r} differs from the text it was indexed "
                                 "with; refresh from the corpus the index was built from (or `add --upsert` first)")
            seen += 1
            yield doc
    live = snap.generation.documents
    if seen != live:
        raise InputError(corpus, None, "id", f"holds {seen} of the index's {live} live documents; every live "
                         "document must be in the corpus to refresh (or delete the missing ones first)")
