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
import time
from typing import TYPE_CHECKING

from nbqueue.cluster.cancels import WHY
from nbqueue.cluster.inflight import Job
from nbqueue.disk.leases import Lease
from nbqueue.disk.names import new_task_id
from nbqueue.disk.records import decode_header, refused_record
from nbqueue.disk.storage import store_trouble
from nbqueue.errors import SignatureError

if TYPE_CHECKING:
    from nbqueue.cluster import Cluster

log = logging.getLogger(__name__)

MAX_CHUNK = 64
IDLE_POLL = 0.05  # seconds between queue polls of a cluster that has been idle for a while
HOT_POLL = 0.001  # ... and right after a task finished, when its caller may send the next


class Feeder:
    """Keeps the executor's workers busy with leased tasks (the cluster's first thread)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.task_seconds = cluster.executor.chunk_seconds  # until measured: 1 per chunk

    def chunk_size(self) -> int:
        seconds = self.cluster.executor.chunk_seconds
        return max(1, min(MAX_CHUNK, int(seconds / max(self.task_seconds, 1e-6))))

    def measured(self, seconds: float) -> None:
        """A task ran for ``seconds``: the running average sizes the next chunks."""
        self.task_seconds = 0.8 * self.task_seconds + 0.2 * seconds

    def run(self) -> None:
        cluster = self.cluster
        settings, broker, inflight = cluster.settings, cluster.broker, cluster.inflight
        pause = settings.poll
        said: str | None = None  # the store's trouble logged last
        while not cluster.stopping.is_set():
            try:
                chunk = self.chunk_size()
                room = cluster.workers * max(4, 2 * chunk) - len(inflight)
                if len(inflight) and (
                    room < chunk
                    or inflight.chunk_count() >= cluster.workers
                    and broker.pending() < chunk
                ):
                    # Every worker has a chunk: lease again once a whole chunk waits,
                    # or a chunk finishes. Leasing each task as it comes would mean
                    # chunks of one, and a round trip through the store per task.
                    broker.flush_acks()
                    inflight.room.wait(0.05)
                    inflight.room.clear()
                    continue
                wanted = min(room, settings.bulk)
                leases = broker.lease(cluster.id, wanted, settings.retry)
                if not leases:
                    # An empty poll is one read of a counter, without the write lock.
                    # Every HOT_POLL seconds right after a wake-up (a task finished: its
                    # caller may send the next), growing 10 % a poll to IDLE_POLL, so an
                    # idle cluster costs little CPU. Enqueues in this process wake the
                    # feeder at once.
                    woken = cluster.wakeup.wait(pause)
                    cluster.wakeup.clear()
                    pause = (
                        min(HOT_POLL, settings.poll)
                        if woken
                        else min(pause * 1.1, max(IDLE_POLL, settings.poll))
                    )
                    continue
                pause, said = settings.poll, None
                # a full batch goes in whole chunks; the last of the queue is spread
                # evenly over the workers so that none idles at the end
                self._dispatch(
                    leases,
                    chunk
                    if len(leases) == wanted
                    else min(chunk, math.ceil(len(leases) / cluster.workers)),
                )
            except Exception as exc:
                trouble = store_trouble(exc, os.path.join(cluster.directory, "queue"))
                if trouble is None:
                    log.exception("feeder error; going on in 1 s")
                elif trouble != said:  # a full disk: said once, not every second
                    log.warning(
                        "cannot lease tasks; trying again every second: %s",
                        trouble,
                    )
                said = trouble
                time.sleep(1)

    def _dispatch(self, leases: list[Lease], size: int) -> None:
        cluster = self.cluster
        cancelled = cluster.cancels.requested()
        jobs = []
        for lease in leases:
            if lease.refused is not None:
                self._reject(lease, SignatureError(lease.refused))
                continue
            try:
                header = decode_header(cluster.broker.key, lease.package)
            except SignatureError as exc:
                self._reject(lease, exc)
                continue
            job = Job(lease, header, header.timeout or cluster.settings.timeout)
            cluster.inflight.add(job)
            if header.id in cancelled:  # leased after its cancel request: never runs
                cluster.writer.judge(job, WHY, attempt=lease.attempt, final=True)
                continue
            cluster.cancels.unmark(header.id)
            limit = job.attempts_allowed(cluster.settings)
            if limit and lease.attempt > limit:
                cluster.writer.judge(
                    job,
                    f"WorkerLost: gave up after {limit} attempts: each "
                    "time the task was lost (its worker or cluster died, or "
                    "it was stopped) before it finished",
                    attempt=lease.attempt - 1,
                    final=True,
                )
                continue
            jobs.append(job)
        size = max(1, size)
        for i in range(0, len(jobs), size):
            self._submit(jobs[i : i + size])

    def _submit(self, jobs: list[Job]) -> None:
        cluster = self.cluster
        try:
            future = cluster.executor.submit(
                [job.header.item(job.timeout, job.lease.token) for job in jobs]
            )
        except Exception as exc:
            log.error(
                "cannot submit to the %s executor (%s); the tasks go back to the queue",
                cluster.executor_name,
                exc,
            )
            cluster.writer.hand_back(jobs, counted=False)
            time.sleep(1)
            return
        cluster.inflight.add_chunk(future, jobs)
        future.add_done_callback(cluster.writer.chunk_done)

    def _reject(self, lease: Lease, exc: SignatureError) -> None:
        """A package that fails the signature check: record it as a Failure, never run it."""
        cluster = self.cluster
        task_id, name = new_task_id()
        log.warning("refused a queued package: %s (recorded as task %s)", exc, name)
        record = refused_record(task_id, name, f"SignatureError: {exc}", lease.attempt)
        cluster.store.save([record], cluster.settings.save_limit)
        cluster.broker.ack([lease.token])
        cluster.failed += 1
