"""Iterating over outcomes as they come: ``as_completed`` and ``map``.

- ``as_completed(task_ids=... | group=...)`` yields Tasks as they finish, failures too.
- ``map(func, iterable)`` is ``Executor.map`` on the cluster: one group of items, sent at
  once in batches (``nbqueue.batches``), its results yielded in input order (or as their
  batches finish); breaking out of it cancels the batches that have not finished.

``as_completed(task_ids=...)`` waits on futures (``nbqueue.futures``). ``as_completed(
group=...)`` and ``map`` follow a group's pages instead (``Part.group_pages``: the last
page and any new one), reading each new outcome once, whatever the group's size.
"""

from __future__ import annotations

import builtins
import logging
import operator
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, TimeoutError
from concurrent.futures import wait as wait_futures
from pickle import loads
from typing import Any, cast

from nbqueue import batches, conf
from nbqueue.control import cancel_tasks
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, sent
from nbqueue.disk.records import Record, batch_arguments, decode_result, expand, item_view
from nbqueue.disk.store import Part, Store
from nbqueue.errors import ConfigurationError, TaskFailed
from nbqueue.futures import POLL_MAX, POLL_MIN, TaskFuture, as_task, future
from nbqueue.models import Failure, Task
from nbqueue.options import TaskOptions
from nbqueue.tasks import send_items

log = logging.getLogger(__name__)
_SUCCESS, _RESULT = operator.itemgetter(0), operator.itemgetter(1)


# -- checks --------------------------------------------------------------------------


def _check_timeout(timeout: Any) -> float | None:
    """The deadline (``time.monotonic()``) of a timeout in seconds, or None."""
    if timeout is None:
        return None
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not 0 <= timeout < float("inf")
    ):
        raise ConfigurationError(
            f"timeout must be a number of seconds >= 0, or None to "
            f"wait as long as it takes; got {timeout!r}"
        )
    return time.monotonic() + timeout


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")


def _idle(broker: Broker) -> bool:
    return broker.pending() == 0 and broker.leased() == 0 and not broker.waiting()


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

    def poll(self, raw: bool = False) -> list[Record]:
        """The new records; a batch's as it is with ``raw``, else its items'."""
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
                if raw:
                    found.append(record)
                else:
                    found += expand(record)
        return found


# -- as_completed --------------------------------------------------------------------


def as_completed(
    task_ids: Iterable[str] | None = None,
    group: str | None = None,
    timeout: float | None = None,
    cached: bool = False,
    count: int | None = None,
    broker: Broker | None = None,
) -> Iterator[Task]:
    """Yield each task as soon as it finishes (a ``Success`` or, not raised, a ``Failure``).

    Give exactly one of:

    - ``task_ids``: the tasks (uuids, names or ``async_iter`` ids), each yielded once;
      those finished already come first.
    - ``group``: the group's tasks in the order their outcomes were stored, those stored
      already first, then each new one as it is stored. It ends after ``count`` tasks;
      without ``count``, after as many as this process put in the group (as a progress
      panel's total, which ``delete_group`` resets); for a group this process put nothing
      in, or put a task with ``save=False`` in (its success is never stored, so never
      yielded), once nothing is queued or running in the store (its queue and leases
      empty at two polls in a row, with no new outcome between): no more outcome can
      come then.

    ``timeout`` (seconds from the call) raises ``TimeoutError`` once it has run out and
    no task is left to yield at once (as ``concurrent.futures.as_completed``). Leaving
    the loop early only stops waiting: the tasks run on.
    """
    if (task_ids is None) == (group is None):
        raise ConfigurationError(
            "as_completed takes exactly one of task_ids (a list of task "
            "ids) and group (a group name)"
        )
    deadline = _check_timeout(timeout)
    broker = broker or get_broker()
    cached = bool(cached)
    if task_ids is not None:
        if isinstance(task_ids, (str, bytes)) or not isinstance(task_ids, Iterable):
            raise ConfigurationError(
                f"task_ids must be a list of task ids, got {task_ids!r}"
                " (as_completed([task_id]) for a single one)"
            )
        if count is not None:
            raise ConfigurationError(
                "count goes with group=, not task_ids: every task of task_ids is yielded"
            )
        futures = [future(task_id, cached, broker) for task_id in dict.fromkeys(task_ids)]
        return _completed_futures(futures, deadline, timeout)
    if not isinstance(group, str) or not group:
        raise ConfigurationError(f"group must be a non-empty string, got {group!r}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ConfigurationError(
            f"count must be a whole number >= 1 (how many tasks of the "
            f"group to yield) or None, got {count!r}"
        )
    return _completed_group(group, count, cached, broker, deadline, timeout)


def _task_of(fut: TaskFuture) -> Task:
    if fut.task is None:  # the store could not be read: the future holds why
        raise fut.exception()  # type: ignore[misc]  # done without a task: an exception
    return fut.task


def _stopped(fut: TaskFuture) -> float:
    return fut.task.stopped.timestamp() if fut.task is not None else float("inf")


def _completed_futures(
    futures: list[TaskFuture], deadline: float | None, timeout: float | None
) -> Iterator[Task]:
    pending = set(futures)
    seen: set[str] = set()  # a task given by its id and by its name is yielded once
    try:
        for fut in futures:
            if fut.done():
                pending.discard(fut)
                task = _task_of(fut)
                if task.id not in seen:
                    seen.add(task.id)
                    yield task
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"{len(pending)} of {len(futures)} tasks did not finish within {timeout} s"
                )
            # wait() gives back the futures it was given, typed as plain Futures
            done, pending = cast(
                "tuple[set[TaskFuture], set[TaskFuture]]",
                wait_futures(pending, left, FIRST_COMPLETED),
            )
            for fut in sorted(done, key=_stopped):
                task = _task_of(fut)
                if task.id not in seen:
                    seen.add(task.id)
                    yield task
    finally:
        for fut in pending:
            fut.cancel()  # stop waiting; the tasks run on


def _completed_group(
    group: str,
    count: int | None,
    cached: bool,
    broker: Broker,
    deadline: float | None,
    timeout: float | None,
) -> Iterator[Task]:
    store = get_store(broker.directory)
    follower = _GroupFollower(store.part(cached), group)
    poll = _Poll(store)
    memo = sent(broker.directory)
    yielded = idle_polls = 0
    while True:
        want = count
        if want is None and group not in memo.unsaved_groups:
            want = memo.enqueued.get(group)  # else some are never stored: the idle rule
        if want is not None and yielded >= want:
            return
        # Only for a group of other processes' tasks: this process's own may be on their
        # way from its outbox to a lease, where neither pending() nor leased() counts
        # them. Checked before the read, which then sees every outcome stored by then.
        idle = want is None and _idle(broker)
        records = follower.poll()
        for record in records:
            yield as_task(record, store, cached)
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
            raise TimeoutError(
                f"{yielded} task(s) {wanted} of group {group!r} finished within {timeout} s"
            )
        poll.wait(deadline)


# -- map -----------------------------------------------------------------------------


def map(
    func: Callable[..., Any] | str,
    *iterables: Iterable[Any],
    ordered: bool = True,
    timeout: float | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> Iterator[Any]:
    """``Executor.map`` on the cluster: run ``func`` once per item and yield each result
    as soon as it is available: in input order when ``ordered``, as the tasks finish
    otherwise. With several iterables, as the builtin ``map``, ``func`` takes one
    argument from each, until the shortest ends; with one, a tuple item is spread as
    positional arguments.

    All the items are enqueued at once, at the call, in one transaction, in batches (see
    ``nbqueue.batches``), and share one group: the ``group`` option, or a fresh one.
    Takes the options of ``async_task`` (but ``save=False``: results are read back from
    the store); other keywords go to every call, as in ``async_iter``. With
    ``reuse=True`` the same map run again (a cell run again after its kernel died) reads
    the earlier one's results and sends again only its batches that failed or were
    lost. A failed item raises ``TaskFailed`` at its place, once its batch has ended.
    ``timeout`` is seconds from the call, for the whole map: ``TimeoutError`` when the next
    result is not there by then (as ``Executor.map``); a task's own time limit is the
    ``timeout`` option, given in ``q_options={"timeout": s, ...}`` (with every other
    option). ``progress=True`` shows the group's progress panel (a tqdm bar outside
    Jupyter).
    Leaving the loop early (``break``, an exception, ``TaskFailed``, ``TimeoutError``)
    cancels the tasks that have not finished.
    """
    if not iterables:
        raise ConfigurationError(
            "map takes the function and at least one iterable of arguments: "
            "map(func, xs) or map(func, xs, ys)"
        )
    deadline = _check_timeout(timeout)
    _check_flag("ordered", ordered)
    _check_flag("progress", progress)
    settings = conf.settings()
    options = TaskOptions.take(kwargs, settings)
    if options.save is False:
        raise ConfigurationError(
            "map reads every result back from the store, so it cannot "
            "take save=False; use async_task with a hook for that"
        )
    broker = options.broker
    cached = bool(options.cached)
    count, iterables = _counted(iterables)
    items = iterables[0] if len(iterables) == 1 else zip(*iterables, strict=False)
    manifest = send_items(func, items, count, kwargs, options, lambda _: f"map-{uuid.uuid4()}")
    panel = None
    if progress and count:
        from nbqueue.display.group_panel import GroupProgress

        panel = GroupProgress(manifest["group"], count, cached, broker)
    return _map_results(
        manifest["batches"],
        manifest["group"],
        manifest["func"],
        ordered,
        cached,
        broker,
        deadline,
        timeout,
        panel,
    )


def _counted(iterables: tuple[Iterable[Any], ...]) -> tuple[int, tuple[Iterable[Any], ...]]:
    """How many calls the iterables make (the shortest), and the iterables to read them
    from: those without a length are read into lists first."""
    if not all(hasattr(it, "__len__") for it in iterables):
        iterables = tuple(it if hasattr(it, "__len__") else list(it) for it in iterables)
    return min(len(it) for it in iterables), iterables  # type: ignore[arg-type]


def _map_results(
    sent_batches: list[tuple[str, int]],
    group: str,
    func: str,
    ordered: bool,
    cached: bool,
    broker: Broker,
    deadline: float | None,
    timeout: float | None,
    panel: Any,
) -> Iterator[Any]:
    """The results of a map's batches (``(id, items)`` each, in input order), read a
    batch at a time: an item that failed raises TaskFailed with its own Failure."""
    store = get_store(broker.directory)
    follower = _GroupFollower(store.part(cached), group)
    poll = _Poll(store)
    place = {batch_id: i for i, (batch_id, _) in enumerate(sent_batches)}
    total = sum(count for _, count in sent_batches)
    finished: set[int] = set()  # batches with an outcome
    ready: dict[int, Record] = {}  # ordered: outcomes waiting for their turn
    turn = 0  # ordered: the next batch to yield
    given = 0  # items yielded

    def values(record: Record) -> Iterable[Any]:
        items: list[Any] | None = record.get("items")
        if items is None:  # failed as a whole
            view = item_view(record, 0, [])
            raise TaskFailed(Failure(view or record, store, cached))
        if sum(builtins.map(_SUCCESS, items)) == len(items):  # the common case, in C
            return builtins.map(loads, builtins.map(_RESULT, items))
        return failing(record, items)

    def failing(record: Record, items: list[Any]) -> Iterator[Any]:
        arguments = None
        for i, entry in enumerate(items):
            if entry[0]:
                yield decode_result(entry[1])
                continue
            arguments = arguments if arguments is not None else batch_arguments(record)
            raise TaskFailed(Failure(item_view(record, i, arguments) or record, store, cached))

    try:
        while given < total:
            fresh = []
            for record in follower.poll(raw=True):
                i = place.get(record["id"])
                if i is not None and i not in finished:
                    finished.add(i)
                    fresh.append((i, record))
                    batches.measured(broker.directory, func, record)
            before = given
            if ordered:
                ready.update(fresh)
                while turn in ready:
                    record = ready.pop(turn)
                    turn += 1
                    given += record["count"]  # counted before: the loop may end in it
                    yield from values(record)
            else:
                for _, record in fresh:
                    given += record["count"]
                    yield from values(record)
            if fresh:
                poll.reset()
            if given > before:
                continue  # as Executor.map: the timeout is for a result not there in time
            if deadline is not None and time.monotonic() >= deadline:
                done = sum(sent_batches[i][1] for i in finished)
                raise TimeoutError(
                    f"{done} of {total} items of map (group {group!r}) finished within {timeout} s"
                )
            poll.wait(deadline)
    finally:
        if panel is not None:
            panel.stop()
        rest = [batch_id for batch_id, i in place.items() if i not in finished]
        if rest:
            _cancel(rest, broker)


def _cancel(task_ids: list[str], broker: Broker) -> None:
    """Cancel the tasks a map left unfinished; an error is logged, not raised over the
    reason the map ended."""
    try:
        cancel_tasks(task_ids, broker)
    except Exception:
        log.warning(
            "nbqueue.map: cancelling %d unfinished task(s) failed", len(task_ids), exc_info=True
        )


__all__ = ["as_completed", "map"]
