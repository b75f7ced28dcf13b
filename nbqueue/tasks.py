"""The Tasks API's sending side: put work in the queue, from any process.

``async_task`` checks its input, pickles and signs one package and pushes it; it
never imports the cluster. ``sync=True`` runs the task here instead, through the
steps a cluster takes. Reading outcomes back (``result``, ``fetch``, groups) is
``results``'s part.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Generic, SupportsIndex, TypeVar, overload

from nbqueue import batches, calls, conf
from nbqueue.dependencies import packing, placeholder
from nbqueue.disk import chains, waiting
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_store, sent
from nbqueue.disk.records import (
    Cause,
    Header,
    Manifest,
    encode_header,
    expand,
    failure,
    has_failure,
    make_record,
    manifest_size,
)
from nbqueue.disk.sent import Sent
from nbqueue.disk.store import Part
from nbqueue.errors import ConfigurationError, NoClusterWarning
from nbqueue.futures import future
from nbqueue.models import Task
from nbqueue.options import OPTION_NAMES, TaskOptions
from nbqueue.packing import (
    function_of,
    make_package,
    pickle_arguments,
)
from nbqueue.results import (
    count_group,
    fetch,
    fetch_group,
    no_cluster_advice,
    result,
    result_group,
)
from nbqueue.worker import execute
from nbqueue.worker.callables import (
    callable_name,
    check_callable,
    find_hook,
    forget_local_hook,
    run_hook,
)
from nbqueue.worker.capture import inline_capture

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVE_CHECK = 5.0  # seconds between two checks that a cluster serves the store


def warn_if_unserved(broker: Broker, memo: Sent) -> None:
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
        warnings.warn(NoClusterWarning(f"this task waits in the queue: {advice}"), stacklevel=3)


def run_inline(
    header: Header, func: Any, broker: Broker, settings: conf.Settings, package: bytes | None = None
) -> None:
    """``sync=True``: run the task here, through the same steps a cluster takes (a
    failure keeps its ``package``, for ``nbqueue.retry``)."""
    try:
        with inline_capture():
            outcome = execute(
                header.item(header.timeout),
                func=None if isinstance(func, str) else func,
                inline=True,
            )
    except KeyboardInterrupt as exc:  # Ctrl-C in this process: a failure, then stop
        forget_local_hook(header.id)
        # execute(inline=True) puts the failure's outcome on the interrupt it lets through
        stopped = make_record(header, exc.outcome, attempt=1)  # type: ignore[attr-defined]
        get_store(broker.directory).save([stopped], settings.save_limit)
        raise
    record = make_record(header, outcome, attempt=1)
    if has_failure(outcome) and package is not None:
        record["package"] = package
    store = get_store(broker.directory)
    store.save([record], settings.save_limit)
    try:
        hook = find_hook(header)
    except Exception as exc:
        log.error("hook of task %s cannot be loaded: %s", header.id, exc)
        return
    if hook is not None:
        for each in expand(record):  # a batch's hook runs for each of its items
            run_hook(hook, Task(each, store, bool(header.cached)))


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
    options = TaskOptions.take(kwargs, conf.settings())
    broker = options.broker
    with packing(broker.directory):  # results of other tasks in the arguments: see there
        if options.reuse:
            found = _reused_or_packed(func, args, kwargs, options)
            if isinstance(found, str):
                return found
            header, package = found
        else:
            header, package = make_package(func, args, kwargs, options)
    memo = sent(broker.directory)
    if header.after:
        _check_kept(header, memo)
    if header.group is not None:
        memo.count(header.group, unsaved=header.save is False)
    if options.sync:
        if header.after:
            _check_ended(broker, header)
        if header.group is not None:
            broker.count_sent({header.group: 1})
        run_inline(header, func, broker, conf.settings(), package)
    elif header.after:
        waiting.send(broker, get_store(broker.directory), header, package)
        warn_if_unserved(broker, memo)
    else:
        broker.enqueue(package, header.group)
        warn_if_unserved(broker, memo)
    return header.id


def _check_kept(header: Header, memo: Sent) -> None:
    """A task can take the result only of a task whose outcome is kept."""
    for task_id in header.after:
        if memo.unusual.get(task_id) == "unsaved":
            raise ConfigurationError(
                f"task {task_id} was sent with save=False: its result is not kept, so no "
                "task can take it. Send it with save=True (the default)"
            )


def _check_ended(broker: Broker, header: Header) -> None:
    """A task run now (``sync=True``) can take only results that are there."""
    store = get_store(broker.directory)
    for task_id in header.after:
        if waiting.verdict(broker, store, task_id) == waiting.PENDING:
            raise ConfigurationError(
                f"sync=True runs the task now, but task {task_id}, whose result it takes, "
                "has no outcome in the store: wait for it first (nbqueue.result(task_id, "
                "wait=-1)), or check that it is a task of this store"
            )


def _reused_or_packed(
    func: Any, args: tuple, kwargs: dict, options: TaskOptions
) -> str | tuple[Header, bytes]:
    """``async_task`` with ``reuse=True``: the id of the same call's earlier task if it
    stands for this one (see ``calls``), else the header and package of a new task, its
    key recorded: the caller sends it."""
    function = function_of(func, options)
    arguments = pickle_arguments(args, kwargs)
    hook = options.hook
    hook_name = None if hook is None else check_callable("option 'hook'", hook)[0]
    key = calls.call_key(func, function, options, hook_name, [(args, kwargs, arguments)])
    reuse = calls.Reuse(options.broker, bool(options.cached), key)
    earlier = reuse.earlier()
    if earlier is not None:
        return earlier
    header, package = make_package(func, args, kwargs, options, function, arguments)
    winner = reuse.claim(header.id)
    if winner != header.id:  # another process sent it meanwhile
        forget_local_hook(header.id)
        return winner
    return header, package


# -- async_iter ----------------------------------------------------------------------


def async_iter(func: Callable[..., Any] | str, args_iter: Iterable[Any], **kwargs: Any) -> str:
    """Run ``func`` once per item of ``args_iter``; ``result(iter_id)`` gives the results in
    input order once all have finished. A tuple item is spread as positional arguments.

    Takes the options of ``async_task`` (``hook`` excepted), and ``progress=True`` to show
    a live progress panel of the iteration; returns the iter id. The items travel in
    batches (``nbqueue.batches``); each is still a task with its own outcome. With
    ``reuse=True``, the same function over the same items (in order) gives back the
    earlier iter's id, and sends again only its batches that failed or were lost.
    """
    show_progress = kwargs.pop("progress", False)
    options = TaskOptions.take(kwargs, conf.settings())
    if options.hook is not None:
        raise ConfigurationError(
            "async_iter takes no hook; use async_task with a group for a hook per task"
        )
    if not hasattr(args_iter, "__len__"):
        args_iter = list(args_iter)
    count = len(args_iter)  # type: ignore[arg-type]
    manifest = send_items(func, args_iter, count, kwargs, options, lambda iter_id: iter_id)
    if show_progress:
        from nbqueue.display.group_panel import GroupProgress

        GroupProgress(
            manifest["group"], manifest_size(manifest), bool(options.cached), options.broker
        )
    return manifest["id"]


def send_items(
    func: Callable[..., Any] | str,
    items: Iterable[Any],
    count: int,
    kwargs: dict,
    options: TaskOptions,
    new_group: Callable[[str], str],
) -> Manifest:
    """Send ``count`` calls of ``func`` (one per item of ``items``: a tuple is spread as
    positional arguments), with ``kwargs``, in batches, as one iter, and return its
    manifest: ``async_iter`` and ``map``. Its group is ``options.group``, or
    ``new_group(iter_id)``.

    With ``reuse=True``, the same calls sent before give back that iter instead, and of
    its batches those that failed, or were lost, are sent again (``calls.to_send_again``):
    a cell run again after its kernel died runs only what had not finished.
    """
    broker = options.broker
    function = function_of(func, options)  # pickled once for all the items
    reuse = None
    if options.reuse:  # the calls as a whole: the same items, in order
        items = [item if isinstance(item, tuple) else (item,) for item in items]
        arguments = [pickle_arguments(args, kwargs) for args in items]
        key = calls.call_key(
            func,
            function,
            options,
            None,
            zip(items, itertools.repeat(kwargs), arguments),
            of_iter=True,
        )
        reuse = calls.Reuse(broker, bool(options.cached), key, of_iter=True)
        with packing(broker.directory):
            earlier = _resumed(reuse, func, function, options, kwargs, items)
        if earlier is not None:
            return earlier
    iter_id = str(uuid.uuid4())
    group = options.group or new_group(iter_id)
    options = replace(options, group=group, save=True, iter=iter_id)
    headers, packages = [], []
    with packing(broker.directory):  # results of other tasks in the items: see there
        for header, package in batches.pack(func, items, count, kwargs, options, function):
            headers.append(header)
            packages.append(package)
    if reuse is not None:
        winner = reuse.claim(iter_id)
        if winner != iter_id:  # another process sent it meanwhile
            found = _manifest_of(broker, reuse.part, winner)
            if found is not None:
                return found
    manifest: Manifest = {
        "id": iter_id,
        "group": group,
        "ids": [],
        "batches": [(h.id, h.items) for h in headers],
        "func": function[0],
        "enqueued": time.time(),
        "cached": options.cached,
    }
    get_store(broker.directory).part(bool(options.cached)).write_manifest(iter_id, manifest)
    if count:
        sent(broker.directory).count(group, count)
    _send(headers, packages, func, options, {group: count} if count else {})
    return manifest


def _send(
    headers: list[Header],
    packages: list[bytes],
    func: Any,
    options: TaskOptions,
    counts: dict[str, int],
) -> None:
    """Enqueue the batches of an iter (run them here for ``sync``); ``counts``: the tasks
    they add to their group's total (none when sent again)."""
    broker = options.broker
    if options.sync:
        for header in headers:
            if header.after:
                _check_ended(broker, header)
        if counts:
            broker.count_sent(counts)
        for header, package in zip(headers, packages, strict=False):
            run_inline(header, func, broker, conf.settings(), package)
    elif packages:
        waits = [(h, p) for h, p in zip(headers, packages, strict=True) if h.after]
        if waits:  # batches whose items take other tasks' results
            for header, package in waits:
                waiting.send(broker, get_store(broker.directory), header, package)
            packages = [p for h, p in zip(headers, packages, strict=True) if not h.after]
        broker.enqueue_many(packages, counts)  # all of them, or none
        warn_if_unserved(broker, sent(broker.directory))


def _manifest_of(broker: Broker, part: Part, iter_id: str) -> Manifest | None:
    """The manifest of an iter another process claimed: written just after its claim."""
    return get_store(broker.directory).wait(lambda: part.manifest(iter_id), 5000) or None


def _resumed(
    reuse: calls.Reuse,
    func: Any,
    function: tuple[str, str | None, bytes | None],
    options: TaskOptions,
    kwargs: dict,
    items: list[tuple],
) -> Manifest | None:
    """The manifest of the same calls sent before, its batches that did not finish sent
    again; None if there is none to resume."""
    if reuse.row is None:
        return None
    part = reuse.part
    manifest = part.manifest(reuse.row[0])
    if manifest is None or "batches" not in manifest:  # on its way, or of an earlier version
        return manifest if reuse.earlier() is not None else None
    again = set(calls.to_send_again(reuse.broker, part, manifest, reuse.row[1]))
    if not again or not part.renew_call(reuse.key, reuse.row):
        return manifest  # all stand, or another process sends them again now
    options = replace(options, group=manifest["group"], save=True, iter=manifest["id"])
    starts = list(itertools.accumulate((n for _, n in manifest["batches"]), initial=0))
    new_batches: list[tuple[str, int]] = []
    headers, packages = [], []
    for k, (batch_id, count) in enumerate(manifest["batches"]):
        if k not in again:
            new_batches.append((batch_id, count))
            continue
        part.delete(batch_id)  # its failures go: its items' new outcomes take their place
        span = slice(starts[k], starts[k] + count)
        for header, package in batches.pack(func, items[span], count, kwargs, options, function):
            headers.append(header)
            packages.append(package)
            new_batches.append((header.id, header.items))
    log.info(
        "sending again %d of the %d batches of iter %s", len(again), len(starts) - 1, manifest["id"]
    )
    manifest = {**manifest, "batches": new_batches}
    part.write_manifest(manifest["id"], manifest)
    _send(headers, packages, func, options, {})
    return manifest


# -- AsyncTask -----------------------------------------------------------------------


class _Option(Generic[T]):
    """An option of an ``AsyncTask``, one of ``TaskOptions``'s, kept as given in the call's
    keywords (or its ``q_options``) and checked when it runs: changing it after ``run()``
    invalidates the result, as the reference says."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in OPTION_NAMES:
            raise TypeError(f"{name!r} is not an option of async_task: {OPTION_NAMES}")
        self.name = name

    @overload
    def __get__(self, task: None, owner: type | None = None) -> _Option[T]: ...

    @overload
    def __get__(self, task: AsyncTask, owner: type | None = None) -> T: ...

    def __get__(self, task: AsyncTask | None, owner: type | None = None) -> Any:
        return self if task is None else task._get_option(self.name)

    def __set__(self, task: AsyncTask, value: T) -> None:
        task._set_option(self.name, value)


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

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # in a task's arguments: a dependency on its task (``nbqueue.dependencies``)
        return placeholder(self.id, "an AsyncTask") or super().__reduce_ex__(protocol)

    def _snapshot(self) -> tuple:
        options = self.kwargs.get("q_options")
        return (
            self.func,
            self.args,
            dict(self.kwargs),
            dict(options) if isinstance(options, dict) else options,
        )

    @staticmethod
    def _same(a: tuple, b: tuple) -> bool:
        def same_dict(x: Any, y: Any) -> bool:
            if not isinstance(x, dict) or not isinstance(y, dict):
                return x is y
            return x.keys() == y.keys() and all(x[k] is y[k] for k in x)

        return a[0] is b[0] and a[1] is b[1] and same_dict(a[2], b[2]) and same_dict(a[3], b[3])

    @property
    def started(self) -> bool:
        """Whether the task has been run with its current parameters."""
        return self._ran_with is not None and self._same(self._ran_with, self._snapshot())

    def _cached_part(self) -> bool:
        """Whether the result is in the cached part: the task's ``cached`` option, or the
        ``cached`` setting when the task has none."""
        cached = self.cached
        return bool(conf.settings().cached if cached is None else cached)

    def _started_id(self) -> str | None:
        """The id of the run with the current parameters, None if there is none."""
        return self.id if self.started else None

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

    # -- the options, read from and written to the call's keywords (or its q_options)
    broker = _Option[Broker | None]("Optional broker from get_broker().")
    sync = _Option[bool | None]("Run inline instead of in the cluster.")
    save = _Option[bool | None]("Overrides the global save setting.")
    hook = _Option[Callable[[Task], Any] | str | None]("Called with the finished Task.")
    group = _Option[str | None]("Optional group label.")
    cached = _Option[bool | float | None]("True or seconds: keep the result in the cached part.")
    timeout = _Option[float | None]("Seconds the task may run.")
    ack_failure = _Option[bool | None]("Overrides the ack_failures setting.")
    task_name = _Option[str | None]("Overrides the generated name.")
    max_attempts = _Option[int | None]("Overrides the max_attempts setting.")
    reuse = _Option[bool | None](
        "Give back the same call's task if it succeeded or is still "
        "queued or running (see nbqueue.calls)."
    )

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
        task_id = self._started_id()
        if task_id is None:
            return None
        panel = None
        if progress and wait and self.group is not None:
            from nbqueue.display.group_panel import GroupProgress

            panel = GroupProgress(self.group, None, self._cached_part(), self.broker)
        try:
            return result(task_id, wait, cached=self._cached_part(), broker=self.broker)
        finally:
            if panel is not None:
                panel.stop()

    def fetch(self, wait: int = 0) -> Task | None:
        """The finished Task, or None if it has not run with the current parameters."""
        task_id = self._started_id()
        if task_id is None:
            return None
        return fetch(task_id, wait, cached=self._cached_part(), broker=self.broker)

    def result_group(
        self,
        failures: bool = False,
        wait: int = 0,
        count: int | None = None,
        progress: bool = False,
    ) -> list[Any] | None:
        """Results of this task's group (see ``result_group``)."""
        if self.group is None or not self.started:
            return None
        return result_group(
            self.group,
            failures,
            wait,
            count,
            cached=self._cached_part(),
            broker=self.broker,
            progress=progress,
        )

    def fetch_group(
        self, failures: bool = True, wait: int = 0, count: int | None = None, progress: bool = False
    ) -> list[Task] | None:
        """Tasks of this task's group (see ``fetch_group``)."""
        if self.group is None or not self.started:
            return None
        return fetch_group(
            self.group,
            failures,
            wait,
            count,
            cached=self._cached_part(),
            broker=self.broker,
            progress=progress,
        )

    def __await__(self) -> Any:
        """``await task``: run it if it has not run with its current parameters, then wait
        for its outcome without blocking the event loop. Returns its result, or raises
        TaskFailed (``.task`` the Failure); a ``sync=True`` task returns at once."""
        task_id = self._started_id()
        if task_id is None:
            task_id = self.run()
        return future(task_id, cached=self._cached_part(), broker=self.broker).__await__()

    def __repr__(self) -> str:
        func = self.func if isinstance(self.func, str) else callable_name(self.func)
        state = f"id={self.id}" if self.started else "not run with these parameters"
        return f"<AsyncTask {func} {state}>"


class Iter:
    """Django Q's ``Iter``: an ``async_iter`` built up call by call.

    ``Iter(func, args=None, kwargs=None, cached=..., sync=..., broker=None)``; ``append(
    *args)`` adds one call's positional arguments and returns how many there are;
    ``run()`` sends them as one ``async_iter`` (``kwargs``: its options and the
    function's keywords, as ``async_iter`` takes them) and returns its id; ``result(wait=
    0)`` and ``fetch(wait=0)`` read it back, None before ``run()``. Appending after
    ``run()`` makes the next ``run()`` send all the calls again, as a new iter.
    """

    def __init__(
        self,
        func: Callable[..., Any] | str | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        cached: bool | int | None = None,
        sync: bool | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.func = func
        self.args: list[Any] = list(args or [])
        self.kwargs = dict(kwargs or {})
        self.cached = conf.settings().cached if cached is None else cached
        self.sync = conf.settings().sync if sync is None else sync
        self.broker = broker
        self.id: str | None = None
        self.started = False

    def append(self, *args: Any) -> int:
        """Add a call with these positional arguments; return how many calls there are."""
        self.args.append(args)
        self.started = False
        return self.length()

    def length(self) -> int:
        return len(self.args)

    def run(self) -> str:
        """Send the calls as one ``async_iter``; return its id."""
        if self.func is None:
            raise ConfigurationError("Iter has no function: Iter(func) or Iter().func = func")
        options: dict[str, Any] = {"cached": self.cached, "sync": self.sync}
        if self.broker is not None:
            options["broker"] = self.broker
        self.id = async_iter(self.func, self.args, **{**self.kwargs, **options})
        self.started = True
        return self.id

    def result(self, wait: int = 0) -> list[Any] | None:
        """The results in the order of the calls (a failure's error text in its place);
        None before ``run()``, or while some have not finished after ``wait`` ms."""
        if self.id is None:
            return None
        return result(self.id, wait=wait, cached=bool(self.cached), broker=self.broker)

    def fetch(self, wait: int = 0) -> Task | None:
        """The iter as one Task (``success`` only if every call succeeded)."""
        if self.id is None:
            return None
        return fetch(self.id, wait=wait, cached=bool(self.cached), broker=self.broker)


# -- chains: Django Q's async_chain and Chain ------------------------------------------


def async_chain(
    chain: Iterable[Any],
    group: str | None = None,
    cached: bool | int | None = None,
    sync: bool | None = None,
    broker: Broker | None = None,
) -> str:
    """Run tasks one after another, each once the one before it has succeeded; returns
    the chain's group. ``chain`` is a list of ``(func, args, kwargs)``, ``(func, args)``
    or ``func`` entries. If a task fails (finally: after its attempts), the tasks after it
    never run: each becomes a Failure saying so (``DependencyFailed``), so the group
    counts every task of the chain. See ``nbqueue.disk.chains``."""
    links = [_link(entry) for entry in chain]
    if not links:
        raise ConfigurationError("a chain needs at least one task: async_chain([(func, args)])")
    given: dict[str, Any] = {"group": group or f"chain-{uuid.uuid4()}"}
    if cached is not None:
        given["cached"] = cached
    if sync is not None:
        given["sync"] = sync
    if broker is not None:
        given["broker"] = broker
    settings = conf.settings()
    options = TaskOptions.take(given, settings)
    broker = options.broker
    group = options.group
    assert group is not None
    made: list[tuple[Any, Header, bytes]] = []
    then: bytes | None = None
    with packing(broker.directory):  # results of other tasks in the arguments: see there
        for func, args, kwargs in reversed(links):  # each link carries the next one
            header, _ = make_package(func, args, kwargs, options)
            header = header._replace(then=then)
            then = encode_header(broker.key, header)
            made.append((func, header, then))
    made.reverse()
    sent(broker.directory).count(group, len(made))
    if not options.sync:
        first = made[0][1]
        if first.after:  # it takes other tasks' results: it waits for them
            broker.count_sent({group: len(made)})
            broker.wait(first.id, first.after, made[0][2], None)
        else:
            broker.enqueue_many([made[0][2]], {group: len(made)})
        warn_if_unserved(broker, sent(broker.directory))
        return group
    broker.count_sent({group: len(made)})
    store = get_store(broker.directory)
    for func, header, package in made:  # here, one after another
        run_inline(header, func, broker, settings, package)
        record = store.part(bool(header.cached)).get(header.id)
        if record is None or not record["success"]:
            failed = record or make_record(
                header, failure(header.id, "its success was not saved", Cause.RAISED), 1
            )
            chains.stop(broker, store, header, failed, settings.save_limit)
            break
    return group


def _link(entry: Any) -> tuple[Any, tuple, dict]:
    """``(func, args, kwargs)`` of a chain's entry, checked."""
    if callable(entry) or isinstance(entry, str):
        return entry, (), {}
    if isinstance(entry, (tuple, list)) and 1 <= len(entry) <= 3:
        func, *rest = entry
        args = rest[0] if rest else ()
        kwargs = rest[1] if len(rest) > 1 else {}
        if isinstance(args, (tuple, list)) and isinstance(kwargs, dict):
            return func, tuple(args), kwargs
    raise ConfigurationError(
        f"a chain's entry is (func, args, kwargs), (func, args) or func; got {entry!r}"
    )


class Chain:
    """Django Q's ``Chain``: tasks to run one after another, added with ``append(func,
    *args, **kwargs)`` (returns how many), sent with ``run()`` (returns the group). Its
    ``result(wait=0)`` and ``fetch(failures=False, wait=0)`` wait for every task of it;
    ``current()`` is how many have an outcome (None before ``run()``); ``length()``,
    ``clear()``. Where Django Q goes on after a failed task, the tasks after it never run
    and are failures saying why (see ``async_chain``)."""

    def __init__(
        self,
        chain: Iterable[Any] | None = None,
        group: str | None = None,
        cached: bool | int | None = None,
        sync: bool | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.chain: list[Any] = list(chain or [])
        self.group = group or f"chain-{uuid.uuid4()}"
        self.cached = conf.settings().cached if cached is None else cached
        self.sync = conf.settings().sync if sync is None else sync
        self.broker = broker
        self.started = False

    def append(self, func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> int:
        self.chain.append((func, args, kwargs))
        return self.length()

    def length(self) -> int:
        return len(self.chain)

    def clear(self) -> None:
        self.chain = []
        self.started = False

    def run(self) -> str:
        self.group = async_chain(self.chain, self.group, self.cached, self.sync, self.broker)
        self.started = True
        return self.group

    def result(self, wait: int = 0) -> list[Any] | None:
        """Every task's result in the chain's order, a failure's error text in its place;
        None before ``run()``, or until all have an outcome (within ``wait`` ms)."""
        if not self.started:
            return None
        return result_group(self.group, True, wait, self.length(), bool(self.cached), self.broker)

    def fetch(self, failures: bool = False, wait: int = 0) -> list[Task] | None:
        """The chain's tasks once all have an outcome (within ``wait`` ms): its
        successes, and its failures too with ``failures=True``."""
        if not self.started:
            return None
        tasks = fetch_group(self.group, True, wait, self.length(), bool(self.cached), self.broker)
        if tasks is None or failures:
            return tasks
        return [task for task in tasks if task.success]

    def current(self) -> int | None:
        """How many of its tasks have an outcome; None before ``run()``."""
        if not self.started:
            return None
        return count_group(self.group, cached=bool(self.cached), broker=self.broker)


__all__ = ["async_task", "async_iter", "AsyncTask", "Iter", "async_chain", "Chain"]
