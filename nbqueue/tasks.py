"""The Tasks API's sending side: put work in the queue, from any process.

``async_task`` checks its input, pickles and signs one package and pushes it; it
never imports the cluster. ``sync=True`` runs the task here instead, through the
steps a cluster takes. Reading outcomes back (``result``, ``fetch``, groups) is
``results``'s part.
"""

from __future__ import annotations

import itertools
import pickle
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Iterable

import cloudpickle

from . import calls, conf
from .broker import Broker, get_broker
from .errors import ConfigurationError, NoClusterWarning, PackingError
from .models import Task
from .records import Header, encode_header, make_record
from .hooks import find_hook, forget_local_hook, keep_local_hook, run_hook
from .names import new_task_id
from .results import fetch, fetch_group, no_cluster_advice, result, result_group
from .sent import Sent, sent
from .store import get_store
from .worker import execute, resolve

OPTIONS = ("hook", "group", "save", "timeout", "ack_failure", "sync", "cached", "broker",
           "task_name", "max_attempts", "reuse", "q_options")


def _callable_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or type(func).__name__
    return f"{module}.{qualname}"


def _check_callable(what: str, value: Any, strict: bool = True) -> tuple[str, str | None]:
    """(display name, dotted path or None) of a function or hook given by the user.

    ``strict=False`` (a ``sync=True`` task function) leaves an unresolvable dotted path
    to the run, which stores it as a Failure, as the reference text shows.
    """
    if isinstance(value, str):
        if strict:
            resolve(value)  # raises TaskFunctionError at the call, not later in a worker
        return value, value
    if callable(value):
        return _callable_name(value), None
    raise TypeError(f"{what} must be a callable or a dotted path string like "
                    f"'math.floor', got {type(value).__name__}")


def _pickle(what: str, value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise PackingError(f"{what} cannot be pickled to reach the worker processes: "
                           f"{type(exc).__name__}: {exc}. Pass plain data (or a path to a "
                           "file) instead, or create the object inside the task") from exc


_PLAIN = frozenset((int, float, str, bytes, bool, type(None), complex))


def _pickle_arguments(args: tuple, kwargs: dict) -> bytes:
    # Plain values pickle the same either way, many times faster without cloudpickle's hooks;
    # anything else may be a class of the notebook's __main__, which only cloudpickle
    # ships by value.
    if all(type(a) in _PLAIN for a in args) and all(type(v) in _PLAIN for v in kwargs.values()):
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return cloudpickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        for i, arg in enumerate(args):
            _pickle(f"positional argument {i} ({type(arg).__name__})", arg)
        for name, arg in kwargs.items():
            _pickle(f"keyword argument {name!r} ({type(arg).__name__})", arg)
        raise


def _split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the options out of ``kwargs``; q_options, when given, is the only source."""
    if "q_options" in kwargs:
        options = kwargs.pop("q_options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ConfigurationError(f"q_options must be a dict of options, got "
                                     f"{type(options).__name__}")
        unknown = sorted(set(options) - set(OPTIONS[:-1]))
        if unknown:
            raise ConfigurationError(f"unknown option(s) in q_options: {', '.join(unknown)}; "
                                     f"the options are: {', '.join(OPTIONS[:-1])}")
        return dict(options)
    return {name: kwargs.pop(name) for name in OPTIONS if name in kwargs}


def _check_group(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(f"option 'group' must be a string, got {value!r}")


def _check_task_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"option 'task_name' must be a non-empty string, got "
                                 f"{value!r}")


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"option {name!r} must be True, False or None, got "
                                 f"{value!r}")


def _check_broker(name: str, value: Any) -> None:
    if not isinstance(value, Broker):
        raise ConfigurationError(f"option 'broker' must come from get_broker(), got "
                                 f"{type(value).__name__}")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "group": _check_group, "task_name": _check_task_name, "save": _check_flag,
    "ack_failure": _check_flag, "sync": _check_flag, "timeout": conf.check_timeout,
    "cached": conf.check_cached, "max_attempts": conf.check_max_attempts,
    "broker": _check_broker, "hook": lambda name, value: None, "reuse": _check_flag,
}


def _checked(options: dict[str, Any], settings: conf.Settings) -> dict[str, Any]:
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


def _function(func: Any, options: dict[str, Any]) -> tuple[str, str | None, bytes | None]:
    """(display name, dotted path, pickled function) of a task function, checked."""
    func_name, func_ref = _check_callable("the task function", func,
                                          strict=not options["sync"])
    if func_ref is None:
        func_ref = _reference(func)
    func_bytes = None if func_ref is not None else _pickle("the task function", func)
    return func_name, func_ref, func_bytes


def _reference(func: Any) -> str | None:
    """The dotted path of a top-level function of an importable module, which cloudpickle
    would pickle by reference anyway: shipping the path saves cloudpickle's work on every
    call."""
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None)
    if (not isinstance(module, str) or not isinstance(name, str) or module == "__main__"
            or not name.isidentifier()
            or getattr(sys.modules.get(module), name, None) is not func):
        return None
    by_value = cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES  # register_pickle_by_value
    if any(module == m or module.startswith(m + ".") for m in by_value):
        return None
    return f"{module}.{name}"


def _package(func: Any, args: tuple, kwargs: dict, options: dict[str, Any],
             broker: Broker, function: tuple[str, str | None, bytes | None] | None = None,
             arguments: bytes | None = None) -> tuple[Header, bytes]:
    """The header and signed package of one task (``function``: ``_function``'s answer,
    when many tasks share the function, as in ``async_iter``; ``arguments``: the pickled
    arguments, when made already)."""
    func_name, func_ref, func_bytes = function or _function(func, options)
    hook = options.get("hook")
    hook_name = hook_ref = hook_bytes = None
    if hook is not None:
        hook_name, hook_ref = _check_callable("option 'hook'", hook)
    task_id, name = new_task_id()
    if hook is not None and hook_ref is None:
        # A cluster of this process calls this very object, whenever it starts; a copy
        # goes with the package for a cluster in another process.
        keep_local_hook(task_id, hook)
        if not (broker.has_local_consumer or options["sync"]):
            hook_bytes = _pickle("option 'hook'", hook)
    if options.get("save") is False or options["cached"]:
        sent(broker.directory).remember(task_id, "cached" if options["cached"] else "unsaved")
    header = Header(
        task_id, options.get("task_name") or name, func_name, func_ref, func_bytes,
        _pickle_arguments(args, kwargs) if arguments is None else arguments, hook_name,
        hook_ref, hook_bytes, options.get("group"),
        options.get("save"), options["cached"], options.get("timeout"),
        options.get("ack_failure"), options.get("max_attempts"), time.time(), options.get("iter"))
    return header, encode_header(broker.key, header)


SERVE_CHECK = 5.0  # seconds between two checks that a cluster serves the store


def _warn_if_unserved(broker: Broker, memo: Sent) -> None:
    """Warn once that no cluster serves the store, and again after one was seen (a
    cluster stopped). Checks at most every SERVE_CHECK seconds, and at once after a
    cluster of this process stopped: a check reads the clusters' heartbeats, too slow
    for every call."""
    now = time.monotonic()
    if now < memo.serve_check_at and broker.departures == memo.departures_seen:
        return
    memo.serve_check_at = now + SERVE_CHECK
    memo.departures_seen = broker.departures
    advice = no_cluster_advice(broker)
    if advice is None:
        memo.warned_no_cluster = False
    elif not memo.warned_no_cluster:
        memo.warned_no_cluster = True
        warnings.warn(NoClusterWarning(f"this task waits in the queue: {advice}"),
                      stacklevel=3)


def _run_inline(header: Header, func: Any, broker: Broker,
                settings: conf.Settings) -> None:
    """``sync=True``: run the task here, through the same steps a cluster takes."""
    try:
        outcome = execute(header.item(header.timeout),
                          func=None if isinstance(func, str) else func, inline=True)
    except KeyboardInterrupt as exc:  # Ctrl-C in this process: a failure, then stop
        forget_local_hook(header.id)
        stopped = make_record(header, exc.outcome, attempt=1)  # type: ignore[attr-defined]
        get_store(broker.directory).save([stopped], settings.save_limit)
        raise
    record = make_record(header, outcome, attempt=1)
    store = get_store(broker.directory)
    store.save([record], settings.save_limit)
    try:
        hook = find_hook(header)
    except Exception as exc:
        import logging
        logging.getLogger("nbqueue").error("hook of task %s cannot be loaded: %s",
                                           header.id, exc)
        return
    if hook is not None:
        run_hook(hook, Task(record, store, bool(header.cached)))


def async_task(func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
    """Put a task in the queue and return its id at once.

    ``func`` is a callable (lambdas and notebook functions too) or a dotted path.
    Options (never passed to ``func``): ``hook, group, save, timeout, ack_failure, sync,
    cached, broker, task_name, max_attempts, reuse``, or all of them in one dict
    ``q_options``, which then is the only source of options. Every other keyword goes to
    ``func``. ``reuse=True`` returns the id of the same call's task instead when it
    succeeded or is still queued or running (``nbqueue.calls`` says what is the same).

    Raises TaskFunctionError for a dotted path that does not resolve, PackingError for
    arguments that cannot be pickled, ConfigurationError for a bad option, at the call.
    """
    options = _checked(_split_options(kwargs), conf.settings())
    broker = options["broker"]
    if options.get("reuse"):
        found = _reused_or_packed(func, args, kwargs, options, broker)
        if isinstance(found, str):
            return found
        header, package = found
    else:
        header, package = _package(func, args, kwargs, options, broker)
    memo = sent(broker.directory)
    if header.group is not None:
        memo.count(header.group)
    if options["sync"]:
        _run_inline(header, func, broker, conf.settings())
    else:
        broker.enqueue(package)
        _warn_if_unserved(broker, memo)
    return header.id


def _reused_or_packed(func: Any, args: tuple, kwargs: dict, options: dict[str, Any],
                      broker: Broker) -> str | tuple[Header, bytes]:
    """``async_task`` with ``reuse=True``: the id of the same call's earlier task if it
    stands for this one (see ``calls``), else the header and package of a new task, its
    key recorded: the caller sends it."""
    function = _function(func, options)
    arguments = _pickle_arguments(args, kwargs)
    hook = options.get("hook")
    hook_name = None if hook is None else _check_callable("option 'hook'", hook)[0]
    key = calls.call_key(func, function, options, hook_name, [(args, kwargs, arguments)])
    reuse = calls.Reuse(broker, bool(options["cached"]), key)
    earlier = reuse.earlier()
    if earlier is not None:
        return earlier
    header, package = _package(func, args, kwargs, options, broker, function, arguments)
    winner = reuse.claim(header.id)
    if winner != header.id:  # another process sent it meanwhile
        forget_local_hook(header.id)
        return winner
    return header, package


# -- async_iter ----------------------------------------------------------------------

def async_iter(func: Callable[..., Any] | str, args_iter: Iterable[Any],
               **kwargs: Any) -> str:
    """Run ``func`` once per item of ``args_iter``; ``result(iter_id)`` gives the results in
    input order once all have finished. A tuple item is spread as positional arguments.

    Takes the options of ``async_task`` (``hook`` excepted), and ``progress=True`` to show
    a live progress panel of the iteration; returns the iter id. With ``reuse=True``, the
    same function over the same items (in order) gives back the earlier iter's id.
    """
    show_progress = kwargs.pop("progress", False)
    options = _checked(_split_options(kwargs), conf.settings())
    if options.get("hook") is not None:
        raise ConfigurationError("async_iter takes no hook; use async_task with a group "
                                 "for a hook per task")
    broker = options["broker"]
    function = _function(func, options)  # pickled once for all the items
    items: Iterable[tuple] = (item if isinstance(item, tuple) else (item,)
                              for item in args_iter)
    arguments: Iterable[bytes | None] = itertools.repeat(None)
    reuse = None
    if options.get("reuse"):  # the iter as a whole: the same items, in order
        items = list(items)
        arguments = [_pickle_arguments(args, kwargs) for args in items]
        key = calls.call_key(func, function, options, None,
                             zip(items, itertools.repeat(kwargs), arguments), of_iter=True)
        reuse = calls.Reuse(broker, bool(options["cached"]), key, of_iter=True)
        earlier = reuse.earlier()
        if earlier is not None:
            manifest = reuse.part.manifest(earlier)
            if show_progress and manifest is not None:
                from .widgets import GroupProgress
                GroupProgress(manifest["group"], len(manifest["ids"]),
                              bool(options["cached"]), broker)
            return earlier
    iter_id = str(uuid.uuid4())
    options = dict(options, group=options.get("group") or iter_id, save=True,
                   iter=iter_id)
    headers, packages = [], []
    for args, pickled in zip(items, arguments):
        header, package = _package(func, args, dict(kwargs), options, broker, function,
                                   pickled)
        headers.append(header)
        packages.append(package)
    if reuse is not None:
        winner = reuse.claim(iter_id)
        if winner != iter_id:  # another process sent it meanwhile
            return winner
    part = get_store(broker.directory).part(bool(options["cached"]))
    part.write_manifest(iter_id, {
        "id": iter_id, "group": options["group"], "ids": [h.id for h in headers],
        "func": function[0],
        "enqueued": time.time(), "cached": options["cached"]})
    group = options["group"]
    memo = sent(broker.directory)
    memo.count(group, len(headers))
    if show_progress:
        from .widgets import GroupProgress
        GroupProgress(group, len(headers), bool(options["cached"]), broker)
    if options["sync"]:
        for header in headers:
            _run_inline(header, func, broker, conf.settings())
    else:
        broker.enqueue_many(packages)
        _warn_if_unserved(broker, memo)
    return iter_id


# -- AsyncTask -----------------------------------------------------------------------

class AsyncTask:
    """The ``async_task`` call as an object: set it up, ``run()`` it, read its result.

    Changing ``func``, ``args``, ``kwargs`` or any option after ``run()`` invalidates
    the result: ``result()`` and ``fetch()`` return None until it is run again.
    """

    def __init__(self, func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> None:
        self.id: str | None = None
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self._ran_with: tuple | None = None

    def _snapshot(self) -> tuple:
        options = self.kwargs.get("q_options")
        return (self.func, self.args, dict(self.kwargs),
                dict(options) if isinstance(options, dict) else options)

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        def same_dict(x: Any, y: Any) -> bool:
            if not isinstance(x, dict) or not isinstance(y, dict):
                return x is y
            return x.keys() == y.keys() and all(x[k] is y[k] for k in x)
        return (a[0] is b[0] and a[1] is b[1] and same_dict(a[2], b[2])
                and same_dict(a[3], b[3]))

    @property
    def started(self) -> bool:
        """Whether the task has been run with its current parameters."""
        return self._ran_with is not None and self._same(self._ran_with, self._snapshot())

    def _get_option(self, name: str) -> Any:
        options = self.kwargs.get("q_options")
        if isinstance(options, dict):
            return options.get(name)
        return self.kwargs.get(name)

    def _set_option(self, name: str, value: Any) -> None:
        options = self.kwargs.get("q_options")
        if isinstance(options, dict):
            self.kwargs["q_options"] = dict(options, **{name: value})
        else:
            self.kwargs[name] = value

    def run(self) -> str:
        """Send the task to the cluster (or run it, with ``sync``); return its id."""
        snapshot = self._snapshot()
        self.id = async_task(self.func, *self.args, **dict(self.kwargs))
        self._ran_with = snapshot
        return self.id

    def result(self, wait: int = 0, progress: bool = False) -> Any:
        """The result, or None if the task has not run with the current parameters.

        ``progress=True`` shows the live progress of the task's group while waiting.
        """
        if not self.started:
            return None
        panel = None
        if progress and wait and self.group is not None:
            from .widgets import GroupProgress
            panel = GroupProgress(self.group, None, bool(self.cached), self.broker)
        try:
            return result(self.id, wait, cached=bool(self.cached), broker=self.broker)
        finally:
            if panel is not None:
                panel.stop()

    def fetch(self, wait: int = 0) -> Task | None:
        """The finished Task, or None if it has not run with the current parameters."""
        if not self.started:
            return None
        return fetch(self.id, wait, cached=bool(self.cached), broker=self.broker)

    def result_group(self, failures: bool = False, wait: int = 0,
                     count: int | None = None, progress: bool = False) -> list[Any] | None:
        """Results of this task's group (see ``result_group``)."""
        if self.group is None or not self.started:
            return None
        return result_group(self.group, failures, wait, count, cached=bool(self.cached),
                            broker=self.broker, progress=progress)

    def fetch_group(self, failures: bool = True, wait: int = 0,
                    count: int | None = None, progress: bool = False) -> list[Task] | None:
        """Tasks of this task's group (see ``fetch_group``)."""
        if self.group is None or not self.started:
            return None
        return fetch_group(self.group, failures, wait, count, cached=bool(self.cached),
                           broker=self.broker, progress=progress)

    def __await__(self) -> Any:
        """``await task``: run it if it has not run with its current parameters, then wait
        for its outcome without blocking the event loop. Returns its result, or raises
        TaskFailed (``.task`` the Failure); a ``sync=True`` task returns at once."""
        import asyncio

        from .futures import future
        if not self.started:
            self.run()
        waiting = future(self.id, cached=bool(self.cached), broker=self.broker)
        return asyncio.wrap_future(waiting).__await__()

    def __repr__(self) -> str:
        func = self.func if isinstance(self.func, str) else _callable_name(self.func)
        state = f"id={self.id}" if self.started else "not run with these parameters"
        return f"<AsyncTask {func} {state}>"


def _option_property(name: str, doc: str) -> property:
    return property(lambda self: self._get_option(name),
                    lambda self, value: self._set_option(name, value), doc=doc)


for _name, _doc in (("broker", "Optional broker from get_broker()."),
                    ("sync", "Run inline instead of in the cluster."),
                    ("save", "Overrides the global save setting."),
                    ("hook", "Called with the finished Task."),
                    ("group", "Optional group label."),
                    ("cached", "True or seconds: keep the result in the cached part."),
                    ("timeout", "Seconds the task may run."),
                    ("ack_failure", "Overrides the ack_failures setting."),
                    ("task_name", "Overrides the generated name."),
                    ("max_attempts", "Overrides the max_attempts setting."),
                    ("reuse", "Give back the same call's task if it succeeded or is "
                              "still queued or running (see nbqueue.calls).")):
    setattr(AsyncTask, _name, _option_property(_name, _doc))

__all__ = ["async_task", "async_iter", "AsyncTask"]
