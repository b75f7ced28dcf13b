"""Once per worker: ``Cluster(initializer=, initargs=)`` and ``nbqueue.worker_state()``, on
real loky clusters: the initializer runs once in each worker process (and again in a
worker that replaces a killed one), its state serves every task run there, and an
initializer that raises stops the cluster, visibly, its tasks back in the queue."""

from __future__ import annotations

import os
import signal
import threading
from collections import defaultdict

import pytest

import nbqueue
from nbqueue import ConfigurationError, InitializerFailed, PackingError, async_task, result
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
WAIT = 30


def _pids(path) -> list[int]:
    try:
        with open(path) as src:
            return [int(line) for line in src.read().split()]
    except FileNotFoundError:
        return []


def _run(count: int) -> list[tuple[int, int, int]]:
    group = f"state-{os.urandom(4).hex()}"
    for x in range(count):
        async_task(fx.use_model, x, group=group)
    tasks = nbqueue.result_group(group, count=count, wait=WAIT * 1000)
    assert tasks is not None and len(tasks) == count
    return tasks


def _checked(values, inits: list[int]) -> dict[int, list[int]]:
    """Each worker's uses, in order: every task saw the model its worker loaded once."""
    uses: dict[int, list[int]] = defaultdict(list)
    for pid, value, used in values:
        assert pid in inits and value >= 10
        uses[pid].append(used)
    for pid, seen in uses.items():
        assert sorted(seen) == list(range(min(seen), min(seen) + len(seen)))
    return uses


def test_the_initializer_runs_once_in_each_worker_and_a_replacement_runs_it_again(
    store_dir, tmp_path
):
    log = tmp_path / "inits"
    with nbqueue.Cluster(workers=2, initializer=fx.load_model, initargs=(str(log), 10)):
        values = _run(60)
        inits = _pids(log)
        assert len(inits) == len(set(inits)) <= 2  # once per worker process
        uses = _checked(values, inits)
        assert all(min(seen) == 1 for seen in uses.values())  # the state lived on
        assert sum(len(seen) for seen in uses.values()) == 60
        os.kill(values[0][0], signal.SIGKILL)  # the pool is replaced
        wait_for(lambda: _run(20) and len(_pids(log)) > len(inits), WAIT,
                 "a replacement worker that ran the initializer")
        again = _run(20)
        later = _pids(log)
        assert len(later) == len(set(later))  # each process once, the new ones too
        assert {pid for pid, _, _ in again} <= set(later) - {values[0][0]}


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_a_failing_initializer_stops_the_cluster_with_its_traceback(store_dir):
    task_id = async_task(fx.add, 1, 2)
    cluster = nbqueue.Cluster(workers=1, initializer=fx.broken_initializer).start()
    try:
        wait_for(lambda: cluster.stopped, WAIT, "the cluster to stop")
        assert cluster.error is not None
        assert "ValueError: the model file is missing" in cluster.error
        assert "broken_initializer" in cluster.error  # its traceback
        print(cluster.error)
        assert nbqueue.fetch(task_id) is None  # not a failure: back in the queue
    finally:
        cluster.stop(wait=5)
    with nbqueue.Cluster(workers=1):
        assert result(task_id, wait=WAIT * 1000) == 3


def test_initializer_options_are_checked_at_the_call(store_dir):
    with pytest.raises(ConfigurationError, match="initargs"):
        nbqueue.Cluster(initargs=(1,))
    with pytest.raises(ConfigurationError, match="tuple"):
        nbqueue.Cluster(initializer=fx.add, initargs=5)
    with pytest.raises(TypeError):
        nbqueue.Cluster(initializer=42)
    with pytest.raises(PackingError, match="initializer"):
        nbqueue.Cluster(initializer=fx.add, initargs=(threading.Lock(),))
    assert issubclass(InitializerFailed, nbqueue.NbqueueError)


def test_worker_state_is_this_process_s_for_sync_tasks(store_dir):
    nbqueue.worker_state().update(model=[1, 2, 3], uses=0)
    try:
        pid, value, used = result(async_task(fx.use_model, 7, sync=True))
        assert (pid, value, used) == (os.getpid(), 10, 1)
        assert nbqueue.worker_state()["uses"] == 1
    finally:
        nbqueue.worker_state().clear()
