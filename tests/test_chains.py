"""Chains (``async_chain``, ``Chain``; ``nbqueue.disk.chains``), on a real loky cluster and
inline: tasks run one after another, each once the one before it succeeded; after a
failure the rest never run and are failures saying why, so a chain's counts complete."""

from __future__ import annotations

import pytest

import nbqueue
from nbqueue import Cause, Chain, ConfigurationError, async_chain, count_group, fetch_group
from tests import tasks_fixtures as fx
from tests.test_kernel import read_log
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)
WAIT = 30_000  # ms


@pytest.fixture
def cluster(store_dir):
    with nbqueue.Cluster(workers=2) as running:
        yield running


def test_async_chain_and_chain_as_django_q_documents_them(cluster):
    group = async_chain([("math.copysign", (1, -1)), ("math.floor", (1,))])
    assert nbqueue.result_group(group, count=2, wait=WAIT) == [-1.0, 1]
    chain = Chain(cached=True)
    assert chain.current() is None and chain.result() is None
    chain.append("math.copysign", 1, -1)
    assert chain.append("math.floor", 1) == chain.length() == 2
    chain.run()
    assert chain.result(wait=WAIT) == [-1.0, 1]
    assert chain.current() == 2 and [t.result for t in chain.fetch()] == [-1.0, 1]


def test_each_task_starts_after_the_one_before_it_ended(cluster, tmp_path):
    log = str(tmp_path / "runs")
    chain = Chain([(fx.logged, (log, i, 0.1)) for i in range(4)])
    chain.run()
    assert chain.result(wait=WAIT) == [0, 1, 2, 3]
    entries = read_log(log)
    assert [(kind, number) for kind, number, _, _ in entries] == [
        (kind, i) for i in range(4) for kind in ("start", "stop")]
    stops = {n: when for kind, n, _, when in entries if kind == "stop"}
    starts = {n: when for kind, n, _, when in entries if kind == "start"}
    assert all(starts[i + 1] >= stops[i] for i in range(3))


@pytest.mark.parametrize("sync", [False, True])
def test_a_chain_of_5_with_a_failure_in_the_middle_runs_none_after_it(store_dir, tmp_path,
                                                                      sync):
    log = str(tmp_path / "runs")
    chain = Chain(sync=sync)
    for i in range(5):
        if i == 2:
            chain.append(fx.boom, "link 2 broke")
        else:
            chain.append(fx.logged, log, i)
    if sync:
        chain.run()
    else:
        with nbqueue.Cluster(workers=2):
            chain.run()
            assert chain.fetch(failures=True, wait=WAIT) is not None
    tasks = chain.fetch(failures=True)
    assert chain.current() == 5 and len(tasks) == 5
    assert [t.success for t in tasks] == [True, True, False, False, False]
    assert "link 2 broke" in tasks[2].result and tasks[2].cause is Cause.RAISED
    for later in tasks[3:]:
        assert later.cause is Cause.DEPENDENCY and later.attempt_count == 0
        assert later.result.startswith("DependencyFailed") and "link 2 broke" in later.result
    assert sorted({n for _, n, _, _ in read_log(log)}) == [0, 1]  # none after it ran
    values = chain.result()
    assert values[:2] == [0, 1] and "link 2 broke" in values[2]
    assert [t.success for t in chain.fetch()] == [True, True]  # successes only


def test_retrying_the_failed_task_of_a_chain_runs_the_rest(cluster, tmp_path):
    flag = str(tmp_path / "flag")
    chain = Chain([(fx.add, (1, 1)), (fx.fail_until, (flag, 1)), (fx.add, (2, 2))])
    group = chain.run()
    wait_for(lambda: count_group(group) == 3, WAIT / 1000, "the chain's outcomes")
    failed = [t for t in fetch_group(group) if not t.success]
    assert len(failed) == 2  # the failed task, and the one after it that never ran
    assert nbqueue.retry(failed[0].id)
    wait_for(lambda: count_group(group, failures=True) == 0 and count_group(group) == 3,
             WAIT / 1000, "the rest of the chain after the retry")
    assert chain.result() == [2, 2, 4]


def test_bad_chains_are_refused_at_the_call(store_dir):
    with pytest.raises(ConfigurationError, match="at least one"):
        async_chain([])
    with pytest.raises(ConfigurationError, match="entry"):
        async_chain([(fx.add, 1, 2, 3)])
    with pytest.raises(ConfigurationError, match="entry"):
        async_chain([42])


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_cancelling_a_chain_ends_it(store_dir):
    chain = Chain([(fx.nap, (0, "first")), (fx.add, (1, 2)), (fx.add, (3, 4))])
    group = chain.run()  # no cluster yet: its first task waits in the queue
    assert nbqueue.cancel_group(group) == 1
    tasks = chain.fetch(failures=True, wait=WAIT)
    assert [t.cause for t in tasks] == [Cause.CANCELLED, Cause.DEPENDENCY, Cause.DEPENDENCY]
    with nbqueue.Cluster(workers=1):  # nothing of it is left to run
        assert nbqueue.queue_size() == 0
