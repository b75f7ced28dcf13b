"""A group's live progress: an ipywidgets panel in Jupyter, a tqdm bar anywhere else.

Panels read the store (and the clusters' heartbeats) from a background thread a few
times a second, so the kernel stays free while they update; they never change the
queue. A group's panel also reads the group's running tasks (``live.running``, a scan
of lease rows) from that thread, about once a second, and shows them
(``running_view``). ipywidgets, IPython and tqdm are imported only when a panel is made.
"""

from __future__ import annotations

import html
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store
from nbqueue.display.running_view import READ_EVERY, RunningView, _clock, running_note
from nbqueue.display.views import FAIL_COLOR, OK_COLOR, RUNNING_COLOR, badge
from nbqueue.figures import GroupFigures, GroupWatch
from nbqueue.live import running

if TYPE_CHECKING:  # imported when a widget is drawn: ipywidgets is optional
    from ipywidgets import IntProgress, VBox

INTERVAL = 0.25
_COLOURS = {"running": RUNNING_COLOR, "success": OK_COLOR, "danger": FAIL_COLOR}
STALE_AFTER = 3  # seconds without a redraw after which a live panel says it is not updated


def not_updated_mark() -> str:
    """HTML that the browser itself shows once a live panel has not been redrawn for
    STALE_AFTER seconds: its kernel is busy, restarted or gone, and its figures are old.
    Live panels redraw it every second (it names the second), which starts the count
    again; final figures go without it."""
    return (
        "<style>@keyframes nbqueue-stale{to{visibility:visible}}</style>"
        f"<span class='nbqueue-stale' data-drawn='{int(time.time())}' style='visibility:hidden;"
        f"animation:nbqueue-stale 0s linear {STALE_AFTER}s forwards'> · not updated: its "
        "kernel is busy, restarted or gone</span>"
    )


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel that can show widgets."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class GroupProgress:
    """The live progress of one group; make one with ``nbqueue.progress(group)``."""

    def __init__(
        self,
        group: str,
        total: int | None = None,
        cached: bool = False,
        broker: Broker | None = None,
        widget: bool | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.group = group
        self.broker = broker or get_broker()
        self.part = get_store(self.broker.directory).part(cached)
        self.total = total
        self.interval = interval
        self.done = self.failed = self.cancelled = self.running = 0
        self.shown_total = 0
        self.rate = 0.0
        self.eta: float | None = None
        self.started = time.monotonic()
        self._watch = GroupWatch(group, self.part, self.broker, total)
        self.figures: GroupFigures | None = None  # as last read
        self._complete = False  # drawn as complete; ``finished`` is set once it is drawn
        self._closed = False  # the last figures are drawn and the bar closed: no more drawing
        self._stopped = False  # stop() ended the updates before the group was complete
        self._shown = False  # the widget is on screen (displayed once, in __init__)
        self.detached = False  # no owner will stop() it: it runs until the group completes
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.widget: VBox | None = None  # made when drawn in a notebook
        self._bar: IntProgress | None = None
        self._view: Any = None  # the running tasks under the bar (a RunningView)
        self._tasks: list[dict[str, Any]] = []  # the group's running tasks, as last read
        self._tasks_read = float("-inf")  # when (time.monotonic()) they were read
        if widget is None:
            widget = in_notebook()
        if widget:
            self._make_widget()
        else:
            self._make_tqdm()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="nbqueue-progress", daemon=True)
        self._thread.start()

    # -- figures ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """'running', then 'success' (all done) or 'danger' (finished with failures)."""
        if not self._complete:
            return "running"
        return "danger" if self.failed or self.cancelled else "success"

    def _read(self) -> None:
        """Read the store once into the figures (under the lock, without drawing)."""
        figures = self.figures = self._watch.read()
        self.done, self.failed, self.cancelled = figures.done, figures.failed, figures.cancelled
        self.running, self.shown_total = figures.running, figures.total
        self.rate, self.eta = figures.rate, figures.eta
        if figures.final:
            self._complete = True
            self._tasks = []  # none runs now (and the selected one's outcome is stored)
            if self._view is not None:
                self._view.update([])

    def _read_tasks(self) -> None:
        """Read the group's running tasks, at most every READ_EVERY s: in the loop only."""
        now = time.monotonic()
        if now - self._tasks_read < READ_EVERY:
            return
        self._tasks_read = now
        try:
            tasks = running(self.group, self.broker)
        except Exception:  # unreadable now: show none rather than ones that may be gone
            tasks = []
        with self._lock:
            if self._closed or self._complete:
                return  # the final figures show none running
            self._tasks = tasks
            if self._view is not None:
                self._view.update(tasks)

    def refresh(self) -> None:
        """Read the store once and redraw; once complete, draw the final figures and close."""
        with self._lock:
            if self._closed:
                return
            self._read()
            if self._complete:
                self._finish()
            else:
                self._draw()

    def _finish(self) -> None:
        """Draw the figures just read as the last ones, then close: once, under the lock."""
        try:
            self._draw()
        finally:
            self._closed = True
            try:
                self._close()
            finally:
                if self._complete and self.widget is not None and not self._stopped:
                    _finished.keep(self)
                if self._complete:
                    # Only now: whoever waits on ``finished`` (``wait()``) must find the
                    # panel drawn complete, e.g. before its cell ends and the notebook's
                    # widget state is saved.
                    self.finished.set()

    def summary(self) -> str:
        """One line of figures, as the panel shows them."""
        return (
            f"{self.done} done · {self.failed} failed · {self.cancelled} cancelled · "
            f"{self.running} running · "
            f"{self.shown_total} total · {self.rate:.1f} tasks/s · "
            f"{_clock(0 if self._complete else self.eta)} left"
        )

    # -- drawing ---------------------------------------------------------------------

    def _make_widget(self) -> None:
        import ipywidgets as w
        from IPython.display import display

        self._title = w.HTML()
        self._bar = w.IntProgress(
            min=0, max=1, value=0, bar_style="info", layout=w.Layout(width="auto")
        )  # 100 % + margins overflows
        self._label = w.HTML()
        self._view = RunningView(self.part, self._lock)
        self.widget = w.VBox(
            [self._title, self._bar, self._label, *self._view.children],
            layout=w.Layout(width="100%", max_width="720px"),
        )
        self.widget.add_class("nbqueue-progress")
        display(self.widget)
        self._shown = True

    def _make_tqdm(self) -> None:
        from tqdm.auto import tqdm

        # the rate and time left are the figures model's, as in every view: tqdm's own
        # would count a group found finished as a burst of thousands of tasks a second
        self._tqdm = tqdm(
            total=self._watch.expected() or 0,
            desc=self.group,
            unit="task",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )

    def _draw(self) -> None:
        finished = self.done + self.failed + self.cancelled
        if self.widget is not None and self._bar is not None:  # made together
            style = "danger" if self.failed or self.cancelled else "info"
            style = "success" if self._complete and style == "info" else style
            self._bar.max = max(self.shown_total, 1)
            self._bar.value = min(finished, self._bar.max)
            self._bar.bar_style = style
            state = {
                "running": self.figures.state if self.figures is not None else "running",
                "success": "complete",
                "danger": "finished with failures",
            }[self.state]
            if self._stopped and not self._complete:
                state += " · no longer updated"  # these figures are the last ones shown
            self._title.value = f"<b>{html.escape(self.group)}</b> " + badge(
                state, _COLOURS[self.state], "nbqueue-state"
            )
            pct = 100 * finished / self.shown_total if self.shown_total else 0
            live = not self._complete and not self._stopped
            self._label.value = (
                f"<span class='nbqueue-counts'>{pct:.0f} % · {html.escape(self.summary())}</span>"
                + (not_updated_mark() if live else "")
            )
            self._view.draw()
        else:
            bar = self._tqdm
            if bar.total != self.shown_total:
                bar.total = self.shown_total
            bar.n = finished
            note = running_note(self._tasks)  # the most advanced running task's message
            left = "" if self._complete else f", {_clock(self.eta)} left"
            bar.set_postfix_str(
                f"failed={self.failed}, cancelled={self.cancelled}, running={self.running}, "
                f"{self.rate:.1f} tasks/s{left}" + (f", {note}" if note else ""),
                refresh=False,
            )
            bar.refresh()

    # -- life ------------------------------------------------------------------------

    def _loop(self) -> None:
        # Never closes the bar itself: refresh() does, with the figures it has just read.
        while not self._stop.wait(self.interval):
            try:
                self._read_tasks()
                self.refresh()
            except Exception:  # a panel must never take the kernel down
                continue
            if self._closed:
                return

    def _close(self) -> None:
        if self.widget is None and not getattr(self._tqdm, "disable", True):
            self._tqdm.close()

    def _reopen(self) -> None:
        """Update again: its group was given more work (a retry) after it was drawn
        complete. A widget only: a tqdm bar, once closed, stays closed."""
        with self._lock:
            if not self._closed or not self._complete:
                return
            self._complete = self._closed = False
            self.finished.clear()
            self._thread = threading.Thread(target=self._loop, name="nbqueue-progress", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the group is complete (or ``timeout`` seconds); return whether it is."""
        return self.finished.wait(timeout)

    def stop(self) -> None:
        """Stop updating now: read the figures once more, draw them as the last ones, close."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            if self._closed:
                return
            self._stopped = True
            try:
                self._read()
            finally:
                self._finish()

    def detach(self) -> None:
        """Keep updating on its own until the group is complete, then draw it once and close.

        For an owner that stops waiting (an interrupted cell) while the group still runs:
        unlike ``stop()``, the panel goes on showing true figures with no one waiting on it.
        The loop already ends only at completion or ``stop()``; this records that no
        ``stop()`` is coming, so the panel's life is the loop's.
        """
        self.detached = True

    def _ipython_display_(self) -> None:
        """Show the live panel, not a text copy of it: once on screen, nothing more."""
        if self.widget is None or self._shown:
            return  # a tqdm bar is already on screen, and so is a displayed widget
        from IPython.display import display

        display(self.widget)
        self._shown = True

    def __repr__(self) -> str:
        return f"<GroupProgress {self.group!r}: {self.summary()}>"


FINISHED_KEPT = 50  # complete widget panels watched for a retry, the latest
FINISHED_EVERY = 2.0  # seconds between two looks at them


class _Finished:
    """The widget panels drawn complete in this process, the latest FINISHED_KEPT, held
    (a panel of ``result_group(progress=True)`` has no other owner) and looked at every
    FINISHED_EVERY seconds by one thread: a group whose figures changed since (its
    failures sent again, by this process or any other) updates its panels again."""

    def __init__(self) -> None:
        self._panels: dict[tuple[str, str], list[GroupProgress]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, panel: GroupProgress) -> None:
        with self._lock:
            key = (panel.broker.directory, panel.group)
            self._panels.setdefault(key, []).append(panel)
            self._panels[key] = self._panels.pop(key)  # the latest last
            while sum(len(panels) for panels in self._panels.values()) > FINISHED_KEPT:
                oldest = next(iter(self._panels))
                self._panels[oldest].pop(0)
                if not self._panels[oldest]:
                    del self._panels[oldest]
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="nbqueue-finished-panels", daemon=True
                )
                self._thread.start()

    def forget(self) -> None:
        """Hold and watch none of the panels kept so far."""
        with self._lock:
            self._panels.clear()

    def reopen(self, directory: str, group: str) -> None:
        with self._lock:
            panels = self._panels.pop((directory, group), [])
        for panel in panels:
            panel._reopen()

    def _loop(self) -> None:
        while True:
            time.sleep(FINISHED_EVERY)
            with self._lock:
                if not self._panels:
                    self._thread = None
                    return
                watched = [(key, panels[-1]) for key, panels in self._panels.items()]
            for (directory, group), panel in watched:
                if not os.path.isdir(directory):  # the store was deleted: nothing to watch
                    with self._lock:
                        self._panels.pop((directory, group), None)
                    continue
                try:
                    now = panel._watch.read()
                except Exception:  # unreadable now: looked at again next time
                    continue
                shown = panel.figures
                if shown is None or _counts(now) != _counts(shown):
                    self.reopen(directory, group)


def _counts(figures: GroupFigures) -> tuple[int, int, int, int]:
    return figures.done, figures.failed, figures.cancelled, figures.total


_finished = _Finished()


def reopen(directory: str, group: str) -> None:
    """Have the complete widget panels of ``group`` update again (its failures were sent
    again): their figures are no longer final."""
    _finished.reopen(directory, group)


def progress(
    group: str, total: int | None = None, cached: bool = False, broker: Broker | None = None
) -> GroupProgress:
    """Show live progress of ``group``: done, failed, running, total, rate and time left.

    An ipywidgets panel in Jupyter (red once a task failed, green when all are done)
    listing the running tasks with their last ``nbqueue.report``, and the last lines of
    output of the one chosen; a tqdm bar elsewhere. ``total`` defaults to the number of
    tasks this process put in the group. Returns at once; the panel updates itself until
    the group completes.
    """
    return GroupProgress(group, total, cached, broker)
