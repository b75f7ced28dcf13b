"""What the dashboard's routes answer, without the web server: the stores of this user,
the figures of one (``nbqueue.figures``), and the actions a view may take on it.

A store is reached only through the registry (``nbqueue.disk.registry``), by an id made
from its path: no request names a path the registry does not list, and a store of
another user is never listed. Every call reads or writes the store directly, so it runs
in a thread, never on the web server's event loop.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from nbqueue import control
from nbqueue.disk import registry
from nbqueue.disk.directory import get_broker, heartbeats
from nbqueue.errors import DashboardRequestError, NbqueueError, TaskStillRunning
from nbqueue.figures import StoreFigures, cluster_figures


def store_id(directory: str) -> str:
    """The id of a store in URLs: a short hash of its absolute path."""
    return hashlib.blake2b(directory.encode(), digest_size=8).hexdigest()


class Views:
    """The stores of this user as the dashboard shows them; one per server process,
    keeping each store's ``StoreFigures`` (its rates need the reads before)."""

    def __init__(self, directories: list[str] | None = None) -> None:
        self._figures: dict[str, StoreFigures] = {}
        self._lock = threading.Lock()
        for directory in directories or ():
            registry.add(directory)

    def stores(self) -> list[dict[str, str]]:
        return [{"id": store_id(d), "directory": d} for d in registry.stores()]

    def _directory(self, sid: str) -> str:
        for directory in registry.stores():
            if store_id(directory) == sid:
                return directory
        raise DashboardRequestError(404, f"no store of this user has the id {sid}: reload the page")

    def _store_figures(self, sid: str) -> StoreFigures:
        directory = self._directory(sid)
        with self._lock:
            figures = self._figures.get(sid)
            if figures is None:
                figures = self._figures[sid] = StoreFigures(directory)
        return figures

    def add(self, directory: Any) -> dict[str, str]:
        if not isinstance(directory, str) or not directory.strip():
            raise DashboardRequestError(
                400, "give the path of a store directory, e.g. /home/me/work/.nbqueue"
            )
        try:
            path = registry.add(directory.strip())
        except NbqueueError as exc:
            raise DashboardRequestError(400, str(exc)) from None
        return {"id": store_id(path), "directory": path}

    def store(self, sid: str) -> dict[str, Any]:
        """The figures of one store (``figures.StoreFigures.read``) and its id."""
        return dict(self._store_figures(sid).read(), id=sid)

    def task(self, sid: str, task_id: str) -> dict[str, Any]:
        """One task's state, all of its output so far and its traceback, if it failed."""
        from nbqueue.live import status

        directory = self._directory(sid)
        found = status(task_id, get_broker(directory))
        if found["state"] == "unknown":
            raise DashboardRequestError(404, f"no task {task_id} in {directory}")
        record = None
        if found["state"] in ("failed", "cancelled"):
            from nbqueue.disk.directory import get_store

            store = get_store(directory)
            record = store.saved.get(task_id) or store.cached.get(task_id)
        return {
            "id": found["id"],
            "name": found["name"],
            "func": found["func"],
            "group": found["group"],
            "state": found["state"],
            "output": found["output"],
            "traceback": (record or {}).get("traceback", ""),
        }

    # -- actions -------------------------------------------------------------------

    def stop(self, sid: str, cluster_id: str) -> dict[str, Any]:
        directory = self._directory(sid)
        beats = heartbeats(directory)
        live = {info["id"]: info for info in beats.clusters()}
        if cluster_id not in live:
            raise DashboardRequestError(
                404, f"cluster {cluster_id[:8]} is not running on {directory}"
            )
        if cluster_figures(live[cluster_id])["state"] != "running":
            return {"ok": False, "message": f"cluster {cluster_id[:8]} is already stopping"}
        beats.ask_to_stop(cluster_id)
        label = live[cluster_id].get("label") or cluster_id[:8]
        return {"ok": True, "message": f"asked cluster {label} to stop: it stops within seconds"}

    def cancel(self, sid: str, task_id: str) -> dict[str, Any]:
        broker = get_broker(self._directory(sid))
        if control.cancel(task_id, broker):
            return {"ok": True, "message": f"cancelled task {task_id[:8]}"}
        return {"ok": False, "message": f"task {task_id[:8]} has finished: nothing to cancel"}

    def retry(self, sid: str, task_id: str) -> dict[str, Any]:
        broker = get_broker(self._directory(sid))
        try:
            sent = control.retry(task_id, False, broker) or control.retry(task_id, True, broker)
        except TaskStillRunning as exc:
            raise DashboardRequestError(409, str(exc)) from None
        if sent:
            return {"ok": True, "message": f"task {task_id[:8]} is queued again"}
        return {"ok": False, "message": f"task {task_id[:8]} is no failure (any more)"}

    def retry_group(self, sid: str, group: str) -> dict[str, Any]:
        broker = get_broker(self._directory(sid))
        count = control.retry_group(group, False, broker) + control.retry_group(group, True, broker)
        if count:
            return {"ok": True, "message": f"{count} failed task(s) of {group} queued again"}
        return {"ok": False, "message": f"group {group} has no failure to retry"}
