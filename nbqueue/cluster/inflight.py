"""The in-flight table: the tasks a cluster holds a lease on, and the chunks running them.

The feeder adds jobs and chunks, the writer takes chunks and removes jobs once their
outcomes are stored or handed back, and the monitor renews the leases and looks up
the task a stuck worker runs. One lock guards both maps; ``room`` tells the feeder
that jobs left.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from nbqueue.conf import Settings
from nbqueue.disk.leases import Lease
from nbqueue.disk.records import Header


@dataclass
class Job:
    """One leased task: its delivery, what it is, and the timeout that applies to it."""

    lease: Lease
    header: Header
    timeout: float | None
    judged: bool = False  # its outcome was decided outside its chunk (timeout, lost worker)
    cancelled: bool = False  # cancelled in flight: its run's end decides its outcome
    # the writer took an outcome of it (its run's or a verdict): the first one is its only
    # one; set in the writer's thread alone, so that no check-then-set races there
    decided: bool = False

    def attempts_allowed(self, settings: Settings) -> int:
        """Deliveries this task may have (0: any number)."""
        limit = self.header.max_attempts
        return settings.max_attempts if limit is None else limit

    def last_attempt(self, settings: Settings) -> bool:
        limit = self.attempts_allowed(settings)
        return bool(limit) and self.lease.attempt >= limit

    def is_final(self, success: bool, settings: Settings) -> bool:
        """Whether an outcome is the task's last: a success, a failure acknowledged
        (``ack_failures``, the default), or the last attempt."""
        if success:
            return True
        ack = self.header.ack_failure
        if ack if ack is not None else settings.ack_failures:
            return True
        return self.last_attempt(settings)


class InFlight:
    """Jobs by lease token, and the tokens each submitted chunk (a Future) runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._by_task: dict[str, Job] = {}
        self._chunks: dict[Future, list[str]] = {}
        self.room = threading.Event()  # set when jobs leave the table

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.lease.token] = job
            self._by_task[job.header.id] = job

    def add_chunk(self, future: Future, jobs: list[Job]) -> None:
        with self._lock:
            self._chunks[future] = [job.lease.token for job in jobs]

    def take_chunk(self, future: Future) -> list[Job]:
        """The jobs of a finished chunk still in the table; the chunk leaves it."""
        with self._lock:
            tokens = self._chunks.pop(future, [])
            return [self._jobs[t] for t in tokens if t in self._jobs]

    def remove(self, tokens: Iterable[str]) -> None:
        with self._lock:
            for token in tokens:
                job = self._jobs.pop(token, None)
                if job is not None and self._by_task.get(job.header.id) is job:
                    del self._by_task[job.header.id]
        self.room.set()

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def renewable(self) -> list[str]:
        """Tokens of the jobs whose outcome is not decided yet: their leases are renewed."""
        with self._lock:
            return [token for token, job in self._jobs.items() if not job.judged]

    def cancelled(self) -> set[str]:
        """Tokens of the jobs cancelled in flight."""
        with self._lock:
            return {token for token, job in self._jobs.items() if job.cancelled}

    def chunks(self) -> list[Future]:
        with self._lock:
            return list(self._chunks)

    def chunk_count(self) -> int:
        return len(self._chunks)

    def chunks_within(self, tokens: set[str]) -> list[Future]:
        """The chunks all of whose tasks are among ``tokens``."""
        with self._lock:
            return [future for future, chunk in self._chunks.items() if set(chunk) <= tokens]

    def job(self, token: str) -> Job | None:
        return self._jobs.get(token)

    def job_of_task(self, task_id: str) -> Job | None:
        return self._by_task.get(task_id)

    def groups(self, task_ids: set[str]) -> dict[str, int]:
        """How many of ``task_ids`` each group has in flight."""
        counts: dict[str, int] = {}
        with self._lock:
            for job in self._jobs.values():
                group = job.header.group
                if group is not None and job.header.id in task_ids:
                    counts[group] = counts.get(group, 0) + 1
        return counts
