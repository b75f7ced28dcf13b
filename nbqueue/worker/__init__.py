"""The worker process: what runs a task, in a loky or dask worker, or inline for
``sync=True``.

Of nbqueue, a task's run needs only the store's records, signing and files
(``nbqueue.disk``) and this folder: callables, capture, tracebacks and the outcome
stream.

Timeouts are a small arm/cancel strategy in two tiers:

1. the worker arms ``SIGALRM`` for the task's timeout; the handler raises
   ``TaskTimeout`` in the task, which interrupts Python code, ``time.sleep`` and
   blocking system calls, and the worker lives on;
2. code that holds the GIL in C never sees that signal, so each worker also writes
   what it runs, and until when, into a 64-byte *slot* (a shared-memory file). The
   cluster reads the slots every 100 ms and SIGKILLs a worker still on the same
   task a grace period after its deadline; a signal cannot stop C code, a kill can.

After its slot, the file keeps a ring of the lease tokens of the last tasks the worker
began: a host killed with its workers leaves that record behind, and the reaper of its
expired leases charges an attempt only to the tasks that began. The slot file and its
ring are ``nbqueue.disk.hosts.Slot``; both are plain stores to shared memory: no
system call per task.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cloudpickle

from nbqueue.disk import blobs
from nbqueue.disk.hosts import CANCELLED_DIR, Slot
from nbqueue.disk.names import batch_of
from nbqueue.disk.records import Cause, Item, Outcome
from nbqueue.disk.shared import loading
from nbqueue.disk.signing import anchor, hosted, make_directory, serving
from nbqueue.errors import (
    InitializerFailed,
    StoreError,
    StoreFileMissing,
    TaskCancelled,
    TaskTimeout,
)
from nbqueue.worker import capture
from nbqueue.worker.callables import resolve
from nbqueue.worker.tracebacks import describe, pack_exception

if TYPE_CHECKING:  # imported where a stream is used: most workers never use one
    from nbqueue.worker.stream import Sender

HOST_WATCH = 0.25  # seconds between checks that the cluster host is still alive


def failure_text(exc: BaseException) -> str:
    """A failure's stored result: the error on the first line, then the traceback."""
    return describe(exc, __file__)[0]


class _Alarm:
    """Tier 1 of timeouts: SIGALRM raising TaskTimeout, in the main thread only."""

    def __init__(self) -> None:
        self.fired = False
        self.seconds = 0.0

    def _handler(self, signum: int, frame: Any) -> None:
        self.fired = True
        raise TaskTimeout(f"timed out after {self.seconds:g} s")

    def arm(self, seconds: float | None) -> bool:
        self.fired = False
        if not seconds or threading.current_thread() is not threading.main_thread():
            return False
        self.seconds = seconds
        signal.signal(signal.SIGALRM, self._handler)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        return True

    @staticmethod
    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)


_alarm = _Alarm()
_pid = [os.getpid()]  # this process's, read once (a task's outcome names it)
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))
_slots: dict[str, Slot] = {}


def _slot(slot_dir: str | None) -> Slot | None:
    if slot_dir is None:
        return None
    slot = _slots.get(slot_dir)
    if slot is None:
        slot = _slots[slot_dir] = Slot(os.path.join(slot_dir, str(os.getpid())))
    return slot


def execute(
    item: Item,
    slot: Slot | None = None,
    func: Callable[..., Any] | None = None,
    inline: bool = False,
    cancels: CancelMarkers | None = None,
) -> Outcome:
    """Run one task and return its outcome, with what it wrote and reported
    (``capture``) and, for a failure, its exception and traceback.

    Whatever the task raises, ``SystemExit`` (``sys.exit()``) and ``KeyboardInterrupt``
    included, is its failure: a worker must live on to run the next task. ``inline``
    (``sync=True``, in the caller's own process) lets a KeyboardInterrupt through, with
    the failure's outcome as ``exc.outcome``: there it is the user's Ctrl-C.
    ``func`` is the very callable to run when the caller has it, instead of the
    unpickled copy. A batch (``item.items``) runs its items one after another, each as
    a task of its own (``run_items``); ``cancels`` are the markers of cancelled items.
    """
    _delivery[0] = item.token  # the delivery a cancel marker must name to stop it
    if item.items:
        return run_items(item, slot, func, inline, cancels)
    task_id, func_ref, func_bytes, args_bytes, timeout, token, _ = item
    success, blob, started, stopped, details, cause, interrupted = _call(
        task_id, func, func_ref, func_bytes, args_bytes, timeout, token, slot, inline, True
    )
    outcome = Outcome(task_id, success, blob, started, stopped, token, _pid[0], details, cause)
    if interrupted is not None:
        # an attribute of our own on the user's exception, for sync=True's caller
        interrupted.outcome = outcome  # type: ignore[attr-defined]
        raise interrupted
    return outcome


def _call(
    task_id: str,
    func: Callable[..., Any] | None,
    func_ref: str | None,
    func_bytes: bytes | None,
    args_bytes: Any,
    timeout: float | None,
    token: str,
    slot: Slot | None,
    inline: bool,
    spilled: bool,
) -> tuple[bool, Any, float, float, dict[str, Any] | None, Cause | None, KeyboardInterrupt | None]:
    """One run: (success, result or failure text, began, stopped, details, cause, the
    KeyboardInterrupt to raise for ``inline``). ``args_bytes``: the pickled ``(args,
    kwargs)``, a file of them, or (an item's) the tuple itself. ``spilled``: a large
    result may go to a file of the store (an item's result stays in its batch's outcome)."""
    started = time.time()
    if slot is not None:
        slot.mark(task_id, started, started + timeout if timeout else 0.0)
    captured = capture.begin(task_id, token, started, inline)
    armed = False
    details: dict[str, Any] | None = None
    interrupted: KeyboardInterrupt | None = None
    cause: Cause | None = None
    blob: blobs.Blob | bytes | str
    try:
        if func is None:
            func = cloudpickle.loads(func_bytes) if func_ref is None else resolve(func_ref)
        if type(args_bytes) is tuple:  # an item's, loaded with its batch's
            args, kwargs = args_bytes
        elif type(args_bytes) is bytes:
            args, kwargs = loading(pickle.loads, args_bytes)
        else:
            args, kwargs = _arguments(args_bytes, task_id)
        armed = _alarm.arm(timeout)
        try:
            _running[:] = [task_id]
            value = func(*args, **kwargs)
        finally:
            _running.clear()
            if armed:
                _alarm.cancel()
        if armed and _alarm.fired:
            raise TaskTimeout(f"timed out after {timeout:g} s")
        if not spilled:
            blob = _pickled_result(value)
        else:
            try:
                blob = spill(task_id, _pickled_result(value, bool(_spill) and blobs.large(value)))
            except OSError as exc:  # no room for its file (a full disk): the result goes
                blob = _pickled_result(value)  # back inline, for the cluster to hold
                details = {"unspilled": f"{type(exc).__name__}: {exc}"}
        success = True
    except TaskTimeout as exc:
        success, cause = False, Cause.TIMEOUT
        blob, details = _failed(exc)
    except BaseException as raised:
        failure = (
            TaskTimeout(f"timed out after {timeout:g} s") if armed and _alarm.fired else raised
        )
        success, cause = False, _cause(failure)
        blob, details = _failed(failure)
        if inline and isinstance(failure, KeyboardInterrupt):
            interrupted = failure
    finally:
        if slot is not None:
            slot.clear()
    kept = capture.end(captured)
    if kept is not None:
        details = kept if details is None else {**kept, **details}
    return success, blob, started, time.time(), details, cause, interrupted


SKIPPED = "TaskCancelled: cancelled before it started"


def run_items(
    item: Item,
    slot: Slot | None,
    func: Callable[..., Any] | None,
    inline: bool,
    cancels: CancelMarkers | None,
) -> Outcome:
    """Run the items of a batch, each with its own capture, time limit and outcome; the
    batch's outcome is the list of theirs (``records.ItemOutcome`` tuples), or a failure
    of the whole batch if its function or arguments cannot be loaded. A cancelled item
    (its marker, or its batch's) is skipped; a KeyboardInterrupt of ``inline`` ends the
    batch, its items not run cancelled."""
    batch_id, func_ref, func_bytes, args_bytes, timeout, token, _ = item
    started = time.time()
    try:
        if func is None:
            func = cloudpickle.loads(func_bytes) if func_ref is None else resolve(func_ref)
        arguments = (
            loading(pickle.loads, args_bytes)
            if type(args_bytes) is bytes
            else _arguments(args_bytes, batch_id)  # a large item's: a file of the store
        )
    except BaseException as exc:
        text, why = _failed(exc)
        return Outcome(
            batch_id, False, text, started, time.time(), token, _pid[0], why, _cause(exc)
        )
    single = type(arguments) is tuple  # (SINGLE, one argument each)
    if single:
        arguments = arguments[1]
    prefix = batch_id[:28]
    outcomes: list[tuple] = []
    interrupted: KeyboardInterrupt | None = None
    # The slot names each item only when items have a deadline (tier 2 of timeouts);
    # else the batch, once: a cancelled item is stopped by its own marker either way.
    marked = slot if timeout else None
    if slot is not None and not timeout:
        slot.mark(batch_id, started, 0.0)
    held = None if timeout else capture.begin(batch_id, token, capture.BETWEEN, inline)
    for i, call in enumerate(arguments):
        task_id = f"{prefix}{i + 1:08x}"
        if cancels is not None:
            cancels.refresh()
        if interrupted is not None or (
            cancels is not None
            and cancels.names
            and (task_id in cancels.names or batch_id in cancels.names)
        ):
            now = time.time()
            outcomes.append((False, SKIPPED, now, now, Cause.CANCELLED.value, None))
            continue
        if held is None:  # armed and marked for each item
            args = ((call,), {}) if single else call
            success, blob, began, stopped, details, cause, interrupted = _call(
                task_id, func, None, None, args, timeout, token, marked, inline, False
            )
            outcomes.append(
                (success, blob, began, stopped, None if cause is None else cause.value, details)
            )
            continue
        # what _call does, in line, on the batch's one capture: items may take microseconds
        began = time.time()
        held.task_id = task_id
        held.started = began
        _running.append(task_id)
        try:
            blob = _pickled_result(func(call) if single else func(*call[0], **call[1]))
        except BaseException as raised:
            _running.clear()
            text, details = _failed(raised)
            kept = capture.item_ended(held)
            cause = _cause(raised)
            outcomes.append(
                (False, text, began, time.time(), cause.value, {**(kept or {}), **details})
            )
            if inline and isinstance(raised, KeyboardInterrupt):
                interrupted = raised
            continue
        _running.clear()
        outcomes.append((True, blob, began, time.time(), None, capture.item_ended(held)))
    if held is not None:
        capture.end(held)
    if slot is not None and not timeout:
        slot.clear()
    outcome = Outcome(batch_id, True, outcomes, started, time.time(), token, _pid[0])
    if interrupted is not None:
        interrupted.outcome = outcome  # type: ignore[attr-defined]
        raise interrupted
    return outcome


def _pickled_result(value: Any, framed: bool = False) -> Any:
    """The pickled result: bytes, or for a large one the parts of ``blobs.frames``."""
    try:
        return (
            pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            if not framed
            else (blobs.frames(value))
        )
    except Exception:
        try:
            return (
                cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                if not framed
                else blobs.frames(value, cloudpickle.dumps)
            )
        except Exception as exc:
            raise TypeError(
                f"the task returned a {type(value).__name__} that cannot be "
                f"pickled ({exc}); return plain data instead"
            ) from None


def _cause(exc: BaseException) -> Cause:
    """Why a task that raised ``exc`` failed: stopped by its timeout or a cancel (the
    signals raise TaskTimeout and TaskCancelled in it), or of its own accord."""
    if isinstance(exc, TaskTimeout):
        return Cause.TIMEOUT
    return Cause.CANCELLED if isinstance(exc, TaskCancelled) else Cause.RAISED


def _failed(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """A failure's text (its stored result) and what else its outcome keeps of it."""
    text, shown = describe(exc, __file__)
    return text, {"exception": pack_exception(exc), "traceback": shown}


def rss_kilobytes() -> int:
    """This process's resident set size, in kilobytes (Linux)."""
    with open("/proc/self/statm") as src:
        pages = int(src.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


_spill: list[tuple[str, bytes, int]] = []  # (spill directory, key, host pid), if any


def use_store(directory: str | None, host: int | None = None) -> None:
    """Make ``directory`` the default store of the tasks run here, so that a task that
    calls ``async_task`` sends its children where it came from (and not to a
    ``.nbqueue`` in the worker's working directory, which no cluster serves).

    ``host``: the pid of the cluster's host, on this machine. Results of SPILL_BYTES or
    more then go to a signed file of the store's ``spill`` directory, named after the
    host, and only its name goes back through the executor (a worker killed while it
    sent a large result through loky's pipe left the cluster's reader waiting for the
    rest for good: the other workers hold the pipe open)."""
    if not directory:
        return
    served = serving() == directory
    hosted(directory)  # its host checked the store's file system
    if host is not None and not _spill:
        from nbqueue.disk.signing import load_key

        make_directory(anchor(directory).fd, blobs.SPILL_DIR)  # in the store checked
        _spill.append((os.path.join(directory, blobs.SPILL_DIR), load_key(directory), host))
    if served:
        return
    os.environ["NBQUEUE_DIRECTORY"] = directory
    conf = sys.modules.get("nbqueue.conf")
    if conf is not None:  # already read: read the environment again
        conf.reload()


def store_key() -> bytes | None:
    """The key of the store whose large results this process spills, if it does."""
    return _spill[0][1] if _spill else None


def spill(task_id: str, blob: Any) -> blobs.Blob | bytes:
    """A large result (bytes or frames) as a signed file of the store's spill directory
    (``blobs``). Raises OSError if the file cannot be written (its draft is removed)."""
    if not _spill or (type(blob) is bytes and len(blob) < blobs.LARGE):
        return blob
    directory, key, host = _spill[0]
    anchor(os.path.dirname(directory)).check()  # not written where another user put theirs
    return blobs.write(
        directory, f"{host}-{task_id}-{os.urandom(6).hex()}", blob, key, task_id, blobs.RESULT
    )


def _arguments(args: Any, task_id: str) -> tuple[tuple, dict]:
    """The (args, kwargs) of task ``task_id`` whose arguments are not plain bytes: a
    blob, or frames read from one."""
    return loading(
        blobs.loads, _read_arguments(args, task_id) if type(args) is blobs.Blob else args
    )


def _read_arguments(blob: blobs.Blob, task_id: str) -> Any:
    """Large arguments the caller wrote to the store (``blobs.arguments``), checked
    against the key of the store that holds them, as those of task ``task_id``."""
    from nbqueue.disk.signing import load_key

    try:
        return blobs.read(
            blob, load_key(os.path.dirname(os.path.dirname(blob.path))), task_id, blobs.ARGUMENTS
        )
    except StoreFileMissing:
        raise  # names the task and the file
    except OSError as exc:
        raise StoreError(
            f"the arguments of task {task_id} ({blob.size:,} bytes) cannot be read from "
            f"{blob.path}: {exc}. Large arguments travel as files of the store: run the "
            "cluster where the store directory can be read"
        ) from None


def prepare(
    host_pid: int,
    max_rss: int | None,
    slot_dir: str | None = None,
    directory: str | None = None,
    setup: bytes | None = None,
) -> None:
    """Worker initializer: ignore Ctrl-C, exit with the cluster's host, recycle past
    ``max_rss`` kB, and take a slot at once (the cluster finds every worker by its slot).

    Jupyter's Interrupt signals the kernel's whole process group, and the workers are
    in it: SIGINT is meant for the kernel's own code, never for the tasks.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a pending one is discarded
    if slot_dir is not None:
        signal.signal(signal.SIGUSR1, lambda signum, frame: _stop_if_cancelled(slot_dir))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    use_store(directory, host_pid)
    set_setup(setup)  # run before the first task, in run_chunk: its failure is reported
    capture.install()
    capture.live_rows(directory)
    _slot(slot_dir)
    threading.Thread(
        target=_exit_with_host, args=(host_pid,), name="nbqueue-host-watch", daemon=True
    ).start()
    limit_rss(max_rss)


def dask_setup(dask_worker: Any) -> None:
    """dask's preload hook, in each worker process of a cluster's own LocalCluster: those
    workers are children of the kernel, in its process group, and Jupyter's Interrupt
    is for the kernel's own code only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit_with_host(host_pid: int) -> None:
    """A worker whose host died (SIGKILL, OOM) is orphaned, and loky's pipes never tell
    it: it holds both ends. Its tasks' leases will expire and be delivered again, so it
    must not keep running them; exit within HOST_WATCH seconds of being re-parented."""
    while os.getppid() == host_pid:
        time.sleep(HOST_WATCH)
    os._exit(1)


def limit_rss(max_rss: int | None) -> None:
    """Worker initializer: have loky replace this worker once it exceeds ``max_rss`` kB.

    loky already recycles a worker that grew too much, between two tasks and without
    breaking the pool, when psutil is installed; this feeds that check our own
    reading of /proc instead, and an absolute limit: the first reading, which loky
    takes as its reference, is 0.
    """
    if not max_rss:
        return
    from loky import process_executor as pe

    readings = iter(range(1))

    def usage(pid: int, force_gc: bool = False) -> int:
        if next(readings, None) is not None:
            return 0
        if force_gc:
            import gc

            gc.collect()
        return rss_kilobytes() * 1024

    pe._get_memory_usage = usage
    pe._USE_PSUTIL = True
    pe._MAX_MEMORY_LEAK_SIZE = max_rss * 1024
    pe._MEMORY_LEAK_CHECK_DELAY = 0.0


_running: list[str] = []  # the id of the task whose function runs now, if any
_delivery = [""]  # the lease token of the task (or batch) this worker runs now

# -- once per worker: the cluster's initializer, and the state it leaves --------------

_state: dict[str, Any] = {}
_setup: list[bytes | None] = [None]  # the cloudpickled (initializer, initargs) to run
_setup_done: list[bytes | None] = [None]  # the one that ran in this process
_setup_lock = threading.Lock()


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as this worker process (for ``sync=True``, the calling
    process): what the cluster's ``initializer`` loaded, or a task kept, for the next
    tasks run here, such as a model loaded once."""
    return _state


def set_setup(setup: bytes | None) -> None:
    """The cloudpickled ``(initializer, initargs)`` this process runs before its first
    task (``Cluster(initializer=...)``), or None."""
    _setup[0] = setup


def run_setup() -> None:
    """Run the cluster's initializer in this process if it has not run here yet (a
    chunk's first step: a replacement worker runs it too). Raises InitializerFailed
    with its traceback if it raises."""
    setup = _setup[0]
    if setup is None or _setup_done[0] == setup:
        return
    with _setup_lock:  # a dask worker runs chunks in threads
        if _setup_done[0] == setup:
            return
        try:
            initializer, initargs = cloudpickle.loads(setup)
            initializer(*initargs)
        except BaseException as exc:
            text, _ = describe(exc, __file__)
            raise InitializerFailed(
                f"the cluster's initializer raised in worker process {os.getpid()}: {text}"
            ) from None
        _setup_done[0] = setup


def cancelled(slot_dir: str, task_id: str, token: str = "") -> bool:
    """Whether the delivery ``token`` of ``task_id`` is cancelled: its marker names that
    delivery (a marker left of an earlier delivery does not stop the one a ``retry``
    sent), or names none."""
    try:
        with open(os.path.join(slot_dir, CANCELLED_DIR, task_id), "rb") as marker:
            named = marker.read(256)
    except OSError:
        return False
    return not named or not token or named == token.encode()


def _stop_if_cancelled(slot_dir: str) -> None:
    """SIGUSR1: the cluster stops a cancelled task, or a task of a cancelled batch
    (only inside the task's function)."""
    if not _running:
        return
    task_id, token = _running[0], _delivery[0]
    batch = batch_of(task_id)
    if cancelled(slot_dir, task_id, token) or (
        batch is not None and cancelled(slot_dir, batch[0], token)
    ):
        raise TaskCancelled("the task was cancelled with nbqueue.cancel")


class CancelMarkers:
    """The cancel markers of a slot directory, for the items of a batch: listed again
    when the folder changed, looked at once every ``EVERY`` seconds at most (the items
    of a batch may take microseconds each). A folder changed less than ``FRESH`` seconds
    ago is listed again at each look: a file system's clock may not tell two changes
    that close apart."""

    EVERY = 0.002
    FRESH = 0.05

    def __init__(self, slot_dir: str) -> None:
        self.path = os.path.join(slot_dir, CANCELLED_DIR)
        self._stamp = -1
        self._next = 0.0
        self.names: frozenset[str] = frozenset()  # as last read

    def look(self) -> None:
        """Read the markers now (a batch reads them as it begins)."""
        self._next = time.monotonic() + self.EVERY
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except OSError:
            self.names = frozenset()
            return
        if stamp != self._stamp or time.time() - stamp / 1e9 < self.FRESH:
            self._stamp = stamp
            try:
                self.names = frozenset(os.listdir(self.path))
            except OSError:
                self.names = frozenset()

    def refresh(self) -> None:
        """Read the markers again if ``EVERY`` seconds have passed since the last look."""
        if time.monotonic() >= self._next:
            self.look()


_markers: dict[str, CancelMarkers] = {}


def cancel_markers(slot_dir: str) -> CancelMarkers:
    """The cancel markers of ``slot_dir``, read as a batch begins."""
    markers = _markers.get(slot_dir)
    if markers is None:
        markers = _markers[slot_dir] = CancelMarkers(slot_dir)
    markers.look()
    return markers


def skipped(item: Item) -> Outcome:
    now = time.time()
    return Outcome(
        item.id,
        False,
        SKIPPED,
        now,
        now,
        item.token,
        cause=Cause.CANCELLED,
    )


def run_chunk(slot_dir: str | None, items: list[Item]) -> Sequence[Outcome | str]:
    """Run tasks one after another in this worker; the unit a cluster submits to loky.
    Outcomes also go to the cluster's outcome stream as they end (``nbqueue.worker.stream``);
    the ones it sent are named by their task id in the chunk's result."""
    run_setup()
    slot = _slot(slot_dir)
    if slot_dir is None:
        return [execute(item, slot) for item in items]
    sender = _sender(slot_dir)
    outcomes: list[Outcome] = []
    for item in items:
        if slot is not None and item.token:
            # noted before the cancel marker is looked for: a cancel that wrote its
            # marker, then finds no note of the task, knows it never runs
            slot.begin(item.token)
        if cancelled(slot_dir, item.id, item.token):
            outcome = skipped(item)
        else:
            markers = cancel_markers(slot_dir) if item.items else None
            outcome = execute(item, slot, cancels=markers)
        if sender is not None:
            sender.add(outcome)
        outcomes.append(outcome)
    return outcomes if sender is None else sender.end_chunk(outcomes)


_senders: dict[str, Sender | None] = {}  # slot directory -> this worker's Sender, or None


def _sender(slot_dir: str | None) -> Sender | None:
    if slot_dir is None or not _spill:
        return None
    if slot_dir not in _senders:
        from nbqueue.worker.stream import SOCKET, Sender

        try:
            _senders[slot_dir] = Sender(os.path.join(slot_dir, SOCKET), _spill[0][1])
        except OSError:
            _senders[slot_dir] = None  # no stream: chunks carry every outcome
    return _senders[slot_dir]
