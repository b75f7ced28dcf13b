"""Control from the notebook: futures of tasks, ``await``, ``as_completed`` and ``map``.

- ``future(task_id)`` is a ``concurrent.futures.Future`` (a ``TaskFuture``) that completes
  when the task has an outcome: its result, or ``TaskFailed`` whose ``.task`` is the
  Failure. It works with ``concurrent.futures.wait``/``as_completed`` and
  ``asyncio.wrap_future``, which is how ``await AsyncTask(...)`` waits (``tasks``).
- ``as_completed(task_ids=... | group=...)`` yields Tasks as they finish, failures too.
- ``map(func, iterable)`` is ``Executor.map`` on the cluster: one group of tasks, enqueued
  at once, its results yielded in input order (or as they finish); breaking out of it
  cancels the tasks that have not finished.

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

``as_completed(group=...)`` and ``map`` follow a group's pages instead (``Part.group_pages``:
the last page and any new one), reading each new outcome once, whatever the group's size.
Cancelling one of these futures only stops waiting for it; ``nbqueue.cancel`` cancels the
task itself.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, TimeoutError
from concurrent.futures import wait as wait_futures
from typing import Any, Callable, Iterable, Iterator

from .broker import Broker, get_broker
from .errors import ConfigurationError, TaskFailed
from .models import Failure, Success, Task
from .records import Manifest, Record, decode_result, iter_record
from .results import find_record
from .sent import sent
from .store import Part, Store, get_store

log = logging.getLogger("nbqueue")

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

    def cancel(self) -> bool:
        """Stop waiting for the task: this future is cancelled, the task is not (it runs on
        and its outcome is stored); ``nbqueue.cancel(task_id)`` cancels the task itself."""
        cancelled = super().cancel()
        if cancelled:
            _waiter.discard(self)
        return cancelled

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} task={self.task_id}>"


def _task(record: Record, store: Store, cached: bool) -> Task:
    return (Success if record["success"] else Failure)(record, store, cached)


def _settle(fut: TaskFuture, record: Record, store: Store, cached: bool) -> None:
    """Complete a future with a task's outcome (unless it was cancelled meanwhile)."""
    if fut.done():
        return
    task = _task(record, store, cached)
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
        try:
            fut.set_exception(exc)
        except InvalidStateError:
            pass


class _Watch:
    """The futures of one task id, and the ids whose outcomes it still waits for."""

    __slots__ = ("task_id", "futures", "remaining", "manifest", "by_name")

    def __init__(self, task_id: str, remaining: set[str], manifest: Manifest | None,
                 by_name: bool) -> None:
        self.task_id = task_id
        self.futures: list[TaskFuture] = []
        self.remaining = remaining  # ids without an outcome (an async_iter's: many)
        self.manifest = manifest  # set for an async_iter id
        self.by_name = by_name  # a name, read one by one (no batch read by name)


def _watch_of(part: Part, task_id: str) -> _Watch:
    """What to wait for to know the outcome of ``task_id`` (which has none yet)."""
    if not _UUID.match(task_id):
        return _Watch(task_id, set(), None, by_name=True)
    manifest = part.manifest(task_id)
    if manifest is None:
        return _Watch(task_id, {task_id}, None, by_name=False)
    ids = manifest["ids"]
    missing = {i for i, r in zip(ids, part.records(ids)) if r is None}
    return _Watch(task_id, missing, manifest, by_name=False)


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
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME,
                                                daemon=True)
                self._thread.start()
        self._wakeup.set()

    def discard(self, fut: TaskFuture) -> None:
        """Stop waiting for one future (cancelled)."""
        with self._lock:
            key = (fut.directory, fut.cached)
            watched = self._keys.get(key)
            watch = watched.watches.get(fut.task_id) if watched is not None else None
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
            return sum(len(w.futures) for watched in self._keys.values()
                       for w in watched.watches.values())

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently: fail the futures, say why
            log.exception("nbqueue's futures waiter stopped; its pending futures fail with "
                          "this error, and the next future() starts a new waiter")
            with self._lock:
                keys, self._keys = self._keys, {}
                if self._thread is threading.current_thread():
                    self._thread = None
            _fail((f for watched in keys.values() for w in watched.watches.values()
                   for f in w.futures), exc)

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
                    log.error("nbqueue futures: reading %s failed: %r", key[0], exc)
                    with self._lock:
                        if self._keys.get(key) is watched:
                            del self._keys[key]
                    _fail([f for w in list(watched.watches.values()) for f in w.futures],
                          exc)
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
        with self._lock:
            if (mark is not None and mark == watched.mark and not watched.dirty
                    and now - watched.read_at < RECHECK):
                return 0
            watched.dirty = False
            watches = list(watched.watches.values())
            ids = list(dict.fromkeys(i for w in watches if not w.by_name
                                     for i in w.remaining))
        start = time.monotonic()
        found = {}
        if ids:
            found = {i: r for i, r in zip(ids, part.records(ids)) if isinstance(r, dict)}
        done: list[tuple[_Watch, Record]] = []
        for watch in watches:  # only this thread changes a watch's remaining ids
            record = None
            if watch.by_name:
                record = find_record(part, watch.task_id)
            elif watch.manifest is None:
                record = found.get(watch.task_id)
            else:
                watch.remaining.difference_update(found)
                if not watch.remaining:
                    member_ids = watch.manifest["ids"]
                    records = part.records(member_ids)
                    watch.remaining = {i for i, r in zip(member_ids, records) if r is None}
                    if not watch.remaining:
                        record = iter_record(watch.manifest, records)
            if record is not None:
                done.append((watch, record))
        settle: list[tuple[list[TaskFuture], Record]] = []
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
            for fut in futures:
                _settle(fut, record, watched.store, watched.cached)
        return len(done)


_waiter = _Waiter()


def future(task_id: str, cached: bool = False, broker: Broker | None = None) -> TaskFuture:
    """A ``concurrent.futures.Future`` of the task ``task_id`` (a uuid, a name, or an
    ``async_iter`` id) that completes when the task has an outcome.

    ``.result()`` returns the task's result; a failed task sets ``.exception()`` to
    ``TaskFailed``, whose ``.task`` is the Failure. Use it with ``concurrent.futures.wait``
    and ``as_completed``, or ``asyncio.wrap_future``. One background thread of the process
    waits for all of them. ``cancel()`` stops waiting; the task itself runs on.
    """
    broker = broker or get_broker()
    store = get_store(broker.directory)
    cached = bool(cached)
    part = store.part(cached)
    fut = TaskFuture(task_id, cached, store.directory)
    record = find_record(part, task_id)  # also refuses a task id that is not a string
    if record is not None:
        _settle(fut, record, store, cached)
    else:
        _waiter.add(fut, store, cached, _watch_of(part, task_id))
    return fut


# -- checks --------------------------------------------------------------------------

def _check_timeout(timeout: Any) -> float | None:
    """The deadline (``time.monotonic()``) of a timeout in seconds, or None."""
    if timeout is None:
        return None
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or not 0 <= timeout < float("inf")):
        raise ConfigurationError(f"timeout must be a number of seconds >= 0, or None to "
                                 f"wait as long as it takes; got {timeout!r}")
    return time.monotonic() + timeout


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")


def _idle(broker: Broker) -> bool:
    return broker.pending() == 0 and broker.leased() == 0


class _Poll:
    """The pause between two reads of a store: woken at once by this process's saves,
    polling for other processes' (0.5 ms growing to 20 ms, reset by ``reset()``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pause = POLL_MIN
        self.since = store.wait_for_change(timeout=0)

    def reset(self) -> None:
        self.pause = POLL_MIN

    def wait(self, deadline: float | None) -> None:
        step = self.pause
        if deadline is not None:
            step = max(0.0, min(step, deadline - time.monotonic()))
        self.since = self.store.wait_for_change(self.since, step)
        self.pause = min(self.pause * 1.5, POLL_MAX)


class _GroupFollower:
    """The new outcomes of a group, each once, in the order they were stored: each poll
    reads the group's last page and any new one, then the records of the new ids."""

    def __init__(self, part: Part, group: str) -> None:
        self.part = part
        self.group = group
        self.page = 0  # the first page not yet read whole
        self.seen: set[str] = set()

    def poll(self) -> list[Record]:
        pages, ids = self.part.group_pages(self.group, self.page)
        if pages < self.page:  # the group was deleted and is filling again
            self.page = 0
            pages, ids = self.part.group_pages(self.group, 0)
        self.page = max(pages - 1, 0)
        new = list(dict.fromkeys(i for i in ids if i not in self.seen))
        if not new:
            return []
        found = []
        for record in self.part.records(new):
            if isinstance(record, dict) and record["group"] == self.group:
                self.seen.add(record["id"])
                found.append(record)
        return found


# -- as_completed --------------------------------------------------------------------

def as_completed(task_ids: Iterable[str] | None = None, group: str | None = None,
                 timeout: float | None = None, cached: bool = False,
                 count: int | None = None, broker: Broker | None = None) -> Iterator[Task]:
    """Yield each task as soon as it finishes (a ``Success`` or, not raised, a ``Failure``).

    Give exactly one of:

    - ``task_ids``: the tasks (uuids, names or ``async_iter`` ids), each yielded once;
      those finished already come first.
    - ``group``: the group's tasks in the order their outcomes were stored, those stored
      already first, then each new one as it is stored. It ends after ``count`` tasks;
      without ``count``, after as many as this process put in the group (as a progress
      panel's total, which ``delete_group`` resets); for a group this process put nothing
      in, once nothing is queued or running in the store (its queue and leases empty at
      two polls in a row, with no new outcome between): no more outcome can come then.
      A task sent with ``save=False`` is never stored, so never yielded.

    ``timeout`` (seconds from the call) raises ``TimeoutError`` once it has run out and
    no task is left to yield at once (as ``concurrent.futures.as_completed``). Leaving
    the loop early only stops waiting: the tasks run on.
    """
    if (task_ids is None) == (group is None):
        raise ConfigurationError("as_completed takes exactly one of task_ids (a list of task "
                                 "ids) and group (a group name)")
    deadline = _check_timeout(timeout)
    broker = broker or get_broker()
    cached = bool(cached)
    if task_ids is not None:
        if isinstance(task_ids, (str, bytes)) or not isinstance(task_ids, Iterable):
            raise ConfigurationError(f"task_ids must be a list of task ids, got {task_ids!r}"
                                     " (as_completed([task_id]) for a single one)")
        if count is not None:
            raise ConfigurationError("count goes with group=, not task_ids: every task of "
                                     "task_ids is yielded")
        futures = [future(task_id, cached, broker) for task_id in dict.fromkeys(task_ids)]
        return _completed_futures(futures, deadline, timeout)
    if not isinstance(group, str) or not group:
        raise ConfigurationError(f"group must be a non-empty string, got {group!r}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or count < 1):
        raise ConfigurationError(f"count must be a whole number >= 1 (how many tasks of the "
                                 f"group to yield) or None, got {count!r}")
    return _completed_group(group, count, cached, broker, deadline, timeout)


def _task_of(fut: TaskFuture) -> Task:
    if fut.task is None:  # the store could not be read: the future holds why
        raise fut.exception()  # type: ignore[misc]
    return fut.task


def _stopped(fut: TaskFuture) -> float:
    return fut.task.stopped.timestamp() if fut.task is not None else float("inf")


def _completed_futures(futures: list[TaskFuture], deadline: float | None,
                       timeout: float | None) -> Iterator[Task]:
    pending = set(futures)
    try:
        for fut in futures:
            if fut.done():
                pending.discard(fut)
                yield _task_of(fut)
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{len(pending)} of {len(futures)} tasks did not finish "
                                   f"within {timeout} s")
            done, pending = wait_futures(pending, left, FIRST_COMPLETED)
            for fut in sorted(done, key=_stopped):
                yield _task_of(fut)
    finally:
        for fut in pending:
            fut.cancel()  # stop waiting; the tasks run on


def _completed_group(group: str, count: int | None, cached: bool, broker: Broker,
                     deadline: float | None, timeout: float | None) -> Iterator[Task]:
    store = get_store(broker.directory)
    follower = _GroupFollower(store.part(cached), group)
    poll = _Poll(store)
    memo = sent(broker.directory)
    yielded = idle_polls = 0
    while True:
        want = count if count is not None else memo.enqueued.get(group)
        if want is not None and yielded >= want:
            return
        # Only for a group of other processes' tasks: this process's own may be on their
        # way from its outbox to a lease, where neither pending() nor leased() counts
        # them. Checked before the read, which then sees every outcome stored by then.
        idle = want is None and _idle(broker)
        records = follower.poll()
        for record in records:
            yield _task(record, store, cached)
            yielded += 1
            if count is not None and yielded >= count:
                return
        if records:
            poll.reset()
            idle_polls = 0
            continue
        idle_polls = idle_polls + 1 if idle else 0
        if idle_polls >= 2:  # idle at two polls in a row, and nothing new in between
            return
        if deadline is not None and time.monotonic() >= deadline:
            wanted = f"of {want}" if want is not None else "so far"
            raise TimeoutError(f"{yielded} task(s) {wanted} of group {group!r} finished "
                               f"within {timeout} s")
        poll.wait(deadline)


# -- map -----------------------------------------------------------------------------

def map(func: Callable[..., Any] | str, iterable: Iterable[Any], ordered: bool = True,
        timeout: float | None = None, progress: bool = False, **kwargs: Any) -> Iterator[Any]:
    """``Executor.map`` on the cluster: run ``func`` once per item of ``iterable`` (a tuple
    item is spread as positional arguments) and yield each result as soon as it is
    available: in input order when ``ordered``, as the tasks finish otherwise.

    All the tasks are enqueued at once, at the call, in one transaction, and share one
    group: the ``group`` option, or a fresh one. Takes the options of ``async_task``
    (but ``save=False``: results are read back from the store; ``reuse`` is ignored, a
    map always sends its tasks); other keywords go
    to every call, as in ``async_iter``. A failed task raises ``TaskFailed`` at its place.
    ``timeout`` is seconds from the call, for the whole map: ``TimeoutError`` when the next
    result is not there by then (as ``Executor.map``); a task's own time limit is the
    ``timeout`` option, given in ``q_options={"timeout": s, ...}`` (with every other
    option). ``progress=True`` shows the group's progress panel (a tqdm bar outside
    Jupyter).
    Leaving the loop early (``break``, an exception, ``TaskFailed``, ``TimeoutError``)
    cancels the tasks that have not finished.
    """
    from . import conf
    from .tasks import _checked, _function, _package, _run_inline, _split_options
    from .tasks import _warn_if_unserved
    deadline = _check_timeout(timeout)
    _check_flag("ordered", ordered)
    _check_flag("progress", progress)
    settings = conf.settings()
    options = _checked(_split_options(kwargs), settings)
    if options.get("save") is False:
        raise ConfigurationError("map reads every result back from the store, so it cannot "
                                 "take save=False; use async_task with a hook for that")
    broker = options["broker"]
    group = options.get("group") or f"map-{uuid.uuid4()}"
    options = dict(options, group=group)
    cached = bool(options["cached"])
    function = _function(func, options)  # checked and pickled once for all the items
    headers, packages = [], []
    for item in iterable:
        args = item if isinstance(item, tuple) else (item,)
        header, package = _package(func, args, dict(kwargs), options, broker, function)
        headers.append(header)
        packages.append(package)
    memo = sent(broker.directory)
    if headers:
        memo.count(group, len(headers))
    panel = None
    if progress and headers:
        from .widgets import GroupProgress
        panel = GroupProgress(group, len(headers), cached, broker)
    if options["sync"]:
        for header in headers:
            _run_inline(header, func, broker, settings)
    elif packages:
        broker.enqueue_many(packages)  # all of them, or none and StoreError
        _warn_if_unserved(broker, memo)
    return _map_results([h.id for h in headers], group, ordered, cached, broker, deadline,
                        timeout, panel)


def _map_results(ids: list[str], group: str, ordered: bool, cached: bool, broker: Broker,
                 deadline: float | None, timeout: float | None, panel: Any) -> Iterator[Any]:
    store = get_store(broker.directory)
    follower = _GroupFollower(store.part(cached), group)
    poll = _Poll(store)
    position = {task_id: i for i, task_id in enumerate(ids)}
    finished: set[int] = set()  # positions with an outcome
    ready: dict[int, Record] = {}  # ordered: outcomes waiting for their turn
    given = 0  # ordered: the next position to yield; unordered: how many were yielded

    def value(record: Record) -> Any:
        if not record["success"]:
            raise TaskFailed(Failure(record, store, cached))
        return decode_result(record["result"])

    try:
        while given < len(ids):
            fresh = []
            for record in follower.poll():
                i = position.get(record["id"])
                if i is not None and i not in finished:
                    finished.add(i)
                    fresh.append((i, record))
            before = given
            if ordered:
                ready.update(fresh)
                while given in ready:
                    record = ready.pop(given)
                    given += 1
                    yield value(record)
            else:
                for _, record in fresh:
                    given += 1
                    yield value(record)
            if fresh:
                poll.reset()
            if given > before:
                continue  # as Executor.map: the timeout is for a result not there in time
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{len(finished)} of {len(ids)} tasks of map (group "
                                   f"{group!r}) finished within {timeout} s")
            poll.wait(deadline)
    finally:
        if panel is not None:
            panel.stop()
        rest = [task_id for task_id, i in position.items() if i not in finished]
        if rest:
            _cancel(rest, broker)


def _cancel(task_ids: list[str], broker: Broker) -> None:
    """Cancel the tasks a map left unfinished; an error is logged, not raised over the
    reason the map ended."""
    try:
        from .control import cancel_tasks
    except ImportError as exc:
        log.warning("nbqueue.map: %d unfinished task(s) left running: cannot cancel them "
                    "(%s)", len(task_ids), exc)
        return
    try:
        cancel_tasks(task_ids, broker)
    except Exception:
        log.warning("nbqueue.map: cancelling %d unfinished task(s) failed", len(task_ids),
                    exc_info=True)


__all__ = ["future", "TaskFuture", "as_completed", "map"]
