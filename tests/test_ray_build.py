"""build-index on Ray (a local 2-CPU cluster) and `merge`: the same index as a local build.

The Ray tests skip when ray is not installed; the merge tests need no Ray.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dramasearch import Searcher
from dramasearch.errors import IndexFormatError, ModelLoadError, UsageError
from dramasearch.index.build import BuildSettings, build_index
from dramasearch.index.generation import IndexDir
from dramasearch.index.records import record_bytes
from dramasearch.index.merge import merge_index
from dramasearch.index.ray_backend import RayOptions
from dramasearch.index.segment import read_segment_info, read_shard_ids
from dramasearch.topics import read_queries

TINY = Path(__file__).resolve().parents[1] / "examples" / "tiny"
SHARD_SIZE = 7  # 30 documents -> 5 shards


def _settings(output: Path, **changes) -> BuildSettings:
    base = BuildSettings(corpus=str(TINY), output=str(output), model="minilm", dtype="fp32", shard_size=SHARD_SIZE,
                         store_text=True, show_progress=False)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, minilm):
    """The reference: a plain local build of examples/tiny."""
    out = tmp_path_factory.mktemp("local") / "index"
    build_index(_settings(out), minilm)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'dramasearch[ray]'); "
                                            "the Ray backend is optional")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _segment(index: Path):
    folder = IndexDir(index).segments / "seg-000000"
    info = read_segment_info(folder)
    ids = [i for shard in info.shard_infos() for i in read_shard_ids(folder, shard)]
    vectors = np.concatenate([np.load(folder / f"{s.number:05d}.vec.npy", allow_pickle=False)
                              for s in info.shard_infos()])
    return ids, vectors


def _assert_same_index(index: Path, reference: Path) -> None:
    """Same ids in the same rows, every vector within fp16 rounding, the same hits for every query."""
    ids, vectors = _segment(index)
    ref_ids, ref_vectors = _segment(reference)
    assert ids == ref_ids
    assert vectors.dtype == np.float16 and vectors.shape == ref_vectors.shape
    ulp = np.spacing(np.abs(ref_vectors)).astype(np.float32)  # one fp16 step at each value
    assert np.all(np.abs(vectors.astype(np.float32) - ref_vectors.astype(np.float32)) <= ulp)
    queries = [q.text for q in read_queries(str(TINY / "queries.jsonl"))]
    with Searcher(str(index), device="cpu") as mine, Searcher(str(reference), device="cpu") as theirs:
        got = [[h.docid for h in hits] for hits in mine.batch_search(queries, k=10)]
        want = [[h.docid for h in hits] for hits in theirs.batch_search(queries, k=10)]
    assert got == want
    generation, ref_generation = IndexDir(index).read(), IndexDir(reference).read()
    assert generation.encoder == ref_generation.encoder and generation.indexes == ref_generation.indexes
    assert generation.settings == ref_generation.settings


def test_ray_build_resumes_shards_and_equals_a_local_build(ray_cluster, local_index, tmp_path, minilm):
    out = tmp_path / "ray"
    first = build_index(_settings(out, shard=(0, 2)), minilm)  # shards 0, 2, 4 on disk, as after a crash
    assert first.shards_encoded == [0, 2, 4] and IndexDir(out).latest() is None

    ray_settings = _settings(out, backend="ray", ray=RayOptions(actors=2))
    second = build_index(ray_settings, minilm)  # the driver keeps the finished shards; actors encode the rest
    assert second.shards_encoded == [1, 3] and second.shards_reused == 3
    assert second.complete and second.documents == 30 and second.rows == 30
    _assert_same_index(out, local_index)
    assert build_index(ray_settings, minilm).shards_encoded == []  # a rerun of a committed index encodes nothing


def test_a_node_that_loads_another_model_fails_the_build_with_its_reason(minilm):
    """The actor's check and the driver's side of it (Ray itself would pass an actor's exception as text)."""
    import torch

    from dramasearch.index.ray_backend import _check_same_model, _from_row
    from dramasearch.models import load_encoder

    shorter = load_encoder("minilm", device="cpu", dtype=torch.float32, max_length=64)
    with pytest.raises(ModelLoadError, match=r"max_length 64 here, 256 on the driver") as failure:
        _check_same_model(shorter.spec.to_dict(), minilm.spec.to_dict(), "minilm")
    _check_same_model(minilm.spec.to_dict(), minilm.spec.to_dict(), "minilm")  # the same model passes
    with pytest.raises(ModelLoadError, match="loads as another model"):
        _from_row({"shard": 3, "failure": str(failure.value)})


def test_ray_refuses_gpus_the_cluster_lacks(ray_cluster, tmp_path):
    settings = _settings(tmp_path / "gpu", backend="ray", ray=RayOptions(gpus=1))
    with pytest.raises(UsageError, match="0 GPUs"):
        build_index(settings)


def test_ray_settings_are_checked_before_any_model_load(tmp_path):
    with pytest.raises(UsageError, match="devices"):
        build_index(_settings(tmp_path / "a", backend="ray", devices=("cpu", "cpu")))
    with pytest.raises(UsageError, match="ray_actors"):
        build_index(_settings(tmp_path / "b", backend="ray", ray=RayOptions(actors=0)))
    with pytest.raises(UsageError, match="backend"):
        build_index(_settings(tmp_path / "c", backend="spark"))
    assert not (tmp_path / "a").exists()


def test_merge_assembles_shard_runs_like_a_local_build(local_index, tmp_path, minilm):
    from dramasearch.cli import cli

    out = tmp_path / "sharded"
    build_index(_settings(out, shard=(0, 2)), minilm)
    with pytest.raises(IndexFormatError, match=r"2 of 5 shards are not encoded yet: 1, 3 \(owned by --shard 1/2\)"):
        merge_index(str(out))
    build_index(_settings(out, shard=(1, 2)), minilm)
    result = CliRunner().invoke(cli, ["merge", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 shards (0 encoded, 5 reused)" in result.output and "committed generation 1" in result.output
    assert not (IndexDir(out).work / "seg-000000.plan.json").exists()
    _assert_same_index(out, local_index)
    again = merge_index(str(out))  # a retried merge step is a no-op
    assert again.complete and again.documents == 30


def test_merge_checks_each_shard_against_the_plan(tmp_path, minilm):
    out = tmp_path / "sharded"
    build_index(_settings(out, shard=(0, 1)), minilm)
    plan_path = IndexDir(out).work / "seg-000000.plan.json"
    plan = json.loads(plan_path.read_text())
    plan["digests"][2] = "0" * 64  # as if shard 2 had been made from another corpus slice
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(IndexFormatError, match=r"plan\.json: damaged build plan .*fails its checksum"):
        merge_index(str(out))  # edited by hand: not believed
    plan_path.write_bytes(record_bytes(plan))
    with pytest.raises(IndexFormatError, match=r"1 of 5 shards are not encoded yet: 2"):
        merge_index(str(out))


def test_merge_without_shard_runs_says_what_to_run(tmp_path):
    out = tmp_path / "empty"
    IndexDir(out).create()
    with pytest.raises(IndexFormatError, match="no build plan"):
        merge_index(str(out))
