"""joblib's ``Parallel`` on the cluster: ``import nbqueue.joblib`` registers the backend
``"nbqueue"``.

::

    import nbqueue.joblib
    with joblib.parallel_config(backend="nbqueue"):
        results = Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

joblib batches the calls (its auto-batching, by measured duration), and each batch runs
as one task of the clusters serving the store: stored, signed, with its progress and
time limit, in one group per ``Parallel`` call (``joblib-<uuid>``, or the ``group``
given). Options of ``async_task`` go to ``parallel_config(backend="nbqueue", ...)``
(``timeout``, ``cached``, ``broker`` ...); ``progress=True`` shows the group's panel.
A call that raised in a task raises its own exception here, as with joblib's own
backends. ``n_jobs=-1`` means the workers of the clusters serving the store.
"""

from __future__ import annotations

import contextlib
import uuid
from concurrent.futures import Future
from typing import Any

from joblib.parallel import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
    register_parallel_backend,
)

from nbqueue import conf
from nbqueue.disk.directory import get_broker, heartbeats
from nbqueue.disk.heartbeats import serves
from nbqueue.errors import ConfigurationError, TaskFailed
from nbqueue.executor import ExecutorFuture
from nbqueue.futures import future
from nbqueue.options import TaskOptions
from nbqueue.tasks import async_task


class NbqueueBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's parallel backend that sends each batch of calls as one nbqueue task."""

    supports_retrieve_callback = True  # also: return_as="generator", and timeouts
    supports_inner_max_num_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ) -> None:
        self.progress = bool(options.pop("progress", False))
        if "q_options" in options:
            raise ConfigurationError("give the options of async_task as keywords, not q_options")
        TaskOptions.take({"q_options": dict(options)}, conf.settings())  # refused here
        super().__init__(nesting_level=nesting_level)
        self.options = options
        self._futures: set[Future] = set()
        self._group: str | None = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs``; a negative one counts from the workers of the clusters serving the
        store (``-1``: all of them), as joblib counts from the CPUs."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            broker = self.options.get("broker") or get_broker()
            workers = sum(
                int(info.get("workers") or 0)
                for info in heartbeats(broker.directory).clusters()
                if serves(info)
            )
            return max((workers or 1) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **options: Any,
    ) -> int:
        self.parallel = parallel  # require="sharedmem": joblib picks its threads itself
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        """A ``Parallel`` call begins: its batches go to a group of their own."""
        self._group = self.options.get("group") or f"joblib-{uuid.uuid4()}"
        if self.progress:
            from nbqueue.display.group_panel import GroupProgress

            GroupProgress(self._group, broker=self.options.get("broker"))

    def submit(self, func: Any, callback: Any = None) -> Future:
        """Send one batch of calls as a task; joblib's callback runs when it ends."""
        options = dict(self.options, group=self._group or self.options.get("group"))
        task_id = async_task(func, q_options=options)
        cached = bool(options.get("cached"))
        fut = future(task_id, cached, options.get("broker"), ExecutorFuture)
        self._futures.add(fut)
        fut.add_done_callback(self._futures.discard)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: Future) -> Any:
        """The batch's results; a call that raised raises its own exception (its
        traceback in the task's Failure, which ``__cause__`` holds)."""
        try:
            return out.result()
        except TaskFailed as failed:
            raised = getattr(failed.task, "exception", None)
            if not isinstance(raised, BaseException):
                raise
            raise raised from failed

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised: cancel the batches not finished (their tasks too)."""
        for fut in list(self._futures):
            with contextlib.suppress(Exception):
                fut.cancel()

    def stop_call(self) -> None:
        self._group = None


register_parallel_backend("nbqueue", NbqueueBackend)

__all__ = ["NbqueueBackend"]
