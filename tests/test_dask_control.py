"""Issue 13's calls on the dask executor: ``future`` / ``await AsyncTask`` /
``as_completed`` / ``map`` (nbqueue.futures), ``cancel`` / ``cancel_group`` / ``retry`` /
``retry_group`` (nbqueue.control, and the cluster side in nbqueue.cluster.cancels, where a
running task on dask is stopped by restarting its worker) and ``reuse=True``
(nbqueue.calls), each against a real ``Cluster(executor="dask", workers=2)`` that starts
its own LocalCluster, as ``tests/test_executors.py`` does.

Starting a LocalCluster costs seconds, so the whole module shares one cluster on one store
(module-scoped, stopped and dropped at the end). Before each test, ``_idle`` waits until
both dask workers answer (a cancel of a running task restarts one) and nothing is queued
or running, so that each test starts from an idle cluster. Tests use their own groups and
log files. Side effects are counted in files (``tasks_fixtures.logged`` writes a 'start'
and a 'stop' line per run). The loky versions are in test_futures.py and test_control.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time

import pytest

import nbqueue
from nbqueue import (AsyncTask, Cluster, TaskFailed, as_completed, async_task, conf, fetch,
                     future)
from nbqueue import broker as broker_module
from nbqueue.control import cancel, cancel_group, cancel_tasks, retry, retry_group
from nbqueue.models import Failure, Success
from nbqueue.store import drop_store

from . import tasks_fixtures as fx
from .waiting import wait_for

distributed = pytest.importorskip("distributed", reason='needs "nbqueue[dask]"')

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]

WAIT = 20_000  # ms
SECONDS = 20  # the same, for futures


def _runs(path, kind):
    """The task numbers of the 'start' or 'stop' lines fx.logged wrote, in order."""
    try:
        with open(path) as src:
            fields = [line.split() for line in src.read().splitlines()]
    except FileNotFoundError:
        return []
    return [int(f[1]) for f in fields if f and f[0] == kind]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """One running Cluster on the dask executor (its own LocalCluster of 2 processes) and
    its store, the configured default, for the whole module."""
    directory = str(tmp_path_factory.mktemp("dask-control") / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    running = Cluster(workers=2, directory=directory, executor="dask",
                      dashboard_address=None).start()
    try:
        yield running
    finally:
        running.stop(wait=5)
        conf.reset()
        broker_module.drop_broker(directory)
        drop_store(directory)


def _state(cluster) -> dict:
    broker = cluster.broker
    return {"workers": len(cluster._executor.worker_pids()),
            "running": cluster.info()["running"], "queued": broker.pending(),
            "leased": broker.leased()}


def _idle_now(cluster) -> bool:
    return _state(cluster) == {"workers": 2, "running": 0, "queued": 0, "leased": 0}


def _wait_idle(cluster, seconds: float, what: str) -> None:
    try:
        wait_for(lambda: _idle_now(cluster), seconds, what)
    except BaseException:
        print("cluster state:", _state(cluster))
        raise


@pytest.fixture(autouse=True)
def _idle(dask_cluster):
    """Each test starts with both dask workers up and nothing queued or running."""
    nbqueue.configure(directory=dask_cluster.directory)  # in case another fixture reset it
    _wait_idle(dask_cluster, 30, "an idle dask cluster with 2 workers")
    return dask_cluster


# -- future, await, as_completed -----------------------------------------------------

def test_futures_results_and_a_failure_is_task_failed(dask_cluster):
    futs = [future(async_task(fx.add, i, 1, group="dask-futures")) for i in range(10)]
    done, not_done = cf.wait(futs, timeout=SECONDS)
    assert not not_done and [f.result() for f in futs] == list(range(1, 11))
    assert all(isinstance(f.task, Success) for f in futs)

    failed = future(async_task(fx.boom, "on dask"))
    exc = failed.exception(timeout=SECONDS)
    assert isinstance(exc, TaskFailed) and isinstance(exc.task, Failure)
    assert exc.task is failed.task and exc.task.result.startswith("ValueError: on dask")
    with pytest.raises(TaskFailed):
        failed.result()


def test_await_asynctask(dask_cluster):
    async def main():
        one = await AsyncTask(fx.add, 2, 3)
        many = await asyncio.gather(*(AsyncTask(fx.add, i, 1) for i in range(6)))
        with pytest.raises(TaskFailed) as raised:
            await AsyncTask(fx.boom, "awaited")
        return one, many, raised.value
    one, many, failed = asyncio.run(asyncio.wait_for(main(), SECONDS))
    assert one == 5 and many == list(range(1, 7))
    assert failed.task.result.startswith("ValueError: awaited")


def test_as_completed_yields_a_fast_task_before_a_slow_one_enqueued_first(dask_cluster):
    slow = async_task(fx.nap, 2.5, "slow")
    fast = async_task(fx.add, 1, 1)
    seen = [(t, time.monotonic()) for t in as_completed([slow, fast], timeout=SECONDS)]
    assert [t.id for t, _ in seen] == [fast, slow]
    assert seen[1][1] - seen[0][1] > 1  # the fast one came long before the slow one ended
    assert [t.result for t, _ in seen] == [2, "slow"]


def test_as_completed_yields_failures_as_tasks(dask_cluster):
    ok, bad = async_task(fx.add, 1, 2), async_task(fx.boom, "quick failure")
    tasks = {t.id: t for t in as_completed([ok, bad, ok], timeout=SECONDS)}
    assert len(tasks) == 2  # an id given twice is yielded once
    assert isinstance(tasks[bad], Failure) and "quick failure" in tasks[bad].result
    assert tasks[ok].result == 3


# -- map -----------------------------------------------------------------------------

def test_map_ordered_and_unordered(dask_cluster):
    assert list(nbqueue.map(fx.add, [(i, 10) for i in range(8)], timeout=SECONDS)) == list(
        range(10, 18))
    ordered = nbqueue.map(fx.nap, [(1.5, "slow"), (0, "fast")], timeout=SECONDS)
    assert list(ordered) == ["slow", "fast"]  # input order
    unordered = nbqueue.map(fx.nap, [(1.5, "slow"), (0, "fast")], ordered=False,
                            timeout=SECONDS)
    assert list(unordered) == ["fast", "slow"]  # as they finish
    results = nbqueue.map(lambda x: 10 // x, [5, 0], timeout=SECONDS)
    assert next(results) == 2
    with pytest.raises(TaskFailed, match="ZeroDivisionError"):
        next(results)


# -- cancel --------------------------------------------------------------------------

def _chunks_of(cluster, tasks: int) -> None:
    """Make the feeder size its next chunks at ``tasks`` task(s): it sizes them by its
    running average of task time (``Feeder.chunk_size``), which the earlier tests of this
    module leave at anything. With chunks of 1 it leases a task sent while both workers
    are busy (which then waits in the cluster, leased); with chunks of 64 it leaves the
    task in the queue until a whole chunk waits."""
    cluster.feeder.task_seconds = cluster.executor.chunk_seconds / tasks
    assert cluster.feeder.chunk_size() == tasks


def test_cancel_a_queued_task_never_runs(dask_cluster, tmp_path):
    """Both dask workers busy, chunks of 64: a task sent now stays in the queue;
    cancelled, it never runs, and the others are untouched."""
    log = str(tmp_path / "log")
    _chunks_of(dask_cluster, 64)
    busy = [async_task(fx.logged, log, n, 2.0) for n in (1, 2)]
    wait_for(lambda: len(_runs(log, "start")) == 2, 20, "both workers busy")
    victim = async_task(fx.logged, log, 3)
    kept = async_task(fx.logged, log, 4)
    nbqueue.flush()
    assert nbqueue.queue_size() == 2  # queued, not leased
    assert cancel(victim) is True
    assert nbqueue.queue_size() == 1
    task = fetch(victim, wait=5_000)
    assert task is not None and not task.success and "cancelled" in task.result
    assert all(fetch(i, wait=WAIT).success for i in busy + [kept])
    _wait_idle(dask_cluster, 20, "the cluster idle")
    time.sleep(0.5)
    assert sorted(_runs(log, "start")) == [1, 2, 4]  # 3 never ran
    assert sorted(_runs(log, "stop")) == [1, 2, 4]
    assert cancel(victim) is False  # finished: cancelled already


def test_cancel_a_task_leased_but_not_started_never_runs(dask_cluster, tmp_path):
    """Both dask workers busy, chunks of 1: a task sent now is leased by the cluster and
    waits there for a worker; cancelled, it never runs (as with loky, test_control.py)."""
    log = str(tmp_path / "log")
    _chunks_of(dask_cluster, 1)
    busy = [async_task(fx.logged, log, n, 2.0) for n in (1, 2)]
    wait_for(lambda: len(_runs(log, "start")) == 2, 20, "both workers busy")
    victim = async_task(fx.logged, log, 3)
    wait_for(lambda: len(dask_cluster.inflight) == 3, 10, "the third task leased")
    assert cancel(victim) is True
    task = fetch(victim, wait=5_000)
    assert task is not None and not task.success and "cancelled" in task.result
    assert all(fetch(i, wait=WAIT).success for i in busy)
    _wait_idle(dask_cluster, 20, "the cluster idle")
    time.sleep(0.5)
    assert sorted(_runs(log, "start")) == [1, 2], "the cancelled task ran anyway"
    assert sorted(_runs(log, "stop")) == [1, 2]


def test_cancel_a_task_later_in_a_running_chunk_never_runs(dask_cluster, tmp_path):
    """Chunks of 3 (a map's 6 tasks, sent at once, in 2 chunks): cancel the second task of
    a chunk while its first runs; the chunk goes on without it, as with loky."""
    log = str(tmp_path / "log")
    _chunks_of(dask_cluster, 3)
    executor = dask_cluster._executor
    mapped = nbqueue.map(fx.logged, [(log, i, 1.0) for i in range(6)], group="dask-chunked")
    wait_for(lambda: len(_runs(log, "start")) == 2, 20, "both chunks running")
    with executor._lock:
        chunks = [[item[0] for item in chunk.items] for chunk in executor._chunks.values()]
    assert sorted(len(c) for c in chunks) == [3, 3], chunks
    victim = next(c[1] for c in chunks)
    assert cancel(victim) is True
    assert "cancelled" in fetch(victim, wait=5_000).result
    tasks = nbqueue.fetch_group("dask-chunked", wait=WAIT, count=6)
    assert tasks is not None and len(tasks) == 6
    assert sum(t.success for t in tasks) == 5
    _wait_idle(dask_cluster, 20, "the cluster idle")
    mapped.close()  # never iterated: nothing to cancel
    time.sleep(0.5)
    starts = _runs(log, "start")
    assert len(starts) == 5, f"the cancelled task ran anyway: starts {sorted(starts)}"
    assert sorted(_runs(log, "stop")) == sorted(starts)


def test_cancel_a_running_task_stops_it_and_leaves_the_other_alone(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    restarts = dask_cluster._executor.restarts
    victim = async_task(fx.logged, log, 1, 4.0)
    other = async_task(fx.logged, log, 2, 2.0)
    wait_for(lambda: len(_runs(log, "start")) == 2, 20, "both tasks running")
    started = time.monotonic()
    assert cancel(victim) is True
    task = fetch(victim, wait=5_000)
    assert task is not None and not task.success and "cancelled" in task.result
    assert time.monotonic() - started < 3
    finished = fetch(other, wait=WAIT)
    assert finished.success and finished.attempt_count == 1  # not restarted
    assert dask_cluster._executor.restarts == restarts + 1  # the victim's worker, on dask
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # past the victim's natural end
    assert _runs(log, "stop") == [2]  # the victim's stop line never comes
    assert sorted(_runs(log, "start")) == [1, 2]  # neither ran again
    assert nbqueue.result(async_task(fx.add, 1, 1), WAIT) == 2  # the cluster goes on


def test_cancel_group_counts_and_none_of_them_finishes(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    done = async_task(fx.add, 1, group="dask-g")
    assert fetch(done, wait=WAIT).success
    _chunks_of(dask_cluster, 1)  # 2 running, 4 leased and waiting in the cluster
    ids = [async_task(fx.logged, log, i, 3.0, group="dask-g") for i in range(6)]
    wait_for(lambda: len(_runs(log, "start")) == 2, 20, "two running")
    assert cancel(done) is False and cancel("no-such-task") is False
    assert cancel_group("dask-g") == 6
    outcomes = [fetch(task_id, wait=5_000) for task_id in ids]
    assert all(t is not None and "cancelled" in t.result for t in outcomes)
    assert nbqueue.count_group("dask-g") == 7
    assert nbqueue.count_group("dask-g", failures=True) == 6
    assert cancel_group("dask-g") == 0 and cancel_tasks(ids) == 0
    _wait_idle(dask_cluster, 30, "the workers back, nothing running")
    time.sleep(3.5)  # past the natural end of any of them that ran
    assert _runs(log, "stop") == [] and len(_runs(log, "start")) == 2


# -- retry ---------------------------------------------------------------------------

def test_retry_and_retry_group_run_fixed_failures_again(dask_cluster, tmp_path):
    path = str(tmp_path / "input.txt")
    task_id = async_task(fx.read_file, path, group="dask-files")
    failed = fetch(task_id, wait=WAIT)
    assert not failed.success and "No such file" in failed.result
    with open(path, "w") as out:
        out.write("fixed")
    assert retry(task_id) is True
    again = fetch(task_id, wait=WAIT)
    assert again.success and again.result == "fixed" and again.attempt_count == 2
    assert nbqueue.count_group("dask-files") == 1
    assert nbqueue.count_group("dask-files", failures=True) == 0
    assert retry(task_id) is False  # a success is not run again

    missing = [str(tmp_path / f"in{i}") for i in range(2)]
    ids = [async_task(fx.read_file, p, group="dask-batch") for p in missing]
    assert all(not fetch(i, wait=WAIT).success for i in ids)
    with open(missing[0], "w") as out:
        out.write("0")
    assert retry_group("dask-batch") == 2
    outcomes = [fetch(i, wait=WAIT) for i in ids]
    assert [t.success for t in outcomes] == [True, False]
    assert [t.attempt_count for t in outcomes] == [2, 2]


def test_a_cancelled_running_task_can_be_retried(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    victim = async_task(fx.logged, log, 9, 3.0)
    wait_for(lambda: _runs(log, "start") == [9], 20, "running")
    assert cancel(victim) is True
    assert "cancelled" in fetch(victim, wait=5_000).result
    _wait_idle(dask_cluster, 30, "the worker back")
    assert retry(victim) is True  # its cancel request is forgotten: it runs this time
    again = fetch(victim, wait=WAIT)
    assert again.success, again.result
    assert _runs(log, "start") == [9, 9] and _runs(log, "stop") == [9]


# -- reuse ---------------------------------------------------------------------------

def test_reuse_gives_the_same_task_and_runs_it_once(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    first = async_task(fx.logged, log, 5, 0.5, reuse=True)
    second = async_task(fx.logged, log, 5, 0.5, reuse=True)  # pending: the same task
    assert second == first
    assert nbqueue.result(first, WAIT) == 5
    third = async_task(fx.logged, log, 5, 0.5, reuse=True)  # succeeded: the same task
    assert third == first
    other = async_task(fx.logged, log, 6, 0.0, reuse=True)  # other arguments: a new one
    assert other != first and nbqueue.result(other, WAIT) == 6
    _wait_idle(dask_cluster, 20, "the cluster idle")
    assert _runs(log, "start") == [5, 6] and _runs(log, "stop") == [5, 6]
