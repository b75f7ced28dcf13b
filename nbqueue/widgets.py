"""Live progress: an ipywidgets panel in Jupyter, a tqdm bar anywhere else.

Panels read the store (and the clusters' heartbeats) from a background thread a few
times a second, so the kernel stays free while they update; they never touch the
queue. ipywidgets, IPython and tqdm are imported only when a panel is made.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

from .broker import Broker, get_broker

INTERVAL = 0.25
_COLOURS = {"running": "#1976d2", "success": "#2e7d32", "danger": "#c62828"}


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel that can show widgets."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


class GroupProgress:
    """The live progress of one group; make one with ``nbqueue.progress(group)``."""

    def __init__(self, group: str, total: int | None = None, cached: bool = False,
                 broker: Broker | None = None, widget: bool | None = None,
                 interval: float = INTERVAL) -> None:
        self.group = group
        self.broker = broker or get_broker()
        self.part = self.broker.store.part(cached)
        self.total = total
        self.interval = interval
        self.done = self.failed = self.running = 0
        self.rate = 0.0
        self.started = time.monotonic()
        self._first = self._counts()[0:2]
        self._complete = False  # drawn as complete; ``finished`` is set once it is drawn
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.widget = None
        self._bar = None
        if widget is None:
            widget = in_notebook()
        if widget:
            self._make_widget()
        else:
            self._make_tqdm()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="nbqueue-progress",
                                        daemon=True)
        self._thread.start()

    # -- figures ---------------------------------------------------------------------

    def _counts(self) -> tuple[int, int, int]:
        done = self.part.count(self.group, failures=False)
        failed = self.part.count(self.group, failures=True)
        running = sum(c.get("groups_running", {}).get(self.group, 0)
                      for c in self.broker.clusters())
        return done, failed, running

    def _expected(self) -> int | None:
        if self.total is not None:
            return self.total
        return self.broker.enqueued.get(self.group)

    @property
    def state(self) -> str:
        """'running', then 'success' (all done) or 'danger' (finished with failures)."""
        if not self._complete:
            return "running"
        return "danger" if self.failed else "success"

    def refresh(self) -> None:
        """Read the store once and redraw."""
        with self._lock:
            self.done, self.failed, self.running = self._counts()
            finished = self.done + self.failed
            total = self._expected()
            if total is not None and total >= finished:
                self.running = min(self.running, total - finished)  # heartbeats lag ~1 s
            else:
                total = finished + self.running
            self.shown_total = total
            elapsed = max(time.monotonic() - self.started, 1e-9)
            self.rate = (finished - sum(self._first)) / elapsed
            left = total - finished
            self.eta = left / self.rate if self.rate > 0 else None
            if total and finished >= total and (self.total is not None or
                                                self._expected() is not None):
                self._complete = True
            try:
                self._draw()
            finally:
                if self._complete:
                    # Only now: whoever waits on ``finished`` (``wait()``) must find the
                    # panel drawn complete, e.g. before its cell ends and the notebook's
                    # widget state is saved.
                    self.finished.set()

    def summary(self) -> str:
        """One line of figures, as the panel shows them."""
        return (f"{self.done} done · {self.failed} failed · {self.running} running · "
                f"{self.shown_total} total · {self.rate:.1f} tasks/s · "
                f"{_clock(0 if self._complete else self.eta)} left")

    # -- drawing ---------------------------------------------------------------------

    def _make_widget(self) -> None:
        import ipywidgets as w
        from IPython.display import display
        self._title = w.HTML()
        self._bar = w.IntProgress(min=0, max=1, value=0, bar_style="info",
                                  layout=w.Layout(width="auto"))  # 100 % + margins overflows
        self._label = w.HTML()
        self.widget = w.VBox([self._title, self._bar, self._label],
                             layout=w.Layout(width="100%", max_width="720px"))
        self.widget.add_class("nbqueue-progress")
        display(self.widget)

    def _make_tqdm(self) -> None:
        from tqdm.auto import tqdm
        self._tqdm = tqdm(total=self._expected() or 0, desc=self.group, unit="task")

    def _draw(self) -> None:
        finished = self.done + self.failed
        if self.widget is not None:
            style = "danger" if self.failed else ("success" if self._complete
                                                  else "info")
            self._bar.max = max(self.shown_total, 1)
            self._bar.value = min(finished, self._bar.max)
            self._bar.bar_style = style
            state = {"running": "running", "success": "complete",
                     "danger": "finished with failures"}[self.state]
            colour = _COLOURS[self.state]
            self._title.value = (f"<b>{html.escape(self.group)}</b> "
                                 f"<span style='color:{colour}' class='nbqueue-state'>"
                                 f"{state}</span>")
            pct = 100 * finished / self.shown_total if self.shown_total else 0
            self._label.value = (f"<span class='nbqueue-counts'>{pct:.0f} % · "
                                 f"{html.escape(self.summary())}</span>")
        else:
            bar = self._tqdm
            if bar.total != self.shown_total:
                bar.total = self.shown_total
            bar.n = finished
            bar.set_postfix(failed=self.failed, running=self.running, refresh=False)
            bar.refresh()

    # -- life ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # a panel must never take the kernel down
                continue
            if self.finished.is_set():
                break
        self._close()

    def _close(self) -> None:
        if self.widget is None and not getattr(self._tqdm, "disable", True):
            self._tqdm.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the group is complete (or ``timeout`` seconds); return whether it is."""
        return self.finished.wait(timeout)

    def stop(self) -> None:
        """Stop updating (the panel keeps its last state)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.refresh()
        self._close()

    def __repr__(self) -> str:
        return f"<GroupProgress {self.group!r}: {self.summary()}>"


def progress(group: str, total: int | None = None, cached: bool = False,
             broker: Broker | None = None) -> GroupProgress:
    """Show live progress of ``group``: done, failed, running, total, rate and time left.

    An ipywidgets panel in Jupyter (red once a task failed, green when all are done),
    a tqdm bar elsewhere. ``total`` defaults to the number of tasks this process put
    in the group. Returns at once; the panel updates itself until the group completes.
    """
    return GroupProgress(group, total, cached, broker)


class ClusterPanel:
    """A live status panel of a running cluster, with a stop button."""

    def __init__(self, cluster: Any, interval: float = 0.5) -> None:
        import ipywidgets as w
        self.cluster = cluster
        self.interval = interval
        self._html = w.HTML()
        self._button = w.Button(description="Stop cluster", button_style="warning",
                                icon="stop")
        self._button.on_click(lambda _: self._stop_cluster())
        self.widget = w.VBox([self._html, self._button])
        self.widget.add_class("nbqueue-cluster")
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="nbqueue-cluster-panel",
                                        daemon=True)
        self._thread.start()

    def _stop_cluster(self) -> None:
        self._button.disabled = True
        self._button.description = "stopping ..."
        threading.Thread(target=self.cluster.stop, daemon=True).start()

    def refresh(self) -> None:
        c = self.cluster
        info = c.info()
        state = "running" if c.running else ("stopped" if c.started_at else "not started")
        colour = {"running": "#2e7d32", "stopped": "#c62828"}.get(state, "#555")
        rows = [("state", f"<span style='color:{colour}'>{state}</span>"),
                ("workers", f"{info['workers']} {html.escape(info['executor'])} "
                            f"({info['running']} busy)"),
                ("queued", info["queued"]), ("running", info["running"]),
                ("done", info["done"]), ("failed", info["failed"]),
                ("tasks/s", info["rate"]), ("directory", html.escape(info["directory"]))]
        if info.get("dashboard"):
            link = html.escape(info["dashboard"])
            rows.append(("dashboard", f"<a href='{link}' target='_blank'>{link}</a>"))
        cells = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
                        f"<td class='nbqueue-{k.replace('/', '-')}'>{v}</td></tr>"
                        for k, v in rows)
        self._html.value = (f"<b>nbqueue cluster</b> {html.escape(c.settings.label)}"
                            f"<table>{cells}</table>")
        if not c.running:
            self._button.disabled = True

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.refresh()
            except Exception:
                continue
            if self.cluster.started_at is not None and not self.cluster.running:
                self.refresh()
                return
