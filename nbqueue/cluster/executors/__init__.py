"""Where chunks of tasks run: a small interface, and two implementations.

The cluster hands an executor lists of task items (see ``worker.run_chunk``) and
gets ``concurrent.futures.Future``s back; the queue, the store, signing, hooks and
progress stay with the cluster, in its process, whatever the executor.

- ``loky`` (the default): worker processes of this cluster's own. A cluster does not
  use loky's process-wide reusable executor, because joblib (which many notebooks also
  use) resizes or restarts that shared one and would kill our tasks in flight.
  Instead, like loky's reusable executor, ours replaces a pool that broke (a worker
  died) with a fresh one on the next submit.
- ``dask`` (``pip install "nbqueue[dask]"``): a ``dask.distributed`` scheduler, either
  one already running anywhere (``address=``) or a ``LocalCluster`` started for the
  cluster and closed with it. See ``DaskExecutor`` for timeouts and lost workers.

This package holds the interface (``Executor``) and ``make_executor``; ``loky.py`` and
``dask.py`` beside it each hold one executor (dask is imported only when asked for).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from nbqueue.errors import ConfigurationError, WorkerLost

BROKEN: tuple[type[BaseException], ...]
try:
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

    BROKEN = (BrokenProcessPool, ShutdownExecutorError, WorkerLost)
except ImportError:  # pragma: no cover - loky is a hard dependency
    BROKEN = (WorkerLost,)


# A recycled worker (max_rss) is replaced between two tasks and loses nothing; loky's
# warning about it, worded for memory leaks, would only alarm a notebook's user.
warnings.filterwarnings(
    "ignore", message="A worker was restarted while some jobs", category=UserWarning
)


class Executor:
    """What a cluster needs of an executor."""

    name = "base"
    dashboard: str | None = None  # a link to the executor's own dashboard, if it has one
    # seconds of work in a chunk: a task costs loky little, a chunk a few store writes
    chunk_seconds = 0.1
    # seconds past a task's deadline before its worker is killed (tier 2 of timeouts)
    kill_grace = 1.0
    # how the failure text of a task that was killed past its timeout explains it
    timeout_note = (
        "(the task did not respond to the timeout signal, so its worker process was killed)"
    )
    # called as the interpreter exits, before the executor's own exit handlers run
    at_exit: Callable[[], None] | None = None
    directory: str | None = None  # the store: the default of tasks that enqueue tasks
    # the cloudpickled (initializer, initargs) each worker process runs before its first
    # task (``worker.run_setup``), set by the cluster before it opens the executor
    setup: bytes | None = None
    # whether its workers send outcomes through the cluster's stream as tasks end
    # (``nbqueue.worker.stream``), or only in their chunk's result
    streams_outcomes = False
    # whether its workers note in their slots each task they begin (``nbqueue.disk.hosts.Slot``)
    notes_begun = False

    def open(self) -> None:
        """Connect or start what the executor needs, before the cluster's threads start.

        Raises ClusterError saying what went wrong. The loky pool spawns lazily instead.
        """

    def capacity(self) -> int | None:
        """Tasks that can run at once now, or None: the cluster's ``workers``."""
        return None

    def running(self) -> list[tuple[str, float, float, Any]]:
        """(task id, started, deadline or 0, handle for ``kill``) of each running task."""
        raise NotImplementedError

    def submit(self, items: list[tuple]) -> Future:
        """A Future of the chunk's outcomes, of the executor's own: the cluster cancels
        it to take back a chunk not started yet, which must then never run; once the
        chunk has gone to the workers, ``cancel`` fails and the executor settles it."""
        raise NotImplementedError

    def kill(self, handle: Any) -> None:
        """Stop the worker running a task past its timeout: ``handle`` comes from the
        slot directory (a pid) or from ``running()``."""
        raise NotImplementedError

    def stop_task(self, handle: Any) -> None:
        """Stop the task a worker runs because it was cancelled; by default as ``kill``."""
        self.kill(handle)

    def shutdown(self, kill: bool = False) -> None:
        """No more chunks: each one given is cancelled or settled (``kill``: at once)."""
        raise NotImplementedError

    def close(self) -> None:
        """After ``shutdown``, once the cluster has handed its tasks back: release what
        takes long to release (dask: the client and our LocalCluster). By default nothing."""


EXECUTORS = ("loky", "dask")
# the options each executor takes beside the cluster's own
EXECUTOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "loky": (),
    "dask": ("address", "client", "dashboard_address", "memory_limit", "connect_timeout"),
}


def make_executor(
    name: str, workers: int, slot_dir: str, max_rss: int | None = None, **options: Any
) -> Executor:
    """The executor called ``name``; raises ConfigurationError naming the known ones."""
    if name not in EXECUTOR_OPTIONS:
        raise ConfigurationError(
            f"unknown executor {name!r}; the executors are: "
            + ", ".join(repr(e) for e in EXECUTORS)
        )
    unknown = sorted(set(options) - set(EXECUTOR_OPTIONS[name]))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) of the {name} executor: {unknown}; "
            f"it takes {list(EXECUTOR_OPTIONS[name]) or 'none'}"
        )
    if name == "loky":
        from nbqueue.cluster.executors.loky import LokyExecutor

        return LokyExecutor(workers, slot_dir, max_rss)
    if name == "dask":
        from nbqueue.cluster.executors.dask import DaskExecutor

        return DaskExecutor(workers, slot_dir, max_rss, **options)
    raise ConfigurationError(
        f"unknown executor {name!r}; the executors are: " + ", ".join(repr(e) for e in EXECUTORS)
    )
