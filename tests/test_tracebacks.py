"""A task's exception comes back whole: the object, its chain, a traceback with source lines."""

from __future__ import annotations

import linecache
import pickle

import cloudpickle
import pytest

import nbqueue
from nbqueue import RemoteError, TaskTimeout, WorkerLost
from nbqueue.worker.tracebacks import (WithSources, describe, exception_from_text, origins,
                                pack_exception, unpack_exception, with_sources)
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(60)


def _raised(func):
    try:
        func()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def test_the_chain_is_linked_again_after_a_round_trip():
    exc = unpack_exception(pack_exception(_raised(fx.raises_chain)))
    assert type(exc) is ValueError and str(exc) == "last"
    assert type(exc.__cause__) is KeyError and exc.__suppress_context__
    assert type(exc.__cause__.__context__) is OSError
    assert str(exc.__cause__.__context__) == "first"


def test_an_exception_that_cannot_come_back_is_a_remote_error_with_its_name():
    for func, name, message in (
            (fx.raises_unpicklable, "tests.tasks_fixtures.Unpicklable", "code 7: cannot come back"),
            (fx.raises_with_lock, "RuntimeError", "holds a lock")):
        exc = unpack_exception(pack_exception(_raised(func)))
        assert isinstance(exc, RemoteError) and isinstance(exc, nbqueue.NbqueueError)
        assert (exc.type_name, exc.message) == (name, message)
        assert str(exc) == f"{name}: {message}"


def test_the_text_of_a_failure_the_cluster_decided_names_its_exception():
    assert type(exception_from_text("TaskTimeout: timed out after 1 s")) is TaskTimeout
    assert type(exception_from_text("WorkerLost: the worker died (SIGKILL)")) is WorkerLost
    assert str(exception_from_text("WorkerLost: the worker died")) == "the worker died"
    builtin = exception_from_text("KeyError: 'x'\n\nTraceback ...")
    assert type(builtin) is KeyError
    other = exception_from_text("somepackage.Oops: it broke")
    assert isinstance(other, RemoteError) and other.type_name == "somepackage.Oops"
    assert isinstance(exception_from_text("no colon here"), RemoteError)


def test_describe_gives_the_result_text_and_the_whole_traceback():
    text, shown = describe(_raised(fx.raises_chain))
    assert text.startswith("ValueError: last\n\nTraceback (most recent call last):")
    assert "The above exception was the direct cause" in shown
    assert "During handling of the above exception" in shown
    assert '{}["missing"]' in shown


def test_notebook_code_brings_its_file_name_and_lines(tmp_path):
    filename = str(tmp_path / "ipykernel_0" / "123.py")  # a cell's file: not on disk
    source = "def helper(x):\n    return 1 / x\n\n\ndef task(x):\n    return helper(x) + 1\n"
    code = compile(source, filename, "exec")
    namespace = {"__name__": "__main__"}
    exec(code, namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        files, sources = origins(namespace["task"])
        assert {name for _, name in files} == {filename}
        assert sources[filename][0] == 1 and "return 1 / x" in "".join(sources[filename][1])
        shipped = cloudpickle.dumps(WithSources(namespace["task"]))
    finally:
        del linecache.cache[filename]
    task = pickle.loads(shipped)  # as a worker does: the lines are in its linecache again
    assert task(2) == 1.5
    _, shown = describe(_raised(lambda: task(0)))
    assert f'File "{filename}", line 2, in helper' in shown and "return 1 / x" in shown
    del linecache.cache[filename]


def test_with_sources_keeps_lines_a_process_already_has():
    filename = "<cell-known>"
    linecache.cache[filename] = (6, None, ["known\n"], filename)
    try:
        with_sources(None, [], {filename: (1, ["shipped\n"])})
        assert linecache.getline(filename, 1) == "known\n"
    finally:
        del linecache.cache[filename]


def test_a_failure_keeps_its_exception_and_traceback(store_dir):
    task_id = nbqueue.async_task(fx.raises_chain, sync=True)
    task = nbqueue.fetch(task_id)
    assert type(task.exception) is ValueError and type(task.exception.__cause__) is KeyError
    assert task.traceback.startswith("Traceback (most recent call last):")
    assert "raise ValueError(\"last\") from exc" in task.traceback
    assert "nbqueue/worker.py" not in task.traceback
    assert task.result.startswith("ValueError: last")  # Django Q: the error text
    with pytest.raises(ValueError, match="last") as raised:
        task.reraise()
    assert raised.value is not task.exception  # a fresh copy, with the task's traceback
    assert any("raises_chain" in note for note in raised.value.__notes__)
    success = nbqueue.fetch(nbqueue.async_task(fx.add, 1, sync=True))
    assert success.exception is None and success.traceback is None
    with pytest.raises(ValueError, match="succeeded"):
        success.reraise()


def test_exceptions_come_back_from_workers(cluster):
    ids = {name: nbqueue.async_task(getattr(fx, name), group="raised")
           for name in ("raises_chain", "raises_unpicklable", "boom", "exits")}
    tasks = {name: nbqueue.fetch(task_id, wait=30000) for name, task_id in ids.items()}
    assert type(tasks["raises_chain"].exception.__cause__) is KeyError
    assert isinstance(tasks["raises_unpicklable"].exception, RemoteError)
    assert type(tasks["boom"].exception) is ValueError
    assert type(tasks["exits"].exception) is SystemExit
    assert 'raise ValueError(message)' in tasks["boom"].traceback
    assert all(t.pid and t.pid != __import__("os").getpid() for t in tasks.values())


def test_a_task_killed_on_its_timeout_has_a_task_timeout(cluster):
    task = nbqueue.fetch(nbqueue.async_task(fx.ignore_alarm_then_sleep, 30, timeout=0.5),
                         wait=30000)
    assert type(task.exception) is TaskTimeout
    assert task.traceback.startswith("TaskTimeout: timed out after 0.5 s")


def test_old_records_without_an_exception_read_from_their_text(store_dir):
    from nbqueue.disk.directory import get_store
    task_id = nbqueue.async_task(fx.boom, "old", sync=True)
    store = get_store(store_dir)
    record = dict(store.saved.get(task_id))
    for key in ("exception", "traceback", "began", "pid"):
        record.pop(key)
    store.saved.write([record], replace=True)
    task = nbqueue.fetch(task_id)
    assert type(task.exception) is ValueError and str(task.exception) == "old"
    assert task.traceback == task.result and task.began is None and task.pid is None
