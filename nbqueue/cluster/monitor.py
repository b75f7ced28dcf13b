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
from typing import TYPE_CHECKING

from nbqueue.disk import signing
from nbqueue.disk.broker import drop_broker
from nbqueue.disk.storage import store_trouble
from nbqueue.disk.store import drop_store
from nbqueue.errors import StoreGone

if TYPE_CHECKING:
    from nbqueue.cluster import Cluster

log = logging.getLogger(__name__)

HEARTBEAT = 1.0
TICK = 0.1


class Monitor:
    """Renews leases, enforces timeouts, beats, reaps and watches the store (one thread)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._key = self._key_identity()
        self._last_error: str | None = None  # the store trouble logged last, if any
        self.wake = threading.Event()  # a cancel request of this process: act now

    def run(self) -> None:
        cluster = self.cluster
        cluster.broker.watch_cancels(self.wake)
        try:
            self._loop()
        finally:
            cluster.broker.unwatch_cancels(self.wake)

    def _loop(self) -> None:
        cluster = self.cluster
        renew_every = min(cluster.settings.retry / 4, 10.0)
        last_renew = last_beat = last_check = time.monotonic()
        renew_failed = False
        while not (cluster.stopping.is_set() and cluster.shutting_down):
            self.wake.wait(TICK)
            self.wake.clear()
            if time.monotonic() - last_check >= HEARTBEAT:
                last_check = time.monotonic()
                self.check_store()  # outside the try: a gone store stops the cluster
            try:
                self.enforce_timeouts()
                cluster.cancels.check()
            except Exception as exc:
                self._log_error(exc)
            now = time.monotonic()
            beat_due = now - last_beat >= HEARTBEAT
            # a renewal that failed (a full disk) is tried again each second, and until
            # it succeeds nothing is reaped: this cluster's own leases are renewed, not
            # reaped; the heartbeat goes on (it says why the cluster waits)
            if now - last_renew >= renew_every or (beat_due and renew_failed):
                last_renew = now
                renew_failed = not self._step(self._renew)
            if beat_due:
                last_beat = now
                beat = cluster.stopping.is_set() or self._step(self.beat)
                if not renew_failed and self._step(self._reap) and beat:
                    self._last_error = None  # the store took this second's writes

    def _reap(self) -> None:
        reaped = self.cluster.broker.reap()
        if reaped:
            log.info("%d expired lease(s) back in the queue", reaped)
            self.cluster.wakeup.set()

    def _step(self, step: Callable[[], None]) -> bool:
        """Run one step of the loop; an error is logged and the loop goes on."""
        try:
            step()
            return True
        except Exception as exc:
            self._log_error(exc)
            return False

    def _log_error(self, exc: Exception) -> None:
        """Log an error of the loop, which goes on; the same trouble of the store again
        and again (a full disk, every second) only once, with no traceback."""
        text = store_trouble(exc, os.path.join(self.cluster.directory, "queue"))
        if text is None:
            log.exception("monitor error; going on")
        elif text != self._last_error:
            log.warning(
                "the monitor could not write to the store (leases, "
                "heartbeat); it tries again every second: %s",
                text,
            )
        self._last_error = text

    def beat(self) -> None:
        cluster = self.cluster
        capacity = cluster.executor.capacity()
        if capacity:  # dask: its threads now (workers come and go)
            cluster.workers = capacity
        cluster.heartbeats.beat(cluster.id, cluster.info(), ttl=3 * HEARTBEAT + 2)

    def _renew(self) -> None:
        """Extend the leases in flight; drop the chunks of leases lost meanwhile: their
        tasks belong to another delivery (chunks not started never start, and the
        writer's fence drops the outcomes of the others)."""
        cluster = self.cluster
        lost = cluster.broker.renew(cluster.inflight.renewable(), cluster.settings.retry)
        if not lost:
            return
        log.warning(
            "lost the leases of %d task(s) (this cluster was "
            "stalled for over %g s); they are delivered again elsewhere",
            len(lost),
            cluster.settings.retry,
        )
        for future in cluster.inflight.chunks_within(set(lost)):
            future.cancel()

    def _key_identity(self) -> tuple[int, int]:
        key = os.stat(os.path.join(self.cluster.directory, signing.KEY_FILE))
        return key.st_dev, key.st_ino

    def check_store(self) -> None:
        """Stop if the store directory (or its key) was deleted or replaced under the
        cluster: what it stores would land in files no one can read, or in a directory
        another user put in its place (then StoreSwapped, an InsecureStoreError)."""
        directory = self.cluster.directory
        try:
            self.cluster.broker.place.check()
            if self._key_identity() != self._key:
                raise StoreGone(f"the key of {directory} was replaced")
        except (FileNotFoundError, StoreGone) as exc:
            drop_broker(directory, close=False)  # a new Cluster() opens the new store
            drop_store(directory, close=False)
            kind = type(exc) if isinstance(exc, StoreGone) else StoreGone
            raise kind(
                f"the store directory {directory} was deleted or replaced while "
                f"this cluster ran, so it stopped ({exc}); start a new Cluster() to "
                "serve the store there now"
            ) from None

    def enforce_timeouts(self) -> None:
        """Tier 2 of timeouts: kill a worker stuck past its task's deadline + grace
        (dask has no tier 1: its grace is 0, and ``kill`` restarts the dask worker)."""
        cluster = self.cluster
        executor = cluster.executor
        now = time.time()
        grace, note = executor.kill_grace, executor.timeout_note
        for task_id, _, deadline, handle in executor.running():
            if not deadline or now < deadline + grace:
                continue
            job = cluster.inflight.job_of_task(task_id)
            if job is None or job.judged:
                continue
            cluster.writer.judge(
                job,
                f"TaskTimeout: timed out after {job.timeout:g} s {note}",
                attempt=job.lease.attempt,
                final=job.is_final(False, cluster.settings),
            )
            log.warning(
                "task %s ran past its %g s timeout; killing worker %s",
                job.header.name,
                job.timeout,
                handle,
            )
            executor.kill(handle)
