"""What tasks do now, from any process: status(), output() and the live rows behind them."""

from __future__ import annotations

import os
import time

import pytest

import nbqueue
from nbqueue.disk import live_rows
from nbqueue.live import running
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


def _live_keys(directory):
    return live_rows.task_ids(directory)


def test_status_of_a_queued_task_then_unknown_ones(store_dir):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nbqueue.NoClusterWarning)
        task_id = nbqueue.async_task(fx.add, 1, group="q", task_name="my-queued-task")
    found = nbqueue.status(task_id)
    assert found["state"] == "queued" and found["attempt"] == 0 and found["group"] == "q"
    assert found["progress"] is None and found["pid"] is None and found["output"] == ""
    assert nbqueue.status("my-queued-task")["id"] == task_id  # by name too
    assert nbqueue.output(task_id) == ""
    assert nbqueue.status("no-such-task")["state"] == "unknown"
    assert nbqueue.output("no-such-task") is None
    with pytest.raises(nbqueue.ConfigurationError, match="task id must be a non-empty"):
        nbqueue.status("")


def test_status_of_finished_tasks(cluster):
    ok = nbqueue.async_task(fx.reports, 3)
    bad = nbqueue.async_task(fx.boom)
    nbqueue.fetch(ok, wait=30000), nbqueue.fetch(bad, wait=30000)
    done, failed = nbqueue.status(ok), nbqueue.status(bad)
    assert done["state"] == "done" and done["progress"] == (3, 3, "step 3")
    assert done["attempt"] == 1 and done["pid"] not in (None, os.getpid())
    assert done["started"] <= done["stopped"]
    assert failed["state"] == "failed" and failed["output"] == ""


def test_a_running_task_shows_its_progress_and_output_while_it_runs(cluster, store_dir):
    task_id = nbqueue.async_task(fx.chatter, 40, seconds=0.1, value="end")
    started = time.monotonic()
    first = wait_for(lambda: "line 000002" in (nbqueue.output(task_id) or ""), 20,
                     "the output of the running task")
    seen_after = time.monotonic() - started
    now = nbqueue.status(task_id)
    assert now["state"] == "running" and now["pid"] not in (None, os.getpid())
    assert now["started"] is not None and now["attempt"] == 1
    assert "line 000039" not in now["output"]
    listed = running(broker=nbqueue.get_broker())
    assert [t["id"] for t in listed] == [task_id] and listed[0]["output"]
    print(f"output read {seen_after:.2f} s after the task was sent")
    assert first
    task = nbqueue.fetch(task_id, wait=30000)
    assert task.result == "end" and task.output.count("line 0000") == 40
    # its live row goes once the outcome is stored
    wait_for(lambda: not _live_keys(store_dir), 5, "the live row removed")
    assert nbqueue.status(task_id)["state"] == "done"


def test_progress_of_a_running_task(cluster):
    task_id = nbqueue.async_task(fx.reports, 30, seconds=0.1)
    progress = wait_for(lambda: nbqueue.status(task_id)["progress"], 20, "a progress report")
    done, total, message = progress
    assert 1 <= done < 30 and total == 30 and message == f"step {done}"
    assert nbqueue.fetch(task_id, wait=30000).progress == (30, 30, "step 30")


def test_a_task_killed_on_timeout_keeps_what_it_wrote(cluster, store_dir):
    task_id = nbqueue.async_task(fx.chatter_then_hang, timeout=2)
    task = nbqueue.fetch(task_id, wait=30000)
    assert not task.success and task.result.startswith("TaskTimeout")
    assert "before the hang" in task.output and "was lost with its run" in task.output
    assert task.pid is not None
    wait_for(lambda: not _live_keys(store_dir), 5, "the live row removed")


def test_a_stale_live_row_of_a_dead_worker_is_not_shown(store_dir):
    dead = 2 ** 22 + 12345  # no such pid
    live_rows.write(store_dir, "t-dead", {"id": "t-dead", "pid": dead, "updated": time.time(),
                                          "started": time.time(), "progress": None,
                                          "output": "x"})
    assert live_rows.task_ids(store_dir) == ["t-dead"]
    assert live_rows.read(store_dir, "t-dead") is None
    assert live_rows.read(store_dir, "t-dead", fresh=False)["output"] == "x"
    live_rows.forget(store_dir, ["t-dead"])
    assert live_rows.read(store_dir, "t-dead", fresh=False) is None
