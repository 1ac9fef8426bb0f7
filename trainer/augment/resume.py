"""Resumable jsonl output for long augmentation runs (LLM queries, mining, reranking).

Inputs are processed in fixed batches, in order. After each batch its examples are appended
to the output and fsynced, then a small progress file (written atomically) records how many
inputs are done and how many bytes of output they own. A rerun after a crash (even kill -9)
cuts the output back to that byte count, which drops a torn last line and any lines of a
batch whose progress was never recorded, then continues with the next input: no example is
lost or written twice. The progress file exists before the output does, so an output without
one was not written by this code and is never touched.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from dramasearch.errors import InputError
from dramasearch.fsutil import atomic_write_bytes

from ..data import TrainingExample, example_line, read_examples

T = TypeVar("T")


@dataclass
class Progress:
    config: dict
    inputs_done: int = 0
    examples: int = 0
    bytes: int = 0
    finished: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # what each step wants reported (dropped, kept, ...)


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


class ResumableOutput:
    """An output jsonl plus its progress file; `config` must match the run that started it.

    Steps put absolute input paths in `config`, so a rerun from another folder still matches.
    """

    def __init__(self, out: str | Path, config: dict):
        self.out = Path(out)
        self.progress_file = progress_path(self.out)
        config = json.loads(json.dumps(config))  # the form it takes on disk, so comparisons are fair
        if self.progress_file.is_file():
            self.progress = self._load(config)
            self._truncate()
        else:
            if self.out.exists():
                raise InputError(
                    self.out, None, None,
                    f"exists but has no {self.progress_file.name}, so it was not written by a resumable run; "
                    "delete it or choose another output",
                )
            self.progress = Progress(config)
            self._save()
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.touch()

    def written(self) -> Iterator[TrainingExample]:
        """The examples already in the output (for de-duplication across a resume)."""
        return read_examples(self.out) if self.progress.bytes else iter(())

    def commit(self, inputs: int, examples: list[TrainingExample], counts: dict[str, int] | None = None) -> None:
        data = "".join(example_line(e) for e in examples).encode("utf-8")
        with open(self.out, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        p = self.progress
        p.inputs_done += inputs
        p.examples += len(examples)
        p.bytes += len(data)
        for key, value in (counts or {}).items():
            p.counts[key] = p.counts.get(key, 0) + value
        self._save()

    def finish(self) -> None:
        self.progress.finished = True
        self._save()

    def _save(self) -> None:
        atomic_write_bytes(self.progress_file, (json.dumps(asdict(self.progress), indent=1) + "\n").encode())

    def _load(self, config: dict) -> Progress:
        try:
            raw = json.loads(self.progress_file.read_text(encoding="utf-8"))
            progress = Progress(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(self.progress_file, None, None, f"unreadable progress file ({exc}); delete it and the output to start over") from None
        if progress.config != config:
            changed = sorted(k for k in config.keys() | progress.config.keys() if config.get(k) != progress.config.get(k))
            raise InputError(
                self.progress_file, None, "config",
                f"this output was started with other settings ({', '.join(changed)} differ); "
                "rerun with the same settings to resume, or delete the output and its progress file",
            )
        return progress

    def _truncate(self) -> None:
        if not self.out.exists() and self.progress.bytes == 0:
            self.out.touch()  # a crash between writing the first progress file and creating the output
        size = self.out.stat().st_size if self.out.exists() else -1
        if size < self.progress.bytes:
            raise InputError(
                self.out, None, None,
                f"holds {max(size, 0)} bytes but {self.progress_file.name} records {self.progress.bytes}; "
                "the output was changed by something else: delete both files to start over",
            )
        if size > self.progress.bytes:
            with open(self.out, "r+b") as f:
                f.truncate(self.progress.bytes)
                os.fsync(f.fileno())


def run_batches(
    output: ResumableOutput,
    inputs: Iterable[T],
    process: Callable[[int, list[T]], tuple[list[TrainingExample], dict[str, int]]],
    *,
    batch_size: int,
    total: int | None = None,
    desc: str = "",
) -> Progress:
    """Feed `inputs` to `process(batch_index, batch)` in batches, skipping those already done.

    Batch boundaries do not move across a resume (batch i is always inputs[i*bs:(i+1)*bs]),
    so a step that seeds its sampling with the batch index reproduces an uninterrupted run.
    `batch_size` belongs in the output's config for that reason.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    progress = output.progress
    if progress.finished:
        return progress
    done = progress.inputs_done
    it = iter(inputs)
    skipped = sum(1 for _ in itertools.islice(it, done))
    if skipped < done:
        raise InputError(output.progress_file, None, "inputs_done", f"records {done} inputs done but the input has only {skipped}; were the inputs changed?")
    batch_index = done // batch_size
    with tqdm(total=total, initial=done, desc=desc, unit="input") as bar:
        while batch := list(itertools.islice(it, batch_size)):
            examples, counts = process(batch_index, batch)
            output.commit(len(batch), examples, counts)
            bar.update(len(batch))
            batch_index += 1
    output.finish()
    return progress
