"""The code that runs a task: outcomes, failure text, timeouts, slots."""

from __future__ import annotations

import os
import pickle
import threading
import time

import cloudpickle
import pytest

from nbqueue import worker
from nbqueue.disk import hosts
from nbqueue.disk.records import Cause, Item
from nbqueue.errors import TaskCancelled, TaskFunctionError

pytestmark = pytest.mark.timeout(30)


def _item(func, *args, timeout=None, **kwargs):
    ref = func if isinstance(func, str) else None
    blob = None if ref else cloudpickle.dumps(func)
    return Item("6f1d3c3e-0000-4000-8000-000000000000", ref, blob,
                cloudpickle.dumps((args, kwargs)), timeout)


def test_execute_success_pickles_the_value():
    task_id, success, blob, started, stopped = worker.execute(_item("math.copysign", 2, -2))[:5]
    assert success and pickle.loads(blob) == -2.0 and stopped >= started


def test_execute_lambda_result_uses_cloudpickle():
    outcome = worker.execute(_item(lambda: (lambda x: x + 1)))
    assert outcome[1] and cloudpickle.loads(outcome[2])(1) == 2


def test_failure_text_has_error_first_and_no_worker_frames():
    def inner():
        raise KeyError("missing")
    _, success, text, _, _ = worker.execute(_item(inner))[:5]
    assert not success
    assert text.splitlines()[0] == "KeyError: 'missing'"
    assert "in inner" in text and "worker.py" not in text


def test_unpicklable_result_is_a_clear_failure():
    _, success, text, _, _ = worker.execute(_item(threading.Lock))[:5]
    assert not success and "cannot be pickled" in text and "return plain data" in text


def test_tier_one_timeout_interrupts_sleep_in_main_thread():
    started = time.monotonic()
    _, success, text, _, _ = worker.execute(_item(time.sleep, 5, timeout=0.3))[:5]
    assert not success and text.startswith("TaskTimeout: timed out after 0.3 s")
    assert time.monotonic() - started < 2
    assert worker.execute(_item(time.sleep, 5, timeout=0.1)).cause is Cause.TIMEOUT


def test_swallowed_timeout_is_still_a_failure():
    def stubborn():
        try:
            time.sleep(5)
        except Exception:
            return "pretend all is well"
    outcome = worker.execute(_item(stubborn, timeout=0.2))
    _, success, text, _, _ = outcome[:5]
    assert not success and "timed out after 0.2 s" in text
    assert outcome.cause is Cause.TIMEOUT


def test_the_cause_of_an_outcome_is_what_ended_the_task(tmp_path):
    def cancelled():
        raise TaskCancelled("the task was cancelled with nbqueue.cancel")

    def exits():
        raise SystemExit(3)

    assert worker.execute(_item("math.floor", 1.5)).cause is None
    assert worker.execute(_item("math.floor", "x")).cause is Cause.RAISED
    assert worker.execute(_item(exits)).cause is Cause.RAISED
    assert worker.execute(_item(cancelled)).cause is Cause.CANCELLED
    skipped = _item("math.floor", 1.5)
    os.makedirs(tmp_path / hosts.CANCELLED_DIR)
    open(tmp_path / hosts.CANCELLED_DIR / skipped.id, "w").close()
    (outcome,) = worker.run_chunk(str(tmp_path), [skipped])
    assert not outcome.success and outcome.cause is Cause.CANCELLED
    assert outcome.result == "TaskCancelled: cancelled before it started"


def test_run_chunk_notes_each_task_it_begins(tmp_path):
    items = [_item("math.floor", 1.5)._replace(token="row1.0"),
             _item("math.floor", 2.5)._replace(token="row1.1")]
    worker.run_chunk(str(tmp_path), items)
    assert hosts.read_begun(str(tmp_path / str(os.getpid()))) == {"row1.0", "row1.1"}


def test_run_chunk_marks_slot_and_returns_outcomes(tmp_path):
    outcomes = worker.run_chunk(str(tmp_path), [_item("math.floor", 1.5), _item(os.getpid)])
    assert [o[1] for o in outcomes] == [True, True]
    assert pickle.loads(outcomes[1][2]) == os.getpid()
    assert hosts.read_slot(str(tmp_path / str(os.getpid()))) is None  # idle again


def test_a_cancel_marker_stops_only_the_delivery_it_names(slot_dir):
    """A marker left of a cancelled delivery never cancels a later delivery of the same
    task (a ``retry``): it names the lease token it was written for."""
    from nbqueue.disk.hosts import CANCELLED_DIR
    from nbqueue.worker import cancelled

    folder = os.path.join(slot_dir, CANCELLED_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "task-1"), "w") as marker:
        marker.write("row.1")
    assert cancelled(slot_dir, "task-1", "row.1")
    assert not cancelled(slot_dir, "task-1", "row.2")  # the retry's delivery
    assert cancelled(slot_dir, "task-1")  # no delivery named: any
    assert not cancelled(slot_dir, "task-2", "row.1")
    open(os.path.join(folder, "task-3"), "w").close()  # one naming no delivery: all
    assert cancelled(slot_dir, "task-3", "row.9")
