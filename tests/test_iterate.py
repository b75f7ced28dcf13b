"""nbqueue.iterate through the public API, on one real two-worker loky cluster for the
module: ``as_completed`` (finished tasks first, each once, its timeout, leaving it early)
and ``map`` (enqueued at the call, dotted paths, no progress unless
asked, and the cancel of its unfinished tasks when it ends on a failure or a timeout).

The tests that bound a time from above run alone, each on a cluster of its own.
"""

from __future__ import annotations

import builtins

import concurrent.futures as cf
import threading
import time
import uuid

import pytest

import nbqueue
from nbqueue import (
    TaskFailed,
    as_completed,
    async_task,
    count_group,
    fetch,
    fetch_group,
    get_broker,
    result,
)
from nbqueue.disk.directory import sent
from nbqueue.errors import ConfigurationError
from nbqueue.models import Failure
from tests import tasks_fixtures as fx
from tests.shared_cluster import module_cluster
from tests.waiting import wait_for, watched

pytestmark = pytest.mark.timeout(60)
WAIT = 20  # seconds: bounded, generous for a loaded machine
LONG = 5  # seconds a task that should be cancelled would run


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster on one store for the whole module (each test uses its own groups)."""
    with module_cluster(tmp_path_factory, "iterate") as cluster:
        yield cluster


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


@pytest.fixture
def own_cluster(store_dir):
    """A two-worker cluster of the test's own, for a test that runs alone."""
    running = nbqueue.Cluster(workers=2, directory=store_dir).start()
    yield running
    running.stop(wait=5)


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
    with pytest.raises(cf.TimeoutError, match="1 of 2 items of map"):
        next(results)
    tasks = {t.result: t for t in _outcomes_of(group, 2) if t.success}
    assert list(tasks) == ["quick"]  # the late one did not run on: cancelled
    late = [t for t in fetch_group(group) if not t.success]
    assert len(late) == 1 and "cancelled" in late[0].result
    assert fetch(late[0].id).attempt_count <= 1


# -- as_completed: order, failures, its timeout, a growing group, bad input ----------------------------------------------------------------------


def test_as_completed_yields_a_fast_task_before_a_slow_one_enqueued_first(cluster):
    slow = async_task(fx.nap, 3, "slow")
    fast = async_task(fx.add, 1, 1)
    seen = [(t.id, time.monotonic()) for t in as_completed([slow, fast], timeout=WAIT)]
    assert [task_id for task_id, _ in seen] == [fast, slow]
    assert seen[1][1] - seen[0][1] > 1  # the fast one came long before the slow one ended


def test_as_completed_yields_failures_as_tasks(cluster):
    ok, bad = async_task(fx.add, 1, 2), async_task(fx.boom)
    tasks = {t.id: t for t in as_completed([ok, bad, ok], timeout=WAIT)}
    assert len(tasks) == 2  # an id given twice is yielded once
    assert isinstance(tasks[bad], Failure) and tasks[ok].result == 3


@pytest.mark.alone  # bounds a time from above
def test_as_completed_times_out(own_cluster):
    slow = async_task(fx.nap, 2, "late")
    started = time.monotonic()
    with pytest.raises(cf.TimeoutError, match="1 of 1 tasks"):
        list(as_completed([slow], timeout=0.3))
    assert time.monotonic() - started < 1.5
    assert not watched(slow)  # its future was cancelled: no longer waited for
    with pytest.raises(TimeoutError, match="group 'never'"):
        list(as_completed(group="never", count=1, timeout=0.2))


def test_as_completed_group_follows_the_group_as_it_grows(cluster):
    ids = [async_task(fx.nap, 0.05 * (i % 3), i, group="grow") for i in range(12)]
    seen = []
    for task in as_completed(group="grow", timeout=WAIT):  # ends at this process's 12
        seen.append(task.id)
        if len(seen) == 6:
            ids += [async_task(fx.add, i, group="grow") for i in range(3)]  # now 15
    assert sorted(seen) == sorted(ids) and len(seen) == 15
    assert [t.id for t in as_completed(group="grow", count=4, timeout=WAIT)] == seen[:4]


def test_as_completed_refuses_bad_input(store_dir):
    for kwargs, name in (({}, "exactly one"), ({"task_ids": ["a"], "group": "g"}, "exactly one"),
                         ({"task_ids": "abc"}, "task_ids"), ({"group": ""}, "group"),
                         ({"group": "g", "count": 0}, "count"),
                         ({"task_ids": ["a"], "count": 2}, "count"),
                         ({"group": "g", "timeout": -1}, "timeout")):
        with pytest.raises(ConfigurationError, match=name):
            as_completed(**kwargs)


# -- map: order, keywords, one group, failures, its timeout, progress, bad input -------------------------------------------------------------------------------


def test_map_ordered_spreads_tuples_and_passes_keywords(cluster):
    assert list(nbqueue.map(fx.add, [(1, 2), (3, 4), 5], timeout=WAIT)) == [3, 7, 5]
    assert list(nbqueue.map(fx.add, range(5), b=10, timeout=WAIT)) == list(range(10, 15))
    assert list(nbqueue.map(fx.add, [], timeout=WAIT)) == []
    slow_first = nbqueue.map(fx.nap, [(1, "slow"), (0, "fast")], timeout=WAIT)
    assert list(slow_first) == ["slow", "fast"]  # input order


def test_map_takes_several_iterables_as_the_builtin_map(cluster):
    assert list(nbqueue.map(fx.add, [1, 2, 3], [10, 20, 30], timeout=WAIT)) == [11, 22, 33]
    # to the shortest, as the builtin map; each item one argument, tuples too
    assert list(nbqueue.map(fx.echo, [(1, 2), 3], "ab", timeout=WAIT)) == list(
        builtins.map(fx.echo, [(1, 2), 3], "ab"))
    with pytest.raises(ConfigurationError, match="at least one iterable"):
        nbqueue.map(fx.add)


def test_map_unordered_yields_a_fast_result_before_a_slow_one(cluster):
    results = nbqueue.map(fx.nap, [(2, "slow"), (0, "fast")], ordered=False, timeout=WAIT)
    assert list(results) == ["fast", "slow"]


def test_map_puts_its_tasks_in_one_group(cluster):
    assert list(nbqueue.map(fx.add, range(4), group="mapped", timeout=WAIT)) == [0, 1, 2, 3]
    assert sorted(nbqueue.result_group("mapped")) == [0, 1, 2, 3]
    assert sent(get_broker().directory).enqueued["mapped"] == 4


def test_map_raises_task_failed_at_its_place(cluster):
    results = nbqueue.map(lambda x: 10 // x, [5, 0, 2], timeout=WAIT)
    assert next(results) == 2
    with pytest.raises(TaskFailed) as failed:
        next(results)
    assert "ZeroDivisionError" in failed.value.task.result
    with pytest.raises(StopIteration):  # as Executor.map: the map ends with its failure
        next(results)


@pytest.mark.alone  # bounds a time from above
def test_map_times_out(own_cluster):
    started = time.monotonic()
    with pytest.raises(cf.TimeoutError, match="0 of 1 items of map"):
        list(nbqueue.map(fx.nap, [(2, "late")], timeout=0.3))
    assert time.monotonic() - started < 1.5


def test_map_with_progress_in_a_plain_process(cluster, capsys):
    assert list(nbqueue.map(fx.add, range(6), progress=True, timeout=WAIT)) == list(range(6))
    assert "6/6" in capsys.readouterr().err  # the tqdm bar, drawn complete


def test_map_refuses_bad_input(store_dir):
    with pytest.raises(ConfigurationError, match="save=False"):
        nbqueue.map(fx.add, [1], save=False)
    with pytest.raises(ConfigurationError, match="timeout"):
        nbqueue.map(fx.add, [1], timeout="soon")
    with pytest.raises(ConfigurationError, match="ordered"):
        nbqueue.map(fx.add, [1], ordered=None)
    with pytest.raises(nbqueue.PackingError):
        nbqueue.map(fx.add, [1, threading.Lock()])
    assert nbqueue.queue_size() == 0  # nothing half-enqueued


def test_map_in_sync_mode(store_dir):
    assert list(nbqueue.map(fx.add, [(1, 1), (2, 2)], sync=True, timeout=WAIT)) == [2, 4]


def test_breaking_out_of_map_cancels_the_rest(cluster, tmp_path):
    log = str(tmp_path / "runs.log")
    items = [(log, 0.0, "first")] + [(log, 1.0, i) for i in range(10)]
    results = nbqueue.map(fx.log_run, items, timeout=WAIT)
    assert next(results) == "first"
    results.close()  # as a `break` does
    broker = get_broker()
    wait_for(lambda: broker.pending() == 0 and broker.leased() == 0, WAIT,
             "the cancelled tasks to leave the queue")
    time.sleep(0.5)
    with open(log) as runs:
        started = sum(1 for line in runs if line.startswith("start"))
    assert started < 1 + 10  # without the cancel, all 10 would run (5 s on 2 workers)
