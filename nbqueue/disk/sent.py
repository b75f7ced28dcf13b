"""What this process sent to each store directory, as the API remembers it: the size of
the groups it filled (a progress panel's default total), the tasks a plain ``result()``
would wait for in vain, and whether it warned that no cluster serves the store.

Only this process's own tasks: another process's are in the store, or nowhere.
"""

from __future__ import annotations

SENT_KEPT = 10_000  # unusual tasks remembered, the newest


class Sent:
    """What this process sent to one store directory; get it with ``sent()``
    (``nbqueue.disk.directory``), which drops it with the directory's other state."""

    def __init__(self) -> None:
        self.enqueued: dict[str, int] = {}  # group -> tasks this process put in it
        self.unsaved_groups: set[str] = set()  # groups given a task with save=False
        self.unusual: dict[str, str] = {}  # task id -> "unsaved"/"cached", the newest
        self.warned_no_cluster = False
        self.serve_check_at = 0.0  # when async_task next checks that a cluster serves
        self.departures_seen = 0  # the broker's ``departures`` at that check
        self.item_seconds: dict[str, float] = {}  # function -> an item's time (``batches``)

    def count(self, group: str, tasks: int = 1, unsaved: bool = False) -> None:
        """Note ``tasks`` more tasks put in ``group``; ``unsaved``: sent with ``save=False``
        (a success is then never stored, so the group's stored tasks never reach its
        count)."""
        self.enqueued[group] = self.enqueued.get(group, 0) + tasks
        if unsaved:
            self.unsaved_groups.add(group)

    def remember(self, task_id: str, how: str) -> None:
        """Note a task whose outcome a plain ``result()`` would wait for in vain (``how``:
        "unsaved" or "cached"), to say so if someone waits for it."""
        unusual = self.unusual
        unusual[task_id] = how
        if len(unusual) > SENT_KEPT:
            del unusual[next(iter(unusual))]
