"""The folders of the cluster hosts of this machine, in the temp directory.

Each cluster keeps its workers' slots, its outcome stream and its cancel markers in a
folder of its own, ``nbqueue-<id8>-*``, with a ``host`` file naming the host's pid,
the cluster and its store. The folder outlives a host killed with SIGKILL: the
reaper of that host's expired leases reads in its slots which tasks the workers
began (``Slot.begin``), so that only those are charged an attempt; then the
folder is no longer needed and is swept, as are those a cluster start finds dead.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from nbqueue.disk.storage import process_alive

log = logging.getLogger(__name__)

PREFIX = "nbqueue-"
HOST_FILE = "host"
CANCELLED_DIR = "cancelled"  # in the slot directory: a file per cancelled task id
# seq (odd while writing), started, deadline (0 = none), task id
SLOT = struct.Struct("<Qdd40s")
BEGUN = 1024  # lease tokens of the tasks a worker began, kept in a ring after its slot
TOKEN = struct.Struct("40s")  # one token of that ring, NUL-padded (a token is at most 35)


class Slot:
    """This worker's shared-memory record of the task it runs (tier 2 of timeouts), and
    of the last BEGUN tasks it began (for the reaper of a dead host's leases)."""

    def __init__(self, path: str) -> None:
        size = SLOT.size + BEGUN * TOKEN.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._seq = 0
        self._begun = 0  # tasks begun: the next one goes to entry _begun % BEGUN

    def begin(self, token: str) -> None:
        """Note that this worker begins the task of lease ``token`` (before anything of
        it runs, its unpickling included)."""
        TOKEN.pack_into(self._map, SLOT.size + self._begun % BEGUN * TOKEN.size, token.encode())
        self._begun += 1

    def mark(self, task_id: str, started: float, deadline: float) -> None:
        self._seq += 1
        SLOT.pack_into(self._map, 0, self._seq, started, deadline, task_id.encode())
        self._seq += 1
        struct.pack_into("<Q", self._map, 0, self._seq)

    def clear(self) -> None:
        self.mark("", 0.0, 0.0)


def read_slot(path: str) -> tuple[str, float, float] | None:
    """(task_id, started, deadline) of the task a worker runs now, or None when idle."""
    try:
        with open(path, "rb") as src:
            for _ in range(3):
                data = src.read(SLOT.size)
                if len(data) < SLOT.size:
                    return None
                seq, started, deadline, raw = SLOT.unpack(data)
                if seq % 2 == 0:
                    task_id = raw.rstrip(b"\0").decode()
                    return (task_id, started, deadline) if task_id else None
                src.seek(0)
    except OSError:
        return None
    return None


def read_begun(path: str) -> set[str]:
    """The lease tokens of the last BEGUN tasks the worker of slot ``path`` began."""
    try:
        with open(path, "rb") as src:
            src.seek(SLOT.size)
            data = src.read(BEGUN * TOKEN.size)
    except OSError:
        return set()
    size = TOKEN.size
    tokens = (data[i : i + size].rstrip(b"\0") for i in range(0, len(data) - size + 1, size))
    return {token.decode("ascii", "replace") for token in tokens if token}


class Host(NamedTuple):
    """A host's folder, as its ``host`` file describes it."""

    path: str
    pid: int
    cluster: str  # the cluster id, the owner of its lease rows
    directory: str  # the store it served
    slots: bool  # whether its workers note in their slots the tasks they begin


def make_folder(cluster_id: str) -> str:
    """A new host folder for cluster ``cluster_id`` of this process (0700)."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{cluster_id[:8]}-")


def describe(path: str, cluster_id: str, directory: str, slots: bool) -> None:
    """Write the host file of the folder ``path``: this process hosts cluster
    ``cluster_id``, serving the store ``directory``; ``slots``: its workers note what
    they begin. Before any worker starts: until then, the folder is no one's to read."""
    text = json.dumps(
        {"pid": os.getpid(), "cluster": cluster_id, "directory": directory, "slots": slots}
    )
    fd = os.open(os.path.join(path, HOST_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _hosts(prefix: str = PREFIX) -> Iterator[Host]:
    """The host folders of this user whose name starts with ``prefix`` and whose host
    file reads; another user's folders, and folders without a host file, are never
    ours to read or sweep."""
    top = tempfile.gettempdir()
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    uid = os.getuid()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            with open(os.path.join(entry.path, HOST_FILE), "rb") as src:
                found = json.loads(src.read(65536))
            yield Host(
                entry.path,
                int(found["pid"]),
                str(found["cluster"]),
                str(found["directory"]),
                bool(found["slots"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue


def _workers(path: str) -> list[str]:
    """The slot files of a host folder, each named by its worker's pid."""
    try:
        return [entry.path for entry in os.scandir(path) if entry.name.isdigit()]
    except OSError:
        return []


def begun(cluster_id: str) -> set[str] | None:
    """The lease tokens whose task a worker of cluster ``cluster_id`` began, from its
    folder on this machine, once its host and workers are all dead; None when that is
    not known for good: no folder of it here (a host on another machine, or whose
    workers do not note what they begin), or a worker of it still alive (a stalled host,
    or an orphan about to exit), which may begin more."""
    for host in _hosts(f"{PREFIX}{cluster_id[:8]}-"):
        if host.cluster == cluster_id and host.slots and dead(host):
            tokens: set[str] = set()
            for slot in _workers(host.path):
                tokens |= read_begun(slot)
            return tokens
    return None


def dead(host: Host) -> bool:
    """Whether the host and every worker of it are gone (a worker outlives its host
    by up to ``worker.HOST_WATCH``)."""
    return not process_alive(host.pid) and not any(
        process_alive(int(os.path.basename(slot))) for slot in _workers(host.path)
    )


def sweep(directory: str, owners: Iterable[str]) -> int:
    """Remove the folders of dead hosts that no one needs any more: those of the store
    at ``directory`` whose cluster holds none of its leases (``owners``: the owners of
    its lease rows), and those of stores that no longer exist. The folders of dead hosts
    of other stores wait for those stores' clusters. Returns how many were removed."""
    holding = set(owners)
    removed = 0
    for host in _hosts():
        if host.directory == directory:
            if host.cluster in holding:
                continue
        elif os.path.isdir(host.directory):
            continue
        if dead(host):
            shutil.rmtree(host.path, ignore_errors=True)
            removed += 1
            log.debug("swept the folder %s of dead cluster host %d", host.path, host.pid)
    return removed
