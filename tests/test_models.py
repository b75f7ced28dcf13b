"""nbqueue.models: Task, Success and Failure as views of records in a real store."""

from __future__ import annotations

import pickle
import time
from datetime import timezone

import pytest

import nbqueue
from nbqueue.models import Failure, Success, Task, group_count
from nbqueue.disk.records import Cause, Header, Outcome, make_record
from nbqueue.disk.directory import get_store


def _header(task_id, group="g", name=None):
    return Header(task_id, name or f"name-{task_id}", "math.floor", "math.floor", None,
                  pickle.dumps(((2.5,), {"k": 1})), group=group, enqueued=time.time() - 2)


def _store(records):
    store = get_store(nbqueue.get_broker().directory)
    store.save(records)
    return store


def test_a_record_is_made_of_the_header_and_the_outcome(store_dir):
    header = _header("a")
    record = make_record(header, Outcome("a", True, pickle.dumps(2), 0.0, time.time()), attempt=2)
    assert record["result"] == pickle.dumps(2) and record["attempt_count"] == 2
    assert record["started"] == header.enqueued and record["success"] is True


def test_task_fields_times_and_lazy_result(store_dir):
    outcome = Outcome("a", True, pickle.dumps({"big": "value"}), 0.0, time.time())
    store = _store([make_record(_header("a"), outcome, attempt=1)])
    task = Task.get_task("a", store=store)
    assert task.id == "a" and task.name == "name-a" and task.func == "math.floor"
    assert "result" not in task._decoded  # nothing unpickled until it is read
    assert task.args == (2.5,) and task.kwargs == {"k": 1}
    assert task.result == {"big": "value"}
    assert task.started.tzinfo is timezone.utc and task.stopped > task.started
    assert 1.5 < task.time_taken() < 60
    assert task == Task.get_task("name-a", store=store) and hash(task) == hash("a")
    assert repr(task).startswith("<Task 'name-a' math.floor(2.5, k=1) → {'big': 'value'}")
    assert repr(task).endswith("· group 'g'>")


def test_success_and_failure_are_filtered_views(store_dir):
    ok = make_record(_header("ok"), Outcome("ok", True, pickle.dumps(1), 0.0, time.time()), 1)
    bad = make_record(_header("bad"), Outcome("bad", False, "ValueError: no", 0.0, time.time()), 1)
    store = _store([ok, bad])
    assert isinstance(Success.get_task("ok", store=store), Success)
    assert Success.get_task("bad", store=store) is None
    assert Failure.get_task("bad", store=store).result == "ValueError: no"
    assert [t.id for t in Failure.get_task_group("g", store=store)] == ["bad"]
    assert group_count(store.saved, "g") == 2 and group_count(store.saved, "g", True) == 1
    assert Task.get_group_count("g", store=store) == 2
    assert Success.get_group_count("g", store=store) == 1


def test_save_turns_a_cached_task_into_a_saved_one(store_dir):
    header = _header("c")._replace(cached=True)
    store = _store([make_record(header, Outcome("c", True, pickle.dumps(5), 0.0, time.time()), 1)])
    task = Task.get_task("c", cached=True, store=store)
    assert task.cached and Task.get_task("c", store=store) is None
    task.save()
    assert not task.cached and Task.get_task("c", store=store).result == 5


@pytest.mark.parametrize("bad", [None, 5, ""])
def test_a_bad_id_is_a_clear_error(store_dir, bad):
    with pytest.raises(nbqueue.ConfigurationError, match="non-empty string"):
        Task.get_task(bad)


def test_a_failure_of_each_cause_has_it_and_a_success_none(store_dir):
    now = time.time()
    failures = [make_record(_header(cause.value, group="causes"),
                            Outcome(cause.value, False, "Error: text", 0.0, now, cause=cause), 1)
                for cause in Cause]
    ok = make_record(_header("ok", group="causes"),
                     Outcome("ok", True, pickle.dumps(1), 0.0, now), 1)
    store = _store(failures + [ok])
    for cause in Cause:
        task = Failure.get_task(cause.value, store=store)
        assert task is not None and task.cause is cause and task.cause == cause.value
    assert Success.get_task("ok", store=store).cause is None
    assert nbqueue.Cause is Cause
