"""The clusters of a store: the heartbeat of each running cluster, with its figures, the
record of one that stopped on its own, and requests to stop one from another process.
They live in the store's ``state`` part, whose rows expire, so a cluster that died
without a word drops out by itself (the live rows of running tasks live there too:
``nbqueue.live``)."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from nbqueue.disk.storage import checked_get, checkpoint, open_cache

_CLUSTER = "cluster:"
_STOPPED = "stopped:"
_STOP = "stop:"
STOPPED_KEPT = 86400.0  # seconds the record of a cluster that stopped on its own is kept
STOP_ASKED_KEPT = 60.0  # seconds a request to stop waits for its cluster to see it


def serves(info: dict[str, Any]) -> bool:
    """Whether a cluster, by its heartbeat, takes work from the store: it beats from its
    start, and says when it is stopping."""
    return info.get("state") != "stopping"


class Heartbeats:
    """The clusters of the store at ``directory`` (absolute); get the one of this process
    with ``heartbeats()`` (``nbqueue.disk.directory``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.state = open_cache(os.path.join(directory, "state"), expiring=True)

    def beat(self, cluster_id: str, info: dict[str, Any], ttl: float) -> None:
        """Record that a cluster is alive, with its figures, for ``ttl`` seconds.

        On a full disk the write-ahead log cannot grow: it is emptied into the database
        and the beat tried once more, rewriting its row in the space the log has, so
        ``nbqueue info`` still shows the cluster and why it waits."""
        try:
            self.state.set(_CLUSTER + cluster_id, info, expire=ttl, retry=True)
        except sqlite3.OperationalError:
            checkpoint(self.state, "RESTART")
            self.state.set(_CLUSTER + cluster_id, info, expire=ttl, retry=True)

    def forget(self, cluster_id: str) -> None:
        self.state.delete(_CLUSTER + cluster_id, retry=True)

    def record_stop(self, cluster_id: str, info: dict[str, Any]) -> None:
        """Keep, for a day, the figures of a cluster that stopped on its own (``info``
        names why, under ``"error"``), for ``nbqueue info`` to show."""
        self.state.set(
            _STOPPED + cluster_id, dict(info, stopped=time.time()), expire=STOPPED_KEPT, retry=True
        )

    def ask_to_stop(self, cluster_id: str) -> None:
        """Ask a cluster of any process to stop (it sees it within its next heartbeat)."""
        self.state.set(_STOP + cluster_id, True, expire=STOP_ASKED_KEPT, retry=True)

    def asked_to_stop(self, cluster_id: str) -> bool:
        """Whether someone asked this cluster to stop (the request is then taken)."""
        if checked_get(self.state, _STOP + cluster_id, None, "a stop request") is not True:
            return False
        self.state.delete(_STOP + cluster_id, retry=True)
        return True

    def clusters(self) -> list[dict[str, Any]]:
        """The live clusters on this directory, each as the info it last reported."""
        return [info for info in self._rows(_CLUSTER) if info is not None]

    def stopped_clusters(self) -> list[dict[str, Any]]:
        """The clusters that stopped on their own in the last day, newest first."""
        return sorted(
            (info for info in self._rows(_STOPPED) if info is not None),
            key=lambda info: -info.get("stopped", 0),
        )

    def _rows(self, prefix: str) -> list[Any]:
        """The values of the rows whose key starts with ``prefix``; a row that fails its
        signature check is left out (and logged): never unpickled."""
        return [
            checked_get(self.state, key, None, "a cluster heartbeat")
            for key in list(self.state.iterkeys())
            if isinstance(key, str) and key.startswith(prefix)
        ]

    def close(self) -> None:
        self.state.close()
