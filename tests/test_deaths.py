"""nbqueue.cluster.deaths: which dead worker ran which task, read from real slots.

Each "worker" is a real process that takes a ``nbqueue.disk.hosts.Slot`` in a temp slot
directory, as a loky worker does, marks a task and waits; the tests SIGKILL it (or let
it live) and check what ``Deaths`` charges, dooms, kills and cleans up.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loky.backend.utils import _format_exitcodes
from loky.process_executor import TerminatedWorkerError

from nbqueue.cluster.deaths import Deaths, kill
from nbqueue.disk.hosts import read_slot

from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
# argv: slot directory, task id ("" for none), "idle" to clear the slot after the task
WORKER = r"""
import os, select, sys, time
from nbqueue.disk.hosts import Slot
slot = Slot(os.path.join(sys.argv[1], str(os.getpid())))
if sys.argv[2]:
    slot.mark(sys.argv[2], time.time(), 0.0)
    if sys.argv[3] == "idle":
        slot.clear()
print("ready", flush=True)
select.select([sys.stdin], [], [], 30)  # until the test writes a line; 30 s at most
"""


def _loky_reason(*exit_codes: int) -> str:
    """The text of the error loky fails every chunk with when a worker dies, built the
    way loky builds it (``process_executor``: "The exit codes of the workers are ...")."""
    return str(TerminatedWorkerError(
        "A worker process managed by the executor was unexpectedly terminated. This could "
        "be caused by a segmentation fault while calling the function or by an excessive "
        "memory usage causing the Operating System to kill the worker.\n"
        f"\nThe exit codes of the workers are {_format_exitcodes(list(exit_codes))}\n"
        "Detailed tracebacks of the workers should have been printed to stderr in the "
        "executor process if faulthandler was not disabled."))


@pytest.fixture
def spawn(slot_dir):
    """Start worker-like processes; each is SIGKILLed (by pid) and reaped afterwards."""
    procs: list[subprocess.Popen] = []

    def start(task_id: str = "", idle: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, slot_dir, task_id,
                                 "idle" if idle else "busy"], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        with selectors.DefaultSelector() as selector:  # select() refuses fds past 1023
            selector.register(proc.stdout, selectors.EVENT_READ)
            ready = selector.select(15)
        assert ready and proc.stdout.readline().strip() == "ready", "worker did not start"
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            kill(proc.pid)
        proc.wait(5)
        proc.stdin.close()
        proc.stdout.close()


def _slot(slot_dir: str, proc: subprocess.Popen) -> str:
    return os.path.join(slot_dir, str(proc.pid))


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as src:
        return src.read().rsplit(")", 1)[1].split()[0]


def test_a_dead_workers_task_is_charged_once_with_the_exit_codes(slot_dir, spawn):
    proc = spawn("task-1")
    slot = _slot(slot_dir, proc)
    assert read_slot(slot)[0] == "task-1"
    Path(slot_dir, "not-a-slot").write_text("left alone")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL  # reaped, as loky reaps its workers

    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL))
    assert deaths.why("task-1") == ("the worker process running this task died "
                                    "(The exit codes of the workers are {SIGKILL(-9)})")
    assert deaths.why("task-1") is None  # once
    assert deaths.why("task-other") is None
    assert not os.path.exists(slot)  # the dead worker's slot is gone
    assert os.listdir(slot_dir) == ["not-a-slot"]


@pytest.mark.alone  # bounds a time from above
def test_a_killed_worker_not_reaped_yet_counts_as_dead(slot_dir, spawn):
    """loky may note the failure before its manager reaped the worker: a zombie is dead."""
    proc = spawn("task-z")
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: _state(proc.pid) == "Z", 10, "the killed worker to be a zombie")

    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL))
    assert "SIGKILL(-9)" in deaths.why("task-z")
    assert not os.path.exists(_slot(slot_dir, proc))
    started = time.monotonic()
    deaths.await_doomed(timeout=5)  # it was not doomed: nothing to wait for
    assert time.monotonic() - started < 1


def test_without_exit_codes_the_reason_says_what_may_have_happened(slot_dir, spawn):
    proc = spawn("task-2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    deaths = Deaths(slot_dir)
    deaths.note("A worker process managed by the executor was unexpectedly terminated.")
    assert deaths.why("task-2") == ("the worker process running this task died (it was "
                                    "killed, ran out of memory or crashed)")


def test_an_idle_dead_worker_charges_no_task(slot_dir, spawn):
    proc = spawn("task-done", idle=True)  # it ran task-done, then cleared its slot
    slot = _slot(slot_dir, proc)
    assert os.path.exists(slot) and read_slot(slot) is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)

    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL))
    assert deaths.why("task-done") is None
    assert deaths.why("") is None  # the cleared slot's empty id is not a task either
    assert not os.path.exists(slot)


@pytest.mark.alone  # bounds a time from above
def test_a_live_worker_is_doomed_and_killed_past_the_timeout(slot_dir, spawn):
    proc = spawn("task-live")
    slot = _slot(slot_dir, proc)
    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL))
    assert deaths.why("task-live") is None  # alive: not charged
    assert os.path.exists(slot) and proc.poll() is None

    started = time.monotonic()
    deaths.await_doomed(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 5
    assert proc.wait(5) == -signal.SIGKILL  # await_doomed killed it
    assert not os.path.exists(slot)
    assert deaths.why("task-live") is None  # collateral: handed back uncounted

    started = time.monotonic()
    deaths.await_doomed(timeout=5)  # nobody doomed any more
    assert time.monotonic() - started < 1


def test_a_doomed_worker_that_ends_on_its_own_is_not_killed(slot_dir, spawn):
    proc = spawn("task-ending")
    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL))
    proc.stdin.write("exit\n")  # as loky ends the other workers of a broken pool
    proc.stdin.flush()

    started = time.monotonic()
    deaths.await_doomed(timeout=10)
    assert time.monotonic() - started < 5
    assert proc.wait(5) == 0  # it exited by itself, no SIGKILL
    assert not os.path.exists(_slot(slot_dir, proc))
    assert deaths.why("task-ending") is None


def test_a_broken_pool_charges_only_the_workers_dead_first(slot_dir, spawn):
    """One worker died running a task, one idle worker died, one still runs a task:
    only the first task is charged; the live one is waited for, then killed."""
    culprit, idle, survivor = spawn("task-a"), spawn("task-b", idle=True), spawn("task-c")
    for proc in (culprit, idle):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

    deaths = Deaths(slot_dir)
    deaths.note(_loky_reason(-signal.SIGKILL, -signal.SIGKILL))
    assert deaths.why("task-a") == ("the worker process running this task died (The exit "
                                    "codes of the workers are {SIGKILL(-9), SIGKILL(-9)})")
    assert deaths.why("task-b") is None and deaths.why("task-c") is None
    assert os.listdir(slot_dir) == [str(survivor.pid)]

    deaths.await_doomed(timeout=0.2)
    assert survivor.wait(5) == -signal.SIGKILL
    assert os.listdir(slot_dir) == []
    assert deaths.why("task-c") is None


def test_kill_of_a_gone_process_is_quiet(spawn):
    proc = spawn()
    kill(proc.pid)
    assert proc.wait(5) == -signal.SIGKILL
    kill(proc.pid)  # reaped: no such process any more, and no error
