"""import-vectors: bring your own embeddings (npy, or parquet with id + vector columns), streamed.

The vectors become one segment like a build's, so add-dim, delete, compact and search work
the same. Text search needs an encoder: name the model that made the vectors (`model=`),
and its dimension is checked; without one the index answers `search_vectors` only.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import validate
from ..corpus import iter_lines
from ..errors import InputError, UsageError
from ..idhash import SeenIds, check_duplicate
from ..models import load_encoder
from .faiss_index import choose_spec
from .generation import Generation, IndexDir, _now
from .segment import ShardData, read_shard_ids, read_shard_info, seal_segment, shard_is_whole, write_shard
from .writer import RowSettings, SegmentReport, finish_work, new_ref, segment_name, start_work

FP16_MAX = 65504.0
IMPORT_SHARD_ROWS = 100_000
READ_ROWS = 65_536
METRICS = ("cosine", "dot")


def import_vectors(vectors: str | Path, output: str | Path, *, ids: str | Path | None = None,
                   id_column: str = "id", vector_column: str = "vector", model: str | None = None,
                   metric: str = "cosine", dims: tuple[int, ...] = (), index_kind: str = "auto",
                   shard_size: int = IMPORT_SHARD_ROWS) -> SegmentReport:
    """Write vectors (and their ids) as generation 1 of a new index."""
    if metric not in METRICS:
        raise UsageError("metric", f"metric must be one of {METRICS}, got {metric!r}")
    path = Path(vectors)
    blocks, dim = _reader(path, ids, id_column, vector_column)
    encoder_record = _encoder_record(model, dim, metric)
    dims = dims or (dim,)
    validate.dims(dims, dim)
    idx = IndexDir(output)
    idx.create()
    report = SegmentReport()
    name = segment_name(0)
    with idx.writer():
        key = {"operation": "import", "source": str(path.resolve()), "size": path.stat().st_size,
               "encoder": encoder_record, "shard_size": shard_size}
        folder = start_work(idx, "import", name, key)
        folder.mkdir(parents=True, exist_ok=True)
        seen, infos = SeenIds(), []
        for number, (block_ids, block) in enumerate(_rebatch(blocks(), shard_size)):
            _check_ids(path, seen, block_ids, number * shard_size, folder, shard_size)
            digest = hashlib.sha256(np.ascontiguousarray(block).tobytes() + "\0".join(block_ids).encode()).hexdigest()
            info = read_shard_info(folder, number)
            if info is None or info.content_sha256 != digest or not shard_is_whole(folder, info):
                if np.abs(block).max(initial=0) > FP16_MAX:
                    raise InputError(path, None, vector_column, f"values beyond {FP16_MAX} (fp16 storage) in rows "
                                     f"{number * shard_size}..; scale the vectors down")
                data = ShardData(vectors=block, ids=block_ids, fields=[("", "")] * len(block_ids),
                                 content_hashes=np.zeros(len(block_ids), dtype=np.uint64))
                info = write_shard(folder, number, data, digest)
                report.shards_encoded.append(number)
            else:
                report.shards_reused += 1
            infos.append(info)
            report.documents += info.documents
        info = seal_segment(folder, name, infos, dim, chunked=False)
        specs = [{"dim": d, "kind": choose_spec(index_kind, d, info.rows).kind} for d in dims]
        ref = new_ref(folder, info, 0, specs, metric == "cosine")
        settings = RowSettings(dtype="float16").to_dict() | {"imported_from": str(path)}
        idx.commit(Generation(generation=1, parent=None, operation="import", created=_now(), encoder=encoder_record,
                              settings=settings, indexes=specs, segments=[dataclasses.asdict(ref)],
                              next_key=info.rows, next_segment=1))
        finish_work(idx, name)
        idx.collect_garbage()
    report.rows, report.shards_total = report.documents, len(infos)
    return report


def _encoder_record(model: str | None, dim: int, metric: str) -> dict:
    if model is None:
        return {"name": "", "family": "vectors", "dim": dim, "max_length": 0, "pooling": "", "normalize":
                metric == "cosine", "query_prefix": "", "document_prefix": "", "wrap_bos_eos": False, "fingerprint": ""}
    spec = load_encoder(model).spec
    if spec.dim != dim:
        raise InputError(model, None, None, f"the model's dimension is {spec.dim} but the vectors have {dim}")
    return spec.to_dict()


def _reader(path: Path, ids_path, id_column: str, vector_column: str):
    """(blocks() -> iterator of (ids, float32 block), dim) for an .npy or .parquet file."""
    if not path.is_file():
        raise InputError(path, None, None, "no such file")
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(path, None, None, f"not a numeric .npy array ({exc})") from None
        if array.ndim != 2 or array.dtype.kind != "f":
            raise InputError(path, None, None, f"expected a 2-D float array, got {array.dtype} {array.shape}")

        def blocks() -> Iterator[tuple[list[str], np.ndarray]]:
            names = _id_lines(Path(ids_path), len(array)) if ids_path else None
            for start in range(0, len(array), READ_ROWS):
                stop = min(start + READ_ROWS, len(array))
                block_ids = next(names) if names else [str(i) for i in range(start, stop)]
                if len(block_ids) != stop - start:
                    more = "more" if len(block_ids) > stop - start else "fewer"
                    raise InputError(ids_path, None, None, f"has {more} ids than the {len(array)} vectors")
                yield block_ids, np.asarray(array[start:stop], dtype=np.float32)
            if names is not None and next(names, None):
                raise InputError(ids_path, None, None, f"has more ids than the {len(array)} vectors")

        return blocks, array.shape[1]
    if path.suffix == ".parquet":
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        missing = {id_column, vector_column} - set(file.schema_arrow.names)
        if missing:
            raise InputError(path, None, ",".join(sorted(missing)), f"column missing; columns are {file.schema_arrow.names}")

        def blocks() -> Iterator[tuple[list[str], np.ndarray]]:
            row = 0
            for batch in file.iter_batches(batch_size=READ_ROWS, columns=[id_column, vector_column]):
                column = batch.column(vector_column)
                lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
                if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
                    raise InputError(path, row + int(np.argmax(lengths != lengths[0])) + 1, vector_column,
                                     "vectors of different lengths")
                flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
                yield [str(v) for v in batch.column(id_column).to_pylist()], flat.reshape(len(batch), -1)
                row += len(batch)

        first = next(file.iter_batches(batch_size=1, columns=[vector_column]), None)
        if first is None:
            raise InputError(path, None, None, "has no rows")
        return blocks, len(first.column(vector_column)[0])
    raise InputError(path, None, None, "unsupported vectors file; use .npy (with --ids) or .parquet (id + vector columns)")


def _id_lines(path: Path, count: int) -> Iterator[list[str]]:
    """Ids one per line, in blocks of READ_ROWS (one extra read reports surplus ids)."""
    block: list[str] = []
    for line_no, docid in iter_lines(path):
        if not docid.strip():
            raise InputError(path, line_no, "id", "empty id")
        problem = validate.unsafe_text(docid)
        if problem:
            raise InputError(path, line_no, "id", problem)
        block.append(docid)
        if len(block) == READ_ROWS:
            yield block
            block = []
    if block:
        yield block


def _rebatch(blocks: Iterator[tuple[list[str], np.ndarray]], size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    ids: list[str] = []
    parts: list[np.ndarray] = []
    held = 0
    for block_ids, block in blocks:
        ids += block_ids
        parts.append(block)
        held += len(block)
        while held >= size:
            merged = np.concatenate(parts)
            yield ids[:size], merged[:size]
            ids, parts, held = ids[size:], [merged[size:]], held - size
    if held:
        yield ids, np.concatenate(parts)


def _check_ids(path: Path, seen: SeenIds, block_ids: list[str], start: int, folder: Path, shard_size: int) -> None:
    """Duplicate ids in bounded memory; a hash match is confirmed against the id actually stored."""
    def id_at(position: int) -> str:
        if position >= start:
            return block_ids[position - start]
        number, local = divmod(position, shard_size)  # a hash match, rare: reading the shard's ids is fine
        return read_shard_ids(folder, read_shard_info(folder, number))[local]

    for i, docid in enumerate(block_ids):
        first = check_duplicate(seen, docid, start + i, id_at)
        if first is not None:
            raise InputError(path, start + i + 1, "id", f"duplicate id {docid!r} (first at row {first + 1})")
