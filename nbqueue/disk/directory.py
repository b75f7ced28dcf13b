"""Everything this process holds for one store directory, in one place.

A ``StoreDirectory`` owns the broker of a store directory, its store, its clusters'
heartbeats and what this process sent there (``nbqueue.disk.sent``), each made on first
use; there is one per directory (by absolute path) in a process, found by
``store_directory()``. ``drop()`` forgets all of it at once, with the directory's
signing key: for a store deleted or replaced under a cluster, and for tests and tools.

``get_broker``, ``get_store``, ``heartbeats`` and ``sent`` are the accessors every task
goes through: for a directory given by absolute path, one dict lookup finds its object.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from nbqueue import conf
from nbqueue.disk import registry
from nbqueue.disk.broker import Broker
from nbqueue.disk.heartbeats import Heartbeats
from nbqueue.disk.sent import Sent
from nbqueue.disk.signing import forget_key, private_directory
from nbqueue.disk.store import Store

T = TypeVar("T")


class StoreDirectory:
    """The broker, store, heartbeats and sent-memory of the store at ``path`` (absolute),
    each made on first use, under a lock: two threads never make two of one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._store: Store | None = None
        self._heartbeats: Heartbeats | None = None
        self._sent: Sent | None = None

    def __repr__(self) -> str:
        return f"<StoreDirectory {self.path}>"

    @property
    def broker(self) -> Broker:
        """The queue of the store (made, and the directory checked, on first use)."""
        found = self._broker
        if found is not None:
            return found
        return self._made("_broker", self._open_broker)

    def _open_broker(self) -> Broker:
        broker = Broker(self.path)
        registry.register(broker.directory)  # for the views that show every store
        return broker

    @property
    def store(self) -> Store:
        """The saved and cached outcomes of the store."""
        found = self._store
        if found is not None:
            return found
        return self._made("_store", lambda: Store(private_directory(self.path)))

    @property
    def heartbeats(self) -> Heartbeats:
        """The clusters of the store (opened without making the store: a worker reads
        its live rows through it)."""
        found = self._heartbeats
        if found is not None:
            return found
        return self._made("_heartbeats", lambda: Heartbeats(self.path))

    @property
    def sent(self) -> Sent:
        """What this process sent to the store (memory only: nothing on disk)."""
        found = self._sent
        if found is not None:
            return found
        return self._made("_sent", Sent)

    def _made(self, name: str, make: Callable[[], T]) -> T:
        """The object held in attribute ``name``, made by ``make`` under the lock if no
        other thread made it first."""
        with self._lock:
            found = getattr(self, name)
            if found is None:
                found = make()
                setattr(self, name, found)
            return found

    def close(self) -> None:
        """Close what is open: the broker first, which writes what its outbox holds."""
        try:
            if self._broker is not None:
                self._broker.close()
        finally:
            if self._store is not None:
                self._store.close()
            if self._heartbeats is not None:
                self._heartbeats.close()

    def forget_in_child(self) -> None:
        """In a forked child: a lock another thread held at the fork is free, and the
        broker forgets its parent's outbox and leases (``Broker.forget_in_child``)."""
        self._lock = threading.Lock()
        if self._broker is not None:
            self._broker.forget_in_child()


_directories: dict[str, StoreDirectory] = {}  # absolute path -> its StoreDirectory
# a path as given -> its StoreDirectory: an absolute one as it is, a relative one with the
# working directory then (a tuple); looked up with whatever a caller gives (a miss at worst)
_names: dict[object, StoreDirectory] = {}
_lock = threading.Lock()


def store_directory(directory: str | os.PathLike[str] | None = None) -> StoreDirectory:
    """The StoreDirectory of ``directory`` (default: the configured one), one per absolute
    path in this process. A relative path follows the working directory."""
    if directory is None:
        directory = conf.settings().directory
    found = _names.get(directory)
    if found is not None:
        return found
    given = os.fspath(directory)
    found = _names.get((given, os.getcwd()))
    return found if found is not None else _register(given)


def _register(given: str) -> StoreDirectory:
    name: object = given if os.path.isabs(given) else (given, os.getcwd())
    found = _names.get(name)
    if found is not None:
        return found
    path = os.path.abspath(given)
    with _lock:
        found = _directories.get(path)
        if found is None:
            found = _directories[path] = StoreDirectory(path)
        _names[name] = found
    return found


def drop(directory: str | os.PathLike[str], close: bool = True) -> None:
    """Forget all this process holds for ``directory`` (its broker, store, heartbeats,
    what it sent there, its key: read and checked again next time), closing what was
    open. ``close=False`` for a store that was deleted or replaced under it: the old
    broker must not make its files again by writing its outbox there."""
    path = os.path.abspath(os.fspath(directory))
    with _lock:
        found = _directories.pop(path, None)
        for name in [name for name, known in _names.items() if known is found]:
            del _names[name]
        forget_key(path)
    if found is not None and close:
        found.close()


# The accessors, on the path of every task: one dict lookup for a directory given by
# absolute path, then the part if it is open (else its property opens it).


def get_broker(directory: str | os.PathLike[str] | None = None) -> Broker:
    """The broker of ``directory`` (default: the configured one), shared in this process."""
    found = store_directory(directory)
    return found._broker or found.broker


def get_store(directory: str | os.PathLike[str]) -> Store:
    """The Store of ``directory``, shared in this process."""
    found = _names.get(directory) or store_directory(directory)
    return found._store or found.store


def heartbeats(directory: str | os.PathLike[str]) -> Heartbeats:
    """The heartbeats of the store at ``directory``, shared in this process."""
    found = _names.get(directory) or store_directory(directory)
    return found._heartbeats or found.heartbeats


def sent(directory: str | os.PathLike[str]) -> Sent:
    """What this process sent to the store at ``directory``."""
    found = _names.get(directory) or store_directory(directory)
    return found._sent or found.sent


def _forget_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for found in list(_directories.values()):
        found.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)
