"""Finding tasks in a queue by what their headers say (``reuse``, ``cancel``).

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

from typing import Any, Callable, Iterable, Iterator

from .errors import SignatureError
from .records import Header, decode_header
from .storage import checked_get, read_all

Match = Callable[[Header], bool]


def matching(key: bytes, package: Any, match: Match,
             needles: list[bytes] | None = None) -> Header | None:
    """The header of ``package`` if it matches, else None (a bad package never does)."""
    if needles is not None and not any(needle in package for needle in needles):
        return None
    try:
        header = decode_header(key, package)
    except SignatureError:
        return None
    return header if match(header) else None


def packages(values: Iterable[Any]) -> Iterator[bytes]:
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


def take_out(queue: Any, key: bytes, match: Match, needles: list[bytes] | None,
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


def leased(queue: Any, key: bytes, rows: Iterable[str], match: Match,
           needles: list[bytes] | None = None) -> list[tuple[Header, int]]:
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


def locate(queue: Any, key: bytes, rows: Iterable[str], match: Match,
           needles: list[bytes] | None) -> tuple[str, Header, int] | None:
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
        items = [(0, p) for p in value] if isinstance(value, list) else (
            [value] if isinstance(value, tuple) else [])
        for attempt, package in items:
            header = matching(key, package, match, needles)
            if header is not None:
                return "queued", header, attempt
    return None

