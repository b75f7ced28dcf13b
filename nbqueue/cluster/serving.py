"""One cluster per store directory in a process, and their end with the process.

A notebook cell that starts a cluster is run again and again: the process keeps one
running cluster per directory (``serving``), which ``Cluster.start`` consults. When the
interpreter exits, or Jupyter asks the kernel to shut down or restart (it kills the
kernel 5 s later), every running cluster stops at once and hands its tasks in flight
back to the queue uncounted, so that the next cluster runs them without waiting for
``retry``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbqueue.cluster import Cluster

log = logging.getLogger(__name__)

EXIT_GRACE = 1.0  # seconds running tasks get to finish when the process or kernel ends

serving: dict[str, Cluster] = {}  # directory -> the running cluster of this process
serving_lock = threading.RLock()
_exit_hooks_installed = False


def stop_all(why: str = "this process is exiting") -> None:
    """Stop every running cluster of this process, handing their tasks in flight back.
    Runs at exit before loky's own handler, which would wait for every running task."""
    with serving_lock:
        clusters = [c for c in serving.values() if c.running]
    for cluster in clusters:
        if len(cluster.inflight):
            log.warning(
                "%s: the cluster on %s stops and hands %d task(s) in "
                "flight back to the queue; a cluster started later runs them",
                why,
                cluster.directory,
                len(cluster.inflight),
            )
        cluster.stop(wait=EXIT_GRACE)


def install_exit_hooks() -> None:
    """Call ``stop_all`` as the interpreter exits, and in a Jupyter kernel as soon as a
    shutdown or restart is requested (the request is handled in the kernel's control
    thread, also while a cell is running; the kernel's own shutdown then terminates
    every child process, our workers included)."""
    global _exit_hooks_installed
    with serving_lock:
        if _exit_hooks_installed:
            return
        _exit_hooks_installed = True
    try:
        # private in threading (no stub): runs before the executors' exit handlers
        threading._register_atexit(stop_all)  # type: ignore[attr-defined]
    except RuntimeError:  # already exiting
        return
    kernel = _jupyter_kernel()
    if kernel is None:
        return
    original = kernel.do_shutdown

    def do_shutdown(restart: bool) -> Any:
        try:
            stop_all("the kernel is restarting" if restart else "the kernel is shutting down")
            _stop_resource_trackers()
        except BaseException:  # noqa: BLE001 - the shutdown itself must go on
            log.exception("stopping the clusters at kernel shutdown failed")
        return original(restart)

    kernel.do_shutdown = do_shutdown


def _stop_resource_trackers(timeout: float = 1.0) -> None:
    """Let loky's and multiprocessing's resource trackers end now, as they do when the
    kernel exits: they ignore SIGTERM, and ipykernel's shutdown, which SIGTERMs every
    child, would wait for them until Jupyter kills the kernel (2.5 s into a restart).

    A tracker ends once its pipe is closed, removing, with a warning on the kernel's
    stderr, every semaphore still registered with it. Semaphores still alive here are
    released first, by their own finalizers, as they would be at exit; anything sent to
    a tracker later in this exit goes nowhere, rather than to a new tracker that would
    not know it. Joined in a thread, never for long."""
    trackers = []
    for module in ("loky.backend.resource_tracker", "multiprocessing.resource_tracker"):
        tracker = getattr(sys.modules.get(module), "_resource_tracker", None)
        if tracker is not None and getattr(tracker, "_fd", None) is not None:
            trackers.append(tracker)
    if not trackers:
        return
    _release_semaphores()

    def end_all() -> None:
        for tracker in trackers:
            _end_tracker(tracker)

    thread = threading.Thread(target=end_all, name="nbqueue-trackers", daemon=True)
    thread.start()
    thread.join(timeout)


def _release_semaphores() -> None:
    """Run now the finalizers that unlink this process's named semaphores (loky's and
    multiprocessing's) and unregister them from their tracker, as at exit."""
    from multiprocessing import util

    cleanups = set()
    for module in ("loky.backend.synchronize", "multiprocessing.synchronize"):
        semlock = getattr(sys.modules.get(module), "SemLock", None)
        if semlock is not None:
            cleanups.add(semlock._cleanup)
    registry = getattr(util, "_finalizer_registry", {})
    for finalizer in list(registry.values()):
        if getattr(finalizer, "_callback", None) in cleanups:
            try:
                finalizer()
            except Exception:  # noqa: BLE001 - one semaphore must not keep the others
                log.debug("releasing a semaphore at kernel shutdown", exc_info=True)


def _end_tracker(tracker: Any) -> None:
    """Close the tracker's pipe and wait for it to end; its pipe becomes /dev/null."""
    with tracker._lock:
        if tracker._fd is None:
            return
        os.close(tracker._fd)
        tracker._fd = os.open(os.devnull, os.O_WRONLY)
        pid, tracker._pid = tracker._pid, None
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _jupyter_kernel() -> Any:
    """The ipykernel Kernel this process runs, if it is one."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return getattr(get_ipython(), "kernel", None)
