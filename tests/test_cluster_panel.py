"""The cluster's live status panel (``nbqueue.display.cluster_panel``), with a real cluster."""

from __future__ import annotations

import time

import pytest

import nbqueue
from nbqueue import async_task, result
from nbqueue.display.cluster_panel import ClusterPanel
from nbqueue.display.views import FAIL_COLOR, WARN_COLOR, badge
from nbqueue.display.group_panel import GroupProgress
from nbqueue.figures import RATE_WINDOW
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")]  # queued first


def test_cluster_panel_shows_figures_and_stops(cluster):
    result(async_task(fx.add, 1), wait=20_000)
    panel = ClusterPanel(cluster, interval=0.05)
    text = panel._html.value
    assert "running" in text and "2 loky" in text and cluster.directory in text
    panel._button.click()
    wait_for(lambda: not cluster.running, 30, "the cluster stopping")
    wait_for(lambda: panel._button.description == "stopped", 30, "the panel showing 'stopped'")
    assert "stopped" in panel._html.value and panel._button.disabled



def test_cluster_mimebundle_outside_jupyter_is_text(cluster):
    bundle = cluster._repr_mimebundle_()
    assert list(bundle) == ["text/plain"] and "Cluster" in bundle["text/plain"]



def test_cluster_panel_shows_a_stopped_cluster_as_stopped(cluster):
    result(async_task(fx.add, 1), wait=20_000)
    panel = ClusterPanel(cluster, interval=3600)  # redrawn here, not by its thread
    assert panel._button.description == "Stop cluster" and not panel._button.disabled
    cluster.stop(wait=5)
    panel.refresh()
    text = panel._html.value
    assert panel.state == "stopped"
    assert panel._button.description == "stopped" and panel._button.disabled
    assert "0 (stopped; had 2 loky)" in text and "stopping" not in text
    assert "class='nbqueue-running'>0<" in text and "class='nbqueue-done'>1<" in text
    assert "class='nbqueue-tasks-s'>0.0<" in text
    for i in range(3):  # queued as read now: a stopped cluster leaves them in the queue
        async_task(fx.add, i)
    nbqueue.flush()
    panel.refresh()
    assert "class='nbqueue-queued'>3<" in panel._html.value
    panel.stop()



def test_cluster_panel_shows_why_a_cluster_stopped(cluster, monkeypatch):
    """A cluster stopped by a failed thread says why, in a red badge, escaped."""
    cluster.stop(wait=5)
    info = cluster.info
    monkeypatch.setattr(cluster, "info", lambda: {**info(), "error": "writer <died> & gone"})
    panel = ClusterPanel(cluster, interval=3600)
    panel.stop()
    assert panel.state == "stopped" and panel._button.description == "stopped"
    assert badge("stopped: writer &lt;died&gt; &amp; gone", FAIL_COLOR) in panel._html.value



def test_cluster_panel_shows_why_a_cluster_waits(cluster, monkeypatch):
    """A running cluster whose outcomes the store refuses (a full disk) says so, in an
    orange badge, escaped (``Cluster.info()["waiting"]``, set by its writer)."""
    info = cluster.info
    monkeypatch.setattr(cluster, "info", lambda: {**info(), "waiting": "disk <full> & more"})
    panel = ClusterPanel(cluster, interval=3600)
    panel.stop()
    assert panel.state == "running"
    assert (badge("running, waiting: disk &lt;full&gt; &amp; more · no longer updated",
                  WARN_COLOR) in panel._html.value)



def test_cluster_panel_title_names_only_a_chosen_label(cluster, store_dir):
    panel = ClusterPanel(cluster, interval=3600)
    panel.stop()
    assert panel._html.value.startswith("<b>nbqueue cluster</b><table>")
    named = nbqueue.Cluster(workers=1, label="my<lab>", directory=store_dir)
    panel = ClusterPanel(named, interval=3600)
    panel.stop()
    assert panel._html.value.startswith("<b>nbqueue cluster</b> · my&lt;lab&gt;<table>")
    assert panel.state == "not started" and panel._button.disabled
    assert "not started · no longer updated" in panel._html.value  # stop() says so



def test_group_and_cluster_panels_agree_on_tasks_per_second(store_dir):
    import ipywidgets  # noqa: F401 - imported first, so both panels take their first sample
    import tqdm.auto  # noqa: F401 - at nearly the same moment

    for i in range(100):
        async_task(fx.nap, 0.04, i, group="agree")
    nbqueue.flush()
    cluster = nbqueue.Cluster(workers=2, directory=store_dir)
    group_panel = GroupProgress("agree", widget=False, interval=3600)  # redrawn here only
    cluster_panel = ClusterPanel(cluster, interval=3600)
    began = time.monotonic()
    pairs = []
    with cluster:
        deadline = time.monotonic() + 60
        while not group_panel.finished.is_set():  # both read at the same moments
            assert time.monotonic() < deadline, "the group did not complete within 60 s"
            time.sleep(0.2)
            group_panel.refresh()
            cluster_panel.refresh()
            pairs.append((group_panel.rate, cluster_panel.rate, time.monotonic() - began))
    group_panel.stop()
    cluster_panel.stop()
    busy = [(g, c, age) for g, c, age in pairs if g > 0 or c > 0]
    assert len(busy) >= 3, pairs
    for group_rate, cluster_rate, age in busy:  # read a few ms apart: a task or two may
        # differ, which is 2 / (the span the rate is over) tasks/s: much early on
        slack = max(2.0, 2.0 / min(age, RATE_WINDOW))
        assert abs(group_rate - cluster_rate) <= 0.05 * max(group_rate, cluster_rate) + slack, pairs
    assert group_panel.rate > 0 and "tasks/s" in group_panel.summary()


def test_a_live_panel_says_in_the_browser_when_it_stops_being_redrawn(cluster):
    """A live panel carries a mark the browser shows after STALE_AFTER seconds without a
    redraw (its kernel restarted or gone); it is redrawn every second, and a stopped
    panel, whose figures are the last ones and say so, has none."""
    panel = ClusterPanel(cluster, interval=0.2)
    first = wait_for(lambda: "nbqueue-stale" in panel._html.value and panel._html.value, 10,
                     "the mark")
    assert "animation:nbqueue-stale 0s linear 3s forwards" in first
    wait_for(lambda: panel._html.value != first, 5, "a redraw within a second or two")
    panel.stop()
    assert "nbqueue-stale" not in panel._html.value
