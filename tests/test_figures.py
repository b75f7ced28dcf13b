"""The figures model: what every view shows of a store, so that they agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nbqueue
from nbqueue import async_task, result, result_group, status
from nbqueue.disk.directory import get_store
from nbqueue.display.group_panel import GroupProgress
from nbqueue.figures import (RATE_WINDOW, STALE_AFTER, GroupWatch, RateMeter, StoreFigures,
                             cluster_figures)
from nbqueue.live import running as running_tasks
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_rate_meter_over_a_sliding_window():
    meter = RateMeter(window=5.0)
    assert meter.rate() == 0.0
    assert meter.add(0, when=100.0) == 0.0  # one sample: no rate yet
    assert meter.add(10, when=101.0) == 10.0  # younger than the window: since the first
    assert meter.add(30, when=103.0) == 10.0
    assert meter.add(80, when=105.0) == 16.0
    assert meter.add(90, when=106.0) == 16.0  # the last 5 s: (90 - 10) / (106 - 101)
    assert meter.add(90, when=112.0) == 0.0  # nothing finished since 106
    assert meter.add(90, when=112.0) == 0.0  # no time passed
    assert meter.add(100, when=113.0) == pytest.approx(10 / 7)  # since 106, the window's start


# -- a group's figures ---------------------------------------------------------------

def _figures(group):
    broker = nbqueue.get_broker()
    return GroupWatch(group, get_store(broker.directory).saved, broker).read()


def test_cancelled_tasks_are_counted_apart_from_failures(cluster):
    ids = [async_task(fx.nap, 30, group="mixed") for _ in range(2)]
    ids += [async_task(fx.add, i, group="mixed") for i in range(3)]
    ids.append(async_task(fx.boom, group="mixed"))
    wait_for(lambda: status(ids[0])["state"] == "running", 30, "a nap running")
    assert all(nbqueue.cancel(task_id) for task_id in ids[:2])
    result_group("mixed", wait=30_000, count=6, failures=True)
    figures = _figures("mixed")
    assert (figures.done, figures.failed, figures.cancelled, figures.total) == (3, 1, 2, 6)
    assert figures.final and figures.state == "finished with failures" and figures.running == 0
    panel = GroupProgress("mixed", widget=False)
    assert panel.wait(10)
    assert "3 done · 1 failed · 2 cancelled · 0 running · 6 total" in panel.summary()


def test_the_total_is_what_every_process_sent(store_dir):
    code = (
        "import nbqueue, tests.tasks_fixtures as fx\n"
        f"nbqueue.configure(directory={store_dir!r})\n"
        "for i in range(7): nbqueue.async_task(fx.add, i, group='elsewhere')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    with pytest.warns(nbqueue.NoClusterWarning):
        async_task(fx.add, 1, group="elsewhere")
    figures = wait_for(lambda: (f := _figures("elsewhere")).total == 8 and f, 10, "8 sent")
    assert (figures.done, figures.running, figures.final) == (0, 0, False)
    assert figures.state == "waiting: no cluster serves its store"
    assert nbqueue.get_broker().group_sent("elsewhere").tasks == 8


def test_a_retried_group_is_no_longer_final_until_its_retries_end(store_dir):
    flag = os.path.join(store_dir, "..", "flag")
    with pytest.warns(nbqueue.NoClusterWarning):
        ids = [async_task(fx.fails_until, flag, "x" * i, group="again") for i in range(4)]
    with nbqueue.Cluster(workers=2, directory=store_dir):
        result_group("again", wait=30_000, count=4, failures=True)
    assert _figures("again")[1:3] == (0, 4)  # done, failed
    assert _figures("again").final
    open(flag, "w").close()
    assert nbqueue.retry_group("again") == 4
    figures = _figures("again")  # retried: its figures are no longer final
    assert (figures.done, figures.failed, figures.total, figures.final) == (0, 0, 4, False)
    panel = GroupProgress("again", widget=False)
    with nbqueue.Cluster(workers=2, directory=store_dir):
        assert sorted(result_group("again", wait=30_000, count=4)) == list(range(4))
        assert panel.wait(30)
    figures = _figures("again")
    assert (figures.done, figures.failed, figures.total, figures.final) == (4, 0, 4, True)
    assert len(ids) == 4


# -- a store's figures, as the dashboard reads them --------------------------------------

def test_store_figures_show_clusters_groups_running_tasks_and_failures(cluster):
    slow = async_task(fx.reports, 40, 0.1, group="sweep")
    failing = async_task(fx.reports, 2, 0.0, True, group="sweep")
    figures = StoreFigures(cluster.directory)
    running = wait_for(
        lambda: [t for t in figures.read()["running"] if t["id"] == slow and t["progress"]],
        30, "the slow task's progress")
    assert running[0]["func"] == "tests.tasks_fixtures.reports" and running[0]["group"] == "sweep"
    assert running[0]["progress"]["total"] == 40 and running[0]["seconds"] > 0
    failure = wait_for(lambda: [f for f in figures.read()["failures"] if f["id"] == failing],
                       30, "the failure")[0]
    assert failure["error"] == "RuntimeError: failed after reporting"
    assert "Traceback" in failure["traceback"] and "in reports" in failure["traceback"]
    read = figures.read()
    assert read["served"] and read["directory"] == cluster.directory
    (shown,) = read["clusters"]
    assert (shown["id"], shown["state"], shown["pid"], shown["workers"]) == (
        cluster.id, "running", os.getpid(), 2)
    (group,) = read["groups"]
    assert (group["name"], group["total"], group["failed"]) == ("sweep", 2, 1)
    json.dumps(read)  # plain JSON, as the dashboard sends it


def test_a_task_held_for_a_worker_is_leased_and_one_begun_is_running(store_dir):
    running = nbqueue.Cluster(workers=1, directory=store_dir).start()
    try:
        first = async_task(fx.nap, 3, group="one-worker")
        wait_for(lambda: status(first)["state"] == "running", 30, "the first nap held")
        second = async_task(fx.nap, 3, group="one-worker")
        figures = StoreFigures(store_dir)
        states = wait_for(
            lambda: (found := {t["id"]: t["state"] for t in figures.read()["running"]})
            and found.get(first) == "running" and found.get(second) == "leased" and found,
            30, "one nap running, one leased")
        assert states == {first: "running", second: "leased"}
        assert [t["leased"] for t in running_tasks(group="one-worker")] == [False, True]
    finally:
        running.stop(wait=0)


def test_a_stopping_cluster_says_so_and_a_stopped_one_is_gone(store_dir, tmp_path):
    running = nbqueue.Cluster(workers=1, directory=store_dir).start()
    log = str(tmp_path / "log")
    task = async_task(fx.ticking, log, 1, 4.0)  # the stop waits for it: seconds to look
    wait_for(lambda: fx.runs(log, "start") == [1], 60, "the task begun in its worker")
    stopper = threading.Thread(target=running.stop, kwargs={"wait": 10})
    stopper.start()
    figures = StoreFigures(store_dir)
    states = wait_for(lambda: [c["state"] for c in figures.read()["clusters"]] == ["stopping"]
                      and figures.read(), 10, "the cluster shown stopping")
    assert not states["served"]
    stopper.join(30)
    assert figures.read()["clusters"] == [] and result(task) == 1


def test_a_cluster_asked_to_stop_from_another_process_stops(store_dir):
    running = nbqueue.Cluster(workers=1, directory=store_dir).start()
    code = (
        "from nbqueue.disk.directory import heartbeats\n"
        f"heartbeats({store_dir!r}).ask_to_stop({running.id!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    wait_for(lambda: running.stopped, 30, "the cluster stopped")
    assert running.error is None


def test_a_heartbeat_gone_quiet_shows_the_cluster_stale():
    now = time.time()
    info = {"id": "c1", "state": "running", "beat": now - STALE_AFTER - 1, "running": 2,
            "workers": 2, "rate": 3.0}
    assert cluster_figures(info, now)["state"] == "stale"
    assert cluster_figures(dict(info, beat=now), now)["state"] == "running"
    assert cluster_figures(dict(info, stopped=now, error="boom"), now)["state"] == "stopped"
    shown = cluster_figures(dict(info, stopped=now), now)
    assert (shown["busy"], shown["workers"], shown["rate"]) == (0, 0, 0.0)


def test_the_cluster_rate_spans_the_same_window_as_every_view(cluster):
    assert cluster._meter.window == RATE_WINDOW
