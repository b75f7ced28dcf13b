"""The monitor: the cluster's clock, ten times a second.

- it renews the leases of the tasks in flight, so that a task longer than ``retry``
  is not delivered twice, and notices leases lost while the cluster stalled;
- it kills a worker stuck past its task's timeout (tier 2 of timeouts, see
  ``nbqueue.worker``);
- once a second it writes the cluster's heartbeat, puts the expired leases of dead
  clusters back in the queue, and checks that the store directory is still the one
  the cluster opened (``StoreGone`` stops the cluster; every write batch checks it
  too, see ``signing.Anchor``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from nbqueue.cluster.cancels import Cancels
from nbqueue.cluster.executors import Executor
from nbqueue.cluster.inflight import InFlight
from nbqueue.cluster.writer import Writer
from nbqueue.conf import Settings
from nbqueue.disk import signing
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import drop
from nbqueue.disk.names import task_of
from nbqueue.disk.records import Cause
from nbqueue.disk.storage import store_trouble
from nbqueue.errors import StoreGone

log = logging.getLogger(__name__)

HEARTBEAT = 1.0
TICK = 0.1


class Monitor:
    """Renews leases, enforces timeouts, beats, reaps and watches the store: a step is
    one tick (one thread)."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: Broker,
        executor: Executor,
        inflight: InFlight,
        cancels: Cancels,
        writer: Writer,
        beat: Callable[[], None],
        settle_waiting: Callable[[], None],
        wakeup: threading.Event,
        stopping: threading.Event,
        shutting_down: threading.Event,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.directory = broker.directory
        self.executor = executor
        self.inflight = inflight
        self.cancels = cancels
        self.writer = writer
        self.beat = beat  # writes the cluster's heartbeat
        self.settle_waiting = settle_waiting  # moves on the tasks that wait for others
        self.wakeup = wakeup
        self.stopping = stopping
        self.shutting_down = shutting_down
        self._key = self._key_identity()
        self._last_error: str | None = None  # the store trouble logged last, if any
        self.wake = threading.Event()  # a cancel request of this process: act now
        self._renew_every = min(settings.retry / 4, 10.0)
        self._last_renew = self._last_beat = self._last_check = time.monotonic()
        self._renew_failed = False

    def step(self) -> bool:
        """One tick: a timeout or cancel is acted on at once, leases are renewed every
        ``retry / 4`` seconds, and once a second the store is checked, the heartbeat
        written and expired leases reaped. False once the executor is shut down."""
        if self.stopping.is_set() and self.shutting_down.is_set():
            return False
        self.wake.wait(TICK)
        self.wake.clear()
        if time.monotonic() - self._last_check >= HEARTBEAT:
            self._last_check = time.monotonic()
            self.check_store()  # outside the try: a gone store stops the cluster
        try:
            self.enforce_timeouts()
            self.cancels.check()
        except Exception as exc:
            self._log_error(exc)
        now = time.monotonic()
        beat_due = now - self._last_beat >= HEARTBEAT
        # a renewal that failed (a full disk) is tried again each second, and until it
        # succeeds nothing is reaped: this cluster's own leases are renewed, not
        # reaped; the heartbeat goes on (it says why the cluster waits)
        if now - self._last_renew >= self._renew_every or (beat_due and self._renew_failed):
            self._last_renew = now
            self._renew_failed = not self._tried(self._renew)
        if beat_due:
            self._last_beat = now
            beat = self.stopping.is_set() or self._tried(self.beat)
            settled = self.stopping.is_set() or self._tried(self.settle_waiting)
            if not self._renew_failed and self._tried(self._reap) and beat and settled:
                self._last_error = None  # the store took this second's writes
        return True

    def _reap(self) -> None:
        reaped = self.broker.reap()
        if reaped:
            log.info("%d expired lease(s) back in the queue", reaped)
            self.wakeup.set()

    def _tried(self, work: Callable[[], None]) -> bool:
        """Do one piece of a tick's work; an error is logged and the tick goes on."""
        try:
            work()
            return True
        except Exception as exc:
            self._log_error(exc)
            return False

    def _log_error(self, exc: Exception) -> None:
        """Log an error of the loop, which goes on; the same trouble of the store again
        and again (a full disk, every second) only once, with no traceback."""
        text = store_trouble(exc, os.path.join(self.directory, "queue"))
        if text is None:
            log.exception("monitor error; going on")
        elif text != self._last_error:
            log.warning(
                "the monitor could not write to the store (leases, "
                "heartbeat); it tries again every second: %s",
                text,
            )
        self._last_error = text

    def _renew(self) -> None:
        """Extend the leases in flight; drop the chunks of leases lost meanwhile: their
        tasks belong to another delivery (chunks not started never start, and the
        writer's fence drops the outcomes of the others)."""
        lost = self.broker.renew(self.inflight.renewable(), self.settings.retry)
        if not lost:
            return
        log.warning(
            "lost the leases of %d task(s) (this cluster was "
            "stalled for over %g s); they are delivered again elsewhere",
            len(lost),
            self.settings.retry,
        )
        for future in self.inflight.chunks_within(set(lost)):
            future.cancel()

    def _key_identity(self) -> tuple[int, int]:
        key = os.stat(os.path.join(self.directory, signing.KEY_FILE))
        return key.st_dev, key.st_ino

    def check_store(self) -> None:
        """Stop if the store directory (or its key) was deleted or replaced under the
        cluster: what it stores would land in files no one can read, or in a directory
        another user put in its place (then StoreSwapped, an InsecureStoreError)."""
        directory = self.directory
        try:
            self.broker.place.check()
            if self._key_identity() != self._key:
                raise StoreGone(f"the key of {directory} was replaced")
        except (FileNotFoundError, StoreGone) as exc:
            drop(directory, close=False)  # a new Cluster() opens the new store
            kind = type(exc) if isinstance(exc, StoreGone) else StoreGone
            raise kind(
                f"the store directory {directory} was deleted or replaced while "
                f"this cluster ran, so it stopped ({exc}); start a new Cluster() to "
                "serve the store there now"
            ) from None

    def enforce_timeouts(self) -> None:
        """Tier 2 of timeouts: kill a worker stuck past its task's deadline + grace
        (dask has no tier 1: its grace is 0, and ``kill`` restarts the dask worker)."""
        executor = self.executor
        now = time.time()
        grace, note = executor.kill_grace, executor.timeout_note
        for task_id, _, deadline, handle in executor.running():
            if not deadline or now < deadline + grace:
                continue
            job = self.inflight.job_of_task(task_of(task_id))  # an item: its batch's
            if job is None or job.judged:
                continue
            self.writer.judge(
                job,
                f"TaskTimeout: timed out after {job.timeout:g} s {note}",
                Cause.TIMEOUT,
                attempt=job.lease.attempt,
                final=job.is_final(False, self.settings),
            )
            log.warning(
                "task %s ran past its %g s timeout; killing worker %s",
                job.header.name,
                job.timeout,
                handle,
            )
            executor.kill(handle)
