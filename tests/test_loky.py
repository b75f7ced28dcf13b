"""nbqueue.cluster.executors.loky on its own: a ``LokyExecutor`` with one real loky worker
runs chunks of real task items (``tests.tasks_fixtures`` by dotted path), without a
cluster: how many chunks the pool holds, cancelling the others, shutting down, a pool
that breaks, and the workers' slots. ``tests/test_executors.py`` tests the dask one.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import CancelledError, Future

import pytest

from nbqueue.cluster.executors import BROKEN
from nbqueue.cluster.executors.loky import AHEAD, LokyExecutor
from nbqueue.disk.hosts import CANCELLED_DIR
from nbqueue.disk.records import Item
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)
WAIT = 20  # seconds: bounded, generous for a loaded machine


@pytest.fixture
def executor(slot_dir):
    """A one-worker executor, shut down with its worker killed afterwards."""
    made = LokyExecutor(1, slot_dir)
    yield made
    made.shutdown(kill=True)


def _item(task_id: str, func: str, *args, timeout: float | None = None) -> Item:
    return Item(
        task_id,
        f"tests.tasks_fixtures.{func}",
        None,
        pickle.dumps((args, {})),
        timeout,
        f"lease.{task_id}",
    )


def _chunk(executor: LokyExecutor, task_id: str, func: str, *args, **kw) -> Future:
    return executor.submit([_item(task_id, func, *args, **kw)])


def _runs(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as log:
        return sum(line.startswith("start") for line in log)


def test_the_pool_holds_ahead_chunks_a_worker_and_one_cancelled_while_waiting_never_runs(
    executor, tmp_path
):
    logs = [str(tmp_path / f"run{i}.log") for i in range(AHEAD + 2)]
    chunks = [_chunk(executor, f"t{i}", "log_run", log, 0.3, i) for i, log in enumerate(logs)]
    # the pool's own are running, and never cancelled under loky; the rest wait here
    assert [chunk.running() for chunk in chunks] == [True] * AHEAD + [False, False]
    assert not chunks[0].cancel() and chunks[AHEAD].cancel()
    outcomes = [chunk.result(WAIT) for chunk in chunks[:AHEAD]] + [chunks[-1].result(WAIT)]
    assert [o.success for chunk in outcomes for o in chunk] == [True] * (AHEAD + 1)
    assert [o.token for chunk in outcomes for o in chunk] == [
        f"lease.t{i}" for i in (*range(AHEAD), AHEAD + 1)
    ]  # each names its lease
    assert [_runs(log) for log in logs] == [1] * AHEAD + [0, 1]
    with pytest.raises(CancelledError):
        chunks[AHEAD].result(0)
    assert executor.restarts == 0  # one pool all along


def test_shutdown_cancels_the_waiting_chunks_kills_the_running_ones_and_refuses_more(
    executor, tmp_path
):
    log = str(tmp_path / "run.log")
    chunks = [_chunk(executor, f"t{i}", "log_run", log, 10, i) for i in range(AHEAD + 1)]
    wait_for(lambda: _runs(log) == 1, WAIT, "the first chunk running")
    executor.shutdown(kill=True)
    assert chunks[-1].cancelled()  # it was waiting here: it never runs
    for chunk in chunks[:AHEAD]:
        with pytest.raises(BROKEN):
            chunk.result(WAIT)
    assert _runs(log) == 1
    with pytest.raises(RuntimeError, match="shut down"):
        _chunk(executor, "late", "add", 1, 2)


def test_shutdown_without_kill_lets_the_pools_chunks_finish(executor):
    chunks = [_chunk(executor, f"t{i}", "nap", 0.2, i) for i in range(AHEAD + 1)]
    executor.shutdown(kill=False)
    assert chunks[-1].cancelled()
    assert [chunk.result(0)[0].success for chunk in chunks[:AHEAD]] == [True] * AHEAD


def test_a_broken_pool_fails_its_chunks_and_the_next_submit_gets_a_fresh_one(executor):
    dying = _chunk(executor, "dies", "die")
    waiting = [_chunk(executor, f"w{i}", "nap", 5, i) for i in range(AHEAD)]  # one waits here
    with pytest.raises(BROKEN):
        dying.result(WAIT)
    for chunk in waiting:  # the one in the pool, and the one waiting for it
        with pytest.raises(BROKEN):
            chunk.result(WAIT)
    outcome = _chunk(executor, "after", "add", 1, 2).result(WAIT)[0]
    assert outcome.success and pickle.loads(outcome.result) == 3
    assert executor.restarts == 1


def test_running_reads_each_workers_task_from_its_slot_and_stop_task_stops_it(
    executor, slot_dir, tmp_path
):
    assert executor.running() == []
    log = str(tmp_path / "run.log")
    chunk = _chunk(executor, "long", "log_run", log, 30, "v", timeout=60)
    task_id, started, deadline, pid = wait_for(
        lambda: next(iter(executor.running()), None), WAIT, "the task in its worker's slot"
    )
    assert task_id == "long" and deadline == pytest.approx(started + 60, abs=1)
    # a signal before the task's function runs is not for it (the cluster kills the
    # worker if the task still runs STOP_GRACE later): stop it once it runs
    wait_for(lambda: _runs(log) == 1, WAIT, "the task's function running")
    os.makedirs(os.path.join(slot_dir, CANCELLED_DIR), exist_ok=True)
    open(os.path.join(slot_dir, CANCELLED_DIR, "long"), "w").close()  # as Cancels marks it
    executor.stop_task(pid)  # the task raises TaskCancelled, its worker lives on
    outcome = chunk.result(WAIT)[0]
    assert not outcome.success and "TaskCancelled" in str(outcome.result)
    after = _chunk(executor, "after", "add", 2, 2).result(WAIT)[0]
    assert after.success and after.pid == pid and executor.restarts == 0
    wait_for(lambda: executor.running() == [], WAIT, "the slot idle")


def test_kill_ends_a_worker_and_a_gone_pid_is_no_error(executor):
    chunk = _chunk(executor, "long", "nap", 30, "v")
    pid = wait_for(lambda: next(iter(executor.running()), None), WAIT, "the task running")[3]
    executor.kill(pid)
    with pytest.raises(BROKEN):
        chunk.result(WAIT)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), WAIT, "the worker gone")
    executor.kill(pid)  # gone: nothing to do, nothing raised
    executor.stop_task(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


INTERRUPTED_AS_THEY_START = """
import os, signal, sys, threading, time
import psutil
import nbqueue
from tests import tasks_fixtures as fx

nbqueue.configure(directory=sys.argv[1])
me, hit, done = psutil.Process(), set(), threading.Event()

def interrupt_each_new_child():  # as Jupyter's Interrupt, to a worker still starting
    while not done.is_set():
        for child in me.children(recursive=True):
            try:
                worker = "popen_loky" in " ".join(child.cmdline())
            except psutil.Error:  # it ended meanwhile
                continue
            if worker and child.pid not in hit:
                hit.add(child.pid)
                os.kill(child.pid, signal.SIGINT)
        time.sleep(0.001)

threading.Thread(target=interrupt_each_new_child, daemon=True).start()
with nbqueue.Cluster(workers=2):
    for i in range(4):
        nbqueue.async_task(fx.add, i, group="started")
    values = nbqueue.result_group("started", count=4, wait=60_000)
done.set()
print(sorted(values), len(hit))
"""


def test_workers_interrupted_as_they_start_run_on(tmp_path):
    """Every worker starts with SIGINT blocked, the first one and the others, in a fresh
    process: multiprocessing's resource tracker, when it starts, unblocks SIGINT in its
    thread, so it starts before any worker. Each worker interrupted while it starts runs
    on; nothing is printed."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_AS_THEY_START,
                           str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=45, cwd=root)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    values, hit = done.stdout.split("]")
    assert values == "[0, 1, 2, 3" and int(hit) == 2, done.stdout
