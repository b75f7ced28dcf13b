"""What runs on a dask worker: a chunk of tasks, in one of the worker's threads.

The dask counterpart of ``worker.run_chunk``: no slot (dask reports what runs through
start events instead), and each chunk with its own connection to the cluster's outcome
stream when the worker shares the cluster's machine (its own LocalCluster).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from nbqueue import worker
from nbqueue.disk.records import Item, Outcome
from nbqueue.worker import capture
from nbqueue.worker.stream import SOCKET, Sender


def run_on_dask(
    topic: str,
    key: str,
    items: list[Item],
    directory: str | None = None,
    host: int | None = None,
    slot_dir: str | None = None,
    setup: bytes | None = None,
) -> Sequence[Outcome | str]:
    """``run_chunk`` in a thread of a dask worker (no slot): each start is an event on
    ``topic``; on the cluster's machine (``slot_dir``) cancelled tasks are skipped."""
    from distributed import get_worker

    try:
        here: Any = get_worker()
    except ValueError:  # not on a worker (a test calling it directly)
        here = None
    pid = os.getpid()
    outcomes: list[Outcome] = []
    worker.use_store(directory, host)
    worker.set_setup(setup)
    worker.run_setup()  # once per dask worker process
    capture.install()
    capture.live_rows(directory)
    sender = _chunk_sender(slot_dir)
    try:
        for item in items:
            if slot_dir is not None and worker.cancelled(slot_dir, item[0], item[5]):
                outcomes.append(worker.skipped(item))
            else:
                if here is not None:
                    here.log_event(topic, [key, item[0], pid, here.address])
                markers = worker.cancel_markers(slot_dir) if slot_dir and item.items else None
                outcomes.append(worker.execute(item, None, cancels=markers))
            if sender is not None:
                sender.add(outcomes[-1])
        return outcomes if sender is None else sender.end_chunk(outcomes)
    finally:
        if sender is not None:
            sender.close()


def _chunk_sender(slot_dir: str | None) -> Sender | None:
    """A dask chunk's own connection to the outcome stream (its threads run chunks side
    by side), on the cluster's machine; None without one."""
    key = worker.store_key()
    if slot_dir is None or key is None:
        return None
    try:
        return Sender(os.path.join(slot_dir, SOCKET), key)
    except OSError:
        return None
