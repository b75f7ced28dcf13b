"""nbqueue.futures with a real loky cluster and a real store: futures of tasks, one waiter
thread for all of them, and ``await AsyncTask``. ``as_completed`` and ``map``, which
build on them, are in ``tests/test_iterate.py``."""

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
from nbqueue.control import cancel_tasks
from nbqueue.errors import ConfigurationError, SignatureError
from nbqueue.disk.directory import heartbeats
from nbqueue.models import Failure, Success
from nbqueue.disk.names import humanize
from nbqueue.disk.store import Store
from tests import tasks_fixtures as fx
from tests.waiting import wait_for, watched

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]
WAIT = 20  # seconds: bounded, generous for a loaded machine
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _waiters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == futures_module.THREAD_NAME]


def _unseen(task_id: str) -> int | None:
    """How many outcomes the waiter has not yet read stored for the future of
    ``task_id`` (an async_iter's: those of its tasks); None if it waits for none."""
    waiter = futures_module._waiter
    with waiter._lock:
        found = [v.watches[task_id] for v in waiter._keys.values() if task_id in v.watches]
        return len(found[0].remaining) if found else None


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
    assert not watched(task.id)  # asyncio's cancel reached our future
    assert nbqueue.result(task.id, wait=WAIT * 1000) == "done anyway"


@pytest.mark.alone  # bounds a time from above
def test_await_a_sync_task_returns_at_once(store_dir):
    started = time.monotonic()
    assert asyncio.run(_await(AsyncTask(fx.add, 1, 2, sync=True))) == 3
    cached = AsyncTask(fx.add, 3, 4, sync=True, cached=60)
    assert asyncio.run(_await(cached)) == 7
    assert time.monotonic() - started < 2


def test_a_future_that_could_never_complete_is_refused_at_the_call(cluster):
    unsaved = async_task(fx.add, 1, save=False)
    with pytest.raises(ConfigurationError, match="save=False.*never stored"):
        nbqueue.future(unsaved)
    cached = async_task(fx.add, 2, cached=60)
    with pytest.raises(ConfigurationError, match="cached=True"):
        nbqueue.future(cached)
    assert nbqueue.future(cached, cached=True).result(timeout=30) == 2


# -- every way a future ends wakes every way of waiting for it -------------------------

PROMPT = 1.0  # seconds: every consumer wakes within this of the end (the tasks take 5 s)


@pytest.fixture
def one_worker(store_dir):
    """A one-worker cluster, so that a second task waits queued behind the first."""
    running = nbqueue.Cluster(workers=1, directory=store_dir).start()
    yield running
    running.stop(wait=0.5)  # tasks left running go back to the queue of a temp store


def _error_name(exc: TaskFailed) -> str:
    """The class name of a failed task's error (TaskCancelled, with or without its module)."""
    return exc.task.result.split(":")[0].rsplit(".", 1)[-1]


def _seen(fut: cf.Future) -> str:
    """How a finished future ended, in words the consumers can compare."""
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception(timeout=0)
    if isinstance(exc, TaskFailed):
        return "failed " + _error_name(exc)
    return f"failed {type(exc).__name__}" if exc is not None else f"result {fut.result()!r}"


class _Consumers:
    """The five ways to wait for a TaskFuture, all waiting before it ends; each notes when
    it woke and what it saw: ``concurrent.futures.wait``, ``as_completed``,
    ``add_done_callback``, ``asyncio.wrap_future`` + await, and ``await`` of the future
    (and of the AsyncTask, when the task's own outcome ends it)."""

    def __init__(self, fut: TaskFuture, task: AsyncTask | None = None,
                 limit: float = 8.0) -> None:
        self.fut, self.task, self.limit = fut, task, limit
        self.woke: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._awaiting = threading.Event()
        fut.add_done_callback(lambda f: self._note("callback", _seen(f)))
        self._threads = [threading.Thread(target=run, daemon=True)
                         for run in (self._wait, self._as_completed, self._asyncio)]
        for thread in self._threads:
            thread.start()
        # both concurrent.futures consumers hold a waiter on the future, the loop awaits it
        wait_for(lambda: len(fut._waiters) == 2 and self._awaiting.is_set(), WAIT,
                 "every consumer to wait")
        assert not self.woke and not fut.done()

    @property
    def names(self) -> set[str]:
        names = {"wait", "as_completed", "callback", "wrap_future", "await future"}
        return names | {"await AsyncTask"} if self.task is not None else names

    def _note(self, name: str, seen: str) -> None:
        with self._lock:
            self.woke[name] = (time.monotonic(), seen)

    def _wait(self) -> None:
        done, _ = cf.wait([self.fut], timeout=self.limit)
        if self.fut in done:
            self._note("wait", _seen(self.fut))

    def _as_completed(self) -> None:
        try:
            for fut in cf.as_completed([self.fut], timeout=self.limit):
                self._note("as_completed", _seen(fut))
        except cf.TimeoutError:
            pass

    def _asyncio(self) -> None:
        async def note(name: str, awaitable) -> None:
            try:
                seen = f"result {await awaitable!r}"
            except (asyncio.CancelledError, cf.CancelledError):
                seen = "cancelled"
            except TaskFailed as exc:
                seen = "failed " + _error_name(exc)
            except Exception as exc:
                seen = f"failed {type(exc).__name__}"
            self._note(name, seen)

        async def main() -> None:
            waits = [asyncio.ensure_future(note("wrap_future", asyncio.wrap_future(self.fut))),
                     asyncio.ensure_future(note("await future", _await(self.fut)))]
            if self.task is not None:
                waits.append(asyncio.ensure_future(note("await AsyncTask", _await(self.task))))
            await asyncio.sleep(0)  # each has begun its await
            await asyncio.sleep(0)
            self._awaiting.set()
            await asyncio.wait(waits, timeout=self.limit)
        asyncio.run(main())

    def check(self, seen: str, ended: float | None = None) -> dict[str, float]:
        """Every consumer saw the future end as ``seen``, within PROMPT of ``ended`` (by
        default, the first of them to wake); returns each one's delay in ms."""
        for thread in self._threads:
            thread.join(timeout=self.limit + WAIT)
        assert set(self.woke) == self.names, f"never woke: {self.names - set(self.woke)}"
        assert {what for _, what in self.woke.values()} == {seen}, self.woke
        first = min(at for at, _ in self.woke.values())
        ended = first if ended is None else ended
        delays = {name: round((at - ended) * 1000, 1) for name, (at, _) in self.woke.items()}
        assert all(delay < PROMPT * 1000 for delay in delays.values()), delays
        return delays


def _started(task_id: str) -> bool:
    return nbqueue.status(task_id)["state"] == "running"


def test_a_result_wakes_every_consumer(one_worker):
    task = AsyncTask(fx.nap, 1, "slept")
    began = time.monotonic()
    fut = future(task.run())
    consumers = _Consumers(fut, task)
    print(consumers.check("result 'slept'"))
    assert time.monotonic() - began < 1 + WAIT and fut.result(timeout=0) == "slept"
    assert not watched(task.id)


def test_a_failure_wakes_every_consumer(one_worker):
    task = AsyncTask(fx.reports, 5, 0.2, fail=True)  # 1 s, then RuntimeError
    fut = future(task.run())
    consumers = _Consumers(fut, task)
    print(consumers.check("failed RuntimeError"))
    assert isinstance(fut.exception(timeout=0), TaskFailed)


@pytest.mark.alone  # bounds a time from above
def test_cancelling_a_future_wakes_concurrent_futures_wait_at_once(one_worker):
    """One worker, two 5 s tasks, the second one's future cancelled
    0.5 s in: ``concurrent.futures.wait([f], timeout=8)`` returns at once, f done."""
    first = async_task(fx.nap, 5, "first")
    second = async_task(fx.nap, 5, "second")
    f = future(second)
    consumers = _Consumers(f)
    wait_for(lambda: _started(first), WAIT, "the first task to run")
    time.sleep(0.5)
    cancelled = time.monotonic()
    assert f.cancel() and f.cancelled() and f.done()
    done, not_done = cf.wait([f], timeout=8)
    took = time.monotonic() - cancelled
    assert f in done and not not_done and took < 0.1, took
    print(f"wait after cancel: {took * 1000:.1f} ms;", consumers.check("cancelled", cancelled))
    assert not watched(second)  # the waiter thread let go of it
    # the task itself was not cancelled (a cluster may hold it already, next in its worker)
    assert nbqueue.status(second)["state"] in ("queued", "running")
    assert f.cancel()  # again: still cancelled, nothing else happens
    with pytest.raises(cf.CancelledError):
        f.result(timeout=0)
    cancel_tasks([first, second])  # not to wait for them at teardown


def _cancel_elsewhere(task_id: str, directory: str) -> None:
    code = (f"import nbqueue\nnbqueue.configure(directory={directory!r})\n"
            f"print(nbqueue.cancel({task_id!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.split() == ["True"], done.stderr


@pytest.mark.parametrize("where", ["here", "in another process"])
@pytest.mark.parametrize("which", ["queued", "running"])
def test_cancelling_the_task_wakes_every_consumer(request, store_dir, where, which):
    """``nbqueue.cancel`` of a task queued (no cluster holds it: cancel stores its outcome)
    or running (its cluster stops it and stores the outcome once its run has ended)."""
    if which == "running":
        request.getfixturevalue("one_worker")
    task = AsyncTask(fx.nap, 5, "never")
    task.run()
    fut = future(task.id)
    consumers = _Consumers(fut, task)
    if which == "running":
        wait_for(lambda: _started(task.id), WAIT, "the task to run")
    asked = time.monotonic()
    if where == "here":
        assert nbqueue.cancel(task.id)
    else:
        _cancel_elsewhere(task.id, store_dir)
    delays = consumers.check("failed TaskCancelled")
    ended = min(at for at, _ in consumers.woke.values())
    print(f"ended {(ended - asked) * 1000:.0f} ms after the cancel began;", delays)
    assert ended - asked < 3.5  # well before the 5 s task would have ended
    assert fut.task.id == task.id and not fut.task.success


def test_deleting_the_group_leaves_futures_to_their_outcomes(one_worker):
    earlier = future(async_task(fx.add, 1, 2, group="g"))
    assert earlier.result(timeout=WAIT) == 3
    task = AsyncTask(fx.nap, 1.5, "stored after the delete", group="g")
    fut = future(task.run())
    consumers = _Consumers(fut, task)
    wait_for(lambda: _started(task.id), WAIT, "the task to run")
    assert nbqueue.delete_group("g", tasks=True) == 1  # the earlier one; none runs on
    assert earlier.done() and earlier.result(timeout=0) == 3  # a done future keeps it
    assert not fut.done()  # the running task was not deleted: its future waits on
    print(consumers.check("result 'stored after the delete'"))
    assert nbqueue.result_group("g") == ["stored after the delete"]


def test_deleting_an_async_iters_tasks_fails_its_future_with_outcome_deleted(one_worker):
    """An async_iter's future whose tasks are deleted with their group while it waits can
    never complete: it fails with OutcomeDeleted, at once."""
    iter_id = async_iter(fx.nap, [(0, 1), (0, 2), (5, 3)])
    fut = future(iter_id)
    consumers = _Consumers(fut)
    # two of its tasks finished, and the future's waiter read them stored: an outcome
    # deleted before it is read leaves no trace (the future waits on; module docstring)
    wait_for(lambda: nbqueue.count_group(iter_id) == 2 and _unseen(iter_id) == 1, WAIT,
             "two of its tasks to finish, seen by the future's waiter")
    deleted = time.monotonic()
    assert nbqueue.delete_group(iter_id, tasks=True) == 2  # the third one runs on
    print(consumers.check("failed OutcomeDeleted", deleted))
    with pytest.raises(nbqueue.OutcomeDeleted, match="2 of the 3 tasks.*run the async_iter"):
        fut.result(timeout=0)
    assert nbqueue.cancel_group(iter_id) == 1


def test_retrying_an_async_iters_failure_is_no_deletion(cluster):
    """A retried task's failure is removed until its new outcome is stored, but stays in
    its group: the future of its async_iter waits for that outcome."""
    iter_id = async_iter(fx.reports, [(1, 0.0, True), (10, 0.3)])  # fails at once; 3 s
    fut = future(iter_id)
    failed = wait_for(lambda: nbqueue.fetch_group(iter_id, failures=True), WAIT,
                      "its first task to fail")[0]
    assert not failed.success and nbqueue.retry(failed.id)
    assert not fut.done()
    exc = fut.exception(timeout=WAIT)  # the retried task fails again: so does the iter
    assert isinstance(exc, TaskFailed), exc
    assert nbqueue.fetch(failed.id).attempt_count == 2
    assert sorted(t.attempt_count for t in nbqueue.fetch_group(iter_id)) == [1, 2]


def test_a_wait_that_times_out_leaves_the_future_pending(one_worker):
    task = AsyncTask(fx.nap, 1.5, "late")
    fut = future(task.run())
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        fut.exception(timeout=0.1)
    assert cf.wait([fut], timeout=0.1) == (set(), {fut})
    with pytest.raises(cf.TimeoutError):
        list(cf.as_completed([fut], timeout=0.1))

    async def gives_up() -> set:
        _, pending = await asyncio.wait({asyncio.wrap_future(fut)}, timeout=0.1)
        return pending
    assert len(asyncio.run(gives_up())) == 1  # asyncio.wait does not cancel what it waits for
    assert not fut.done() and not fut.cancelled() and watched(task.id)
    consumers = _Consumers(fut, task)
    print(consumers.check("result 'late'"))


def test_an_await_given_up_cancels_the_future_and_wakes_every_consumer(one_worker):
    task_id = async_task(fx.nap, 5, "runs on")
    fut = future(task_id)
    consumers = _Consumers(fut)
    began = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(_await(fut), 0.3))
    assert fut.cancelled()
    print(consumers.check("cancelled", began + 0.3))  # the moment wait_for gave up
    assert not watched(task_id)
    assert nbqueue.status(task_id)["state"] == "running"  # the task runs on
    nbqueue.cancel(task_id)
