"""The task queue of one store directory, over diskcache.

Pending packages sit in a diskcache push/pull queue (integer keys): packages
written together go in as *bundles* of up to BUNDLE packages (one row each, so
enqueueing and leasing cost per bundle, not per package; a big package goes alone),
a package delivered again as ``(attempt, package)``; a ``pending`` counter keeps
their number. Taking work is a *lease*: inside one transaction a batch is pulled and
kept in lease rows (``"lease:" + row``, up to BUNDLE packages each; a package's
token is ``row.number``), and the lease index records, per row, when it expires, who
holds it and which of its packages are still out. A lease ends only by ``ack`` (its
outcome is stored), ``release`` (handed back unrun) or by expiring, after which
``reap`` puts it back in the queue for another delivery. So a crash anywhere loses
nothing: the worst case is a second delivery after ``retry``.

Every process may enqueue and every cluster may lease at once; SQLite serialises
the transactions. Leasing a batch in one transaction is the lever for speed: a
push, a pull and a set each committed on its own cost many times what they cost
inside one transaction (figures in the README's Performance section).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from typing import Any, Iterable, Iterator, NamedTuple

from . import conf
from .errors import SignatureError, StoreError
from .heartbeats import drop_heartbeats
from .signing import forget_key, load_key, private_directory
from .outbox import Outbox
from .storage import UPSERT_OK, checked_get, checkpoint, open_cache, upsert, writing

log = logging.getLogger("nbqueue")

_INDEX = "leases"
_PENDING = "pending"
BUNDLE = 64  # packages per queue row at most: large enough to batch, small to split
BUNDLE_BYTES = 30_000  # and bytes: under diskcache's 32 KiB a bundle stays in its SQLite row
_LEASE = "lease:"  # string keys: diskcache stores them as they are, tuples it pickles


def _rows(tokens: Iterable[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Lease tokens (``row.number``) grouped by the lease row that holds them, and the
    tokens that were never a lease of ours."""
    by_row: dict[str, list[int]] = {}
    foreign = []
    for token in tokens:
        batch, _, number = token.rpartition(".")
        if number.isdigit():
            by_row.setdefault(batch, []).append(int(number))
        else:
            foreign.append(token)
    return by_row, foreign


class Lease(NamedTuple):
    """One delivery of a package: ``attempt`` counts deliveries, 1 for the first.

    ``refused`` says why a queue row failed its signature check: it was taken out of the
    queue (or it would block it), nothing of it was unpickled, and the cluster records
    it as a Failure."""

    token: str
    attempt: int
    package: bytes
    refused: str | None = None


class Broker:
    """The queue of the store at ``directory``; get one with ``get_broker()``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = private_directory(directory)
        self.key = load_key(self.directory)
        self._queue = open_cache(os.path.join(self.directory, "queue"))
        self._tokens = itertools.count()
        self._token_prefix = os.urandom(6).hex()
        self._wakeups: list[threading.Event] = []
        self.departures = 0  # local consumers that unsubscribed, ever
        self._outbox = Outbox(self.directory, self._write, lambda: bool(self._wakeups),
                              self._wake)
        self._write_lock = threading.Lock()
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Broker {self.directory}>"

    @contextlib.contextmanager
    def _transaction(self, retry: bool = False) -> Iterator[None]:
        """A write transaction on the queue. Threads of this process queue up on a lock
        first: SQLite makes a writer that finds the file locked sleep 1 ms or more, which
        is longer than most of our transactions last. A transaction the store refused
        gives its space back (SQLite keeps it in its write-ahead log)."""
        try:
            with self._write_lock, writing(self._queue.directory), self._queue.transact(retry):
                yield
        except StoreError:
            checkpoint(self._queue)
            raise

    # -- producers -------------------------------------------------------------------

    def enqueue(self, package: bytes) -> None:
        """Put one signed package at the back of the queue, written behind by the outbox
        (see ``nbqueue.outbox``); ``flush()`` waits for it to be written.

        Raises StoreError, and does not take the package, if earlier packages could not
        be written (disk full, damaged, or locked by another process past SQLite's 60 s
        busy timeout); those are kept and written again, nothing is dropped.
        """
        self._outbox.put(package)
        self._wake()  # a cluster in this process writes the outbox itself as it leases

    def enqueue_many(self, packages: Iterable[bytes]) -> None:
        """Put many packages in one transaction: all of them, or none and StoreError."""
        self.flush()  # keep this process's order
        with self._transaction():
            self._push(list(packages))
        self._wake()

    def _push(self, packages: list[bytes]) -> None:
        """Append fresh packages in bundles; inside a transaction."""
        queue = self._queue
        bundle: list[bytes] = []
        size = 0
        for package in packages:
            if bundle and (len(bundle) == BUNDLE or size + len(package) > BUNDLE_BYTES):
                queue.push(bundle)
                bundle, size = [], 0
            bundle.append(package)
            size += len(package)
        if bundle:
            queue.push(bundle)
        queue.set(_PENDING, queue.get(_PENDING, 0) + len(packages))

    def flush(self) -> None:
        """Write every package this process has enqueued; raise StoreError if the store
        cannot take them (they are kept, and written again on the next flush)."""
        self._outbox.flush()

    def _write(self, packages: list[bytes]) -> None:
        with self._transaction():
            self._push(packages)

    def subscribe(self, event: threading.Event) -> None:
        """Have ``event`` set whenever this process enqueues (wakes a local cluster at once)."""
        self._wakeups.append(event)

    def unsubscribe(self, event: threading.Event) -> None:
        if event in self._wakeups:
            self._wakeups.remove(event)
        self.departures += 1

    @property
    def has_local_consumer(self) -> bool:
        return bool(self._wakeups)

    def _wake(self) -> None:
        for event in self._wakeups:
            event.set()

    # -- consumers -------------------------------------------------------------------

    def lease(self, owner: str, count: int, duration: float) -> list[Lease]:
        """Take up to ``count`` packages, leased to ``owner`` for ``duration`` seconds.

        This process's outbox is written in the same transaction, and what of it is
        leased at once never goes through the queue: a cluster in the kernel that
        enqueued the task saves a commit and a hand-off per round trip.
        """
        if not len(self._outbox):
            if not self._acks and not self._queue.get(_PENDING, 0, retry=True):
                return []  # an empty poll reads, and leaves the write lock to producers
            with self._transaction(retry=True):
                return self._take(owner, count, duration, [])
        with self._outbox.taken() as fresh, self._transaction():
            return self._take(owner, count, duration, fresh)

    def _take(self, owner: str, count: int, duration: float,
              fresh: list[bytes]) -> list[Lease]:
        """Do the pending ``ack_soon``s, lease from the queue, then from ``fresh`` (not yet
        queued); queue the rest of ``fresh``. Inside a transaction, in as few statements
        as can be: this is every round trip's path."""
        queue = self._queue
        leases: list[Lease] = []
        with self._acks_lock:
            acks, self._acks = self._acks, []
        index = checked_get(queue, _INDEX, {}, "the lease index")
        if acks:
            self._end_leases_in(_rows(acks)[0], index)
        refused: list[str] = []
        key, item = self._pull(refused)
        taken: list[tuple[int, bytes]] = []
        if key is not None or refused:
            pending = queue.get(_PENDING, 0)
            while key is not None:
                if isinstance(item, list):  # a bundle of first deliveries
                    wanted = count - len(taken)
                    if len(item) > wanted:
                        queue.push(item[wanted:], side="front")
                        del item[wanted:]
                    taken.extend((0, package) for package in item)
                else:
                    taken.append(item)
                if len(taken) >= count:
                    break
                key, item = self._pull(refused)
            queue.set(_PENDING, max(0, pending - len(taken) - len(refused)))
        deadline = time.time() + duration
        if fresh:
            room = max(0, count - len(taken))
            taken.extend((0, package) for package in fresh[:room])
            if fresh[room:]:
                self._push(fresh[room:])
        row: dict[int, tuple[int, bytes]] = {}
        rows: list[tuple[str, dict[int, tuple[int, bytes]]]] = []
        size = 0
        for attempt, package in taken:
            if not rows or len(row) == BUNDLE or size + len(package) > BUNDLE_BYTES:
                row, size = {}, 0
                rows.append((f"{self._token_prefix}{next(self._tokens)}", row))
            row[len(row)] = (attempt + 1, package)
            size += len(package)
            leases.append(Lease(f"{rows[-1][0]}.{len(row) - 1}", attempt + 1, package))
        for batch, row in rows:
            index[batch] = (deadline, owner, tuple(row))
        leases.extend(Lease(f"refused-{number}", 1, b"", why)  # a token of no lease row
                      for number, why in enumerate(refused))
        if rows or acks:
            written = [(_LEASE + batch, row) for batch, row in rows] + [(_INDEX, index)]
            if UPSERT_OK:
                upsert(queue, written)
            else:
                for key, value in written:
                    queue.set(key, value)
        return leases

    def _pull(self, refused: list[str]) -> tuple[Any, Any]:
        """``queue.pull()``; a row that fails its signature check is taken out of the queue
        all the same (in this transaction), and why is added to ``refused``."""
        while True:
            try:
                return self._queue.pull()
            except SignatureError as exc:
                refused.append(f"a queue row {exc}")

    def ack(self, tokens: Iterable[str]) -> None:
        """End leases whose outcome is stored: the packages are gone for good."""
        self._end_leases(tokens)

    def release(self, tokens: Iterable[str], counted: bool = False) -> None:
        """Hand leased packages back to the front of the queue for another delivery.

        ``counted=False`` (the task never ran, or was stopped through no fault of its
        own) gives the attempt back; ``counted=True`` keeps it on the task's count.
        """
        self._end_leases(tokens, back=True, counted=counted)

    def ack_soon(self, tokens: Iterable[str]) -> None:
        """``ack`` in the next lease's transaction, or at ``flush_acks``: a cluster whose
        feeder leases again at once saves a transaction and a wait per round trip."""
        with self._acks_lock:
            self._acks.extend(tokens)

    def flush_acks(self) -> None:
        """Acknowledge what ``ack_soon`` was given."""
        with self._acks_lock:
            tokens, self._acks = self._acks, []
        self.ack(tokens)

    def _end_leases(self, tokens: Iterable[str], back: bool = False,
                    counted: bool = False) -> None:
        by_row, _ = _rows(tokens)
        if not by_row:
            return
        with self._transaction(retry=True):
            index = checked_get(self._queue, _INDEX, {}, "the lease index")
            self._end_leases_in(by_row, index, back, counted)
            self._queue.set(_INDEX, index)

    def _end_leases_in(self, by_row: dict[str, list[int]], index: dict[str, tuple],
                back: bool = False, counted: bool = False) -> None:
        """End leases in ``index``, which the caller writes back; inside a transaction.
        ``back``: their packages go back to the front of the queue, with their attempt
        ``counted`` or given back (see ``release``)."""
        queue = self._queue
        requeued = []
        for batch, numbers in by_row.items():
            held = index.get(batch)
            if held is None:
                continue  # expired and reaped meanwhile: the new delivery owns it now
            row = checked_get(queue, _LEASE + batch, {}, "a lease row")
            for number in numbers:
                item = row.pop(number, None)
                if back and item is not None:
                    attempt, package = item
                    requeued.append((attempt if counted else attempt - 1, package))
            if row:
                queue.set(_LEASE + batch, row)
                index[batch] = (held[0], held[1], tuple(row))
            else:
                queue.delete(_LEASE + batch)
                del index[batch]
        for item in reversed(requeued):  # back at the front, in their order
            queue.push(item, side="front")
        if requeued:
            queue.set(_PENDING, queue.get(_PENDING, 0) + len(requeued))

    def renew(self, tokens: Iterable[str], duration: float) -> list[str]:
        """Extend live leases by ``duration`` from now; return the tokens no longer held."""
        by_row, lost = _rows(tokens)
        if not by_row:
            return lost
        queue = self._queue
        with self._transaction(retry=True):
            index = checked_get(queue, _INDEX, {}, "the lease index")
            deadline = time.time() + duration
            for batch, numbers in by_row.items():
                held = index.get(batch)
                live = held[2] if held is not None else ()
                lost.extend(f"{batch}.{number}" for number in numbers if number not in live)
                if held is not None:
                    index[batch] = (deadline, held[1], live)
            queue.set(_INDEX, index)
        return lost

    def held(self, tokens: Iterable[str], owner: str) -> set[str]:
        """The tokens among ``tokens`` whose lease ``owner`` still holds, unexpired: the
        fence before an outcome is stored (a holder that stalled past ``retry`` may have
        lost its tasks to another delivery)."""
        by_row, _ = _rows(tokens)
        if not by_row:
            return set()
        index = checked_get(self._queue, _INDEX, {}, "the lease index")
        now = time.time()
        found = set()
        for batch, numbers in by_row.items():
            entry = index.get(batch)
            if entry is not None and entry[0] >= now and entry[1] == owner:
                found.update(f"{batch}.{n}" for n in numbers if n in entry[2])
        return found

    def reap(self, now: float | None = None) -> int:
        """Put every expired lease back in the queue (its attempt counted); return how many."""
        now = time.time() if now is None else now
        queue = self._queue
        index = checked_get(queue, _INDEX, {}, "the lease index")
        if not any(held[0] < now for held in index.values()):
            return 0
        reaped = []
        with self._transaction(retry=True):
            index = checked_get(queue, _INDEX, {}, "the lease index")
            for batch, held in list(index.items()):
                if held[0] < now:
                    del index[batch]
                    row = checked_get(queue, _LEASE + batch, {}, "a lease row")
                    queue.delete(_LEASE + batch)
                    reaped.extend(row[number] for number in sorted(row))
            for item in reversed(reaped):
                queue.push(item, side="front")
            queue.set(_INDEX, index)
            queue.set(_PENDING, queue.get(_PENDING, 0) + len(reaped))
        return len(reaped)

    def pending(self) -> int:
        """Packages waiting, this process's outbox included: ``size`` without a flush."""
        return self._queue.get(_PENDING, 0, retry=True) + len(self._outbox)

    def leased(self) -> int:
        """How many packages are leased (running or waiting for a retry)."""
        index = checked_get(self._queue, _INDEX, {}, "the lease index")
        return sum(len(held[2]) for held in index.values())

    def size(self) -> int:
        """Pending packages, not counting the leased ones."""
        self.flush()
        return self._queue.get(_PENDING, 0, retry=True)

    def purge(self) -> int:
        """Drop every pending package; return how many. Leased ones are left alone."""
        self.flush()
        dropped = 0
        with self._transaction(retry=True):
            while True:
                key, item = self._queue.pull()
                if key is None:
                    break
                dropped += len(item) if isinstance(item, list) else 1
            self._queue.set(_PENDING, 0)
        return dropped

    def close(self) -> None:
        self.flush()
        self.flush_acks()
        self._queue.close()


_brokers: dict[str, Broker] = {}
_given: dict[tuple[str, str], Broker] = {}  # (directory as given, working directory)
_brokers_lock = threading.Lock()


def drop_broker(directory: str | os.PathLike[str], close: bool = True) -> None:
    """Forget the shared broker of ``directory`` and its key, if any, and close it (tests,
    tools); ``close=False`` for a store that was deleted under it, whose files must not be
    made again by the old broker."""
    path = os.path.abspath(os.fspath(directory))
    with _brokers_lock:
        broker = _brokers.pop(path, None)
        for key in [k for k, v in _given.items() if v is broker]:
            del _given[key]
        forget_key(path)
    drop_heartbeats(path, close)
    if broker is not None and close:
        broker.close()


def get_broker(directory: str | os.PathLike[str] | None = None) -> Broker:
    """The broker of ``directory`` (default: the configured one), shared in this process."""
    if directory is None:
        directory = conf.settings().directory
    given = os.fspath(directory)
    key = (given, os.getcwd())  # a relative directory follows the working directory
    broker = _given.get(key)
    if broker is not None:
        return broker
    path = os.path.abspath(given)
    with _brokers_lock:
        broker = _brokers.get(path)
        if broker is None:
            broker = _brokers[path] = Broker(path)
        _given[key] = broker
    return broker
