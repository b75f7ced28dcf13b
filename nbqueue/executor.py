"""``nbqueue.Executor``: a ``concurrent.futures.Executor`` whose calls run as tasks on the
clusters serving the store, for libraries that take an executor.

``submit`` is ``async_task`` with the executor's options (given as ``q_options``, so every
keyword of the call goes to the function) and returns the task's future, a real
``concurrent.futures.Future`` (``nbqueue.future``): ``concurrent.futures.wait``,
``as_completed`` and ``asyncio.wrap_future`` take it. ``map`` is the standard one, over
``submit``; with ``chunksize`` above 1, as ``ProcessPoolExecutor.map``, each task runs that
many calls, which costs one task's overhead for them all. A failed task's future raises
``TaskFailed``, whose ``.task`` is the Failure.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nbqueue import conf, control
from nbqueue.errors import ConfigurationError
from nbqueue.futures import TaskFuture, future
from nbqueue.options import TaskOptions
from nbqueue.tasks import async_task


class ExecutorFuture(TaskFuture):
    """The future of a task sent by an ``Executor``: cancelling it cancels the task too
    (one still queued never runs; one running is stopped), as an executor's future
    promises that its call does not go on."""

    def cancel(self) -> bool:
        if not super().cancel():
            return False  # it has its outcome already
        from nbqueue.disk.directory import get_broker

        control.cancel(self.task_id, get_broker(self.directory))
        return True


class Executor(concurrent.futures.Executor):
    """Runs calls as tasks on the clusters serving the store; ``options`` are those of
    ``async_task`` (``group``, ``timeout``, ``cached``, ``broker`` ...), for every call.

    Start a cluster as usual (``nbqueue.Cluster().start()`` or ``nbqueue cluster``): the
    executor only sends. ``shutdown(wait=True)`` waits for the calls it sent;
    ``cancel_futures=True`` cancels those not finished.
    """

    def __init__(self, **options: Any) -> None:
        if "q_options" in options:
            raise ConfigurationError(
                "give Executor the options of async_task as keywords, not in q_options"
            )
        TaskOptions.take({"q_options": dict(options)}, conf.settings())  # refused here
        self._options = options
        self._cached = bool(options.get("cached"))
        self._futures: set[TaskFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Send ``fn(*args, **kwargs)`` as a task; return its future."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        task_id = async_task(fn, *args, q_options=dict(self._options), **kwargs)
        fut = future(task_id, self._cached, self._options.get("broker"), ExecutorFuture)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._discard)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn`` over the items (one argument from each iterable, to the shortest), as
        tasks sent at once; results in input order. ``chunksize`` calls run in each task
        (its outcome is then that of the chunk: a call that raises fails it, and the
        iterator raises ``TaskFailed`` at its first result). ``timeout``: seconds from
        this call to each result."""
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ConfigurationError(f"chunksize must be a positive int, got {chunksize!r}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables, strict=False)
        chunks = iter(lambda: list(itertools.islice(calls, chunksize)), [])
        futures = [self.submit(run_calls, fn, chunk) for chunk in chunks]
        return _flattened(futures, deadline)

    def _discard(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._futures.discard(fut)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; ``cancel_futures``: cancel the calls not finished;
        ``wait``: return once every call sent has an outcome (or is cancelled)."""
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        if wait:
            concurrent.futures.wait(pending)

    def __repr__(self) -> str:
        state = "shut down" if self._shutdown else f"{len(self._futures)} pending"
        return f"<nbqueue.Executor {state} options={self._options!r}>"


def run_calls(fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    """One chunk of ``Executor.map``: ``fn`` called with each tuple of arguments."""
    return [fn(*args) for args in calls]


def _flattened(futures: list[TaskFuture], deadline: float | None) -> Iterator[Any]:
    """The results of chunks, one call at a time; the chunks not read are cancelled when
    the iterator ends early."""
    try:
        for fut in futures:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            yield from fut.result(left)
    finally:
        for fut in futures:
            fut.cancel()


__all__ = ["Executor", "ExecutorFuture"]
