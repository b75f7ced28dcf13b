"""The running tasks of a group, under its progress panel (``GroupProgress``).

A row per running task: its name, its last ``nbqueue.report`` (done/total and %, or
done alone) and message, and how long it has run; then the last lines of the output of
the task chosen in a dropdown, kept (marked finished) once that task has finished.
The panel reads the tasks (``live.running``) from its own thread at most every
READ_EVERY seconds and hands them to ``RunningView.update``; ``draw`` shows what was
last read, with elapsed times as of now. Nothing here reads the queue.
"""

from __future__ import annotations

import html
import threading
from datetime import datetime, timezone
from typing import Any

from nbqueue.disk.store import Part
from nbqueue.live import record_status

READ_EVERY = 1.0  # seconds between two reads of the running tasks (they scan lease rows)
ROWS = 8  # running tasks listed; the others are counted ("and N more")
LINES = 15  # last lines of the selected task's output shown
MESSAGE_WIDTH = 80  # characters of a message a row shows
NOTE_WIDTH = 40  # characters of a message a tqdm bar shows

Tasks = list[dict[str, Any]]


def _clock(seconds: float | None) -> str:
    """A duration as m:ss or h:mm:ss; --:-- when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:g}"


def progress_text(progress: Any) -> str:
    """'done/total · pct %', done alone when the total is unknown, '' before a report."""
    if not progress:
        return ""
    done, total = progress[0], progress[1]
    if total is None:
        return _number(done)
    pct = f" · {100 * done / total:.0f} %" if total else ""
    return f"{_number(done)}/{_number(total)}{pct}"


def elapsed_text(
    started: datetime | None, now: datetime | None = None, leased: bool = False
) -> str:
    """How long a task has run; 'leased' while it waits for a worker, 'starting' while
    its worker has not said yet when it began."""
    if started is None:
        return "leased" if leased else "starting"
    now = now or datetime.now(timezone.utc)
    return _clock(max((now - started).total_seconds(), 0.0))


def _message(progress: Any, width: int) -> str:
    message = " ".join(str((progress[2] if progress else None) or "").split())
    return message if len(message) <= width else message[: width - 1] + "…"


def _label(task: dict[str, Any]) -> str:
    return task.get("name") or task["id"][:8]


def running_note(tasks: Tasks) -> str:
    """The message of the most advanced running task that has one ('' if none has)."""
    said = [t for t in tasks if t["progress"] and t["progress"][2]]
    if not said:
        return ""

    def ahead(task: dict[str, Any]) -> tuple[bool, float]:
        done, total = task["progress"][0], task["progress"][1]
        return bool(total), done / total if total else done

    return _message(max(said, key=ahead)["progress"], NOTE_WIDTH)


def tasks_html(tasks: Tasks, now: datetime | None = None) -> str:
    """The rows of the running tasks, oldest first: at most ROWS, then how many more."""
    if not tasks:
        return ""
    now = now or datetime.now(timezone.utc)
    rows = []
    for task in tasks[:ROWS]:
        cells = (
            ("name", html.escape(_label(task))),
            ("progress", progress_text(task["progress"])),
            ("message", html.escape(_message(task["progress"], MESSAGE_WIDTH))),
            ("elapsed", elapsed_text(task["started"], now, task.get("leased", False))),
        )
        rows.append(
            "<tr class='nbqueue-task'>"
            + "".join(
                f"<td class='nbqueue-task-{k}' style='padding-right:1em'>{v}</td>" for k, v in cells
            )
            + "</tr>"
        )
    more = len(tasks) - ROWS
    tail = f"<div class='nbqueue-more'>and {more} more</div>" if more > 0 else ""
    return (
        f"<div class='nbqueue-tasks' style='font-size:90%'>"
        f"<table>{''.join(rows)}</table>{tail}</div>"
    )


class RunningView:
    """The list of a group's running tasks and the output of the one selected."""

    def __init__(self, part: Part, lock: threading.Lock) -> None:
        import ipywidgets as w

        self.part = part
        self._lock = lock  # the panel's: the view's state changes under it
        self.tasks: Tasks = []  # as last read
        self.selected: dict[str, Any] | None = None  # the chosen task, as last seen running
        self.outcome: dict[str, Any] | None = None  # its stored outcome, once finished
        self._syncing: int | None = None  # the thread setting the dropdown, not a user
        self.list = w.HTML()
        self.choose = w.Dropdown(
            description="output of", options=[], layout=w.Layout(width="auto", display="none")
        )
        self.choose.observe(self._chosen, names="value")
        self.output = w.HTML()
        self.children = (self.list, self.choose, self.output)

    def update(self, tasks: Tasks) -> None:
        """The running tasks just read (under the panel's lock); once the selected task is
        no longer among them, its outcome from the store, read once it is there."""
        self.tasks = tasks
        selected = self.selected
        if selected is None or self.outcome is not None:
            return
        for task in tasks:
            if task["id"] == selected["id"]:
                self.selected = task
                return
        record = self.part.find(selected["id"])
        if record is not None:
            self.outcome = record_status(record)

    def draw(self, now: datetime | None = None) -> None:
        """Show what was last read (under the panel's lock)."""
        self.list.value = tasks_html(self.tasks, now)
        self._sync_choices()
        self.output.value = self._output_html()

    def _running(self, task_id: str) -> bool:
        return any(t["id"] == task_id for t in self.tasks)

    def _choices(self) -> list[tuple[str, str]]:
        choices, seen = [], set()
        for task in self.tasks:
            label = _label(task)
            if label in seen:
                label += f" ({task['id'][:8]})"
            seen.add(label)
            choices.append((label, task["id"]))
        selected = self.selected
        if selected is not None and not self._running(selected["id"]):
            gone = "finished" if self.outcome is not None else "not running"
            choices.append((f"{_label(selected)} · {gone}", selected["id"]))
        return choices

    def _sync_choices(self) -> None:
        choices = self._choices()
        value = None if self.selected is None else self.selected["id"]
        if list(self.choose.options) == choices and self.choose.value == value:
            return
        self._syncing = threading.get_ident()  # _chosen ignores these changes
        try:
            with self.choose.hold_sync():
                self.choose.options = choices
                self.choose.value = value
                self.choose.layout.display = None if choices else "none"
        finally:
            self._syncing = None

    def _chosen(self, change: Any) -> None:
        """A user chose a task (in the kernel's thread): show its output as last read."""
        if self._syncing == threading.get_ident():
            return
        with self._lock:
            if self.selected is None or change.new != self.selected["id"]:
                task = next((t for t in self.tasks if t["id"] == change.new), None)
                if task is not None:  # else it finished since: the choice stays as it was
                    self.selected, self.outcome = task, None
            self._sync_choices()
            self.output.value = self._output_html()

    def _output_html(self) -> str:
        selected = self.selected
        if selected is None:
            return ""
        if self.outcome is not None:
            text, state = self.outcome["output"], f"finished · {self.outcome['state']}"
        else:
            text = selected["output"]
            state = "running" if self._running(selected["id"]) else "no longer running"
        lines = text.splitlines()[-LINES:]
        if not lines:
            state += " · no output" + ("" if self.outcome is not None else " yet")
        shown = (
            f"<pre style='margin:0.2em 0;max-height:20em;overflow:auto'>"
            f"{html.escape(chr(10).join(lines))}</pre>"
            if lines
            else ""
        )
        return (
            f"<div class='nbqueue-output'><b>{html.escape(_label(selected))}</b> · "
            f"<span class='nbqueue-output-state'>{state}</span>{shown}</div>"
        )
