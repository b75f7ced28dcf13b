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
from typing import Any, Iterable, Iterator

from . import conf, leases, search
from .doorbell import Bells, Doorbell
from .errors import SignatureError, StoreError
from .heartbeats import drop_heartbeats
from .leases import INDEX, PENDING, ROW, Lease
from .records import Header
from .signing import forget_key, load_key, private_directory
from .outbox import Outbox
from .storage import UPSERT_OK, checked_get, checkpoint, open_cache, upsert, writing

log = logging.getLogger("nbqueue")

_CANCELS = "cancels"  # task id -> when its cancel was requested (leased tasks only)
_CANCEL_COUNT = "cancels changed"
CANCELS_KEPT = 7 * 86400.0  # seconds a request no cluster acted on is kept
BUNDLE = 64  # packages per queue row at most: large enough to batch, small to split
BUNDLE_BYTES = 30_000  # and bytes: under diskcache's 32 KiB a bundle stays in its SQLite row


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
                              self._wake, self._behind)
        self._write_lock = threading.Lock()
        self._acks: list[str] = []
        self._acks_lock = threading.Lock()  # also guards the two below
        # leases of packages taken from this process's outbox, not written yet: row ->
        # (deadline, owner, {number: (attempt, package)}); and those being written now
        self._unwritten: dict[str, tuple[float, str, dict[int, tuple[int, bytes]]]] = {}
        self._writing: dict[str, tuple[float, str, dict[int, tuple[int, bytes]]]] = {}
        self._flusher: threading.Thread | None = None
        self._snapshot: tuple[float, frozenset[str]] | None = None  # see holds()
        self._cancel_watchers: list[threading.Event] = []
        self.bells = Bells(self.directory)
        self._doorbells: dict[threading.Event, Doorbell] = {}

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
        queue.set(PENDING, queue.get(PENDING, 0) + len(packages))

    def flush(self) -> None:
        """Write every package this process has enqueued; raise StoreError if the store
        cannot take them (they are kept, and written again on the next flush)."""
        self._outbox.flush()

    def _write(self, packages: list[bytes]) -> None:
        """The outbox's write, in one transaction: its packages, and the leases taken in
        memory (``_lease_fresh``) and the acks that wait, written behind. What the store
        refuses is kept, for the next one."""
        with self._acks_lock:
            pending, self._unwritten = self._unwritten, {}
            acks, self._acks = self._acks, []
            self._writing = pending  # held all along: here until the commit is done
        try:
            with self._transaction():
                if pending or acks:
                    self._write_leases(pending, acks)
                if packages:
                    self._push(packages)
        except BaseException:
            with self._acks_lock:  # kept; acks of them that came meanwhile done in memory
                self._unwritten.update(pending)
                self._acks[:0] = acks
                self._acks = self._forget_unwritten(self._acks)
                self._writing = {}
            raise
        with self._acks_lock:
            self._writing = {}

    def _behind(self) -> bool:
        return bool(self._unwritten or self._acks)

    def _write_leases(self, pending: dict[str, tuple[float, str, dict[int, tuple[int, bytes]]]],
                      acks: list[str]) -> None:
        """Write lease rows kept in memory and end acknowledged leases; in a transaction."""
        queue = self._queue
        index = leases.read_index(queue)
        for batch, (deadline, owner, row) in pending.items():
            if row:
                index[batch] = (deadline, owner, tuple(row))
        rows = [(ROW + batch, row) for batch, (_, _, row) in pending.items() if row]
        if UPSERT_OK:
            upsert(queue, rows)
        else:
            for key, value in rows:
                queue.set(key, value)
        if acks:
            leases.end(queue, leases.by_row(acks)[0], index)
        queue.set(INDEX, index)

    def _forget_unwritten(self, tokens: Iterable[str]) -> list[str]:
        """End the unwritten leases among ``tokens`` (in memory: no write), under
        ``_acks_lock``; the other tokens."""
        others = []
        for token in tokens:
            batch, _, number = token.rpartition(".")
            held = self._unwritten.get(batch)
            if held is not None and number.isdigit() and int(number) in held[2]:
                del held[2][int(number)]
                if not held[2]:
                    del self._unwritten[batch]
            else:
                others.append(token)
        return others

    def subscribe(self, event: threading.Event, name: str | None = None) -> None:
        """Have ``event`` set whenever this process enqueues (wakes a local cluster at
        once) and, for a ``name``d consumer, whenever another process does (a doorbell)."""
        self._wakeups.append(event)
        if name is not None:
            try:
                bell = self._doorbells[event] = Doorbell(self.directory, name, event.set)
                self.bells.own.add(bell.path)
            except OSError as exc:  # a store path too long for a socket: it polls
                log.info("nbqueue: no doorbell for %s (%s); the queue is polled", name, exc)

    def unsubscribe(self, event: threading.Event) -> None:
        if event in self._wakeups:
            self._wakeups.remove(event)
        bell = self._doorbells.pop(event, None)
        if bell is not None:
            bell.close()
            self.bells.own.discard(bell.path)
        self.departures += 1

    @property
    def has_local_consumer(self) -> bool:
        return bool(self._wakeups)

    def _wake(self) -> None:
        for event in self._wakeups:
            event.set()
        self.bells.ring()

    # -- consumers -------------------------------------------------------------------

    def lease(self, owner: str, count: int, duration: float) -> list[Lease]:
        """Take up to ``count`` packages, leased to ``owner`` for ``duration`` seconds.

        This process's outbox is written in the same transaction, and what of it is
        leased at once never goes through the queue: a cluster in the kernel that
        enqueued the task saves a commit and a hand-off per round trip.
        """
        if not len(self._outbox):
            if self._outbox.order.locked():  # its thread is writing a batch: let it end,
                with self._outbox.order:     # or this poll may see neither the batch
                    pass                     # in the outbox nor in the queue
            if not self._acks and not self._queue.get(PENDING, 0, retry=True):
                return []  # an empty poll reads, and leaves the write lock to producers
            with self._transaction(retry=True):
                return self._take(owner, count, duration, [])
        leased = self._lease_fresh(owner, count, duration)
        if leased is not None:
            return leased
        with self._outbox.taken() as fresh, self._transaction():
            return self._take(owner, count, duration, fresh)

    def _lease_fresh(self, owner: str, count: int, duration: float) -> list[Lease] | None:
        """Lease packages of this process's outbox, with nothing queued before them,
        in memory: no other process can see them yet, so their lease rows are written
        behind with the outbox (``_write``, within a few ms), and a task whose
        outcome is stored before then is never written at all. A crash in those ms loses
        them, as it loses what the outbox holds (a write-behind: ``flush()`` writes
        both). None when the queue holds packages, which go first."""
        with self._outbox.order:  # the outbox's thread wrote none meanwhile:
            if self._queue.get(PENDING, 0, retry=True):  # those go first
                return None
            fresh = self._outbox.take(count)
            taken, rows = self._bundle([(0, package) for package in fresh])
            deadline = time.time() + duration
            with self._acks_lock:
                for batch, row in rows:
                    self._unwritten[batch] = (deadline, owner, row)
        self._outbox.poke()
        return taken

    def _bundle(self, taken: list[tuple[int, bytes]],
                ) -> tuple[list[Lease], list[tuple[str, dict[int, tuple[int, bytes]]]]]:
        """The leases of ``(attempt, package)`` items, and their lease rows: up to
        BUNDLE packages (and BUNDLE_BYTES) a row."""
        leased: list[Lease] = []
        row: dict[int, tuple[int, bytes]] = {}
        rows: list[tuple[str, dict[int, tuple[int, bytes]]]] = []
        size = 0
        for attempt, package in taken:
            if not rows or len(row) == BUNDLE or size + len(package) > BUNDLE_BYTES:
                row, size = {}, 0
                rows.append((f"{self._token_prefix}{next(self._tokens)}", row))
            row[len(row)] = (attempt + 1, package)
            size += len(package)
            leased.append(Lease(f"{rows[-1][0]}.{len(row) - 1}", attempt + 1, package))
        return leased, rows

    def _take(self, owner: str, count: int, duration: float,
              fresh: list[bytes]) -> list[Lease]:
        """Do the pending ``ack_soon``s, lease from the queue, then from ``fresh`` (not yet
        queued); queue the rest of ``fresh``. Inside a transaction, in as few statements
        as can be: this is every round trip's path."""
        queue = self._queue
        with self._acks_lock:
            acks, self._acks = self._acks, []
        index = leases.read_index(queue)
        if acks:
            leases.end(queue, leases.by_row(acks)[0], index)
        refused: list[str] = []
        key, item = self._pull(refused)
        taken: list[tuple[int, bytes]] = []
        if key is not None or refused:
            pending = queue.get(PENDING, 0)
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
            queue.set(PENDING, max(0, pending - len(taken) - len(refused)))
        deadline = time.time() + duration
        if fresh:
            room = max(0, count - len(taken))
            taken.extend((0, package) for package in fresh[:room])
            if fresh[room:]:
                self._push(fresh[room:])
        taken_leases, rows = self._bundle(taken)
        for batch, row in rows:
            index[batch] = (deadline, owner, tuple(row))
        taken_leases.extend(Lease(f"refused-{number}", 1, b"", why)  # a token of no lease row
                      for number, why in enumerate(refused))
        if rows or acks:
            written = [(ROW + batch, row) for batch, row in rows] + [(INDEX, index)]
            if UPSERT_OK:
                upsert(queue, written)
            else:
                for key, value in written:
                    queue.set(key, value)
        return taken_leases

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
            self._acks.extend(self._forget_unwritten(tokens))

    def flush_acks(self) -> None:
        """Acknowledge what ``ack_soon`` was given."""
        with self._acks_lock:
            tokens, self._acks = self._acks, []
        self.ack(tokens)

    def _end_leases(self, tokens: Iterable[str], back: bool = False,
                    counted: bool = False) -> None:
        tokens = list(tokens)
        requeued = []
        with self._acks_lock:
            if back:  # the packages of unwritten leases go to the queue, as the others
                for token in tokens:
                    batch, _, number = token.rpartition(".")
                    held = self._unwritten.get(batch)
                    item = held[2].get(int(number)) if held and number.isdigit() else None
                    if item is not None:
                        requeued.append((item[0] if counted else item[0] - 1, item[1]))
            tokens = self._forget_unwritten(tokens)
        rows, _ = leases.by_row(tokens)
        if not rows and not requeued:
            return
        with self._transaction(retry=True):
            index = leases.read_index(self._queue)
            leases.end(self._queue, rows, index, back, counted)
            self._queue.set(INDEX, index)
            leases.push_front(self._queue, requeued)

    def renew(self, tokens: Iterable[str], duration: float) -> list[str]:
        """Extend live leases by ``duration`` from now; return the tokens no longer held."""
        rows, lost = leases.by_row(tokens)
        with self._acks_lock:  # unwritten or being written: no one else sees them
            for batch in [b for b in rows if b in self._unwritten or b in self._writing]:
                numbers = rows.pop(batch)
                held = self._unwritten.get(batch) or self._writing[batch]
                lost.extend(f"{batch}.{n}" for n in numbers if n not in held[2])
                if batch in self._unwritten:
                    self._unwritten[batch] = (time.time() + duration, held[1], held[2])
        if not rows:
            return lost
        with self._transaction(retry=True):
            index = leases.read_index(self._queue)
            lost.extend(leases.renew(rows, index, duration))
            self._queue.set(INDEX, index)
        return lost

    def held(self, tokens: Iterable[str], owner: str) -> set[str]:
        """The tokens among ``tokens`` whose lease ``owner`` still holds, unexpired: the
        fence before an outcome is stored (a holder that stalled past ``retry`` may have
        lost its tasks to another delivery)."""
        rows, _ = leases.by_row(tokens)
        mine: set[str] = set()
        with self._acks_lock:
            in_memory = {batch: self._unwritten.get(batch) or self._writing[batch]
                         for batch in rows if batch in self._unwritten or batch in self._writing}
        if in_memory:
            mine = leases.held_by({b: rows.pop(b) for b in in_memory}, in_memory, owner)
        if not rows:
            return mine
        return mine | leases.held_by(rows, leases.read_index(self._queue), owner)

    def reap(self, now: float | None = None) -> int:
        """Put every expired lease back in the queue (its attempt counted); return how many."""
        now = time.time() if now is None else now
        if self._unwritten:  # this process's leases in memory are reaped like the others
            self._write([])
        if not any(held[0] < now for held in leases.read_index(self._queue).values()):
            return 0
        with self._transaction(retry=True):
            index = leases.read_index(self._queue)
            reaped = leases.reap(self._queue, index, now)
            self._queue.set(INDEX, index)
        return reaped

    def pending(self) -> int:
        """Packages waiting, this process's outbox included: ``size`` without a flush."""
        return self._queue.get(PENDING, 0, retry=True) + len(self._outbox)

    def leased(self) -> int:
        """How many packages are leased (running or waiting for a retry)."""
        with self._acks_lock:  # first: one written meanwhile is then in the index
            in_memory = {**self._writing, **self._unwritten}
        index = leases.read_index(self._queue)
        return (sum(len(held[2]) for held in index.values())
                + sum(len(held[2]) for batch, held in in_memory.items() if batch not in index))

    def holds(self, task_ids: Iterable[str], max_age: float = 0.0) -> set[str]:
        """Those of ``task_ids`` whose package is queued or leased (running, or waiting for
        another delivery), as a snapshot of the queue at most ``max_age`` seconds old
        shows (``purge`` makes a new one needed). A new snapshot writes this process's
        outbox first, then reads every package: for ``reuse=True``, which asks only about
        tasks sent a while ago that have no outcome, and many of them when a cell that
        sent many tasks is run again."""
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot[0] > max_age:
            self.flush()
            taken = time.monotonic()
            ids = search.held_ids(self._queue, self.key)
            if ids is None:  # unreadable: all counted as held, better wait than run twice
                return set(task_ids)
            snapshot = self._snapshot = (taken, ids)
        return set(snapshot[1].intersection(task_ids))

    # -- finding tasks: cancel requests, deliveries again ------------------------------

    def cancel(self, match: search.Match, needles: list[bytes] | None = None,
               ) -> tuple[list[tuple[Header, int, bytes]], list[Header]]:
        """In one transaction: take the queued packages whose header matches out of the
        queue, and request the cancel of the leased ones, for their clusters to act on.
        Returns (header, deliveries so far, package) of each taken out, and the headers of
        the leased ones."""
        if self._unwritten:  # leases in memory: to be found as leased
            self._write([])
        with self._transaction(retry=True):
            queue = self._queue
            removed = search.take_out(queue, self.key, match, needles)
            if removed:
                queue.set(PENDING, max(0, queue.get(PENDING, 0) - len(removed)))
            rows = [ROW + batch for batch in leases.read_index(queue)]
            leased = [h for h, _ in search.leased(queue, self.key, rows, match, needles)]
            if leased:
                now = time.time()
                requests = {task_id: when for task_id, when in self.cancel_requests().items()
                            if now - when < CANCELS_KEPT}
                requests.update((header.id, now) for header in leased)
                self._set_cancels(requests)
        self._snapshot = None
        return removed, leased

    def locate(self, match: search.Match, needles: list[bytes] | None = None,
               ) -> tuple[str, Header, int] | None:
        """Where a task is, read in one transaction: ``("running", header, attempt)``
        when leased, ``("queued", header, deliveries so far)`` when waiting, else None."""
        self.flush()
        with self._transaction(retry=True):
            rows = [ROW + batch for batch in leases.read_index(self._queue)]
            return search.locate(self._queue, self.key, rows, match, needles)

    def running(self, match: search.Match) -> list[tuple[Header, int]]:
        """(header, attempt) of the leased tasks that match, as read now (not in one
        transaction: for a progress panel)."""
        rows = [ROW + batch for batch in leases.read_index(self._queue)]
        return search.leased(self._queue, self.key, rows, match)

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

    def enqueue_again(self, items: list[tuple[int, bytes]]) -> None:
        """Put ``(deliveries so far, package)`` items at the back of the queue, in one
        transaction: tasks sent again under their own ids (``nbqueue.retry``)."""
        self.flush()
        with self._transaction():
            for item in items:
                self._queue.push(item)
            self._queue.set(PENDING, self._queue.get(PENDING, 0) + len(items))
        self._wake()

    def size(self) -> int:
        """Pending packages, not counting the leased ones."""
        self.flush()
        return self._queue.get(PENDING, 0, retry=True)

    def purge(self) -> int:
        """Drop every pending package; return how many. Leased ones are left alone."""
        self.flush()
        self._snapshot = None
        dropped = 0
        with self._transaction(retry=True):
            while True:
                key, item = self._queue.pull()
                if key is None:
                    break
                dropped += len(item) if isinstance(item, list) else 1
            self._queue.set(PENDING, 0)
        return dropped

    def close(self) -> None:
        self.flush()
        self.flush_acks()
        self._queue.close()


def _forget_in_child() -> None:
    """A forked child starts with no outbox and no leases: they are its parent's, which
    writes them (the child writing them too would deliver them twice)."""
    for broker in list(_brokers.values()):
        broker._acks_lock = threading.Lock()
        broker._write_lock = threading.Lock()
        broker._acks, broker._unwritten, broker._writing = [], {}, {}
        broker._outbox.forget()


os.register_at_fork(after_in_child=_forget_in_child)

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
