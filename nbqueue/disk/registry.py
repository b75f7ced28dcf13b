"""The stores of this user, listed for the views that show every store (the dashboard).

A store is added the first time a process of the user opens its queue, and can be added
by path from a view (``add``). The list is one file of absolute paths, a line each, in a
private folder of the user: ``$NBQUEUE_REGISTRY`` if set, else
``$XDG_STATE_HOME/nbqueue/stores`` (``~/.local/state/nbqueue/stores``). Reading it keeps
only the stores that still exist and belong to the user, and writes that back.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

from nbqueue.disk.signing import KEY_FILE
from nbqueue.errors import StoreError

log = logging.getLogger(__name__)

KEPT = 1000  # stores listed at most, the latest added

_registered: set[str] = set()  # the directories this process has added (or found listed)


def registry_path() -> str:
    """The file that lists the stores of this user."""
    given = os.environ.get("NBQUEUE_REGISTRY")
    if given:
        return os.path.abspath(os.path.expanduser(given))
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "nbqueue", "stores")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the registry's lock (a file beside it) while it is read and rewritten."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        return []
    return list(dict.fromkeys(line for line in lines if line.startswith("/")))


def _write(path: str, directories: list[str]) -> None:
    draft = f"{path}.{os.getpid()}.draft"
    with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write("".join(d + "\n" for d in directories[-KEPT:]))
    os.replace(draft, path)


def is_own_store(directory: str) -> bool:
    """Whether ``directory`` (absolute) is an nbqueue store of this user."""
    try:
        info = os.stat(directory)
        key = os.stat(os.path.join(directory, KEY_FILE))
    except OSError:
        return False
    return info.st_uid == os.getuid() and key.st_uid == os.getuid()


def register(directory: str) -> None:
    """List the store at ``directory`` (absolute), once per process. A registry that
    cannot be written is logged, never raised: a store works without being listed."""
    if directory in _registered:
        return
    _registered.add(directory)
    path = registry_path()
    try:
        with _locked(path):
            listed = _read(path)
            if directory not in listed:
                _write(path, [*listed, directory])
    except OSError as exc:
        log.info("the store %s could not be listed in %s: %s", directory, path, exc)


def stores() -> list[str]:
    """The stores of this user, oldest listed first; those gone are dropped from the list."""
    path = registry_path()
    listed = _read(path)
    kept = [d for d in listed if is_own_store(d)]
    if len(kept) < len(listed):
        with contextlib.suppress(OSError), _locked(path):
            now = _read(path)  # what others added meanwhile stays
            _write(path, [d for d in now if d in kept or d not in listed])
    return kept


def add(directory: str) -> str:
    """List an existing store by path (from a view); return its absolute path. Raises
    StoreError naming what is wrong when it is no store of this user."""
    path = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(path):
        raise StoreError(f"there is no directory {path}: give the path of an nbqueue store")
    if not is_own_store(path):
        raise StoreError(
            f"{path} is not an nbqueue store of this user (no {KEY_FILE!r} file owned by "
            "you in it): give the directory a cluster or configure(directory=...) uses"
        )
    _registered.discard(path)
    register(path)
    return path
