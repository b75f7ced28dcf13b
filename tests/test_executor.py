"""``nbqueue.Executor``: a real ``concurrent.futures.Executor`` over a real cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

import nbqueue
from nbqueue import ConfigurationError, TaskFailed, status
from nbqueue.executor import Executor
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

WAIT = 60  # seconds


def test_submit_gives_real_futures_that_wait_and_as_completed_take(cluster):
    with Executor(group="exec") as executor:
        futures = [executor.submit(fx.nap, 0.2 * (3 - i), i) for i in range(3)]
        assert all(isinstance(f, concurrent.futures.Future) for f in futures)
        done, not_done = concurrent.futures.wait(futures, timeout=WAIT)
        assert not not_done and [f.result() for f in futures] == [0, 1, 2]
        finished = [f.result() for f in concurrent.futures.as_completed(
            [executor.submit(fx.nap, s, s) for s in (0.6, 0.0)], timeout=WAIT)]
        assert finished == [0.0, 0.6]
    assert nbqueue.count_group("exec") == 5


def test_keywords_go_to_the_function_and_options_to_every_task(cluster):
    executor = Executor(group="opts")
    # ``group`` here is the function's keyword: the executor's options travel apart
    fut = executor.submit(fx.echo, 1, group="the function's")
    assert fut.result(WAIT) == ((1,), {"group": "the function's"})
    assert status(fut.task_id)["group"] == "opts"
    executor.shutdown()


def test_a_failure_raises_task_failed_with_the_failure(cluster):
    with Executor() as executor:
        fut = executor.submit(fx.boom, "from the executor")
        with pytest.raises(TaskFailed) as raised:
            fut.result(WAIT)
        assert "from the executor" in str(raised.value.task.result)


def test_map_runs_in_input_order_and_takes_several_iterables(cluster):
    with Executor() as executor:
        assert list(executor.map(fx.add, [1, 2, 3], [10, 20, 30], timeout=WAIT)) == [11, 22, 33]
        assert list(executor.map(fx.nap, [0.3, 0.0], ["slow", "fast"], chunksize=4,
                                 timeout=WAIT)) == ["slow", "fast"]


def test_asyncio_awaits_its_futures(cluster):
    executor = Executor()

    async def main():
        loop = asyncio.get_running_loop()
        wrapped = asyncio.wrap_future(executor.submit(fx.add, 2, 3))
        by_loop = loop.run_in_executor(executor, fx.add, 4, 5)
        return await asyncio.wait_for(asyncio.gather(wrapped, by_loop), WAIT)

    assert asyncio.run(main()) == [5, 9]
    executor.shutdown()


def test_shutdown_waits_or_cancels_and_refuses_new_calls(store_dir):
    executor = Executor()
    with pytest.warns(nbqueue.NoClusterWarning):
        queued = [executor.submit(fx.add, i, 1) for i in range(3)]
    started = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)  # nothing serves them: cancelled
    assert time.monotonic() - started < 10
    assert all(f.cancelled() for f in queued)
    wait_for(lambda: all(status(f.task_id)["state"] == "cancelled" for f in queued), 10,
             "the tasks cancelled in the store, not only their futures")
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(fx.add, 1)


def test_shutdown_waits_for_the_calls_sent(cluster):
    executor = Executor()
    futures = [executor.submit(fx.nap, 0.3, i) for i in range(4)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [0, 1, 2, 3]


def test_a_cancelled_future_cancels_its_task(cluster):
    executor = Executor()
    fut = executor.submit(fx.nap, 30)
    wait_for(lambda: status(fut.task_id)["state"] == "running", WAIT, "the nap running")
    assert fut.cancel() and fut.cancelled()
    wait_for(lambda: status(fut.task_id)["state"] == "cancelled", WAIT, "the nap cancelled")
    executor.shutdown()


def test_bad_options_are_refused_at_the_executor(store_dir):
    with pytest.raises(ConfigurationError, match="timeout"):
        Executor(timeout=-1)
    with pytest.raises(ConfigurationError, match="not in q_options"):
        Executor(q_options={})


def test_map_with_a_chunksize_runs_that_many_calls_a_task(cluster):
    with Executor(group="chunked") as executor:
        out = list(executor.map(fx.add, range(200), range(200), chunksize=50, timeout=WAIT))
        assert out == [2 * x for x in range(200)]
        assert nbqueue.count_group("chunked") == 4
        with pytest.raises(ConfigurationError, match="chunksize"):
            executor.map(fx.add, [1], chunksize=0)
        failing = executor.map(fx.boom, ["a", "b", "c"], chunksize=2, timeout=WAIT)
        with pytest.raises(TaskFailed):
            next(failing)
