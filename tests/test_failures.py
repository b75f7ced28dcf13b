"""Faults injected into real processes; afterwards every task's outcome is counted.

Each test breaks something for real (SIGKILL a worker, the cluster's host, a client
kernel; a task that hangs in C, segfaults, returns something huge or unpicklable)
and then checks: nothing lost, nothing run twice while its lease was valid.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import pytest

import nbqueue
from nbqueue import (Cluster, async_iter, async_task, count_group, fetch, fetch_group, result,
                     result_group)
from nbqueue.disk.storage import process_alive as _alive
from nbqueue.disk.hosts import read_slot
from nbqueue.disk.directory import drop, get_store, heartbeats
from tests import tasks_fixtures as fx
from tests.intruder import intruder  # noqa: F401 - a fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)
WAIT = 60_000


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as src:
                    if int(src.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _loky_workers(pid: int) -> list[int]:
    """Worker processes among the children (resource trackers live as long as the parent)."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as src:
                if b"LokyProcess" in src.read():
                    found.append(child)
        except OSError:
            continue
    return found


def _kill_tree(pid: int) -> float:
    """SIGKILL a process and its descendants; each is stopped first, so that none starts
    another (a host replacing a worker killed) while its children are listed. Returns
    when the process stopped: it did nothing after that."""
    stopped = time.time()
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return stopped
    for child in _children(pid):
        _kill_tree(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return stopped


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _runs(path: str) -> dict[int, list[tuple[float, float | None]]]:
    """Per task number, its runs as (start, stop or None), from a `fx.logged` file."""
    runs: dict[int, list] = defaultdict(list)
    open_runs: dict[tuple[int, int], float] = {}
    with open(path) as src:
        for line in src:
            kind, task_no, pid, when = line.split()
            key = (int(task_no), int(pid))
            if kind == "start":
                open_runs[key] = float(when)
            else:
                runs[int(task_no)].append((open_runs.pop(key), float(when)))
    for (task_no, _), started in open_runs.items():
        runs[task_no].append((started, None))  # killed mid-run
    return runs


def test_sigkill_of_one_worker_mid_group(store_dir):
    with Cluster(workers=2) as cluster:
        # tasks long enough that a worker is seldom between two of them when it is killed
        ids = [async_task(fx.nap, 0.05, i, group="kill-worker") for i in range(200)]
        assert _wait_for(lambda: count_group("kill-worker") >= 40, 60)
        def busy_worker():  # a worker in the middle of a task, as its slot shows
            for name in os.listdir(cluster._slot_dir):
                if name.isdigit() and read_slot(os.path.join(cluster._slot_dir, name)):
                    return int(name)
            return None
        os.kill(wait_for(busy_worker, 10, "a worker in the middle of a task"), signal.SIGKILL)
        values = result_group("kill-worker", count=200, wait=WAIT)
        assert sorted(values) == list(range(200))
        tasks = [fetch(i) for i in ids]
        assert all(t.success for t in tasks)
        assert count_group("kill-worker", failures=True) == 0
        assert max(t.attempt_count for t in tasks) == 2  # the dead worker's task, again
        assert cluster.running and result(async_task(fx.add, 7), wait=WAIT) == 7
    assert _wait_for(lambda: not _loky_workers(os.getpid()), 10)  # stop() ended the workers


def test_sigkill_of_the_cluster_host_then_a_new_cluster(store_dir, tmp_path):
    log = str(tmp_path / "runs.log")
    host = subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--workers", "2", "--retry", "2"],
                            stderr=subprocess.DEVNULL)
    try:
        broker = nbqueue.get_broker()
        assert _wait_for(lambda: heartbeats(broker.directory).clusters(), 30)
        ids = [async_task(fx.logged, log, i, 0.02, group="kill-host") for i in range(300)]
        assert _wait_for(lambda: count_group("kill-host") >= 60, 60)
        workers = _loky_workers(host.pid)
        assert len(workers) == 2
        # the host alone: were its workers killed first, the host could see them die
        # and hand their tasks back (rightly) before its own death
        killed_at = time.time()
        os.kill(host.pid, signal.SIGKILL)
        host.wait(timeout=10)
    finally:
        _kill_tree(host.pid)
    assert count_group("kill-host") < 300
    with Cluster(workers=2, retry=2):
        assert result_group("kill-host", count=300, wait=WAIT) is not None
        tasks = [fetch(i) for i in ids]
    assert all(t is not None and t.success for t in tasks)
    assert sorted(t.result for t in tasks) == list(range(300))
    assert count_group("kill-host") == 300 and count_group("kill-host", failures=True) == 0
    runs = _runs(log)
    assert set(runs) == set(range(300))  # every task ran
    for task_no, spans in runs.items():
        spans.sort()
        for (first_start, first_stop), (second_start, _) in zip(spans, spans[1:]):
            # a second run only once the first one's lease had expired: the host died,
            # so renewals stopped; a lease lasts `retry` (2 s) from its last renewal
            assert second_start > killed_at + 0.5, (task_no, spans)
    # the dead host's workers notice and exit on their own (loky's pipes close)
    try:
        assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10)
    finally:
        for pid in workers:
            _kill_tree(pid)


def test_client_kernel_killed_then_a_new_cluster_finishes_its_work(store_dir, tmp_path):
    ready = tmp_path / "ids"
    code = (f"from tests import tasks_fixtures as fx; fx.enqueue_from_client("
            f"{store_dir!r}, 40, 'client', 0.3, {str(ready)!r})")
    client = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd(),
                              stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(ready.exists, 60)
        assert _wait_for(lambda: count_group("client") >= 3, 60)
        _kill_tree(client.pid)
        client.wait(timeout=10)
    finally:
        _kill_tree(client.pid)
    ids = ready.read_text().split()
    done_before = {i: fetch(i).result for i in ids if fetch(i) is not None}
    assert 0 < len(done_before) < 40
    with Cluster(workers=2, retry=2):
        assert result_group("client", count=40, wait=WAIT) is not None
    assert sorted(result(i) for i in ids) == list(range(40))
    assert all(result(i) == value for i, value in done_before.items())


ACCEPTED_WINDOW = 0.05  # seconds: what async_task accepted before that is in the store


@pytest.mark.parametrize("host_cluster", [False, True], ids=["caller", "caller-with-cluster"])
def test_a_caller_killed_under_steady_load_loses_nothing_it_accepted_long_enough_ago(
        store_dir, tmp_path, host_cluster):
    """SIGKILL a caller that enqueues a task every ms (with a cluster of its own running
    10 ms tasks, or none): every task whose ``async_task`` returned more than
    ACCEPTED_WINDOW before the kill is in the store, and a new cluster runs it once."""
    accepted = tmp_path / "accepted"
    code = (f"from tests import tasks_fixtures as fx; fx.steady_producer({store_dir!r}, "
            f"{str(accepted)!r}, 0.001, 0.01, {host_cluster})")
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd(),
                              stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: accepted.exists() and
                         accepted.read_text().count("\n") >= 1500, 60)
        killed_at = _kill_tree(caller.pid)
        caller.wait(timeout=10)
    finally:
        _kill_tree(caller.pid)
    lines = [line.split() for line in accepted.read_text().splitlines()]
    ages = {task_id: killed_at - float(when) for task_id, when in lines}
    must = [task_id for task_id, age in ages.items() if age > ACCEPTED_WINDOW]
    with Cluster(workers=2, retry=2):
        lost = [task_id for task_id in must if result(task_id, wait=20_000) is None]
    assert not lost, (f"{len(lost)} of {len(must)} accepted tasks lost, accepted up to "
                      f"{max(ages[t] for t in lost) * 1000:.0f} ms before the kill")
    values = sorted(fetch(task_id).result for task_id in must)
    assert values == sorted(set(values))  # one outcome each


def test_segfault_is_a_failure_saying_the_worker_died(cluster):
    crash = async_task(fx.segfault, max_attempts=1)
    others = [async_task(fx.nap, 0.05, i) for i in range(10)]
    task = fetch(crash, wait=WAIT)
    assert not task.success and "worker process running this task died" in task.result
    assert task.cause is nbqueue.Cause.WORKER_LOST
    assert [result(o, wait=WAIT) for o in others] == list(range(10))


def test_unpicklable_and_huge_results(cluster):
    bad = fetch(async_task(fx.unpicklable_result, ack_failure=True), wait=WAIT)
    assert not bad.success and "cannot be pickled" in bad.result
    big = async_task(fx.big_result, 100)
    value = result(big, wait=WAIT)
    assert isinstance(value, bytes) and len(value) == 100 * 1024 * 1024
    assert result(async_task(fx.add, 1), wait=WAIT) == 1


def test_many_producers_two_clusters(store_dir):
    """8 producer processes x 2,000 tasks, 2 clusters in other processes: 16,000 outcomes."""
    consumers = [subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                                   store_dir, "--workers", "1"], stderr=subprocess.DEVNULL)
                 for _ in range(2)]
    try:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(8, mp_context=spawn) as pool:
            batches = list(pool.map(fx.produce_tasks, [store_dir] * 8, range(8), [2000] * 8))
        ids = [i for batch in batches for i in batch]
        assert len(set(ids)) == 16_000
        assert _wait_for(lambda: count_group("many") >= 16_000, 100)
        tasks = fetch_group("many")
        assert len(tasks) == 16_000 and len({t.id for t in tasks}) == 16_000
        assert {t.id for t in tasks} == set(ids)
        assert sorted(t.result for t in tasks) == list(range(16_000))
        assert all(t.attempt_count == 1 for t in tasks)
        broker = nbqueue.get_broker()
        beats = heartbeats(broker.directory)
        assert _wait_for(lambda: sum(c["done"] for c in beats.clusters()) == 16_000, 10)
        assert all(c["done"] > 0 for c in beats.clusters())  # both clusters took part
    finally:
        for proc in consumers:
            proc.send_signal(signal.SIGINT)
        for proc in consumers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)


@pytest.mark.filterwarnings("ignore:A worker was restarted")  # pytest resets our filter
def test_max_rss_replaces_workers_that_grew_too_large(store_dir):
    """Like Django Q's max_rss: a worker over the limit is replaced between two tasks."""
    with Cluster(workers=1, max_rss=200_000) as cluster:  # 200 MB
        reports = [result(async_task(fx.grow_and_report_pid, 80), wait=WAIT) for _ in range(6)]
        pids = [pid for pid, _ in reports]
        assert len(set(pids)) >= 2  # the first worker went over 200 MB and was replaced
        assert all(rss < 200_000 + 90_000 for _, rss in reports)
        assert _wait_for(lambda: cluster.done == 6, 10) and cluster.failed == 0


# -- bad input and a damaged store ---------------------------------------------------------


def test_tampered_foreign_truncated_and_random_packages_never_run(cluster, broker, tmp_path):
    from nbqueue.disk import signing
    from nbqueue.options import TaskOptions
    from nbqueue.packing import make_package as _package
    marker = tmp_path / "ran"

    def package():
        options = TaskOptions.take({"broker": broker}, nbqueue.conf.settings())
        return _package(fx.logged, (str(marker), 0), {}, options)[1]

    good = package()
    tampered = bytearray(package())
    tampered[-5] ^= 0xFF
    foreign = signing.sign(b"another key" * 3, package()[len(signing.MAGIC) + 32:])
    for bad in (bytes(tampered), foreign, package()[:20], os.urandom(200)):
        broker.enqueue(bad)
    broker.enqueue(good)
    assert _wait_for(lambda: get_store(broker.directory).saved.totals() == (1, 4) and not broker.leased(), 30)
    assert marker.read_text().count("start") == 1  # only the signed package ran
    reasons = sorted(r["result"] for r in _all_records(broker) if not r["success"])
    assert len(reasons) == 4 and all(r.startswith("SignatureError: package") for r in reasons)
    assert [r["cause"] for r in _all_records(broker) if not r["success"]] == ["refused"] * 4
    assert any("truncated" in r or "no nbqueue header" in r for r in reasons)
    assert any("does not match" in r for r in reasons)
    assert cluster.running


def _all_records(broker):
    cache = get_store(broker.directory).saved._cache
    values = (cache.get(k) for k in cache.iterkeys() if isinstance(k, str))
    return [v for v in values if isinstance(v, dict) and "success" in v]


def test_corrupt_store_file_is_a_clear_error_at_the_call(tmp_path):
    directory = tmp_path / "corrupt"
    nbqueue.configure(directory=str(directory))
    try:
        nbqueue.get_broker()  # creates the store
        drop(directory)
        with open(directory / "queue" / "cache.db", "r+b") as db:
            db.write(b"this is not a database" * 100)
        with pytest.raises(nbqueue.StoreError, match="cannot open the store"):
            async_task(fx.add, 1)
    finally:
        nbqueue.conf.reset()


def test_full_disk_is_a_clear_error_and_loses_nothing(store_dir):
    """A file size limit stands for a full disk: SQLite's write fails, nbqueue says so at
    the next call and keeps the task until the disk has room again. Arguments large
    enough to be a file of their own (``blobs``) are refused at the call itself."""
    code = f"""
import os, resource, signal, sys, nbqueue
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
nbqueue.configure(directory={store_dir!r})
nbqueue.async_task(len, b"small")
nbqueue.flush()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, hard))
nbqueue.async_task(len, b"x" * (900 << 10))
for call in (nbqueue.flush, lambda: nbqueue.async_task(len, b"more"),
             lambda: nbqueue.async_task(len, b"y" * (4 << 20))):
    try:
        call()
    except nbqueue.StoreError as exc:
        print("StoreError:", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
nbqueue.flush()
print("queued", nbqueue.queue_size())
print("files", os.listdir(os.path.join({store_dir!r}, "blobs")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    errors = [line for line in done.stdout.splitlines() if line.startswith("StoreError")]
    assert len(errors) == 3, done.stdout + done.stderr
    assert all("cannot write to the store" in e and "free space" in e for e in errors)
    assert "kept in memory and written again" in errors[0]
    assert "blobs" in errors[2] and "File too large" in errors[2]
    assert "queued 2" in done.stdout  # the big task was kept and written once there was room
    assert "files []" in done.stdout  # the refused file's draft is gone


def test_locked_store_waits_then_is_a_clear_error(store_dir, tmp_path):
    """Another process holds the queue's write lock: a short hold is waited out (nothing
    lost); one past the lock timeout is a StoreError saying so, and the task is kept."""
    holder = f"""
import sqlite3, sys, time
con = sqlite3.connect({os.path.join(store_dir, "queue", "cache.db")!r}, isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
con.execute("ROLLBACK")
"""
    client = f"""
import nbqueue
from nbqueue.disk import storage
storage.LOCK_TIMEOUT = 1.0
nbqueue.configure(directory={store_dir!r})
nbqueue.get_broker()
print("ready", flush=True)
input()
nbqueue.async_task(len, "abc")
try:
    nbqueue.flush()
except nbqueue.StoreError as exc:
    print("StoreError:", exc, flush=True)
input()  # the lock is gone
nbqueue.flush()
print("queued", nbqueue.queue_size(), flush=True)
"""
    for hold, expect_error in ((0.5, False), (4.0, True)):  # 4 s outlasts two 1 s waits
        nbqueue.get_broker().purge()
        proc = subprocess.Popen([sys.executable, "-c", client], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            lock = subprocess.Popen([sys.executable, "-c", holder, str(hold)],
                                    stdout=subprocess.PIPE, text=True)
            assert lock.stdout.readline().strip() == "locked"
            proc.stdin.write("\n")
            proc.stdin.flush()
            lock.wait(timeout=30)
            out, _ = proc.communicate("\n", timeout=30)
        finally:
            for p in (proc, locals().get("lock")):
                if p is not None and p.poll() is None:
                    p.kill()
        errors = [line for line in out.splitlines() if line.startswith("StoreError")]
        if expect_error:
            assert len(errors) == 1 and "stayed locked by another process for over 1 s" in errors[0]
        else:
            assert errors == []
        assert "queued 1" in out  # waited out, or kept and written once the lock was gone


@pytest.mark.parametrize("stuck", [fx.block_on_pipe, fx.ignore_alarm_then_sleep],
                         ids=["blocking-syscall", "ignores-the-signal-like-C-code"])
@pytest.mark.alone  # bounds a time from above
def test_timeout_stops_a_stuck_task_within_grace(cluster, stuck):
    args = () if stuck is fx.block_on_pipe else (60,)
    started = time.monotonic()
    task = fetch(async_task(stuck, *args, timeout=1, ack_failure=True), wait=WAIT)
    assert not task.success and "timed out after 1 s" in task.result
    assert task.cause is nbqueue.Cause.TIMEOUT
    assert time.monotonic() - started < 1 + 1 + 3  # timeout + kill grace + slack for 2 cores
    assert [result(async_task(fx.add, i), wait=WAIT) for i in range(5)] == list(range(5))


# -- the notebook's everyday life, without a kernel (tests/test_kernel.py drives real ones) --

@pytest.mark.parametrize("call", [("exits", 3), ("exits", None), ("raises", "SystemExit"),
                                  ("raises", "KeyboardInterrupt"),
                                  ("raises", "GeneratorExit")])
def test_a_task_raising_any_base_exception_is_its_failure(cluster, call):
    name, arg = call
    task = fetch(async_task(getattr(fx, name), arg), wait=WAIT)
    assert task is not None and not task.success and task.attempt_count == 1
    expected = {"exits": "SystemExit", "raises": arg}[name]
    assert task.result.startswith(expected), task.result
    assert result(async_task(fx.add, 1, 1), wait=WAIT) == 2  # the cluster goes on
    assert cluster.running and cluster.error is None


def test_sigint_to_the_workers_does_not_interrupt_their_tasks(cluster, tmp_path):
    """Jupyter's Interrupt signals the kernel's process group, workers included."""
    log = str(tmp_path / "log")
    ids = [async_task(fx.logged, log, i, 0.3, group="sigint") for i in range(12)]
    deadline = time.monotonic() + 1.5  # from their spawn on: no window where Ctrl-C kills
    while time.monotonic() < deadline:
        for pid in _loky_workers(os.getpid()):
            os.kill(pid, signal.SIGINT)
        time.sleep(0.002)
    tasks = fetch_group("sigint", count=12, wait=WAIT)
    assert len(tasks) == 12 and all(t.success and t.attempt_count == 1 for t in tasks)
    assert sorted(result(i) for i in ids) == list(range(12))
    assert all(len(spans) == 1 for spans in _runs(log).values())


def test_an_innocent_task_beside_worker_killers_is_never_charged(store_dir, tmp_path):
    """loky kills every worker of a broken pool; only the task whose worker died first
    is charged an attempt, the others go back uncounted once their workers are dead."""
    log = str(tmp_path / "log")
    with Cluster(workers=2, max_attempts=2) as running:
        innocent = async_task(fx.logged, log, 0, 1.5)
        assert _wait_for(lambda: os.path.exists(log), 30)
        killers = [async_task(fx.die, max_attempts=1) for _ in range(2)]
        task = fetch(innocent, wait=WAIT)
        assert task.success and task.attempt_count == 1, task.result
        for killer in killers:
            dead = fetch(killer, wait=WAIT)
            assert not dead.success and "worker process running this task died" in dead.result
            assert dead.cause is nbqueue.Cause.WORKER_LOST
        assert running.running
    spans = sorted(_runs(log)[0], key=lambda span: span[0])
    assert spans[-1][1] is not None  # its last run finished
    assert all(stop is None for _, stop in spans[:-1])  # earlier ones were cut by the break


def test_a_dead_cluster_thread_stops_the_cluster_visibly(store_dir, caplog):
    """No thread dies silently: the supervisor stops the cluster and says why."""
    running = Cluster(workers=1).start()
    try:
        assert result(async_task(fx.add, 1), wait=WAIT) == 1

        def broken() -> None:
            raise SystemExit("injected fault")

        running.monitor.enforce_timeouts = broken  # the monitor calls it every 100 ms
        assert _wait_for(lambda: not running.running, 10)
        assert _wait_for(lambda: running._stopped.is_set(), 20)
        assert "monitor" in running.error and "SystemExit: injected fault" in running.error
        assert any(r.levelname == "CRITICAL" and "injected fault" in r.getMessage()
                   for r in caplog.records)
        assert "injected fault" in running.info()["error"]
        stopped = heartbeats(nbqueue.get_broker().directory).stopped_clusters()
        assert stopped and "injected fault" in stopped[0]["error"]
        info = subprocess.run([sys.executable, "-m", "nbqueue", "info", "--directory",
                               store_dir], capture_output=True, text=True, timeout=60)
        assert f"stopped   {running.id[:8]}" in info.stdout, info.stdout
        assert "SystemExit: injected fault" in info.stdout
        assert heartbeats(nbqueue.get_broker().directory).clusters() == []
        queued = async_task(fx.add, 2)  # waits for the next cluster, nothing lost
    finally:
        running.stop(wait=1)
    with Cluster(workers=1):
        assert result(queued, wait=WAIT) == 2


@pytest.mark.parametrize("part, step", [("feeder", "_feed"), ("writer", "_handle"),
                                        ("hooks", "_call")])
def test_every_part_of_the_cluster_is_under_the_one_supervisor(store_dir, caplog, part, step):
    """What a step of any part does not expect stops the cluster the same way: the part
    named in ``error`` and ``info()``, logged as CRITICAL; the task in flight is handed
    back (or its outcome stored) and the next cluster finishes the work."""
    running = Cluster(workers=1).start()
    try:
        assert result(async_task(fx.add, 1, hook=fx.hook_record), wait=WAIT) == 1

        def broken(*args: object) -> None:
            raise SystemExit("injected fault")

        obj = {"feeder": running.feeder, "writer": running.writer,
               "hooks": running.hook_runner}[part]
        setattr(obj, step, broken)
        queued = async_task(fx.add, 2, hook=fx.hook_record)  # the part fails by this one
        assert _wait_for(lambda: running._stopped.is_set(), 30)
        assert running.error == f"its {part} thread failed: SystemExit: injected fault"
        assert running.info()["error"] == running.error
        assert [r.levelname for r in caplog.records if "injected fault" in r.getMessage()] \
            == ["CRITICAL"]
        assert not any(t.is_alive() for t in running._threads)
    finally:
        running.stop(wait=1)
    with Cluster(workers=1):
        assert result(queued, wait=WAIT) == 2
    assert get_store(nbqueue.get_broker().directory).saved.totals() == (2, 0)


def test_a_failing_chunk_callback_stops_the_cluster_visibly(store_dir, caplog):
    """A chunk's callback runs in the executor's thread, which would only log what it
    raised, leaving the chunk's tasks in flight for ever: it goes to the same policy."""
    running = Cluster(workers=1).start()
    try:
        assert result(async_task(fx.add, 1), wait=WAIT) == 1

        def broken(reason: str) -> None:
            raise OSError("injected fault")

        running.deaths.note = broken  # called when a worker's death breaks the pool
        dead = async_task(fx.die, max_attempts=1)
        assert _wait_for(lambda: running._stopped.is_set(), 30)
        assert running.error == "its chunk callback failed: OSError: injected fault"
        assert [r.levelname for r in caplog.records if "injected fault" in r.getMessage()] \
            == ["CRITICAL"]
    finally:
        running.stop(wait=1)
    assert nbqueue.queue_size() == 1  # handed back uncounted: its worker's death unproven
    with Cluster(workers=1):
        task = fetch(dead, wait=WAIT)
        assert not task.success and "worker process running this task died" in task.result
        assert task.attempt_count == 1


@pytest.mark.alone  # bounds a time from above
def test_a_script_that_ends_without_stop_hands_its_tasks_back_at_once(store_dir, tmp_path):
    log = str(tmp_path / "log")
    code = ("import nbqueue, time\n"
            "from tests import tasks_fixtures as fx\n"
            f"nbqueue.configure(directory={store_dir!r})\n"
            "nbqueue.Cluster(workers=2).start()\n"
            f"ids = [nbqueue.async_task(fx.logged, {log!r}, i, 2.0, group='ending')"
            " for i in range(6)]\n"
            "nbqueue.flush()\n"
            "time.sleep(1.0)\n")
    began = time.monotonic()
    ended = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=60,
                           capture_output=True, text=True)
    took = time.monotonic() - began
    assert ended.returncode == 0, ended.stderr
    assert "hands 6 task(s) in flight back to the queue" in ended.stderr
    assert took < 8, took  # no wait for the running tasks (2 s each, 3 rounds)
    broker = nbqueue.get_broker()
    assert broker.leased() == 0 and broker.size() == 6
    with fx.logged_without_sleep(), Cluster(workers=2):  # at once: this test runs alone
        tasks = fetch_group("ending", count=6, wait=WAIT)
    assert len(tasks) == 6 and all(t.success and t.attempt_count == 1 for t in tasks)


# -- integrity ---------------------------------------------------------------------------

def test_a_stalled_host_stores_nothing_for_leases_it_lost(store_dir, tmp_path):
    """SIGSTOP a cluster host past `retry`: another cluster runs its tasks; when the
    host wakes, its outcomes for leases it lost are fenced off: counts = distinct tasks."""
    log = str(tmp_path / "log")
    host = subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--workers", "2", "--retry", "2", "-v"],
                            stderr=subprocess.PIPE, text=True)
    try:
        ids = [async_task(fx.logged, log, i, 0.5, group="stall") for i in range(16)]
        assert _wait_for(lambda: os.path.exists(log), 60)
        os.kill(host.pid, signal.SIGSTOP)
        stopped_at = time.time()
        with Cluster(workers=2, retry=2):
            tasks = fetch_group("stall", count=16, wait=WAIT)
            assert len(tasks) == 16
            os.kill(host.pid, signal.SIGCONT)
            time.sleep(4)  # the woken host finishes what it had, and must store none of it
        assert count_group("stall") == 16 and count_group("stall", failures=True) == 0
        tasks = fetch_group("stall")
        assert len(tasks) == 16 and sorted(result(i) for i in ids) == list(range(16))
        assert get_store(nbqueue.get_broker().directory).saved.totals() == (16, 0)
    finally:
        os.kill(host.pid, signal.SIGCONT)
        host.send_signal(signal.SIGINT)
        try:
            _, err = host.communicate(timeout=30)
        finally:
            _kill_tree(host.pid)
    assert time.time() - stopped_at > 2
    assert "lost the leases" in err or "dropped" in err, err[-2000:]
    assert "in flight went back" not in err, err[-2000:]  # dropped outcomes left its table


def test_the_store_deleted_under_a_running_cluster_stops_it(store_dir):
    import shutil
    running = Cluster(workers=1).start()
    try:
        assert result(async_task(fx.add, 1), wait=WAIT) == 1
        shutil.rmtree(store_dir)
        assert _wait_for(lambda: running.stopped, 10)
        assert "was deleted or replaced" in running.error
    finally:
        running.stop(wait=1)
    with Cluster(workers=1):  # a new cluster serves the new store there
        assert result(async_task(fx.add, 2), wait=WAIT) == 2
    assert os.path.isfile(os.path.join(store_dir, "key"))


def test_a_store_swapped_under_a_running_cluster_stops_it_and_gets_no_file(intruder):
    """Another user renames the store of a running cluster and puts a directory of its own
    at its path, while tasks with large arguments and large results run. The cluster
    stores nothing more (no outcome, no value file moved or linked there) and stops,
    saying why; with the real store back, every task has exactly one outcome."""
    from nbqueue import conf
    from tests.intruder import Intruder

    store = os.path.join(intruder.parent, ".nbqueue")
    conf.reset()
    nbqueue.configure(directory=store)
    count = 12
    moved = None
    try:
        running = Cluster(workers=2, retry=2, directory=store).start()
        try:
            ids = [async_task(fx.nap, 0.3, bytes([i]) * (2 << 20), group="swap")
                   for i in range(count)]
            nbqueue.flush()
            assert _wait_for(lambda: count_group("swap") >= 2, 60)  # and others running
            moved = intruder.swap(store)
            assert _wait_for(lambda: running.stopped, 15)
            assert "replaced by a directory owned by" in running.error, running.error
            assert "StoreSwapped" in running.error
        finally:
            running.stop(wait=1)
        assert Intruder.files(store) == []
        Intruder.give_back(store, moved)
        moved = None
        with Cluster(workers=2, retry=2, directory=store):
            assert len(fetch_group("swap", count=count, wait=WAIT)) == count
        assert count_group("swap") == count and count_group("swap", failures=True) == 0
        assert [result(i) for i in ids] == [bytes([i]) * (2 << 20) for i in range(count)]
        assert get_store(store).saved.totals() == (count, 0)
    finally:
        if moved is not None:
            Intruder.give_back(store, moved)
        conf.reset()
        drop(store)


class _Evil:
    """Unpickling it creates a file: proof that a row was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _foreign(store_dir: str, part: str):
    """The store's files opened with plain diskcache, as someone without the key would."""
    import diskcache
    return diskcache.Cache(os.path.join(store_dir, part))


def test_rows_written_without_the_key_are_never_unpickled(cluster, store_dir, tmp_path):
    """Every value read from the store is checked before it is unpickled: outcomes,
    cached outcomes, group pages, async_iter manifests, heartbeats and queue rows."""
    import pickle
    marker = tmp_path / "ran"
    evil = _Evil(str(marker))
    good = async_task(fx.add, 1, 1, group="tampered")
    assert result(good, wait=WAIT) == 2
    iter_id = async_iter(fx.add, [1, 2])
    assert result(iter_id, wait=WAIT) == [1, 2]
    results, cache, state = (_foreign(store_dir, p) for p in ("results", "cache", "state"))
    results.set(good, evil)  # a pickled value (diskcache's own format)
    results.set("g:0:tampered", pickle.dumps(evil))  # raw bytes that are a pickle
    results.set("iter:" + iter_id, evil)
    cache.set(good, evil)
    state.set("cluster:intruder", evil)
    for call in (lambda: result(good), lambda: fetch(good),
                 lambda: result(good, cached=True), lambda: result_group("tampered"),
                 lambda: result(iter_id)):
        with pytest.raises(nbqueue.SignatureError, match="not written by nbqueue|signature"):
            call()
    # a heartbeat row is skipped: enqueueing (which reads them) goes on
    assert result(async_task(fx.add, 2, 2), wait=WAIT) == 4
    assert [c["id"] for c in heartbeats(nbqueue.get_broker().directory).clusters()] == [cluster.id]
    # a queue row: taken out of the queue, recorded as a Failure; the queue goes on
    queue = _foreign(store_dir, "queue")
    queue.push([evil])
    queue.push(pickle.dumps(evil))
    queue.incr("pending", 2)
    after = async_task(fx.add, 3, 3)
    assert result(after, wait=WAIT) == 6
    assert _wait_for(lambda: cluster.failed >= 2, 10)
    assert get_store(nbqueue.get_broker().directory).saved.totals()[1] >= 2  # both stored as Failures
    assert not marker.exists()  # nothing was unpickled
    assert cluster.running


def test_a_killed_writer_of_large_values_leaves_no_partial_file(store_dir):
    """Values over 32 KiB are files, written whole or not at all: SIGKILL a process
    while it writes 50 MB values, then every file a row refers to is there, and every
    file in the store is a whole, signed value. One file may be left that no row names:
    diskcache removes the file of a value it replaced after its commit, and a kill
    between the two leaves it (whole, unread, space only)."""
    import sqlite3
    code = ("import nbqueue, itertools\n"
            "from nbqueue.disk.directory import get_store\n"
            f"part = get_store({store_dir!r}).saved\n"
            "print('writing', flush=True)\n"
            "for i in itertools.count():\n"
            "    part._cache.set(f'big{i % 3}', bytes(50_000_000))\n"
            "    if i == 0:\n"
            "        print('wrote one', flush=True)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        assert writer.stdout.readline().strip() == "wrote one"  # however loaded the machine
        time.sleep(0.7)  # then killed in the middle of another write, most likely
    finally:
        _kill_tree(writer.pid)
        writer.wait(timeout=10)
    results = os.path.join(store_dir, "results")
    with sqlite3.connect(os.path.join(results, "cache.db")) as con:
        named = {row[0] for row in con.execute(
            "SELECT filename FROM Cache WHERE filename IS NOT NULL")}
    def drafts():  # the folder is removed whenever it is empty
        folder = os.path.join(results, "drafts")
        return os.listdir(folder) if os.path.isdir(folder) else []
    assert len(drafts()) <= 1  # the one it was writing, if any
    part = get_store(nbqueue.get_broker().directory).saved  # opening the store removes a dead writer's
    assert drafts() == []
    on_disk = {os.path.relpath(os.path.join(root, name), results)
               for root, _, files in os.walk(results) for name in files
               if not name.startswith("cache.db")}
    assert named and named <= on_disk
    orphans = on_disk - named
    assert len(orphans) <= 1, orphans
    from nbqueue.disk.signing import context, load_key, verify
    from nbqueue.disk.storage import FILE_ROLE
    key = load_key(nbqueue.get_broker().directory)
    for name in on_disk:  # none is partial: each checks out against the store's key
        with open(os.path.join(results, name), "rb") as src:
            verify(key, src.read(), context(FILE_ROLE, name))
    for name in orphans:  # what opening the store after the kill should tidy, some day
        os.unlink(os.path.join(results, name))
    # diskcache's own check finds no stray file (an empty folder, where a writer was
    # killed between making it and renaming its draft in, is harmless)
    import diskcache
    stray = [w for w in part._cache.check() if issubclass(w.category,
                                                          diskcache.core.UnknownFileWarning)]
    assert stray == [], [str(w.message) for w in stray]
    for key in ("big0", "big1", "big2"):
        value = part._cache.get(key)
        assert value is None or value == bytes(50_000_000)


def test_workers_killed_while_they_send_large_results_never_wedge_the_cluster(store_dir):
    """SIGKILL workers again and again while tasks return 20 MB each: a worker killed
    halfway through sending its result must not leave the cluster waiting for the rest
    (loky's reader would block for good, the other workers holding the pipe open)."""
    running = Cluster(workers=2, max_attempts=0).start()
    try:
        ids = [async_task(fx.sized_result, 20, i, group="large") for i in range(12)]
        deadline = time.monotonic() + 4
        kills = 0
        while time.monotonic() < deadline:
            for pid in _loky_workers(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.05 + 0.1 * (kills % 3))
        tasks = fetch_group("large", count=12, wait=WAIT)
        assert tasks is not None and len(tasks) == 12 and all(t.success for t in tasks)
        assert all(result(i) == bytes([n]) * (20 * 1024 * 1024) for n, i in enumerate(ids))
        assert kills > 5
    finally:
        began = time.monotonic()
        running.stop(wait=2)
        assert time.monotonic() - began < 2 + 10
    assert not os.listdir(os.path.join(store_dir, "spill"))


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a disk that fills up for real (mounting needs root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); "
                    "test_full_disk_is_a_clear_error_and_loses_nothing covers a full disk "
                    "with a file size limit")
    try:
        yield mount
    finally:
        try:  # close what this process holds on it (a test that failed left it open)
            drop(mount / "store")  # before the unmount, or its outbox writes at exit
        finally:
            nbqueue.conf.reset()
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_up_refuses_tasks_at_the_call_and_drops_none(small_disk):
    """20 KB tasks until a real disk is full: each is either taken (and written, once
    there is room) or refused at the call with StoreError; readers go on working."""
    directory = str(small_disk / "store")
    nbqueue.configure(directory=directory)
    try:
        assert count_group("nothing") == 0  # the store in use, its results part too
        ballast = small_disk / "ballast"
        ballast.write_bytes(bytes(10 << 20))
        taken, refused = [], []
        for i in range(2000):
            try:
                taken.append(async_task(fx.add, bytes(20_000), b""))
            except nbqueue.StoreError as exc:
                refused.append(str(exc))
        try:
            nbqueue.flush()
        except nbqueue.StoreError:
            pass
        assert taken and refused, (len(taken), len(refused))
        assert all("full" in why or "free space" in why for why in refused), refused[:1]
        assert count_group("nothing") == 0 and result(taken[0]) is None  # reads still work
        ballast.unlink()  # room again: what was taken is written, nothing dropped
        nbqueue.flush()
        assert nbqueue.queue_size() == len(taken)
    finally:
        drop(directory)


# -- hosts killed while tasks wait behind a running one ----------------------------------

def _starts(path: str) -> dict[int, int]:
    """Per task number, how many runs of it began (a `fx.logged` file)."""
    runs = _runs(path) if os.path.exists(path) else {}
    return {task_no: len(spans) for task_no, spans in runs.items()}


def _host(store_dir: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--workers", "1", *options],
                            cwd=os.getcwd(), stderr=subprocess.DEVNULL)


def _folders(cluster_id: str) -> list[str]:
    """The folders in the temp directory of the cluster ``cluster_id``'s host."""
    import tempfile
    top = tempfile.gettempdir()
    return [os.path.join(top, name) for name in os.listdir(top)
            if name.startswith(f"nbqueue-{cluster_id[:8]}-")]


def _host_id(broker, pid: int) -> str:
    found = [c["id"] for c in heartbeats(broker.directory).clusters() if c["pid"] == pid]
    return found[0] if found else ""


def test_three_host_kills_charge_only_the_task_that_was_running(store_dir, tmp_path):
    """A host's one worker runs a long task with three more leased behind it, waiting in
    the worker's queue; SIGKILL the host, a new host reaps its expired leases, three
    times over. Only the long task began each time: it is charged each time and given up
    after max_attempts; the three others never began, so they are handed back uncounted
    and run once, as first attempts. The dead hosts' folders are swept once used."""
    log = str(tmp_path / "runs.log")
    broker = nbqueue.get_broker()
    ids = [async_task(fx.logged, log, i, 60.0 if i == 0 else 0.0, group="crashes")
           for i in range(4)]
    nbqueue.flush()
    folders: list[str] = []
    for kill in range(1, 4):
        host = _host(store_dir, "--retry", "1.5", "--max-attempts", "3")
        try:
            # its worker began task 0 (for the kill-th time), the three others leased
            assert _wait_for(lambda: _starts(log).get(0) == kill and broker.leased() == 4,
                             60), (_starts(log), broker.leased())
            assert set(_starts(log)) == {0} and broker.size() == 0
            assert _wait_for(lambda: _host_id(broker, host.pid), 10)
            folders += _folders(_host_id(broker, host.pid))
            os.kill(host.pid, signal.SIGKILL)
            host.wait(timeout=10)
        finally:
            _kill_tree(host.pid)
    assert len(folders) == 3
    with Cluster(workers=1, retry=1.5, max_attempts=3):
        tasks = fetch_group("crashes", count=4, wait=WAIT)
        swept = _wait_for(lambda: not any(os.path.exists(f) for f in folders), 10)
    assert len(tasks) == 4 and broker.leased() == 0 and broker.size() == 0
    by_id = {t.id: t for t in (fetch(i) for i in ids)}
    long_one = by_id[ids[0]]
    assert not long_one.success and long_one.attempt_count == 3
    assert "WorkerLost: gave up after 3 attempts" in long_one.result
    assert long_one.cause is nbqueue.Cause.WORKER_LOST
    for i in ids[1:]:
        assert by_id[i].success and by_id[i].attempt_count == 1, (by_id[i].attempt_count,
                                                                  by_id[i].result)
    assert _starts(log) == {0: 3, 1: 1, 2: 1, 3: 1}
    assert count_group("crashes") == 4 and count_group("crashes", failures=True) == 1
    assert swept, [f for f in folders if os.path.exists(f)]


def test_a_task_that_kills_its_host_each_time_is_given_up_after_max_attempts(store_dir,
                                                                            tmp_path):
    """The task ends before its host is dead, and its worker may begin the next ones
    before it exits: every task that began is charged (the others, allowed more
    attempts, show it), those that did not are not, and the killer is given up after
    max_attempts (2) like any task that began each time."""
    log = str(tmp_path / "runs.log")
    broker = nbqueue.get_broker()
    killer = async_task(fx.kills_its_host, log, 0, group="killer")
    ids = [async_task(fx.logged, log, i, 0.5, group="killer", max_attempts=5)
           for i in range(1, 4)]
    nbqueue.flush()
    for kill in range(1, 3):
        host = _host(store_dir, "--retry", "1.5", "--max-attempts", "2")
        try:
            assert host.wait(timeout=60) == -signal.SIGKILL  # by its task
            assert _starts(log)[0] == kill
        finally:
            _kill_tree(host.pid)
    with Cluster(workers=1, retry=1.5, max_attempts=2):
        tasks = fetch_group("killer", count=4, wait=WAIT)
    assert len(tasks) == 4 and broker.leased() == 0 and broker.size() == 0
    dead = fetch(killer)
    assert not dead.success and dead.attempt_count == 2, (dead.attempt_count, dead.result)
    assert "WorkerLost: gave up after 2 attempts" in dead.result
    assert dead.cause is nbqueue.Cause.WORKER_LOST
    starts = _starts(log)
    assert starts[0] == 2
    for number, task_id in enumerate(ids, 1):
        task = fetch(task_id)
        assert task.success and task.attempt_count == starts[number], (number, starts)


def test_a_cluster_start_sweeps_the_folders_of_dead_hosts_only(store_dir, tmp_path):
    """SIGKILL leaves a host's folder behind: the next start removes it, and that of a
    dead host whose store is gone; never a live host's, nor another user's."""
    import shutil
    broker = nbqueue.get_broker()
    other_store = str(tmp_path / "other")
    hosts = {"live": _host(store_dir), "dead": _host(store_dir),
             "gone": _host(other_store)}
    folders: dict[str, str] = {}
    foreign = ""
    try:
        for name in ("live", "dead"):
            assert _wait_for(lambda: _host_id(broker, hosts[name].pid), 60)
            found = _folders(_host_id(broker, hosts[name].pid))
            assert len(found) == 1
            folders[name] = found[0]
        other = nbqueue.get_broker(other_store)
        assert _wait_for(lambda: heartbeats(other.directory).clusters(), 60)
        folders["gone"] = _folders(heartbeats(other.directory).clusters()[0]["id"])[0]
        # another user's folder, just like the dead host's
        import tempfile
        foreign = tempfile.mkdtemp(prefix="nbqueue-0badf00d-")
        shutil.copy(os.path.join(folders["dead"], "host"), foreign)
        for path in (foreign, os.path.join(foreign, "host")):
            os.chown(path, 54321, 54321)
        for name in ("dead", "gone"):
            os.kill(hosts[name].pid, signal.SIGKILL)
            hosts[name].wait(timeout=10)
        drop(other_store)
        shutil.rmtree(other_store)
        # the dead hosts' workers exit on their own within HOST_WATCH
        assert _wait_for(lambda: not any(
            _alive(int(n)) for name in ("dead", "gone")
            for n in os.listdir(folders[name]) if n.isdigit()), 10)
        assert all(os.path.isdir(path) for path in folders.values())
        with Cluster(workers=1):
            assert not os.path.exists(folders["dead"])
            assert not os.path.exists(folders["gone"])
            assert os.path.isdir(folders["live"]) and hosts["live"].poll() is None
            assert os.path.isdir(foreign)
            assert result(async_task(fx.add, 2, 3), wait=WAIT) == 5
    finally:
        for host in hosts.values():
            _kill_tree(host.pid)
        if foreign:
            shutil.rmtree(foreign, ignore_errors=True)
    assert _wait_for(lambda: hosts["live"].poll() is not None and (
        not os.path.exists(folders["live"]) or not any(
            _alive(int(n)) for n in os.listdir(folders["live"]) if n.isdigit())), 10)
    # it may have leased the task above and died before its ack was written: that lease,
    # reaped here as if it had expired, is all that would keep its folder for the reaper
    broker.reap(now=time.time() + 3600)
    with Cluster(workers=1):  # the live host is dead now: swept in turn
        assert not os.path.exists(folders["live"])


def _fill(path) -> None:
    """Take every byte left on the disk of ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    try:
        while True:
            os.write(fd, bytes(512))
    except OSError:
        pass
    finally:
        os.close(fd)


def _nbqueue_info(directory: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbqueue", "info", "--directory", directory],
                          capture_output=True, text=True, timeout=60)


def test_a_full_disk_holds_finished_work_until_space_returns(small_disk, caplog):
    """The disk fills up while a cluster runs tasks with small and 1 MiB results: no task
    becomes a failure, the cluster holds the outcomes and says why it waits (its info,
    ``nbqueue info`` in another process), a reader started meanwhile opens the store,
    and once space is given back every task has exactly one success."""
    directory = str(small_disk / "store")
    nbqueue.configure(directory=directory)
    running = Cluster(workers=2, directory=directory).start()
    try:
        count = 45
        ids, cached = [], []  # cached: in the other part of the store, in the same batches
        for i in range(count):
            ids.append(async_task(fx.sized_result, 1, i, group="full") if i % 3 == 0
                       else async_task(fx.nap, 0.2, i, group="full"))
            if i % 5 == 4:
                cached.append(async_task(fx.nap, 0.1, -i, cached=True))
        assert result(ids[0], wait=WAIT) == bytes(1 << 20)
        filler = small_disk / "filler"
        _fill(filler)
        waiting = wait_for(lambda: running.info().get("waiting"), 30, "the cluster says it waits")
        assert "full" in waiting and "free space" in waiting, waiting
        assert "running, waiting" in repr(running)
        said = wait_for(lambda: (lambda done: done.returncode == 0 and re.search(
            r"^ +waiting: (.*)$", done.stdout, re.M))(_nbqueue_info(directory)), 30,
            "nbqueue info saying why the cluster waits")  # under the cluster's line
        assert "full" in said[1], said[0]
        reader = subprocess.run(
            [sys.executable, "-c", f"import nbqueue; nbqueue.configure(directory={directory!r});"
             f" print(len(nbqueue.result({ids[0]!r})), nbqueue.count_group('full'))"],
            capture_output=True, text=True, timeout=60)
        assert reader.returncode == 0 and reader.stdout.startswith("1048576 "), reader.stderr
        assert running.info()["failed"] == 0
        filler.unlink()  # room again
        tasks = fetch_group("full", count=count, wait=WAIT)
        assert tasks is not None and len(tasks) == count
        assert [t.success for t in tasks] == [True] * count, [
            str(t.result)[:200] for t in tasks if not t.success]
        assert {t.id for t in tasks} == set(ids) and count_group("full") == count
        assert all(t.attempt_count == 1 for t in tasks)
        for i, task_id in enumerate(ids):
            assert result(task_id) == (bytes([i]) * (1 << 20) if i % 3 == 0 else i)
        wait_for(lambda: running.info()["waiting"] is None, 10, "the trouble cleared")
        assert running.running and running.error is None and running.info()["failed"] == 0
        assert count_group("full", failures=True) == 0
        assert [result(i, cached=True, wait=WAIT) for i in cached] == [
            -i for i in range(count) if i % 5 == 4]
        assert get_store(directory).saved.totals() == (count, 0)  # each counted once
        logged = caplog.text
        assert "the store refused the outcomes" in logged and "takes outcomes again" in logged
        assert "came inline" in logged  # a 1 MiB result its worker could not write to a file
    finally:
        running.stop(wait=5)
        drop(directory)


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_a_folder_in_place_of_an_argument_file_fails_that_task_only(store_dir):
    """A folder where a task's argument file is (``os.link`` of it fails with
    PermissionError): that task fails, its failure is stored, and the other tasks and
    the ones after them complete; nothing stalls."""
    big = async_task(fx.length, bytes(2 << 20), group="linked")
    nbqueue.flush()
    (path,) = [entry.path for entry in os.scandir(os.path.join(store_dir, "blobs"))]
    os.unlink(path)
    os.mkdir(path)
    ids = [async_task(fx.add, i, 1, group="linked") for i in range(20)]
    running = Cluster(workers=2).start()
    try:
        tasks = fetch_group("linked", count=21, wait=WAIT)
        assert tasks is not None and len(tasks) == 21
        by_id = {t.id: t for t in tasks}
        assert not by_id[big].success and "is not a regular file but a directory" in str(
            by_id[big].result)  # refused as no file nbqueue wrote, never read
        assert all(by_id[i].success and by_id[i].result == n + 1 for n, i in enumerate(ids))
        later = [async_task(fx.add, i, 2) for i in range(10)]
        assert [result(i, wait=WAIT) for i in later] == [i + 2 for i in range(10)]
        assert running.info()["waiting"] is None and running.error is None
    finally:
        running.stop(wait=5)


def test_an_outcome_the_store_refuses_for_its_own_cause_is_that_tasks_failure(store_dir, caplog):
    """A task with large arguments and a large result whose argument file is replaced by
    a folder while it runs: its record cannot be stored (its arguments cannot be read
    into it). The batch is stored one record at a time: that task becomes its own
    failure, saying why, and the others of the batch are stored as they were."""
    running = Cluster(workers=2).start()
    try:
        big = async_task(fx.nap, 1.5, bytes(2 << 20), group="own")
        wait_for(lambda: running.running_tasks(), 30, "the task running")
        time.sleep(0.3)  # its worker has read its arguments
        (path,) = [entry.path for entry in os.scandir(os.path.join(store_dir, "blobs"))]
        os.unlink(path)
        os.mkdir(path)
        ids = [async_task(fx.nap, 1.0, i, group="own") for i in range(3)]  # in its batch
        tasks = fetch_group("own", count=4, wait=WAIT)
        assert tasks is not None and len(tasks) == 4
        by_id = {t.id: t for t in tasks}
        assert not by_id[big].success
        assert str(by_id[big].result).startswith("StoreError: the outcome of this task could "
                                                 "not be stored: SignatureError: ")
        assert "is not a regular file but a directory" in str(by_id[big].result)
        assert by_id[big].cause is nbqueue.Cause.NOT_STORED
        assert all(by_id[i].success and by_id[i].result == n for n, i in enumerate(ids))
        assert "it is stored as its failure" in caplog.text
        assert nbqueue.retry(big)  # kept for retry: its package is in the failure
        assert running.info()["waiting"] is None
    finally:
        running.stop(wait=5)


def test_outcomes_refused_for_long_go_back_to_the_queue_uncounted(tmp_path, caplog):
    """Only the results part is full (a small tmpfs mounted on it; the queue has room):
    outcomes refused for over ``retry`` seconds go back to the queue, their attempt not
    counted, and run again; once there is room each task has one success, attempt 1."""
    directory = tmp_path / "store"
    results = directory / "results"
    results.mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                           str(results)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")
    nbqueue.configure(directory=str(directory))
    running = None
    try:
        running = Cluster(workers=2, retry=2).start()
        filler = results / "filler"
        _fill(filler)
        logs = [tmp_path / f"runs{i}" for i in range(6)]
        ids = [async_task(fx.log_run, str(path), 0.05, i, group="back")
               for i, path in enumerate(logs)]
        waiting = wait_for(lambda: "went back" in (running.info()["waiting"] or "") and
                           running.info()["waiting"], 30, "a hand back")
        assert "full" in waiting and "went back to the queue to run again" in waiting, waiting
        assert "went back to the queue, their attempt not counted" in caplog.text
        assert count_group("back") == 0 and running.info()["failed"] == 0
        filler.unlink()
        tasks = fetch_group("back", count=len(ids), wait=WAIT)
        assert tasks is not None and {t.id for t in tasks} == set(ids)
        assert all(t.success and t.attempt_count == 1 for t in tasks), [
            (t.attempt_count, str(t.result)[:100]) for t in tasks]
        assert [result(i) for i in ids] == list(range(len(ids)))
        runs = [path.read_text().count("start") for path in logs]
        assert max(runs) >= 2, runs  # handed back and run again, not charged
    finally:
        if running is not None:
            running.stop(wait=5)
        drop(str(directory))
        nbqueue.conf.reset()
        subprocess.run(["umount", "-l", str(results)], capture_output=True)
