"""A cluster's live status panel in Jupyter: its state, workers, counts and rate, with a
Stop button. It reads ``Cluster.info()`` from a thread of its own, so the kernel stays
free while it updates.
"""

from __future__ import annotations

import html
import threading
from typing import Any

from nbqueue.conf import Settings
from nbqueue.display.group_panel import not_updated_mark
from nbqueue.display.views import FAIL_COLOR, OK_COLOR, WARN_COLOR, badge


def _cluster_state(cluster: Any) -> str:
    """'not started', 'running', 'stopping' (its stop() has begun) or 'stopped'."""
    if cluster.running:
        return "running"
    if cluster.started_at is None:
        return "not started"
    return "stopped" if cluster.stopped else "stopping"


class ClusterPanel:
    """A live status panel of a running cluster, with a stop button."""

    def __init__(self, cluster: Any, interval: float = 0.5) -> None:
        import ipywidgets as w

        self.cluster = cluster
        self.interval = interval
        self.state = "not started"
        self.rate = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = False  # stop() ended the updates: the figures say so
        self._html = w.HTML()
        self._button = w.Button(description="Stop cluster", button_style="warning", icon="stop")
        self._button.on_click(lambda _: self._stop_cluster())
        self.widget = w.VBox([self._html, self._button])
        self.widget.add_class("nbqueue-cluster")
        self.refresh()
        self._thread = threading.Thread(
            target=self._loop, name="nbqueue-cluster-panel", daemon=True
        )
        self._thread.start()

    def _stop_cluster(self) -> None:
        self._button.disabled = True
        self._button.description = "stopping ..."
        threading.Thread(
            target=self._stop_then_show, name="nbqueue-cluster-stop", daemon=True
        ).start()

    def _stop_then_show(self) -> None:
        """Stop the cluster, then show it stopped, even if this panel's loop has ended."""
        self.cluster.stop()
        self.refresh()

    def refresh(self) -> None:
        """Read the cluster's figures once and redraw."""
        with self._lock:
            c = self.cluster
            info = c.info()
            state = _cluster_state(c)
            error = info.get("error") or ""  # one of its threads failed: the cluster stops
            if error and state == "running":
                state = "stopping"  # its stop() is starting in another thread
            self.state = state
            self.rate = info["rate"]  # as every view counts it (``figures.RATE_WINDOW``)
            if state not in ("running", "stopping"):
                self.rate = 0.0  # nothing finishes in a cluster that is not running
            colour = {"running": OK_COLOR, "stopping": WARN_COLOR, "stopped": FAIL_COLOR}.get(
                state, "#555"
            )
            shown = state
            if error:
                shown, colour = f"{state}: {error}", FAIL_COLOR
            elif info.get("waiting"):  # the store refuses outcomes (a full disk)
                shown, colour = f"{state}, waiting: {info['waiting']}", WARN_COLOR
            if self._stopped and state != "stopped":
                shown += " · no longer updated"  # these figures are the last ones shown
            executor = html.escape(info["executor"])
            workers = {
                "running": f"{info['workers']} {executor} ({info['running']} busy)",
                "stopping": f"{info['workers']} {executor} (stopping; {info['running']} busy)",
                "stopped": f"0 (stopped; had {info['workers']} {executor})",
                "not started": f"0 (not started; {info['workers']} {executor} to start)",
            }[state]
            rows = [
                ("state", badge(html.escape(shown), colour)),
                ("workers", workers),
                ("queued", info["queued"]),
                # held by this cluster, in a worker's next chunk: not running yet
                ("leased", max(info["in_flight"] - info["running"], 0)),
                ("running", info["running"]),
                ("done", info["done"]),
                ("failed", info["failed"]),
                ("tasks/s", f"{self.rate:.1f}"),
                ("directory", html.escape(info["directory"])),
            ]
            if info.get("dashboard"):
                link = html.escape(info["dashboard"])
                rows.append(("dashboard", f"<a href='{link}' target='_blank'>{link}</a>"))
            cells = "".join(
                f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
                f"<td class='nbqueue-{k.replace('/', '-')}'>{v}</td></tr>"
                for k, v in rows
            )
            label = c.settings.label
            title = "<b>nbqueue cluster</b>" + (
                f" · {html.escape(label)}" if label != Settings.label else ""
            )
            live = state in ("running", "stopping") and not self._stopped
            mark = not_updated_mark() if live else ""
            self._html.value = f"{title}{mark}<table>{cells}</table>"
            if state != "running":
                self._button.disabled = True
                self._button.description = {"stopping": "stopping ...", "stopped": "stopped"}.get(
                    state, state
                )

    def stop(self) -> None:
        """Stop updating the panel (the cluster goes on): its figures are read once more and
        shown as the last ones."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._stopped = True
        self.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:
                continue
            if self.state == "stopped":
                return
