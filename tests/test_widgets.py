"""Live progress panels, read from a real store while a real cluster runs the group."""

from __future__ import annotations

import time

import pytest

import nbqueue
from nbqueue import AsyncTask, async_iter, async_task, result, result_group
from nbqueue.widgets import ClusterPanel, GroupProgress, _clock, in_notebook
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(90)


def test_not_a_notebook_here():
    assert in_notebook() is False


def test_clock():
    assert _clock(None) == "--:--"
    assert _clock(65) == "01:05"
    assert _clock(3725) == "1:02:05"


def test_terminal_progress_is_a_tqdm_bar_that_completes(cluster):
    for i in range(30):
        async_task(fx.nap, 0.02, i, group="bar")
    panel = nbqueue.progress("bar")
    assert panel.widget is None and panel._tqdm.total == 30  # total from this process
    assert panel.wait(30)
    assert (panel.done, panel.failed, panel.shown_total) == (30, 0, 30)
    assert panel.state == "success"
    assert panel._tqdm.n == 30
    assert "30 done · 0 failed" in panel.summary()


def test_widget_panel_turns_green_when_complete(cluster):
    for i in range(20):
        async_task(fx.add, i, group="green")
    panel = GroupProgress("green", total=20, widget=True)
    assert panel.wait(30)
    panel.stop()
    assert panel._bar.value == panel._bar.max == 20
    assert panel._bar.bar_style == "success"
    assert "complete" in panel._title.value
    assert "100 %" in panel._label.value and "20 done" in panel._label.value


def test_widget_panel_turns_red_on_failure(cluster):
    async_task(fx.add, 1, group="red")
    async_task(fx.boom, group="red", ack_failure=True)
    panel = GroupProgress("red", total=2, widget=True)
    assert panel.wait(30)
    panel.stop()
    assert panel._bar.bar_style == "danger" and panel.state == "danger"
    assert "finished with failures" in panel._title.value and "1 failed" in panel._label.value


def test_progress_while_waiting(cluster):
    for i in range(10):
        async_task(fx.add, i, group="waiting")
    assert sorted(result_group("waiting", count=10, wait=20_000, progress=True)) == list(range(10))
    assert len(nbqueue.fetch_group("waiting", count=10, wait=20_000, progress=True)) == 10
    iter_id = async_iter(fx.add, range(5), progress=True)
    assert result(iter_id, wait=20_000) == [0, 1, 2, 3, 4]
    task = AsyncTask(fx.add, 4, group="at-progress")
    task.run()
    assert task.result(wait=20_000, progress=True) == 4


def test_cluster_panel_shows_figures_and_stops(cluster):
    result(async_task(fx.add, 1), wait=20_000)
    panel = ClusterPanel(cluster, interval=0.05)
    text = panel._html.value
    assert "running" in text and "2 loky" in text and cluster.directory in text
    panel._button.click()
    deadline = time.monotonic() + 30
    while cluster.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cluster.running
    time.sleep(0.3)
    assert "stopped" in panel._html.value and panel._button.disabled


def test_cluster_mimebundle_outside_jupyter_is_text(cluster):
    bundle = cluster._repr_mimebundle_()
    assert list(bundle) == ["text/plain"] and "Cluster" in bundle["text/plain"]
