"""The cluster end to end: a real loky pool, a real store, hooks, groups, timeouts, faults."""

from __future__ import annotations

import os
import threading
import time
import warnings

import pytest

import nbqueue
from nbqueue import (AsyncTask, Cluster, async_iter, async_task, count_group, fetch,
                     queue_size, result, result_group)
from nbqueue.errors import (ConfigurationError, NoClusterWarning, PackingError,
                            TaskFunctionError)
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(90)
WAIT = 20_000  # ms; bounded, generous for a loaded 2-core machine


def test_dotted_path_and_callable(cluster):
    assert result(async_task("math.copysign", 2, -2), wait=WAIT) == -2.0
    assert result(async_task(lambda x, y=1: x * y, 3, y=4), wait=WAIT) == 12
    assert result(async_task(fx.add, 1, b=2), wait=WAIT) == 3


def test_group_of_1000(cluster):
    for i in range(1000):
        async_task(fx.add, i, group="thousand")
    values = result_group("thousand", count=1000, wait=WAIT * 3)
    assert sorted(values) == list(range(1000))
    assert count_group("thousand") == 1000
    assert count_group("thousand", failures=True) == 0


def test_local_hook_is_the_very_object(cluster):
    seen = []
    ids = {async_task(fx.add, i, 1, hook=lambda task: seen.append(task.result))
           for i in range(20)}
    deadline = time.monotonic() + 20
    while len(seen) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == list(range(1, 21))
    assert all(fetch(i).success for i in ids)


def test_dotted_hook_runs_in_cluster_process(cluster):
    fx.HOOKED.clear()
    task_id = async_task(fx.add, 20, 22, hook="tests.tasks_fixtures.hook_record")
    assert result(task_id, wait=WAIT) == 42
    deadline = time.monotonic() + 10
    while not fx.HOOKED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fx.HOOKED == [(task_id, 42)]


def test_failing_hook_is_logged_not_fatal(cluster, caplog):
    def bad_hook(task):
        raise RuntimeError("hook trouble")
    first = async_task(fx.add, 1, hook=bad_hook)
    assert result(first, wait=WAIT) == 1
    deadline = time.monotonic() + 10
    while "hook trouble" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "hook trouble" in caplog.text
    assert result(async_task(fx.add, 2), wait=WAIT) == 2  # the cluster goes on


def test_hooks_run_once_for_every_outcome(cluster):
    calls = []
    hook = calls.append
    saved = async_task(fx.add, 1, hook=hook)
    cached = async_task(fx.add, 2, hook=hook, cached=60)
    unsaved = async_task(fx.add, 3, hook=hook, save=False)
    failed = async_task(fx.boom, hook=hook, ack_failure=True)
    deadline = time.monotonic() + 20
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a second call would show up now
    assert sorted(t.id for t in calls) == sorted([saved, cached, unsaved, failed])
    assert fetch(unsaved) is None  # save=False: not kept, but its hook ran
    assert result(cached, cached=True) == 2


def test_task_that_raises_is_a_failure_with_traceback(cluster):
    task = fetch(async_task(fx.boom, "no good", ack_failure=True), wait=WAIT)
    assert task.success is False
    assert task.result.startswith("ValueError: no good")
    assert "Traceback" in task.result and "tasks_fixtures.py" in task.result
    assert count_group("x") == 0


def test_bad_input_is_refused_at_the_call(store_dir):
    with pytest.raises(TaskFunctionError, match="No module named 'no_such_module'"):
        async_task("no_such_module.func")
    with pytest.raises(TaskFunctionError, match="has no attribute"):
        async_task("math.no_such_function")
    with pytest.raises(PackingError, match="positional argument 0"):
        async_task(fx.add, threading.Lock())
    with pytest.raises(PackingError, match="keyword argument 'b'"):
        async_task(fx.add, 1, b=threading.Lock())
    with pytest.raises(TypeError, match="callable or a dotted path"):
        async_task(42)
    with pytest.raises(ConfigurationError, match="timeout"):
        async_task(fx.add, 1, timeout=-1)
    with pytest.raises(ConfigurationError, match="group"):
        async_task(fx.add, 1, group=5)
    with pytest.raises(ConfigurationError, match="unknown option"):
        async_task(fx.add, 1, q_options={"colour": "red"})
    assert queue_size() == 0  # nothing half-enqueued


def test_options_never_reach_the_function_and_q_options_wins(cluster):
    task_id = async_task(fx.echo, 1, group="opts", x=2)
    assert result(task_id, wait=WAIT) == ((1,), {"x": 2})
    # with q_options, keywords named like options go to the function
    task_id = async_task(fx.echo, group="for-func", q_options={"group": "opts"})
    assert result(task_id, wait=WAIT) == ((), {"group": "for-func"})
    assert fetch(task_id).group == "opts"


def test_timeout_stops_a_sleeping_task_and_others_go_on(cluster):
    hooked = []
    slow = async_task(fx.nap, 30, timeout=1, ack_failure=True, hook=hooked.append)
    quick = [async_task(fx.add, i) for i in range(20)]
    started = time.monotonic()
    task = fetch(slow, wait=WAIT)
    assert task is not None and time.monotonic() - started < 10
    assert not task.success and "timed out after 1 s" in task.result
    assert task.attempt_count == 1
    assert [result(q, wait=WAIT) for q in quick] == list(range(20))
    deadline = time.monotonic() + 10
    while not hooked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t.id for t in hooked] == [slow]  # a timeout's hook runs too


def test_timeout_kills_a_worker_that_ignores_the_signal(cluster):
    stuck = async_task(fx.ignore_alarm_then_sleep, 30, timeout=1, ack_failure=True)
    time.sleep(0.2)
    others = [async_task(fx.nap, 0.05, i) for i in range(10)]
    task = fetch(stuck, wait=WAIT)
    assert not task.success
    assert "timed out after 1 s" in task.result and "killed" in task.result
    assert task.time_taken() < 10
    assert [result(o, wait=WAIT) for o in others] == list(range(10))
    assert result(async_task(fx.add, 5), wait=WAIT) == 5


def test_worker_death_is_a_failure_after_max_attempts(cluster):
    dying = async_task(fx.die, max_attempts=2)
    fine = [async_task(fx.nap, 0.02, i) for i in range(10)]
    task = fetch(dying, wait=WAIT * 2)
    assert task is not None and not task.success
    assert "worker process running this task died" in task.result
    assert task.attempt_count == 2
    assert [result(f, wait=WAIT) for f in fine] == list(range(10))


def test_failed_task_is_retried_until_max_attempts(store_dir, tmp_path):
    runs = str(tmp_path / "runs")
    with Cluster(workers=1, retry=1, max_attempts=5):
        task_id = async_task(fx.fail_until, runs, 2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = fetch(task_id)
            if task is not None and task.success:
                break
            time.sleep(0.05)
    assert task.success and task.result == 3 and task.attempt_count == 3


def test_per_task_max_attempts_stops_retries(store_dir, tmp_path):
    runs = str(tmp_path / "runs")
    with Cluster(workers=1, retry=1, max_attempts=10):
        task_id = async_task(fx.fail_until, runs, 100, max_attempts=2)
        time.sleep(4)  # time for more deliveries, if any were (wrongly) made
        task = fetch(task_id)
    assert not task.success and task.attempt_count == 2
    with open(runs) as src:
        assert len(src.read().splitlines()) == 2


def test_long_task_is_not_delivered_twice(store_dir, tmp_path):
    """A task longer than `retry` keeps its lease while it runs (Django Q re-delivers it)."""
    log = str(tmp_path / "log")
    with Cluster(workers=2, retry=1):
        task_id = async_task(fx.log_run, log, 3.5, "done")
        assert result(task_id, wait=WAIT) == "done"
        time.sleep(1.5)
    with open(log) as src:
        starts = [line for line in src if line.startswith("start")]
    assert len(starts) == 1
    assert fetch(task_id).attempt_count == 1


@pytest.mark.parametrize("value", [None, 0, [], ""])
def test_wait_forever_returns_on_falsy_results(cluster, value):
    task_id = async_task(fx.nap, 0.2, value)
    started = time.monotonic()
    assert result(task_id, wait=-1) == value
    assert fetch(task_id, wait=-1).success
    assert time.monotonic() - started < 20


def test_async_iter_keeps_input_order(cluster):
    items = list(range(50))
    iter_id = async_iter(fx.nap, [(0.05 * ((7 * i) % 5), i) for i in items])
    assert result(iter_id, wait=WAIT) == items


def test_sync_failure_is_stored_not_raised(store_dir):
    task_id = async_task(fx.boom, sync=True)
    task = fetch(task_id)
    assert task is not None and not task.success and "ValueError: boom" in task.result


def test_sync_runs_the_same_path_with_hook_object(store_dir):
    seen = []
    task_id = async_task(fx.add, 2, 3, sync=True, hook=seen.append, group="s")
    assert result(task_id) == 5
    assert [t.id for t in seen] == [task_id]
    assert count_group("s") == 1


def test_warns_once_when_no_cluster_serves_the_directory(store_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async_task(fx.add, 1)
        async_task(fx.add, 2)
    found = [w for w in caught if issubclass(w.category, NoClusterWarning)]
    assert len(found) == 1 and "nbqueue cluster" in str(found[0].message)
    assert queue_size() == 2


def test_stop_hands_unfinished_work_back(store_dir):
    cluster = Cluster(workers=2).start()
    ids = [async_task(fx.nap, 2, i) for i in range(4)]
    time.sleep(1.0)
    cluster.stop(wait=0.2)
    assert sum(fetch(i) is not None for i in ids) == 0
    assert queue_size() == 4
    with Cluster(workers=2):
        assert [result(i, wait=WAIT) for i in ids] == list(range(4))
    assert {fetch(i).attempt_count for i in ids} == {1}


def test_unsigned_package_is_refused_and_recorded(cluster, broker):
    broker.enqueue(os.urandom(100))
    broker.enqueue(b"NBQ1" + b"\0" * 32 + b"not a real payload")
    assert result(async_task(fx.add, 1), wait=WAIT) == 1
    deadline = time.monotonic() + 10
    while (broker.store.saved.totals()[1] < 2 or broker.leased()) and (
            time.monotonic() < deadline):
        time.sleep(0.02)
    assert broker.store.saved.totals()[1] == 2
    assert queue_size() == 0 and broker.leased() == 0


def test_cluster_repr_info_and_double_start(cluster):
    assert "running" in repr(cluster) and "workers=2" in repr(cluster)
    info = cluster.info()
    assert info["workers"] == 2 and info["directory"] == cluster.directory
    with pytest.raises(nbqueue.ClusterError):
        cluster.start()


def test_asynctask_against_cluster(cluster):
    task = AsyncTask(fx.add, 1, 2, group="at")
    task.run()
    assert task.result(wait=WAIT) == 3
    task.args = (5, 5)
    assert task.result() is None
    task.run()
    assert task.result(wait=WAIT) == 10
    assert sorted(task.result_group(count=2, wait=WAIT)) == [3, 10]
