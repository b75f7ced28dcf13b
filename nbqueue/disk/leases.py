"""The leases of a queue: which packages are out, to whom, until when.

A lease row ``"lease:" + row`` holds up to BUNDLE packages taken together, as
``{number: (attempt, package)}``; a package's *token* is ``row.number``. The lease
index (one value, ``"leases"``) records per row ``(expires, owner, numbers still out)``.
The broker reads and writes them inside its own transactions; these functions are
what those transactions do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, NamedTuple

from nbqueue.disk.storage import UPSERT_OK, checked_get, upsert

INDEX = "leases"
PENDING = "pending"  # the number of packages waiting in the queue
ROW = "lease:"  # string keys: diskcache stores them as they are, tuples it pickles

Index = dict[str, tuple[float, str, tuple[int, ...]]]


class Lease(NamedTuple):
    """One delivery of a package: ``attempt`` counts deliveries, 1 for the first.

    ``refused`` says why a queue row failed its signature check: it was taken out of the
    queue (or it would block it), nothing of it was unpickled, and the cluster records
    it as a Failure."""

    token: str
    attempt: int
    package: bytes
    refused: str | None = None


def by_row(tokens: Iterable[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Lease tokens grouped by the lease row that holds them, and the tokens that were
    never a lease of ours."""
    rows: dict[str, list[int]] = {}
    foreign = []
    for token in tokens:
        batch, _, number = token.rpartition(".")
        if number.isdigit():
            rows.setdefault(batch, []).append(int(number))
        else:
            foreign.append(token)
    return rows, foreign


def read_index(queue: Any) -> Index:
    return checked_get(queue, INDEX, {}, "the lease index")


def push_front(queue: Any, items: list[tuple[int, bytes]]) -> None:
    """Put ``(attempt, package)`` items back at the front of the queue, in their order."""
    for item in reversed(items):
        queue.push(item, side="front")
    if items:
        queue.set(PENDING, queue.get(PENDING, 0) + len(items))


def end(
    queue: Any, rows: dict[str, list[int]], index: Index, back: bool = False, counted: bool = False
) -> None:
    """End leases in ``index``, which the caller writes back. ``back``: their packages go
    back to the front of the queue, with their attempt ``counted`` or given back."""
    requeued = []
    for batch, numbers in rows.items():
        held = index.get(batch)
        if held is None:
            continue  # expired and reaped meanwhile: the new delivery owns it now
        row = checked_get(queue, ROW + batch, {}, "a lease row")
        for number in numbers:
            item = row.pop(number, None)
            if back and item is not None:
                attempt, package = item
                requeued.append((attempt if counted else attempt - 1, package))
        if row:
            queue.set(ROW + batch, row)
            index[batch] = (held[0], held[1], tuple(row))
        else:
            queue.delete(ROW + batch)
            del index[batch]
    push_front(queue, requeued)


def renew(rows: dict[str, list[int]], index: Index, duration: float) -> list[str]:
    """Extend the leases of ``rows`` in ``index``; return the tokens no longer held."""
    deadline = time.time() + duration
    lost: list[str] = []
    for batch, numbers in rows.items():
        held = index.get(batch)
        live = held[2] if held is not None else ()
        lost.extend(f"{batch}.{number}" for number in numbers if number not in live)
        if held is not None:
            index[batch] = (deadline, held[1], live)
    return lost


def held_by(
    rows: dict[str, list[int]], index: Mapping[str, tuple[float, str, Container[int]]], owner: str
) -> set[str]:
    """The tokens of ``rows`` that ``owner`` holds, unexpired (``index``: the lease index,
    or rows held in this process)."""
    now = time.time()
    found: set[str] = set()
    for batch, numbers in rows.items():
        entry = index.get(batch)
        if entry is not None and entry[0] >= now and entry[1] == owner:
            found.update(f"{batch}.{n}" for n in numbers if n in entry[2])
    return found


def reap(queue: Any, index: Index, now: float, begun: Callable[[str], set[str] | None]) -> int:
    """Put the packages of expired leases back in the queue; ``index`` is changed, for
    the caller to write back. ``begun(owner)``: the tokens of ``owner``'s leases whose
    task a worker began, or None if unknown. Those, and all when unknown, have their
    attempt counted; the others never ran and get their attempt back."""
    reaped = []
    for batch, held in list(index.items()):
        if held[0] < now:
            del index[batch]
            row = checked_get(queue, ROW + batch, {}, "a lease row")
            queue.delete(ROW + batch)
            started = begun(held[1])
            for number in sorted(row):
                attempt, package = row[number]
                if started is not None and f"{batch}.{number}" not in started:
                    attempt -= 1
                reaped.append((attempt, package))
    push_front(queue, reaped)
    return len(reaped)


Row = dict[int, tuple[int, bytes]]


def write(queue: Any, pending: dict[str, tuple[float, str, Row]], acks: list[str]) -> None:
    """Write the lease rows ``InMemory`` kept, and end the acknowledged leases ``acks``;
    inside the broker's transaction."""
    index = read_index(queue)
    for batch, (expires, owner, row) in pending.items():
        if row:
            index[batch] = (expires, owner, tuple(row))
    rows = [(ROW + batch, row) for batch, (_, _, row) in pending.items() if row]
    if UPSERT_OK:
        upsert(queue, rows)
    else:
        for key, value in rows:
            queue.set(key, value)
    if acks:
        end(queue, by_row(acks)[0], index)
    queue.set(INDEX, index)


class InMemory:
    """Leases a cluster took from its own process's outbox, kept in memory until the
    outbox's thread writes them behind (no other process can see those packages before,
    so no one else can lease them), and the acks that wait for the next transaction.

    A lease acknowledged before it is written is ended here, never written at all. The
    rows being written stay here (``writing``) until their commit is done: a lease is
    found held all along, in memory or in the index. Every method takes the lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, tuple[float, str, Row]] = {}  # row -> (expires, owner, row)
        self.writing: dict[str, tuple[float, str, Row]] = {}
        self.acks: list[str] = []  # of written leases, for the next transaction

    def __bool__(self) -> bool:
        return bool(self.rows or self.acks)

    def add(self, rows: list[tuple[str, Row]], expires: float, owner: str) -> None:
        with self.lock:
            for batch, row in rows:
                self.rows[batch] = (expires, owner, row)

    def take(self) -> tuple[dict[str, tuple[float, str, Row]], list[str]]:
        """The rows to write and the acks to do, now being written."""
        with self.lock:
            pending, self.rows = self.rows, {}
            acks, self.acks = self.acks, []
            self.writing = pending
        return pending, acks

    def written(
        self, pending: dict[str, tuple[float, str, Row]], acks: list[str], ok: bool
    ) -> None:
        """After the transaction that wrote ``take``'s answer: if it failed, keep them
        (the acks that came meanwhile for those rows ended here)."""
        with self.lock:
            if not ok:
                self.rows.update(pending)
                self.acks = self._forget(acks + self.acks)
            self.writing = {}

    def take_acks(self) -> list[str]:
        with self.lock:
            acks, self.acks = self.acks, []
        return acks

    def ack(self, tokens: Iterable[str]) -> None:
        """``Broker.ack_soon``: ended here if unwritten, else in the next transaction."""
        with self.lock:
            self.acks.extend(self._forget(tokens))

    def end(
        self,
        tokens: Iterable[str],
        back: bool,
        counted: bool,
    ) -> tuple[list[str], list[tuple[int, bytes]]]:
        """End the unwritten leases among ``tokens``: the other tokens, and (``back``) the
        ``(attempt, package)`` items to put back in the queue."""
        requeued = []
        with self.lock:
            if back:
                for token in tokens:
                    batch, _, number = token.rpartition(".")
                    held = self.rows.get(batch)
                    item = held[2].get(int(number)) if held and number.isdigit() else None
                    if item is not None:
                        requeued.append((item[0] if counted else item[0] - 1, item[1]))
            return self._forget(tokens), requeued

    def _forget(self, tokens: Iterable[str]) -> list[str]:
        others = []
        for token in tokens:
            batch, _, number = token.rpartition(".")
            held = self.rows.get(batch)
            if held is not None and number.isdigit() and int(number) in held[2]:
                del held[2][int(number)]
                if not held[2]:
                    del self.rows[batch]
            else:
                others.append(token)
        return others

    def _mine(self, rows: dict[str, list[int]]) -> dict[str, tuple[float, str, Row]]:
        """The rows of ``rows`` held here; under the lock."""
        found = {}
        for batch in list(rows):
            held = self.rows.get(batch) or self.writing.get(batch)
            if held is not None:
                found[batch] = held
        return found

    def renew(self, rows: dict[str, list[int]], duration: float) -> list[str]:
        """Renew the leases of ``rows`` held here (taken out of ``rows``): the tokens of
        them no longer held."""
        lost: list[str] = []
        with self.lock:
            for batch, held in self._mine(rows).items():
                lost.extend(f"{batch}.{n}" for n in rows.pop(batch) if n not in held[2])
                if batch in self.rows:
                    self.rows[batch] = (time.time() + duration, held[1], held[2])
        return lost

    def held_by(self, rows: dict[str, list[int]], owner: str) -> set[str]:
        """The tokens of ``rows`` held here by ``owner``, unexpired (those rows are taken
        out of ``rows``)."""
        with self.lock:
            mine = self._mine(rows)
        return held_by({batch: rows.pop(batch) for batch in mine}, mine, owner)

    def count(self, read_index: Callable[[], Index]) -> int:
        """How many leases there are: those of the index ``read_index()`` gives (read
        after the rows here are: one written meanwhile is counted once), and these."""
        with self.lock:
            mine = {**self.writing, **self.rows}
        index = read_index()
        return sum(len(held[2]) for held in index.values()) + sum(
            len(held[2]) for batch, held in mine.items() if batch not in index
        )

    def reset(self) -> None:
        """Hold nothing (a forked child: these are its parent's)."""
        self.lock = threading.Lock()
        self.rows, self.writing, self.acks = {}, {}, []
