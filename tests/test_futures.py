"""nbqueue.futures with a real loky cluster and a real store: futures of tasks, one waiter
thread for all of them, ``await AsyncTask``, ``as_completed`` and ``map``."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import diskcache
import pytest

import nbqueue
from nbqueue import (AsyncTask, TaskFailed, TaskFuture, as_completed, async_iter, async_task,
                     future, get_broker)
from nbqueue import futures as futures_module
from nbqueue.errors import ConfigurationError, SignatureError
from nbqueue.heartbeats import heartbeats
from nbqueue.models import Failure, Success
from nbqueue.names import humanize
from nbqueue.sent import sent
from nbqueue.store import Store
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]
WAIT = 20  # seconds: bounded, generous for a loaded machine
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _waiters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == futures_module.THREAD_NAME]


def _waiting_for(task_id: str) -> bool:
    waiter = futures_module._waiter
    with waiter._lock:
        return any(task_id in watched.watches for watched in waiter._keys.values())


# -- future ----------------------------------------------------------------------------

def test_future_result_and_task(cluster):
    task_id = async_task(fx.add, 1, 2)
    fut = future(task_id)
    assert isinstance(fut, cf.Future) and isinstance(fut, TaskFuture)
    assert fut.task_id == task_id
    assert fut.result(timeout=WAIT) == 3
    assert isinstance(fut.task, Success) and fut.task.id == task_id and fut.task.result == 3
    assert task_id in repr(fut)


def test_a_failure_is_task_failed_with_the_failure(cluster):
    fut = future(async_task(fx.boom, "no good"))
    exc = fut.exception(timeout=WAIT)
    assert isinstance(exc, TaskFailed) and isinstance(exc, RuntimeError)
    assert isinstance(exc.task, Failure) and exc.task is fut.task
    assert exc.task.result.startswith("ValueError: no good")
    assert "no good" in str(exc)
    with pytest.raises(TaskFailed):
        fut.result()


def test_a_finished_task_by_id_name_or_iter_id_is_done_at_once(store_dir):
    task_id = async_task(fx.add, 2, 3, sync=True)
    for fut in (future(task_id), future(humanize(task_id))):
        assert fut.done() and fut.result() == 5
    iter_id = async_iter(fx.add, [(1, 1), (2, 2)], sync=True)
    assert future(iter_id).result(timeout=0) == [2, 4]
    with pytest.raises(ConfigurationError, match="task id"):
        future("")


def test_pending_futures_by_name_and_async_iter_id(cluster):
    slow = async_task(fx.nap, 0.3, "named")
    iter_id = async_iter(fx.nap, [(0.2, i) for i in range(4)])
    in_cache = async_task(fx.nap, 0.3, "cached", cached=60)
    by_name, by_iter = future(humanize(slow)), future(iter_id)
    cached = future(in_cache, cached=True)  # the cached part keeps no totals: read each poll
    assert by_name.result(timeout=WAIT) == "named"
    assert by_iter.result(timeout=WAIT) == [0, 1, 2, 3]
    assert cached.result(timeout=WAIT) == "cached" and cached.task.cached


def test_concurrent_futures_wait_and_as_completed(cluster):
    futs = [future(async_task(fx.add, i, 1)) for i in range(10)]
    done, not_done = cf.wait(futs, timeout=WAIT)
    assert not not_done and sorted(f.result() for f in done) == list(range(1, 11))
    again = [future(async_task(fx.add, i, 10)) for i in range(10)]
    assert sorted(f.result() for f in cf.as_completed(again, timeout=WAIT)) == list(
        range(10, 20))


def test_cancel_stops_waiting_only(cluster):
    task_id = async_task(fx.nap, 0.5, "ran on")
    fut = future(task_id)
    assert fut.cancel() and fut.cancelled()
    assert nbqueue.result(task_id, wait=WAIT * 1000) == "ran on"  # the task itself ran on
    assert fut.cancelled()


def test_one_waiter_thread_serves_200_futures(store_dir):
    before = _waiters()
    assert len(before) <= 1
    ids = [async_task(fx.add, i, 1) for i in range(200)]  # no cluster yet: all pending
    futs = [future(task_id) for task_id in ids]
    assert not any(f.done() for f in futs)
    assert len(_waiters()) == 1
    assert futures_module._waiter.pending() >= 200
    with nbqueue.Cluster(workers=2, directory=store_dir).start():
        done, not_done = cf.wait(futs, timeout=WAIT)
    assert not not_done
    assert [f.result() for f in futs] == list(range(1, 201))
    after = _waiters()
    assert len(after) == 1 and (not before or after == before)


def test_a_store_that_cannot_be_read_fails_its_futures_and_the_waiter_goes_on(store_dir):
    task_id = async_task(fx.add, 1, 1)  # no cluster: stays pending
    fut = future(task_id)
    # another party writes the outcome without the store's key: reading it must fail
    with diskcache.Cache(os.path.join(store_dir, "results")) as foreign:
        foreign.set(task_id, {"id": task_id})
        foreign.incr("total:ok")  # the totals move, so the waiter reads the id
    assert isinstance(fut.exception(timeout=WAIT), SignatureError)
    again = future(async_task(fx.add, 2, 2))  # the waiter goes on, for this store too
    with nbqueue.Cluster(workers=1, directory=store_dir).start():
        assert again.result(timeout=WAIT) == 4


def test_the_waiter_never_dies_silently_and_restarts(store_dir, monkeypatch, caplog):
    pending = future(async_task(fx.add, 1, 1))  # no cluster: stays pending
    waiter = _waiters()[0]

    def broken(*args, **kwargs):  # a fault in the waiter's own loop, not reading a store
        raise RuntimeError("waiter trouble")
    monkeypatch.setattr(Store, "wait_for_change", broken)
    with caplog.at_level(logging.ERROR, logger="nbqueue"):
        exc = pending.exception(timeout=WAIT)
        assert isinstance(exc, RuntimeError) and "waiter trouble" in str(exc)
        waiter.join(timeout=WAIT)
    assert not waiter.is_alive() and "futures waiter stopped" in caplog.text
    monkeypatch.undo()
    again = future(async_task(fx.add, 2, 2))
    assert len(_waiters()) == 1 and _waiters()[0] is not waiter
    with nbqueue.Cluster(workers=1, directory=store_dir).start():
        assert again.result(timeout=WAIT) == 4


def test_a_task_finished_by_a_cluster_in_another_process(store_dir):
    task_id = async_task(fx.add, 20, 22)
    fut = future(task_id)
    nbqueue.flush()
    proc = subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--workers", "1"], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    try:
        assert fut.result(timeout=WAIT * 2) == 42
        assert heartbeats(get_broker().directory).clusters()  # it was the other process
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_tasks_stored_by_another_process_and_as_completed_of_its_group(store_dir):
    code = (f"import nbqueue\nnbqueue.configure(directory={store_dir!r})\n"
            "ids = [nbqueue.async_task('math.copysign', i, -1, group='remote', sync=True)\n"
            "       for i in range(3)]\nprint(' '.join(ids))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert future(ids[1]).result(timeout=WAIT) == -1.0
    # this process put nothing in the group, and nothing is queued or running: it ends
    tasks = list(as_completed(group="remote", timeout=WAIT))
    assert [t.id for t in tasks] == ids


# -- await -----------------------------------------------------------------------------

def test_await_asynctask_and_gather(cluster):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        ticking = asyncio.ensure_future(ticker())
        one = await AsyncTask(fx.nap, 0.5, "napped")  # the loop runs on meanwhile
        ticking.cancel()
        many = await asyncio.gather(*(AsyncTask(fx.add, i, 1) for i in range(20)))
        wrapped = await asyncio.wrap_future(future(async_task(fx.add, 5, 5)))
        with pytest.raises(TaskFailed) as failed:
            await AsyncTask(fx.boom, "awaited")
        return one, many, wrapped, ticks, failed.value
    one, many, wrapped, ticks, failed = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert one == "napped" and many == list(range(1, 21)) and wrapped == 10
    assert ticks >= 10
    assert failed.task.result.startswith("ValueError: awaited")


def test_await_runs_only_a_task_not_run_with_its_parameters(cluster):
    task = AsyncTask(fx.add, 1, 2)
    task_id = task.run()
    assert asyncio.run(asyncio.wait_for(_await(task), WAIT)) == 3
    assert task.id == task_id  # not run again
    task.args = (5, 5)
    assert asyncio.run(asyncio.wait_for(_await(task), WAIT)) == 10
    assert task.id != task_id


async def _await(task):
    return await task


def test_an_await_given_up_stops_waiting_and_the_task_runs_on(cluster):
    task = AsyncTask(fx.nap, 1, "done anyway")
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(_await(task), 0.2))
    assert not _waiting_for(task.id)  # asyncio's cancel reached our future
    assert nbqueue.result(task.id, wait=WAIT * 1000) == "done anyway"


def test_await_a_sync_task_returns_at_once(store_dir):
    started = time.monotonic()
    assert asyncio.run(_await(AsyncTask(fx.add, 1, 2, sync=True))) == 3
    cached = AsyncTask(fx.add, 3, 4, sync=True, cached=60)
    assert asyncio.run(_await(cached)) == 7
    assert time.monotonic() - started < 2


# -- as_completed ----------------------------------------------------------------------

def test_as_completed_yields_a_fast_task_before_a_slow_one_enqueued_first(cluster):
    slow = async_task(fx.nap, 3, "slow")
    fast = async_task(fx.add, 1, 1)
    seen = [(t.id, time.monotonic()) for t in as_completed([slow, fast], timeout=WAIT)]
    assert [task_id for task_id, _ in seen] == [fast, slow]
    assert seen[1][1] - seen[0][1] > 1  # the fast one came long before the slow one ended


def test_as_completed_yields_failures_as_tasks(cluster):
    ok, bad = async_task(fx.add, 1, 2), async_task(fx.boom)
    tasks = {t.id: t for t in as_completed([ok, bad, ok], timeout=WAIT)}
    assert len(tasks) == 2  # an id given twice is yielded once
    assert isinstance(tasks[bad], Failure) and tasks[ok].result == 3


def test_as_completed_times_out(cluster):
    slow = async_task(fx.nap, 2, "late")
    started = time.monotonic()
    with pytest.raises(cf.TimeoutError, match="1 of 1 tasks"):
        list(as_completed([slow], timeout=0.3))
    assert time.monotonic() - started < 1.5
    assert not _waiting_for(slow)  # its future was cancelled: no longer waited for
    with pytest.raises(TimeoutError, match="group 'never'"):
        list(as_completed(group="never", count=1, timeout=0.2))


def test_as_completed_group_follows_the_group_as_it_grows(cluster):
    ids = [async_task(fx.nap, 0.05 * (i % 3), i, group="grow") for i in range(12)]
    seen = []
    for task in as_completed(group="grow", timeout=WAIT):  # ends at this process's 12
        seen.append(task.id)
        if len(seen) == 6:
            ids += [async_task(fx.add, i, group="grow") for i in range(3)]  # now 15
    assert sorted(seen) == sorted(ids) and len(seen) == 15
    assert [t.id for t in as_completed(group="grow", count=4, timeout=WAIT)] == seen[:4]


def test_as_completed_refuses_bad_input(store_dir):
    for kwargs, name in (({}, "exactly one"), ({"task_ids": ["a"], "group": "g"}, "exactly one"),
                         ({"task_ids": "abc"}, "task_ids"), ({"group": ""}, "group"),
                         ({"group": "g", "count": 0}, "count"),
                         ({"task_ids": ["a"], "count": 2}, "count"),
                         ({"group": "g", "timeout": -1}, "timeout")):
        with pytest.raises(ConfigurationError, match=name):
            as_completed(**kwargs)


# -- map -------------------------------------------------------------------------------

def test_map_ordered_spreads_tuples_and_passes_keywords(cluster):
    assert list(nbqueue.map(fx.add, [(1, 2), (3, 4), 5], timeout=WAIT)) == [3, 7, 5]
    assert list(nbqueue.map(fx.add, range(5), b=10, timeout=WAIT)) == list(range(10, 15))
    assert list(nbqueue.map(fx.add, [], timeout=WAIT)) == []
    slow_first = nbqueue.map(fx.nap, [(1, "slow"), (0, "fast")], timeout=WAIT)
    assert list(slow_first) == ["slow", "fast"]  # input order


def test_map_unordered_yields_a_fast_result_before_a_slow_one(cluster):
    results = nbqueue.map(fx.nap, [(2, "slow"), (0, "fast")], ordered=False, timeout=WAIT)
    assert list(results) == ["fast", "slow"]


def test_map_puts_its_tasks_in_one_group(cluster):
    assert list(nbqueue.map(fx.add, range(4), group="mapped", timeout=WAIT)) == [0, 1, 2, 3]
    assert sorted(nbqueue.result_group("mapped")) == [0, 1, 2, 3]
    assert sent(get_broker().directory).enqueued["mapped"] == 4


def test_map_raises_task_failed_at_its_place(cluster):
    results = nbqueue.map(lambda x: 10 // x, [5, 0, 2], timeout=WAIT)
    assert next(results) == 2
    with pytest.raises(TaskFailed) as failed:
        next(results)
    assert "ZeroDivisionError" in failed.value.task.result
    with pytest.raises(StopIteration):  # as Executor.map: the map ends with its failure
        next(results)


def test_map_times_out(cluster):
    started = time.monotonic()
    with pytest.raises(cf.TimeoutError, match="0 of 1 tasks of map"):
        list(nbqueue.map(fx.nap, [(2, "late")], timeout=0.3))
    assert time.monotonic() - started < 1.5


def test_map_with_progress_in_a_plain_process(cluster, capsys):
    assert list(nbqueue.map(fx.add, range(6), progress=True, timeout=WAIT)) == list(range(6))
    assert "6/6" in capsys.readouterr().err  # the tqdm bar, drawn complete


def test_map_refuses_bad_input(store_dir):
    with pytest.raises(ConfigurationError, match="save=False"):
        nbqueue.map(fx.add, [1], save=False)
    with pytest.raises(ConfigurationError, match="timeout"):
        nbqueue.map(fx.add, [1], timeout="soon")
    with pytest.raises(ConfigurationError, match="ordered"):
        nbqueue.map(fx.add, [1], ordered=None)
    with pytest.raises(nbqueue.PackingError):
        nbqueue.map(fx.add, [1, threading.Lock()])
    assert nbqueue.queue_size() == 0  # nothing half-enqueued


def test_map_in_sync_mode(store_dir):
    assert list(nbqueue.map(fx.add, [(1, 1), (2, 2)], sync=True, timeout=WAIT)) == [2, 4]


def test_breaking_out_of_map_cancels_the_rest(cluster, tmp_path):
    """Needs nbqueue.control.cancel_tasks (issue 13, written alongside)."""
    log = str(tmp_path / "runs.log")
    items = [(log, 0.0, "first")] + [(log, 1.0, i) for i in range(10)]
    results = nbqueue.map(fx.log_run, items, timeout=WAIT)
    assert next(results) == "first"
    results.close()  # as a `break` does
    broker = get_broker()
    wait_for(lambda: broker.pending() == 0 and broker.leased() == 0, WAIT,
             "the cancelled tasks to leave the queue")
    time.sleep(0.5)
    with open(log) as runs:
        started = sum(1 for line in runs if line.startswith("start"))
    assert started < 1 + 10  # without the cancel, all 10 would run (5 s on 2 workers)



def test_a_future_that_could_never_complete_is_refused_at_the_call(cluster):
    unsaved = async_task(fx.add, 1, save=False)
    with pytest.raises(ConfigurationError, match="save=False.*never stored"):
        nbqueue.future(unsaved)
    cached = async_task(fx.add, 2, cached=60)
    with pytest.raises(ConfigurationError, match="cached=True"):
        nbqueue.future(cached)
    assert nbqueue.future(cached, cached=True).result(timeout=30) == 2
