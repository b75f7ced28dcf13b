"""Callables given by the user: a task's function and its hook.

One place for what they are and how they travel: a dotted path resolved to the
callable it names (in a worker, and wherever a hook runs), a callable checked and named
at the call, the dotted path a top-level function can travel by instead of its pickle,
and a task's hook found and called once its outcome is stored. Imported by worker
processes, so it imports nothing heavy.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle

from nbqueue.disk.records import Header
from nbqueue.errors import TaskFunctionError

log = logging.getLogger(__name__)

_resolved: dict[str, Callable[..., Any]] = {}


def resolve(path: str) -> Callable[..., Any]:
    """The callable named by a dotted path like ``"math.copysign"``.

    Raises TaskFunctionError (an ImportError) saying what did not resolve.
    """
    func = _resolved.get(path)
    if func is not None:
        return func
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        raise TaskFunctionError(f"{path!r} is not a dotted path like 'package.module.function'")
    error: Exception | None = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if error is None:
                error = exc
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            raise TaskFunctionError(f"cannot resolve {path!r}: {exc}") from None
        if not callable(obj):
            raise TaskFunctionError(
                f"{path!r} resolves to a {type(obj).__name__}, which is not callable"
            )
        _resolved[path] = obj
        return obj
    raise TaskFunctionError(f"cannot resolve {path!r}: {error}")


def callable_name(func: Callable[..., Any]) -> str:
    """A callable's display name: its module and qualified name."""
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__name__
    return f"{module}.{qualname}"


def check_callable(what: str, value: Any, strict: bool = True) -> tuple[str, str | None]:
    """(display name, dotted path or None) of a function or hook given by the user.

    ``strict=False`` (a ``sync=True`` task function) leaves an unresolvable dotted path
    to the run, which stores it as a Failure, as the reference text shows.
    """
    if isinstance(value, str):
        if strict:
            resolve(value)  # raises TaskFunctionError at the call, not later in a worker
        return value, value
    if callable(value):
        return callable_name(value), None
    raise TypeError(
        f"{what} must be a callable or a dotted path string like "
        f"'math.floor', got {type(value).__name__}"
    )


def dotted_path(func: Any) -> str | None:
    """The dotted path of a top-level function of an importable module, which cloudpickle
    would pickle by reference anyway: shipping the path saves cloudpickle's work on every
    call. None for any other callable."""
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None)
    if (
        not isinstance(module, str)
        or not isinstance(name, str)
        or module == "__main__"
        or not name.isidentifier()
        or getattr(sys.modules.get(module), name, None) is not func
    ):
        return None
    by_value = cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES  # register_pickle_by_value
    if any(module == m or module.startswith(m + ".") for m in by_value):
        return None
    return f"{module}.{name}"


# -- hooks: called, in the process that stores a task's outcome, with the finished Task.
# A hook is a dotted path, an object pickled with the package (for a cluster in another
# process), or, in the process that enqueued it, that very object.

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
