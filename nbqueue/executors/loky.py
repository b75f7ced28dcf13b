"""The loky executor: worker processes of the cluster's own.

A cluster does not use loky's process-wide reusable executor, because joblib (which
many notebooks also use) resizes or restarts that shared one and would kill our tasks
in flight. Instead, like loky's reusable executor, ours replaces a pool that broke (a
worker died) with a fresh one on the next submit.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import Future
from typing import Any

from .. import worker
from . import BROKEN, Executor


class LokyExecutor(Executor):
    """``workers`` loky processes of this cluster's own, replaced when the pool breaks."""

    name = "loky"
    streams_outcomes = True
    notes_begun = True

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
        # since spawning one imports Python and nbqueue afresh, slower than most tasks.
        return ProcessPoolExecutor(max_workers=self.workers, timeout=None,
                                   initializer=worker.prepare,
                                   initargs=(os.getpid(), self.max_rss, self.slot_dir,
                                             self.directory))

    def submit(self, items: list[tuple]) -> Future:
        with self._lock:
            fresh = self._pool is None
            if fresh:
                self._pool = self._fresh_pool()
            try:
                future = self._pool.submit(worker.run_chunk, self.slot_dir, items)
            except BROKEN + (RuntimeError,):
                # its workers are being killed; the cluster waits for their deaths
                # before it hands their tasks back
                self._pool.shutdown(wait=False, kill_workers=True)
                self._pool, fresh = self._fresh_pool(), True
                future = self._pool.submit(worker.run_chunk, self.slot_dir, items)
        if fresh and self.at_exit is not None:
            # loky registers, with each new pool, an exit handler that waits for every
            # running task; ours, registered after it, runs first and hands them back
            try:
                threading._register_atexit(self.at_exit)  # type: ignore[attr-defined]
            except RuntimeError:  # the interpreter is already exiting
                pass
        return future

    def running(self) -> list[tuple[str, float, float, Any]]:
        """From the workers' slots: each worker writes what it runs, and until when, in a
        file of the slot directory named by its pid (the handle ``kill`` takes)."""
        if not os.path.isdir(self.slot_dir):
            return []
        states = []
        for entry in os.scandir(self.slot_dir):
            if not entry.name.isdigit():  # the host file, the stream, cancel markers
                continue
            state = worker.read_slot(entry.path)
            if state is not None:
                states.append((state[0], state[1], state[2], int(entry.name)))
        return states

    def kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_task(self, pid: int) -> None:
        """SIGUSR1: the worker raises TaskCancelled in its task and lives on."""
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def shutdown(self, kill: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, kill_workers=kill)
