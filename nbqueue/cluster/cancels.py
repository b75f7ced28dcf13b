"""Cancel requests as a cluster sees them, and how it stops the tasks they name.

``nbqueue.cancel`` takes a queued task out of the queue itself. A task some cluster
holds a lease on is left to that cluster: the request goes into the queue's cancel
requests (``Broker.cancel``) and the cluster acts on it:

- a task leased after the request is never submitted (the feeder checks each batch);
- a task in a chunk that has not reached it yet is marked in the slot directory's
  ``cancelled`` folder, and its worker skips it;
- an item of a batch (``map``, ``async_iter``) is marked the same way, when its batch
  is submitted or is in flight, and its worker skips it, or stops it if it runs it;
- a running task is sent SIGUSR1 (``Executor.stop_task``), which raises TaskCancelled
  in it, and its worker is killed if it still runs it STOP_GRACE seconds later.

A task leased after its request, or one in flight that no worker began (and so never
will: see ``Cancels.cancel``), is a Failure saying it was cancelled at once. Any other
task cancelled in flight keeps its lease until its run has ended, and that end decides
its outcome: a Failure saying it was cancelled (skipped, stopped, or its worker killed), or
the result of a run that finished before the cancel reached it. Either way the outcome is
final (hooks run; it is never delivered again), and no new delivery of the task (a
``retry``, which needs that outcome) can run beside the old run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from nbqueue.cluster.executors import Executor
from nbqueue.cluster.inflight import InFlight, Job
from nbqueue.disk.broker import Broker
from nbqueue.disk.hosts import CANCELLED_DIR, read_begun
from nbqueue.disk.names import batch_of, task_of
from nbqueue.disk.records import Cause, Header

log = logging.getLogger(__name__)

STOP_GRACE = 1.0  # seconds a cancelled task has to stop before its worker is killed
WHY = "TaskCancelled: the task was cancelled with nbqueue.cancel"


class CancelRequests:
    """The cancel requests of the queue this cluster serves, as last read: the feeder
    and the monitor read them, the writer clears those of stored outcomes."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._lock = threading.Lock()
        self._count = 0  # the broker's cancel counter when the requests were read
        self._requests: dict[str, float] = {}  # task id -> when its cancel was requested
        self._ids: frozenset[str] = frozenset()
        self.has_items = False  # whether some request is for an item of a batch

    def requested(self) -> dict[str, float]:
        """Task id -> when its cancel was requested, now (one read of a counter when none
        is new). A request is for the deliveries sent before it: a ``retry`` sends the
        task again after the cancel's outcome, and that delivery must run."""
        count = self.broker.cancel_count()
        if count != self._count:
            with self._lock:
                self._requests = dict(self.broker.cancel_requests())
                self._ids = frozenset(self._requests)
                self.has_items = any(batch_of(task_id) for task_id in self._ids)
                self._count = count
        return self._requests

    def known(self) -> frozenset[str]:
        """The ids of the requests last read (no read of the store)."""
        return self._ids


def names(requests: dict[str, float], header: Header, task_id: str | None = None) -> bool:
    """Whether a cancel request (of ``requests``) is for this delivery of the task (or of
    its item ``task_id``): one sent before the request, not the delivery a ``retry``
    sent after its outcome."""
    when = requests.get(task_id or header.id)
    return when is not None and (header.sent or header.enqueued) <= when


class Cancels:
    """The tasks in flight that cancel requests name, and how this cluster stops them."""

    def __init__(
        self,
        *,
        requests: CancelRequests,
        slot_dir: str,
        inflight: InFlight,
        executor: Executor,
        judge: Callable[..., None],
    ) -> None:
        self.requests = requests
        self.slot_dir = slot_dir
        self.inflight = inflight
        self.executor = executor
        self.judge = judge  # the writer's: decides a task's outcome outside its chunk
        self._stopping: dict[str, tuple[float, object]] = {}  # task id -> (deadline, handle)
        self._marked: set[str] = set()  # ids with a marker in the slot directory
        self._unseen: dict[str, Job] = {}  # cancelled in flight, not seen running yet
        os.makedirs(os.path.join(slot_dir, CANCELLED_DIR), exist_ok=True)

    def requested(self) -> dict[str, float]:
        """Task id -> when its cancel was requested, now."""
        return self.requests.requested()

    def cancel(self, jobs: list[Job]) -> None:
        """Cancel tasks in flight, wherever they are: every one is marked before any
        running one is stopped, since its worker then goes on to its next task, which
        may be one of them. A task no worker noted as begun (loky's workers note each
        one before they look for its marker) never runs: it is cancelled at once. The
        outcome of any other comes from its chunk (the writer)."""
        for job in jobs:
            self._mark(job.header.id, job.lease.token)
        begun = self._begun()
        for job in jobs:
            if begun is not None and job.lease.token not in begun:
                self.judge(job, WHY, Cause.CANCELLED, attempt=job.lease.attempt, final=True)
            else:
                job.cancelled = True
                self._unseen[job.header.id] = job
        inflight = self.inflight
        for future in inflight.chunks_within(inflight.cancelled()):
            future.cancel()  # one not started yet never runs: its tasks are cancelled now
        self._stop_running()

    def _begun(self) -> set[str] | None:
        """The lease tokens of the tasks this cluster's workers noted as begun (None: its
        executor's workers note none)."""
        if not self.executor.notes_begun:
            return None
        begun: set[str] = set()
        for entry in os.scandir(self.slot_dir):
            if entry.name.isdigit():
                begun |= read_begun(entry.path)
        return begun

    def _stop_running(self) -> None:
        """Stop the cancelled tasks seen running: a task may start just as it is cancelled,
        and dask reports a start a little late, so each is looked for as long as it is in
        flight."""
        now = time.monotonic()
        for running_id, _, _, handle in self.executor.running():
            task_id = task_of(running_id)  # a batch runs its items under their own ids
            if self._unseen.pop(task_id, None) is not None:
                log.info("stopping cancelled task %s", task_id)
                self.executor.stop_task(handle)
                self._stopping[task_id] = (now + STOP_GRACE, handle)
        inflight = self.inflight
        for task_id, job in list(self._unseen.items()):
            if inflight.job_of_task(task_id) is not job:  # its chunk ended
                del self._unseen[task_id]

    def _marker(self, task_id: str) -> str:
        return os.path.join(self.slot_dir, CANCELLED_DIR, task_id)

    def unmark(self, task_id: str) -> None:
        """A task sent again (``nbqueue.retry``) after it was cancelled: it runs now."""
        self._unseen.pop(task_id, None)
        self._stopping.pop(task_id, None)
        if task_id in self._marked:
            self._marked.discard(task_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker(task_id))

    def mark_items(self, requests: dict[str, float], header: Header, token: str) -> None:
        """Mark the items of batch ``header`` (delivered as ``token``) whose cancel was
        requested since it was sent, for its worker to skip them (before it is
        submitted)."""
        prefix = header.id[:28]
        for task_id in requests:
            if (
                task_id.startswith(prefix)
                and task_id not in self._marked
                and batch_of(task_id) is not None
                and names(requests, header, task_id)
            ):
                self._mark(task_id, token)

    def _mark(self, task_id: str, token: str) -> None:
        """A task's marker, naming the delivery it cancels (its lease token): a marker
        left of it never stops a later delivery of the task (a ``retry``)."""
        self._marked.add(task_id)  # first: an ``unmark`` meanwhile removes the file
        with open(self._marker(task_id), "w") as marker:
            marker.write(token)

    def _cancel_items(self, requests: dict[str, float]) -> None:
        """Mark the requested items of the batches in flight, and stop those running."""
        new = set()
        for task_id in requests:
            where = batch_of(task_id)
            if where is None or task_id in self._marked:
                continue
            job = self.inflight.job_of_task(where[0])
            if job is not None and not job.judged and names(requests, job.header, task_id):
                self._mark(task_id, job.lease.token)
                new.add(task_id)
        if not new:
            return
        now = time.monotonic()
        batches = {task_of(task_id) for task_id in new}
        for task_id, _, _, handle in self.executor.running():
            # a worker's slot names the item it runs (items with a time limit) or its
            # batch: it stops the item it runs only if that one is marked
            if task_id in new or task_id in batches:
                log.info("stopping cancelled item(s) of %s", task_id)
                self.executor.stop_task(handle)
            if task_id in new:  # killed if it does not stop
                self._stopping[task_id] = (now + STOP_GRACE, handle)

    def check(self) -> None:
        """Act on new requests for tasks in flight; kill workers that did not stop."""
        requests = self.requested()
        if self.requests.has_items:
            self._cancel_items(requests)
        # a job looked up now may be a delivery sent after the request was read (a retry
        # of the task, once its cancel's outcome was stored): only those sent before count
        found = [self.inflight.job_of_task(task_id) for task_id in requests]
        jobs = [
            job
            for job in found
            if job is not None and not (job.judged or job.cancelled) and names(requests, job.header)
        ]
        if jobs:
            self.cancel(jobs)
        elif self._unseen:
            self._stop_running()
        if not self._stopping:
            return
        running = {}
        for state in self.executor.running():  # a batch's running item stands for it too
            running[state[0]] = running[task_of(state[0])] = state[3]
        now = time.monotonic()
        for task_id, (deadline, handle) in list(self._stopping.items()):
            if running.get(task_id) != handle:
                del self._stopping[task_id]
            elif now > deadline:
                log.warning(
                    "cancelled task %s did not stop within %g s; killing its worker %s",
                    task_id,
                    STOP_GRACE,
                    handle,
                )
                self.executor.kill(handle)
                del self._stopping[task_id]
