"""The leases of a queue: which packages are out, to whom, until when.

A lease row ``"lease:" + row`` holds up to BUNDLE packages taken together, as
``{number: (attempt, package)}``; a package's *token* is ``row.number``. The lease
index (one value, ``"leases"``) records per row ``(expires, owner, numbers still out)``.
The broker reads and writes them inside its own transactions; these functions are
what those transactions do.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, NamedTuple

from .storage import checked_get

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


def end(queue: Any, rows: dict[str, list[int]], index: Index, back: bool = False,
        counted: bool = False) -> None:
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
    lost = []
    for batch, numbers in rows.items():
        held = index.get(batch)
        live = held[2] if held is not None else ()
        lost.extend(f"{batch}.{number}" for number in numbers if number not in live)
        if held is not None:
            index[batch] = (deadline, held[1], live)
    return lost


def held_by(rows: dict[str, list[int]], index: Index, owner: str) -> set[str]:
    """The tokens of ``rows`` that ``owner`` holds, unexpired."""
    now = time.time()
    found = set()
    for batch, numbers in rows.items():
        entry = index.get(batch)
        if entry is not None and entry[0] >= now and entry[1] == owner:
            found.update(f"{batch}.{n}" for n in numbers if n in entry[2])
    return found


def reap(queue: Any, index: Index, now: float) -> int:
    """Put the packages of expired leases back in the queue (their attempt counted);
    ``index`` is changed, for the caller to write back."""
    reaped = []
    for batch, held in list(index.items()):
        if held[0] < now:
            del index[batch]
            row = checked_get(queue, ROW + batch, {}, "a lease row")
            queue.delete(ROW + batch)
            reaped.extend(row[number] for number in sorted(row))
    push_front(queue, reaped)
    return len(reaped)
