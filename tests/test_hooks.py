"""nbqueue.hooks: finding a task's hook and calling it."""

from __future__ import annotations

import logging
import pickle

import cloudpickle

from nbqueue.worker.hooks import find_hook, keep_local_hook, local_hooks, run_hook
from nbqueue.disk.records import Header


def _header(task_id, hook_ref=None, hook_bytes=None):
    return Header(task_id, "name", "math.floor", "math.floor", None,
                  pickle.dumps(((1.5,), {})), hook_ref=hook_ref, hook_bytes=hook_bytes)


def test_a_local_hook_is_the_very_object_and_found_once():
    def hook(task):
        return task
    keep_local_hook("local-1", hook)
    assert find_hook(_header("local-1", hook_bytes=cloudpickle.dumps(print))) is hook
    assert "local-1" not in local_hooks
    assert find_hook(_header("local-1")) is None


def test_a_dotted_path_or_a_pickled_hook():
    assert find_hook(_header("a", hook_ref="math.floor")).__name__ == "floor"
    assert find_hook(_header("b", hook_bytes=cloudpickle.dumps(len)))([1, 2]) == 2


def test_a_failing_hook_is_logged_not_raised(caplog):
    class Task:
        name, id = "name", "id"

    def hook(task):
        raise SystemExit(1)
    with caplog.at_level(logging.ERROR, logger="nbqueue"):
        run_hook(hook, Task())
    assert "hook 'hook' of task name (id) raised" in caplog.text
