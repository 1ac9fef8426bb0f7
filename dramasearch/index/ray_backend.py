"""build-index on a Ray cluster: Ray Data `map_batches` over an actor pool encodes the missing shards.

The driver (the process running build-index) streams the corpus once, hashes every shard slice and
keeps the shards already finished on disk (the resume rule of a local build). Each missing shard
goes into Ray's object store as one Arrow row. A pool of actors, each loading the model once (on
CPU, or on its own GPU with `gpus` per actor), encodes one shard per call with the same
`writer.encode_shard` as a local build and returns the rows.

The driver writes every shard with the same `write_shard` as a local build, not the actors:
- the nodes need no shared file system with the index folder (Ray clusters on Kubernetes
  usually have none), only the corpus on the driver and the model on every node;
- one process writes the folder, each file atomically and the sidecar last, so a `kill -9` of
  the driver loses only the shards in flight and a rerun skips every shard on disk;
- the files are byte for byte those of a local build; Ray's serialization is only transport.
Sealing, FAISS and the commit then run unchanged in build.py.
"""
from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from ..corpus import Document
from ..encoder import DTYPES, Encoder
from ..errors import DramaSearchError, ModelLoadError, UsageError
from ..models import load_encoder
from .segment import ShardData, ShardInfo, write_shard
from .writer import RowSettings, SegmentReport, batched, content_sha256, encode_shard, remove_stale_sidecars, \
    reusable_shard

if TYPE_CHECKING:
    from .build import BuildSettings

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to encode on Ray (`build-index --backend ray`)."""

    address: str | None = None  # ray.init's: None = RAY_ADDRESS or a new local cluster; "local", "auto", "ray://h:10001"
    actors: int | None = None  # pool size; None: the cluster's GPUs / `gpus`, or its CPUs / `cpus`
    cpus: float = 1.0  # CPUs per actor (its torch threads when encoding on CPU)
    gpus: float = 0.0  # GPUs per actor; > 0 encodes on CUDA

    def check(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise UsageError("ray_actors", f"need at least 1 actor, got {self.actors}")
        if self.cpus <= 0:
            raise UsageError("ray_cpus", f"CPUs per actor must be > 0, got {self.cpus}")
        if self.gpus < 0:
            raise UsageError("ray_gpus", f"GPUs per actor must be >= 0, got {self.gpus}")


def driver_encoder(settings: "BuildSettings") -> Encoder:
    """The model on the driver's CPU, for its spec, tokenizer and dtype only: the actors encode.

    Its dtype is the one every actor must use (recorded in the build key): the requested one,
    bf16 for `--dtype auto` on GPUs (what a local CUDA build picks), else the driver's CPU default.
    """
    import torch

    dtype = DTYPES[settings.dtype]
    if dtype is None and settings.ray.gpus > 0:
        dtype = torch.bfloat16
    return load_encoder(settings.model, device="cpu", dtype=dtype, max_length=settings.max_length)


def encode_on_ray(folder: Path, documents: Iterable[Document], encoder: Encoder, settings: "BuildSettings",
                  report: SegmentReport, owns: Callable[[int], bool]) -> list[ShardInfo | None]:
    """`writer.encode_documents` with the encoding on a Ray actor pool: same shards, same report."""
    import ray

    from .build import settings_digest

    folder.mkdir(parents=True, exist_ok=True)
    key_digest = settings_digest(settings.content_key(encoder))
    infos: list[ShardInfo | None] = []
    with _connected(settings.ray.address):
        pending = []
        for number, docs in enumerate(batched(documents, settings.shard_size)):
            digest = content_sha256(docs)
            info = reusable_shard(folder, number, digest, key_digest)
            if info is not None:
                report.shards_reused += 1
                report.count_shard(info)
            elif owns(number):
                pending.append(ray.put(_shard_table(number, digest, docs)))
            infos.append(info)
            report.shard_digests.append(digest)
            report.count_documents(docs)
        if pending:
            started = time.perf_counter()
            for number, digest, data, stats in _encoded(pending, encoder, settings):
                info = write_shard(folder, number, data, digest, key_digest, **stats)
                infos[number] = info
                report.shards_encoded.append(number)
                report.count_shard(info)
            report.encode_seconds += time.perf_counter() - started
    report.shards_encoded.sort()
    report.shards_total = len(infos)
    remove_stale_sidecars(folder, len(infos))
    return infos


@contextlib.contextmanager
def _connected(address: str | None) -> Iterator[None]:
    """Join (or start) a cluster unless the caller already did; leave only what we started."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        yield
    finally:
        ray.shutdown()


def _encoded(pending: list, encoder: Encoder, settings: "BuildSettings") -> Iterator[tuple[int, str, ShardData, dict]]:
    """Run the pool over the pending shards; yield each shard's rows as it finishes (any order)."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = settings.show_progress
    options = settings.ray
    actors = min(_pool_size(options, ray.cluster_resources()), len(pending))
    rows = settings.rows(encoder)
    dataset = ray.data.from_arrow_refs(pending).map_batches(
        _ShardEncoder, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.cpus, num_gpus=options.gpus or None,
        fn_constructor_args=(settings, encoder.spec.to_dict(), rows, str(encoder.dtype).removeprefix("torch.")),
    )
    try:
        for row in dataset.iter_rows():
            yield _from_row(row)
    except ray.exceptions.RayError as exc:  # a dead node or actor: exit 1, not a bug, and what to do next
        raise DramaSearchError(f"Ray encoding failed; the shards already written are kept, rerun to resume: {exc}") \
            from exc


def _pool_size(options: RayOptions, resources: dict) -> int:
    """The requested size, else as many actors as the cluster's GPUs (or CPUs) can hold at once."""
    if options.actors is not None:
        return options.actors
    if options.gpus > 0:
        size = int(resources.get("GPU", 0) // options.gpus)
        if size < 1:
            raise UsageError("ray_gpus", f"the Ray cluster has {resources.get('GPU', 0):g} GPUs; "
                                         f"{options.gpus:g} per actor fits no actor (use --ray-gpus 0 for CPUs)")
        return size
    return max(1, int(resources.get("CPU", 1) // options.cpus))


class _ShardEncoder:
    """A Ray actor: loads the model once, then encodes one shard (one Arrow row) per call."""

    def __init__(self, settings: "BuildSettings", spec: dict, rows: RowSettings, dtype: str):
        import torch

        device = "cuda" if settings.ray.gpus > 0 else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(settings.ray.cpus)))
        self.rows = rows
        self.batch_tokens = settings.batch_tokens
        # Ray passes an actor's exception to the driver as text only (its class is lost), so a
        # failed load is kept and sent back as data by every call; the driver raises it.
        self.failure = ""
        try:
            self.encoder = load_encoder(settings.model, device=device, dtype=getattr(torch, dtype),
                                        max_length=settings.max_length, compile=settings.compile)
            _check_same_model(self.encoder.spec.to_dict(), spec, settings.model)
        except ModelLoadError as exc:
            self.failure = str(exc)

    def __call__(self, batch: dict) -> dict:
        number = int(batch["shard"][0])
        if self.failure:
            return {"shard": [number], "failure": [self.failure]}
        docs = [Document(_text(i), _text(t), _text(x)) for i, t, x in zip(batch["ids"][0], batch["titles"][0],
                                                                       batch["texts"][0])]
        data, stats = encode_shard(self.encoder, self.rows, docs, False, self.batch_tokens)
        vectors = np.asarray(data.vectors, dtype=np.float16)  # what write_shard stores: half the transfer
        chunks = b"" if data.chunk_rows is None else np.ascontiguousarray(data.chunk_rows, dtype=np.int64).tobytes()
        return {
            "shard": [number], "digest": batch["digest"], "dim": [vectors.shape[1]], "vectors": [vectors.tobytes()],
            "chunked": [data.chunk_rows is not None], "chunk_rows": [chunks],
            "hashes": [np.asarray(data.content_hashes, dtype=np.uint64).tobytes()],
            "ids": [[_binary(i) for i in data.ids]], "titles": [[_binary(t) for t, _ in data.fields]],
            "texts": [[_binary(x) for _, x in data.fields]], **{k: [v] for k, v in stats.items()}, "failure": [""],
        }


def _check_same_model(mine: dict, driver: dict, model: str) -> None:
    """Every node must encode with the driver's model: the build key records only the driver's."""
    changed = [f"{k} {mine[k]!r} here, {driver[k]!r} on the driver" for k in driver if mine.get(k) != driver[k]]
    if changed:
        raise ModelLoadError(f"node {socket.gethostname()}: {model!r} loads as another model ({'; '.join(changed)}); "
                             "every node needs the same model files and settings")


def _shard_table(number: int, digest: str, docs: list[Document]):
    """One shard as one Arrow row. Text travels as bytes: Arrow strings refuse lone surrogates."""
    import pyarrow as pa

    return pa.table({
        "shard": [number], "digest": [digest],
        "ids": pa.array([[_binary(d.id) for d in docs]], pa.list_(pa.binary())),
        "titles": pa.array([[_binary(d.title) for d in docs]], pa.list_(pa.binary())),
        "texts": pa.array([[_binary(d.text) for d in docs]], pa.list_(pa.binary())),
    })


def _from_row(row: dict) -> tuple[int, str, ShardData, dict]:
    if row["failure"]:
        raise ModelLoadError(row["failure"])
    vectors = np.frombuffer(row["vectors"], dtype=np.float16).reshape(-1, int(row["dim"]))
    chunk_rows = np.frombuffer(row["chunk_rows"], dtype=np.int64).reshape(-1, 4) if row["chunked"] else None
    data = ShardData(vectors=vectors, ids=[_text(i) for i in row["ids"]],
                     fields=[(_text(t), _text(x)) for t, x in zip(row["titles"], row["texts"])],
                     content_hashes=np.frombuffer(row["hashes"], dtype=np.uint64), chunk_rows=chunk_rows)
    stats = {k: int(row[k]) for k in ("truncated", "tokens", "empty")}
    return int(row["shard"]), str(row["digest"]), data, stats


def _binary(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")
