"""Ray backend evidence: a Ray build equals a local build; kill -9 and resume; --shard 0/2 + 1/2 + merge.

Every build runs the real CLI in a subprocess (`python -m dramasearch.cli build-index ...`), so the
timings include what a user waits for (model load, and for Ray the cluster start). Reported:
- local vs Ray (`--backend ray --address local`: a new local cluster with this machine's CPUs)
  wall time, medians over `--repeats` fresh builds;
- equality with the local build for the Ray build, the resumed Ray build and the merged
  sharded build: the same ids in the same rows, every vector row compared (bit-identical rows,
  largest difference, and whether every value is within one fp16 step), and the same top-10
  docids for every query;
- kill -9 of the Ray driver once about half the shards are on disk: the shards it left, the
  ones the rerun encoded (must be exactly the others), and which Ray processes outlived it.

    python benchmarks/bench_ray.py [--data ../shared/data/cranfield]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from dramasearch.index.generation import IndexDir
from dramasearch.index.segment import read_segment_info, read_shard_ids
from dramasearch.models import load_encoder
from dramasearch.searcher import Searcher
from dramasearch.topics import read_queries

SEGMENT = "seg-000000"


def cli(*args: str, log: Path) -> tuple[float, str]:
    """Run one dramasearch command; return its wall time and stdout (stderr goes to `log`)."""
    start = time.perf_counter()
    with open(log, "ab") as err:
        done = subprocess.run([sys.executable, "-m", "dramasearch.cli", *args], stdout=subprocess.PIPE, stderr=err,
                              check=True)
    return time.perf_counter() - start, done.stdout.decode()


def shard_counts(summary: str) -> dict:
    encoded, reused = re.search(r"\((\d+) encoded, (\d+) reused\)", summary).groups()
    seconds = re.search(r"encoding: ([\d.]+)s", summary)
    return {"encoded": int(encoded), "reused": int(reused), "encode_s": float(seconds.group(1)) if seconds else None}


def segment_rows(index: Path) -> tuple[list[str], np.ndarray]:
    folder = IndexDir(index).segments / SEGMENT
    shards = read_segment_info(folder).shard_infos()
    ids = [i for s in shards for i in read_shard_ids(folder, s)]
    vectors = np.concatenate([np.load(folder / f"{s.number:05d}.vec.npy", allow_pickle=False) for s in shards])
    return ids, vectors


def compare(index: Path, reference: Path, queries: list[str], encoder) -> dict:
    """Everything that must match between two builds of the same corpus."""
    ids, vectors = segment_rows(index)
    ref_ids, ref_vectors = segment_rows(reference)
    assert vectors.shape == ref_vectors.shape, (vectors.shape, ref_vectors.shape)
    diff = np.abs(vectors.astype(np.float32) - ref_vectors.astype(np.float32))
    ulp = np.spacing(np.abs(ref_vectors)).astype(np.float32)
    with Searcher(index, encoder=encoder) as mine, Searcher(reference, encoder=encoder) as theirs:
        got = mine.batch_search(queries, k=10)
        want = theirs.batch_search(queries, k=10)
    same_lists = sum([h.docid for h in a] == [h.docid for h in b] for a, b in zip(got, want))
    score_diff = max(abs(x.score - y.score) for a, b in zip(got, want) for x, y in zip(a, b))
    return {
        "rows": int(len(ids)), "same_ids_in_order": ids == ref_ids,
        "bit_identical_rows": int(np.all(vectors.view(np.uint16) == ref_vectors.view(np.uint16), axis=1).sum()),
        "max_abs_diff": float(diff.max()), "all_within_one_fp16_step": bool(np.all(diff <= ulp)),
        "queries": len(queries), "same_top10_docids": int(same_lists), "max_score_diff": float(score_diff),
    }


def kill_midway(build_args: list[str], index: Path, shards_total: int, log: Path) -> dict:
    """Start a Ray build, kill -9 its driver once half the shards are on disk, see what survived."""
    folder = index / "segments" / SEGMENT
    with open(log, "ab") as err:
        driver = subprocess.Popen([sys.executable, "-m", "dramasearch.cli", *build_args], stdout=err, stderr=err)
    target = shards_total // 2
    while driver.poll() is None and len(list(folder.glob("[0-9]*.json"))) < target:
        time.sleep(0.05)
    assert driver.poll() is None, "the build finished before it could be killed; use a smaller --shard-size"
    ray_processes = psutil.Process(driver.pid).children(recursive=True)  # the local cluster it started
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done = sorted(int(p.stem) for p in folder.glob("[0-9]*.json"))
    time.sleep(10)  # give Ray's own processes time to notice their driver is gone
    survivors = [p for p in ray_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    report = {"shards_on_disk_at_kill": done, "ray_processes_started": len(ray_processes),
              "ray_processes_alive_10s_after": [" ".join(p.cmdline()[:2])[-80:] for p in survivors]}
    for p in survivors:  # only processes this run started, by pid
        p.kill()
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/out/ray")
    args = parser.parse_args()
    out = Path(args.out)
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    log = out / "stderr.log"
    common = [args.data, "--model", args.model, "--shard-size", str(args.shard_size)]
    ray = ["--backend", "ray", "--address", "local"]
    report: dict = {"data": args.data, "model": args.model, "shard_size": args.shard_size,
                    "cpus": os.cpu_count(), "local": [], "ray": []}

    for r in range(args.repeats):
        seconds, summary = cli("build-index", *common, "-o", str(out / f"local-{r}"), log=log)
        report["local"].append({"wall_s": seconds, **shard_counts(summary)})
        seconds, summary = cli("build-index", *common, "-o", str(out / f"ray-{r}"), *ray, log=log)
        report["ray"].append({"wall_s": seconds, **shard_counts(summary)})
    for name in ("local", "ray"):
        report[f"{name}_median_wall_s"] = statistics.median(x["wall_s"] for x in report[name])
        report[f"{name}_median_encode_s"] = statistics.median(x["encode_s"] for x in report[name])
    shards_total = report["local"][0]["encoded"]

    reference = out / "local-0"
    encoder = load_encoder(args.model, device="cpu")
    queries = [q.text for q in read_queries(Path(args.data) / "queries.jsonl")]
    report["ray_vs_local"] = compare(out / "ray-0", reference, queries, encoder)

    killed = out / "ray-killed"
    report["kill"] = kill_midway(["build-index", *common, "-o", str(killed), *ray], killed, shards_total, log)
    seconds, summary = cli("build-index", *common, "-o", str(killed), *ray, log=log)
    report["kill"]["rerun"] = {"wall_s": seconds, **shard_counts(summary)}
    report["kill"]["rerun_encoded_exactly_the_missing"] = (
        report["kill"]["rerun"]["encoded"] == shards_total - len(report["kill"]["shards_on_disk_at_kill"]))
    report["resumed_vs_local"] = compare(killed, reference, queries, encoder)

    sharded = out / "sharded"
    runs = [subprocess.Popen([sys.executable, "-m", "dramasearch.cli", "build-index", *common, "-o", str(sharded),
                              "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=open(log, "ab")) for i in (0, 1)]
    report["sharded_runs"] = [shard_counts(p.communicate()[0].decode()) for p in runs]
    seconds, summary = cli("merge", str(sharded), log=log)
    report["merge"] = {"wall_s": seconds, **shard_counts(summary)}
    report["merged_vs_local"] = compare(sharded, reference, queries, encoder)

    (out / "results.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
