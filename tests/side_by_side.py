"""How the suite's tests run side by side on pytest-xdist's workers (see pyproject.toml).

The tests of an ``xdist_group``, or those sharing a module-scoped fixture (a cluster),
go to one worker together (``_unit``); the tests allowed the longest time start first; a
test marked ``alone``, one that bounds how long something takes from above, runs while no
other test does, or only a few (a lock file per worker slot). Under xdist the run's temp
root is short, so that a store's doorbell socket fits its path.
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
    if (getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None)
            and not config.option.basetemp):
        # The workers' temp directories lie a level deeper (popen-gwN): a store there can
        # be too deep for its doorbell's socket (108 bytes), so the run's root is short.
        config.option.basetemp = tempfile.mkdtemp(prefix="nbq-")
        config._short_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The short root of a run that passed goes (pytest keeps only its own numbered ones)."""
    path = getattr(session.config, "_short_basetemp", None)
    if path is not None and exitstatus == 0:
        shutil.rmtree(path, ignore_errors=True)


def _take(fds: list[int], count: int, what: str) -> list[int]:
    """Lock ``count`` of the slot files ``fds`` (any free ones), polling; fail after
    ``TURN_WAIT`` seconds. The ones it holds."""
    deadline = time.monotonic() + TURN_WAIT
    held: list[int] = []
    while True:
        for fd in fds:
            if len(held) == count:
                return held
            if fd in held:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(fd)
            except BlockingIOError:
                continue
        if len(held) == count:
            return held
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no turn within {TURN_WAIT} s")
        time.sleep(0.02)


@contextlib.contextmanager
def _turn(item: pytest.Item) -> Iterator[None]:
    """Under xdist, a slot per worker, shared by the workers: a test holds one, a test
    marked ``alone`` all of them, or all but ``beside`` (``@pytest.mark.alone(beside=2)``:
    at most two other tests beside it). A test first takes the gate, so that no test
    starts while an ``alone`` one waits for those running to end."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:  # one process: each test runs alone anyway
        yield
        return
    shared = Path(item.config.option.basetemp).parent  # the run's, above each worker's
    slots = int(workerinput["workercount"])
    marker = item.get_closest_marker("alone")
    count = 1 if marker is None else max(1, slots - int(marker.kwargs.get("beside", 0)))
    gate = os.open(shared / "turn-gate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fds = [os.open(shared / f"turn-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
           for i in range(slots)]
    try:
        _take([gate], 1, item.nodeid)
        _take(fds, count, item.nodeid)
        fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        for fd in (gate, *fds):
            os.close(fd)  # closing releases its lock


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
    they wait for are short ones, and those with room ``beside`` them before the quarter
    of the tests allowed the least time, light ones to have beside them. An xdist worker writes
    each test's unit for the scheduler (pytest 9.2's node ids no longer carry an
    ``xdist_group`` to it)."""
    units = {item.nodeid: _unit(item) for item in items}
    sizes = collections.Counter(units.values())
    units = {nodeid: unit if sizes[unit] > 1 else nodeid for nodeid, unit in units.items()}
    for item in items:
        if item.get_closest_marker("alone") and units[item.nodeid] != item.nodeid:
            raise pytest.UsageError(f"{item.nodeid} is in a unit of several tests "
                                    f"({units[item.nodeid]}): it cannot run alone")
    def beside(item: pytest.Item) -> int | None:
        marker = item.get_closest_marker("alone")
        return None if marker is None else int(marker.kwargs.get("beside", 0))

    allowed = sorted((_allowed(item) for item in items if beside(item) is None), reverse=True)
    light = allowed[len(allowed) * 3 // 4] if allowed else 0.0  # of the last quarter

    def order(item: pytest.Item) -> tuple[bool, bool, float]:
        if beside(item) == 0:
            return True, True, 0.0  # at the end
        if beside(item):  # before the last quarter of the tests: light ones beside them
            return False, True, -(light + 0.5)
        return False, units[item.nodeid] == item.nodeid, -_allowed(item)

    items.sort(key=order)
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
