"""Finding tasks in a queue by what their headers say (``reuse``, ``cancel``,
``status``), and ``Finding``: the part of a broker that does it, with the cancel
requests the queue keeps for the clusters that hold leased tasks.

The queue does not index its packages by task id: finding one means reading every
queued package and every leased one, checking and unpickling the headers that may
match (a few ids are first looked for as bytes, which skips the others). That is for
calls a user makes now and then, never for the path of every task. The broker calls
these inside its own transactions; the layout they read is the broker's (its module
docstring): queue rows under integer keys holding a bundle (a list of packages) or a
package delivered again (``(attempt, package)``), and lease rows ``{number: (attempt,
package)}`` named by the lease index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from nbqueue.disk.leases import PENDING, ROW, read_index
from nbqueue.disk.records import Header, decode_header
from nbqueue.disk.storage import checked_get, read_all
from nbqueue.errors import SignatureError

Match = Callable[[Header], bool]
_CANCELS = "cancels"  # task id -> when its cancel was requested (leased tasks only)
_CANCEL_COUNT = "cancels changed"
CANCELS_KEPT = 7 * 86400.0  # seconds a request no cluster acted on is kept


def matching(
    key: bytes, package: Any, match: Match, needles: list[bytes] | None = None
) -> Header | None:
    """The header of ``package`` if it matches, else None (a bad package never does)."""
    if needles is not None and not any(needle in package for needle in needles):
        return None
    try:
        header = decode_header(key, package)
    except SignatureError:
        return None
    return header if match(header) else None


def packages(values: Iterable[Any]) -> Iterator[bytes | bytearray]:
    """The packages in the queue's values: bundles, packages delivered again and lease
    rows."""
    for value in values:
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            value = [value]
        for item in value:
            if isinstance(item, tuple) and len(item) == 2:
                item = item[1]
            if isinstance(item, (bytes, bytearray)):
                yield item


def take_out(
    queue: Any,
    key: bytes,
    match: Match,
    needles: list[bytes] | None,
) -> list[tuple[Header, int, bytes]]:
    """Remove the queued packages that match from their rows; inside a transaction.
    Returns (header, deliveries so far, package) of each, in queue order."""
    removed: list[tuple[Header, int, bytes]] = []
    for row_key in list(queue.iterkeys()):
        if not isinstance(row_key, int):
            continue
        value = checked_get(queue, row_key, None, "a queue row")
        if isinstance(value, list):
            kept = []
            for package in value:
                header = matching(key, package, match, needles)
                if header is None:
                    kept.append(package)
                else:
                    removed.append((header, 0, package))
            if len(kept) == len(value):
                continue
            if kept:
                queue.set(row_key, kept)  # the same key: the same place in the queue
            else:
                queue.delete(row_key)
        elif isinstance(value, tuple):
            attempt, package = value
            header = matching(key, package, match, needles)
            if header is not None:
                removed.append((header, attempt, package))
                queue.delete(row_key)
    return removed


def leased(
    queue: Any, key: bytes, rows: Iterable[str], match: Match, needles: list[bytes] | None = None
) -> list[tuple[Header, int]]:
    """(header, attempt) of every package that matches in the lease rows ``rows``."""
    found = []
    for row in rows:
        held = checked_get(queue, row, {}, "a lease row")
        for attempt, package in held.values() if isinstance(held, dict) else ():
            header = matching(key, package, match, needles)
            if header is not None:
                found.append((header, attempt))
    return found


def held_ids(queue: Any, key: bytes) -> frozenset[str] | None:
    """The ids of every package queued or leased, read in one statement; None if the
    file of a large package was leased (and removed) while it was read, three times."""
    for _ in range(3):
        ids = set()
        try:
            for package in packages(read_all(queue)):
                try:
                    ids.add(decode_header(key, package).id)
                except SignatureError:
                    continue
            return frozenset(ids)
        except OSError:
            continue
    return None


def locate(
    queue: Any, key: bytes, rows: Iterable[str], match: Match, needles: list[bytes] | None
) -> tuple[str, Header, int] | None:
    """Where the first package that matches is: ``("running", header, attempt)`` in the
    lease rows ``rows``, ``("queued", header, deliveries so far)`` in the queue."""
    held = leased(queue, key, rows, match, needles)
    if held:
        header, attempt = held[0]
        return "running", header, attempt
    for row_key in queue.iterkeys():
        if not isinstance(row_key, int):
            continue
        value = checked_get(queue, row_key, None, "a queue row")
        items = (
            [(0, p) for p in value]
            if isinstance(value, list)
            else ([value] if isinstance(value, tuple) else [])
        )
        for attempt, package in items:
            found = matching(key, package, match, needles)
            if found is not None:
                return "queued", found, attempt
    return None


class Finding:
    """Finds tasks in one broker's queue (``holds``, ``cancel``, ``locate``, ``running``)
    and keeps the cancel requests of leased tasks for their clusters. The broker holds
    one, and gives it what it needs at construction: its ``queue`` and ``key``, its
    ``transaction`` (a write transaction, ``retry`` its argument), ``flush`` (writes this
    process's outbox) and ``write_leases`` (writes the leases it took in memory), for a
    look that must see them.
    """

    def __init__(
        self,
        queue: Any,
        key: bytes,
        transaction: Callable[..., AbstractContextManager[None]],
        flush: Callable[[], None],
        write_leases: Callable[[], None],
    ) -> None:
        self._queue = queue
        self.key = key
        self._transaction = transaction
        self._flush = flush
        self._write_leases = write_leases
        self._snapshot: tuple[float, frozenset[str]] | None = None  # see holds()
        self._cancel_watchers: list[threading.Event] = []

    def forget_snapshot(self) -> None:
        """The queue lost packages (``purge``): the next ``holds`` reads it again."""
        self._snapshot = None

    def holds(self, task_ids: Iterable[str], max_age: float = 0.0) -> set[str]:
        """Those of ``task_ids`` whose package is queued or leased (running, or waiting for
        another delivery), as a snapshot of the queue at most ``max_age`` seconds old
        shows (``purge`` makes a new one needed). A new snapshot writes this process's
        outbox first, then reads every package: for ``reuse=True``, which asks only about
        tasks sent a while ago that have no outcome, and many of them when a cell that
        sent many tasks is run again."""
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot[0] > max_age:
            self._flush()
            taken = time.monotonic()
            ids = held_ids(self._queue, self.key)
            if ids is None:  # unreadable: all counted as held, better wait than run twice
                return set(task_ids)
            snapshot = self._snapshot = (taken, ids)
        return set(snapshot[1].intersection(task_ids))

    def cancel(
        self,
        match: Match,
        needles: list[bytes] | None = None,
    ) -> tuple[list[tuple[Header, int, bytes]], list[Header]]:
        """In one transaction: take the queued packages whose header matches out of the
        queue, and request the cancel of the leased ones, for their clusters to act on.
        Returns (header, deliveries so far, package) of each taken out, and the headers of
        the leased ones."""
        self._write_leases()  # those in memory: to be found as leased
        with self._transaction(retry=True):
            queue = self._queue
            removed = take_out(queue, self.key, match, needles)
            if removed:
                queue.set(PENDING, max(0, queue.get(PENDING, 0) - len(removed)))
            rows = [ROW + batch for batch in read_index(queue)]
            running = [h for h, _ in leased(queue, self.key, rows, match, needles)]
            if running:
                self._request([header.id for header in running])
        self._snapshot = None
        return removed, running

    def request_cancels(self, batches: dict[str, list[str]]) -> list[str]:
        """In one transaction: request the cancel of items of the batches still queued or
        leased (batch id -> item ids), for the clusters to act on as the batch runs;
        returns the ids of the items requested."""
        self._flush()
        self._write_leases()
        with self._transaction(retry=True):
            queue = self._queue
            rows = [ROW + batch for batch in read_index(queue)]
            requested = []
            for batch_id, item_ids in batches.items():

                def match(header: Header, batch_id: str = batch_id) -> bool:
                    return header.id == batch_id

                if locate(queue, self.key, rows, match, [batch_id.encode()]) is not None:
                    requested += item_ids
            if requested:
                self._request(requested)
        self._snapshot = None
        return requested

    def locate(
        self,
        match: Match,
        needles: list[bytes] | None = None,
    ) -> tuple[str, Header, int] | None:
        """Where a task is, read in one transaction: ``("running", header, attempt)``
        when leased, ``("queued", header, deliveries so far)`` when waiting, else None."""
        self._flush()
        with self._transaction(retry=True):
            rows = [ROW + batch for batch in read_index(self._queue)]
            return locate(self._queue, self.key, rows, match, needles)

    def running(self, match: Match) -> list[tuple[Header, int]]:
        """(header, attempt) of the leased tasks that match, as read now (not in one
        transaction: for a progress panel)."""
        rows = [ROW + batch for batch in read_index(self._queue)]
        return leased(self._queue, self.key, rows, match)

    def notify_cancels(self) -> None:
        """Wake the clusters of this process to act on new cancel requests now."""
        for event in self._cancel_watchers:
            event.set()

    def cancel_count(self) -> int:
        """A number that changes whenever the cancel requests do (one read)."""
        return self._queue.get(_CANCEL_COUNT, 0, retry=True)

    def cancel_requests(self) -> dict[str, float]:
        """Task id -> when its cancel was requested, of tasks clusters hold leases on."""
        return checked_get(self._queue, _CANCELS, {}, "the cancel requests")

    def forget_cancels(self, task_ids: Iterable[str]) -> None:
        """Drop the cancel requests of tasks whose outcome is stored, or sent again."""
        ids = set(task_ids)
        with self._transaction(retry=True):
            requests = self.cancel_requests()
            if ids & requests.keys():
                self._set_cancels({k: v for k, v in requests.items() if k not in ids})

    def _request(self, task_ids: list[str]) -> None:
        """Add cancel requests for ``task_ids``, made now, to those younger than
        CANCELS_KEPT (inside a write transaction)."""
        now = time.time()
        requests = {
            task_id: when
            for task_id, when in self.cancel_requests().items()
            if now - when < CANCELS_KEPT
        }
        requests.update((task_id, now) for task_id in task_ids)
        self._set_cancels(requests)

    def _set_cancels(self, requests: dict[str, float]) -> None:
        self._queue.set(_CANCELS, requests)
        self._queue.set(_CANCEL_COUNT, self._queue.get(_CANCEL_COUNT, 0) + 1)

    def watch_cancels(self, event: threading.Event) -> None:
        """Have ``event`` set when this process requests a cancel (a local cluster acts
        at once instead of at its next look)."""
        self._cancel_watchers.append(event)

    def unwatch_cancels(self, event: threading.Event) -> None:
        if event in self._cancel_watchers:
            self._cancel_watchers.remove(event)
