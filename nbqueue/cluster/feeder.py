"""The feeder: leases tasks from the queue and submits them to the executor in chunks.

Chunks: a task costs loky little, but each chunk costs a few store writes, so
tasks are sent in chunks sized to take ~``Executor.chunk_seconds`` by the running
average of task time (1 for slow tasks, up to MAX_CHUNK). While every worker has a
chunk, the feeder leases only whole chunks; the last of the queue is spread evenly so
that no worker idles.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from nbqueue.cluster.cancels import WHY, Cancels, names
from nbqueue.cluster.executors import Executor
from nbqueue.cluster.inflight import InFlight, Job
from nbqueue.cluster.writer import Writer
from nbqueue.conf import Settings
from nbqueue.disk import chains
from nbqueue.disk.broker import Broker
from nbqueue.disk.leases import Lease
from nbqueue.disk.names import new_task_id
from nbqueue.disk.records import Cause, Header, decode_header, refused_record
from nbqueue.disk.storage import store_trouble
from nbqueue.disk.store import Store
from nbqueue.errors import SignatureError

log = logging.getLogger(__name__)

MAX_CHUNK = 64
IDLE_POLL = 0.05  # seconds between queue polls of a cluster that has been idle for a while
HOT_POLL = 0.001  # ... and right after a task finished, when its caller may send the next


class Pace:
    """The running average of task time, which sizes the chunks: the writer measures
    each task that ends, the feeder sizes its next chunks by it."""

    def __init__(self, chunk_seconds: float) -> None:
        self.chunk_seconds = chunk_seconds
        self.task_seconds = chunk_seconds  # until measured: 1 per chunk

    def chunk_size(self) -> int:
        return max(1, min(MAX_CHUNK, int(self.chunk_seconds / max(self.task_seconds, 1e-6))))

    def measured(self, seconds: float) -> None:
        """A task ran for ``seconds``: the running average sizes the next chunks."""
        self.task_seconds = 0.8 * self.task_seconds + 0.2 * seconds


class Feeder:
    """Keeps the executor's workers busy with leased tasks: a step leases a batch and
    submits it in chunks, or waits for room or work (the cluster's first thread)."""

    def __init__(
        self,
        *,
        cluster_id: str,
        settings: Settings,
        broker: Broker,
        store: Store,
        executor: Executor,
        executor_name: str,
        inflight: InFlight,
        cancels: Cancels,
        writer: Writer,
        pace: Pace,
        workers: Callable[[], int],
        tally: Callable[[bool, int], None],
        wakeup: threading.Event,
        stopping: threading.Event,
    ) -> None:
        self.cluster_id = cluster_id
        self.settings = settings
        self.broker = broker
        self.store = store
        self.executor = executor
        self.executor_name = executor_name
        self.inflight = inflight
        self.cancels = cancels
        self.writer = writer
        self.pace = pace
        self.workers = workers  # dask's capacity changes as workers come and go
        self.tally = tally  # counts outcomes: tally(success, count)
        self.wakeup = wakeup
        self.stopping = stopping
        self._pause = settings.poll
        self._said: str | None = None  # the store's trouble logged last

    @property
    def task_seconds(self) -> float:
        return self.pace.task_seconds

    @task_seconds.setter
    def task_seconds(self, seconds: float) -> None:
        self.pace.task_seconds = seconds

    def chunk_size(self) -> int:
        return self.pace.chunk_size()

    def step(self) -> bool:
        """Feed the workers once; an error is logged and tried again in a second.
        False once the cluster stops."""
        if self.stopping.is_set():
            return False
        try:
            self._feed()
        except Exception as exc:
            trouble = store_trouble(exc, os.path.join(self.broker.directory, "queue"))
            if trouble is None:
                log.exception("feeder error; going on in 1 s")
            elif trouble != self._said:  # a full disk: said once, not every second
                log.warning("cannot lease tasks; trying again every second: %s", trouble)
            self._said = trouble
            time.sleep(1)
        return True

    def _feed(self) -> None:
        settings, broker, inflight = self.settings, self.broker, self.inflight
        workers = self.workers()
        chunk = self.chunk_size()
        room = workers * max(4, 2 * chunk) - len(inflight)
        if len(inflight) and (
            room < chunk or inflight.chunk_count() >= workers and broker.pending() < chunk
        ):
            # Every worker has a chunk: lease again once a whole chunk waits, or a
            # chunk finishes. Leasing each task as it comes would mean chunks of one,
            # and a round trip through the store per task.
            broker.flush_acks()
            inflight.room.wait(0.05)
            inflight.room.clear()
            return
        wanted = min(room, settings.bulk)
        leases = broker.lease(self.cluster_id, wanted, settings.retry)
        if not leases:
            # An empty poll is one read of a counter, without the write lock. Every
            # HOT_POLL seconds right after a wake-up (a task finished: its caller may
            # send the next), growing 10 % a poll to IDLE_POLL, so an idle cluster
            # costs little CPU. Enqueues in this process wake the feeder at once.
            woken = self.wakeup.wait(self._pause)
            self.wakeup.clear()
            self._pause = (
                min(HOT_POLL, settings.poll)
                if woken
                else min(self._pause * 1.1, max(IDLE_POLL, settings.poll))
            )
            return
        self._pause, self._said = settings.poll, None
        # a full batch goes in whole chunks; the last of the queue is spread evenly over
        # the workers so that none idles at the end
        self._dispatch(
            leases,
            chunk if len(leases) == wanted else min(chunk, math.ceil(len(leases) / workers)),
        )

    def _dispatch(self, leases: list[Lease], size: int) -> None:
        cancelled = self.cancels.requested()
        jobs = []
        for lease in leases:
            if lease.refused is not None:
                self._reject(lease, SignatureError(lease.refused))
                continue
            try:
                header = decode_header(self.broker.key, lease.package)
            except SignatureError as exc:
                self._reject(lease, exc)
                continue
            if lease.attempt > 1 and self._stored(header, lease):
                continue
            job = Job(lease, header, header.timeout or self.settings.timeout)
            self.inflight.add(job)
            if names(cancelled, header):  # leased after its cancel request: never runs
                self.writer.judge(job, WHY, Cause.CANCELLED, attempt=lease.attempt, final=True)
                continue
            self.cancels.unmark(header.id)
            if header.items and self.cancels.requests.has_items:
                self.cancels.mark_items(cancelled, header, lease.token)
            limit = job.attempts_allowed(self.settings)
            if limit and lease.attempt > limit:
                self.writer.judge(
                    job,
                    f"WorkerLost: gave up after {limit} attempts: each "
                    "time the task was lost (its worker or cluster died, or "
                    "it was stopped) before it finished",
                    Cause.WORKER_LOST,
                    attempt=lease.attempt - 1,
                    final=True,
                )
                continue
            jobs.append(job)
        size = max(1, size)
        for i in range(0, len(jobs), size):
            self._submit(jobs[i : i + size])

    def _stored(self, header: Header, lease: Lease) -> bool:
        """Whether a task delivered again already has its outcome stored (only final
        outcomes are): the cluster that stored it died before its ack was written, and
        its lease expired. The outcome stands; the delivery is acknowledged, not run."""
        try:
            record = self.store.part(bool(header.cached)).get(header.id)
            if record is None or None in record.get("items", ()):
                return False  # not stored, or a batch sent again for items of it
        except Exception:  # unreadable now: run it, as before the outcome was known
            return False
        log.info(
            "task %s is delivered again, but its outcome is stored: not run again", header.name
        )
        if header.then is not None:  # its cluster may have died before its chain went on
            try:
                chains.go_on(self.broker, self.store, header, record, self.settings.save_limit)
            except Exception as exc:
                log.error("the chain after task %s cannot go on: %s", header.name, exc)
        try:
            self.broker.ack([lease.token])
        except Exception:
            self.broker.ack_soon([lease.token])
        return True

    def _submit(self, jobs: list[Job]) -> None:
        try:
            future = self.executor.submit(
                [job.header.item(job.timeout, job.lease.token) for job in jobs]
            )
        except Exception as exc:
            log.error(
                "cannot submit to the %s executor (%s); the tasks go back to the queue",
                self.executor_name,
                exc,
            )
            self.writer.hand_back(jobs, counted=False)
            time.sleep(1)
            return
        self.inflight.add_chunk(future, jobs)
        future.add_done_callback(self.writer.chunk_done)

    def _reject(self, lease: Lease, exc: SignatureError) -> None:
        """A package that fails the signature check: record it as a Failure, never run it."""
        task_id, name = new_task_id()
        log.warning("refused a queued package: %s (recorded as task %s)", exc, name)
        record = refused_record(task_id, name, f"SignatureError: {exc}", lease.attempt)
        self.store.save([record], self.settings.save_limit)
        self.broker.ack([lease.token])
        self.tally(False, 1)
