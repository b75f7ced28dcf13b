"""Where chunks of tasks run: a small interface, and its loky implementation.

The cluster hands an executor lists of task items (see ``worker.run_chunk``) and
gets futures back. Each executor owns its processes: a cluster does not use loky's
process-wide reusable executor, because joblib (which many notebooks also use)
resizes or restarts that shared one and would kill our tasks in flight. Instead,
like loky's reusable executor, ours replaces a pool that broke (a worker died) with
a fresh one on the next submit.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from concurrent.futures import Future
from typing import Any

from . import worker

BROKEN: tuple[type[BaseException], ...]
try:
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError
    BROKEN = (BrokenProcessPool, ShutdownExecutorError)
except ImportError:  # pragma: no cover - loky is a hard dependency
    BROKEN = ()


# A recycled worker (max_rss) is replaced between two tasks and loses nothing; loky's
# warning about it, worded for memory leaks, would only alarm a notebook's user.
warnings.filterwarnings("ignore", message="A worker was restarted while some jobs",
                        category=UserWarning)


class Executor:
    """What a cluster needs of an executor."""

    name = "base"

    def submit(self, items: list[tuple]) -> Future:
        raise NotImplementedError

    def kill(self, pid: int) -> None:
        """Stop the worker process ``pid`` at once (a timeout it could not honour)."""
        raise NotImplementedError

    def shutdown(self, kill: bool = False) -> None:
        raise NotImplementedError


class LokyExecutor(Executor):
    """``workers`` loky processes of this cluster's own, replaced when the pool breaks."""

    name = "loky"

    def __init__(self, workers: int, slot_dir: str, max_rss: int | None = None) -> None:
        self.workers = workers
        self.slot_dir = slot_dir
        self.max_rss = max_rss
        self._lock = threading.Lock()
        self._pool: Any = None
        self.restarts = -1

    def _fresh_pool(self) -> Any:
        from loky import ProcessPoolExecutor
        self.restarts += 1
        # timeout=None: workers stay up for the cluster's life instead of idling out,
        # since spawning one costs ~0.2 s of imports.
        return ProcessPoolExecutor(max_workers=self.workers, timeout=None,
                                   initializer=worker.limit_rss, initargs=(self.max_rss,))

    def start(self) -> None:
        """Spawn the workers now rather than on the first task (~0.2 s each)."""
        with self._lock:
            if self._pool is None:
                self._pool = self._fresh_pool()
        futures = [self._pool.submit(os.getpid) for _ in range(self.workers)]
        for future in futures:
            try:
                future.result(timeout=60)
            except Exception:
                pass

    def submit(self, items: list[tuple]) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = self._fresh_pool()
            try:
                return self._pool.submit(worker.run_chunk, self.slot_dir, items)
            except BROKEN + (RuntimeError,):
                self._pool.shutdown(wait=False, kill_workers=True)
                self._pool = self._fresh_pool()
                return self._pool.submit(worker.run_chunk, self.slot_dir, items)

    def kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def shutdown(self, kill: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, kill_workers=kill)


def make_executor(name: str, workers: int, slot_dir: str, max_rss: int | None = None,
                  **options: Any) -> Executor:
    """The executor called ``name``; raises ValueError naming the known ones."""
    if name == "loky":
        if options:
            raise ValueError(f"the loky executor takes no options, got {sorted(options)}")
        return LokyExecutor(workers, slot_dir, max_rss)
    raise ValueError(f"unknown executor {name!r}; the executors are: 'loky'")
