"""How the suite's tests run side by side on pytest-xdist's workers (see pyproject.toml).

The tests of an ``xdist_group``, or those sharing a module-scoped fixture (a cluster),
go to one worker together (``_unit``); the tests allowed the longest time start first; a
test marked ``alone``, one that bounds how long something takes from above, runs while no
other test does (a readers-writer lock of the workers). The run's temp root is short, so
that a store's doorbell socket fits its path.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TURN_WAIT = 900.0  # s: the longest a test waits for its turn (the longest test, and more)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "alone: runs while no other test of the run does (it bounds how long something takes)")
    if getattr(config, "workerinput", None) is None and not config.option.basetemp:
        # pytest's own root (/tmp/pytest-of-USER/pytest-N/), and the workers' a level
        # deeper (popen-gwN): a store there can be too deep for its doorbell's socket
        # (108 bytes), so the run's root is short.
        config.option.basetemp = tempfile.mkdtemp(prefix="nbq-")
        config._short_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The short root of a run that passed goes (pytest keeps only its own numbered ones)."""
    path = getattr(session.config, "_short_basetemp", None)
    if path is not None and exitstatus == 0:
        shutil.rmtree(path, ignore_errors=True)


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


def _unit(item: pytest.Item) -> str:
    """The unit of work a worker is given: the tests of one ``xdist_group``, or those of a
    module that share one of its module-scoped fixtures (a cluster, started once), else
    the test by itself. A unit runs in one piece, early: none of its tests can be
    ``alone``."""
    groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                     for mark in item.iter_markers("xdist_group")})
    if groups:
        return "group " + "+".join(groups)
    info = getattr(item, "_fixtureinfo", None)
    shared = sorted(name for name, defs in getattr(info, "name2fixturedefs", {}).items()
                    if defs and defs[-1].scope == "module")
    if shared:
        return f"{item.nodeid.partition('::')[0]} with {'+'.join(shared)}"
    return item.nodeid


def pytest_configure_node(node: object) -> None:
    """(xdist, in the controller) Where the workers write the unit of each test."""
    config = node.config  # type: ignore[attr-defined]
    if not hasattr(config, "_test_units"):
        handle, config._test_units = tempfile.mkstemp(prefix="nbqueue-test-units-")
        os.close(handle)
    node.workerinput["test_units"] = config._test_units  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    path = getattr(config, "_test_units", None)
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The order in which the workers take the tests (stable otherwise): first the units
    of several tests, then the tests allowed the longest, so that the run does not end
    waiting on a long one begun last; the tests marked ``alone`` at the end, when the tests
    they wait for are short ones. An xdist worker writes each test's unit for the
    scheduler (the node ids of pytest 9.2 no longer carry an ``xdist_group`` to it)."""
    units = {item.nodeid: _unit(item) for item in items}
    sizes = collections.Counter(units.values())
    units = {nodeid: unit if sizes[unit] > 1 else nodeid for nodeid, unit in units.items()}
    for item in items:
        if item.get_closest_marker("alone") and units[item.nodeid] != item.nodeid:
            raise pytest.UsageError(f"{item.nodeid} is in a unit of several tests "
                                    f"({units[item.nodeid]}): it cannot run alone")
    items.sort(key=lambda item: (item.get_closest_marker("alone") is not None,
                                 units[item.nodeid] == item.nodeid, -_allowed(item)))
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get("workerid") == "gw0":
        path = workerinput["test_units"]
        with open(f"{path}.tmp", "w") as out:
            json.dump(units, out)
        os.replace(f"{path}.tmp", path)  # whole, before the worker reports its collection


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """With ``--dist load`` (what ``-n`` means alone), xdist's scheduling by scope, each
    scope a unit (``_unit``), in the order of the collection."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False
    units: dict[str, str] = {}

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if not units:  # gw0 wrote them before it reported its collection
                with open(config._test_units) as src:  # type: ignore[attr-defined]
                    units.update(json.load(src))
            return units.get(nodeid, nodeid)

    return Units(config, log)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Each test in its turn (before pytest-timeout's clock for it starts)."""
    with _turn(item):
        return (yield)


def _allowed(item: pytest.Item) -> float:
    """The seconds pytest-timeout allows the test."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    if marker is not None and "timeout" in marker.kwargs:
        return float(marker.kwargs["timeout"])
    return float(item.config.getini("timeout") or 0)
