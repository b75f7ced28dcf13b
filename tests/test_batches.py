"""Items in batches (``nbqueue.batches``), through the public API on a real two-worker
loky cluster: each item of ``map`` and ``async_iter`` keeps its own outcome, failure,
time limit, cancel, retry, hook and place in the counts, while many travel and are
stored as one task; and ``reuse=True`` sends again only the batches that did not finish.
"""

from __future__ import annotations

import time
import uuid

import pytest

import nbqueue
from nbqueue import TaskFailed, batches, count_group, fetch, fetch_group, result
from nbqueue.disk.directory import get_store
from nbqueue.disk.names import batch_of
from nbqueue.disk.records import Cause
from tests import tasks_fixtures as fx
from tests.shared_cluster import module_cluster
from tests.test_kernel import read_log, starts_by_task
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
WAIT = 30  # seconds: bounded, generous for a loaded machine


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster on one store for the whole module (each test uses its own groups)."""
    with module_cluster(tmp_path_factory, "batches") as cluster:
        yield cluster


@pytest.fixture
def cluster(shared):
    nbqueue.configure(directory=shared.directory)
    yield shared


@pytest.fixture
def size(monkeypatch):
    """Set the size of the batches made in this test: ``size(n)``."""

    def set_size(n: int) -> None:
        monkeypatch.setattr(batches, "batch_size", lambda *_: n)

    return set_size


def _group() -> str:
    return f"b-{uuid.uuid4()}"


def _batches_of(group: str) -> set[str]:
    """The ids of the tasks the group's items ran in."""
    return {batch_of(t.id)[0] for t in fetch_group(group, failures=True)}


# -- sizes ------------------------------------------------------------------------------

def test_a_batch_size_spreads_the_items_over_the_workers_and_shrinks_for_slow_ones():
    assert batches.batch_size(40_000, 2, None) == 40_000 // (2 * batches.SPREAD)
    assert batches.batch_size(10, 2, None) == 1  # fewer items than the spread: one each
    assert batches.batch_size(10**7, 2, None) == batches.MOST_ITEMS
    assert batches.batch_size(40_000, 2, 0.001) == int(batches.BATCH_SECONDS / 0.001)
    assert batches.batch_size(100_000, 2, 5.0) == 1  # slow items go one by one
    assert batches.batch_size(0, 0, None) == 1


def test_an_item_with_large_arguments_goes_alone(cluster):
    group = _group()
    big = b"x" * (batches.MOST_BYTES + 1)
    assert list(nbqueue.map(len, [b"a", big, b"bc"], group=group)) == [1, len(big), 2]
    assert len(_batches_of(group)) >= 2


# -- outcomes ---------------------------------------------------------------------------

def test_a_failing_item_among_many_is_that_items_failure_and_the_others_succeed(cluster):
    group = _group()
    count = 2000
    results = nbqueue.map(fx.square_or_fail, range(count), bad=1234, group=group, timeout=WAIT)
    with pytest.raises(TaskFailed) as failed:
        for i, value in enumerate(results):
            assert value == i * i
    assert i == 1234 - 1  # every result before it, in order
    failure = failed.value.task
    assert failure.args == (1234,) and failure.kwargs == {"bad": 1234}
    assert failure.cause is Cause.RAISED and "ValueError: 1234 is bad" in failure.result
    assert "square_or_fail" in failure.traceback
    assert fetch(failure.id).result == failure.result
    assert fetch(failure.name).id == failure.id  # found by its name too
    # the map stopped at the failure: what it had not read may be cancelled; what ran
    # is stored, one outcome per item, and counted per item
    wait_for(lambda: count_group(group) == count, WAIT,
             "every item's outcome")
    tasks = fetch_group(group, failures=True)
    assert len(tasks) == count and len({t.id for t in tasks}) == count
    assert [t for t in tasks if not t.success and t.cause is Cause.RAISED] == [failure]
    assert len(_batches_of(group)) < count / 10  # items travel in batches
    done = next(t for t in tasks if t.success)
    assert result(done.id) == done.args[0] ** 2
    assert done.name.rsplit(".", 1)[0] != done.id and done.time_taken() >= 0


def test_an_async_iter_of_batches_gives_every_result_in_order(cluster):
    iter_id = nbqueue.async_iter(fx.add, [(i, 1) for i in range(500)])
    assert result(iter_id, wait=WAIT * 1000) == list(range(1, 501))
    assert count_group(iter_id) == 500
    assert len(_batches_of(iter_id)) < 100


def test_each_item_has_its_own_time_limit(cluster, size):
    size(6)
    group = _group()
    started = time.monotonic()
    results = nbqueue.map(fx.nap, [0, 0, 10, 0, 0, 0], range(6),
                          q_options={"timeout": 1, "group": group}, timeout=WAIT)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(TaskFailed) as failed:
        next(results)
    assert time.monotonic() - started < 8
    assert failed.value.task.cause is Cause.TIMEOUT
    assert "timed out after 1 s" in failed.value.task.result
    tasks = fetch_group(group, failures=True)
    assert len(_batches_of(group)) == 1  # one batch ran them all
    assert sorted(t.result for t in tasks if t.success) == [0, 1, 3, 4, 5]


def test_a_hook_runs_for_each_item(cluster):
    seen = []
    group = _group()
    assert list(nbqueue.map(fx.add, range(40), group=group, hook=seen.append)) == list(range(40))
    wait_for(lambda: len(seen) == 40, WAIT, "a hook per item")
    assert sorted(task.result for task in seen) == list(range(40))


# -- cancel and retry -------------------------------------------------------------------

def test_cancelling_one_queued_item_skips_it_alone(store_dir, size):
    size(10)
    iter_id = nbqueue.async_iter(fx.add, [(i, 1) for i in range(10)])
    part = get_store(nbqueue.get_broker().directory).saved
    (batch_id, count), = part.manifest(iter_id)["batches"]
    item = batch_id[:28] + f"{3 + 1:08x}"  # the item of (3, 1)
    assert nbqueue.cancel(item)
    with nbqueue.Cluster(workers=1):
        values = result(iter_id, wait=WAIT * 1000)
    assert values[:3] == [1, 2, 3] and values[4:] == [5, 6, 7, 8, 9, 10]
    cancelled = fetch(item)
    assert cancelled.cause is Cause.CANCELLED and "before it started" in cancelled.result
    assert (count_group(iter_id), count_group(iter_id, failures=True)) == (10, 1)


def test_cancelling_the_running_item_stops_it_and_the_batch_goes_on(cluster, size, tmp_path):
    size(3)
    log = tmp_path / "runs.log"
    group = _group()
    iter_id = nbqueue.async_iter(fx.logged, [(str(log), 0, 0), (str(log), 1, 20),
                                             (str(log), 2, 0)], group=group)
    (batch_id, _), = get_store(cluster.directory).saved.manifest(iter_id)["batches"]
    wait_for(lambda: 1 in starts_by_task(read_log(log)), WAIT, "the long item started")
    started = time.monotonic()
    assert nbqueue.cancel(batch_id[:28] + f"{2:08x}")
    assert time.monotonic() - started < 10
    wait_for(lambda: len(fetch_group(group, failures=True)) == 3, WAIT, "the batch stored")
    tasks = {t.args[1]: t for t in fetch_group(group, failures=True)}
    assert tasks[1].cause is Cause.CANCELLED and not tasks[1].success
    assert tasks[0].success and tasks[2].success  # the next item ran after the stop


def test_retrying_a_failed_item_runs_it_alone_and_keeps_one_outcome(cluster, size, tmp_path):
    size(5)
    flag = tmp_path / "runs"
    group = _group()
    iter_id = nbqueue.async_iter(fx.add_or_fail_until, [(i, str(flag), 1 if i == 2 else 0)
                                                        for i in range(5)], group=group)
    wait_for(lambda: count_group(group) == 5, WAIT,
             "the batch stored")
    failed, = fetch_group(group, failures=True)[2:3]
    assert not failed.success and batch_of(failed.id) is not None
    assert nbqueue.retry(failed.id)
    assert result(iter_id, wait=WAIT * 1000) == [0, 1, 2, 3, 4]
    tasks = fetch_group(group, failures=True)
    assert len(tasks) == 5 and all(t.success for t in tasks)
    assert fetch(failed.id).attempt_count == 2
    assert (count_group(group), count_group(group, failures=True)) == (5, 0)


# -- reuse ------------------------------------------------------------------------------

def test_a_map_run_again_with_reuse_sends_only_the_batches_that_failed(cluster, size, tmp_path):
    size(4)
    flag = str(tmp_path / "runs")
    log = str(tmp_path / "log")
    group = _group()
    # item 9 fails once: in the last batch, so that the map, raising there, has read every
    # batch and cancels none
    calls = [(i, flag, 1 if i == 9 else 0) for i in range(12)]
    with pytest.raises(TaskFailed):
        list(nbqueue.map(fx.add_or_fail_until, calls, group=group, reuse=True, timeout=WAIT))
    wait_for(lambda: count_group(group) == 12, WAIT,
             "every item's outcome")
    first = {t.id: t for t in fetch_group(group, failures=True)}
    assert len(_batches_of(group)) == 3
    again = list(nbqueue.map(fx.add_or_fail_until, calls, group=group, reuse=True,
                             timeout=WAIT))
    assert again == list(range(12))
    tasks = {t.id: t for t in fetch_group(group, failures=True)}
    assert (count_group(group), count_group(group, failures=True)) == (12, 0)
    kept = set(first) & set(tasks)  # the two batches that succeeded were not sent again
    assert len(kept) == 8 and all(tasks[i].stopped == first[i].stopped for i in kept)
    runs = {i: len(open(f"{flag}.{i}").read().splitlines())
            for i in range(12) if i == 9}
    assert runs == {9: 2}
    # and a third run sends nothing
    assert list(nbqueue.map(fx.add_or_fail_until, calls, group=group, reuse=True,
                            timeout=WAIT)) == list(range(12))
    assert {t.id: t.stopped for t in fetch_group(group)} == {i: t.stopped
                                                             for i, t in tasks.items()}
    del log


def test_sync_runs_the_batches_here_item_by_item(store_dir, size):
    size(4)
    group = _group()
    results = nbqueue.map(fx.square_or_fail, range(10), bad=6, group=group, sync=True)
    assert [next(results) for _ in range(6)] == [0, 1, 4, 9, 16, 25]
    with pytest.raises(TaskFailed, match="6 is bad"):
        next(results)
    assert (count_group(group), count_group(group, failures=True)) == (10, 1)
    iter_id = nbqueue.async_iter(fx.square_or_fail, [(i, 2) for i in range(5)], sync=True)
    values = result(iter_id)
    assert values[:2] == [0, 1] and "ValueError: 2 is bad" in values[2] and values[3:] == [9, 16]
    assert not fetch(iter_id).success


def test_as_completed_of_a_group_yields_its_items(cluster, size):
    size(25)
    group = _group()
    iter_id = nbqueue.async_iter(fx.add, [(i, 1) for i in range(100)], group=group)
    tasks = list(nbqueue.as_completed(group=group, count=100, timeout=WAIT))
    assert sorted(t.result for t in tasks) == list(range(1, 101))
    assert len({t.id for t in tasks}) == 100 and all(batch_of(t.id) for t in tasks)
    assert len(result(iter_id, wait=WAIT * 1000)) == 100


def test_each_item_keeps_its_own_output_and_progress(cluster, size):
    size(4)
    group = _group()
    iter_id = nbqueue.async_iter(fx.say_and_report, [(i, i % 2 == 0) for i in range(4)],
                                 group=group)
    assert result(iter_id, wait=WAIT * 1000) == [0, 1, 2, 3]
    tasks = {t.args[0]: t for t in fetch_group(group)}
    assert len(_batches_of(group)) == 1
    for i, task in tasks.items():
        if i % 2 == 0:
            assert task.output == f"item {i} says hello\n", task.output
            assert task.progress == (1, 1, f"item {i}")
        else:
            assert not task.output and task.progress is None


def test_a_long_item_shows_its_progress_while_it_runs(cluster, size):
    size(2)
    group = _group()
    iter_id = nbqueue.async_iter(fx.reports, [(1, 0.0), (40, 0.05)], group=group)
    (batch_id, _), = get_store(cluster.directory).saved.manifest(iter_id)["batches"]
    item = batch_id[:28] + f"{2:08x}"
    seen = wait_for(lambda: (nbqueue.status(item)["progress"] or (0,))[0] >= 10 and
                    nbqueue.status(item), WAIT, "the long item's progress")
    assert seen["state"] == "running" and seen["id"] == item and seen["name"].endswith(".1")
    assert nbqueue.status(batch_id[:28] + f"{1:08x}")["state"] in ("running", "done")
    assert result(iter_id, wait=WAIT * 1000) is not None
    done = nbqueue.status(item)
    assert done["state"] == "done" and done["progress"] == (40, 40, "step 40")


def test_items_of_one_argument_and_tuples_spread_travel_alike(cluster, size):
    size(10)
    plain = [1, "a", {"k": 1}, None, 2.5]
    group = _group()
    assert list(nbqueue.map(fx.echo, plain, group=group)) == [((x,), {}) for x in plain]
    assert sorted(repr(t.args) for t in fetch_group(group)) == sorted(repr((x,)) for x in plain)
    spread = [(1, 2), (3, 4)]  # a tuple is spread, as in async_iter
    assert list(nbqueue.map(fx.echo, spread)) == [((1, 2), {}), ((3, 4), {})]
    assert list(nbqueue.map(fx.echo, [1, 2], key="v")) == [((1,), {"key": "v"}),
                                                           ((2,), {"key": "v"})]
