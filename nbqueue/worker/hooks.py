"""Hooks: what is called, in the process that runs a task's outcome, with the finished
Task. A hook is a dotted path, an object pickled with the package (for a cluster in
another process), or, in the process that enqueued it, that very object."""

from __future__ import annotations

import logging
from typing import Any

import cloudpickle

from nbqueue.disk.records import Header
from nbqueue.worker import resolve

log = logging.getLogger(__name__)

local_hooks: dict[str, Any] = {}  # task id -> hook object given in this process


def keep_local_hook(task_id: str, hook: Any) -> None:
    """Keep a hook given as an object, for a cluster of this process to call that very
    object (task ids are uuid4: one dict serves every store directory)."""
    local_hooks[task_id] = hook


def forget_local_hook(task_id: str) -> None:
    """Drop the local hook of a task whose hook will not run."""
    local_hooks.pop(task_id, None)


def find_hook(header: Header) -> Any:
    """The hook of a task as something to call, or None.

    A hook given as an object in this process is returned as that very object (and
    forgotten: hooks run once, for the task's final outcome). Raises what resolving a
    dotted path or unpickling raises.
    """
    hook = local_hooks.pop(header.id, None)
    if hook is not None:
        return hook
    if header.hook_ref is not None:
        return resolve(header.hook_ref)
    if header.hook_bytes is not None:
        return cloudpickle.loads(header.hook_bytes)
    return None


def run_hook(hook: Any, task: Any, logger: logging.Logger | None = None) -> None:
    """Call a hook with the finished task; a failing hook is logged, never raised
    (``sys.exit()`` in a hook included: it must not stop the cluster)."""
    try:
        hook(task)
    except BaseException:  # noqa: BLE001
        (logger or log).exception(
            "hook %r of task %s (%s) raised; the task's outcome is stored all the same",
            getattr(hook, "__name__", hook),
            task.name,
            task.id,
        )
