"""The store's waiting tasks, from a cluster's side (``nbqueue.disk.waiting``).

The monitor settles them once a second, and notes which outcomes they wait for; the
writer settles those that wait for an outcome it has just stored, at once. The failures
settled (a dependency failed) have their hooks run like any task's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable

from nbqueue.cluster.writer import HookRunner
from nbqueue.disk import waiting
from nbqueue.disk.broker import Broker
from nbqueue.disk.names import task_of
from nbqueue.disk.store import Store

log = logging.getLogger(__name__)

LOST_CHECK = 10.0  # seconds between looks for waiting tasks whose dependency is lost


class Waiting:
    """Moves the waiting tasks on once what they wait for has ended."""

    def __init__(self, broker: Broker, store: Store, save_limit: int, hooks: HookRunner) -> None:
        self.broker = broker
        self.store = store
        self.save_limit = save_limit
        self.hooks = hooks
        self._lock = threading.Lock()  # one settle at a time in this cluster
        # the task (a batch's, for an item) whose outcome -> the tasks that wait for it
        self._waiters: dict[str, set[str]] = {}
        self._looked = time.monotonic()  # when it last looked for lost dependencies

    def check(self) -> None:
        """Settle every waiting task (the monitor, once a second); every LOST_CHECK
        seconds, also those that wait for a task that will never end (which takes a look
        through the whole queue)."""
        now = time.monotonic()
        look = now - self._looked >= LOST_CHECK
        if look:
            self._looked = now
        self._settle(None, look)

    def stored(self, task_ids: Iterable[str]) -> None:
        """Outcomes of these tasks were stored: settle the tasks that wait for them."""
        if self.broker.waits_added:  # this process made tasks wait: look at them all now
            self.broker.waits_added = False
            self._tried(None)
            return
        waiters = self._waiters
        if not waiters:
            return
        woken: set[str] = set()
        for task_id in task_ids:
            woken.update(waiters.get(task_id, ()))
        if woken:
            self._tried(woken)

    def _tried(self, only: Collection[str] | None) -> None:
        try:
            self._settle(only)
        except Exception as exc:  # the monitor settles them within a second
            log.warning("could not move on the tasks waiting for stored outcomes: %s", exc)

    def _settle(self, only: Collection[str] | None, look_for_lost: bool = False) -> None:
        with self._lock:
            failed, still = waiting.settle(
                self.broker, self.store, self.save_limit, only, look_for_lost
            )
            waiters: dict[str, set[str]] = {}
            for task_id, after in still.items():
                for dependency in after:
                    waiters.setdefault(task_of(dependency), set()).add(task_id)
            self._waiters = waiters
        for header, record in failed:
            log.info("task %s never ran: %s", header.name, record["result"])
            self.hooks.put_header(header, record)
