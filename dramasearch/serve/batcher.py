"""Dynamic micro-batching: concurrent queries share one encoder call.

Requests put their queries on a bounded queue; one worker thread takes the first query,
waits at most `max_wait` seconds for more, and stops early when the batch's padded size
(`queries x longest`, in tokens, as `batching.token_budget_batches` counts it) would pass
`max_tokens`. Queries with equal search options go to one `search` call (one encoder batch,
one FAISS batch). A full queue refuses new work at once (`QueueFull`), so memory stays bounded
however many clients push.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence


class QueueFull(Exception):
    """The queue cannot take these queries now; the client should retry later."""


@dataclass(slots=True)
class _Job:
    query: str
    options: Hashable  # jobs with equal options share a search call
    future: Future
    tokens: int | None = None  # counted by the worker when it first considers the job


@dataclass(frozen=True, slots=True)
class BatchCounters:
    queries: int
    batches: int
    encoder_calls: int
    batch_tokens: int
    rejected: int
    queued: int
    in_flight: int
    capacity: int


class MicroBatcher:
    """A bounded queue of queries and the one thread that searches them in batches."""

    def __init__(
        self,
        search: Callable[[Hashable, list[str]], Sequence],
        count_tokens: Callable[[str], int],
        *,
        max_tokens: int,
        max_queries: int = 64,
        max_wait: float = 0.002,
        capacity: int = 256,
        setup: Callable[[], None] | None = None,
    ):
        """`setup` runs first in the worker thread: per-thread settings such as FAISS's OpenMP threads."""
        if max_tokens < 1 or max_queries < 1 or capacity < 1 or max_wait < 0:
            raise ValueError("max_tokens, max_queries and capacity must be >= 1 and max_wait >= 0")
        self._search, self._count, self._setup = search, count_tokens, setup
        self.max_tokens, self.max_queries, self.max_wait, self.capacity = max_tokens, max_queries, max_wait, capacity
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._in_flight = 0
        self._queries = self._batches = self._calls = self._tokens = self._rejected = 0
        self._thread = threading.Thread(target=self._run, name="dramasearch-batcher", daemon=True)
        self._thread.start()

    def submit(self, queries: Sequence[str], options: Hashable) -> list[Future]:
        """Queue all `queries` or none of them; one future per query, resolved with its result."""
        jobs = [_Job(q, options, Future()) for q in queries]
        with self._ready:
            if self._stopping:
                raise QueueFull("the service is shutting down")
            if len(self._queue) + len(jobs) > self.capacity:
                self._rejected += len(jobs)
                raise QueueFull(f"the queue is full ({len(self._queue)} of {self.capacity} queries waiting)")
            self._queue.extend(jobs)
            self._in_flight += len(jobs)
            self._ready.notify()
        return [job.future for job in jobs]

    def counters(self) -> BatchCounters:
        with self._ready:
            return BatchCounters(self._queries, self._batches, self._calls, self._tokens, self._rejected,
                                 len(self._queue), self._in_flight, self.capacity)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new queries, answer the queued ones, then stop the worker."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout)

    # --- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while (collected := self._collect()) is not None:
            batch, tokens = collected
            groups: dict[Hashable, list[_Job]] = {}
            for job in batch:
                groups.setdefault(job.options, []).append(job)
            with self._ready:  # counted before answering, so a client that got its hits sees its batch counted
                self._queries += len(batch)
                self._batches += 1 if batch else 0
                self._calls += len(groups)
                self._tokens += tokens
            for options, jobs in groups.items():
                self._answer(options, jobs)
            with self._ready:
                self._in_flight -= len(batch)

    def _collect(self) -> tuple[list[_Job], int] | None:
        """The next batch: the first waiting query plus what arrives within max_wait and fits the
        token budget; None once stopping with nothing left. Tokens are counted outside the lock,
        so submitting never waits on the tokenizer."""
        batch: list[_Job] = []
        longest = 0
        deadline: float | None = None
        while len(batch) < self.max_queries:
            with self._ready:
                if deadline is None:
                    while not self._queue and not self._stopping:
                        self._ready.wait()
                    if not self._queue:
                        return None
                    deadline = time.monotonic() + self.max_wait
                elif not self._queue:
                    remaining = deadline - time.monotonic()
                    if self._stopping or remaining <= 0:
                        break
                    self._ready.wait(remaining)
                    continue
                job = self._queue.popleft()
                if job.future.cancelled():  # its client went away while it waited
                    self._in_flight -= 1
                    continue
            if job.tokens is None:
                job.tokens = self._size(job.query)
            if batch and (len(batch) + 1) * max(longest, job.tokens) > self.max_tokens:
                with self._ready:
                    self._queue.appendleft(job)  # it opens the next batch
                break
            batch.append(job)
            longest = max(longest, job.tokens)
        return batch, len(batch) * longest

    def _size(self, query: str) -> int:
        try:
            return max(1, self._count(query))
        except Exception:  # a query the tokenizer refuses fails in its own search call, with its own error
            return 1

    def _answer(self, options: Hashable, jobs: list[_Job]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._search(options, [job.query for job in live])
        except BaseException as exc:  # the error belongs to these requests, not to the worker
            for job in live:
                job.future.set_exception(exc)
            return
        for job, result in zip(live, results):
            job.future.set_result(result)
