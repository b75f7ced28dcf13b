"""What tasks are doing now, from any process: ``status``, ``output`` and live rows.

A task that runs for a while has a *live row* in the store's ``state`` part: its
worker's pid, when it started, its last ``report`` and its output so far, rewritten by
the worker (``nbqueue.worker.capture``) while they change. ``status`` puts it together with
the task's stored outcome, or where the queue holds it.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from nbqueue.disk import live_rows, waiting
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, heartbeats
from nbqueue.disk.names import batch_of, item_name
from nbqueue.disk.records import Header, Record, is_cancelled
from nbqueue.disk.store import check_name

STATES = ("queued", "running", "done", "failed", "cancelled", "unknown")


def _when(timestamp: float | None) -> datetime | None:
    return None if not timestamp else datetime.fromtimestamp(timestamp, timezone.utc)


def record_status(record: Record) -> dict[str, Any]:
    """``status`` of a finished task, from its record."""
    if record["success"]:
        state = "done"
    elif is_cancelled(record):
        state = "cancelled"
    else:
        state = "failed"
    return {
        "id": record["id"],
        "name": record["name"],
        "func": record["func"],
        "group": record["group"],
        "state": state,
        "progress": record.get("progress"),
        "attempt": record["attempt_count"],
        "started": _when(record.get("began")),
        "stopped": _when(record["stopped"]),
        "pid": record.get("pid") or None,
        "output": record.get("output", ""),
    }


def status(task_id: str, broker: Broker | None = None) -> dict[str, Any]:
    """What a task (by uuid or name) is doing now, as a dict:

    - ``state``: ``queued``, ``running`` (a cluster holds it: it runs, or is next in a
      worker), ``waiting`` (for other tasks' results: ``waiting_for`` lists the ids of
      those that have not succeeded yet), ``done``, ``failed``, ``cancelled`` or
      ``unknown`` (no task of that id or name is queued, running or stored in this store);
    - ``progress``: its last ``nbqueue.report`` as ``(done, total, message)``, or None;
    - ``attempt``: the delivery it is on (0 while queued for the first time);
    - ``started`` (UTC) and ``pid``: when and in which worker process its current or
      last attempt started, when known (a running task tells within about a second);
    - ``output``: what it wrote so far (stdout, stderr, warnings), the last 64 K
      characters;
    - and its ``id``, ``name``, ``func``, ``group`` and ``stopped``.
    """
    check_name("task id", task_id)
    broker = broker or get_broker()
    store = get_store(broker.directory)
    for cached in (False, True):
        record = store.part(cached).find(task_id)
        if record is not None:
            return record_status(record)
    of_batch = batch_of(task_id)
    if of_batch is not None:  # an item: where its batch is, and its own live row
        batch_id, index = of_batch
        batch = broker.locate(lambda h: h.id == batch_id, [batch_id.encode()])
        if batch is not None:
            state, header, attempt = batch
            item = header._replace(id=task_id, name=item_name(header.name, index))
            return _unfinished(broker.directory, state, item, attempt)
    found = broker.locate(lambda h: task_id in (h.id, h.name), [task_id.encode()])
    if found is None:
        waits = waiting.find(broker, task_id)
        if waits is not None:  # for other tasks' results
            header, after = waits
            ended = waiting.OK
            left = [i for i in after if waiting.verdict(broker, store, i) != ended]
            return {**_unfinished(broker.directory, "waiting", header, 0), "waiting_for": left}
        return {
            "id": None,
            "name": None,
            "func": None,
            "group": None,
            "state": "unknown",
            "progress": None,
            "attempt": None,
            "started": None,
            "stopped": None,
            "pid": None,
            "output": "",
        }
    where, header, attempt = found
    return _unfinished(broker.directory, where, header, attempt)


def _unfinished(directory: str, where: str, header: Header, attempt: int) -> dict[str, Any]:
    """``status`` of a task the queue holds (``where``: queued or running), with what
    its live row says, if it has one."""
    row = (live_rows.read(directory, header.id) if where == "running" else None) or {}
    return {
        "id": header.id,
        "name": header.name,
        "func": header.func,
        "group": header.group,
        "state": where,
        "progress": row.get("progress"),
        "attempt": attempt,
        "started": _when(row.get("started")),
        "stopped": None,
        "pid": row.get("pid"),
        "output": row.get("output", ""),
    }


def output(task_id: str, broker: Broker | None = None) -> str | None:
    """What a task (by uuid or name) wrote: so far, within about a second, while it runs;
    all of it (the last 64 K characters) once it has finished; "" while it is queued.
    None when no task of that id or name is queued, running or stored."""
    found = status(task_id, broker)
    return None if found["state"] == "unknown" else found["output"]


def _begun_here(directory: str) -> set[str]:
    """The tasks begun in the workers of this process's cluster on ``directory``, if it
    runs one: known now, where a heartbeat tells a second late."""
    serving = sys.modules.get("nbqueue.cluster.serving")
    cluster = serving.serving.get(directory) if serving is not None else None
    if cluster is None or not cluster.running:
        return set()
    return set(cluster.running_ids())


def running(group: str | None = None, broker: Broker | None = None) -> list[dict[str, Any]]:
    """The tasks a cluster holds now (of ``group``, or all), each as ``status`` gives
    it, oldest start first; ``started``, ``pid``, ``progress`` and ``output`` are known
    for those that have run about a second or more. ``leased`` is True for a task no
    worker has begun yet, as the clusters' last heartbeats tell (it waits for a worker)."""
    broker = broker or get_broker()
    held = broker.running(lambda h: group is None or h.group == group)
    tasks = [_unfinished(broker.directory, "running", header, attempt) for header, attempt in held]
    if tasks:
        begun = {
            task_id
            for info in heartbeats(broker.directory).clusters()
            for task_id in info.get("running_ids", ())
        }
        begun |= _begun_here(broker.directory)
        for task in tasks:
            task["leased"] = task["started"] is None and task["id"] not in begun
    never = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(tasks, key=lambda t: t["started"] or never)
