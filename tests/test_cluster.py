"""The cluster end to end: a real loky pool, a real store, hooks, groups, timeouts, faults."""

from __future__ import annotations

import concurrent.futures
import logging
import logging.handlers
import os
import threading
import time
import warnings

import pytest

import nbqueue
from nbqueue import (AsyncTask, Cluster, async_iter, async_task, count_group, fetch,
                     fetch_group, get_broker, queue_size, result, result_group)
from nbqueue.errors import (ConfigurationError, NoClusterWarning, PackingError,
                            TaskFunctionError)
from nbqueue.cluster.cancels import WHY as CANCELLED
from nbqueue.worker.callables import local_hooks
from nbqueue.disk.directory import get_store
from tests import stopping
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

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
    """Logged by a module's logger under ``nbqueue``: a handler a user put on the
    ``nbqueue`` logger gets it, with no hand-written prefix in its message."""
    mine = logging.handlers.BufferingHandler(100)
    logging.getLogger("nbqueue").addHandler(mine)
    def bad_hook(task):
        raise RuntimeError("hook trouble")
    try:
        first = async_task(fx.add, 1, hook=bad_hook)
        assert result(first, wait=WAIT) == 1
        wait_for(lambda: "hook trouble" in caplog.text, 10, "the hook's failure logged")
    finally:
        logging.getLogger("nbqueue").removeHandler(mine)
    [record] = [r for r in mine.buffer if "bad_hook" in r.getMessage()]
    assert record.name.startswith("nbqueue.cluster.") and record.levelname == "ERROR"
    assert record.getMessage().startswith("hook 'bad_hook' of task ")
    assert "hook trouble" in str(record.exc_info[1])
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
    assert task.result.startswith("ValueError: no good") and task.cause is nbqueue.Cause.RAISED
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
    assert task.attempt_count == 1 and task.cause is nbqueue.Cause.TIMEOUT  # tier 1
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
    assert task.cause is nbqueue.Cause.TIMEOUT  # tier 2: the cluster's verdict
    assert task.time_taken() < 10
    assert [result(o, wait=WAIT) for o in others] == list(range(10))
    assert result(async_task(fx.add, 5), wait=WAIT) == 5


def test_a_verdict_reached_after_the_run_outcome_was_taken_is_void(cluster, caplog):
    """The monitor decides a task's outcome (a cancel of a task its workers had not noted
    as begun, a timeout) just as the task's own outcome reaches the writer: it looked
    the task up in flight a moment before. The run's outcome, taken first, is the only
    one: the late verdict neither replaces it nor counts it again, and no outcome is
    said to be dropped."""
    first = async_task(fx.nap, 0.3, "ran", group="late")
    job = wait_for(lambda: cluster.inflight.job_of_task(first), 10, "the task in flight")
    assert result(first, wait=WAIT) == "ran"  # its outcome is stored: the writer took it
    cluster.writer.judge(job, CANCELLED, nbqueue.Cause.CANCELLED, attempt=job.lease.attempt,
                         final=True)  # the monitor's verdict, a moment late
    assert result(async_task(fx.add, 1, 1, group="late"), wait=WAIT) == 2  # the writer
    task = fetch(first)  # handled the verdict before this outcome, which came after it
    assert task.success and task.result == "ran" and task.attempt_count == 1
    assert count_group("late") == 2 and count_group("late", failures=True) == 0
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


def test_worker_death_is_a_failure_after_max_attempts(cluster):
    dying = async_task(fx.die, max_attempts=2)
    fine = [async_task(fx.nap, 0.02, i) for i in range(10)]
    task = fetch(dying, wait=WAIT * 2)
    assert task is not None and not task.success
    assert "worker process running this task died" in task.result
    assert task.attempt_count == 2 and task.cause is nbqueue.Cause.WORKER_LOST
    assert [result(f, wait=WAIT) for f in fine] == list(range(10))


def test_failed_task_is_retried_until_max_attempts(store_dir, tmp_path):
    """ack_failures=False (Django Q's way): a task that raised is delivered again after
    `retry`; its failures before the last attempt are not outcomes (nothing stored)."""
    runs = str(tmp_path / "runs")
    with Cluster(workers=1, retry=1, max_attempts=5, ack_failures=False):
        task_id = async_task(fx.fail_until, runs, 2)
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            task = fetch(task_id)
            seen.add(None if task is None else task.success)
            if task is not None and task.success:
                break
            time.sleep(0.05)
    assert task.success and task.result == 3 and task.attempt_count == 3
    assert seen == {None, True}  # no failure was ever shown as the task's outcome


def test_a_task_that_raised_is_final_by_default(cluster, tmp_path):
    """ack_failures=True is the default: a failure is stored at once, never delivered again."""
    runs = str(tmp_path / "runs")
    task = fetch(async_task(fx.fail_until, runs, 2), wait=WAIT)
    assert not task.success and task.attempt_count == 1
    wait_for(lambda: get_broker().leased() == 0, 10, "the failure acknowledged")
    time.sleep(1)
    with open(runs) as src:
        assert len(src.read().splitlines()) == 1


def test_per_task_max_attempts_stops_retries(store_dir, tmp_path):
    runs = str(tmp_path / "runs")
    with Cluster(workers=1, retry=1, max_attempts=10, ack_failures=False):
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


def test_stop_waits_for_the_tasks_running_not_for_those_a_worker_starts_meanwhile(
        store_dir, tmp_path):
    """``stop(wait)`` lets the task running when it is called finish; the tasks queued
    behind it in the worker are not waited for: the one it starts meanwhile is cut short
    and, like the others, goes back to the queue uncounted."""
    log = tmp_path / "runs.log"
    cluster = Cluster(workers=1).start()
    first = async_task(fx.logged, log, 0, 3.0)
    behind = [async_task(fx.logged, log, i, 60.0) for i in range(1, 4)]
    wait_for(lambda: "start 0 " in (log.read_text() if log.exists() else ""), WAIT / 1000,
             "the first task running")
    began = time.monotonic()
    cluster.stop(wait=30)
    took = time.monotonic() - began
    assert took < 20, f"stop waited {took:.1f} s: for a task started after it was called"
    assert "stop 0 " in log.read_text()
    assert fetch(first).success and fetch(first).attempt_count == 1
    assert [fetch(i) for i in behind] == [None] * 3
    assert queue_size() == 3


def test_unsigned_package_is_refused_and_recorded(cluster, broker):
    broker.enqueue(os.urandom(100))
    broker.enqueue(b"NBQ1" + b"\0" * 32 + b"not a real payload")
    assert result(async_task(fx.add, 1), wait=WAIT) == 1
    deadline = time.monotonic() + 10
    saved = get_store(broker.directory).saved
    while (saved.totals()[1] < 2 or broker.leased()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert saved.totals()[1] == 2
    assert queue_size() == 0 and broker.leased() == 0


def test_cluster_repr_info_and_double_start(store_dir):
    cluster = Cluster(workers=2).start()
    assert "running" in repr(cluster) and "workers=2" in repr(cluster)
    info = cluster.info()
    assert info["workers"] == 2 and info["directory"] == cluster.directory
    assert info["error"] is None
    assert cluster.start() is cluster  # running: start() is a no-op
    cluster.stop(wait=5)
    with pytest.raises(nbqueue.ClusterError, match="make a new Cluster"):
        cluster.start()


def _feeders() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "nbqueue-feeder" and t.is_alive())


def test_with_block_on_a_started_cluster(store_dir):
    with Cluster(workers=1).start() as running:
        assert running.running
        assert result(async_task(fx.add, 2, 2), wait=WAIT) == 4
    assert not running.running
    with Cluster(workers=1) as running:
        assert result(async_task(fx.add, 3, 3), wait=WAIT) == 6
    assert not running.running


def test_misspelt_cluster_option_is_named(store_dir):
    with pytest.raises(ConfigurationError, match="'wrkers' \\(did you mean 'workers'\\?\\)"):
        Cluster(wrkers=2)
    with pytest.raises(ConfigurationError, match="another executor"):
        Cluster(address="tcp://127.0.0.1:1")


def test_asynctask_against_cluster(cluster):
    task = AsyncTask(fx.add, 1, 2, group="at")
    task.run()
    assert task.result(wait=WAIT) == 3
    task.args = (5, 5)
    assert task.result() is None
    task.run()
    assert task.result(wait=WAIT) == 10
    assert sorted(task.result_group(count=2, wait=WAIT)) == [3, 10]


def test_no_cluster_warning_again_after_a_cluster_stopped(store_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cluster(workers=1):
            assert result(async_task(fx.add, 1), wait=WAIT) == 1
        async_task(fx.add, 2)  # the cluster is gone: say so again
    found = [w for w in caught if issubclass(w.category, NoClusterWarning)]
    assert len(found) == 1


def test_hook_object_given_before_the_cluster_starts_is_called_itself(store_dir):
    """The very object is called, not a pickled copy: the caller's own list fills."""
    seen: list = []
    task_id = async_task(fx.add, 2, 3, hook=lambda task: seen.append(task.result))
    with Cluster(workers=1):
        assert result(task_id, wait=WAIT) == 5
        wait_for(lambda: seen, 10, "the hook")
    assert seen == [5]
    assert task_id not in local_hooks  # forgotten once it ran


@pytest.mark.parametrize("count", ["5", -1, 0, 2.5, True])
def test_group_count_must_be_a_whole_number(store_dir, count):
    with pytest.raises(ConfigurationError, match="count must be a whole number >= 1"):
        result_group("g", count=count, wait=10)
    with pytest.raises(ConfigurationError, match="count must be a whole number >= 1"):
        fetch_group("g", count=count)


@pytest.fixture
def quick_hints(monkeypatch):
    from nbqueue.disk import store
    monkeypatch.setattr(store, "HINT_AFTER", 0.3)


def _hint(call) -> str:
    from nbqueue.errors import WaitWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = [str(w.message) for w in caught if issubclass(w.category, WaitWarning)]
    assert len(found) == 1, found
    return found[0]


def test_waits_that_can_never_end_say_why(cluster, quick_hints):
    unsaved = async_task(fx.add, 1, save=False)
    assert "save=False" in _hint(lambda: result(unsaved, wait=1500))
    cached = async_task(fx.add, 2, cached=True)
    assert result(cached, wait=WAIT, cached=True) == 2
    assert "cached=True" in _hint(lambda: result(cached, wait=1500))
    assert "check the id or name" in _hint(lambda: result("four-alpha-india-baconx", wait=1500))
    assert "group 'nope' has 0 outcome(s), not the 3 waited for" in _hint(
        lambda: result_group("nope", count=3, wait=1500))
    cluster.stop(wait=5)
    queued = async_task(fx.add, 3)
    assert "no nbqueue cluster serves" in _hint(lambda: result(queued, wait=1500))


def test_a_wait_that_will_end_does_not_warn(cluster, quick_hints):
    from nbqueue.errors import WaitWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert result(async_task(fx.nap, 1.0, 7), wait=WAIT) == 7
    assert not [w for w in caught if issubclass(w.category, WaitWarning)]


@pytest.mark.parametrize("executor", ["loky", "dask"])
def test_tasks_enqueued_by_a_task_go_to_its_store(store_dir, tmp_path, monkeypatch, executor):
    """With configure(directory=D), a task's children go to D, not to .nbqueue in the
    worker's working directory (where no cluster would ever run them)."""
    monkeypatch.chdir(tmp_path)
    options = {"dashboard_address": None} if executor == "dask" else {}
    with Cluster(workers=2, executor=executor, **options):
        children = result(async_task(fx.spawn_children, 5, "children"), wait=WAIT)
        assert len(children) == 5
        assert sorted(result_group("children", count=5, wait=WAIT)) == list(range(100, 105))
    assert not (tmp_path / ".nbqueue").exists()


def test_a_task_waiting_for_its_own_child_on_one_worker_says_why(store_dir):
    with Cluster(workers=1):
        value, said = result(async_task(fx.wait_for_child, 2), wait=WAIT)
        assert value is None  # the child waited for the one worker, busy waiting for it
        assert len(said) == 1 and "a deadlock" in said[0], said
        assert count_group("x") == 0


def test_async_iter_results_are_not_pruned_by_save_limit(store_dir):
    """result(iter_id) needs every item: save_limit prunes single tasks only."""
    with Cluster(workers=2, save_limit=5) as running:
        iter_id = async_iter(fx.add, [(i, 1) for i in range(30)])
        assert result(iter_id, wait=WAIT) == list(range(1, 31))
        singles = [async_task(fx.add, i) for i in range(20)]
        # all stored (outcomes are stored as they end, not in order: the last one sent
        # may be pruned by five stored after it before a wait for it reads it)
        wait_for(lambda: running.done == 50, 20, "the singles stored")
        wait_for(lambda: sum(fetch(i) is not None for i in singles) <= 5, 20, "pruning")
        assert result(iter_id) == list(range(1, 31))


@pytest.mark.alone  # bounds a time from above
@pytest.mark.timeout(60)
def test_fast_outcomes_of_a_chunk_are_not_held_back_by_a_slow_task(store_dir):
    """Outcomes travel by the stream as tasks end: the fast tasks of a chunk are stored
    while a slow one of the same chunk still runs."""
    with Cluster(workers=1) as running:
        warm = [async_task(fx.add, i, 1, group="warm") for i in range(300)]
        assert len(nbqueue.result_group("warm", count=len(warm), wait=30_000)) == 300
        assert running.feeder.chunk_size() >= 6  # the next six go in one chunk
        async_iter(fx.nap, [0, 0, 0, 3, 0, 0], group="mixed")
        start = time.monotonic()
        part = get_store(running.directory).saved
        seen: dict[str, float] = {}  # task id -> when a reader first saw its outcome
        while len(seen) < 3 and time.monotonic() - start < 2:
            for task_id in part.group_ids("mixed"):
                seen.setdefault(task_id, time.time())
            time.sleep(0.005)
        assert len(seen) == 3 and count_group("mixed") == 3  # the slow one runs on
        lags = [seen[r["id"]] - r["stopped"] for r in part.records(list(seen))]
        assert max(lags) < 0.3, lags  # visible within about 0.2 s of the task's end
        wait_for(lambda: count_group("mixed") == 6, 20, "the rest")
        assert running.info()["failed"] == 0


# -- stopping with tasks leased but not started -------------------------------------------

@pytest.mark.timeout(300)
@pytest.mark.parametrize("way", ["0", "0.3", "default", "panel", "replace"])
def test_every_way_of_stopping_is_quiet_and_loses_nothing(store_dir, tmp_path, way):
    """Three rounds in one process, each stopped 2 s in while the cluster holds tasks no
    worker has started (``stop(wait=0)``, a small wait, the default, the panel's Stop
    button, a cluster started with other options): nothing on stderr, no thread dead, no
    error logged; then a cluster runs every task once, none counted twice."""
    log = tmp_path / "runs.log"
    report = stopping.run("loky", way, store_dir, log)
    stopping.drain_and_count(log, stopping.ROUNDS * stopping.TASKS, report["windows"])


def test_a_chunk_its_executor_cannot_run_is_each_tasks_failure(store_dir):
    """A chunk the executor fails before any of its tasks began (as dask does when a
    worker cannot import nbqueue): every task of it is a Failure of that cause, saying
    what the executor said, and the cluster goes on."""
    with Cluster(workers=1) as running:
        executor = running.executor
        submit = executor.submit
        failing = threading.Event()  # set while only the doomed task is in the queue

        def fails(items):
            if not failing.is_set():
                return submit(items)
            future = concurrent.futures.Future()
            future.set_exception(OSError("no worker can import what the chunk needs"))
            return future

        executor.submit = fails  # the executor's own word, its pool left as it is
        failing.set()
        task = fetch(async_task(fx.add, 1, 2), wait=WAIT)
        failing.clear()
        assert task is not None and not task.success and task.attempt_count == 1
        assert task.result.startswith("OSError: no worker can import what the chunk needs")
        assert task.cause is nbqueue.Cause.EXECUTOR
        assert result(async_task(fx.add, 2, 2), wait=WAIT) == 4


def test_a_task_delivered_again_after_its_outcome_was_stored_is_not_run_again(store_dir,
                                                                              tmp_path):
    """A cluster that stored an outcome and died before its ack was written leaves the
    lease to expire: the delivery that comes again finds the outcome stored, is
    acknowledged and not run; the outcome stands."""
    import pickle

    from nbqueue.disk.records import Outcome, decode_header, make_record

    log = str(tmp_path / "log")
    broker = nbqueue.get_broker()
    with pytest.warns(NoClusterWarning):
        task_id = async_task(fx.logged, log, 1)
    broker.flush()
    (lease,) = broker.lease("a-cluster-that-died", 10, 0.3)
    header = decode_header(broker.key, lease.package)
    now = time.time()  # what that cluster stored before it died: one run, attempt 1
    get_store(broker.directory).save(
        [make_record(header, Outcome(task_id, True, pickle.dumps(1), now, now), 1)])
    with Cluster(workers=1, directory=store_dir):
        wait_for(lambda: broker.leased() == 0 and broker.size() == 0, 30,
                 "the lease expired and the delivery that came again acknowledged")
    assert fx.runs(log, "start") == []  # not run again
    task = fetch(task_id)
    assert task.success and task.result == 1 and task.attempt_count == 1
