"""Futures of tasks: ``future(task_id)``, which ``await AsyncTask(...)`` also uses.

``future(task_id)`` is a ``concurrent.futures.Future`` (a ``TaskFuture``) that completes
when the task has an outcome: its result, or ``TaskFailed`` whose ``.task`` is the
Failure. It works with ``concurrent.futures.wait``/``as_completed`` and
``asyncio.wrap_future``, and can be awaited, which is how ``await AsyncTask(...)`` waits
(``tasks``).
``as_completed`` and ``map`` are ``iterate``'s.

**One waiter per process.** Every pending future of every store is served by one daemon
thread (``nbqueue-futures``, started on first use), never a thread or a poll loop each.
It holds them by (store directory, cached) -> {task id: futures}, and:

- wakes at once when this process stores outcomes (``Store.wait_for_change``: a cluster in
  the kernel), and polls for other processes' writes, 0.5 ms growing to 20 ms, back to
  0.5 ms whenever a future completed;
- reads the pending ids only when something may have changed: for the saved part, when its
  totals moved (two counter reads), a future was added, or a second passed (a success
  stored while ``save_limit`` prunes another leaves the totals as they were); the cached
  part keeps no totals, so its pending ids are read on every poll;
- reads them in one batch (``Part.records``, 500 ids a statement), and waits at least
  twice as long as a read took before the next, so thousands of futures cost the kernel
  at most a third of one thread;
- never dies silently: an error reading one store fails that store's futures with it;
  anything else fails every pending future, is logged, and the next ``future()`` starts
  a new waiter.

**How a future ends.** Every end goes through ``Future``'s own methods, so
``concurrent.futures.wait``/``as_completed``, ``add_done_callback``, ``asyncio.wrap_future``
and ``await`` all wake at once:

- the task's outcome (a result, a failure, a Failure saying ``TaskCancelled`` when
  ``nbqueue.cancel`` stopped it, from this process or another) is ``set_result`` or
  ``set_exception``, by the waiter thread, or at once when ``future()`` finds it stored;
- ``cancel()`` stops waiting for it; the task is not cancelled (``nbqueue.cancel`` does
  that). ``Future.cancel`` alone leaves a future that ``wait`` and ``as_completed`` do not
  count as done until an executor calls ``set_running_or_notify_cancel``; here there is no
  executor, so the future's first done callback calls it, in the cancelling thread,
  before any callback of the caller's runs;
- a wait that gives up (``result(timeout=)``, ``wait`` or ``as_completed`` with a timeout)
  changes nothing: the future stays pending, still waited for, and completes with the
  outcome. An ``await`` given up (``asyncio.wait_for``, a cancelled coroutine) cancels it,
  as asyncio cancels what it awaits: a ``cancel()`` like any other;
- ``delete_group(group, tasks=True)`` deletes stored outcomes, never a queued or running
  task: a future of one completes when its run stores the outcome, and one already done
  keeps what it has. A pending future of an ``async_iter`` whose tasks were deleted that
  way (some stored, some not yet) can never have its combined outcome: it fails with
  ``OutcomeDeleted``. The waiter sees it when the saved part's totals shrink (a deletion)
  or the last of its tasks is stored: it then reads every task's outcome again, and one
  seen stored before that is gone, its id no longer in the group, was deleted (a task
  sent again with ``retry`` has its failure removed too, but stays in its group).
  An outcome deleted, or pruned by ``save_limit``, before the waiter read it leaves no
  trace: its future waits on, as ``result(task_id, wait=-1)`` would; bound such a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Generator, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any, SupportsIndex

from nbqueue.dependencies import placeholder
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, sent
from nbqueue.disk.names import batch_of
from nbqueue.disk.records import Manifest, Record, manifest_size
from nbqueue.disk.store import Part, Store
from nbqueue.errors import ConfigurationError, OutcomeDeleted, TaskFailed
from nbqueue.models import Failure, Success, Task

log = logging.getLogger(__name__)

THREAD_NAME = "nbqueue-futures"
POLL_MIN = 0.0005  # seconds between polls of the store right after something finished
POLL_MAX = 0.02  # ... growing to this while nothing does
RECHECK = 1.0  # seconds: pending ids are read at least this often, totals moved or not
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


# -- futures -------------------------------------------------------------------------


class TaskFuture(Future):
    """The Future of one task's outcome; make one with ``nbqueue.future(task_id)``.

    ``.result()`` is the task's result; a failed task raises ``TaskFailed`` (its ``.task``
    the Failure). ``.task_id`` is the id it was made with and, once done, ``.task`` the
    finished ``Success`` or ``Failure``.
    """

    def __init__(self, task_id: str, cached: bool, directory: str) -> None:
        super().__init__()
        self.task_id = task_id
        self.cached = cached
        self.directory = directory
        self.task: Task | None = None
        self.add_done_callback(_ended)  # the first callback: see _ended

    def cancel(self) -> bool:
        """Stop waiting for the task: this future is cancelled, the task is not (it runs on
        and its outcome is stored); ``nbqueue.cancel(task_id)`` cancels the task itself."""
        return super().cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        """``await nbqueue.future(task_id)``: its result, without blocking the event loop;
        the await cancelled (``asyncio.wait_for`` timed out) cancels this future."""
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} task={self.task_id}>"

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # in a task's arguments: a dependency on the task (``nbqueue.dependencies``)
        return placeholder(self.task_id) or super().__reduce_ex__(protocol)


def _ended(fut: Future) -> None:
    """A TaskFuture's first done callback, run once by the thread that ended it. A cancel
    is notified to ``concurrent.futures.wait`` and ``as_completed`` here (an executor's
    ``set_running_or_notify_cancel``, of which a TaskFuture has none), before the
    caller's callbacks run, and the waiter thread stops watching the future."""
    if fut.cancelled():
        fut.set_running_or_notify_cancel()
        # only ever a TaskFuture's callback; add_done_callback types it for any Future
        _waiter.discard(fut)  # type: ignore[arg-type]


def as_task(record: Record, store: Store, cached: bool) -> Task:
    """The Success or Failure view of a stored record."""
    return (Success if record["success"] else Failure)(record, store, cached)


def _settle(fut: TaskFuture, record: Record, store: Store, cached: bool) -> None:
    """Complete a future with a task's outcome (unless it was cancelled meanwhile)."""
    if fut.done():
        return
    task = as_task(record, store, cached)
    fut.task = task
    try:
        if not task.success:
            fut.set_exception(TaskFailed(task))
            return
        try:
            value = task.result
        except Exception as exc:  # a result this process cannot unpickle
            fut.set_exception(exc)
            return
        fut.set_result(value)
    except InvalidStateError:  # cancelled between done() and now
        pass


def _fail(futures: Iterable[TaskFuture], exc: BaseException) -> None:
    for fut in futures:
        with contextlib.suppress(InvalidStateError):
            fut.set_exception(exc)


class _Watch:
    """The futures of one task id, and the ids whose outcomes it still waits for."""

    __slots__ = ("task_id", "futures", "remaining", "manifest", "by_name")

    def __init__(
        self, task_id: str, remaining: set[str], manifest: Manifest | None, by_name: bool
    ) -> None:
        self.task_id = task_id
        self.futures: list[TaskFuture] = []
        self.remaining = remaining  # ids without an outcome (an async_iter's: its batches')
        self.manifest = manifest  # set for an async_iter id
        self.by_name = by_name  # a name, read one by one (no batch read by name)


def _iter_outcome(part: Part, watch: _Watch) -> Record | OutcomeDeleted | None:
    """Read every task of an ``async_iter`` watch again: its combined record once all
    are stored; OutcomeDeleted once one seen stored is gone with its group (deleted);
    otherwise None, its missing ones waited for again (a failure sent again with
    ``retry`` is removed until its new outcome is stored)."""
    manifest = watch.manifest
    assert manifest is not None
    record, missing = part.iter_outcome(manifest)
    if record is not None:
        return record
    lost = missing - watch.remaining  # stored when last read, gone now
    if lost:  # those still in the group (or in a batch there) are being run again
        grouped = set(part.group_ids(manifest["group"]))
        lost = {i for i in lost if i not in grouped and (batch_of(i) or ("",))[0] not in grouped}
    if lost:
        sizes = dict(manifest.get("batches", ()))  # a batch lost is its items
        gone = sum(sizes.get(i, 1) for i in lost)
        return OutcomeDeleted(
            f"the outcomes of {gone} of the {manifest_size(manifest)} tasks of async_iter "
            f"{manifest['id']} were deleted (delete_group({manifest['group']!r}, "
            "tasks=True)) before all of them had finished, so its combined result can "
            "never be made; run the async_iter again"
        )
    watch.remaining = missing
    return None


def _watch_of(part: Part, task_id: str) -> _Watch:
    """What to wait for to know the outcome of ``task_id`` (which has none yet)."""
    if not _UUID.match(task_id):
        return _Watch(task_id, set(), None, by_name=True)
    manifest = part.manifest(task_id)
    if manifest is None:
        return _Watch(task_id, {task_id}, None, by_name=False)
    return _Watch(task_id, part.iter_outcome(manifest)[1], manifest, by_name=False)


class _Watched:
    """The pending futures of one part of one store, and what the waiter last saw of it."""

    def __init__(self, store: Store, cached: bool) -> None:
        self.store = store
        self.cached = cached
        self.part = store.part(cached)
        self.watches: dict[str, _Watch] = {}
        self.mark: tuple[int, int] | None = None  # the part's totals at the last read
        self.dirty = True  # a future was added since the last read
        self.read_at = 0.0
        self.not_before = 0.0  # the next read, paced by how long the last one took
        self.since = store.wait_for_change(timeout=0)  # the store's saves seen


class _Waiter:
    """The one thread of the process that completes pending TaskFutures (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, bool], _Watched] = {}
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the callers' side -----------------------------------------------------------

    def add(self, fut: TaskFuture, store: Store, cached: bool, watch: _Watch) -> None:
        with self._lock:
            key = (store.directory, cached)
            watched = self._keys.get(key)
            if watched is None:
                watched = self._keys[key] = _Watched(store, cached)
            elif watched.store is not store:  # the store was dropped and opened again
                watched.store, watched.part = store, store.part(cached)
            found = watched.watches.setdefault(fut.task_id, watch)
            found.futures.append(fut)
            watched.dirty = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
        self._wakeup.set()

    def discard(self, fut: TaskFuture) -> None:
        """Stop waiting for one future (cancelled)."""
        with self._lock:
            key = (fut.directory, fut.cached)
            watched = self._keys.get(key)
            if watched is None:
                return
            watch = watched.watches.get(fut.task_id)
            if watch is None:
                return
            watch.futures = [f for f in watch.futures if f is not fut]
            if not watch.futures:
                del watched.watches[fut.task_id]
                if not watched.watches:
                    del self._keys[key]

    def pending(self) -> int:
        """How many futures wait (for tests and diagnostics)."""
        with self._lock:
            return sum(
                len(w.futures) for watched in self._keys.values() for w in watched.watches.values()
            )

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently: fail the futures, say why
            log.exception(
                "the futures waiter stopped; its pending futures fail with "
                "this error, and the next future() starts a new waiter"
            )
            with self._lock:
                keys, self._keys = self._keys, {}
                if self._thread is threading.current_thread():
                    self._thread = None
            _fail(
                (
                    f
                    for watched in keys.values()
                    for w in watched.watches.values()
                    for f in w.futures
                ),
                exc,
            )

    def _loop(self) -> None:
        pause = POLL_MIN
        while True:
            with self._lock:
                items = list(self._keys.items())
                if not items:
                    self._wakeup.clear()
            if not items:
                self._wakeup.wait()
                pause = POLL_MIN
                continue
            settled = 0
            for key, watched in items:
                try:
                    settled += self._check(key, watched)
                except Exception as exc:  # this store can't be read: its futures say why
                    log.error("reading %s failed: %r", key[0], exc)
                    with self._lock:
                        if self._keys.get(key) is watched:
                            del self._keys[key]
                    _fail([f for w in list(watched.watches.values()) for f in w.futures], exc)
            if settled:
                pause = POLL_MIN
            # Saves of this process wake the wait at once (with several stores, those of
            # the first); other processes' writes are seen by the next poll.
            first = items[0][1]
            first.since = first.store.wait_for_change(first.since, pause)
            pause = min(pause * 1.5, POLL_MAX)

    def _check(self, key: tuple[str, bool], watched: _Watched) -> int:
        """Read the pending ids of one part if something may have changed; settle the
        futures of those that finished; return how many ids finished."""
        now = time.monotonic()
        if now < watched.not_before:
            return 0
        part = watched.part
        mark = None if part.expiring else part.totals()  # before the ids: no write missed
        # something was deleted: an async_iter's tasks seen stored may be gone
        shrank = (
            mark is not None
            and watched.mark is not None
            and (mark[0] < watched.mark[0] or mark[1] < watched.mark[1])
        )
        with self._lock:
            if (
                mark is not None
                and mark == watched.mark
                and not watched.dirty
                and now - watched.read_at < RECHECK
            ):
                return 0
            watched.dirty = False
            watches = list(watched.watches.values())
            ids = list(dict.fromkeys(i for w in watches if not w.by_name for i in w.remaining))
        start = time.monotonic()
        found = part.stored(ids) if ids else {}
        done: list[tuple[_Watch, Record | OutcomeDeleted]] = []
        for watch in watches:  # only this thread changes a watch's remaining ids
            record: Record | OutcomeDeleted | None = None
            if watch.by_name:
                record = part.find(watch.task_id)
            elif watch.manifest is None:
                got = found.get(watch.task_id)
                record = part.get(watch.task_id) if got is True else got or None
            else:
                watch.remaining.difference_update(found)
                if not watch.remaining or shrank:
                    record = _iter_outcome(part, watch)
            if record is not None:
                done.append((watch, record))
        settle: list[tuple[list[TaskFuture], Record | OutcomeDeleted]] = []
        with self._lock:
            for watch, record in done:
                if watched.watches.get(watch.task_id) is watch:
                    del watched.watches[watch.task_id]
                settle.append((list(watch.futures), record))
            if not watched.watches and self._keys.get(key) is watched:
                del self._keys[key]
        took = time.monotonic() - start
        watched.mark, watched.read_at, watched.not_before = mark, start, start + 2 * took
        for futures, record in settle:  # outside the lock: callbacks may make futures
            if isinstance(record, OutcomeDeleted):
                _fail(futures, record)
                continue
            for fut in futures:
                _settle(fut, record, watched.store, watched.cached)
        return len(done)


_waiter = _Waiter()


def _check_sent(broker: Broker, task_id: object, cached: bool) -> None:
    """Refuse, at the call, a future that could never complete for a task this process
    sent: one whose success is never stored, or one stored in the other part."""
    how = sent(broker.directory).unusual.get(task_id) if isinstance(task_id, str) else None
    if how == "unsaved":
        raise ConfigurationError(
            f"task {task_id!r} was sent with save=False: its result is never stored, so a "
            "future of it could never complete; give the task a hook, or send it with "
            "save=True"
        )
    if how == "cached" and not cached:
        raise ConfigurationError(
            f"task {task_id!r} was sent with cached=True: its outcome "
            "goes to the cached part; pass cached=True"
        )


def future(
    task_id: str,
    cached: bool = False,
    broker: Broker | None = None,
    kind: type[TaskFuture] = TaskFuture,
) -> TaskFuture:
    """A ``concurrent.futures.Future`` of the task ``task_id`` (a uuid, a name, or an
    ``async_iter`` id) that completes when the task has an outcome.

    ``.result()`` returns the task's result; a failed task sets ``.exception()`` to
    ``TaskFailed``, whose ``.task`` is the Failure. Use it with ``concurrent.futures.wait``
    and ``as_completed``, ``asyncio.wrap_future``, or ``await`` it. One background thread
    of the process waits for all of them. ``cancel()`` stops waiting; the task itself runs
    on. How each way of ending reaches those: the module docstring. ``kind``: the class
    of the future (``nbqueue.Executor``'s cancels its task too).
    """
    broker = broker or get_broker()
    store = get_store(broker.directory)
    cached = bool(cached)
    _check_sent(broker, task_id, cached)
    part = store.part(cached)
    fut = kind(task_id, cached, store.directory)
    record = part.find(task_id)  # also refuses a task id that is not a string
    if record is not None:
        _settle(fut, record, store, cached)
    else:
        _waiter.add(fut, store, cached, _watch_of(part, task_id))
    return fut


__all__ = ["future", "TaskFuture"]
