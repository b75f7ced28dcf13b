"""The futures', control's and calls' API on the dask executor: ``future`` /
``await AsyncTask`` / ``as_completed`` / ``map`` (nbqueue.futures), ``cancel`` /
``cancel_group`` / ``retry`` / ``retry_group`` (nbqueue.control, and the cluster side in
nbqueue.cluster.cancels, where a running task on dask is stopped by restarting its
worker) and ``reuse=True`` (nbqueue.calls), each against a real
``Cluster(executor="dask", workers=2)`` that starts its own LocalCluster, as
``tests/test_executors.py`` does.

Starting a LocalCluster costs seconds, so the whole module shares one cluster on one store
(module-scoped, stopped and dropped at the end). Before each test, ``_idle`` waits until
both dask workers answer (a cancel of a running task restarts one) and nothing is queued
or running, so that each test starts from an idle cluster. Tests use their own groups and
log files. Side effects are counted in files (``tasks_fixtures.logged`` writes a 'start'
and a 'stop' line per run). The loky versions are in test_futures.py and test_control.py.

The shared LocalCluster runs with ``distributed.deploy.lost-worker-timeout`` raised, so
that dask's SpecCluster cannot drop a nanny whose worker a cancel restarted twice
(``test_the_local_cluster_keeps_its_workers_when_they_are_killed_in_a_row`` is about that).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import threading
import time

import pytest

import nbqueue
from nbqueue import (AsyncTask, Cluster, TaskFailed, as_completed, async_task, conf, fetch,
                     future)
from nbqueue.control import cancel, cancel_group, cancel_tasks, retry, retry_group
from nbqueue.models import Failure, Success
from nbqueue.disk.directory import drop

from tests import tasks_fixtures as fx
from tests.waiting import wait_for

distributed = pytest.importorskip("distributed", reason='needs "nbqueue[dask]"')
import dask  # noqa: E402  (with distributed)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]

WAIT = 20_000  # ms
SECONDS = 20  # the same, for futures



@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """One running Cluster on the dask executor (its own LocalCluster of 2 processes) and
    its store, the configured default, for the whole module."""
    directory = str(tmp_path_factory.mktemp("dask-control") / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    # read by the SpecCluster (in this process) each time a worker leaves; see the docstring
    reaper = dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"})
    running = Cluster(workers=2, directory=directory, executor="dask",
                      dashboard_address=None).start()
    try:
        yield running
    finally:
        running.stop(wait=5)
        reaper.__exit__(None, None, None)
        conf.reset()
        drop(directory)


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

def _listed_running(cluster, task_id: str) -> None:
    """Wait until the cluster knows ``task_id`` runs: on dask, from the start event that
    reaches it through the scheduler a little after the task started (the race of a cancel
    in between is ``test_a_cancel_right_after_a_task_started_stops_it``)."""
    wait_for(lambda: any(t == task_id for t, *_ in cluster._executor.running()), 10,
             "the start event")


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
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both workers busy")
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
    assert sorted(fx.runs(log, "start")) == [1, 2, 4]  # 3 never ran
    assert sorted(fx.runs(log, "stop")) == [1, 2, 4]
    assert cancel(victim) is False  # finished: cancelled already


def test_cancel_a_task_leased_but_not_started_never_runs(dask_cluster, tmp_path):
    """Both dask workers busy, chunks of 1: a task sent now is leased by the cluster and
    waits there for a worker; cancelled, it never runs (as with loky, test_control.py)."""
    log = str(tmp_path / "log")
    _chunks_of(dask_cluster, 1)
    busy = [async_task(fx.logged, log, n, 2.0) for n in (1, 2)]
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both workers busy")
    victim = async_task(fx.logged, log, 3)
    wait_for(lambda: len(dask_cluster.inflight) == 3, 10, "the third task leased")
    assert cancel(victim) is True
    task = fetch(victim, wait=5_000)
    assert task is not None and not task.success and "cancelled" in task.result
    assert all(fetch(i, wait=WAIT).success for i in busy)
    _wait_idle(dask_cluster, 20, "the cluster idle")
    time.sleep(0.5)
    assert sorted(fx.runs(log, "start")) == [1, 2], "the cancelled task ran anyway"
    assert sorted(fx.runs(log, "stop")) == [1, 2]


@pytest.mark.timeout(90)
def test_cancel_a_leased_task_on_a_scheduler_started_elsewhere(tmp_path):
    """The same on a scheduler nbqueue did not start (``address=``), whose workers may be
    on other machines: the task leased but not started never runs there either."""
    directory = str(tmp_path / "foreign-store")
    log = str(tmp_path / "log")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local:
        own = Cluster(workers=2, directory=directory, executor="dask",
                      address=local.scheduler_address).start()
        try:
            broker = nbqueue.get_broker(directory)
            _chunks_of(own, 1)
            busy = [async_task(fx.logged, log, n, 2.0, broker=broker) for n in (1, 2)]
            wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both workers busy")
            victim = async_task(fx.logged, log, 3, broker=broker)
            wait_for(lambda: len(own.inflight) == 3, 10, "the third task leased")
            assert cancel(victim, broker=broker) is True
            task = fetch(victim, wait=5_000, broker=broker)
            assert task is not None and "cancelled" in task.result
            assert all(fetch(i, wait=WAIT, broker=broker).success for i in busy)
            time.sleep(1.0)
            assert sorted(fx.runs(log, "start")) == [1, 2], "the cancelled task ran anyway"
        finally:
            own.stop(wait=5)
            drop(directory)


def test_cancel_a_task_later_in_a_running_chunk_never_runs(dask_cluster, tmp_path):
    """Chunks of 3 (a map's 6 tasks, sent at once, in 2 chunks): cancel the second task of
    a chunk while its first runs; the chunk goes on without it, as with loky."""
    log = str(tmp_path / "log")
    _chunks_of(dask_cluster, 3)
    executor = dask_cluster._executor
    mapped = nbqueue.map(fx.logged, [(log, i, 1.0) for i in range(6)], group="dask-chunked")
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both chunks running")
    with executor._lock:
        chunks = [[item[0] for item in chunk.items] for chunk in executor._chunks.values()]
    assert sorted(len(c) for c in chunks) == [3, 3], chunks
    victim = next(c[1] for c in chunks)
    assert cancel(victim) is True
    assert "cancelled" in fetch(victim, wait=5_000).result
    assert fetch(victim).cause is nbqueue.Cause.CANCELLED
    tasks = nbqueue.fetch_group("dask-chunked", wait=WAIT, count=6)
    assert tasks is not None and len(tasks) == 6
    assert sum(t.success for t in tasks) == 5
    _wait_idle(dask_cluster, 20, "the cluster idle")
    mapped.close()  # never iterated: nothing to cancel
    time.sleep(0.5)
    starts = fx.runs(log, "start")
    assert len(starts) == 5, f"the cancelled task ran anyway: starts {sorted(starts)}"
    assert sorted(fx.runs(log, "stop")) == sorted(starts)


def test_cancel_a_running_task_stops_it_and_leaves_the_other_alone(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    restarts = dask_cluster._executor.restarts
    victim = async_task(fx.logged, log, 1, 4.0)
    other = async_task(fx.logged, log, 2, 2.0)
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "both tasks running")
    _listed_running(dask_cluster, victim)
    started = time.monotonic()
    assert cancel(victim) is True
    task = fetch(victim, wait=5_000)
    assert task is not None and not task.success and "cancelled" in task.result
    assert task.cause is nbqueue.Cause.CANCELLED
    assert time.monotonic() - started < 3
    finished = fetch(other, wait=WAIT)
    assert finished.success and finished.attempt_count == 1  # not restarted
    assert dask_cluster._executor.restarts == restarts + 1  # the victim's worker, on dask
    time.sleep(max(0.0, started + 4.5 - time.monotonic()))  # past the victim's natural end
    assert fx.runs(log, "stop") == [2]  # the victim's stop line never comes
    assert sorted(fx.runs(log, "start")) == [1, 2]  # neither ran again
    assert nbqueue.result(async_task(fx.add, 1, 1), WAIT) == 2  # the cluster goes on


def test_a_cancel_right_after_a_task_started_stops_it(dask_cluster, tmp_path):
    """A task that has started, but whose start event (worker -> scheduler -> this
    client) is not here yet, is cancelled: it must be stopped all the same. The events are
    held back 0.3 s here, as a remote or busy scheduler does; with the LocalCluster's own
    delivery (~1-2 ms) a cancel sent as the task starts hits the same window now and then."""
    log = str(tmp_path / "log")
    executor = dask_cluster._executor
    client, topic = executor.client, executor._topic

    def late(event):
        threading.Timer(0.3, executor._on_event, (event,)).start()
    client.unsubscribe_topic(topic)
    client.subscribe_topic(topic, late)
    try:
        victim = async_task(fx.logged, log, 1, 2.0)
        wait_for(lambda: fx.runs(log, "start") == [1], 20, "the task started")
        assert cancel(victim) is True
        assert "cancelled" in fetch(victim, wait=5_000).result
        time.sleep(2.5)  # past its natural end
        assert fx.runs(log, "stop") == [], "the cancelled task ran to its end"
    finally:
        client.unsubscribe_topic(topic)
        client.subscribe_topic(topic, executor._on_event)


def test_cancel_group_counts_and_none_of_them_finishes(dask_cluster, tmp_path):
    log = str(tmp_path / "log")
    done = async_task(fx.add, 1, group="dask-g")
    assert fetch(done, wait=WAIT).success
    _chunks_of(dask_cluster, 1)  # 2 running, 4 leased and waiting in the cluster
    ids = [async_task(fx.logged, log, i, 2.0, group="dask-g") for i in range(6)]
    wait_for(lambda: len(fx.runs(log, "start")) == 2, 20, "two running")
    assert cancel(done) is False and cancel("no-such-task") is False
    assert cancel_group("dask-g") == 6
    outcomes = [fetch(task_id, wait=5_000) for task_id in ids]
    assert all(t is not None and "cancelled" in t.result for t in outcomes)
    assert nbqueue.count_group("dask-g") == 7
    assert nbqueue.count_group("dask-g", failures=True) == 6
    assert cancel_group("dask-g") == 0 and cancel_tasks(ids) == 0
    _wait_idle(dask_cluster, 30, "the workers back, nothing running")
    time.sleep(2.5)  # past the natural end of any of them that ran
    assert fx.runs(log, "stop") == [] and len(fx.runs(log, "start")) == 2


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
    wait_for(lambda: fx.runs(log, "start") == [9], 20, "running")
    _listed_running(dask_cluster, victim)
    assert cancel(victim) is True
    assert "cancelled" in fetch(victim, wait=5_000).result
    _wait_idle(dask_cluster, 30, "the worker back")
    assert retry(victim) is True  # its cancel request is forgotten: it runs this time
    again = fetch(victim, wait=WAIT)
    assert again.success, again.result
    assert fx.runs(log, "start") == [9, 9] and fx.runs(log, "stop") == [9]


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
    assert fx.runs(log, "start") == [5, 6] and fx.runs(log, "stop") == [5, 6]


# -- the LocalCluster's workers --------------------------------------------------------

@pytest.mark.timeout(90)
def test_the_local_cluster_keeps_its_workers_when_they_are_killed_in_a_row(tmp_path):
    """A cancel (or a timeout) on dask SIGKILLs the task's worker and counts on its nanny
    to start a fresh one. dask's SpecCluster also closes, for good, the nanny of a worker
    that left and has no successor registered ``distributed.deploy.lost-worker-timeout``
    (15 s) later; a worker of that name killed again just then is down at that check. Here
    the timeout is 1 s, so two kills in a row hit it; with 15 s, kills ~15 s apart do. The
    cluster must keep its ``workers`` processes (with workers=1: else it never runs another
    task)."""
    directory = str(tmp_path / "own-store")
    own = Cluster(workers=1, directory=directory, executor="dask",
                  dashboard_address=None).start()
    try:
        executor = own._executor
        with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
            for _ in range(4):  # as DaskExecutor._restart does, on each cancel
                pids = list(executor.worker_pids().values())
                if not pids:  # its nanny was closed: no worker comes back
                    break
                pid = pids[0]
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.9)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and set(
                        executor.worker_pids().values()) <= {pid}:
                    time.sleep(0.02)
        wait_for(lambda: len(executor.worker_pids()) == 1, 10,
                 "a dask worker: the LocalCluster closed its nanny, and no worker is left")
        broker = nbqueue.get_broker(directory)
        assert nbqueue.result(async_task(fx.add, 1, 1, broker=broker), 15_000,
                              broker=broker) == 2
    finally:
        own.stop(wait=5)
        drop(directory)


def test_fast_outcomes_of_a_dask_chunk_are_not_held_back_by_a_slow_task(dask_cluster):
    """Workers of the cluster's own LocalCluster stream outcomes as tasks end, as loky's
    do: the fast tasks of a chunk are stored while its slow task still runs."""
    _chunks_of(dask_cluster, 4)
    nbqueue.async_iter(fx.nap, [0, 0, 0, 3], group="dask-mixed")
    start = time.monotonic()
    wait_for(lambda: nbqueue.count_group("dask-mixed") >= 3, 2.5, "the three fast outcomes")
    assert time.monotonic() - start < 2.5 and nbqueue.count_group("dask-mixed") == 3
    wait_for(lambda: nbqueue.count_group("dask-mixed") == 4, 20, "the slow one")


# -- on dask: exceptions, output, progress, live state --------------------------------------

def test_exceptions_output_and_live_state_on_dask(dask_cluster):
    chained = fetch(async_task(fx.raises_chain), wait=WAIT)
    assert type(chained.exception) is ValueError
    assert type(chained.exception.__cause__) is KeyError
    assert "raise ValueError(\"last\") from exc" in chained.traceback
    talk = async_task(fx.chatter, 30, seconds=0.1, value="said")
    wait_for(lambda: "line 000003" in (nbqueue.output(talk) or ""), SECONDS,
             "the output of a task running on dask, read while it runs")
    assert nbqueue.status(talk)["state"] == "running"
    task = fetch(talk, wait=WAIT)
    assert task.result == "said" and task.output.count("line 0000") == 30
    assert "WARNING:tests.chatter:halfway at 15" in task.output
    assert task.pid in dask_cluster._executor.worker_pids().values()
    reported = fetch(async_task(fx.reports, 5), wait=WAIT)
    assert reported.progress == (5, 5, "step 5")
