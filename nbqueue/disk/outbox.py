"""The outbox: the packages this process enqueued, written behind into the queue.

``async_task`` hands its package to the outbox and returns; a background thread
commits the outbox in batches, within a few milliseconds, because one SQLite commit
per package costs several times what a batched one costs per package, and that commit
would be most of ``async_task``'s time. A cluster in the same process takes the outbox
straight into its lease (``Broker.lease``), so that its packages never wait for the
thread.

The outbox holds at most OUTBOX_BYTES, the batch being written included (it is kept if
the store refuses it): past that, the caller writes first. What the store refuses (disk
full, damaged, locked past SQLite's busy timeout) is kept, in order, and written again;
the next ``put`` or ``flush`` raises StoreError saying so. Nothing is dropped.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util
import sys
import threading
import time
from collections.abc import Callable, Iterator

from nbqueue.errors import StoreError, StoreSwapped

FLUSH_DELAY = 0.002  # seconds the thread leaves a cluster of this process to lease first
OUTBOX_BYTES = 8 << 20  # packages held at most; past it the caller writes first
WRITE_BYTES = 1 << 20  # packages in one transaction at most
RETRY_AFTER = 0.5  # seconds before the thread writes again what the store refused
# (only then: packages that came while a batch was written are no refusal)


class Outbox:
    """Packages waiting to be written, in order, and the thread that writes them.

    ``write(packages)`` puts a batch in the queue in one transaction (raising
    StoreError); ``waiting_consumer()`` says whether a cluster of this process will
    lease soon; ``written()`` is called after each batch that went in; ``behind()`` says
    whether ``write`` has more to write than packages (the broker's leases of packages
    taken from here, which it writes behind too).
    """

    def __init__(
        self,
        label: str,
        write: Callable[[list[bytes]], None],
        waiting_consumer: Callable[[], bool],
        written: Callable[[], None],
        behind: Callable[[], bool] = lambda: False,
    ) -> None:
        self.label = label
        self._write = write
        self._behind = behind  # whether ``write([])`` has other work to write behind
        self._waiting_consumer = waiting_consumer
        self._written = written
        self._packages: list[bytes] = []
        self._bytes = 0
        self._flying = 0  # bytes of the batch being written: held until it is in the queue
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: StoreError | None = None
        self.order = threading.Lock()  # held by whoever moves packages out: keeps their order

    def __len__(self) -> int:
        return len(self._packages)

    def held(self) -> int:
        """Bytes of packages not in the queue yet: waiting, or in the batch being written."""
        with self._lock:
            return self._bytes + self._flying

    def put(self, package: bytes) -> None:
        """Add a package, to be written behind; raise StoreError (without taking it) if
        earlier packages could not be written."""
        while True:
            with self._lock:
                if self.error is not None:
                    raise self.error
                held = self._bytes + self._flying
                if not held or held + len(package) <= OUTBOX_BYTES:
                    self._packages.append(package)
                    self._bytes += len(package)
                    break
            self.flush()  # full: write it now, or raise saying why the store refuses it
        if self._thread is None:
            self._start()
        self._ready.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, daemon=True, name="nbqueue-outbox")
            self._thread.start()
            atexit.register(self._flush_at_exit)
            # multiprocessing children end with os._exit, past atexit: flush there too
            multiprocessing.util.Finalize(self, self._flush_at_exit, exitpriority=10)

    def forget(self) -> None:
        """Start empty, with no thread (in a forked child: the packages are the parent's
        to write)."""
        self._packages, self._bytes, self._flying, self._thread, self.error = [], 0, 0, None, None
        self._lock, self.order, self._ready = threading.Lock(), threading.Lock(), threading.Event()

    def take(self, limit: int | None = None) -> list[bytes]:
        """The packages waiting (the first ``limit``), now the caller's (under ``order``)."""
        with self._lock:
            if limit is not None and limit < len(self._packages):
                batch, self._packages = self._packages[:limit], self._packages[limit:]
                self._bytes -= sum(len(package) for package in batch)
                return batch
            batch, self._packages, self._bytes = self._packages, [], 0
        return batch

    def _take_to_write(self) -> list[bytes]:
        """The packages waiting, to be written by the caller (under ``order``): they stay
        counted as held until ``_landed`` or ``keep`` says what became of them."""
        with self._lock:
            self._flying = self._bytes
            batch, self._packages, self._bytes = self._packages, [], 0
        return batch

    def _landed(self, size: int | None = None) -> None:
        """``size`` bytes of the batch being written are no longer held here (all of
        them: None): in the queue, or kept again by ``keep``."""
        with self._lock:
            self._flying = 0 if size is None else self._flying - size

    def poke(self) -> None:
        """Have the thread write behind soon, packages or not (see ``behind``)."""
        if self._thread is None:
            self._start()
        self._ready.set()

    def keep(self, batch: list[bytes], exc: StoreError) -> StoreError:
        """Put packages the store refused back in front, in order; the error to raise."""
        with self._lock:
            self._packages[:0] = batch
            self._bytes += sum(len(package) for package in batch)
            self._flying = 0
            what = (
                f"{len(self._packages)} task(s) enqueued by this process are not in the queue yet"
                if self._packages
                else "the leases of tasks a cluster "
                "of this process took from it are not in the queue yet"
            )
            self.error = (StoreSwapped if isinstance(exc, StoreSwapped) else StoreError)(
                f"{what} ({exc}). They are kept in memory and written again; call "
                "nbqueue.flush() to retry now"
            )
            return self.error

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[bytes]]:
        """The packages waiting, to be written by the caller in its own transaction; if
        that raises StoreError they are kept (in order) and the error raised says so."""
        with self.order:
            batch = self._take_to_write()
            try:
                yield batch
            except StoreError as exc:
                raise self.keep(batch, exc) from exc
            finally:
                self._landed()
            self.error = None

    def flush(self) -> None:
        """Write every package waiting; raise StoreError if the store cannot take them."""
        self._write_all()
        if self.error is not None:
            raise self.error

    def _write_all(self) -> None:
        """Write in transactions of at most WRITE_BYTES each, so that a store short of
        space takes what fits (one transaction for all would never fit)."""
        with self.order:
            batch = self._take_to_write()
            if not batch:
                if self._behind():
                    try:
                        self._write([])
                    except StoreError as exc:
                        self.keep([], exc)
                        return
                self.error = None  # nothing waits: no refusal to report
                return
            start = 0
            try:
                while start < len(batch):
                    end, size = start, 0
                    while end < len(batch) and (
                        end == start or size + len(batch[end]) <= WRITE_BYTES
                    ):
                        size += len(batch[end])
                        end += 1
                    try:
                        self._write(batch[start:end])
                    except StoreError as exc:
                        self.keep(batch[start:], exc)
                        return
                    self._landed(size)
                    start = end
            finally:
                self._landed()
            self.error = None
        self._written()

    def _loop(self) -> None:
        while True:
            self._ready.wait()
            if self._waiting_consumer():  # it leases the outbox itself: writing first
                time.sleep(FLUSH_DELAY)  # would cost it a commit and a wait
            self._ready.clear()
            self._write_all()
            if self.error is not None:  # the store refused them: try again shortly
                time.sleep(RETRY_AFTER)
                self._ready.set()
            # packages put while it wrote have set ``_ready``: they go at once, so a
            # package waits at most for the batch being written and its own

    def _flush_at_exit(self) -> None:
        self._write_all()
        if self._packages:
            print(
                f"nbqueue: {len(self._packages)} task(s) could not be written to "
                f"{self.label} before exit: {self.error}",
                file=sys.stderr,
            )
