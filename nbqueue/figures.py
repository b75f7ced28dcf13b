"""The figures of a store, one model for every view: the group and cluster panels, the
tqdm bar, ``nbqueue info`` and the dashboard all read them here, so they agree.

- a group: its tasks done, failed (not counting those cancelled), cancelled, running
  and in all (``total``: what every process sent to it), its rate over the last
  RATE_WINDOW seconds and the time left; final once every task has an outcome;
- a cluster: its last heartbeat, named ``running``, ``stopping``, ``stale`` (running,
  but no beat for STALE_AFTER seconds) or ``stopped`` (on its own, with the error);
- a store: its clusters, its groups newest first, its running tasks and its latest
  failures (``StoreFigures.read``, plain JSON for the dashboard).

Only metadata is read: states, counts, names, progress, output and traceback text. No
task's arguments or result is unpickled, so a view needs none of the user's modules.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, NamedTuple

from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, heartbeats, sent
from nbqueue.disk.heartbeats import serves
from nbqueue.disk.records import Record
from nbqueue.disk.store import Part
from nbqueue.live import running

RATE_WINDOW = 5.0  # seconds of finished tasks that "tasks/s" counts, in every view
STALE_AFTER = 3.0  # seconds without a heartbeat after which a cluster shows as stale
GROUPS_SHOWN = 50  # the newest groups of a store in its figures
FAILURES_SHOWN = 50  # the latest failures
OUTPUT_SHOWN = 4000  # characters of a running task's output


class RateMeter:
    """Tasks finished per second over a sliding window, so every view means the same by it.

    Fed samples of (time, tasks finished so far); the rate is over the last ``window``
    seconds, or since the first sample while the meter is younger than that.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, finished: int, when: float | None = None) -> float:
        """Record ``finished`` tasks so far at ``when`` (``time.monotonic()``); return the rate."""
        now = time.monotonic() if when is None else when
        with self._lock:
            samples = self._samples
            samples.append((now, finished))
            # keep the newest sample at or before the window's start: the rate spans it
            while len(samples) > 1 and samples[1][0] <= now - self.window:
                samples.popleft()
        return self.rate()

    @property
    def measured(self) -> bool:
        """Whether the rate spans some time (two samples or more): 0 before that is no
        measure."""
        return len(self._samples) >= 2

    def rate(self) -> float:
        """Tasks per second between the oldest kept sample and the newest one; 0 before two."""
        with self._lock:
            if len(self._samples) < 2:
                return 0.0
            (first, before), (last, after) = self._samples[0], self._samples[-1]
        if last <= first:
            return 0.0
        return max(after - before, 0) / (last - first)


class GroupFigures(NamedTuple):
    """A group at one moment. ``failed`` does not count the cancelled tasks."""

    name: str
    done: int
    failed: int
    cancelled: int
    running: int
    total: int
    rate: float  # tasks finished per second over the last RATE_WINDOW seconds
    eta: float | None  # seconds left at that rate; None when unknown or finished
    final: bool  # every task sent to it has an outcome: these figures stay
    served: bool = True  # some cluster takes work from its store now
    measured: bool = True  # the rate spans some time: read more than once

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def state(self) -> str:
        """``running`` (a cluster runs some of it), ``waiting`` (none runs now),
        ``finished`` or ``finished with failures``."""
        if self.final:
            return "finished with failures" if self.failed or self.cancelled else "finished"
        if self.running:
            return "running"
        return "waiting" if self.served else "waiting: no cluster serves its store"

    def as_json(self) -> dict[str, Any]:
        """Plain JSON; no rate (None) for a group finished, or not measured yet."""
        figures = self._asdict()
        shown = self.measured and not self.final
        figures.update(state=self.state, rate=round(self.rate, 2) if shown else None)
        del figures["served"], figures["measured"]
        if self.eta is not None:
            figures["eta"] = round(self.eta, 1)
        return figures


class GroupWatch:
    """The figures of one group, read again and again (it keeps the rate's samples).

    ``total``: the tasks to wait for; by default what every process sent to the group,
    and at least what this process sent (its outbox writes that within milliseconds)."""

    def __init__(self, group: str, part: Part, broker: Broker, total: int | None = None) -> None:
        self.group = group
        self.part = part
        self.broker = broker
        self.total = total
        self._meter = RateMeter()

    def expected(self) -> int | None:
        """The tasks sent to the group, if it is known."""
        if self.total is not None:
            return self.total
        row = self.broker.group_sent(self.group)
        here = sent(self.broker.directory).enqueued.get(self.group)
        if row is None:
            return here
        return max(row.tasks, here or 0)

    def read(self, running_now: int | None = None, served: bool = True) -> GroupFigures:
        """The group's figures now. ``running_now`` and ``served``: its tasks running and
        whether a cluster serves the store, when the caller has read the clusters'
        heartbeats already."""
        done, failed, cancelled = self.part.tally_cancelled(self.group)
        if running_now is None:
            by_group, served = serving(self.broker)
            running_now = by_group.get(self.group, 0)
        finished = done + failed
        total = self.expected()
        final = total is not None and finished >= total > 0
        if total is None or total < finished:
            total = finished + running_now
        running_now = min(running_now, total - finished)  # heartbeats lag a second
        rate = self._meter.add(finished)
        left = total - finished
        eta = left / rate if rate > 0 and left > 0 else None
        return GroupFigures(
            self.group,
            done,
            failed - cancelled,
            cancelled,
            running_now,
            total,
            rate,
            eta,
            final,
            served,
            self._meter.measured,
        )


def serving(
    broker: Broker, live: list[dict[str, Any]] | None = None
) -> tuple[dict[str, int], bool]:
    """(tasks running per group, whether a cluster takes work from the store), as the
    clusters' last heartbeats say (``live``, read here if not given): a cluster beats
    from its start, and says when it stops."""
    if live is None:
        live = heartbeats(broker.directory).clusters()
    counts: dict[str, int] = {}
    served = False
    for info in live:
        served = served or serves(info)
        for group, count in (info.get("groups_running") or {}).items():
            counts[group] = counts.get(group, 0) + count
    return counts, served


def cluster_figures(info: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A cluster as its heartbeat (or stop record) tells it, its state named."""
    now = time.time() if now is None else now
    state = info.get("state", "running")
    if "stopped" in info:
        state = "stopped"
    elif state == "running" and now - info.get("beat", now) > STALE_AFTER:
        state = "stale"  # a stopping cluster beats no more: its last beat says so
    return {
        "id": info["id"],
        "label": info.get("label"),
        "state": state,
        "host": info.get("host"),
        "pid": info.get("pid"),
        "executor": info.get("executor"),
        "workers": info.get("workers", 0) if state in ("running", "stopping") else 0,
        "busy": info.get("running", 0) if state in ("running", "stopping") else 0,
        "rate": info.get("rate", 0.0) if state in ("running", "stopping") else 0.0,
        "done": info.get("done", 0),
        "failed": info.get("failed", 0),
        "started": info.get("started"),
        "error": info.get("error"),
        "waiting": info.get("waiting"),
        "dashboard": info.get("dashboard"),
    }


def _progress(value: Any) -> dict[str, Any] | None:
    if not value:
        return None
    done, total, message = (tuple(value) + (None, None, None))[:3]
    return {"done": done, "total": total, "message": message}


def error_line(record: Record) -> str:
    """A failure's exception as one line, its type and message: the first line of its
    text, as a Failure's view shows it (``display.views.error_text``)."""
    text = record.get("result")
    if not isinstance(text, str) or not text.strip():
        return record.get("cause", "failed")
    return text.strip().split("\n", 1)[0].strip()


class StoreFigures:
    """The figures of one store for a view that reads them again and again (the
    dashboard): clusters, groups, running tasks and latest failures."""

    def __init__(self, directory: str) -> None:
        self.broker = get_broker(directory)
        self.directory = self.broker.directory
        self.store = get_store(self.directory)
        self._watches: dict[tuple[str, bool], GroupWatch] = {}

    def _watch(self, group: str, cached: bool) -> GroupWatch:
        watch = self._watches.get((group, cached))
        if watch is None:
            watch = GroupWatch(group, self.store.part(cached), self.broker)
            self._watches[group, cached] = watch
        return watch

    def read(self) -> dict[str, Any]:
        """Everything a view of the store shows, as plain JSON."""
        now = time.time()
        beats = heartbeats(self.directory)
        live = beats.clusters()
        clusters = [cluster_figures(info, now) for info in live]
        clusters += [cluster_figures(info, now) for info in beats.stopped_clusters()]
        by_group, served = serving(self.broker, live)
        newest = sorted(self.broker.groups().items(), key=lambda item: -item[1].last)
        groups = []
        for name, _ in newest[:GROUPS_SHOWN]:
            cached = not self.store.saved.has_group(name) and self.store.cached.has_group(name)
            figures = self._watch(name, cached).read(by_group.get(name, 0), served)
            groups.append(dict(figures.as_json(), cached=cached))
        return {
            "directory": self.directory,
            "updated": now,
            "queued": self.broker.pending(),
            "served": served,
            "clusters": clusters,
            "groups": groups,
            "running": self.running(now),
            "failures": self.failures(),
        }

    def running(self, now: float) -> list[dict[str, Any]]:
        """The tasks the clusters hold now, oldest start first."""
        tasks = []
        for task in running(broker=self.broker):
            started = task["started"].timestamp() if task["started"] else None
            output = task.get("output") or ""
            lines = [line for line in output.splitlines() if line.strip()]
            tasks.append(
                {
                    "id": task["id"],
                    "name": task["name"],
                    "func": task["func"],
                    "group": task["group"],
                    "seconds": round(now - started, 1) if started else None,
                    # held for a worker, not begun yet: "leased"; begun: "running"
                    "state": "leased" if task.get("leased") else "running",
                    "progress": _progress(task.get("progress")),
                    "output": output[-OUTPUT_SHOWN:],
                    "last_line": lines[-1] if lines else "",
                }
            )
        return tasks

    def failures(self) -> list[dict[str, Any]]:
        """The latest failures of both parts of the store, newest first."""
        records = self.store.saved.latest_failures(FAILURES_SHOWN)
        records += self.store.cached.latest_failures(FAILURES_SHOWN)
        records.sort(key=lambda r: -r["stopped"])
        return [
            {
                "id": r["id"],
                "name": r["name"],
                "func": r["func"],
                "group": r["group"],
                "cause": r.get("cause", "raised"),
                "error": error_line(r),
                "traceback": r.get("traceback", ""),
                "stopped": r["stopped"],
                "cached": bool(r.get("cached")),
            }
            for r in records[:FAILURES_SHOWN]
        ]
