"""The Tasks API: put work in the queue and read outcomes back, from any process.

``async_task`` checks its input, pickles and signs one package and pushes it; it
never imports the cluster. Everything that reads (``result``, ``fetch``, groups)
goes to the store of the same directory and may wait, in milliseconds as in
Django Q: 0 = do not wait, -1 = wait forever.
"""

from __future__ import annotations

import pickle
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Iterable

import cloudpickle

from . import conf
from .broker import Broker, get_broker
from .errors import ConfigurationError, NoClusterWarning, PackingError
from .models import Task, group_results, group_count
from .records import Header, encode_header, iter_record, make_record
from .heartbeats import heartbeats
from .hooks import find_hook, run_hook
from .names import new_task_id
from .worker import execute, resolve, serving

OPTIONS = ("hook", "group", "save", "timeout", "ack_failure", "sync", "cached", "broker",
           "task_name", "max_attempts", "q_options")


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
    # Plain values pickle the same either way, ~10x faster without cloudpickle's hooks;
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
    "broker": _check_broker, "hook": lambda name, value: None,
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
    would pickle by reference anyway: shipping the path saves that (~15 us a call)."""
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
             ) -> tuple[Header, bytes]:
    """The header and signed package of one task (``function``: ``_function``'s answer,
    when many tasks share the function, as in ``async_iter``)."""
    func_name, func_ref, func_bytes = function or _function(func, options)
    hook = options.get("hook")
    hook_name = hook_ref = hook_bytes = None
    if hook is not None:
        hook_name, hook_ref = _check_callable("option 'hook'", hook)
    task_id, name = new_task_id()
    if hook is not None and hook_ref is None:
        # A cluster of this process calls this very object, whenever it starts; a copy
        # goes with the package for a cluster in another process.
        broker.local_hooks[task_id] = hook
        if not (broker.has_local_consumer or options["sync"]):
            hook_bytes = _pickle("option 'hook'", hook)
    if options.get("save") is False or options["cached"]:
        _remember(broker, task_id, "cached" if options["cached"] else "unsaved")
    header = Header(
        task_id, options.get("task_name") or name, func_name, func_ref, func_bytes,
        _pickle_arguments(args, kwargs), hook_name, hook_ref, hook_bytes, options.get("group"),
        options.get("save"), options["cached"], options.get("timeout"),
        options.get("ack_failure"), options.get("max_attempts"), time.time(), options.get("iter"))
    return header, encode_header(broker.key, header)


SERVE_CHECK = 5.0  # seconds between two checks that a cluster serves the store


def _warn_if_unserved(broker: Broker) -> None:
    """Warn once that no cluster serves the store, and again after one was seen (a
    cluster stopped). Checks at most every SERVE_CHECK seconds: a check reads the
    clusters' heartbeats, too slow for every call."""
    now = time.monotonic()
    if now < broker.serve_check_at:
        return
    broker.serve_check_at = now + SERVE_CHECK
    unserved = _unserved(broker)
    if unserved is None:
        broker.warned_no_cluster = False
    elif not broker.warned_no_cluster:
        broker.warned_no_cluster = True
        warnings.warn(NoClusterWarning(f"this task waits in the queue: {unserved}"),
                      stacklevel=3)


def _unserved(broker: Broker) -> str | None:
    """What to do when no cluster serves the store, or None when one does."""
    if broker.has_local_consumer or heartbeats(broker.directory).clusters():
        return None
    return (f"no nbqueue cluster serves {broker.directory}: start one in this kernel with "
            f"`nbqueue.Cluster().start()`, or in a terminal with "
            f"`nbqueue cluster --directory {broker.directory}`")


def _remember(broker: Broker, task_id: str, how: str) -> None:
    """Note a task whose outcome a plain ``result()`` would wait for in vain (not saved,
    or cached), to say so if someone waits for it. The newest SENT_KEPT only."""
    sent = broker.sent_unusual
    sent[task_id] = how
    if len(sent) > SENT_KEPT:
        del sent[next(iter(sent))]


SENT_KEPT = 10_000


def _run_inline(header: Header, func: Any, broker: Broker,
                settings: conf.Settings) -> None:
    """``sync=True``: run the task here, through the same steps a cluster takes."""
    try:
        outcome = execute(header.item(header.timeout), func=None if isinstance(func, str) else func, inline=True)
    except KeyboardInterrupt as exc:  # Ctrl-C in this process: a failure, then stop
        broker.local_hooks.pop(header.id, None)
        broker.store.save([make_record(header, exc.outcome, attempt=1)],  # type: ignore
                          settings.save_limit)
        raise
    record = make_record(header, outcome, attempt=1)
    broker.store.save([record], settings.save_limit)
    try:
        hook = find_hook(broker, header)
    except Exception as exc:
        import logging
        logging.getLogger("nbqueue").error("hook of task %s cannot be loaded: %s",
                                           header.id, exc)
        return
    if hook is not None:
        run_hook(hook, Task(record, broker.store, bool(header.cached)))


def async_task(func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> str:
    """Put a task in the queue and return its id at once.

    ``func`` is a callable (lambdas and notebook functions too) or a dotted path.
    Options (never passed to ``func``): ``hook, group, save, timeout, ack_failure, sync,
    cached, broker, task_name, max_attempts``, or all of them in one dict ``q_options``,
    which then is the only source of options. Every other keyword goes to ``func``.

    Raises TaskFunctionError for a dotted path that does not resolve, PackingError for
    arguments that cannot be pickled, ConfigurationError for a bad option, at the call.
    """
    options = _checked(_split_options(kwargs), conf.settings())
    broker = options["broker"]
    header, package = _package(func, args, kwargs, options, broker)
    group = header.group
    if group is not None:
        broker.enqueued[group] = broker.enqueued.get(group, 0) + 1
    if options["sync"]:
        _run_inline(header, func, broker, conf.settings())
    else:
        broker.enqueue(package)
        _warn_if_unserved(broker)
    return header.id


def _store(broker: Broker | None = None):
    return (broker or get_broker()).store


def _check_wait(wait: Any) -> None:
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or (wait < 0 and wait != -1):
        raise ConfigurationError(f"wait must be milliseconds >= 0, or -1 to wait forever; "
                                 f"got {wait!r}")


def _check_count(count: Any) -> None:
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or count < 1):
        raise ConfigurationError(f"count must be a whole number >= 1 (how many tasks of the "
                                 f"group to wait for) or None, got {count!r}")


def _idle(broker: Broker) -> bool:
    return broker.pending() == 0 and broker.leased() == 0


def _task_wait_hint(broker: Broker, task_id: str, cached: bool) -> str | None:
    """Why a wait for one task may never end, or None when it looks like it will."""
    here, there = ("cached", "saved") if cached else ("saved", "cached")
    if broker.store.part(not cached).get(task_id) is not None:
        return (f"task {task_id!r} is stored in the {there} part of the store, and this "
                f"reads the {here} part: pass cached={not cached}")
    sent = broker.sent_unusual.get(task_id)
    if sent == "unsaved":
        return (f"task {task_id!r} was sent with save=False: its result is never stored, so "
                "this wait cannot end. Use a hook to get it, or leave save=True")
    if sent is not None and (sent == "cached") != cached:
        return (f"task {task_id!r} was sent with cached={sent == 'cached'}; read it with "
                f"cached={sent == 'cached'}")
    if serving() == broker.directory:
        return (f"this wait for task {task_id!r} runs inside a task of the cluster that "
                "would run it: while every worker waits like this, none is free to run it "
                "(a deadlock). Don't wait for a task's children inside the task: give them a "
                "hook or a group, and wait for them in the notebook")
    unserved = _unserved(broker)
    if unserved:
        return f"task {task_id!r} is not finished and {unserved}"
    if _idle(broker):
        return (f"nothing is queued or running in {broker.directory}, so no outcome of "
                f"{task_id!r} is coming: check the id or name (mistyped?), and that it was "
                "sent to this store directory")
    return None


def _group_wait_hint(broker: Broker, group: str, count: int | None,
                     cached: bool) -> str | None:
    """Why a wait for a group may never end, or None when it looks like it will."""
    unserved = _unserved(broker)
    if unserved:
        return f"group {group!r} is not complete and {unserved}"
    if not _idle(broker):
        return None
    part, other = broker.store.part(cached), broker.store.part(not cached)
    have = sum(part.tally(group))
    if not have and sum(other.tally(group)):
        return (f"group {group!r} is stored in the {'saved' if cached else 'cached'} part of "
                f"the store: pass cached={not cached}")
    wanted = f"the {count} waited for" if count is not None else "any"
    return (f"nothing is queued or running in {broker.directory}, and group {group!r} has "
            f"{have} outcome(s), not {wanted}: check the group name and count")


def fetch(task_id: str, wait: int = 0, cached: bool = False,
          broker: Broker | None = None) -> Task | None:
    """The finished task by uuid or name, or None if it has not finished (after ``wait`` ms).

    A wait that looks like it can never end (the task is not saved, is in the other
    part of the store, or nothing is queued or running) warns once after a few seconds.
    """
    _check_wait(wait)
    broker = broker or get_broker()
    store = broker.store
    part = store.part(cached)
    record = store.wait(lambda: part.get(task_id) or _iter_record(part, task_id), wait,
                        hint=lambda: _task_wait_hint(broker, task_id, cached))
    return None if record is None else Task(record, store, cached)


def result(task_id: str, wait: int = 0, cached: bool = False,
           broker: Broker | None = None) -> Any:
    """The result of a task by uuid or name; None until it has finished.

    ``wait`` is in milliseconds; -1 waits until the task has finished, whatever it
    returned (None, 0 and [] included). A failed task's result is its error text.
    """
    task = fetch(task_id, wait, cached, broker)
    return None if task is None else task.result


def _group_ready(part, group_id: str, failures: bool, count: int | None) -> bool:
    ok, failed = part.tally(group_id)
    if count is None:
        return ok > 0 or (failures and failed > 0)
    return ok + failed >= count


def _wait_group(group_id: str, failures: bool, wait: int, count: int | None, cached: bool,
                broker: Broker | None, progress: bool) -> None:
    _check_wait(wait)
    _check_count(count)
    broker = broker or get_broker()
    store = broker.store
    part = store.part(cached)
    panel = None
    if progress and wait:
        from .widgets import GroupProgress
        panel = GroupProgress(group_id, count, cached, broker)
    try:
        store.wait(lambda: _group_ready(part, group_id, failures, count), wait,
                   hint=lambda: _group_wait_hint(broker, group_id, count, cached))
    except KeyboardInterrupt:
        if panel is not None:  # the wait ends here; the panel goes on showing the group
            panel.detach()
            panel = None
        raise
    finally:
        if panel is not None:
            panel.stop()


def result_group(group_id: str, failures: bool = False, wait: int = 0,
                 count: int | None = None, cached: bool = False,
                 broker: Broker | None = None, progress: bool = False) -> list[Any] | None:
    """The results of a group, or None while it has none.

    With ``count``, waits (up to ``wait`` ms) until that many tasks of the group have
    finished, failed ones included, so a failure cannot make the wait hang.
    ``progress=True`` shows a live progress panel (or tqdm bar) while it waits.
    """
    _wait_group(group_id, failures, wait, count, cached, broker, progress)
    results = group_results(_store(broker).part(cached), group_id, failures)
    return results or None


def fetch_group(group_id: str, failures: bool = True, wait: int = 0,
                count: int | None = None, cached: bool = False,
                broker: Broker | None = None, progress: bool = False) -> list[Task] | None:
    """The tasks of a group (or None while it has none); see ``result_group``."""
    _wait_group(group_id, failures, wait, count, cached, broker, progress)
    tasks = Task.get_task_group(group_id, failures, cached, _store(broker))
    return tasks or None


def count_group(group_id: str, failures: bool = False, cached: bool = False,
                broker: Broker | None = None) -> int:
    """How many tasks of the group finished, as Django Q counts: all of them, successes
    and failures; only the failures with ``failures=True``."""
    return group_count(_store(broker).part(cached), group_id, failures)


def delete_group(group_id: str, tasks: bool = False, cached: bool = False,
                 broker: Broker | None = None) -> int:
    """Remove a group label from its tasks, or delete them with ``tasks=True``; return how many.

    The group starts afresh: a progress panel's default total counts only the tasks this
    process puts in it from now on (so a notebook that clears its group and fills it
    again, run twice in one kernel, does not wait for the first run's tasks).
    """
    (broker or get_broker()).enqueued.pop(group_id, None)
    return _store(broker).part(cached).delete_group(group_id, tasks)


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


# -- async_iter ----------------------------------------------------------------------

def async_iter(func: Callable[..., Any] | str, args_iter: Iterable[Any],
               **kwargs: Any) -> str:
    """Run ``func`` once per item of ``args_iter``; ``result(iter_id)`` gives the results in
    input order once all have finished. A tuple item is spread as positional arguments.

    Takes the options of ``async_task`` (``hook`` excepted), and ``progress=True`` to show
    a live progress panel of the iteration; returns the iter id.
    """
    show_progress = kwargs.pop("progress", False)
    options = _checked(_split_options(kwargs), conf.settings())
    if options.get("hook") is not None:
        raise ConfigurationError("async_iter takes no hook; use async_task with a group "
                                 "for a hook per task")
    broker = options["broker"]
    iter_id = str(uuid.uuid4())
    options = dict(options, group=options.get("group") or iter_id, save=True,
                   iter=iter_id)
    headers, packages = [], []
    function = _function(func, options)  # pickled once for all the items
    for item in args_iter:
        args = item if isinstance(item, tuple) else (item,)
        header, package = _package(func, args, dict(kwargs), options, broker, function)
        headers.append(header)
        packages.append(package)
    part = broker.store.part(bool(options["cached"]))
    part.write_manifest(iter_id, {
        "id": iter_id, "group": options["group"], "ids": [h.id for h in headers],
        "func": function[0],
        "enqueued": time.time(), "cached": options["cached"]})
    group = options["group"]
    broker.enqueued[group] = broker.enqueued.get(group, 0) + len(headers)
    if show_progress:
        from .widgets import GroupProgress
        GroupProgress(group, len(headers), bool(options["cached"]), broker)
    if options["sync"]:
        for header in headers:
            _run_inline(header, func, broker, conf.settings())
    else:
        broker.enqueue_many(packages)
        _warn_if_unserved(broker)
    return iter_id


def _iter_record(part, iter_id: str) -> dict[str, Any] | None:
    """The combined record of an async_iter once all its tasks have finished, else None."""
    manifest = part.manifest(iter_id)
    if manifest is None:
        return None
    records = part.records(manifest["ids"])
    if any(r is None for r in records):
        return None
    return iter_record(manifest, records)


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
                    ("max_attempts", "Overrides the max_attempts setting.")):
    setattr(AsyncTask, _name, _option_property(_name, _doc))

__all__ = ["async_task", "async_iter", "result", "fetch", "result_group", "fetch_group",
           "count_group", "delete_group", "delete_cached", "queue_size", "flush", "AsyncTask"]
