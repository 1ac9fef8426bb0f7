"""build-index: stream a corpus into full-dimension embedding shards, then FAISS per Matryoshka dim.

Shard j holds documents [j * shard_size, (j + 1) * shard_size) in corpus order. The same
shard files serve three needs:
- resume: a rerun keeps every shard whose sidecar exists, whose corpus slice hashes the same
  and whose embeddings still match their checksum; at most the shard in flight is redone;
- sharding: `--shard I/N` (machines) and one worker per device (GPUs) each encode a disjoint
  set of shards into the same folder; a run without `--shard` assembles the index;
- new dims: FAISS indexes are built from the stored vectors, so adding a dim never re-encodes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .aggregate import AGGREGATIONS
from .corpus import CorpusStats, Document, iter_documents
from .encoder import DTYPES, Encoder
from .errors import IndexFormatError
from .faiss_index import build_index as build_faiss, choose_spec, save_index
from .fsutil import atomic_write_bytes
from .models import DEFAULT_MODEL, load_encoder
from .store import IndexFolder, Manifest, ShardInfo

BUILD_FILE = "build.json"
LONG_DOC_MODES = ("full", "chunk")
DEFAULT_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class BuildSettings:
    """What a user asks build-index for. `content_key()` names the fields that decide shard contents."""

    corpus: str
    output: str
    model: str = DEFAULT_MODEL
    dims: tuple[int, ...] = ()  # empty: the model's full dimension only
    index_kind: str = "auto"
    max_length: int | None = None
    store_text: bool = False
    shard_size: int = 10_000
    batch_tokens: int | None = None
    id_field: str | None = None
    title_field: str | None = None
    text_field: str | None = None
    shard: tuple[int, int] | None = None  # (I, N): encode only shards j with j % N == I
    devices: tuple[str, ...] = ()  # one worker per device; empty: the default device
    dtype: str = "auto"  # a key of encoder.DTYPES
    compile: bool = False  # torch.compile the backbone: faster on big corpora, slow to start
    long_doc: str = "full"  # "full": one row per document (truncated at max length); "chunk": token windows
    chunk_tokens: int | None = None  # chunk mode: window length in text tokens (default: min(512, what fits))
    stride: int = 64  # chunk mode: tokens shared by consecutive windows
    aggregate: str = "maxp"  # chunk mode: default per-document aggregation at search time
    show_progress: bool = True

    def content_key(self, encoder: Encoder) -> dict:
        return {
            "encoder": encoder.spec.to_dict(),
            "dtype": str(encoder.dtype).removeprefix("torch."),
            "shard_size": self.shard_size,
            "store_text": self.store_text,
            "fields": [self.id_field, self.title_field, self.text_field],
            "long_doc": self.long_doc,
            "chunk_tokens": self.window(encoder) if self.long_doc == "chunk" else None,
            "stride": self.stride if self.long_doc == "chunk" else None,
        }

    def window(self, encoder: Encoder) -> int:
        return self.chunk_tokens or min(DEFAULT_CHUNK_TOKENS, encoder.room(encoder.document_prefix_ids))

    def check(self) -> None:
        """Reject contradictory settings before any model is loaded."""
        if self.long_doc not in LONG_DOC_MODES:
            raise ValueError(f"long_doc must be one of {LONG_DOC_MODES}, got {self.long_doc!r}")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


@dataclass
class BuildReport:
    """What a build did, for the CLI summary and for tests (e.g. how many shards were re-encoded)."""

    output: str
    documents: int = 0
    empty: int = 0
    truncated: int = 0
    tokens: int = 0
    shards_total: int = 0
    shards_encoded: list[int] = field(default_factory=list)
    shards_reused: int = 0
    encode_seconds: float = 0.0
    indexes: list[dict] = field(default_factory=list)
    complete: bool = False  # False after a `--shard I/N` run: another run assembles the index

    def summary(self) -> str:
        lines = [
            f"{self.output}: {self.documents} documents in {self.shards_total} shards "
            f"({len(self.shards_encoded)} encoded, {self.shards_reused} reused)",
            f"  empty documents: {self.empty}; truncated to the model's max length: {self.truncated}",
        ]
        if self.encode_seconds:
            lines.append(f"  encoding: {self.encode_seconds:.1f}s, {self.tokens / self.encode_seconds:,.0f} tokens/s")
        for ix in self.indexes:
            lines.append(f"  index dim {ix['dim']} {ix['kind']}: {ix['file']} ({ix['bytes']:,} bytes)")
        if not self.complete:
            lines.append("  shard slice done: run build-index without --shard to assemble the index")
        return "\n".join(lines)


def build_index(settings: BuildSettings, encoder: Encoder | None = None) -> BuildReport:
    """Encode what is missing, then build every requested FAISS index and write the manifest last."""
    settings.check()
    if len(settings.devices) > 1:
        if encoder is not None:
            raise ValueError("several devices need one model load per worker; pass no encoder with devices")
        _encode_on_devices(settings)
    encoder = encoder or load_encoder(
        settings.model, device=_first(settings.devices), dtype=DTYPES[settings.dtype], max_length=settings.max_length,
        compile=settings.compile,
    )
    dims = settings.dims or (encoder.dim,)
    _check_dims(dims, encoder.dim)
    folder = IndexFolder(settings.output)
    _check_build_file(folder, settings, encoder)
    report = BuildReport(output=settings.output)
    infos = _encode_shards(folder, settings, encoder, report, owns=_owner(settings.shard))
    if settings.shard is not None:
        return report
    missing = [n for n, info in enumerate(infos) if info is None]
    if missing:
        raise IndexFormatError(
            f"{folder.root}: shards {missing[:10]} are not encoded yet; finish every --shard I/N run first"
        )
    shards = [dataclasses.asdict(info) for info in infos]
    _remove_stale_shards(folder, len(shards))
    previous = folder.read_manifest().indexes if folder.has_manifest() else []
    indexes = [_build_one(folder, shards, settings.index_kind, dim, previous) for dim in dims]
    manifest = Manifest(
        encoder=encoder.spec.to_dict(),
        build=settings.content_key(encoder) | {"corpus": settings.corpus, "aggregate": settings.aggregate},
        shards=shards,
        indexes=indexes,
        documents=report.documents,
        empty=report.empty,
        truncated=report.truncated,
    )
    folder.write_manifest(manifest)
    report.indexes, report.complete = indexes, True
    return report


def _check_dims(dims: Sequence[int], full: int) -> None:
    """Fail before any encoding, not after it."""
    for dim in dims:
        if not 0 < dim <= full:
            raise ValueError(f"dim {dim} is outside 1..{full} (the encoder's full dimension)")


def _first(devices: Sequence[str]) -> str | None:
    return devices[0] if devices else None


def _owner(shard: tuple[int, int] | None):
    if shard is None:
        return lambda number: True
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {index}/{count}: need 0 <= I < N")
    return lambda number: number % count == index


def _check_build_file(folder: IndexFolder, settings: BuildSettings, encoder: Encoder) -> None:
    """Refuse to mix shards made with other settings (another model, shard size, fields)."""
    key = settings.content_key(encoder)
    path = folder.root / BUILD_FILE
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != key:
            changed = sorted(k for k in key if key[k] != existing.get(k))
            raise IndexFormatError(
                f"{folder.root} holds a build made with other settings ({', '.join(changed)} differ); "
                "use a new output folder, or delete this one to rebuild"
            )
        return
    atomic_write_bytes(path, json.dumps(key, indent=2).encode())


def _chunks(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    iterator = iter(documents)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def content_sha256(docs: Sequence[Document]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        for part in (doc.id, doc.title, doc.text):
            digest.update(part.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
    return digest.hexdigest()


def _encode_shards(folder: IndexFolder, settings: BuildSettings, encoder: Encoder, report: BuildReport, owns) -> list:
    """Walk the corpus shard by shard; encode the owned ones that are missing or stale."""
    stats = CorpusStats()
    documents = iter_documents(
        settings.corpus,
        id_field=settings.id_field,
        title_field=settings.title_field,
        text_field=settings.text_field,
        stats=stats,
    )
    infos: list[ShardInfo | None] = []
    for number, docs in enumerate(_chunks(documents, settings.shard_size)):
        digest = content_sha256(docs)
        info = folder.read_shard_info(number)
        if info is not None and info.content_sha256 == digest and folder.shard_is_intact(info):
            report.shards_reused += 1
        elif owns(number):
            folder.remove_manifest()
            started = time.perf_counter()
            info = _encode_one(folder, encoder, settings, number, docs, digest)
            report.encode_seconds += time.perf_counter() - started
            report.shards_encoded.append(number)
        else:
            info = None
        infos.append(info)
        if info is not None:
            report.tokens += info.tokens
    report.documents, report.empty, report.shards_total = stats.documents, stats.empty, len(infos)
    report.truncated = sum(i.truncated for i in infos if i is not None)
    return infos


def _encode_one(folder, encoder: Encoder, settings: BuildSettings, number: int, docs, digest: str) -> ShardInfo:
    contents = [d.content() for d in docs]
    if settings.long_doc == "chunk":
        windows = encoder.windows(contents, settings.window(encoder), settings.stride)
        rows = [(doc, chunk) for doc, chunks in zip(docs, windows) for chunk in chunks]
        token_ids = [encoder.frame(chunk.token_ids, encoder.document_prefix_ids) for _, chunk in rows]
        spans = [(chunk.index, chunk.start, chunk.end) for _, chunk in rows]
        passages = [(doc.title, doc.content()[chunk.start : chunk.end]) for doc, chunk in rows]
        truncated = 0
    else:
        rows = [(doc, None) for doc in docs]
        token_ids, truncated = encoder.tokenize_counting(contents, encoder.spec.document_prefix)
        spans = None
        passages = [(d.title, d.text) for d in docs]
    vectors = encoder.encode_ids(token_ids, batch_tokens=settings.batch_tokens, show_progress=settings.show_progress)
    info = ShardInfo(
        number=number,
        rows=len(rows),
        documents=len(docs),
        content_sha256=digest,
        emb_sha256="",
        empty=sum(1 for c in contents if not c.strip()),
        truncated=truncated,
        tokens=sum(len(ids) for ids in token_ids),
    )
    fields = passages if settings.store_text else [("", "")] * len(rows)
    return folder.write_shard(info, vectors, [doc.id for doc, _ in rows], fields, spans)


def _remove_stale_shards(folder: IndexFolder, count: int) -> None:
    """A corpus that shrank leaves shards past its end; drop their sidecars so they never count."""
    for sidecar in folder.shards_dir.glob("*.json"):
        if sidecar.stem.isdigit() and int(sidecar.stem) >= count:
            sidecar.unlink()


def _build_one(folder: IndexFolder, shards: list[dict], kind: str, dim: int, previous: list[dict]) -> dict:
    rows = sum(s["rows"] for s in shards)
    spec = choose_spec(kind, dim, rows)
    path = folder.faiss_dir / spec.filename
    entry = spec.to_dict() | {"file": f"faiss/{spec.filename}"}
    same = [ix for ix in previous if {k: ix.get(k) for k in entry} == entry and ix.get("shards") == _shard_sums(shards)]
    if same and path.is_file():
        return same[0]
    index = build_faiss(spec, lambda: folder.iter_embedding_blocks(shards), rows)
    save_index(index, path)
    return entry | {"bytes": path.stat().st_size, "shards": _shard_sums(shards)}


def _shard_sums(shards: list[dict]) -> str:
    """One checksum over all shard checksums: an index is reused only for the same vectors."""
    return hashlib.sha256("".join(s["emb_sha256"] for s in shards).encode()).hexdigest()[:16]


def _encode_on_devices(settings: BuildSettings) -> None:
    """One worker process per device, each encoding a disjoint, interleaved set of shards."""
    index, count = settings.shard or (0, 1)
    workers = len(settings.devices)
    context = multiprocessing.get_context("spawn")
    processes = []
    for w, device in enumerate(settings.devices):
        sub = dataclasses.replace(
            settings, devices=(device,), shard=(index + w * count, count * workers), show_progress=False
        )
        processes.append(context.Process(target=build_index, args=(sub,)))
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    failed = [d for d, p in zip(settings.devices, processes) if p.exitcode != 0]
    if failed:
        raise IndexFormatError(f"encoding workers failed on devices {failed}; rerun to resume")


def add_dims(index_dir: str | Path, dims: Sequence[int], kind: str = "auto") -> list[dict]:
    """Build FAISS indexes at more dims from the stored full-dim vectors; no re-encoding."""
    folder = IndexFolder(index_dir)
    manifest = folder.read_manifest()
    _check_dims(dims, manifest.encoder["dim"])
    new = [_build_one(folder, manifest.shards, kind, dim, manifest.indexes) for dim in dims]
    kept = [ix for ix in manifest.indexes if ix["file"] not in {n["file"] for n in new}]
    manifest.indexes = sorted(kept + new, key=lambda ix: (ix["dim"], ix["kind"]))
    folder.write_manifest(manifest)
    return new
