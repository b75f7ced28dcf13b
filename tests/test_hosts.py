"""The host folders of this machine: what their workers began, and which are swept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from nbqueue.disk import hosts


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


@pytest.fixture
def made():
    """Make host folders as a host would (``pid`` given), removed afterwards."""
    paths: list[str] = []

    def make(cluster_id: str, directory: str, pid: int | None = None,
             slots: bool = True) -> str:
        path = hosts.make_folder(cluster_id)
        paths.append(path)
        hosts.describe(path, cluster_id, directory, slots)
        if pid is not None:  # written as that process would have
            with open(os.path.join(path, hosts.HOST_FILE), "w") as out:
                json.dump({"pid": pid, "cluster": cluster_id, "directory": directory,
                           "slots": slots}, out)
        return path

    yield make
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def test_begun_reads_the_slots_of_a_dead_hosts_own_folder(made, tmp_path):
    cluster_id = "c0ffee00" + "1" * 24
    assert hosts.begun(cluster_id) is None  # no folder of it here: unknown
    path = made(cluster_id, str(tmp_path), _dead_pid())
    assert hosts.begun(cluster_id) == set()  # its workers began nothing
    hosts.Slot(os.path.join(path, str(_dead_pid()))).begin("row1.0")
    hosts.Slot(os.path.join(path, str(_dead_pid()))).begin("row1.1")
    assert hosts.begun(cluster_id) == {"row1.0", "row1.1"}
    # a cluster whose id starts alike is another one
    assert hosts.begun("c0ffee00" + "2" * 24) is None
    # a host whose workers do not note what they begin (dask): unknown
    other = "d0d0d0d0" + "3" * 24
    slot = os.path.join(made(other, str(tmp_path), _dead_pid(), slots=False), "103")
    hosts.Slot(slot).begin("x.0")
    assert hosts.begun(other) is None


def test_begun_is_unknown_while_the_host_or_a_worker_lives(made, tmp_path):
    """A live (stalled) host, or an orphaned worker about to exit, may begin more."""
    live = "abcabc00" + "4" * 24
    hosts.Slot(os.path.join(made(live, str(tmp_path)), str(_dead_pid()))).begin("r.0")
    assert hosts.begun(live) is None
    orphaned = "abcabc11" + "5" * 24
    path = made(orphaned, str(tmp_path), _dead_pid())
    hosts.Slot(os.path.join(path, str(_dead_pid()))).begin("r.1")
    hosts.Slot(os.path.join(path, str(os.getpid()))).begin("r.2")  # still alive
    assert hosts.begun(orphaned) is None
    os.unlink(os.path.join(path, str(os.getpid())))  # that worker is gone now
    assert hosts.begun(orphaned) == {"r.1"}


def test_sweep_removes_only_the_folders_of_dead_hosts_no_one_needs(made, tmp_path):
    store, other = str(tmp_path / "store"), str(tmp_path / "other")
    os.makedirs(store)
    os.makedirs(other)
    dead = _dead_pid()
    ids = {name: f"{n:08x}" + "a" * 24 for n, name in enumerate(
        ["done", "holding", "live", "other", "gone", "orphan", "legacy", "foreign"], 0xe0)}
    folders = {
        "done": made(ids["done"], store, dead),  # dead, its leases all reaped
        "holding": made(ids["holding"], store, dead),  # dead, with leases to reap
        "live": made(ids["live"], store),  # this process hosts it
        "other": made(ids["other"], other, dead),  # dead, of a store that exists
        "gone": made(ids["gone"], str(tmp_path / "deleted"), dead),  # of a deleted store
        "orphan": made(ids["orphan"], store, dead),  # dead, one worker still alive
        "legacy": made(ids["legacy"], store, dead),  # no host file
        "foreign": made(ids["foreign"], store, dead),  # another user's
    }
    hosts.Slot(os.path.join(folders["orphan"], str(os.getpid())))
    os.unlink(os.path.join(folders["legacy"], hosts.HOST_FILE))
    for path in (folders["foreign"], os.path.join(folders["foreign"], hosts.HOST_FILE)):
        os.chown(path, 54321, 54321)

    assert hosts.sweep(store, {ids["holding"], "someone-else"}) >= 2
    left = {name for name, path in folders.items() if os.path.exists(path)}
    assert left == {"holding", "live", "other", "orphan", "legacy", "foreign"}
    assert hosts.sweep(store, set()) >= 1  # its leases reaped: now it goes
    assert not os.path.exists(folders["holding"])


def test_slot_roundtrip(tmp_path):
    path = str(tmp_path / str(os.getpid()))
    slot = hosts.Slot(path)
    assert hosts.read_slot(path) is None
    slot.mark("abc", 10.0, 20.0)
    assert hosts.read_slot(path) == ("abc", 10.0, 20.0)
    slot.clear()
    assert hosts.read_slot(path) is None
    assert hosts.read_slot(str(tmp_path / "missing")) is None


def test_slot_notes_the_tasks_begun_in_a_ring(tmp_path):
    path = str(tmp_path / str(os.getpid()))
    slot = hosts.Slot(path)
    assert hosts.read_begun(path) == set()
    slot.begin("a1b2c3d4e5f6123.0")
    slot.begin("a1b2c3d4e5f6123.1")
    assert hosts.read_begun(path) == {"a1b2c3d4e5f6123.0", "a1b2c3d4e5f6123.1"}
    slot.mark("abc", 10.0, 20.0)
    assert hosts.read_slot(path) == ("abc", 10.0, 20.0)  # the slot is unchanged
    for n in range(hosts.BEGUN):
        slot.begin(f"{n:035d}")  # the longest token there is
    assert hosts.read_begun(path) == {f"{n:035d}" for n in range(hosts.BEGUN)}
    assert hosts.read_begun(str(tmp_path / "missing")) == set()
