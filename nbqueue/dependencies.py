"""Tasks that wait for others: a task's result given as an argument of another.

A ``Result(task_id)``, a ``TaskFuture`` or an ``AsyncTask`` that has run, found at any
depth of a task's arguments while they are pickled for the queue (``packing``), is
pickled as a placeholder for that task's result and its id noted (``found``): the new
task's header lists them (``Header.after``), and it waits in the store until they have
all succeeded (``nbqueue.disk.waiting``). Where the task's arguments are loaded, in the
worker, each placeholder is read as the result it stands for. Pickled anywhere else, the
three are what they are.
"""

from __future__ import annotations

import threading
from typing import Any

from nbqueue.disk.shared import is_loading
from nbqueue.errors import ConfigurationError, DependencyFailed

_local = threading.local()


class Result:
    """Stands for the result of task ``task_id`` (a uuid) in the arguments of another
    task: that task waits for it, and gets its result in its place. If it fails or is
    cancelled, the task never runs: its outcome is a DependencyFailed failure."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: str) -> None:
        if not isinstance(task_id, str) or not task_id:
            raise ConfigurationError(f"Result takes a task id, got {task_id!r}")
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return placeholder(self.task_id) or (Result, (self.task_id,))

    def __eq__(self, other: object) -> bool:
        return type(other) is Result and other.task_id == self.task_id

    def __hash__(self) -> int:
        return hash((Result, self.task_id))

    def __repr__(self) -> str:
        return f"Result({self.task_id!r})"


class packing:  # noqa: N801 - used as a function: ``with packing(directory):``
    """While a task's arguments are pickled for the store at ``directory``, the ids of
    the tasks whose results they take are noted as they are found (``found``)."""

    __slots__ = ("directory",)

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __enter__(self) -> None:
        _local.found, _local.directory = [], self.directory

    def __exit__(self, *exc_info: object) -> None:
        _local.found = None


def found() -> tuple[str, ...]:
    """The dependencies found since the last call (of one task, or one batch), in order,
    once each; they are forgotten."""
    ids = getattr(_local, "found", None)
    if not ids:
        return ()
    taken = tuple(dict.fromkeys(ids))
    ids.clear()
    return taken


def placeholder(task_id: str | None, what: str = "") -> tuple[Any, tuple[Any, ...]] | None:
    """The pickled form of a dependency on ``task_id`` while arguments are packed, or
    None anywhere else. ``what`` names an object with no task yet (an AsyncTask not run)."""
    ids = getattr(_local, "found", None)
    if ids is None:
        return None
    if task_id is None:
        raise ConfigurationError(
            f"{what} was given as an argument of a task, but it has not run yet: call "
            "its run() first, so that the new task can wait for its result"
        )
    ids.append(task_id)
    return _result_of, (task_id, _local.directory)


def _result_of(task_id: str, directory: str) -> Any:
    """The result of ``task_id`` for the task whose arguments are loaded; a ``Result``
    anywhere else."""
    if not is_loading():
        return Result(task_id)
    from nbqueue.disk.directory import get_store
    from nbqueue.models import Task

    store = get_store(directory)
    for cached in (False, True):
        record = store.part(cached).get(task_id)
        if record is not None:
            task = Task(record, store, cached)
            if not task.success:
                raise DependencyFailed(
                    f"task {task.name} ({task_id}), whose result this task takes, failed: "
                    f"{str(task.result).splitlines()[0] if task.result else ''}"
                )
            return task.result
    raise DependencyFailed(
        f"task {task_id}, whose result this task takes, has no outcome in the store at "
        f"{directory}: it has not finished, was not saved (save=False), or was deleted"
    )
