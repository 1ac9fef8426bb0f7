"""build-index: stream a corpus into one segment of full-dimension shards, FAISS per dim, generation 1.

The shard files of the build's segment serve three needs:
- resume: a rerun keeps every shard whose sidecar exists, whose corpus slice hashes the same
  and whose files have their recorded sizes; at most the shard in flight is redone;
- sharding: `--shard I/N` (machines) and one worker per device (GPUs) each encode a disjoint
  set of shards into the same folder; a run without `--shard` assembles and commits;
- new dims: FAISS indexes are built from the stored vectors, so adding a dim never re-encodes.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
from dataclasses import dataclass, field
from typing import Sequence

from .. import validate
from ..corpus import iter_documents
from ..encoder import DTYPES, Encoder
from ..errors import IndexDamagedError, IndexFormatError, InputError, UsageError
from ..models import DEFAULT_MODEL, load_encoder
from ..fsutil import atomic_write_bytes
from .faiss_index import choose_spec
from .files import sha256_bytes
from .generation import Generation, IndexDir, _now
from .lexical import LexicalConfig, tokenizer, write_from_documents
from .ray_backend import BACKENDS, RayOptions
from .records import as_read, read_record, record_bytes
from .segment import ShardInfo, read_segment_info, seal_segment
from .snapshot import verify_index
from .writer import DEFAULT_SHARD_SIZE, RowSettings, SegmentReport, batched, content_sha256, \
    encode_documents, finish_work, index_key, new_ref, read_work, segment_name, start_work

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
    shard_size: int = DEFAULT_SHARD_SIZE
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
    bm25: bool = False  # also keep BM25 postings per segment (lexical.py) for hybrid search
    bm25_stemmer: str | None = "english"  # a PyStemmer (Snowball) language, or None for no stemming
    show_progress: bool = True
    memory_budget: int | None = None  # scale: bytes for `auto` to fit (default: half the available RAM)
    use_gpu: bool | None = None  # scale: FAISS on GPU; None: if FAISS sees one (unless DRAMASEARCH_NO_GPU=1)
    backend: str = "local"  # "local" (this process, or one per --devices) or "ray" (an actor pool, ray_backend.py)
    ray: RayOptions = RayOptions()  # backend "ray": cluster address and pool shape

    def rows(self, encoder: Encoder) -> RowSettings:
        chunked = self.long_doc == "chunk"
        return RowSettings(
            store_text=self.store_text, long_doc=self.long_doc,
            chunk_tokens=self.window(encoder) if chunked else None, stride=self.stride if chunked else 0,
            aggregate=self.aggregate, dtype=str(encoder.dtype).removeprefix("torch."),
        )

    def content_key(self, encoder: Encoder) -> dict:
        """Everything that decides shard contents: a rerun with another key starts over."""
        return {"encoder": encoder.spec.to_dict(), **self.rows(encoder).to_dict(), "shard_size": self.shard_size,
                "fields": [self.id_field, self.title_field, self.text_field]}

    def window(self, encoder: Encoder) -> int:
        return self.chunk_tokens or min(DEFAULT_CHUNK_TOKENS, encoder.room(encoder.document_prefix_ids))

    def check(self) -> None:
        """Reject bad or contradictory settings before any model is loaded (validate.py's rules).

        The dims' upper bound and max_length's position limit need the model; they are checked
        as soon as it is loaded, before anything is written.
        """
        for name in ("corpus", "output", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UsageError(name, f"expected a non-empty path or name, got {getattr(self, name)!r:.40}")
        for dim in self.dims:
            validate.integer("dims", dim)
        validate.index_kind(self.index_kind)
        validate.optional_integer("max_length", self.max_length)
        validate.integer("shard_size", self.shard_size)
        validate.batch_tokens(self.batch_tokens)
        validate.devices(self.devices)
        validate.choice("dtype", self.dtype, tuple(DTYPES))
        validate.choice("long_doc", self.long_doc, LONG_DOC_MODES)
        validate.chunk_window(self.chunk_tokens, self.stride)
        validate.aggregate(self.aggregate, optional=False)
        if self.shard is not None:
            index, count = self.shard
            validate.integer("shard", count)
            validate.integer("shard", index, minimum=0, maximum=count - 1)
        validate.choice("backend", self.backend, BACKENDS)
        if self.backend == "ray":
            self.ray.check()
            if self.devices:
                raise UsageError("devices", "the Ray backend places its actors itself: use ray GPUs per actor "
                                            "(--ray-gpus) instead of --devices")


@dataclass
class BuildReport(SegmentReport):
    """What a build did, for the CLI summary and for tests (e.g. how many shards were re-encoded)."""

    output: str = ""
    indexes: list[dict] = field(default_factory=list)
    generation: int | None = None
    complete: bool = False  # False after a `--shard I/N` run: another run assembles the index
    repaired: bool = False  # a rerun found damaged files and rewrote them (a new generation)

    def summary(self) -> str:
        lines = [
            f"{self.output}: {self.documents} documents in {self.shards_total} shards "
            f"({len(self.shards_encoded)} encoded, {self.shards_reused} reused)",
            f"  empty documents: {self.empty}; truncated to the model's max length: {self.truncated}",
        ]
        if self.encode_seconds:
            lines.append(f"  encoding: {self.encode_seconds:.1f}s, {self.tokens / self.encode_seconds:,.0f} tokens/s")
        for ix in self.indexes:
            lines.append(f"  index dim {ix['dim']} {ix['kind']}: {ix['bytes']:,} bytes")
        if self.complete:
            lines.append(f"  committed generation {self.generation}" + (" (repaired damaged files)" if self.repaired else ""))
        else:
            lines.append(f"  shard slice done: `dramasearch merge {self.output}` assembles the index once every slice is")
        return "\n".join(lines)


BUILD_SEGMENT = segment_name(0)


def build_index(settings: BuildSettings, encoder: Encoder | None = None) -> BuildReport:
    """Encode what is missing, then FAISS per dim, then commit generation 1 (the only visible step).

    A rerun on a committed index checks every file: intact, it does nothing; damaged, it
    re-encodes only the damaged shards and commits a `repair` generation.
    """
    settings.check()
    idx = IndexDir(settings.output)
    if idx.is_index() or (idx.generations.is_dir() and idx.segments.is_dir()):
        idx.repair_marker()
    if len(settings.devices) > 1:
        if encoder is not None:
            raise UsageError("devices", "several devices need one model load per worker; pass no encoder with them")
        idx.create()
        _encode_on_devices(settings)
    lexical = LexicalConfig(stemmer=settings.bm25_stemmer) if settings.bm25 else None  # --- hybrid: BM25 postings beside the vectors
    if lexical is not None:
        tokenizer(lexical)  # a missing bm25s / PyStemmer fails now, not after encoding
    if settings.backend == "ray" and encoder is None:  # ray hook: the driver loads the model for its spec only
        from .ray_backend import driver_encoder
        encoder = driver_encoder(settings)
    encoder = encoder or load_encoder(
        settings.model, device=_first(settings.devices), dtype=DTYPES[settings.dtype], max_length=settings.max_length,
        compile=settings.compile,
    )
    dims = settings.dims or (encoder.dim,)
    validate.dims(dims, encoder.dim)
    idx.create()  # only now: a refused build leaves no folder behind
    key = settings.content_key(encoder)
    report = BuildReport(output=settings.output)
    latest = idx.latest()
    committed = _readable_generation(idx, latest)
    if committed is not None:
        _check_same_build(idx, settings, committed, key)
        number, problems = verify_index(idx.root, committed.generation)
        if not problems:
            return _unchanged(committed, report)
        dims = tuple(ix["dim"] for ix in committed.indexes)
    elif latest is None:
        _check_work_key(idx, key)
    repairing = latest is not None
    folder = start_work(idx, "repair" if repairing else "build", BUILD_SEGMENT, key, keep=repairing)
    if settings.backend == "ray":  # ray hook: the same shards, encoded by a Ray actor pool
        from .ray_backend import encode_on_ray
        infos = encode_on_ray(folder, _documents(settings), encoder, settings, report, _owner(settings.shard))
    else:
        infos = encode_documents(folder, _documents(settings), encoder, settings.rows(encoder), settings.shard_size,
                                 report, owns=_owner(settings.shard), show_progress=settings.show_progress,
                                 batch_tokens=settings.batch_tokens, key_sha256=settings_digest(key),
                                 verify=repairing)
    if not infos:
        raise InputError(settings.corpus, None, None, "holds no documents; an index needs at least one")
    plan = BuildPlan(settings.corpus, dims, settings.index_kind, key, report.shard_digests,
                     runs=settings.shard[1] if settings.shard else 1, memory_budget=settings.memory_budget,
                     use_gpu=settings.use_gpu, bm25=lexical.to_dict() if lexical is not None else None)
    if settings.shard is not None:
        write_plan(idx, plan)
        return report
    return assemble(idx, plan, infos, report, committed, latest)


@dataclass(frozen=True)
class BuildPlan:
    """What assembling the build's segment needs besides its shards: no model (the corpus only
    for BM25 postings)."""

    corpus: str
    dims: tuple[int, ...]
    index_kind: str
    key: dict  # BuildSettings.content_key(): encoder spec, row settings, shard size, fields
    digests: list[str]  # content_sha256 of every shard slice, in order
    runs: int = 1  # N of the `--shard I/N` runs (shard j belongs to run j % N)
    memory_budget: int | None = None
    use_gpu: bool | None = None
    bm25: dict | None = None  # LexicalConfig fields when the index keeps BM25 postings


def _plan_path(idx: IndexDir):
    return idx.work / f"{BUILD_SEGMENT}.plan.json"


def write_plan(idx: IndexDir, plan: BuildPlan) -> None:
    """Every `--shard I/N` run records the plan (all runs write the same one), so `merge` needs no model."""
    record = dataclasses.asdict(plan) | {"segment": BUILD_SEGMENT}  # "segment": cleanup keeps it, like a work record
    atomic_write_bytes(_plan_path(idx), record_bytes(record, indent=1))


def read_plan(idx: IndexDir) -> BuildPlan | None:
    path = _plan_path(idx)
    if not path.is_file():
        return None
    try:
        raw = read_record(path, "build plan")
        raw.pop("segment")
        return BuildPlan(**raw | {"dims": tuple(raw["dims"])})
    except (IndexDamagedError, TypeError, KeyError) as exc:
        raise IndexFormatError(f"{path}: damaged build plan ({str(exc).splitlines()[0]}); rerun one --shard I/N "
                               "run to rewrite it") from None


def settings_digest(key: dict) -> str:
    """The hash of a build's content key, recorded in each shard it encodes (never reused under others)."""
    return sha256_bytes(record_bytes(key))


def assemble(idx: IndexDir, plan: BuildPlan, infos: Sequence[ShardInfo | None], report: BuildReport,
             committed: Generation | None = None, latest: int | None = None) -> BuildReport:
    """Seal the build's segment, FAISS per dim (and BM25 postings), then commit: generation 1, or
    a `repair` generation after `latest` when a rerun found damage (the only visible step)."""
    missing = [n for n, info in enumerate(infos) if info is None]
    if missing:
        owners = sorted({n % plan.runs for n in missing})
        where = f" (owned by --shard {', '.join(f'{i}/{plan.runs}' for i in owners)})" if plan.runs > 1 else ""
        raise IndexFormatError(f"{idx.root}: {len(missing)} of {len(infos)} shards are not encoded yet: "
                               f"{_numbers(missing)}{where}; finish every --shard I/N run first")
    spec, rows_settings = plan.key["encoder"], RowSettings.from_dict(plan.key)
    folder = idx.segments / BUILD_SEGMENT
    with idx.writer():
        rows = sum(i.rows for i in infos)
        specs = committed.indexes if committed is not None else [
            {"dim": d, "kind": choose_spec(plan.index_kind, d, rows, plan.memory_budget).kind} for d in plan.dims]
        info = seal_segment(folder, BUILD_SEGMENT, infos, spec["dim"], rows_settings.long_doc == "chunk")
        extra = {}
        if plan.bm25 is not None:  # --- hybrid: postings from the same corpus, before the ref records them
            fields = dict(zip(("id_field", "title_field", "text_field"), plan.key["fields"]))
            write_from_documents(folder, iter_documents(plan.corpus, **fields), LexicalConfig.from_dict(plan.bm25))
            extra["bm25"] = plan.bm25
        ref = new_ref(folder, info, 0, specs, spec["normalize"], plan.use_gpu)
        number = (latest or 0) + 1
        generation = Generation(
            generation=number, parent=latest, operation="build" if latest is None else "repair", created=_now(),
            encoder=spec, settings=rows_settings.to_dict() | {"corpus": plan.corpus, "build_key": plan.key} | extra,
            indexes=specs, segments=[dataclasses.asdict(ref)], next_key=info.rows, next_segment=1,
        )
        idx.commit(generation)
        finish_work(idx, BUILD_SEGMENT)
        _plan_path(idx).unlink(missing_ok=True)
        idx.collect_garbage()
    report.indexes = _index_sizes(specs, ref)
    report.generation, report.complete = number, True
    report.repaired = latest is not None
    return report


def _numbers(numbers: list[int]) -> str:
    """Shard numbers as ranges: 0-3, 7, 9-12."""
    ranges, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + [None]):
        if cur != prev + 1:
            ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(ranges)


def _index_sizes(specs: list[dict], ref) -> list[dict]:
    return [{"dim": s["dim"], "kind": s["kind"], "bytes": ref.faiss[index_key(s)]["bytes"]} for s in specs]


def _documents(settings: BuildSettings):
    return iter_documents(settings.corpus, id_field=settings.id_field, title_field=settings.title_field,
                          text_field=settings.text_field)


def _check_work_key(idx: IndexDir, key: dict) -> None:
    """Refuse to mix shards made with other settings (another model, shard size, fields)."""
    work = read_work(idx, BUILD_SEGMENT)
    if work is not None and work["key"] != key:
        changed = sorted(k for k in key if key[k] != work["key"].get(k))
        raise IndexFormatError(
            f"{idx.root} holds a build made with other settings ({', '.join(changed)} differ); "
            "use a new output folder, or delete this one to rebuild"
        )


def _readable_generation(idx: IndexDir, latest: int | None) -> Generation | None:
    """The newest generation, or None when there is none or it is damaged (a rerun then repairs it)."""
    if latest is None:
        return None
    try:
        return idx.read(latest)
    except IndexDamagedError:
        return None


def _check_same_build(idx: IndexDir, settings: BuildSettings, generation: Generation, key: dict) -> None:
    """A rerun on a committed index must be the same build of the same corpus."""
    committed = generation.settings.get("build_key")
    key = as_read(key)
    if committed != key:
        changed = sorted(k for k in key if committed is None or key[k] != committed.get(k))
        raise IndexFormatError(
            f"{idx.root} holds a build made with other settings ({', '.join(changed)} differ); "
            "use a new output folder, or `dramasearch refresh` to re-encode with another model"
        )
    if settings.bm25 != ("bm25" in generation.settings):  # --- hybrid
        have = "with" if "bm25" in generation.settings else "without"
        raise IndexFormatError(f"{idx.root} was built {have} --bm25; build into a new output folder to change that")
    if generation.operation not in ("build", "repair") or [s["name"] for s in generation.segments] != [BUILD_SEGMENT] \
            or generation.segments[0]["deleted"]:
        raise IndexFormatError(f"{idx.root} has changed since it was built (generation {generation.generation}, "
                               f"{generation.operation}); use `dramasearch add` / `delete` to change documents")
    sealed = generation.segments[0]
    digests = [content_sha256(docs) for docs in batched(_documents(settings), settings.shard_size)]
    try:
        shards = read_segment_info(idx.segments / BUILD_SEGMENT, sealed["info_sha256"]).shard_infos()
    except IndexDamagedError:
        return  # segment.json itself is damaged: the repair re-seals it from the shards
    if digests != [s.content_sha256 for s in shards]:
        raise IndexFormatError(f"{idx.root}: the corpus has changed since the index was built; use `dramasearch add "
                               "--upsert` and `dramasearch delete` for the changes, or build into a new folder")


def _unchanged(generation: Generation, report: BuildReport) -> BuildReport:
    """A rerun on an intact, finished index: nothing to do; the report describes what is there."""
    sealed = generation.segments[0]
    report.shards_total = report.shards_reused = len(read_segment_info(
        IndexDir(report.output).segments / BUILD_SEGMENT, sealed["info_sha256"]).shards)
    report.documents, report.rows = sealed["documents"], sealed["rows"]
    ref = generation.refs()[0]
    report.indexes = _index_sizes(generation.indexes, ref)
    report.generation, report.complete = generation.generation, True
    return report


def _first(devices: Sequence[str]) -> str | None:
    return devices[0] if devices else None


def _owner(shard: tuple[int, int] | None):
    if shard is None:
        return lambda number: True
    index, count = shard
    return lambda number: number % count == index


def _encode_on_devices(settings: BuildSettings) -> None:
    """One worker process per device, each encoding a disjoint, interleaved set of shards."""
    index, count = settings.shard or (0, 1)
    workers = len(settings.devices)
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    processes = []
    for w, device in enumerate(settings.devices):
        sub = dataclasses.replace(
            settings, devices=(device,), shard=(index + w * count, count * workers), show_progress=False
        )
        processes.append(context.Process(target=_device_worker, args=(sub, errors)))
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    failed = [d for d, p in zip(settings.devices, processes) if p.exitcode != 0]
    if failed:
        detail = "; ".join(messages) or "a worker died without an error message (out of memory?)"
        raise IndexFormatError(f"encoding workers failed on devices {failed}: {detail}")


def _device_worker(settings: BuildSettings, errors) -> None:
    """Run one device's share; its error text travels back so the user sees the real cause."""
    try:
        build_index(settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        errors.put(f"{settings.devices[0]}: {exc}")
        raise SystemExit(1)
