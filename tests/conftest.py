"""Shared fixtures: a real store in a temp directory, a real loky cluster on it.

The suite's tests run side by side (pytest-xdist, see pyproject.toml). A test marked
``alone`` (it bounds how long something takes from above) runs while no other test does;
the tests that share a module-scoped cluster go to one worker together (``_unit``); the
tests allowed the longest time start first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nbqueue
from nbqueue import conf
from nbqueue.disk import broker as broker_module
from nbqueue.disk.store import drop_store

TURN_WAIT = 900.0  # s: the longest a test waits for its turn (the longest test, and more)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "alone: runs while no other test of the run does (it bounds how long something takes)")


def _flock(fd: int, how: int, what: str) -> None:
    """``flock`` with a bound: poll, and fail after ``TURN_WAIT`` seconds."""
    deadline = time.monotonic() + TURN_WAIT
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: no turn within {TURN_WAIT} s") from None
            time.sleep(0.02)


@contextlib.contextmanager
def _turn(item: pytest.Item) -> Iterator[None]:
    """Under xdist, a readers-writer lock shared by the workers: a test marked ``alone``
    holds it exclusively, any other shares it. An ``alone`` test first takes the gate,
    so that no other test starts while it waits for those running to end."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:  # one process: each test runs alone anyway
        yield
        return
    shared = Path(item.config.option.basetemp).parent  # the run's, above each worker's
    alone = item.get_closest_marker("alone") is not None
    gate = os.open(shared / "turn-gate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    main = os.open(shared / "turn.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _flock(gate, fcntl.LOCK_EX, item.nodeid)
        if alone:
            _flock(main, fcntl.LOCK_EX, item.nodeid)
        else:
            _flock(main, fcntl.LOCK_SH, item.nodeid)
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        os.close(main)  # closing releases its locks
        os.close(gate)


def _unit(nodeid: str) -> str:
    """The unit of work a worker is given: the tests that share a module-scoped cluster
    (so that it is started once) or costly imports, else the test by itself. Such a unit runs early and
    in one piece, so none of its tests can wait for a turn ``alone``."""
    path, _, name = nodeid.partition("::")
    if path.endswith("test_dask_control.py"):
        return path  # one dask Cluster for the module
    if path.endswith("test_seed_api.py") and name.endswith("[dask]"):
        return f"{path}[dask]"  # one LocalCluster for the dask half of the module
    if path.endswith("test_notebooks.py"):
        return path  # one worker imports nbformat and nbclient
    return nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With ``--dist load`` (what ``-n`` means alone), xdist's scheduling by scope, each
    scope being a ``_unit``. (``xdist_group`` marks would say the same, but pytest 9.2
    node ids no longer carry the group to the scheduler.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # in the order of the collection

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return Units(config, log)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Each test in its turn (before pytest-timeout's clock for it starts)."""
    with _turn(item):
        return (yield)


@pytest.fixture
def store_dir(tmp_path):
    """A fresh private store directory, made the configured default for the test."""
    directory = str(tmp_path / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    yield directory
    conf.reset()
    broker_module.drop_broker(directory)
    drop_store(directory)


@pytest.fixture
def broker(store_dir):
    return nbqueue.get_broker()


@pytest.fixture
def cluster(store_dir):
    """A running two-worker loky cluster on the test's store, stopped afterwards."""
    running = nbqueue.Cluster(workers=2, directory=store_dir).start()
    yield running
    running.stop(wait=5)


def _allowed(item: pytest.Item) -> float:
    """The seconds pytest-timeout allows the test."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    if marker is not None and "timeout" in marker.kwargs:
        return float(marker.kwargs["timeout"])
    return float(item.config.getini("timeout") or 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order in which the workers take the tests (stable otherwise): first the units
    of several tests, then the tests allowed the longest, so that the run does not end
    waiting on a long one begun last; the tests marked ``alone`` at the end, when the tests
    they wait for are short ones."""
    for item in items:
        if item.get_closest_marker("alone") and _unit(item.nodeid) != item.nodeid:
            raise pytest.UsageError(f"{item.nodeid} is in a unit of several tests: it "
                                    "cannot run alone (see _unit)")
    items.sort(key=lambda item: (item.get_closest_marker("alone") is not None,
                                 _unit(item.nodeid) == item.nodeid, -_allowed(item)))
