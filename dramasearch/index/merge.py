"""`dramasearch merge INDEX`: assemble the shards of `--shard I/N` runs into generation 1, encoding nothing.

For SLURM arrays and Kubernetes jobs: N workers run `build-index --shard I/N` into one folder on
shared storage, then one step runs `merge`. It needs neither the corpus nor the model: every
`--shard` run records the build plan (the content key, FAISS dims and kind, and the hash of
every shard slice), and merge checks each shard's sidecar against it before sealing.
"""
from __future__ import annotations

from ..errors import IndexFormatError
from .build import BUILD_SEGMENT, BuildReport, _index_sizes, assemble, read_plan, settings_digest
from .generation import IndexDir
from .segment import read_segment_info
from .writer import reusable_shard


def merge_index(output: str) -> BuildReport:
    """Seal, index and commit the shards on disk; fail listing the shards not done yet."""
    idx = IndexDir(output)
    idx.check_format()
    report = BuildReport(output=str(output))
    latest = idx.latest()
    if latest is not None:
        return _already_merged(idx, report, latest)
    plan = read_plan(idx)
    if plan is None:
        raise IndexFormatError(f"{idx.root}: no build plan; run `build-index --shard I/N` into this folder first "
                               "(each run records what merge needs), or `build-index` without --shard")
    folder = idx.segments / BUILD_SEGMENT
    key_digest = settings_digest(plan.key)
    infos = [reusable_shard(folder, number, digest, key_digest) for number, digest in enumerate(plan.digests)]
    report.shards_total = len(infos)
    report.shards_reused = sum(info is not None for info in infos)
    for info in infos:
        if info is not None:
            report.documents += info.documents
            report.empty += info.empty
            report.count_shard(info)
    return assemble(idx, plan, infos, report)


def _already_merged(idx: IndexDir, report: BuildReport, latest: int) -> BuildReport:
    """A rerun after success (a retried job step) is a no-op that says so."""
    generation = idx.read(latest)
    if generation.operation not in ("build", "repair"):
        raise IndexFormatError(f"{idx.root} is past its build (generation {generation.generation}, "
                               f"{generation.operation}); there is nothing to merge")
    sealed = read_segment_info(idx.segments / BUILD_SEGMENT)
    report.shards_total = report.shards_reused = len(sealed.shards)
    report.documents, report.rows = sealed.documents, sealed.rows
    report.empty, report.truncated = sealed.empty, sealed.truncated
    report.indexes = _index_sizes(generation.indexes, generation.refs()[0])
    report.generation, report.complete = 1, True
    return report
