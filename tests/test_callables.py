"""nbqueue.worker.callables: dotted paths resolved, callables checked and named, and a
task's hook found and called."""

from __future__ import annotations

import collections
import functools
import logging
import math
import os.path
import pickle

import cloudpickle
import pytest

from nbqueue.disk.records import Header
from nbqueue.errors import TaskFunctionError
from nbqueue.worker import callables
from nbqueue.worker.callables import (
    callable_name,
    check_callable,
    dotted_path,
    find_hook,
    forget_local_hook,
    keep_local_hook,
    local_hooks,
    resolve,
    run_hook,
)
from tests import tasks_fixtures as fx


def _header(task_id, hook_ref=None, hook_bytes=None):
    return Header(task_id, "name", "math.floor", "math.floor", None,
                  pickle.dumps(((1.5,), {})), hook_ref=hook_ref, hook_bytes=hook_bytes)


# -- dotted paths ----------------------------------------------------------------------


def test_resolve_dotted_paths():
    assert resolve("math.floor") is math.floor
    assert resolve("os.path.join") is os.path.join
    assert resolve("collections.OrderedDict.fromkeys")
    with pytest.raises(TaskFunctionError, match="No module named 'my'"):
        resolve("my.buggy.code")
    with pytest.raises(TaskFunctionError, match="has no attribute"):
        resolve("math.nope")
    with pytest.raises(TaskFunctionError, match="not callable"):
        resolve("math.pi")
    with pytest.raises(TaskFunctionError, match="not a dotted path"):
        resolve("floor")


def test_a_resolved_path_is_remembered_and_a_failed_one_is_not():
    assert resolve("math.ceil") is math.ceil
    assert callables._resolved["math.ceil"] is math.ceil
    with pytest.raises(TaskFunctionError):
        resolve("math.nope")
    assert "math.nope" not in callables._resolved


def test_the_worker_runs_what_resolve_resolves():
    from nbqueue import worker
    assert worker.resolve is resolve


def test_a_top_level_function_of_a_module_travels_by_its_dotted_path():
    assert dotted_path(fx.add) == "tests.tasks_fixtures.add"
    assert dotted_path(math.floor) == "math.floor"
    assert resolve(dotted_path(fx.add)) is fx.add


def test_other_callables_have_no_dotted_path():
    def nested(x):
        return x
    scope = {"__name__": "__main__"}
    exec("def cell(x):\n    return x\n", scope)
    assert dotted_path(nested) is None  # <locals> in its qualified name
    assert dotted_path(lambda x: x) is None
    assert dotted_path(scope["cell"]) is None  # a notebook's function
    assert dotted_path(functools.partial(fx.add, 1)) is None
    assert dotted_path(collections.OrderedDict.fromkeys) is None  # a method of a class


def test_a_module_pickled_by_value_is_not_shipped_by_path():
    cloudpickle.register_pickle_by_value(fx)
    try:
        assert dotted_path(fx.add) is None
    finally:
        cloudpickle.unregister_pickle_by_value(fx)
    assert dotted_path(fx.add) == "tests.tasks_fixtures.add"


# -- checking and naming ---------------------------------------------------------------


def test_a_callable_is_named_by_its_module_and_qualified_name():
    def nested():
        pass
    assert callable_name(fx.add) == "tests.tasks_fixtures.add"
    assert callable_name(nested).endswith(
        "test_a_callable_is_named_by_its_module_and_qualified_name.<locals>.nested")
    assert callable_name(functools.partial(fx.add, 1)) == "functools.partial"


def test_check_callable_gives_the_name_and_the_path_given():
    assert check_callable("the task function", "math.floor") == ("math.floor", "math.floor")
    assert check_callable("the task function", fx.add) == ("tests.tasks_fixtures.add", None)


def test_check_callable_refuses_at_the_call_what_a_worker_could_not_run():
    with pytest.raises(TaskFunctionError, match="cannot resolve 'my.buggy.code'"):
        check_callable("the task function", "my.buggy.code")
    # a sync=True task's path is left to the run, which stores it as a Failure
    assert check_callable("the task function", "my.buggy.code", strict=False) == (
        "my.buggy.code", "my.buggy.code")
    with pytest.raises(TypeError, match="option 'hook' must be a callable or a dotted path "
                                        "string like 'math.floor', got int"):
        check_callable("option 'hook'", 3)


# -- hooks -----------------------------------------------------------------------------


def test_a_local_hook_is_the_very_object_and_found_once():
    def hook(task):
        return task
    keep_local_hook("local-1", hook)
    assert find_hook(_header("local-1", hook_bytes=cloudpickle.dumps(print))) is hook
    assert "local-1" not in local_hooks
    assert find_hook(_header("local-1")) is None


def test_a_forgotten_local_hook_is_not_found():
    keep_local_hook("local-2", print)
    forget_local_hook("local-2")
    forget_local_hook("local-2")  # a second time: nothing to drop
    assert "local-2" not in local_hooks
    assert find_hook(_header("local-2", hook_ref="math.floor")) is math.floor


def test_a_dotted_path_or_a_pickled_hook():
    assert find_hook(_header("a", hook_ref="math.floor")).__name__ == "floor"
    assert find_hook(_header("b", hook_bytes=cloudpickle.dumps(len)))([1, 2]) == 2


def test_a_hook_that_does_not_resolve_raises_as_resolve_does():
    with pytest.raises(TaskFunctionError, match="cannot resolve 'math.nope'"):
        find_hook(_header("c", hook_ref="math.nope"))


def test_a_failing_hook_is_logged_not_raised(caplog):
    class Task:
        name, id = "name", "id"

    def hook(task):
        raise SystemExit(1)
    with caplog.at_level(logging.ERROR, logger="nbqueue"):
        run_hook(hook, Task())
    assert "hook 'hook' of task name (id) raised" in caplog.text
