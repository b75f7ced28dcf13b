"""Control over tasks already sent, from any process: cancel them, run failures again.

``cancel`` takes a queued task out of the queue and stores its outcome, a Failure
saying it was cancelled, at once (its hook runs here). A task a cluster holds a lease
on is left to that cluster, through a cancel request in the queue: it never starts it,
or stops it within about a second if it runs (see ``nbqueue.cluster.cancels``). Either
way the task is never delivered again.

``retry`` delivers a failed task again under its own id: its failure is removed, its
``attempt_count`` goes on growing, and its new outcome takes the failure's place, so a
group keeps one outcome per task. The cluster keeps each failure's signed package for
this.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable

from nbqueue import conf
from nbqueue.disk import blobs, chains, waiting
from nbqueue.disk.blobs import Blob
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store
from nbqueue.disk.names import batch_of
from nbqueue.disk.records import (
    Cause,
    Header,
    Record,
    decode_header,
    encode_header,
    failure,
    is_cancelled,
    make_record,
    tallies,
)
from nbqueue.disk.store import Part, Store
from nbqueue.errors import ConfigurationError, TaskStillRunning
from nbqueue.models import Task
from nbqueue.worker.callables import find_hook, run_hook

log = logging.getLogger(__name__)

CANCELLED = "TaskCancelled: the task was cancelled with nbqueue.cancel before it started"
CANCEL_WAIT = 5000  # ms cancel waits for a cluster to store the outcome of a leased task
_FEW = 16  # ids few enough to look for as bytes before unpickling a package


def _check(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")


def cancel(task_id: str, broker: Broker | None = None) -> bool:
    """Cancel a task that has not finished; return whether it was cancelled.

    A queued task (or one leased but not started) never runs; a running one is stopped
    within about a second; its outcome is a Failure saying it was cancelled, and its hook
    runs. False for a task that already finished, or that no store queue holds.
    """
    _check("task_id", task_id)
    return cancel_tasks([task_id], broker) == 1


def cancel_group(group: str, broker: Broker | None = None) -> int:
    """Cancel every task of ``group`` that has not finished; return how many."""
    _check("group", group)
    return _cancel(broker or get_broker(), lambda header: header.group == group, None)


def cancel_tasks(task_ids: Iterable[str], broker: Broker | None = None) -> int:
    """Cancel the tasks of ``task_ids`` (uuids or names) that have not finished; return
    how many."""
    broker = broker or get_broker()
    store = get_store(broker.directory)
    wanted = {
        task_id
        for task_id in task_ids
        if store.saved.get(task_id) is None and store.cached.get(task_id) is None
    }
    items = {task_id for task_id in wanted if batch_of(task_id) is not None}
    wanted -= items
    cancelled = _cancel_items(broker, items) if items else 0
    if not wanted:
        return cancelled
    needles = [task_id.encode() for task_id in wanted] if len(wanted) <= _FEW else None
    match = lambda header: header.id in wanted or header.name in wanted  # noqa: E731
    return cancelled + _cancel(broker, match, needles)


def _cancel_items(broker: Broker, item_ids: set[str]) -> int:
    """Cancel items of batches (``map``, ``async_iter``): the cluster running (or about
    to run) each batch skips them, or stops the one it runs."""
    store = get_store(broker.directory)
    batches: dict[str, list[str]] = {}
    for task_id in item_ids:
        where = batch_of(task_id)
        assert where is not None
        batches.setdefault(where[0], []).append(task_id)
    requested = broker.request_cancels(batches)
    broker.notify_cancels()
    if not requested:
        return 0

    def outcome(task_id: str) -> Record | None:
        return store.saved.get(task_id) or store.cached.get(task_id)

    store.wait(lambda: all(outcome(i) for i in requested), CANCEL_WAIT)
    return sum(1 for task_id in requested if _cancelled(outcome(task_id)))


def _cancel(broker: Broker, match: Callable[[Header], bool], needles: list[bytes] | None) -> int:
    store = get_store(broker.directory)
    broker.flush()  # this process's tasks are in the queue
    asked = time.time()
    removed, leased = broker.cancel(match, needles)
    removed += [(header, 0, package) for header, package in waiting.take_matching(broker, match)]
    finished = [h.id for h in leased if _finished(store, h, asked)]
    if finished:  # stored, their leases not yet acknowledged: nothing to cancel
        broker.forget_cancels(finished)
        leased = [h for h in leased if h.id not in finished]
    broker.notify_cancels()
    records = []
    for header, attempts, package in removed:
        record = make_record(header, failure(header.id, CANCELLED, Cause.CANCELLED), attempts)
        record["package"] = package
        records.append((header, record))
    store.save([record for _, record in records], conf.settings().save_limit)
    for header, record in records:
        chains.go_on(broker, store, header, record, conf.settings().save_limit)
        _run_hook(header, record, store)
    if leased:  # its cluster stores the outcome once the run ended: wait for it, so that
        # result() shows it and a run that finished before the cancel reached it is not
        # counted (one still being stopped is)
        store.wait(lambda: all(store.part(bool(h.cached)).get(h.id) for h in leased), CANCEL_WAIT)
    return sum(max(h.items, 1) for h, _, _ in removed) + sum(
        _cancelled_count(h, store.part(bool(h.cached)).get(h.id)) for h in leased
    )


def _cancelled(record: Record | None) -> bool:
    """Whether a leased task's outcome says it was cancelled (None: not stored yet)."""
    return record is None or is_cancelled(record)


def _cancelled_count(header: Header, record: Record | None) -> int:
    """How many tasks a leased task's outcome says were cancelled: it, or of a batch, its
    items (None: not stored yet, all of them)."""
    if record is None or not header.items:
        return int(_cancelled(record))
    return sum(n for (_, cancelled), n in tallies(record).items() if cancelled)


def _finished(store: Store, header: Header, asked: float) -> bool:
    """Whether a leased task has an outcome from before the cancel was ``asked`` (its
    cancel, stored by a cluster quicker than this check, does not count)."""
    record = store.part(bool(header.cached)).get(header.id)
    return record is not None and (record["stopped"] < asked or not is_cancelled(record))


def _run_hook(header: Header, record: Record, store: Store) -> None:
    try:
        hook = find_hook(header)
    except Exception as exc:
        log.error("hook of cancelled task %s cannot be loaded: %s", header.name, exc)
        return
    if hook is not None:
        run_hook(hook, Task(record, store, bool(header.cached)))


def retry(task_id: str, cached: bool = False, broker: Broker | None = None) -> bool:
    """Deliver a failed task again under its own id; return whether it was a failure
    that can run again. Its failure is removed until its new outcome is stored."""
    _check("task_id", task_id)
    broker = broker or get_broker()
    part = get_store(broker.directory).part(cached)
    record = part.get(task_id)
    if record is None and task_id in broker.cancel_requests():
        record = _cancelled_outcome(broker, part, task_id)
    return record is not None and _retry(broker, [record], cached) == 1


def _cancelled_outcome(broker: Broker, part: Part, task_id: str) -> Record:
    """The outcome of a task cancelled while it ran, once its run has stopped: a retry
    before then would run it beside that run. Raises TaskStillRunning past CANCEL_WAIT."""
    store = get_store(broker.directory)
    store.wait(lambda: part.get(task_id) is not None, CANCEL_WAIT)
    record = part.get(task_id)
    if record is None:
        raise TaskStillRunning(
            f"task {task_id} was cancelled, but the cluster running it has not stopped it "
            f"yet (its outcome is not stored after {CANCEL_WAIT / 1000:g} s); retry it once "
            "result() or status() shows it cancelled"
        )
    return record


def retry_group(group: str, cached: bool = False, broker: Broker | None = None) -> int:
    """Deliver every failed task of ``group`` again; return how many."""
    _check("group", group)
    broker = broker or get_broker()
    records = get_store(broker.directory).part(cached).group_records(group, failures=True)
    return _retry(broker, records, cached)


def _retry(broker: Broker, records: list[Record], cached: bool) -> int:
    """Enqueue the failures among ``records`` again, with their attempt counts."""
    settings = conf.settings()
    again: list[tuple[int, bytes]] = []
    failed = []
    headers = []
    for record in records:
        package = record.get("package")
        if record["success"] or not package:
            continue  # a success, or a failure stored without its package (nbqueue 0.1)
        header = decode_header(broker.key, package)
        if "batch" in record and type(header.args) is not Blob:
            # an item of a batch: sent again alone, under its own id (its outcome goes
            # back into its batch's record); one whose arguments are a file (alone in its
            # batch) is sent again as that batch
            header = header._replace(
                id=record["id"], name=record["name"], args=record["args"], items=0
            )
        limit = header.max_attempts
        if limit is None:
            limit = settings.max_attempts
        if limit:  # its own budget of attempts again, counted on from where it stopped
            header = header._replace(max_attempts=record["attempt_count"] + limit)
        header = header._replace(sent=time.time())  # its wait in the queue counts from now
        again.append((record["attempt_count"], encode_header(broker.key, header)))
        failed.append(record)
        headers.append(header)
    if not again:
        return 0
    store = get_store(broker.directory)
    part = store.part(cached)
    # From its failure's removal to its new delivery in the queue, a task's argument file
    # is named by neither: a pin (a link of its own) keeps a cluster's start-up sweep
    # from taking it meanwhile.
    pins = [blobs.pin(header.args) for header in headers if type(header.args) is Blob]
    try:
        claimed = [i for i, record in enumerate(failed) if part.delete_outcome(record)]
        if not claimed:  # retried meanwhile by another caller
            return 0
        try:
            broker.forget_cancels([failed[i]["id"] for i in claimed])
            waits = {
                i
                for i in claimed
                if headers[i].after and not waiting.results_there(broker, store, headers[i])
            }
            for i in waits:  # what it takes a result of runs again too: it waits for that
                broker.wait(headers[i].id, headers[i].after, again[i][1], None)
            broker.enqueue_again([again[i] for i in claimed if i not in waits])
        except BaseException:
            store.save([failed[i] for i in claimed])  # not sent: the failures stay
            raise
    finally:
        for pin in pins:
            blobs.unpin(pin)
    panels = sys.modules.get("nbqueue.display.group_panel")
    if panels is not None:  # panels drawn complete in this process show the retries
        for group in {failed[i]["group"] for i in claimed} - {None}:
            panels.reopen(broker.directory, group)
    return len(claimed)


__all__ = ["cancel", "cancel_group", "cancel_tasks", "retry", "retry_group"]
