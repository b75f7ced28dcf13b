"""The loky executor: worker processes of the cluster's own.

A cluster does not use loky's process-wide reusable executor, because joblib (which
many notebooks also use) resizes or restarts that shared one and would kill our tasks
in flight. Instead, like loky's reusable executor, ours replaces a pool that broke (a
worker died) with a fresh one on the next submit.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
from concurrent.futures import Future
from functools import partial
from typing import Any

from nbqueue import worker
from nbqueue.cluster.executors import BROKEN, Executor
from nbqueue.disk import hosts

AHEAD = 2  # chunks per worker in the loky pool: the one it runs and the next, ready


class LokyExecutor(Executor):
    """``workers`` loky processes of this cluster's own, replaced when the pool breaks.

    The Futures it returns are its own. The pool is given at most ``AHEAD`` chunks per
    worker, so that a worker never waits for its next one; the rest wait here, where
    cancelling one takes it back for good. A Future of loky's is never cancelled: loky
    settles every one it holds when it shuts down with its workers killed, and one
    cancelled under it would crash its manager thread.
    """

    name = "loky"
    streams_outcomes = True
    notes_begun = True

    def __init__(self, workers: int, slot_dir: str, max_rss: int | None = None) -> None:
        self.workers = workers
        self.slot_dir = slot_dir
        self.max_rss = max_rss
        self._lock = threading.Lock()
        self._pool: Any = None
        self._waiting: collections.deque[tuple[Future, list[tuple]]] = collections.deque()
        self._sent = 0  # chunks in the pool that have not ended
        self._closed = False
        self.restarts = -1

    def _fresh_pool(self) -> Any:
        from multiprocessing import resource_tracker

        from loky import ProcessPoolExecutor
        from loky.backend import resource_tracker as loky_tracker

        self.restarts += 1
        # The resource trackers start before any worker: multiprocessing's unblocks SIGINT
        # in the thread that starts it, and a worker spawned from that thread would then
        # start with Ctrl-C (Jupyter's Interrupt, also sent at a restart) not blocked.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        try:
            resource_tracker.ensure_running()
            loky_tracker.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # timeout=None: workers stay up for the cluster's life instead of idling out,
        # since spawning one imports Python and nbqueue afresh, slower than most tasks.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            timeout=None,
            initializer=worker.prepare,
            initargs=(os.getpid(), self.max_rss, self.slot_dir, self.directory, self.setup),
        )

    def submit(self, items: list[tuple]) -> Future:
        """A Future of the chunk's outcomes; it can be cancelled until the pool has it."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the loky executor is shut down")
            queued = bool(self._waiting) or self._sent >= AHEAD * self.workers
            if queued:
                self._waiting.append((future, items))  # sent as a chunk in the pool ends
            else:
                future.set_running_or_notify_cancel()
                pool, sent = self._send(items, fresh_ok=True)
        if queued:
            self._pump()  # in case a chunk ended just now
        else:
            self._follow(future, pool, sent)
        return future

    def _send(self, items: list[tuple], fresh_ok: bool) -> tuple[Any, Future]:
        """Give the pool a chunk (under the lock); with ``fresh_ok``, a pool that broke
        or was never made is replaced by a fresh one."""
        fresh = self._pool is None
        if fresh:
            if not fresh_ok:
                raise RuntimeError("the loky pool is gone")
            self._pool = self._fresh_pool()
        try:
            sent = self._pool.submit(worker.run_chunk, self.slot_dir, items)
        except BROKEN + (RuntimeError,):
            if not fresh_ok:
                raise
            # its workers are being killed; the cluster waits for their deaths
            # before it hands their tasks back
            self._pool.shutdown(wait=False, kill_workers=True)
            self._pool, fresh = self._fresh_pool(), True
            sent = self._pool.submit(worker.run_chunk, self.slot_dir, items)
        if fresh:  # after its first submit, which registers loky's own exit handler
            self._register_at_exit()
        self._sent += 1
        return self._pool, sent

    def _register_at_exit(self) -> None:
        """loky registers, with each new pool, an exit handler that waits for every
        running task; ours, registered after it, runs first and hands them back."""
        if self.at_exit is None:
            return
        with contextlib.suppress(RuntimeError):  # the interpreter is already exiting
            # private in threading (no stub): runs before loky's own exit handlers
            threading._register_atexit(self.at_exit)  # type: ignore[attr-defined]

    def _follow(self, future: Future, pool: Any, sent: Future) -> None:
        """Pass the outcome of the pool's Future on to ours (outside the lock: a Future
        already done calls back at once)."""
        sent.add_done_callback(partial(self._ended, future, pool))

    def _ended(self, future: Future, pool: Any, sent: Future) -> None:
        """A chunk in the pool ended (in loky's thread): pass its outcome on, then give
        the pool the next waiting chunk. A pool that broke takes the chunks waiting for
        it with it, as loky does with those it holds: the cluster hands them back, and
        its next submit starts a fresh pool."""
        error = sent.exception()  # never cancelled: only ours are
        with self._lock:
            self._sent -= 1
            lost: list[Future] = []
            if isinstance(error, BROKEN) and pool is self._pool:
                lost = [waiting for waiting, _ in self._waiting]
                self._waiting.clear()
        if error is None:
            future.set_result(sent.result())
        else:
            future.set_exception(error)
        for waiting in lost:
            if waiting.set_running_or_notify_cancel():  # not cancelled meanwhile
                waiting.set_exception(error)
        self._pump()

    def _pump(self) -> None:
        """Give the pool waiting chunks while it has room for them."""
        while True:
            with self._lock:
                if self._closed or not self._waiting or self._sent >= AHEAD * self.workers:
                    return
                future, items = self._waiting.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited: it never runs
                pool = self._pool
                lost: list[Future] | None
                try:
                    pool, sent = self._send(items, fresh_ok=False)
                except Exception as exc:
                    error, lost = self._drop(pool, exc)
                    lost.insert(0, future)
                else:
                    lost = None
            if lost is not None:
                for each in lost:  # the cluster hands their tasks back
                    each.set_exception(error)
                return
            self._follow(future, pool, sent)

    def _drop(self, pool: Any, exc: Exception) -> tuple[BaseException, list[Future]]:
        """The pool refused a chunk (under the lock): it is broken, or its workers cannot
        be spawned. It goes, its workers killed, and the chunk and those waiting fail as
        with a broken pool: the error, and the waiting chunks to fail."""
        from loky.process_executor import BrokenProcessPool

        error = (
            exc
            if isinstance(exc, BROKEN)
            else BrokenProcessPool(
                f"the loky pool could not take a chunk: {type(exc).__name__}: {exc}"
            )
        )
        if pool is not None:
            pool.shutdown(wait=False, kill_workers=True)
            self._pool = None
        lost = [waiting for waiting, _ in self._waiting if waiting.set_running_or_notify_cancel()]
        self._waiting.clear()
        return error, lost

    def running(self) -> list[tuple[str, float, float, Any]]:
        """From the workers' slots: each worker writes what it runs, and until when, in a
        file of the slot directory named by its pid (the handle ``kill`` takes)."""
        if not os.path.isdir(self.slot_dir):
            return []
        states = []
        for entry in os.scandir(self.slot_dir):
            if not entry.name.isdigit():  # the host file, the stream, cancel markers
                continue
            state = hosts.read_slot(entry.path)
            if state is not None:
                states.append((state[0], state[1], state[2], int(entry.name)))
        return states

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def stop_task(self, pid: int) -> None:
        """SIGUSR1: the worker raises TaskCancelled in its task and lives on."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)

    def shutdown(self, kill: bool = False) -> None:
        """Close: the chunks waiting here are cancelled (they never ran); those in the
        pool end as it shuts down, as ShutdownExecutorError if ``kill`` kills its
        workers, else once they finish."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            waiting = [future for future, _ in self._waiting]
            self._waiting.clear()
        for future in waiting:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True, kill_workers=kill)
