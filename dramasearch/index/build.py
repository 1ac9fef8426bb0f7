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
import json
import multiprocessing
from dataclasses import dataclass, field
from typing import Sequence

from ..aggregate import AGGREGATIONS
from ..corpus import iter_documents
from ..encoder import DTYPES, Encoder
from ..errors import IndexFormatError, UsageError
from ..fsutil import atomic_write_bytes
from ..models import DEFAULT_MODEL, load_encoder
from .faiss_index import choose_spec
from .generation import Generation, IndexDir, _now
from .ray_backend import BACKENDS, RayOptions
from .segment import ShardInfo, read_segment_info, seal_segment
from .writer import DEFAULT_SHARD_SIZE, RowSettings, SegmentReport, batched, check_dims, content_sha256, \
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
    show_progress: bool = True
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
        """Reject contradictory settings before any model is loaded."""
        if self.long_doc not in LONG_DOC_MODES:
            raise ValueError(f"long_doc must be one of {LONG_DOC_MODES}, got {self.long_doc!r}")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.backend not in BACKENDS:
            raise UsageError("backend", f"must be one of {BACKENDS}, got {self.backend!r}")
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
            lines.append(f"  committed generation {self.generation}")
        else:
            lines.append(f"  shard slice done: `dramasearch merge {self.output}` assembles the index once every slice is")
        return "\n".join(lines)


BUILD_SEGMENT = segment_name(0)


def build_index(settings: BuildSettings, encoder: Encoder | None = None) -> BuildReport:
    """Encode what is missing, then FAISS per dim, then commit generation 1 (the only visible step)."""
    settings.check()
    idx = IndexDir(settings.output)
    if len(settings.devices) > 1:
        if encoder is not None:
            raise ValueError("several devices need one model load per worker; pass no encoder with devices")
        idx.create()
        _encode_on_devices(settings)
    if settings.backend == "ray" and encoder is None:  # ray hook: the driver loads the model for its spec only
        from .ray_backend import driver_encoder
        encoder = driver_encoder(settings)
    encoder = encoder or load_encoder(
        settings.model, device=_first(settings.devices), dtype=DTYPES[settings.dtype], max_length=settings.max_length,
        compile=settings.compile,
    )
    dims = settings.dims or (encoder.dim,)
    check_dims(dims, encoder.dim)
    idx.create()  # only now: a refused build leaves no folder behind
    key = settings.content_key(encoder)
    report = BuildReport(output=settings.output)
    latest = idx.latest()
    if latest is not None:
        return _rebuild_committed(idx, settings, encoder, key, report, latest)
    _check_work_key(idx, key)
    folder = start_work(idx, "build", BUILD_SEGMENT, key)
    if settings.backend == "ray":  # ray hook: the same shards, encoded by a Ray actor pool
        from .ray_backend import encode_on_ray
        infos = encode_on_ray(folder, _documents(settings), encoder, settings, report, _owner(settings.shard))
    else:
        infos = encode_documents(folder, _documents(settings), encoder, settings.rows(encoder), settings.shard_size,
                                 report, owns=_owner(settings.shard), show_progress=settings.show_progress,
                                 batch_tokens=settings.batch_tokens)
    if settings.shard is not None:
        write_plan(idx, BuildPlan(settings.corpus, dims, settings.index_kind, key, report.shard_digests,
                                  settings.shard[1]))
        return report
    return assemble(idx, BuildPlan(settings.corpus, dims, settings.index_kind, key, report.shard_digests), infos,
                    report)


@dataclass(frozen=True)
class BuildPlan:
    """What assembling the build's segment needs besides its shards: no corpus, no model."""

    corpus: str
    dims: tuple[int, ...]
    index_kind: str
    key: dict  # BuildSettings.content_key(): encoder spec, row settings, shard size, fields
    digests: list[str]  # content_sha256 of every shard slice, in order
    runs: int = 1  # N of the `--shard I/N` runs (shard j belongs to run j % N)


def _plan_path(idx: IndexDir):
    return idx.work / f"{BUILD_SEGMENT}.plan.json"


def write_plan(idx: IndexDir, plan: BuildPlan) -> None:
    """Every `--shard I/N` run records the plan (all runs write the same one), so `merge` needs no corpus."""
    record = dataclasses.asdict(plan) | {"segment": BUILD_SEGMENT}  # "segment": cleanup keeps it, like a work record
    atomic_write_bytes(_plan_path(idx), json.dumps(record, indent=1).encode())


def read_plan(idx: IndexDir) -> BuildPlan | None:
    path = _plan_path(idx)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw.pop("segment")
        return BuildPlan(**raw | {"dims": tuple(raw["dims"])})
    except (ValueError, TypeError, KeyError) as exc:
        raise IndexFormatError(f"{path}: damaged build plan ({exc}); rerun one --shard I/N run to rewrite it") from None


def assemble(idx: IndexDir, plan: BuildPlan, infos: Sequence[ShardInfo | None], report: BuildReport) -> BuildReport:
    """Seal the build's segment, FAISS per dim, then commit generation 1 (the only visible step)."""
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
        specs = [{"dim": d, "kind": choose_spec(plan.index_kind, d, rows).kind} for d in plan.dims]
        info = seal_segment(folder, BUILD_SEGMENT, infos, spec["dim"], rows_settings.long_doc == "chunk")
        ref = new_ref(folder, info, 0, specs, spec["normalize"])
        generation = Generation(
            generation=1, parent=None, operation="build", created=_now(), encoder=spec,
            settings=rows_settings.to_dict() | {"corpus": plan.corpus, "build_key": plan.key},
            indexes=specs, segments=[dataclasses.asdict(ref)], next_key=info.rows, next_segment=1,
        )
        idx.commit(generation)
        finish_work(idx, BUILD_SEGMENT)
        _plan_path(idx).unlink(missing_ok=True)
        idx.collect_garbage()
    report.indexes = _index_sizes(specs, ref)
    report.generation, report.complete = 1, True
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


def _rebuild_committed(idx: IndexDir, settings: BuildSettings, encoder: Encoder, key: dict, report: BuildReport,
                       latest: int) -> BuildReport:
    """A rerun on a committed index: a no-op when nothing changed, else a pointer to the right command."""
    generation = idx.read(latest)
    committed = generation.settings.get("build_key")
    if committed != key:
        changed = sorted(k for k in key if committed is None or key[k] != committed.get(k))
        raise IndexFormatError(
            f"{idx.root} holds a build made with other settings ({', '.join(changed)} differ); "
            "use a new output folder, or `dramasearch refresh` to re-encode with another model"
        )
    if generation.generation != 1 or [s["name"] for s in generation.segments] != [BUILD_SEGMENT]:
        raise IndexFormatError(f"{idx.root} has changed since it was built (generation {generation.generation}); "
                               "use `dramasearch add` / `delete` to change documents")
    sealed = read_segment_info(idx.segments / BUILD_SEGMENT).shard_infos()
    digests = [content_sha256(docs) for docs in batched(_documents(settings), settings.shard_size)]
    if digests != [s.content_sha256 for s in sealed]:
        raise IndexFormatError(f"{idx.root}: the corpus has changed since the index was built; use `dramasearch add "
                               "--upsert` and `dramasearch delete` for the changes, or build into a new folder")
    report.shards_total = report.shards_reused = len(sealed)
    report.documents = sum(s.documents for s in sealed)
    report.rows = sum(s.rows for s in sealed)
    report.empty = sum(s.empty for s in sealed)
    report.truncated = sum(s.truncated for s in sealed)
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
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {index}/{count}: need 0 <= I < N")
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
