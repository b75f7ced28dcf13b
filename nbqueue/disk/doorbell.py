"""Doorbells: a process that enqueued work wakes the clusters of other processes at once.

A cluster polls the queue (``poll``: 1 ms right after a task finished, backing off to
50 ms when idle); a cluster in the enqueuing process is woken by an event instead. For
the others, each cluster binds a Unix datagram socket, its *bell*, in the store's
private ``bells`` directory, and a process that wrote packages into the queue sends one
byte to every bell it finds there (``Bells.ring``, after the transaction): the cluster's
``Doorbell`` thread sets its wakeup event, and it leases at once. Polling stays as the
fallback: a bell that cannot be made (a path too long for a Unix socket) or a ring that
is lost only costs the time to the next poll. The directory is private to its owner, so
only the owner's processes can ring, and what they send is never read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

BELLS = "bells"  # in the store directory
LIST_EVERY = 1.0  # seconds a listing of the bells is used before it is read again

log = logging.getLogger(__name__)


class Doorbell:
    """A cluster's bell: ``ring()`` is called whenever another process rings it."""

    def __init__(self, directory: str, name: str, ring: Callable[[], None]) -> None:
        folder = os.path.join(directory, BELLS)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.path = os.path.join(folder, name)
        self._ring = ring
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(self.path)  # OSError: the path is too long for a socket
            os.chmod(self.path, 0o600)  # made as 0777 less the umask
        except OSError:
            self._socket.close()
            raise
        self._socket.settimeout(0.5)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="nbqueue-doorbell", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            try:
                self._socket.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if not self._closed:
                self._ring()

    def close(self) -> None:
        """Stop listening: the thread is woken by a last ring of its own (closing the
        socket would not interrupt its wait), then the bell goes."""
        self._closed = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.setblocking(False)
            with contextlib.suppress(OSError):
                waker.sendto(b"\0", self.path)
        self._thread.join(2)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._socket.close()


class Bells:
    """The bells of a store's clusters, rung by a process after it enqueued."""

    def __init__(self, directory: str) -> None:
        self.folder = os.path.join(directory, BELLS)
        self.own: set[str] = set()  # the bells of this process's clusters: woken directly
        self._paths: list[str] = []
        self._listed = -LIST_EVERY
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake every cluster of another process on this store (never blocks, never
        raises: a cluster that misses it finds the work at its next poll)."""
        with self._lock:
            now = time.monotonic()
            if now - self._listed > LIST_EVERY:
                self._listed = now
                try:
                    names = os.listdir(self.folder)
                except OSError:
                    names = []
                self._paths = [
                    os.path.join(self.folder, n)
                    for n in names
                    if os.path.join(self.folder, n) not in self.own
                ]
            if not self._paths:
                return
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            for path in list(self._paths):
                try:
                    self._socket.sendto(b"\0", path)
                except BlockingIOError:
                    pass  # its queue is full: it has been rung already
                except (ConnectionRefusedError, FileNotFoundError):
                    self._paths.remove(path)  # a cluster that died: nobody answers
                    _remove(path)
                except OSError:
                    pass


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
