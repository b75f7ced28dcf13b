"""The functions every system's workers run in the benchmarks.

They live in a module of their own (imported as ``workloads``, with ``benchmarks/`` on
``sys.path`` and ``PYTHONPATH``), so that each system pickles them by reference and its
workers import them: loky, nbqueue, huey, dask and django-q2 all run the same code.
"""

from __future__ import annotations

import os
import time


def noop(x=None):
    """A task that does nothing: it returns its argument (never None, for huey's sake)."""
    return x


def spin(ms: float = 10.0) -> int:
    """Pure-Python work for ``ms`` milliseconds of this thread's CPU time.

    Measured in CPU time, not wall time, so that each task does the same work whatever
    else runs on the machine: a busy machine shows up as lower efficiency, not as
    shorter tasks.
    """
    end = time.thread_time() + ms / 1000.0
    n = 0
    while time.thread_time() < end:
        for _ in range(100):
            n += 1
    return n


def make_bytes(size: int) -> bytes:
    """A result of ``size`` bytes (the payload workload, results out)."""
    return bytes(size)


def size_of(data: bytes) -> int:
    """The size of an argument (the payload workload, arguments in)."""
    return len(data)


def square(x: int) -> int:
    """The sweep workload's item: ``x * x`` (the sweep of no-op items)."""
    return x * x


def busy_square(x: int, ms: float) -> int:
    """``x * x`` after ``ms`` milliseconds of work (the sweep of 1 ms items)."""
    spin(ms)
    return x * x


def _memory_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def array_element(array, i):
    """One element of a (shared) array, with the private memory of the process that read
    it (RssAnon, KB): the shared-array workload's task."""
    return float(array[i]), os.getpid(), _memory_kb("RssAnon")


def element_noop(nothing, i):
    """The shared-array workload's baseline: the same call with no array."""
    return float(i), os.getpid(), _memory_kb("RssAnon")
