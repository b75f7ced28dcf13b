"""The live rows of running tasks, in the store's ``state`` part.

A task that runs for a while has a row keyed by its id: its worker's pid, when it
started, its last ``report`` and its output so far. The worker rewrites it while it
changes, and at least every REFRESH seconds (``nbqueue.worker.capture``); the cluster
removes it once the task's outcome is stored; a row of a worker that died expires after
TTL. ``nbqueue.status``, ``output`` and the panels read it from any process.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from nbqueue.disk.directory import heartbeats
from nbqueue.disk.storage import checked_get, process_alive

REFRESH = 10.0  # seconds between two writes of a live row that did not change
TTL = 30.0  # seconds a live row outlives its last write
PREFIX = "live:"  # key prefix of live rows in the state part


def _state(directory: str) -> Any:
    """The ``state`` part of the store at ``directory``, shared in this process."""
    return heartbeats(directory).state


def write(directory: str, task_id: str, row: dict[str, Any]) -> None:
    """Write the live row of a running task (its worker, while the task runs)."""
    _state(directory).set(PREFIX + task_id, row, expire=TTL, retry=True)


def read(directory: str, task_id: str, fresh: bool = True) -> dict[str, Any] | None:
    """The live row of a running task, if it has one; if ``fresh``, only one written by
    a worker that is still alive, within the time it is rewritten in."""
    row = checked_get(_state(directory), PREFIX + task_id, None, "a live row")
    if not isinstance(row, dict):
        return None
    if not fresh:
        return row
    now = datetime.now(timezone.utc).timestamp()
    if now - row.get("updated", 0) > 1.5 * REFRESH or not process_alive(row["pid"]):
        return None
    return row


def forget(directory: str, task_ids: Iterable[str]) -> None:
    """Remove the live rows of tasks whose outcome is stored (the cluster's writer)."""
    state = _state(directory)
    for task_id in task_ids:
        state.delete(PREFIX + task_id, retry=True)


def task_ids(directory: str) -> list[str]:
    """The ids of the tasks that have a live row (fresh or not)."""
    keys = _state(directory).iterkeys()
    return [str(key)[len(PREFIX) :] for key in keys if str(key).startswith(PREFIX)]
