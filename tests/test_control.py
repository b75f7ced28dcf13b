"""nbqueue.control: cancel tasks (queued, leased, running) and retry failures, with real
clusters; a cancelled task's side effect (a line in a file) never appears."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import nbqueue
from nbqueue import Cluster, async_task, fetch, queue_size
from nbqueue.control import cancel, cancel_group, cancel_tasks, retry, retry_group
from nbqueue.errors import ConfigurationError
from nbqueue.disk.directory import get_store
from nbqueue.display.views import format_seconds
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

WAIT = 30_000



def test_a_queued_task_never_runs_and_its_failure_says_cancelled(store_dir, tmp_path):
    log = str(tmp_path / "log")
    seen = []
    with pytest.warns(nbqueue.NoClusterWarning):
        task_id = async_task(fx.logged, log, 1, hook=lambda task: seen.append(task.result))
    kept = async_task(fx.logged, log, 2)
    assert cancel(task_id) is True
    assert queue_size() == 1  # only the other one waits
    task = fetch(task_id)
    assert task is not None and not task.success and "cancelled" in task.result
    assert task.cause is nbqueue.Cause.CANCELLED
    assert seen and "cancelled" in seen[0]  # its hook ran
    assert cancel(task_id) is False  # finished: cancelled already
    with Cluster(workers=1):
        assert fetch(kept, wait=WAIT).success
    assert fx.runs(log, "start") == [2] and fx.runs(log, "stop") == [2]  # 1 never ran


@pytest.mark.alone  # bounds a time from above
@pytest.mark.timeout(60)
def test_a_running_task_is_stopped_within_a_second_and_the_others_untouched(cluster,
                                                                             tmp_path):
    log = str(tmp_path / "log")
    victim = async_task(fx.logged, log, 1, 4.0)
    other = async_task(fx.logged, log, 2, 2.0)
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both tasks running")
    started = time.monotonic()
    assert cancel(victim) is True
    task = fetch(victim, wait=5_000)
    assert task is not None and "cancelled" in task.result
    assert task.cause is nbqueue.Cause.CANCELLED  # TaskCancelled raised in it
    assert time.monotonic() - started < 2.5
    finished = fetch(other, wait=WAIT)
    assert finished.success and finished.attempt_count == 1  # not restarted
    # past the victim's natural end (4 s after it began): its stop line never comes
    with open(log) as lines:
        began = float(next(line.split()[3] for line in lines if line.startswith("start 1 ")))
    time.sleep(max(0.0, began + 4.5 - time.time()))
    assert fx.runs(log, "stop") == [2]
    assert sorted(fx.runs(log, "start")) == [1, 2]  # the other ran once: not restarted


@pytest.mark.timeout(60)
def test_a_task_leased_but_not_started_never_runs(store_dir, tmp_path):
    log = str(tmp_path / "log")
    with Cluster(workers=1) as running:
        first = async_task(fx.logged, log, 1, 2.0)
        wait_for(lambda: fx.runs(log, "start") == [1], 20, "the first task running")
        waiting = async_task(fx.logged, log, 2)
        wait_for(lambda: len(running.inflight) == 2, 10, "the second task leased")
        assert cancel(waiting) is True
        # cancelled at once, not when the run ahead of it ends: no worker began it
        assert "cancelled" in fetch(waiting).result
        assert fetch(waiting).cause is nbqueue.Cause.CANCELLED  # the cluster's verdict
        assert fetch(first) is None
        assert fetch(first, wait=WAIT).success
        time.sleep(0.5)
    assert fx.runs(log, "start") == [1] and fx.runs(log, "stop") == [1]


@pytest.mark.timeout(60)
def test_cancel_group_counts_and_finished_tasks_are_not_cancelled(cluster, tmp_path):
    log = str(tmp_path / "log")
    done = async_task(fx.add, 1, group="g")
    assert fetch(done, wait=WAIT).success
    ids = [async_task(fx.logged, log, i, 5.0, group="g") for i in range(6)]
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "two running")
    assert cancel(done) is False and cancel("no-such-task") is False
    assert cancel_group("g") == 6
    outcomes = [fetch(task_id, wait=5_000) for task_id in ids]
    assert all(t is not None and "cancelled" in t.result for t in outcomes)
    assert {t.cause for t in outcomes} == {nbqueue.Cause.CANCELLED}
    assert nbqueue.count_group("g") == 7 and nbqueue.count_group("g", failures=True) == 6
    assert cancel_group("g") == 0 and cancel_tasks(ids) == 0
    assert fx.runs(log, "stop") == [] and len(fx.runs(log, "start")) == 2


@pytest.mark.timeout(60)
def test_cancel_from_another_process_stops_a_running_task(cluster, tmp_path, store_dir):
    log = str(tmp_path / "log")
    victim = async_task(fx.logged, log, 1, 6.0)
    wait_for(lambda: fx.runs(log, "start") == [1], 20, "the task running")
    code = (f"import nbqueue; nbqueue.configure(directory={store_dir!r}); "
            f"print(nbqueue.cancel({victim!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    assert out.stdout.strip() == "True", out.stderr
    assert "cancelled" in fetch(victim, wait=5_000).result
    time.sleep(0.5)
    assert fx.runs(log, "stop") == []


def test_a_task_is_cancelled_by_its_name_too(store_dir):
    from nbqueue.disk.names import humanize
    with pytest.warns(nbqueue.NoClusterWarning):
        first = async_task(fx.add, 1)
    named = async_task(fx.add, 2, task_name="my-named-task")
    assert cancel(humanize(first)) is True and cancel("my-named-task") is True
    assert queue_size() == 0
    assert "cancelled" in fetch(humanize(first)).result
    assert "cancelled" in fetch("my-named-task").result and fetch(named) is not None


def test_bad_input_is_refused_at_the_call(store_dir):
    for call in (lambda: cancel(""), lambda: cancel(None), lambda: cancel_group(3),
                 lambda: retry(""), lambda: retry_group(None)):
        with pytest.raises(ConfigurationError, match="non-empty string"):
            call()


@pytest.mark.timeout(60)
def test_retry_runs_a_fixed_failure_again_under_its_own_id(cluster, tmp_path):
    path = str(tmp_path / "input.txt")
    task_id = async_task(fx.read_file, path, group="files")
    ok = async_task(fx.add, 2, group="files")
    failed = fetch(task_id, wait=WAIT)
    assert not failed.success and "No such file" in failed.result
    assert fetch(ok, wait=WAIT).success
    assert retry(ok) is False  # a success is not run again
    with open(path, "w") as out:
        out.write("fixed")
    assert retry(task_id) is True
    again = fetch(task_id, wait=WAIT)
    assert again.success and again.result == "fixed" and again.attempt_count == 2
    # enqueued once; its wait in the queue counts from the retry, when it was sent again
    assert again.started == failed.started and again.sent > failed.stopped
    assert failed.sent == failed.started
    waited = (again.began - again.sent).total_seconds()
    assert f"waited {format_seconds(max(0.0, waited))} in the queue" in again._repr_html_()
    assert nbqueue.count_group("files") == 2  # one outcome per task
    assert nbqueue.count_group("files", failures=True) == 0
    assert retry(task_id) is False and retry("no-such-task") is False


@pytest.mark.timeout(60)
def test_retry_group_and_a_cancelled_task_can_run_again(cluster, tmp_path):
    missing = [str(tmp_path / f"in{i}") for i in range(3)]
    ids = [async_task(fx.read_file, p, group="batch") for p in missing]
    assert all(not fetch(i, wait=WAIT).success for i in ids)
    for i, path in enumerate(missing[:2]):
        with open(path, "w") as out:
            out.write(str(i))
    assert retry_group("batch") == 3
    outcomes = {i: fetch(i, wait=WAIT) for i in ids}
    assert [outcomes[i].success for i in ids] == [True, True, False]
    assert all(t.attempt_count == 2 for t in outcomes.values())
    assert get_store(cluster.directory).saved.tally("batch") == (2, 1)
    log = str(tmp_path / "log")
    victim = async_task(fx.logged, log, 9, 3.0)
    wait_for(lambda: fx.runs(log, "start") == [9], 20, "running")
    assert cancel(victim)
    assert "cancelled" in fetch(victim, wait=5_000).result
    assert retry(victim) is True  # its cancel request is forgotten: it runs this time
    again = fetch(victim, wait=WAIT)
    assert again.success, again.result


@pytest.mark.timeout(60)
def test_a_failure_of_a_sync_task_is_retried_on_the_cluster(cluster, tmp_path):
    path = str(tmp_path / "later.txt")
    task_id = async_task(fx.read_file, path, sync=True)
    assert not fetch(task_id).success
    with open(path, "w") as out:
        out.write("now")
    assert retry(task_id) is True
    again = fetch(task_id, wait=WAIT)
    assert again.success and again.result == "now" and again.attempt_count == 2


def _ran_beside_its_retry(path: str) -> bool:
    """Whether the first run (of ``fx.ticking`` lines) went on ticking after the second
    run started, in another process."""
    lines = [line.split() for line in open(path).read().splitlines()]
    starts = [i for i, line in enumerate(lines) if line[0] == "start"]
    first_pid, second_pid = lines[starts[0]][2], lines[starts[1]][2]
    return first_pid != second_pid and any(
        line[2] == first_pid for line in lines[starts[1]:])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("deaf", [False, True], ids=["stops", "killed"])
def test_cancel_then_retry_at_once_never_runs_the_task_twice_at_once(cluster, tmp_path,
                                                                      deaf):
    """Retry right after cancel, while the cancelled run is being stopped (or its worker
    killed, for a task deaf to the stop signal): the retry waits for the cancel's outcome,
    so the task runs again only once the old run is gone."""
    log = str(tmp_path / "log")
    victim = async_task(fx.ticking, log, 1, 3.0, deaf)
    wait_for(lambda: fx.runs(log, "start") == [1], 20, "running")
    assert cancel(victim) is True
    assert retry(victim) is True
    again = fetch(victim, wait=WAIT)
    assert again.success and again.attempt_count == 2
    assert fx.runs(log, "start") == [1, 1] and fx.runs(log, "stop") == [1]
    assert not _ran_beside_its_retry(log), "the cancelled run and its retry ran at once"


def test_a_cancel_request_read_late_never_stops_the_retry_sent_after_it(cluster, tmp_path):
    """A cluster that read the cancel requests just before a retry cleared them still
    holds the request when the retried delivery reaches it: the request is for the
    deliveries sent before it, so the retry runs. (The stale read is made here by putting
    the request back, as it was, once the retry is queued.)"""
    broker = nbqueue.get_broker()
    log = str(tmp_path / "log")
    victim = async_task(fx.ticking, log, 1, 5.0)
    wait_for(lambda: fx.runs(log, "start") == [1], 20, "running")
    assert cancel(victim) is True  # it waits for the cancel's outcome: the request is gone
    assert fetch(victim, wait=WAIT).cause is nbqueue.Cause.CANCELLED
    requested_at = time.time()  # as late as the request could be: still before the retry
    assert retry(victim) is True
    with broker._transaction(retry=True):  # the retry runs for 5 s: it meets the request
        broker.search._set_cancels({victim: requested_at})
    again = wait_for(lambda: (t := fetch(victim)) is not None and t, WAIT / 1000, "the retry")
    assert again.success and again.attempt_count == 2, again.result
    assert fx.runs(log, "start") == [1, 1] and fx.runs(log, "stop") == [1]


def test_retry_of_a_task_whose_cancel_has_not_taken_effect_waits_then_says_so(store_dir,
                                                                              tmp_path):
    """With no cluster to stop it, a leased task's cancel cannot take effect: retry waits
    CANCEL_WAIT for it, then refuses with TaskStillRunning instead of sending it again."""
    broker = nbqueue.get_broker()
    with pytest.warns(nbqueue.NoClusterWarning):
        task_id = async_task(fx.add, 1)
    assert len(broker.lease("a-cluster-that-hangs", 10, 60)) == 1
    broker.flush()
    assert cancel(task_id) is True  # requested: a cluster holds it
    started = time.monotonic()
    with pytest.raises(nbqueue.TaskStillRunning, match="has not stopped it yet"):
        retry(task_id)
    assert time.monotonic() - started >= 4.5
    assert queue_size() == 0  # not sent again


@pytest.mark.timeout(90)
@pytest.mark.parametrize("round_", range(3))
def test_cancel_group_racing_finishing_tasks_keeps_every_result_and_counts_exactly(
        cluster, tmp_path, caplog, round_):
    """cancel_group while short tasks finish by the hundred: a run that ended before the
    cancel (its stop line written) keeps its result, one that never ran to its stop line
    is cancelled, the count returned is exactly the tasks stored as cancelled, every task
    has one outcome, and no outcome is said to be dropped. (A run that writes its stop
    line while the cancel reaches it may still be stopped before it returns.)"""
    log = str(tmp_path / "log")
    ids = [async_task(fx.logged, log, i, 0.005, group="race") for i in range(300)]
    wait_for(lambda: len(fx.runs(log, "stop")) >= 40, 30, "some tasks done")
    asked = time.time()
    count = cancel_group("race")
    outcomes = {i: fetch(i, wait=10_000) for i in ids}
    assert all(t is not None for t in outcomes.values())
    with open(log) as lines:
        stopped = {int(f[1]): float(f[3]) for f in map(str.split, lines) if f[0] == "stop"}
    for number, task_id in enumerate(ids):
        task = outcomes[task_id]
        kept = task.success and task.result == number
        cancelled = not task.success and "cancelled" in task.result
        if number not in stopped:
            assert cancelled, (number, task.result)
        elif stopped[number] < asked:
            assert kept, (number, task.result)
        else:
            assert kept or cancelled, (number, task.result)
    assert count == sum(not t.success for t in outcomes.values())
    assert nbqueue.count_group("race") == 300
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


@pytest.mark.timeout(60)
def test_simultaneous_retries_of_one_failure_send_it_once(cluster, tmp_path):
    """Retries of one failure from many threads at once: one of them claims the failure
    and sends the task again; it runs once more, not once per call."""
    flag = str(tmp_path / "fixed")
    task_id = async_task(fx.fails_until, flag, b"x")
    assert not fetch(task_id, wait=WAIT).success
    open(flag, "w").close()
    barrier = threading.Barrier(8)
    answers = []

    def retry_now() -> None:
        barrier.wait(10)
        answers.append(retry(task_id))

    threads = [threading.Thread(target=retry_now) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == [False] * 7 + [True]
    assert fetch(task_id, wait=WAIT).success
    wait_for(lambda: queue_size() == 0 and not cluster.inflight, 10, "nothing left")
    assert fetch(task_id).attempt_count == 2  # one more run, not a third
