"""The outcome stream: workers send each task's outcome to their cluster as it ends.

A chunk's Future completes only when its last task does, so without the stream a fast
task's outcome would wait behind a slow task of the same chunk. Each worker process
connects once to a Unix socket in the cluster's private slot directory and sends its
outcomes there, signed with the store's key, while the chunk goes on:

- ``Sender`` (in the worker) buffers outcomes and sends the ones that are STREAM_DELAY
  old from a thread of its own, so that a chunk of fast tasks still travels whole in
  its Future (one message instead of one per task) while a task that ends before a
  slow one is sent within STREAM_DELAY;
- ``Collector`` (in the cluster) reads every worker's connection and hands the
  outcomes to the writer. A chunk's result names the outcomes already sent by their
  task id, in place of the outcome.

A worker killed while it sends leaves a partial message on its own connection only;
what it sent before is read up to the end of its connection (``drain``) before the
cluster decides what became of its tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from nbqueue.disk.records import Outcome
from nbqueue.disk.signing import sign, verify

log = logging.getLogger(__name__)

SOCKET = "outcomes.sock"  # in the cluster's slot directory
STREAM_DELAY = 0.1  # seconds an outcome waits in the worker for others to go with it
_LENGTH = struct.Struct("<I")
_PEER = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


def _frame(key: bytes, outcomes: list[Outcome]) -> bytes:
    payload = sign(key, pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL))
    return _LENGTH.pack(len(payload)) + payload


class Sender:
    """A worker's end of the stream. ``add`` an outcome as its task ends; ``end_chunk``
    returns the chunk's outcomes with those already sent replaced by their id."""

    def __init__(self, path: str, key: bytes) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(path)
        self._key = key
        self._lock = threading.Condition()
        self._pending: list[Outcome] = []
        self._since = 0.0  # when the oldest pending outcome was added
        self._sent: set[str] = set()
        self._broken = False
        threading.Thread(target=self._loop, name="nbqueue-stream", daemon=True).start()

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            if not self._pending:
                self._since = time.monotonic()
                self._lock.notify()
            self._pending.append(outcome)

    def end_chunk(self, outcomes: list[Outcome]) -> list[Outcome | str]:
        """The chunk's result: the outcomes not sent, and the ids of those sent."""
        with self._lock:
            self._pending.clear()
            sent, self._sent = self._sent, set()
        return [o.id if o.id in sent else o for o in outcomes]

    def close(self) -> None:
        """Stop the thread and close the connection (a dask chunk's own sender)."""
        with self._lock:
            self._broken = True
            self._lock.notify()
        self._socket.close()

    def _loop(self) -> None:
        while not self._broken:
            with self._lock:
                while not self._pending and not self._broken:
                    self._lock.wait()
                if self._broken:
                    return
                wait = self._since + STREAM_DELAY - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                batch, self._pending = self._pending, []
                # sent before it goes: the chunk's end then names it by id, and the
                # cluster reads what it sent before it reads the chunk's end
                self._sent.update(o.id for o in batch)
                try:
                    self._socket.sendall(_frame(self._key, batch))
                except OSError:
                    self._sent.difference_update(o.id for o in batch)
                    self._broken = True  # the cluster is gone: chunks carry everything


class Collector:
    """The cluster's end: a thread that reads every worker's connection and calls
    ``deliver(outcomes)`` with what each message holds."""

    def __init__(self, slot_dir: str, key: bytes, deliver: Callable[[list[Outcome]], None]) -> None:
        self.path = os.path.join(slot_dir, SOCKET)
        self._key = key
        self._deliver = deliver
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._waker, self._woken = socket.socketpair()  # ``close`` wakes ``run`` at once
        self._selector.register(self._woken, selectors.EVENT_READ)
        self._buffers: dict[socket.socket, bytearray] = {}
        self._pids: dict[socket.socket, int] = {}
        self._changed = threading.Condition()
        self._closed = False

    def run(self) -> None:
        try:
            while not self._closed:
                for selected, _ in self._selector.select(timeout=0.1):
                    if selected.fileobj is self._listener:
                        self._accept()
                    elif selected.fileobj is self._woken:
                        continue  # closed
                    else:
                        # a connection we registered: the selector types it as any file
                        self._read(selected.fileobj)  # type: ignore[arg-type]
        finally:
            for conn in list(self._buffers):
                self._drop(conn)
            self._selector.close()
            self._listener.close()
            self._waker.close()
            self._woken.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def close(self) -> None:
        """Have ``run`` return (the workers are gone), removing the socket."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._waker.send(b"\0")

    def drain(self, pids: set[int] | None = None, timeout: float = 2.0) -> None:
        """Wait until the connections of dead workers (``pids``, or all dead ones) are
        read to their end: every outcome they sent is then delivered."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(
                not _alive(pid) if pids is None else pid in pids for pid in self._pids.values()
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "the outcome stream of a dead worker was not read to its end within %g s",
                        timeout,
                    )
                    return
                self._changed.wait(min(left, 0.05))

    def _accept(self) -> None:
        conn, _ = self._listener.accept()
        pid = _PEER.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))[0]
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self._pids[conn] = pid
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers[conn]
        buffer += data
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if len(buffer) < _LENGTH.size + size:
                break
            message = bytes(buffer[_LENGTH.size : _LENGTH.size + size])
            del buffer[: _LENGTH.size + size]
            self._deliver(self._decode(message, self._pids[conn]))

    def _decode(self, message: bytes, pid: int) -> list[Outcome]:
        try:
            outcomes: Any = pickle.loads(verify(self._key, message))
        except Exception as exc:  # a bad signature, or what a bad pickle raises
            log.error(
                "refused a message of worker %d's outcome stream: %s; its tasks go by their chunk",
                pid,
                exc,
            )
            return []
        return outcomes

    def _drop(self, conn: socket.socket) -> None:
        with self._changed:
            self._selector.unregister(conn)
            self._buffers.pop(conn, None)
            self._pids.pop(conn, None)
            conn.close()
            self._changed.notify_all()


def _alive(pid: int) -> bool:
    from nbqueue.disk.storage import process_alive

    return process_alive(pid)
