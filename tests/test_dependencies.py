"""Tasks that take other tasks' results: ``nbqueue.Result(task_id)``, a ``TaskFuture``
or an ``AsyncTask`` that has run, given at any depth of a task's arguments. The task
waits in the store, holds no worker, runs once they all succeeded, and never runs if one
failed or was cancelled; on a real store and real loky clusters."""

from __future__ import annotations

import pickle

import pytest

import nbqueue
from nbqueue import (
    AsyncTask,
    Cause,
    ConfigurationError,
    Result,
    async_task,
    fetch,
    result,
    status,
)
from tests import tasks_fixtures as fx
from tests.test_kernel import check_setup, kernels, read_log, starts_by_task  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
WAIT = 30_000


def _runs(log) -> dict[int, list[tuple[str, float]]]:
    found: dict[int, list[tuple[str, float]]] = {}
    for kind, number, _, when in read_log(log):
        found.setdefault(number, []).append((kind, when))
    return found


def test_results_at_any_depth_are_waited_for_and_given_in_their_place(store_dir, tmp_path):
    log = str(tmp_path / "runs.log")
    first = async_task(fx.logged, log, 1, 0.6)
    second = AsyncTask(fx.logged, log, 2, 0.3)
    second.run()
    third = async_task(
        fx.logged_sum, log, 3, Result(first), {"deep": [nbqueue.future(second.id)]}, seconds=0
    )
    fourth = async_task(fx.logged_sum, log, 4, second, Result(third))
    for waiting in (third, fourth):
        found = status(waiting)
        assert found["state"] == "waiting" and found["group"] is None
    assert status(fourth)["waiting_for"] == [second.id, third]
    with nbqueue.Cluster(workers=2):
        assert result(fourth, wait=WAIT) == 2 + 3
    assert result(third) == 1 + 2
    runs = _runs(log)
    assert sorted(runs) == [1, 2, 3, 4] and all(len(r) == 2 for r in runs.values())
    stop = {n: runs[n][1][1] for n in runs}
    start = {n: runs[n][0][1] for n in runs}
    assert start[3] >= max(stop[1], stop[2]) and start[4] >= stop[3]
    assert fetch(fourth).success and status(fourth)["state"] == "done"


def test_a_task_that_waits_holds_no_worker(store_dir, tmp_path, cluster):
    log = str(tmp_path / "runs.log")
    slow = async_task(fx.logged, log, 1, 2.0)
    waiters = [async_task(fx.logged_sum, log, 10 + i, Result(slow)) for i in range(4)]
    quick = [async_task(fx.logged, log, 20 + i, 0) for i in range(6)]
    for task_id in quick:  # the second worker runs these while four tasks wait
        assert result(task_id, wait=WAIT) is not None
    assert all(status(w)["state"] == "waiting" for w in waiters)
    assert [result(w, wait=WAIT) for w in waiters] == [1] * 4


def test_a_failed_dependency_fails_its_dependants_which_never_run(store_dir, tmp_path, cluster):
    log = str(tmp_path / "runs.log")
    broken = async_task(fx.boom, "no data")
    middle = async_task(fx.logged_sum, log, 1, Result(broken), group="after")
    last = async_task(fx.logged_sum, log, 2, [Result(middle)], group="after")
    tasks = nbqueue.result_group("after", count=2, wait=WAIT, failures=True)
    assert tasks is not None
    for task_id in (middle, last):
        task = fetch(task_id)
        assert task is not None and not task.success and task.cause == Cause.DEPENDENCY
        assert task.attempt_count == 0
        assert task.result.startswith("DependencyFailed: task ")
        assert task.result.endswith("so it never ran: ValueError: no data")
    assert middle in fetch(last).result
    assert read_log(log) == []
    assert nbqueue.count_group("after", failures=True) == 2


def test_a_cancelled_dependency_and_a_cancelled_waiting_task(store_dir, tmp_path):
    log = str(tmp_path / "runs.log")
    queued = async_task(fx.logged, log, 1, 0)
    waits = async_task(fx.logged_sum, log, 2, Result(queued))
    waits_too = async_task(fx.logged_sum, log, 3, Result(queued))
    after_waits_too = async_task(fx.logged_sum, log, 4, Result(waits_too))
    assert nbqueue.cancel(queued)
    assert nbqueue.cancel(waits_too)  # a waiting task: taken out of the store's wait
    assert fetch(waits_too).result.startswith("TaskCancelled")
    assert status(waits_too)["state"] == "cancelled"
    with nbqueue.Cluster(workers=2):
        for task_id, why in ((waits, "was cancelled"), (after_waits_too, "was cancelled")):
            task = fetch(task_id, wait=WAIT)
            assert task is not None and not task.success, task_id
            assert why in task.result and task.cause == Cause.DEPENDENCY
    assert read_log(log) == []


def test_a_dependency_that_will_never_have_an_outcome_fails_clearly(
    store_dir, cluster, monkeypatch
):
    from nbqueue.cluster import waiting as cluster_waiting

    monkeypatch.setattr(cluster_waiting, "LOST_CHECK", 0.5)  # a look through the queue
    unsaved = async_task(fx.add, 1, 2, save=False)
    with pytest.raises(ConfigurationError, match="save=False"):
        async_task(fx.add, Result(unsaved), 1)
    done = async_task(fx.add, 1, 2, group="to delete")
    assert result(done, wait=WAIT) == 3
    nbqueue.delete_group("to delete", tasks=True)
    for gone in (done, "not-a-task"):
        task = fetch(async_task(fx.add, Result(gone), 1), wait=WAIT)
        assert task is not None and not task.success and task.cause == Cause.DEPENDENCY
        assert f"task {gone}, whose result it takes, has no outcome" in task.result


def test_map_and_iter_items_take_results(store_dir, cluster):
    base = async_task(fx.nap, 0.3, 100)
    assert list(nbqueue.map(fx.add, [(Result(base), i) for i in range(6)])) == [
        100 + i for i in range(6)
    ]
    again = async_task(fx.nap, 0.3, 7)
    iter_id = nbqueue.async_iter(fx.add, [(Result(again), i) for i in range(3)])
    assert result(iter_id, wait=WAIT) == [7, 8, 9]


def test_sync_takes_only_results_that_are_there(store_dir, cluster):
    done = async_task(fx.add, 2, 3)
    assert result(done, wait=WAIT) == 5
    assert result(async_task(fx.add, Result(done), 1, sync=True)) == 6
    slow = async_task(fx.nap, 5)
    with pytest.raises(ConfigurationError, match="has no outcome in the store"):
        async_task(fx.add, Result(slow), 1, sync=True)
    nbqueue.cancel(slow)


def test_bad_dependencies_are_refused_at_the_call(store_dir):
    never_run = AsyncTask(fx.add, 1, 2)
    with pytest.raises(ConfigurationError, match="has not run yet"):
        async_task(fx.add, never_run, 1)
    with pytest.raises(ConfigurationError, match="task id"):
        Result("")
    assert nbqueue.queue_size() == 0


def test_outside_a_task_s_arguments_they_are_what_they_are(store_dir):
    handle = Result("a-task")
    assert pickle.loads(pickle.dumps([handle])) == [handle]
    with pytest.raises(TypeError):
        pickle.dumps(nbqueue.future("a-task"))


@pytest.mark.timeout(150)
def test_a_task_waits_across_a_kernel_killed_and_a_new_one(kernels, store_dir, tmp_path):
    """A kernel sends a slow task and one that takes its result, then is SIGKILLed, its
    cluster with it. A new kernel's cluster runs the slow one again (its lease expired),
    then the one that waited, with its result."""
    import os
    import signal

    log = tmp_path / "runs.log"
    kernel = kernels()
    check_setup(kernel, log, store_dir)
    ids = kernel.value(
        "cluster = nbqueue.Cluster(workers=2, retry=3).start()\n"
        "slow = nbqueue.async_task(logged, LOG, 1, 1.5)\n"
        "from tests.tasks_fixtures import logged_sum\n"
        "after = nbqueue.async_task(logged_sum, LOG, 2, nbqueue.Result(slow))\n"
        "nbqueue.flush()\n"
        "print(json.dumps([slow, after]))\n"
    )
    slow, after = ids
    wait_for(lambda: starts_by_task(read_log(log)).get(1), 30, "the slow task started")
    assert status(after)["state"] == "waiting"
    os.killpg(os.getpgid(kernel.pid), signal.SIGKILL)
    kernel.km.provisioner.process.wait(10)
    wait_for(lambda: not kernel.registry.group_alive(kernel.pid), 10, "the kernel's processes gone")
    assert status(after)["state"] == "waiting" and fetch(slow) is None
    new = kernels()
    check_setup(new, log, store_dir)
    value = new.value(
        "cluster = nbqueue.Cluster(workers=2, retry=3).start()\n"
        f"print(json.dumps(nbqueue.result({after!r}, wait=60000)))\n",
        90,
    )
    assert value == 1  # ``logged`` returns its task number: the slow task's result
    starts = starts_by_task(read_log(log))
    assert len(starts[1]) == 2  # cut short by the kill, run again by the new cluster
    runs = _runs(log)
    assert [kind for kind, _ in runs[2]] == ["start", "stop"]  # once, after the slow one
    assert runs[2][0][1] >= runs[1][-1][1] and runs[1][-1][0] == "stop"
    assert fetch(after).success


def test_retrying_the_failed_dependency_then_its_dependant_runs_both(store_dir, tmp_path, cluster):
    flag = str(tmp_path / "flag")
    first = async_task(fx.add_or_fail_until, 5, flag, 1)
    dependant = async_task(fx.add, Result(first), 1)
    task = fetch(dependant, wait=WAIT)
    assert task is not None and task.cause == Cause.DEPENDENCY
    assert nbqueue.retry(first) and result(first, wait=WAIT) == 5
    assert nbqueue.retry(dependant)
    assert result(dependant, wait=WAIT) == 6
    # retried before its dependency has run again: it waits for it
    flag2 = str(tmp_path / "flag2")
    second = async_task(fx.add_or_fail_until, 7, flag2, 1)
    later = async_task(fx.add, Result(second), 1)
    assert fetch(later, wait=WAIT).cause == Cause.DEPENDENCY
    slow_retry = async_task(fx.nap, 0.5)  # keeps one worker busy
    assert nbqueue.retry(later)
    assert status(later)["state"] == "waiting"
    assert nbqueue.retry(second)
    assert result(later, wait=WAIT) == 8
    assert result(slow_retry, wait=WAIT) is None


def test_a_chain_link_takes_another_task_s_result(store_dir, cluster):
    base = async_task(fx.nap, 0.5, 40)
    group = nbqueue.async_chain([(fx.add, (Result(base), 1)), (fx.add, (Result(base), 2))])
    assert nbqueue.result_group(group, count=2, wait=WAIT) == [41, 42]
