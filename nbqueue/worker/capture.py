"""What a running task writes and reports: captured per task, bounded, shown live.

In a worker, ``install`` puts a ``TaskStream`` in place of ``sys.stdout`` and
``sys.stderr`` and a handler of WARNING and above on the root logger. While a task
runs (``begin`` .. ``end``) what it writes goes to its ``Capture``, interleaved in
order, keeping the last LIMIT characters; outside a task it goes where it went before.
The text travels with the task's outcome (``Task.output``), so it no longer lands in
whichever notebook cell happens to run.

``report(done, total, message)`` only sets the running task's progress: cheap enough
for a tight loop. A task that runs longer than LIVE_AFTER gets a *live row* in the
store's ``state`` part, written by one thread of the worker (``LiveRows``) at most every
LIVE_EVERY seconds while its output or progress changes, and every REFRESH seconds
otherwise (``nbqueue.disk.live_rows.REFRESH``); ``nbqueue.status`` and ``nbqueue.output`` read
it from any process.

Workers import this module: it imports only the standard library until a live row is
written.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import sys
import threading
import time
from typing import Any

from nbqueue.errors import ConfigurationError

log = logging.getLogger(__name__)

LIMIT = 64 * 1024  # characters of output kept per task: the last ones
LIVE_AFTER = 0.5  # seconds a task runs before it gets a live row
LIVE_EVERY = 0.5  # seconds between two writes of a changing live row
LIVE_POLL = 0.25  # seconds between two looks of the live-row thread
MESSAGE_LIMIT = 500  # characters of a progress message kept

_active: dict[int, Capture] = {}  # thread ident -> the task that thread runs
# a process forked by a task writes where its parent's streams go, not into a copy
os.register_at_fork(after_in_child=_active.clear)


class Capture:
    """The output and progress of one task while it runs (made for every task: the
    defaults are class attributes, so that a task that writes nothing costs little)."""

    progress: tuple[Any, Any, str | None] | None = None
    changed = False  # output or progress changed since its live row was written
    written = 0.0  # when its live row was last written
    live = False  # whether it has a live row
    running = True
    _size = 0
    _cut = 0

    def __init__(
        self, task_id: str, token: str, started: float, inline: bool, thread: int = 0
    ) -> None:
        self.task_id = task_id
        self.token = token
        self.started = started
        self.inline = inline
        self._parts: list[str] = []
        self.thread = thread or threading.get_ident()

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        self.changed = True
        if self._size > 2 * LIMIT:
            whole = "".join(self._parts)
            self._cut += len(whole) - LIMIT
            self._parts, self._size = [whole[-LIMIT:]], LIMIT

    def text(self) -> str:
        """The output so far: the last LIMIT characters, saying so where it was cut."""
        parts = list(self._parts)
        if not parts:
            return ""
        whole = "".join(parts)
        cut = self._cut + max(0, len(whole) - LIMIT)
        if not cut:
            return whole
        return (
            f"[... {cut:,} earlier characters cut: a task's output keeps its last "
            f"{LIMIT // 1024} K characters ...]\n" + whole[-LIMIT:]
        )


def current() -> Capture | None:
    """The task run by this thread; in a worker running one task, the task also for the
    threads it started."""
    capture = _active.get(threading.get_ident())
    if capture is None and len(_active) == 1:
        try:
            (capture,) = _active.values()
        except ValueError:  # it ended meanwhile
            return None
        if capture.inline:
            return None  # sync=True: the kernel's other threads write their own things
    return capture


_ending = threading.Lock()  # a task ends, or its live row is written: one at a time


def begin(task_id: str, token: str, started: float, inline: bool = False) -> Capture:
    thread = threading.get_ident()
    capture = _active[thread] = Capture(task_id, token, started, inline, thread)
    return capture


def end(capture: Capture) -> dict[str, Any] | None:
    """Stop capturing; what the outcome carries of it (None when there is nothing)."""
    if time.time() - capture.started < LIVE_AFTER / 2:  # no live row can be on its way
        capture.running = False
    else:
        with _ending:  # a live row being written is written whole first
            capture.running = False
    _active.pop(capture.thread, None)
    if not capture._parts and capture.progress is None and not capture.live:
        return None
    return _details(capture)


def item_ended(capture: Capture) -> dict[str, Any] | None:
    """End the item a batch's capture holds, leaving it in place, empty, for the next
    (``capture.task_id`` and ``capture.started`` set, in that order): what ``end`` returns
    for it. A batch's items may take microseconds each: one capture serves them all. One
    that ran long may have a live row on its way: then under the live rows' lock, and the
    capture is left between two items (no live row is written for it)."""
    if time.time() - capture.started < LIVE_AFTER / 2:
        if not capture._parts and capture.progress is None:
            return None
        short = _details(capture)
        _empty(capture)
        return short
    with _ending:
        kept = capture._parts or capture.progress is not None or capture.live
        details = _details(capture) if kept else None
        _empty(capture)
        capture.started = BETWEEN
    return details


BETWEEN = float("inf")  # a batch's capture's start time between two items


def _empty(capture: Capture) -> None:
    capture._parts, capture._size, capture._cut = [], 0, 0
    capture.progress, capture.changed, capture.live, capture.written = None, False, False, 0.0


def _details(capture: Capture) -> dict[str, Any]:
    output = capture.text()
    details: dict[str, Any] = {}
    if output:
        details["output"] = output
    if capture.progress is not None:
        details["progress"] = capture.progress
    if capture.live:
        details["live"] = True
    return details


def report(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report the progress of the task that calls it: ``done`` out of ``total`` (None:
    unknown), and a short ``message``. ``nbqueue.status`` and the progress panels show
    it while the task runs. Cheap enough for a tight loop: it only keeps the latest
    values, which a worker thread writes at most twice a second. Outside a task it does
    nothing."""
    capture = current()
    if capture is None:
        return
    if type(done) not in _NUMBERS or (total is not None and type(total) not in _NUMBERS):
        done, total = _numbers(done, total)
    if message is not None:
        message = str(message)[:MESSAGE_LIMIT]
    capture.progress = (done, total, message)
    capture.changed = True


_NUMBERS = (int, float)


def _numbers(done: Any, total: Any) -> tuple[float, float | None]:
    """``done`` and ``total`` as plain numbers (numpy's too), or a clear error."""
    return _number("done", done), None if total is None else _number("total", total)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(
            f"nbqueue.report: {name} must be a number, got "
            f"{value!r}; call it as report(done, total=None, "
            "message=None)"
        )
    return int(value) if isinstance(value, numbers.Integral) else float(value)


# -- where the output goes ------------------------------------------------------------


class TaskStream:
    """Stands for ``sys.stdout``/``sys.stderr``: the running task's text goes to its
    capture (and, for ``sync=True``, on to the stream too); other text to the stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        capture = current()
        if capture is None:
            return len(text) if self.stream is None else self.stream.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        capture.add(text)
        if capture.inline and self.stream is not None:
            self.stream.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self.stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class TaskLogHandler(logging.Handler):
    """Log records of WARNING and above that reach the root logger, into the running
    task's output (records outside a task are left to the other handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(logging.BASIC_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        capture = current()
        if capture is None:  # as if this handler were not there
            last = logging.lastResort
            if (
                last is not None
                and logging.getLogger().handlers == [self]
                and record.levelno >= last.level
            ):
                last.handle(record)
            return
        try:
            capture.add(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed: list[TaskLogHandler] = []


def install() -> None:
    """In a worker process: capture what its tasks write, from now on."""
    if _installed:
        return
    sys.stdout = TaskStream(sys.stdout)
    sys.stderr = TaskStream(sys.stderr)
    handler = TaskLogHandler()
    logging.getLogger().addHandler(handler)
    _installed.append(handler)


class inline_capture:
    """``sync=True`` in the caller's process: capture, and show, what the task writes,
    while it runs only."""

    def __enter__(self) -> None:
        self._streams = sys.stdout, sys.stderr
        self._handler = None if _installed else TaskLogHandler()
        if not isinstance(sys.stdout, TaskStream):
            sys.stdout = TaskStream(sys.stdout)
        if not isinstance(sys.stderr, TaskStream):
            sys.stderr = TaskStream(sys.stderr)
        if self._handler is not None:
            logging.getLogger().addHandler(self._handler)

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self._streams
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)


# -- live rows ----------------------------------------------------------------------------


class LiveRows:
    """The thread of a worker that writes the live rows of its long tasks."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._broken = False
        threading.Thread(target=self._loop, name="nbqueue-live", daemon=True).start()

    def _loop(self) -> None:
        from nbqueue.disk import live_rows  # the store's modules: only once a task runs

        self._rows = live_rows
        while not self._broken:
            time.sleep(LIVE_POLL)
            now = time.time()
            for capture in list(_active.values()):
                if capture.inline or now - capture.started < LIVE_AFTER:
                    continue
                since = now - capture.written
                if (capture.changed and since >= LIVE_EVERY) or since >= live_rows.REFRESH:
                    self._write(capture, now)

    def _write(self, capture: Capture, now: float) -> None:
        with _ending:
            if not capture.running:
                return
            capture.changed = False
            capture.written = now
            row = {
                "id": capture.task_id,
                "token": capture.token,
                "pid": os.getpid(),
                "started": capture.started,
                "progress": capture.progress,
                "output": capture.text(),
                "updated": now,
            }
            try:
                self._rows.write(self.directory, capture.task_id, row)
                capture.live = True
            except Exception as exc:  # the store is gone or unwritable: no live rows
                self._broken = True
                log.warning(
                    "worker %d: cannot write the live state of running tasks to "
                    "%s (%s); their output and progress come with their outcome only",
                    os.getpid(),
                    self.directory,
                    exc,
                )


_live: dict[str, LiveRows] = {}


def live_rows(directory: str | None) -> None:
    """Have this process write the live rows of its long tasks to ``directory``'s store."""
    if directory and directory not in _live:
        _live[directory] = LiveRows(directory)
