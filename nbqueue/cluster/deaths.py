"""Which workers died, and with which task: read from the workers' slots.

When a loky worker dies, loky fails every chunk of the pool at once and kills the
pool's other workers right after. So the workers already dead when the first chunk
fails are the ones that died first, and only the tasks their slots name are charged
an attempt; the others were collateral and go back to the queue uncounted. The live
workers of a broken pool are *doomed*: their tasks are handed back only once they are
dead, or one could still run beside its next delivery.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from nbqueue.disk.hosts import read_slot
from nbqueue.disk.storage import process_alive

log = logging.getLogger(__name__)


class Deaths:
    """The dead workers' tasks of one cluster, by task id, and the doomed workers."""

    def __init__(self, slot_dir: str) -> None:
        self.slot_dir = slot_dir
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # task id -> why its worker died
        self._doomed: set[int] = set()  # pids of live workers of a pool that broke

    def note(self, reason: str) -> None:
        """Read the slots: a dead worker's task was running when it died; a live worker
        is doomed (loky kills it next). ``reason``: loky's error, with the exit codes."""
        codes = [line.strip() for line in reason.splitlines() if "exit codes" in line]
        why = codes[0] if codes else "it was killed, ran out of memory or crashed"
        with self._lock:
            for entry in os.scandir(self.slot_dir):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if process_alive(pid):
                    self._doomed.add(pid)
                    continue
                state = read_slot(entry.path)
                if state is not None:
                    self._running.setdefault(
                        state[0], f"the worker process running this task died ({why})"
                    )
                os.unlink(entry.path)

    def why(self, task_id: str) -> str | None:
        """Why the worker running ``task_id`` died, once (None: it was not running)."""
        with self._lock:
            return self._running.pop(task_id, None)

    def await_doomed(self, timeout: float = 5.0) -> None:
        """Wait until the doomed workers are dead (SIGKILL them past ``timeout``; one that
        outlives its SIGKILL by another ``timeout``, stuck in the kernel, is logged)."""
        with self._lock:
            doomed, self._doomed = self._doomed, set()
        deadline, killed = time.monotonic() + timeout, False
        while doomed:
            doomed = {pid for pid in doomed if process_alive(pid)}
            if not doomed:
                break
            if time.monotonic() > deadline:
                if killed:
                    log.error(
                        "worker(s) %s outlived SIGKILL for %g s; their "
                        "tasks go back to the queue all the same",
                        sorted(doomed),
                        timeout,
                    )
                    break
                for pid in doomed:
                    kill(pid)
                deadline, killed = time.monotonic() + timeout, True
            time.sleep(0.005)
        with self._lock:
            for entry in os.scandir(self.slot_dir):
                if entry.name.isdigit() and not process_alive(int(entry.name)):
                    os.unlink(entry.path)


def kill(pid: int) -> None:
    """SIGKILL a worker; one already gone (or a pid no longer ours) is left alone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
