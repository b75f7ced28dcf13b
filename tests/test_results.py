"""Reading outcomes back without a cluster: bad waits refused at the call, waits that can
never end saying why, and inline (``sync=True``) outcomes read through every call."""

from __future__ import annotations

import warnings

import pytest

import nbqueue
from nbqueue import (async_iter, async_task, count_group, delete_cached, delete_group, fetch,
                     fetch_group, flush, queue_size, result, result_group)
from nbqueue.disk import store
from nbqueue.errors import ConfigurationError, WaitWarning
from nbqueue.disk.directory import sent

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]


def test_a_bad_wait_is_refused(store_dir):
    with pytest.raises(ConfigurationError, match="wait"):
        nbqueue.result("some-id", wait=-5)


@pytest.fixture
def quick_hints(monkeypatch):
    monkeypatch.setattr(store, "HINT_AFTER", 0.05)


def _hint(call) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call() is None
    found = [str(w.message) for w in caught if issubclass(w.category, WaitWarning)]
    assert len(found) == 1, found
    return found[0]


def test_waits_without_a_cluster_say_why(store_dir, quick_hints):
    unsaved = async_task("math.floor", 1.5, save=False)
    assert "save=False" in _hint(lambda: result(unsaved, wait=300))
    cached = async_task("math.floor", 2.5, cached=True)
    assert "was sent with cached=True" in _hint(lambda: result(cached, wait=300))
    queued = async_task("math.floor", 3.5)
    assert "no nbqueue cluster serves" in _hint(lambda: result(queued, wait=300))
    assert "group 'g' is not complete and no nbqueue cluster serves" in _hint(
        lambda: result_group("g", count=2, wait=300))


def test_inline_outcomes_are_read_back(store_dir):
    first = async_task("math.floor", 2.5, group="inline", sync=True)
    async_task("math.sqrt", -1, group="inline", sync=True)
    assert result(first) == 2 and fetch(first).success
    assert count_group("inline") == 2 and count_group("inline", failures=True) == 1
    assert result_group("inline") == [2]
    assert len(fetch_group("inline")) == 2
    iter_id = async_iter("math.floor", [1.5, 2.5, 3.5], sync=True)
    assert result(iter_id) == [1, 2, 3]
    cached = async_task("math.floor", 4.5, cached=True, sync=True)
    assert result(cached, cached=True) == 4 and result(cached) is None
    assert delete_cached(cached) is True and delete_cached(cached) is False


def test_delete_group_starts_the_group_afresh(broker):
    async_task("math.floor", 1.5, group="again", sync=True)
    assert sent(broker.directory).enqueued["again"] == 1
    assert delete_group("again", tasks=True) == 1
    assert "again" not in sent(broker.directory).enqueued
    assert count_group("again") == 0 and result_group("again") is None


def test_queue_size_counts_what_waits(store_dir):
    for _ in range(3):
        async_task("math.floor", 1.5)
    flush()
    assert queue_size() == 3
