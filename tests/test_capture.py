"""What a task writes and reports is captured with its outcome, bounded, never leaked."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

import nbqueue
from nbqueue.worker import capture
from nbqueue.worker.capture import LIMIT, Capture, TaskStream
from nbqueue.errors import ConfigurationError
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(60)


def test_output_is_interleaved_in_order_with_warnings(cluster):
    task = nbqueue.fetch(nbqueue.async_task(fx.chatter, 10), wait=30000)
    lines = task.output.splitlines()
    assert lines[:5] == [f"line {i:06d} xxxxxxxxxx" for i in range(5)]  # line 4: stderr
    assert lines[6] == "WARNING:tests.chatter:halfway at 5"
    assert len(lines) == 11 and "info record" not in task.output
    assert nbqueue.fetch(nbqueue.async_task(fx.add, 1), wait=30000).output == ""


def test_output_keeps_the_last_64k_characters_and_says_so(cluster):
    task = nbqueue.fetch(nbqueue.async_task(fx.chatter, 3000, width=50), wait=30000)
    first, rest = task.output.split("\n", 1)
    total = 3000 * 63 + len("WARNING:tests.chatter:halfway at 1500\n")
    assert first == (f"[... {total - LIMIT:,} earlier characters cut: a task's output "
                     "keeps its last 64 K characters ...]")
    assert len(rest) == LIMIT and rest.endswith(f"line {2999:06d} " + "x" * 50 + "\n")


def test_a_capture_bounds_its_memory_while_a_task_writes():
    cap = Capture("t", "", time.time(), inline=False)
    for _ in range(10_000):
        cap.add("y" * 100)
    assert cap._size <= 2 * LIMIT
    text = cap.text()
    assert text.startswith("[... 934,464 earlier characters cut")
    assert text.endswith("y" * LIMIT)


def test_sync_tasks_show_their_output_and_keep_it(store_dir, capsys):
    task = nbqueue.fetch(nbqueue.async_task(fx.chatter, 2, sync=True))
    shown = capsys.readouterr()
    assert "line 000000" in shown.out and "line 000001" in task.output
    assert not isinstance(sys.stdout, TaskStream)  # put back after the task
    print("after the task")
    assert "after the task" not in task.output


def test_writes_outside_a_task_go_where_they_went(capsys):
    stream = TaskStream(sys.stdout)
    stream.write("plain\n")
    assert capsys.readouterr().out == "plain\n"
    assert TaskStream(None).write("no stream: dropped\n") == 19  # a process without stdout
    with pytest.raises(TypeError, match="must be str"):
        cap = capture.begin("t", "", time.time())
        try:
            stream.write(b"bytes")
        finally:
            capture.end(cap)


def test_threads_of_the_task_write_to_it_when_it_is_the_only_one():
    cap = capture.begin("t", "", time.time())
    stream = TaskStream(sys.__stdout__)
    try:
        thread = threading.Thread(target=stream.write, args=("from a thread\n",))
        thread.start()
        thread.join(5)
    finally:
        details = capture.end(cap)
    assert details == {"output": "from a thread\n"}


def test_log_handler_takes_only_warnings_of_a_task():
    logger = logging.getLogger("tests.capture.x")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = capture.TaskLogHandler()
    logger.addHandler(handler)
    try:
        logger.warning("outside a task: nothing, no error")
        cap = capture.begin("t", "", time.time())
        try:
            logger.warning("careful %s", "now")
            logger.info("info")
        finally:
            details = capture.end(cap)
    finally:
        logger.removeHandler(handler)
    assert details == {"output": "WARNING:tests.capture.x:careful now\n"}


def test_report_keeps_the_last_values_and_checks_them():
    nbqueue.report(1, 2, "outside a task does nothing")
    cap = capture.begin("t", "", time.time())
    try:
        import numpy
        nbqueue.report(numpy.int64(3), numpy.float64(4.0), 12345)
        assert cap.progress == (3, 4.0, "12345") and type(cap.progress[0]) is int
        for bad in ("3", True, None):
            with pytest.raises(ConfigurationError, match="done must be a number"):
                nbqueue.report(bad)
        with pytest.raises(ConfigurationError, match="total must be a number"):
            nbqueue.report(1, "10")
        nbqueue.report(5, message="x" * 1000)
    finally:
        details = capture.end(cap)
    assert details == {"progress": (5, None, "x" * 500)}


def test_a_task_that_reports_keeps_its_last_report(cluster):
    done = nbqueue.fetch(nbqueue.async_task(fx.reports, 1000), wait=30000)
    assert done.result == 1000 and done.progress == (1000, 1000, "step 1000")
    failed = nbqueue.fetch(nbqueue.async_task(fx.reports, 3, fail=True), wait=30000)
    assert not failed.success and failed.progress == (3, 3, "step 3")
    bad = nbqueue.fetch(nbqueue.async_task(fx.bad_report, "half"), wait=30000)
    assert type(bad.exception) is ConfigurationError and "done must be a number" in bad.result


def test_report_is_cheap_in_a_tight_loop():
    cap = capture.begin("t", "", time.time())
    try:
        start = time.perf_counter()
        for i in range(100_000):
            nbqueue.report(i, 100_000)
        per_call = (time.perf_counter() - start) / 100_000
    finally:
        capture.end(cap)
    print(f"report: {per_call * 1e9:.0f} ns per call")
    assert per_call < 20e-6  # bounded loosely: a shared machine; about 0.3 µs here


def test_warnings_outside_tasks_still_reach_stderr_in_a_worker(capsys):
    """The task handler on the root logger must not silence Python's last-resort handler
    for what a worker logs outside its tasks."""
    root = logging.getLogger()
    saved = root.handlers[:]
    handler = capture.TaskLogHandler()
    root.handlers[:] = [handler]
    try:
        logging.getLogger("tests.outside").warning("outside any task")
    finally:
        root.handlers[:] = saved
    assert "outside any task" in capsys.readouterr().err


def test_a_process_forked_by_a_task_writes_to_the_real_streams(tmp_path):
    import os
    out = tmp_path / "child.txt"
    cap = capture.begin("t", "", time.time())
    try:
        pid = os.fork()
        if pid == 0:  # the child: its capture is gone, so it writes to the real stream
            try:
                stream = TaskStream(open(out, "w", buffering=1))
                stream.write("from the child\n")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    finally:
        details = capture.end(cap)
    assert out.read_text() == "from the child\n" and details is None
