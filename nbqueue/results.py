"""Reading outcomes back, from any process: ``result``, ``fetch`` and groups; and
``flush`` and ``queue_size``, which wait for or count what is still queued.

Reads go to the store of the directory (``directory.get_store``) and may wait, in
milliseconds as in Django Q: 0 = do not wait, -1 = wait forever. A wait that looks like
it can never end says why, once, after a few seconds (``WaitWarning``). ``tasks`` puts
work in the queue and imports this module, never the reverse.
"""

from __future__ import annotations

import contextlib
from typing import Any

from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, heartbeats, sent
from nbqueue.disk.heartbeats import serves
from nbqueue.disk.signing import serving
from nbqueue.disk.store import Part, Store
from nbqueue.errors import ConfigurationError, StoreError
from nbqueue.models import Task, group_count, group_results


def _store(broker: Broker | None = None) -> Store:
    return get_store((broker or get_broker()).directory)


def _check_wait(wait: Any) -> None:
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or (wait < 0 and wait != -1):
        raise ConfigurationError(
            f"wait must be milliseconds >= 0, or -1 to wait forever; got {wait!r}"
        )


def _check_count(count: Any) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ConfigurationError(
            f"count must be a whole number >= 1 (how many tasks of the "
            f"group to wait for) or None, got {count!r}"
        )


def no_cluster_advice(broker: Broker) -> str | None:
    """What to do when no cluster serves the store, or None when one does."""
    clusters = heartbeats(broker.directory).clusters()
    if broker.has_local_consumer or any(serves(c) for c in clusters):
        return None
    return (
        f"no nbqueue cluster serves {broker.directory}: start one in this kernel with "
        f"`nbqueue.Cluster().start()`, or in a terminal with "
        f"`nbqueue cluster --directory {broker.directory}`"
    )


def _idle(broker: Broker) -> bool:
    return broker.pending() == 0 and broker.leased() == 0 and not broker.waiting()


def _task_wait_hint(broker: Broker, task_id: str, cached: bool) -> str | None:
    """Why a wait for one task may never end, or None when it looks like it will."""
    here, there = ("cached", "saved") if cached else ("saved", "cached")
    if get_store(broker.directory).part(not cached).get(task_id) is not None:
        return (
            f"task {task_id!r} is stored in the {there} part of the store, and this "
            f"reads the {here} part: pass cached={not cached}"
        )
    how = sent(broker.directory).unusual.get(task_id)
    if how == "unsaved":
        return (
            f"task {task_id!r} was sent with save=False: its result is never stored, so "
            "this wait cannot end. Use a hook to get it, or leave save=True"
        )
    if how is not None and (how == "cached") != cached:
        return (
            f"task {task_id!r} was sent with cached={how == 'cached'}; read it with "
            f"cached={how == 'cached'}"
        )
    if serving() == broker.directory:
        return (
            f"this wait for task {task_id!r} runs inside a task of the cluster that "
            "would run it: while every worker waits like this, none is free to run it "
            "(a deadlock). Don't wait for a task's children inside the task: give them a "
            "hook or a group, and wait for them in the notebook"
        )
    advice = no_cluster_advice(broker)
    if advice:
        return f"task {task_id!r} is not finished and {advice}"
    if _idle(broker):
        return (
            f"nothing is queued or running in {broker.directory}, so no outcome of "
            f"{task_id!r} is coming: check the id or name (mistyped?), and that it was "
            "sent to this store directory"
        )
    return None


def _group_wait_hint(broker: Broker, group: str, count: int | None, cached: bool) -> str | None:
    """Why a wait for a group may never end, or None when it looks like it will."""
    advice = no_cluster_advice(broker)
    if advice:
        return f"group {group!r} is not complete and {advice}"
    if not _idle(broker):
        return None
    store = get_store(broker.directory)
    part, other = store.part(cached), store.part(not cached)
    have = sum(part.tally(group))
    if not have and sum(other.tally(group)) != 0:
        return (
            f"group {group!r} is stored in the {'saved' if cached else 'cached'} part of "
            f"the store: pass cached={not cached}"
        )
    wanted = f"the {count} waited for" if count is not None else "any"
    return (
        f"nothing is queued or running in {broker.directory}, and group {group!r} has "
        f"{have} outcome(s), not {wanted}: check the group name and count"
    )


def _flush_before_waiting(broker: Broker, wait: int) -> None:
    """Before a wait, write what this process enqueued that its outbox still holds, when
    a cluster of another process is to run it: in one transaction, now, rather than in
    the outbox thread's small batches while the waiter polls (3x the no-op rate from an
    ``nbqueue cluster`` process). A cluster in this process takes the outbox itself."""
    if wait and not broker.has_local_consumer:
        with contextlib.suppress(StoreError):  # kept, in order; the next call says why
            broker.flush()


ITER_POLL = 0.02  # seconds between reads of an async_iter waited for, at most


def fetch(
    task_id: str, wait: int = 0, cached: bool = False, broker: Broker | None = None
) -> Task | None:
    """The finished task by uuid or name, or None if it has not finished (after ``wait`` ms).

    A wait that looks like it can never end (the task is not saved, is in the other
    part of the store, or nothing is queued or running) warns once after a few seconds.
    """
    _check_wait(wait)
    broker = broker or get_broker()
    _flush_before_waiting(broker, wait)
    store = get_store(broker.directory)
    part = store.part(cached)
    record = store.wait(
        lambda: part.find(task_id),
        wait,
        hint=lambda: _task_wait_hint(broker, task_id, cached),
        fresh=lambda since: store.fresh(part, task_id, since),
        # an async_iter is read batch by batch: polled less often (its cluster in this
        # process wakes the wait at once)
        slowest=ITER_POLL if wait and part.manifest(task_id) is not None else 0.002,
    )
    return None if record is None else Task(record, store, cached)


def result(task_id: str, wait: int = 0, cached: bool = False, broker: Broker | None = None) -> Any:
    """The result of a task by uuid or name; None until it has finished.

    ``wait`` is in milliseconds; -1 waits until the task has finished, whatever it
    returned (None, 0 and [] included). A failed task's result is its error text.
    """
    task = fetch(task_id, wait, cached, broker)
    return None if task is None else task.result


def _group_ready(part: Part, group_id: str, failures: bool, count: int | None) -> bool:
    ok, failed = part.tally(group_id)
    if count is None:
        return ok > 0 or (failures and failed > 0)
    return ok + failed >= count


def _wait_group(
    group_id: str,
    failures: bool,
    wait: int,
    count: int | None,
    cached: bool,
    broker: Broker | None,
    progress: bool,
) -> None:
    _check_wait(wait)
    _check_count(count)
    broker = broker or get_broker()
    store = get_store(broker.directory)
    part = store.part(cached)
    _flush_before_waiting(broker, wait)
    panel = None
    if progress and wait:
        from nbqueue.display.group_panel import GroupProgress

        panel = GroupProgress(group_id, count, cached, broker)
    try:
        store.wait(
            lambda: _group_ready(part, group_id, failures, count),
            wait,
            hint=lambda: _group_wait_hint(broker, group_id, count, cached),
        )
    except KeyboardInterrupt:
        # the wait ends here. A widget goes on showing the group; a tqdm bar stops, on
        # the figures it has, rather than draw over the prompt that comes next
        if panel is not None and panel.widget is not None:
            panel.detach()
            panel = None
        raise
    finally:
        if panel is not None:
            panel.stop()


def result_group(
    group_id: str,
    failures: bool = False,
    wait: int = 0,
    count: int | None = None,
    cached: bool = False,
    broker: Broker | None = None,
    progress: bool = False,
) -> list[Any] | None:
    """The results of a group, or None while it has none.

    With ``count``, waits (up to ``wait`` ms) until that many tasks of the group have
    finished, failed ones included, so a failure cannot make the wait hang.
    ``progress=True`` shows a live progress panel (or tqdm bar) while it waits.
    """
    _wait_group(group_id, failures, wait, count, cached, broker, progress)
    results = group_results(_store(broker).part(cached), group_id, failures)
    return results or None


def fetch_group(
    group_id: str,
    failures: bool = True,
    wait: int = 0,
    count: int | None = None,
    cached: bool = False,
    broker: Broker | None = None,
    progress: bool = False,
) -> list[Task] | None:
    """The tasks of a group (or None while it has none); see ``result_group``."""
    _wait_group(group_id, failures, wait, count, cached, broker, progress)
    tasks = Task.get_task_group(group_id, failures, cached, _store(broker))
    return tasks or None


def count_group(
    group_id: str, failures: bool = False, cached: bool = False, broker: Broker | None = None
) -> int:
    """How many tasks of the group finished, as Django Q counts: all of them, successes
    and failures; only the failures with ``failures=True``."""
    return group_count(_store(broker).part(cached), group_id, failures)


def delete_group(
    group_id: str, tasks: bool = False, cached: bool = False, broker: Broker | None = None
) -> int:
    """Remove a group label from its tasks, or delete them with ``tasks=True``; return how many.

    The group starts afresh: its total in every view, and a progress panel's default
    total, count only the tasks put in it from now on (so a notebook that clears its
    group and fills it again, run twice in one kernel, does not wait for the first run's
    tasks).
    """
    broker = broker or get_broker()
    deleted = _store(broker).part(cached).delete_group(group_id, tasks)  # checks group_id
    broker.forget_group(group_id)
    memo = sent(broker.directory)
    memo.enqueued.pop(group_id, None)
    memo.unsaved_groups.discard(group_id)
    return deleted


def delete_cached(task_id: str, broker: Broker | None = None) -> bool:
    """Delete a task from the cached part of the store; return whether it was there."""
    return _store(broker).cached.delete(task_id)


def flush(broker: Broker | None = None) -> None:
    """Wait until every task this process enqueued is written to the queue on disk.

    ``async_task`` writes behind, in batches, usually within a millisecond; call this
    before the process ends abruptly on purpose. Raises StoreError if the store cannot
    take them (disk full, damaged); they are kept and written again on the next call.
    """
    (broker or get_broker()).flush()


def queue_size(broker: Broker | None = None) -> int:
    """How many tasks wait in the queue (not counting those being run)."""
    return (broker or get_broker()).size()


__all__ = [
    "result",
    "fetch",
    "result_group",
    "fetch_group",
    "count_group",
    "delete_group",
    "delete_cached",
    "queue_size",
    "flush",
]
