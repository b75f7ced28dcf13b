"""Tasks that wait in the store for others to succeed (``nbqueue.dependencies``).

A task whose header lists tasks whose results it takes (``Header.after``) is queued
only once they have all succeeded. Until then its package waits in a row of the queue's
store (``Broker.wait``): the wait outlives the kernel that sent it and holds no worker.
Whoever sees its dependencies end moves it on (``settle``): a cluster's monitor once a
second, and its writer as soon as it stores an outcome one of them waits for. Once all
succeeded, it is queued; if one failed, was cancelled or is gone, it never runs, and its
outcome is stored as a Failure saying so (``Cause.DEPENDENCY``). A row is moved by one
transaction that takes it only if it is still there, so no two clusters queue it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container

from nbqueue.disk import chains
from nbqueue.disk.broker import Broker
from nbqueue.disk.names import task_of
from nbqueue.disk.records import (
    Cause,
    Header,
    Record,
    decode_header,
    failure,
    is_cancelled,
    make_record,
)
from nbqueue.disk.store import Store

OK, PENDING = "ok", "pending"  # a dependency's verdict, or else why it gives no result


def send(broker: Broker, store: Store, header: Header, package: bytes) -> None:
    """Send a task that takes other tasks' results: queued at once if they all
    succeeded, else kept waiting."""
    if results_there(broker, store, header):
        broker.enqueue(package, header.group)
    else:
        broker.wait(header.id, header.after, package, header.group)


def results_there(broker: Broker, store: Store, header: Header) -> bool:
    """Whether every task whose result ``header``'s task takes has succeeded."""
    return all(verdict(broker, store, task_id) == OK for task_id in header.after)


def _stored(store: Store, task_id: str) -> Record | None:
    return store.part(False).get(task_id) or store.part(True).get(task_id)


def verdict(
    broker: Broker,
    store: Store,
    task_id: str,
    waiting: Container[str] = (),
    look_for_lost: bool = False,
) -> str:
    """OK (it succeeded), PENDING (no outcome yet), or why it will give no result: it
    failed or was cancelled, or, with ``look_for_lost``, it has no outcome and is neither
    queued, running nor waiting itself (a look through the whole queue). ``waiting``:
    the waiting tasks, when known."""
    record = _stored(store, task_id)
    if record is None:
        if not look_for_lost or task_id in waiting or broker.is_waiting(task_id):
            return PENDING
        if broker.holds([task_of(task_id)]):
            return PENDING
        record = _stored(store, task_id)  # stored, and its lease ended, meanwhile
    if record is None:
        return (
            f"task {task_id}, whose result it takes, has no outcome in this store and "
            "none to come (it was not saved, save=False; was deleted; or is not a task "
            "of this store), so it never ran"
        )
    if record["success"]:
        return OK
    name = f"task {record['name']} ({task_id}), whose result it takes,"
    if is_cancelled(record):
        return f"{name} was cancelled, so it never ran"
    error = str(record["result"]).split("\n", 1)[0]
    return f"{name} failed, so it never ran: {error}"


def settle(
    broker: Broker,
    store: Store,
    save_limit: int,
    only: Collection[str] | None = None,
    look_for_lost: bool = False,
) -> tuple[list[tuple[Header, Record]], dict[str, tuple[str, ...]]]:
    """Move on the waiting tasks (of ``only``, if given) whose dependencies have ended,
    and then those that waited for the ones that failed here; ``look_for_lost``: also
    those waiting for a task that will never have an outcome (see ``verdict``). Return
    the failures stored (for their hooks), and the tasks still waiting, with what they
    wait for."""
    rows = broker.waiting()
    verdicts: dict[str, str] = {}
    still = {task_id: after for task_id, (after, _) in rows.items()}
    failed: list[tuple[Header, Record]] = []
    look = set(still) if only is None else set(only) & set(still)
    while look:
        ready, failing = [], {}
        for task_id in look:
            why = _why_not(broker, store, still[task_id], verdicts, rows, look_for_lost)
            if why is None:
                ready.append(task_id)
            elif why != PENDING:
                failing[task_id] = why
        if ready:
            broker.take_waiting(ready, send=True)
        for task_id in ready:
            del still[task_id]
        if not failing:
            break
        newly = []
        for task_id, package in broker.take_waiting(failing, send=False).items():
            header = decode_header(broker.key, package)
            why = f"DependencyFailed: {failing[task_id]}"
            record = make_record(header, failure(header.id, why, Cause.DEPENDENCY), 0)
            record["package"] = package
            newly.append((header, record))
        store.save([record for _, record in newly], save_limit)
        for header, record in newly:
            chains.go_on(broker, store, header, record, save_limit)
        failed += newly
        for task_id in failing:
            still.pop(task_id, None)
        gone = {header.id for header, _ in newly}  # what waited for them goes too
        for task_id in gone:
            verdicts.pop(task_id, None)
        look = {task_id for task_id, after in still.items() if gone.intersection(after)}
    return failed, still


def _why_not(
    broker: Broker,
    store: Store,
    after: tuple[str, ...],
    verdicts: dict[str, str],
    waiting: Container[str],
    look_for_lost: bool,
) -> str | None:
    """None if every task of ``after`` succeeded, PENDING if one has not ended, else why
    one will give no result."""
    pending = False
    for dependency in after:
        found = verdicts.get(dependency)
        if found is None:
            found = verdicts[dependency] = verdict(
                broker, store, dependency, waiting, look_for_lost
            )
        if found == PENDING:
            pending = True
        elif found != OK:
            return found
    return PENDING if pending else None


def take_matching(broker: Broker, match: Callable[[Header], bool]) -> list[tuple[Header, bytes]]:
    """Take the waiting tasks whose header ``match`` accepts out of their rows (``cancel``):
    their headers and packages."""
    rows = broker.waiting()
    headers = {
        task_id: decode_header(broker.key, package) for task_id, (_, package) in rows.items()
    }
    chosen = [task_id for task_id, header in headers.items() if match(header)]
    if not chosen:
        return []
    return [
        (headers[task_id], package)
        for task_id, package in broker.take_waiting(chosen, send=False).items()
    ]


def find(broker: Broker, task_id: str) -> tuple[Header, tuple[str, ...]] | None:
    """The header of the waiting task of id or name ``task_id``, and what it waits for."""
    row = broker.waiting_row(task_id)
    if row is not None:
        return decode_header(broker.key, row[1]), row[0]
    for after, package in broker.waiting().values():
        header = decode_header(broker.key, package)
        if header.name == task_id:
            return header, after
    return None
