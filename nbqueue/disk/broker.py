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

What a process enqueues is written behind (``nbqueue.disk.outbox``), a few ms later; a
cluster of the same process leases those packages straight from the outbox, in memory
(``leases.InMemory``), and their lease rows are written behind with the outbox: a task
done before then costs the queue no write at all. Until written, they are lost with
the process, as the outbox is; ``flush()`` writes both.

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
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from nbqueue.disk import hosts, leases
from nbqueue.disk.doorbell import Bells, Doorbell
from nbqueue.disk.leases import INDEX, PENDING, ROW, Lease
from nbqueue.disk.outbox import Outbox
from nbqueue.disk.records import Header
from nbqueue.disk.search import Finding, Match
from nbqueue.disk.signing import anchor, load_key, private_directory
from nbqueue.disk.storage import (
    UPSERT_OK,
    checked_get,
    checkpoint,
    open_cache,
    read_prefixed,
    upsert,
    writing,
)
from nbqueue.errors import SignatureError, StoreError

log = logging.getLogger(__name__)

BUNDLE = 64  # packages per queue row at most: large enough to batch, small to split
BUNDLE_BYTES = 30_000  # and bytes: under diskcache's 32 KiB a bundle stays in its SQLite row
WAIT = "wait:"  # "wait:" + task id -> (the ids it waits for, its package): see ``waiting``
GROUP = "group:"  # "group:" + name -> GroupSent: what was sent to a group, from every process


class GroupSent(NamedTuple):
    """What every process sent to one group: a view's total, and its order."""

    tasks: int  # tasks put in the group (a retry sends none: it runs one of them again)
    first: float  # when the first of them was written to the queue
    last: float  # when the latest was


def _group_row(value: Any) -> GroupSent | None:
    """A group's row as stored, or None for a value that is not one."""
    return GroupSent(*value) if isinstance(value, tuple) and len(value) == 3 else None


class Broker:
    """The queue of the store at ``directory``; get the one of this process with
    ``get_broker()`` (``nbqueue.disk.directory``). Finding tasks in it and the cancel
    requests are its ``search`` part's (``search.Finding``)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = private_directory(directory)
        self.place = anchor(self.directory)  # the directory checked, held open
        self.key = load_key(self.directory)
        self._queue = open_cache(os.path.join(self.directory, "queue"))
        self._tokens = itertools.count()
        self._token_prefix = os.urandom(6).hex()
        self._wakeups: list[threading.Event] = []
        self.departures = 0  # local consumers that unsubscribed, ever
        self._outbox = Outbox(
            self.directory,
            self._write,
            lambda: bool(self._wakeups),
            self._wake,
            lambda: bool(self._memory) or bool(self._sent_to_groups) or bool(self._waits),
        )
        self._write_lock = threading.Lock()
        self._sent_to_groups: dict[str, int] = {}  # tasks per group, written with the outbox
        # waiting tasks' rows (``wait``), written with the outbox once it holds nothing
        # enqueued before them
        self._waits: list[tuple[str, tuple[str, ...], bytes]] = []
        self._groups_lock = threading.Lock()  # for both
        self._memory = leases.InMemory()  # leases written behind, acks that wait
        self._flusher: threading.Thread | None = None
        self.bells = Bells(self.directory)
        self.waits_added = False  # this process made a task wait for others since then
        self._doorbells: dict[threading.Event, Doorbell] = {}
        self.search = Finding(
            self._queue, self.key, self._transaction, self.flush, self._write_leases
        )

    def __repr__(self) -> str:
        return f"<Broker {self.directory}>"

    @contextlib.contextmanager
    def _transaction(self, retry: bool = False) -> Iterator[None]:
        """A write transaction on the queue. Threads of this process queue up on a lock
        first: SQLite makes a writer that finds the file locked sleep 1 ms or more, which
        is longer than most of our transactions last. A transaction the store refused
        gives its space back (SQLite keeps it in its write-ahead log). The store
        directory is checked first (``signing.Anchor``): one that another user put in its
        place raises InsecureStoreError before anything is written."""
        with self._write_lock:
            self.place.check()
            try:
                with writing(self._queue.directory), self._queue.transact(retry):
                    yield
            except StoreError:
                checkpoint(self._queue)
                raise

    # -- producers -------------------------------------------------------------------

    def enqueue(self, package: bytes, group: str | None = None) -> None:
        """Put one signed package at the back of the queue, written behind by the outbox
        (see ``nbqueue.disk.outbox``); ``flush()`` waits for it to be written.

        Raises StoreError, and does not take the package, if earlier packages could not
        be written (disk full, damaged, or locked by another process past SQLite's 60 s
        busy timeout); those are kept and written again, nothing is dropped.
        StoreLocationError, at once, if the store is on a network file system it may
        not write to (see ``signing.Anchor``).
        """
        if self.place.refusal is not None:
            self.place.check()
        if group is not None:
            with self._groups_lock:
                self._sent_to_groups[group] = self._sent_to_groups.get(group, 0) + 1
        self._outbox.put(package)
        self._wake()  # a cluster in this process writes the outbox itself as it leases

    def enqueue_many(self, packages: Iterable[bytes], groups: dict[str, int] | None = None) -> None:
        """Put many packages in one transaction: all of them, or none and StoreError;
        ``groups`` says how many of them go to which group."""
        self.flush()  # keep this process's order
        with self._transaction():
            self._push(list(packages))
            if groups:
                self._count_groups(groups)
        self._wake()

    def count_sent(self, groups: dict[str, int]) -> None:
        """Note tasks sent to groups but not through the queue (run with ``sync=True``):
        written behind, as the outbox writes packages."""
        with self._groups_lock:
            sent = self._sent_to_groups
            for group, tasks in groups.items():
                sent[group] = sent.get(group, 0) + tasks
        self._outbox.poke()

    def _count_groups(self, groups: dict[str, int]) -> None:
        """Add to the groups' rows; inside a transaction."""
        now = time.time()
        for group, tasks in groups.items():
            row = self.group_sent(group)
            first = now if row is None else row.first
            self._queue.set(GROUP + group, (tasks + (row.tasks if row else 0), first, now))

    def groups(self) -> dict[str, GroupSent]:
        """Every group tasks were sent to, and what was sent (from every process)."""
        found = read_prefixed(self._queue, GROUP).items()
        rows = {key[len(GROUP) :]: _group_row(value) for key, value in found}
        return {group: row for group, row in rows.items() if row is not None}

    def group_sent(self, group: str) -> GroupSent | None:
        """What every process sent to ``group``, if anything."""
        return _group_row(checked_get(self._queue, GROUP + group, None, "a group's row"))

    def forget_group(self, group: str) -> None:
        """Forget what was sent to a group (``delete_group``)."""
        self.flush()
        with self._transaction(retry=True):
            self._queue.delete(GROUP + group)

    def wait(self, task_id: str, after: tuple[str, ...], package: bytes, group: str | None) -> None:
        """Keep a task that waits for the tasks ``after`` (``nbqueue.disk.waiting``) in its
        row, out of the queue until ``take_waiting`` moves it; it counts in its group.
        Written behind with the outbox, after what this process enqueued before it (its
        dependencies among them); ``flush()`` writes it now."""
        if self.place.refusal is not None:
            self.place.check()
        with self._groups_lock:
            self._waits.append((task_id, after, package))
            if group is not None:
                self._sent_to_groups[group] = self._sent_to_groups.get(group, 0) + 1
        self._outbox.poke()

    def waiting(self) -> dict[str, tuple[tuple[str, ...], bytes]]:
        """Every waiting task: its id, and what it waits for with its package."""
        if self._waits:
            self.flush()
        found = read_prefixed(self._queue, WAIT).items()
        return {key[len(WAIT) :]: value for key, value in found}

    def is_waiting(self, task_id: str) -> bool:
        if self._waits:
            self.flush()
        return WAIT + task_id in self._queue

    def waiting_row(self, task_id: str) -> tuple[tuple[str, ...], bytes] | None:
        """What the waiting task ``task_id`` waits for, and its package; None if it does
        not wait."""
        if self._waits:
            self.flush()
        return checked_get(self._queue, WAIT + task_id, None, "a waiting task's row")

    def take_waiting(self, task_ids: Iterable[str], send: bool) -> dict[str, bytes]:
        """Take the rows of these waiting tasks that are still there, and with ``send``
        queue their packages in the same transaction; return the packages taken."""
        taken: dict[str, bytes] = {}
        if self._waits:
            self.flush()
        with self._transaction():
            for task_id in task_ids:
                row = self._queue.pop(WAIT + task_id, None)
                if row is not None:
                    taken[task_id] = row[1]
            if send and taken:
                self._push(list(taken.values()))
        if send and taken:
            self._wake()
        return taken

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
        refuses is kept, for the next one. Called under the outbox's ``order`` only."""
        taken = None
        groups: dict[str, int] = {}
        waits: list[tuple[str, tuple[str, ...], bytes]] = []
        try:
            with self._transaction():
                # Taken inside the transaction: a lease ended before it is taken is
                # ended in memory and never written; one ended after it waits for this
                # transaction, and then finds its row in the index.
                pending, acks = taken = self._memory.take()
                if pending or acks:
                    leases.write(self._queue, pending, acks)
                if packages:
                    self._push(packages)
                with self._groups_lock:
                    groups, self._sent_to_groups = self._sent_to_groups, {}
                    # after every package enqueued before them: none is held but these
                    if self._waits and self._outbox.held() <= sum(map(len, packages)):
                        waits, self._waits = self._waits, []
                if groups:
                    self._count_groups(groups)
                for task_id, after, package in waits:
                    self._queue.set(WAIT + task_id, (after, package))
        except BaseException:
            if taken is not None:
                self._memory.written(*taken, ok=False)
            if groups:
                self.count_sent(groups)  # counted again with the packages kept
            if waits:
                with self._groups_lock:
                    self._waits[:0] = waits  # kept, in order, for the next write
            raise
        self._memory.written(*taken, ok=True)
        if waits:
            self.waits_added = True  # for a cluster of this process: see ``cluster.waiting``

    def _write_leases(self) -> None:
        """Write the leases taken in memory, if any, with the acks that wait, now: for a
        look at the lease index that must find them (``_write`` runs one at a time:
        under the outbox's ``order``, as its thread writes)."""
        if self._memory.rows:
            with self._outbox.order:
                self._write([])

    def subscribe(self, event: threading.Event, name: str | None = None) -> None:
        """Have ``event`` set whenever this process enqueues (wakes a local cluster at
        once) and, for a ``name``d consumer, whenever another process does (a doorbell)."""
        self._wakeups.append(event)
        if name is not None:
            self.place.check()  # its socket is made in the store's bells folder
            try:
                bell = self._doorbells[event] = Doorbell(self.directory, name, event.set)
                self.bells.own.add(bell.path)
            except OSError as exc:  # a store path too long for a socket: it polls
                log.info("no doorbell for %s (%s); the queue is polled", name, exc)

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
                with self._outbox.order:  # or this poll may see neither the batch
                    pass  # in the outbox nor in the queue
            if not self._memory.acks and not self._queue.get(PENDING, 0, retry=True):
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
            self._memory.add(rows, time.time() + duration, owner)
        self._outbox.poke()
        return taken

    def _bundle(
        self,
        taken: list[tuple[int, bytes]],
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

    def _take(self, owner: str, count: int, duration: float, fresh: list[bytes]) -> list[Lease]:
        """Do the pending ``ack_soon``s, lease from the queue, then from ``fresh`` (not yet
        queued); queue the rest of ``fresh``. Inside a transaction, in as few statements
        as can be: this is every round trip's path."""
        queue = self._queue
        acks = self._memory.take_acks()
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
        taken_leases.extend(
            Lease(f"refused-{number}", 1, b"", why)  # a token of no lease row
            for number, why in enumerate(refused)
        )
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
        self._memory.ack(tokens)

    def flush_acks(self) -> None:
        """Acknowledge what ``ack_soon`` was given."""
        self.ack(self._memory.take_acks())

    def _end_leases(self, tokens: Iterable[str], back: bool = False, counted: bool = False) -> None:
        tokens, requeued = self._memory.end(list(tokens), back, counted)
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
        lost.extend(self._memory.renew(rows, duration))
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
        mine = self._memory.held_by(rows, owner)  # first: then in the index, if written
        if not rows:
            return mine
        return mine | leases.held_by(rows, leases.read_index(self._queue), owner)

    def reap(self, now: float | None = None) -> int:
        """Put every expired lease back in the queue; return how many. Only a task that a
        worker began is charged an attempt: its holder's folder on this machine tells
        (``nbqueue.disk.hosts``), and without one every task is. Then the folders of dead
        holders no longer needed are swept."""
        now = time.time() if now is None else now
        self._write_leases()  # this process's leases in memory are reaped like the others
        expired = {held[1] for held in leases.read_index(self._queue).values() if held[0] < now}
        if not expired:
            return 0
        found = {owner: hosts.begun(owner) for owner in expired}  # outside the transaction

        def begun(owner: str) -> set[str] | None:
            if owner not in found:  # expired since the index was read
                found[owner] = hosts.begun(owner)
            return found[owner]

        with self._transaction(retry=True):
            index = leases.read_index(self._queue)
            reaped = leases.reap(self._queue, index, now, begun)
            self._queue.set(INDEX, index)
        hosts.sweep(self.directory, self.owners(index))
        return reaped

    def owners(self, index: leases.Index | None = None) -> set[str]:
        """The clusters that hold leases (of ``index``, by default the stored one)."""
        index = leases.read_index(self._queue) if index is None else index
        return {held[1] for held in index.values()}

    def pending(self) -> int:
        """Packages waiting, this process's outbox included: ``size`` without a flush."""
        return self._queue.get(PENDING, 0, retry=True) + len(self._outbox)

    def leased(self) -> int:
        """How many packages are leased (running or waiting for a retry)."""
        return self._memory.count(lambda: leases.read_index(self._queue))

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
        self.search.forget_snapshot()
        dropped = 0
        with self._transaction(retry=True):
            while True:
                key, item = self._queue.pull()
                if key is None:
                    break
                dropped += len(item) if isinstance(item, list) else 1
            self._queue.set(PENDING, 0)
        return dropped

    # -- finding tasks and cancel requests: the ``search`` part's ----------------------

    def holds(self, task_ids: Iterable[str], max_age: float = 0.0) -> set[str]:
        """See ``Finding.holds``."""
        return self.search.holds(task_ids, max_age)

    def cancel(
        self, match: Match, needles: list[bytes] | None = None
    ) -> tuple[list[tuple[Header, int, bytes]], list[Header]]:
        """See ``Finding.cancel``."""
        return self.search.cancel(match, needles)

    def request_cancels(self, batches: dict[str, list[str]]) -> list[str]:
        """See ``Finding.request_cancels``."""
        return self.search.request_cancels(batches)

    def locate(
        self, match: Match, needles: list[bytes] | None = None
    ) -> tuple[str, Header, int] | None:
        """See ``Finding.locate``."""
        return self.search.locate(match, needles)

    def running(self, match: Match) -> list[tuple[Header, int]]:
        """See ``Finding.running``."""
        return self.search.running(match)

    def cancel_count(self) -> int:
        """See ``Finding.cancel_count``."""
        return self.search.cancel_count()

    def cancel_requests(self) -> dict[str, float]:
        """See ``Finding.cancel_requests``."""
        return self.search.cancel_requests()

    def forget_cancels(self, task_ids: Iterable[str]) -> None:
        """See ``Finding.forget_cancels``."""
        self.search.forget_cancels(task_ids)

    def notify_cancels(self) -> None:
        """See ``Finding.notify_cancels``."""
        self.search.notify_cancels()

    def watch_cancels(self, event: threading.Event) -> None:
        """See ``Finding.watch_cancels``."""
        self.search.watch_cancels(event)

    def unwatch_cancels(self, event: threading.Event) -> None:
        self.search.unwatch_cancels(event)

    def close(self) -> None:
        self.flush()
        self.flush_acks()
        self._queue.close()

    def forget_in_child(self) -> None:
        """In a forked child: start with no outbox and no leases. They are the parent's,
        which writes them (the child writing them too would deliver them twice)."""
        self._write_lock = threading.Lock()
        self._sent_to_groups, self._groups_lock = {}, threading.Lock()
        self._waits = []
        self._memory.reset()
        self._outbox.forget()
