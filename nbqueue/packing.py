"""What a task becomes before it is queued: its function and arguments pickled, and its
signed ``Header``, made of its ``TaskOptions``.

Every ``async_task`` goes through here, so plain arguments are pickled with ``pickle``
(cloudpickle's hooks cost many times more), and a function of an importable module
travels by its dotted path.
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

import cloudpickle

from nbqueue.dependencies import found
from nbqueue.disk import blobs
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import sent
from nbqueue.disk.names import new_batch_id, new_task_id
from nbqueue.disk.records import Header, encode_header
from nbqueue.disk.storage import writing
from nbqueue.errors import ConfigurationError, PackingError
from nbqueue.options import TaskOptions
from nbqueue.worker.callables import check_callable, dotted_path, keep_local_hook
from nbqueue.worker.tracebacks import WithSources


def _pickle(what: str, value: Any) -> bytes:
    try:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except ConfigurationError:  # an argument refused itself, saying why
        raise
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


def pickle_calls(calls: Any) -> bytes:
    """The arguments of a batch's calls (see ``batches``), pickled as one value: with
    ``pickle`` unless it cannot, or it names something of ``__main__`` (a notebook's
    class, which a worker cannot import): then with cloudpickle, which ships those by
    value."""
    try:
        packed = pickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL)
        if b"__main__" not in packed:
            return packed
    except Exception:
        pass
    try:
        return cloudpickle.dumps(calls, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        each = [((x,), {}) for x in calls[1]] if type(calls) is tuple else calls
        for args, kwargs in each:
            pickle_arguments(args, kwargs)  # raises PackingError naming the argument
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


def function_of(func: Any, options: TaskOptions) -> tuple[str, str | None, bytes | None]:
    """(display name, dotted path, pickled function) of a task function, checked."""
    func_name, func_ref = check_callable("the task function", func, strict=not options.sync)
    if func_ref is None:
        func_ref = dotted_path(func)
    if func_ref is not None:
        return func_name, func_ref, None
    # with where its code comes from, for tracebacks with file names and cell lines
    return func_name, None, _pickle("the task function", WithSources(func))


def make_package(
    func: Any,
    args: tuple,
    kwargs: dict,
    options: TaskOptions,
    function: tuple[str, str | None, bytes | None] | None = None,
    arguments: bytes | None = None,
    items: int = 0,
) -> tuple[Header, bytes]:
    """The header and signed package of one task (``function``: ``function_of``'s answer,
    when many tasks share the function, as in ``async_iter``; ``arguments``: the pickled
    arguments, when made already). ``items``: a batch of that many items, whose
    ``arguments`` are the pickled list of their pickled arguments."""
    broker = options.broker
    func_name, func_ref, func_bytes = function or function_of(func, options)
    hook = options.hook
    hook_name = hook_ref = hook_bytes = None
    if hook is not None:
        hook_name, hook_ref = check_callable("option 'hook'", hook)
    task_id, name = new_batch_id() if items else new_task_id()
    queued = not options.sync  # large arguments of a queued task: a file, see ``blobs``
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
        if not (broker.has_local_consumer or options.sync):
            hook_bytes = _pickle("option 'hook'", hook)
    if options.save is False or options.cached:
        sent(broker.directory).remember(task_id, "cached" if options.cached else "unsaved")
    header = Header(
        task_id,
        options.task_name or name,
        func_name,
        func_ref,
        func_bytes,
        packed,
        hook_name,
        hook_ref,
        hook_bytes,
        options.group,
        options.save,
        options.cached,
        options.timeout,
        options.ack_failure,
        options.max_attempts,
        time.time(),
        options.iter,
        items=items,
        after=found(),
    )
    return header, encode_header(broker.key, header)
