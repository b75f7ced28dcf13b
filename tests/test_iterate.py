"""nbqueue.iterate through the public API, on one real two-worker loky cluster for the
module: ``as_completed`` (finished tasks first, each once, its timeout, leaving it early)
and ``map`` (enqueued at the call, dotted paths, ``reuse`` ignored, no progress unless
asked, and the cancel of its unfinished tasks when it ends on a failure or a timeout).

What ``tests/test_futures.py`` already checks of both (order of finishing, failures
yielded, the timeouts' messages, a group that grows, bad input, keywords, ``break``)
is not repeated here.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid

import pytest

import nbqueue
from nbqueue import (
    TaskFailed,
    as_completed,
    async_task,
    conf,
    count_group,
    fetch,
    fetch_group,
    get_broker,
    result,
)
from nbqueue.disk.directory import drop
from nbqueue.models import Failure
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)
WAIT = 20  # seconds: bounded, generous for a loaded machine
LONG = 5  # seconds a task that should be cancelled would run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster on one store for the whole module (each test uses its own groups)."""
    directory = str(tmp_path_factory.mktemp("iterate") / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    cluster = nbqueue.Cluster(workers=2, directory=directory).start()
    yield cluster
    cluster.stop(wait=5)
    conf.reset()
    drop(directory)


@pytest.fixture
def cluster(shared):
    """The module's cluster, its store the default again; idle when the test ends."""
    nbqueue.configure(directory=shared.directory)
    yield shared
    broker = get_broker()
    wait_for(
        lambda: broker.pending() == 0 and broker.leased() == 0,
        WAIT,
        "the queue to be empty after the test",
    )


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


# -- as_completed -----------------------------------------------------------------------


def test_as_completed_yields_finished_tasks_first_each_once(cluster):
    done = async_task(fx.add, 1, 1, task_name="iterate-done")
    assert result(done, wait=WAIT * 1000) == 2
    slow = async_task(fx.nap, 0.5, "slow")
    seen = [t.id for t in as_completed([slow, done, slow], timeout=WAIT)]
    assert seen == [done, slow]  # the finished one first, though given after; each once
    assert [t.id for t in as_completed(["iterate-done"], timeout=WAIT)] == [done]  # by name


def test_as_completed_yields_a_task_given_by_id_and_by_name_once(cluster):
    done = async_task(fx.add, 1, 2, task_name="iterate-twice")
    assert result(done, wait=WAIT * 1000) == 3
    assert [t.id for t in as_completed([done, "iterate-twice"], timeout=WAIT)] == [done]


def test_as_completed_yields_what_is_there_before_its_timeout_is_raised(cluster):
    group = _group()
    done = [async_task(fx.add, i, group=group) for i in range(2)]
    assert len(fetch_group(group, count=2, wait=WAIT * 1000)) == 2
    slow = async_task(fx.nap, 1, "slow", group=group)
    tasks = as_completed([slow, *done], timeout=0)
    assert {next(tasks).id, next(tasks).id} == set(done)  # no wait: there already
    with pytest.raises(cf.TimeoutError, match="1 of 3 tasks"):
        next(tasks)
    stored = as_completed(group=group, count=3, timeout=0)
    assert {next(stored).id, next(stored).id} == set(done)
    with pytest.raises(cf.TimeoutError, match=f"2 task\\(s\\) of 3 of group '{group}'"):
        next(stored)
    assert result(slow, wait=WAIT * 1000) == "slow"


@pytest.mark.parametrize("by", ["task_ids", "group"])
def test_leaving_as_completed_early_only_stops_waiting(cluster, by):
    group = _group()
    ids = [async_task(fx.nap, 0.1 * i, i, group=group) for i in range(4)]
    source = (
        as_completed(ids, timeout=WAIT)
        if by == "task_ids"
        else as_completed(group=group, timeout=WAIT)
    )
    first = next(source)
    source.close()  # as a `break` does
    assert first.id in ids
    tasks = fetch_group(group, count=4, wait=WAIT * 1000)
    assert sorted(t.result for t in tasks) == [0, 1, 2, 3]  # the rest ran on: none cancelled
    assert all(t.success for t in tasks)


def test_as_completed_of_a_group_with_a_task_not_saved_ends_after_the_saved_ones(cluster):
    group = _group()
    saved = async_task(fx.add, 1, group=group)
    async_task(fx.add, 2, group=group, save=False)
    assert [t.id for t in as_completed(group=group, timeout=1)] == [saved]


# -- map --------------------------------------------------------------------------------


def test_map_enqueues_every_task_at_the_call(cluster):
    group = _group()
    items = (i for i in range(3))
    results = nbqueue.map(fx.add, items, b=1, group=group, timeout=WAIT)
    assert next(items, None) is None  # the iterable was consumed at the call
    wait_for(lambda: count_group(group) == 3, WAIT, "the tasks to run without iterating")
    assert list(results) == [1, 2, 3]


def test_map_takes_a_dotted_path(cluster):
    assert list(nbqueue.map("tests.tasks_fixtures.add", [(1, 2), 3], timeout=WAIT)) == [3, 3]


def test_map_ignores_reuse_and_always_sends_its_tasks(cluster, tmp_path):
    log = str(tmp_path / "runs.log")
    for _ in range(2):
        assert list(nbqueue.map(fx.log_run, [(log, 0.0, "v")], reuse=True, timeout=WAIT)) == ["v"]
    with open(log) as runs:
        assert sum(line.startswith("stop") for line in runs) == 2


def test_map_shows_no_progress_unless_asked(cluster, capsys):
    assert list(nbqueue.map(fx.add, range(3), timeout=WAIT)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def _outcomes_of(group: str, count: int) -> list:
    tasks = fetch_group(group, count=count, wait=WAIT * 1000)
    assert tasks is not None and len(tasks) == count
    return tasks


def test_a_failure_in_map_cancels_the_tasks_not_finished(cluster):
    group = _group()
    results = nbqueue.map(
        fx.nap, [("not a number", "bad")] + [(LONG, i) for i in range(4)], group=group, timeout=WAIT
    )
    started = time.monotonic()
    with pytest.raises(TaskFailed) as failed:
        next(results)
    assert "TypeError" in failed.value.task.result
    tasks = _outcomes_of(group, 5)  # each has its outcome: the four were cancelled
    assert time.monotonic() - started < LONG  # none ran to its end
    cancelled = [t for t in tasks if t.id != failed.value.task.id]
    assert len(cancelled) == 4 and all("cancelled" in t.result for t in cancelled), [
        t.result for t in cancelled
    ]


def test_an_unordered_map_raises_the_first_failure_to_finish_and_cancels_the_rest(cluster):
    group = _group()
    results = nbqueue.map(
        fx.nap, [(LONG, "slow"), ("not a number", "bad")], ordered=False, group=group, timeout=WAIT
    )
    with pytest.raises(TaskFailed) as failed:
        next(results)
    assert isinstance(failed.value.task, Failure) and "TypeError" in failed.value.task.result
    slow = [t for t in _outcomes_of(group, 2) if t.id != failed.value.task.id]
    assert len(slow) == 1 and not slow[0].success and "cancelled" in slow[0].result


def test_a_map_that_times_out_cancels_the_tasks_not_finished(cluster):
    group = _group()
    results = nbqueue.map(fx.nap, [(0, "quick"), (LONG, "late")], group=group, timeout=1)
    assert next(results) == "quick"
    with pytest.raises(cf.TimeoutError, match="1 of 2 tasks of map"):
        next(results)
    tasks = {t.result: t for t in _outcomes_of(group, 2) if t.success}
    assert list(tasks) == ["quick"]  # the late one did not run on: cancelled
    late = [t for t in fetch_group(group) if not t.success]
    assert len(late) == 1 and "cancelled" in late[0].result
    assert fetch(late[0].id).attempt_count <= 1
