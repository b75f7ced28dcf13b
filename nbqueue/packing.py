"""What a task becomes before it is queued: its options checked, its function and
arguments pickled, and its signed ``Header``.

Every ``async_task`` goes through here, so only the options a call was given are
checked, plain arguments are pickled with ``pickle`` (cloudpickle's hooks cost many
times more), and a function of an importable module travels by its dotted path.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from nbqueue import conf
from nbqueue.disk import blobs
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, sent
from nbqueue.disk.names import new_task_id
from nbqueue.disk.records import Header, encode_header
from nbqueue.disk.storage import writing
from nbqueue.errors import ConfigurationError, PackingError
from nbqueue.worker import resolve
from nbqueue.worker.hooks import keep_local_hook
from nbqueue.worker.tracebacks import WithSources

OPTIONS = (
    "hook",
    "group",
    "save",
    "timeout",
    "ack_failure",
    "sync",
    "cached",
    "broker",
    "task_name",
    "max_attempts",
    "reuse",
    "q_options",
)


def callable_name(func: Callable[..., Any]) -> str:
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


def _pickle(what: str, value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise PackingError(
            f"{what} cannot be pickled to reach the worker processes: "
            f"{type(exc).__name__}: {exc}. Pass plain data (or a path to a "
            "file) instead, or create the object inside the task"
        ) from exc


PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))


def pickle_arguments(args: tuple, kwargs: dict) -> bytes:
    # Plain values pickle the same either way, many times faster without cloudpickle's hooks;
    # anything else may be a class of the notebook's __main__, which only cloudpickle
    # ships by value.
    if all(type(a) in PLAIN for a in args) and all(type(v) in PLAIN for v in kwargs.values()):
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        for i, arg in enumerate(args):
            _pickle(f"positional argument {i} ({type(arg).__name__})", arg)
        for name, arg in kwargs.items():
            _pickle(f"keyword argument {name!r} ({type(arg).__name__})", arg)
        raise


def _to_file(broker: Broker, task_id: str, data: Any) -> blobs.Blob:
    """Write large arguments to the store: a failed write is a StoreError at the call,
    saying why (a full disk, a read-only store), and nothing is queued; InsecureStoreError
    if another user put a directory of theirs in the store's place."""
    broker.place.check()
    with writing(os.path.join(broker.directory, blobs.ARGS_DIR)):
        return blobs.arguments(broker.directory, task_id, data, broker.key)


def _framed(args: tuple, kwargs: dict) -> list[Any]:
    """Large arguments pickled with their buffers out of band (``blobs.frames``)."""
    try:
        return blobs.frames((args, kwargs), cloudpickle.dumps)
    except Exception:
        pickle_arguments(args, kwargs)  # raises PackingError naming the argument
        raise


def split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the options out of ``kwargs``; q_options, when given, is the only source."""
    if "q_options" in kwargs:
        options = kwargs.pop("q_options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigurationError(
                f"q_options must be a dict of options, got {type(options).__name__}"
            )
        unknown = sorted(set(options) - set(OPTIONS[:-1]))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) in q_options: {', '.join(unknown)}; "
                f"the options are: {', '.join(OPTIONS[:-1])}"
            )
        return dict(options)
    return {name: kwargs.pop(name) for name in OPTIONS if name in kwargs}


def _check_group(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"option 'group' must be a string, got {value!r}")


def _check_task_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"option 'task_name' must be a non-empty string, got {value!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"option {name!r} must be True, False or None, got {value!r}")


def _check_broker(name: str, value: Any) -> None:
    if not isinstance(value, Broker):
        raise ConfigurationError(
            f"option 'broker' must come from get_broker(), got {type(value).__name__}"
        )


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "group": _check_group,
    "task_name": _check_task_name,
    "save": _check_flag,
    "ack_failure": _check_flag,
    "sync": _check_flag,
    "timeout": conf.check_timeout,
    "cached": conf.check_cached,
    "max_attempts": conf.check_max_attempts,
    "broker": _check_broker,
    "hook": lambda name, value: None,
    "reuse": _check_flag,
}


def checked_options(options: dict[str, Any], settings: conf.Settings) -> dict[str, Any]:
    """Validate per-task options (a fresh dict, completed in place) and fill in defaults.
    Only the options given are checked: async_task's hot path."""
    for name, value in options.items():
        if value is not None:
            _CHECKS[name](name, value)
    if options.get("cached") is None:
        options["cached"] = settings.cached
    if options.get("sync") is None:
        options["sync"] = settings.sync
    if settings.reuse and options.get("reuse") is None:
        options["reuse"] = True
    if options.get("broker") is None:
        options["broker"] = get_broker()
    return options


def function_of(func: Any, options: dict[str, Any]) -> tuple[str, str | None, bytes | None]:
    """(display name, dotted path, pickled function) of a task function, checked."""
    func_name, func_ref = check_callable("the task function", func, strict=not options["sync"])
    if func_ref is None:
        func_ref = _reference(func)
    if func_ref is not None:
        return func_name, func_ref, None
    # with where its code comes from, for tracebacks with file names and cell lines
    return func_name, None, _pickle("the task function", WithSources(func))


def _reference(func: Any) -> str | None:
    """The dotted path of a top-level function of an importable module, which cloudpickle
    would pickle by reference anyway: shipping the path saves cloudpickle's work on every
    call."""
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


def make_package(
    func: Any,
    args: tuple,
    kwargs: dict,
    options: dict[str, Any],
    broker: Broker,
    function: tuple[str, str | None, bytes | None] | None = None,
    arguments: bytes | None = None,
) -> tuple[Header, bytes]:
    """The header and signed package of one task (``function``: ``function_of``'s answer,
    when many tasks share the function, as in ``async_iter``; ``arguments``: the pickled
    arguments, when made already)."""
    func_name, func_ref, func_bytes = function or function_of(func, options)
    hook = options.get("hook")
    hook_name = hook_ref = hook_bytes = None
    if hook is not None:
        hook_name, hook_ref = check_callable("option 'hook'", hook)
    task_id, name = new_task_id()
    queued = not options["sync"]  # large arguments of a queued task: a file, see ``blobs``
    packed: bytes | blobs.Blob  # the arguments, or the file they were written to
    if queued and arguments is None and blobs.large_call(args, kwargs):
        packed = _to_file(broker, task_id, _framed(args, kwargs))
    else:
        if arguments is None:
            arguments = pickle_arguments(args, kwargs)
        packed = arguments
        if queued and len(arguments) >= blobs.LARGE:
            packed = _to_file(broker, task_id, arguments)
    if hook is not None and hook_ref is None:
        # A cluster of this process calls this very object, whenever it starts; a copy
        # goes with the package for a cluster in another process.
        keep_local_hook(task_id, hook)
        if not (broker.has_local_consumer or options["sync"]):
            hook_bytes = _pickle("option 'hook'", hook)
    if options.get("save") is False or options["cached"]:
        sent(broker.directory).remember(task_id, "cached" if options["cached"] else "unsaved")
    header = Header(
        task_id,
        options.get("task_name") or name,
        func_name,
        func_ref,
        func_bytes,
        packed,
        hook_name,
        hook_ref,
        hook_bytes,
        options.get("group"),
        options.get("save"),
        options["cached"],
        options.get("timeout"),
        options.get("ack_failure"),
        options.get("max_attempts"),
        time.time(),
        options.get("iter"),
    )
    return header, encode_header(broker.key, header)
