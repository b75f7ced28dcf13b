"""nbqueue.cluster.serving: one running cluster per store directory in a process, and at
the process's end every running cluster stops and hands its tasks in flight back to the
queue uncounted. Real loky clusters on real stores in temp directories.

Every other way of stopping a cluster with tasks leased but not started is in
``tests/test_cluster.py``; Kernel > Restart and Shut Down in ``tests/test_kernel.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nbqueue import Cluster, async_task, fetch_group, get_broker, result
from nbqueue.cluster.serving import EXIT_GRACE, serving, stop_all
from nbqueue.disk.directory import drop
from tests import stopping
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 20  # seconds: bounded, generous for a loaded machine
LONG = 30  # seconds a task handed back would run


@pytest.fixture
def directories(tmp_path):
    """Two fresh store directories, their brokers and stores dropped afterwards."""
    found = [str(tmp_path / name) for name in ("a", "b")]
    yield found
    for directory in found:
        drop(directory)


def _redelivered_attempts(directory: str) -> list[int]:
    """The attempt of every task queued in ``directory``, as its next delivery counts it."""
    broker = get_broker(directory)
    leases = broker.lease("test-serving", 100, 30)
    broker.release([lease.token for lease in leases], counted=False)
    return [lease.attempt for lease in leases]


def test_a_process_serves_each_directory_with_its_own_cluster(directories):
    a, b = directories
    first = Cluster(workers=1, directory=a).start()
    second = Cluster(workers=1, directory=b).start()
    try:
        assert first is not second
        assert serving[first.directory] is first
        assert serving[second.directory] is second
        assert Cluster(workers=1, directory=a).start() is first  # the same cell run again
        assert Cluster(workers=1, directory=b).start() is second
        for directory, value in ((a, "in a"), (b, "in b")):
            broker = get_broker(directory)
            task = async_task(fx.nap, 0, value, broker=broker)
            assert result(task, wait=WAIT * 1000, broker=broker) == value
    finally:
        first.stop(wait=5)
        second.stop(wait=5)
    assert first.directory not in serving and second.directory not in serving


def test_stop_all_stops_every_cluster_and_hands_its_tasks_back_uncounted(directories, caplog):
    clusters = [Cluster(workers=1, directory=directory).start() for directory in directories]
    try:
        for directory in directories:
            for i in range(2):
                async_task(fx.nap, LONG, i, broker=get_broker(directory))
        wait_for(
            lambda: all(c.running_tasks() == 1 for c in clusters),
            WAIT,
            "a task running on each cluster",
        )
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="nbqueue"):
            stop_all("a test stops them")
        took = time.monotonic() - started
    finally:
        for cluster in clusters:
            cluster.stop(wait=0)
    assert not any(c.running for c in clusters)
    assert took < 2 * EXIT_GRACE + 5  # the running tasks' grace, not their end
    assert not any(c.directory in serving for c in clusters)
    said = [r.getMessage() for r in caplog.records if "a test stops them" in r.getMessage()]
    for cluster in clusters:
        mine = [m for m in said if cluster.directory in m]
        assert len(mine) == 1 and re.search(r"hands [12] task\(s\) in flight back", mine[0])
    for directory in directories:
        broker = get_broker(directory)
        assert broker.size() == 2 and broker.leased() == 0
        assert _redelivered_attempts(directory) == [1, 1]  # none counted


EXITING = textwrap.dedent("""
    import sys, time
    import nbqueue
    from tests.tasks_fixtures import nap

    cluster = nbqueue.Cluster(workers=1, directory=sys.argv[1]).start()
    nbqueue.async_task(nap, float(sys.argv[2]), "long", broker=nbqueue.get_broker(sys.argv[1]))
    deadline = time.monotonic() + 20
    while cluster.running_tasks() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    print("running", cluster.running_tasks(), flush=True)
""")  # and the interpreter exits, the cluster running


def test_the_end_of_the_process_hands_the_running_task_back_uncounted(directories):
    directory = directories[0]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", EXITING, directory, str(LONG)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=LONG + 20,
    )
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-2000:]
    assert "running 1" in run.stdout
    assert took < LONG  # it did not wait for the task
    assert "hands 1 task(s) in flight back" in run.stderr  # the warning, for the user
    broker = get_broker(directory)
    assert broker.size() == 1 and broker.leased() == 0
    assert _redelivered_attempts(directory) == [1]


TRACKERS_AT_SHUTDOWN = textwrap.dedent("""
    import gc, importlib, json, multiprocessing, sys
    from loky.backend import get_context
    serving = importlib.import_module("nbqueue.cluster.serving")
    loky_lock = get_context("loky").Lock()  # registered with loky's resource tracker
    mp_lock = multiprocessing.get_context("spawn").Lock()  # and with multiprocessing's
    names = [loky_lock._semlock.name, mp_lock._semlock.name]
    serving._stop_resource_trackers()  # as at Kernel > Shut Down, the locks still alive
    with loky_lock, mp_lock:  # still usable until the process ends
        pass
    del loky_lock, mp_lock
    gc.collect()
    print(json.dumps(names))
    """)


def test_resource_trackers_end_at_kernel_shutdown_without_a_word():
    """The kernel's shutdown ends loky's and multiprocessing's resource trackers (they
    ignore ipykernel's SIGTERM) while semaphores are still alive: those are unlinked as
    at exit, no tracker warns of a leak, and none is started again for what comes after."""
    done = subprocess.run([sys.executable, "-c", TRACKERS_AT_SHUTDOWN], capture_output=True,
                          text=True, timeout=WAIT, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    names = json.loads(done.stdout)
    assert [name for name in names if os.path.exists(f"/dev/shm/sem.{name.lstrip('/')}")] == []


def _feeders() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "nbqueue-feeder" and t.is_alive())


def test_start_again_on_the_same_directory_gives_the_running_cluster(store_dir):
    """A cell `Cluster(workers=2).start()` run three times: one cluster, one pool."""
    before = _feeders()
    first = Cluster(workers=2).start()
    try:
        assert Cluster(workers=2).start() is first
        assert Cluster(workers=2, directory=store_dir).start() is first
        assert _feeders() == before + 1
        assert result(async_task(fx.add, 1, 2), wait=WAIT * 1000) == 3
        # other options: the running cluster is replaced, and its work goes on
        for i in range(8):
            async_task(fx.nap, 0.3, i, group="handover")
        time.sleep(0.2)
        second = Cluster(workers=3, timeout=30).start()
        assert second is not first and second.running and not first.running
        assert second.workers == 3 and _feeders() == before + 1
        tasks = fetch_group("handover", count=8, wait=WAIT * 1000)
        assert len(tasks) == 8 and all(t.success and t.attempt_count == 1 for t in tasks)
        assert sorted(t.result for t in tasks) == list(range(8))
    finally:
        Cluster(workers=3, timeout=30).start().stop(wait=5)
    assert _feeders() == before


@pytest.mark.timeout(300)
def test_interpreter_exit_is_quiet_and_loses_nothing(store_dir, tmp_path):
    """A script that ends with its cluster running, three times: the exit hook hands the
    tasks back, with nothing on stderr and no thread dead; a cluster then runs them all."""
    log = tmp_path / "runs.log"
    windows = []
    for first in range(stopping.ROUNDS):
        report = stopping.run("loky", "exit", store_dir, log, first=first, rounds=1)
        assert any("this process is exiting" in r[1] for r in report["records"])
        windows += report["windows"]
    stopping.drain_and_count(log, stopping.ROUNDS * stopping.TASKS, windows)
