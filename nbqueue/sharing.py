"""``share``: an object stored once, given to many tasks by a small handle."""

from __future__ import annotations

import os
from typing import Any

from nbqueue.disk import shared as store
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker
from nbqueue.disk.shared import Shared
from nbqueue.disk.signing import make_directory
from nbqueue.disk.storage import writing
from nbqueue.errors import ConfigurationError


def share(obj: Any, name: str | None = None, broker: Broker | None = None) -> Shared:
    """Store ``obj`` once in the store, signed, and return a small handle to it.

    A handle given as an argument of a task, at any depth of its ``args`` and
    ``kwargs``, reaches the task as the object itself. Each worker process loads it once
    and keeps it; numpy arrays and bytes of 64 KB or more in it come back memory-mapped,
    read-only, from the store's file (bytes as a ``memoryview``), with no copy. Sharing
    an equal object under the same name again writes nothing and gives the same handle,
    in a new kernel too. ``name`` (default: the object's type) is for ``shared()``.

    Raises PackingError if ``obj`` cannot be pickled, StoreError if the store cannot be
    written (a full disk)."""
    if isinstance(obj, Shared):
        return obj
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError(f"name must be a non-empty string or None, got {name!r}")
    broker = broker or get_broker()
    broker.place.check()
    folder = os.path.join(broker.directory, store.SHARED_DIR)
    with writing(folder):
        make_directory(broker.place.fd, store.SHARED_DIR)
        return store.write(broker.directory, broker.key, obj, name or store.kind_of(obj))


def shared(name: str | None = None, broker: Broker | None = None) -> list[Shared]:
    """The objects shared in the store (those named ``name``, if given), oldest first."""
    broker = broker or get_broker()
    found = store.listing(broker.directory, broker.key)
    return found if name is None else [s for s in found if s.name == name]
