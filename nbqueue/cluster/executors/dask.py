"""The dask executor: chunks of tasks run as dask tasks (``pip install "nbqueue[dask]"``)."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from functools import partial
from typing import Any

from nbqueue import worker
from nbqueue.cluster.executors import Executor
from nbqueue.disk import blobs
from nbqueue.disk.signing import load_key
from nbqueue.errors import ClusterError, ConfigurationError, WorkerLost
from nbqueue.worker.dask_worker import run_on_dask

log = logging.getLogger(__name__)


DASK_HINT = 'the dask executor needs dask.distributed: pip install "nbqueue[dask]"'
_DEFAULT: Any = object()  # an option left out


def _distributed() -> Any:
    """The ``distributed`` module, imported only when a dask executor is asked for."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigurationError(f"{DASK_HINT} (importing it failed: {exc})") from None
    return distributed


class _Chunk:
    """A chunk of tasks handed to the dask executor, and what is known of its run."""

    __slots__ = (
        "key",
        "items",
        "future",
        "dask",
        "task",
        "since",
        "address",
        "pid",
        "killed",
        "timeouts",
    )

    def __init__(self, key: str, items: list[tuple], future: Future) -> None:
        self.key = key
        self.items = items
        self.future = future
        self.dask: Any = None  # the dask future, once submitted
        self.task: str | None = None  # the task running now, from the start events
        self.since = 0.0  # when it started, by this process's clock
        self.address: str | None = None  # the dask worker running it
        self.pid: int | None = None
        self.killed = False
        self.timeouts = {item[0]: item[4] for item in items}


class _Quiet:
    """distributed's reports of the connections closed when nbqueue kills the workers of
    its own LocalCluster at a stop (INFO records with a traceback, on stderr), held back
    until the cluster is closed: nothing went wrong."""

    LOGGERS = (
        "distributed.batched",
        "distributed.comm",
        "distributed.core",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.worker",
    )

    def __init__(self) -> None:
        self._levels: dict[str, int] = {}

    def start(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def end(self) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._levels.clear()


class DaskExecutor(Executor):
    """Chunks of tasks run as dask tasks, on a scheduler at ``address`` or on a
    ``distributed.LocalCluster`` of ``workers`` single-threaded processes started by
    ``open()`` and closed by ``shutdown()``.

    The cluster keeps at most as many chunks in dask as it has threads (the rest wait
    here), so every dask task is running: a worker that dies takes only its running
    chunks with it, as with loky.

    Timeouts: dask runs tasks in worker threads, where ``SIGALRM`` cannot reach them and
    no thread can be stopped from outside. So the cluster times each task from the
    start event its worker sends, and at the deadline records the failure and calls
    ``kill``, which stops that worker process: on our own LocalCluster a SIGKILL (its
    nanny starts a fresh worker; the scheduler, with ``allowed_failures=0``, ends the
    chunk at once); on another scheduler the chunk is cancelled first, so that dask does
    not run the timed-out task again elsewhere, then the worker is restarted through its
    nanny (a worker without a nanny is shut down instead).

    Lost workers: dask's ``KilledWorker`` (and a cancelled or lost chunk) becomes
    ``WorkerLost``, one of ``BROKEN``, naming the task that was running, so the cluster
    re-delivers it (an attempt counted) and the chunk's other tasks (not counted),
    exactly as for a broken loky pool. Our LocalCluster's scheduler has
    ``allowed_failures=0``; another scheduler may first re-run a task itself, up to its
    ``distributed.scheduler.allowed-failures`` times, before it reports ``KilledWorker``.
    """

    name = "dask"
    chunk_seconds = 0.2  # a chunk's round trip through the scheduler costs far more than loky's
    kill_grace = 0.0  # no first tier: restart the worker at the deadline
    timeout_note = (
        "(a task on dask runs in a worker thread that cannot be interrupted, "
        "so its worker process was restarted)"
    )

    def __init__(
        self,
        workers: int,
        slot_dir: str | None = None,
        max_rss: int | None = None,
        address: str | None = None,
        client: Any = None,
        dashboard_address: Any = _DEFAULT,
        memory_limit: Any = _DEFAULT,
        connect_timeout: float = 10.0,
    ) -> None:
        if max_rss:
            raise ConfigurationError(
                "max_rss is an option of the loky executor; on dask, give the workers a "
                "memory limit instead (Cluster(executor='dask', memory_limit='2GB') for a "
                "LocalCluster, `dask worker --memory-limit 2GB` elsewhere)"
            )
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigurationError(
                f"address must be a dask scheduler address like 'tcp://host:8786', not {address!r}"
            )
        if address is not None and client is not None:
            raise ConfigurationError("give the dask executor an address or a client, not both")
        local_only = [
            name
            for name, value in (
                ("dashboard_address", dashboard_address),
                ("memory_limit", memory_limit),
            )
            if value is not _DEFAULT
        ]
        if local_only and (address is not None or client is not None):
            raise ConfigurationError(
                f"{' and '.join(local_only)} only apply to a LocalCluster that the cluster "
                "starts (no address= or client=); give them to `dask scheduler` / "
                "`dask worker` instead"
            )
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not connect_timeout > 0
        ):
            raise ConfigurationError(
                f"connect_timeout must be a number of seconds > 0, not {connect_timeout!r}"
            )
        self._dd = _distributed()
        if client is not None and not isinstance(client, self._dd.Client):
            raise ConfigurationError(
                f"client must be a distributed.Client, not {type(client).__name__}"
            )
        self.workers = workers
        self.slot_dir = slot_dir  # its cancelled/ markers, seen by workers of our own
        self.address = address
        self.client: Any = client
        self._own_client = client is None
        self._local: Any = None  # the LocalCluster we started, if any
        self._local_options = {
            # None: distributed still starts a dashboard, on 8787 or beside it with a
            # warning when that port is taken; a free port of this machine instead
            "dashboard_address": (
                "127.0.0.1:8787"
                if dashboard_address is _DEFAULT
                else "127.0.0.1:0"
                if dashboard_address is None
                else dashboard_address
            ),
            "memory_limit": "auto" if memory_limit is _DEFAULT else memory_limit,
        }
        self.connect_timeout = float(connect_timeout)
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Chunk] = collections.deque()
        self._chunks: dict[str, _Chunk] = {}  # key -> chunk in dask
        self._capacity = 0
        self._topic = f"nbqueue-{uuid.uuid4().hex}"
        self._seq = 0
        self._closed = False
        self._released = False  # close() has run
        self._quiet: _Quiet | None = None  # distributed's logs held back from shutdown to close
        self._cancel_first = True  # unless the scheduler never re-runs a lost task
        self._poller: threading.Thread | None = None
        self._restarter: ThreadPoolExecutor | None = None
        self.restarts = 0

    # -- life cycle --------------------------------------------------------------------

    @property  # a class attribute in Executor, known here only once open
    def streams_outcomes(self) -> bool:  # type: ignore[override]
        """Workers of its own LocalCluster share the machine: they stream outcomes."""
        return self._local is not None

    def open(self) -> None:
        dd = self._dd
        where = self.address or (
            "the given client" if self.client is not None else "a new LocalCluster"
        )
        try:
            if self.client is None and self.address is not None:
                self.client = dd.Client(
                    self.address, timeout=self.connect_timeout, set_as_default=False
                )
            elif self.client is None:
                # Single-threaded worker processes, as with loky (tasks are mostly Python
                # holding the GIL); allowed_failures=0: a lost task comes back to us.
                # preload: each worker ignores Ctrl-C (see worker.dask_setup)
                # local_directory: a scratch space of this cluster's own, in its private
                # host folder (removed with it), instead of one shared with every dask
                # worker of the machine, whose lock and purge of dead workers' folders
                # can hold a worker's start for seconds
                scratch = {}
                if self.slot_dir:
                    scratch["local_directory"] = os.path.join(self.slot_dir, "dask")
                self._local = dd.LocalCluster(
                    **scratch,
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    silence_logs=logging.CRITICAL,
                    scheduler_kwargs={"allowed_failures": 0},
                    preload=[worker.__name__],
                    **self._local_options,
                )
                self.client = dd.Client(self._local, set_as_default=False)
            self.client.subscribe_topic(self._topic, self._on_event)
            self._cancel_first = self._local is None and self._scheduler_allowed_failures() != 0
            self._update_capacity()
            self.dashboard = self._dashboard_link()
        except Exception as exc:
            self.shutdown(kill=True)
            self.close()
            if isinstance(exc, (ClusterError, ConfigurationError)):
                raise
            raise ClusterError(
                f"the dask executor cannot start or reach its scheduler "
                f"({where}): "
                f"{type(exc).__name__}: {exc}. Start one with `dask scheduler` "
                "and workers with `dask worker ADDRESS`, or leave out address= "
                "to start a LocalCluster"
            ) from exc
        self._restarter = ThreadPoolExecutor(1, thread_name_prefix="nbqueue-dask-restart")
        self._poller = threading.Thread(target=self._poll, name="nbqueue-dask-poll", daemon=True)
        self._poller.start()

    def _scheduler_allowed_failures(self) -> int | None:
        try:
            return self.client.run_on_scheduler(_allowed_failures)
        except Exception:
            return None

    def _dashboard_link(self) -> str | None:
        try:
            if "dashboard" not in self.client.scheduler_info().get("services", {}):
                return None
            return self.client.dashboard_link
        except Exception:
            return None

    def _update_capacity(self) -> None:
        threads = sum(self.client.nthreads().values())
        with self._lock:
            self._capacity = threads
        local = self._local
        if local is not None and not self._closed and len(local.workers) < self.workers:
            # dask closes for good the nanny of a worker killed twice within its
            # lost-worker-timeout (kills of timeouts and cancels): start it again
            local.scale(self.workers)

    def _poll(self) -> None:
        """Follow the number of threads (workers come and go) and feed freed room."""
        while not self._closed:
            time.sleep(0.25)
            try:
                self._update_capacity()
            except Exception:
                if not self._closed:
                    log.debug("cannot read the workers", exc_info=True)
                continue
            self._pump()

    def capacity(self) -> int | None:
        with self._lock:
            return self._capacity or None

    def shutdown(self, kill: bool = False) -> None:
        """Close: chunks not yet in dask are cancelled; chunks in dask end as WorkerLost
        (the cluster hands their tasks back). ``kill`` waits for nothing (the workers of
        our own LocalCluster are killed); without it, chunks in dask get up to a minute to
        finish first."""
        if not kill:
            deadline = time.monotonic() + 60
            while self._chunks and time.monotonic() < deadline:
                time.sleep(0.05)
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            chunks, self._chunks = list(self._chunks.values()), {}
        for chunk in waiting:
            if not chunk.future.cancel():
                _settle(chunk.future, exception=WorkerLost("the executor shut down"))
        quiet = _Quiet()
        if kill and chunks and self._local is not None:
            # Every worker of our own, not only those whose start events came: a task
            # that just started would otherwise run on to its end (its nanny waits for
            # it), beside its next delivery once the cluster has handed it back. Our
            # scheduler then logs their closed connections, which we closed on purpose.
            quiet.start()
            self._no_restarts()
            for pid in self._local_pids() | {chunk.pid for chunk in chunks if chunk.pid}:
                self._sigkill(pid)
        for chunk in chunks:
            if chunk.dask is not None:
                with contextlib.suppress(Exception):
                    chunk.dask.cancel()
            _settle(chunk.future, exception=WorkerLost("the executor shut down"))
        if self._restarter is not None:  # a worker being restarted: let it finish (<= 30 s)
            self._restarter.shutdown(wait=True)
        self._quiet = quiet  # until close(): the LocalCluster closes after the hand back

    def close(self) -> None:
        """Close the client and our LocalCluster, which takes seconds: the cluster calls
        it once it has handed its tasks back, so that a kernel's shutdown, which may be
        cut short, has done what matters first."""
        with self._lock:
            if self._released:
                return
            self._released = True
        client, local = self.client, self._local
        self.dashboard = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(self._topic)
            if self._own_client:
                try:
                    client.close(timeout=10)
                except Exception:
                    log.debug("closing the client", exc_info=True)
        if local is not None:
            try:
                local.close(timeout=20)
            except Exception:
                log.warning("the LocalCluster did not close cleanly", exc_info=True)
        if self._quiet is not None:
            self._quiet.end()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=5)

    # -- chunks ------------------------------------------------------------------------

    def submit(self, items: list[tuple]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed or self.client is None:
                raise RuntimeError("the dask executor is not open")
            self._seq += 1
            self._waiting.append(
                _Chunk(f"nbqueue-chunk-{self._topic[8:16]}-{self._seq}", items, future)
            )
        self._pump()
        return future

    def _pump(self) -> None:
        """Hand waiting chunks to dask while it has idle threads."""
        while True:
            with self._lock:
                if self._closed or not self._waiting or len(self._chunks) >= self._capacity:
                    return
                chunk = self._waiting.popleft()
                if not chunk.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited here
                chunk.items = [
                    item
                    for item in chunk.items  # tasks cancelled meanwhile
                    if not worker.cancelled(self.slot_dir or "", item[0], item[5])
                ]
                if not chunk.items:
                    _settle(chunk.future, result=[])
                    continue
                self._chunks[chunk.key] = chunk
            try:
                # workers of our own LocalCluster share this machine's disk: they spill
                local = self._local is not None
                if not local:  # its workers may not reach the store's files
                    assert self.directory is not None  # set by the cluster before it starts
                    chunk.items = blobs.inlined(chunk.items, load_key(self.directory))
                chunk.dask = self.client.submit(
                    run_on_dask,
                    self._topic,
                    chunk.key,
                    chunk.items,
                    self.directory,
                    os.getpid() if local else None,
                    self.slot_dir if local else None,
                    self.setup,
                    key=chunk.key,
                    pure=False,
                )
            except Exception as exc:
                with self._lock:
                    self._chunks.pop(chunk.key, None)
                _settle(
                    chunk.future,
                    exception=WorkerLost(f"cannot submit to dask: {type(exc).__name__}: {exc}"),
                )
                continue
            chunk.dask.add_done_callback(partial(self._on_done, chunk))

    def _on_event(self, event: tuple) -> None:
        """A task started (in the client's event loop: be quick)."""
        try:
            key, task_id, pid, address = event[1]
        except (TypeError, ValueError):
            return
        with self._lock:
            chunk = self._chunks.get(key)
            if chunk is not None:
                chunk.task, chunk.since = task_id, time.time()
                chunk.pid, chunk.address = pid, address

    def _on_done(self, chunk: _Chunk, done: Any) -> None:
        """A chunk's dask future finished (in dask's callback thread)."""
        with self._lock:  # first: it no longer runs, whatever its outcome
            self._chunks.pop(chunk.key, None)
        try:
            status = done.status
            if status == "finished":
                try:
                    _settle(chunk.future, result=done.result())
                except Exception as exc:  # its result was lost with its worker
                    _settle(chunk.future, exception=self._lost(chunk, exc))
            elif status == "error":
                error = done.exception()
                if isinstance(error, self._dd.KilledWorker):
                    _settle(chunk.future, exception=self._lost(chunk, error))
                else:  # the chunk itself could not run (e.g. nbqueue missing on the worker)
                    _settle(chunk.future, exception=error)
            else:  # cancelled: by kill(), by shutdown, or the scheduler went away
                _settle(chunk.future, exception=self._lost(chunk, None))
        except Exception as exc:
            _settle(chunk.future, exception=self._lost(chunk, exc))
        finally:
            self._pump()

    def _lost(self, chunk: _Chunk, exc: BaseException | None) -> WorkerLost:
        with self._lock:
            task, address, pid, killed = chunk.task, chunk.address, chunk.pid, chunk.killed
        # With at most one chunk per thread in dask, a chunk lost with no start event yet
        # was starting its first task: count that one, so that a task that kills its
        # worker at once is not re-delivered forever.
        running = task or chunk.items[0][0]
        where = f"dask worker {address} (pid {pid})" if address else "its dask worker"
        if killed:
            reason = f"{where} was restarted to stop a task past its timeout"
        else:
            reason = f"{where} was lost: it was killed, ran out of memory or crashed"
        detail = f" [{type(exc).__name__}: {exc}]" if exc is not None else ""
        return WorkerLost(f"{reason}{detail}", (running,), reason)

    # -- timeouts ----------------------------------------------------------------------

    def running(self) -> list[tuple[str, float, float, Any]]:
        with self._lock:
            states = []
            for chunk in self._chunks.values():
                if chunk.task is None:
                    continue
                timeout = chunk.timeouts.get(chunk.task)
                deadline = chunk.since + timeout if timeout else 0.0
                states.append((chunk.task, chunk.since, deadline, chunk.key))
            return states

    def kill(self, handle: Any) -> None:
        """Stop the chunk ``handle`` (a key from ``running()``): restart its worker."""
        with self._lock:
            chunk = self._chunks.get(handle)
            if chunk is None or chunk.killed or self._restarter is None:
                return
            chunk.killed = True
        with contextlib.suppress(RuntimeError):  # shutting down: it goes with the rest
            self._restarter.submit(self._restart, chunk)

    def _restart(self, chunk: _Chunk) -> None:
        if self._local is not None and chunk.pid:
            # Our LocalCluster's workers are our children, on this machine: SIGKILL it,
            # as loky's tier 2 does. Its nanny starts a fresh one; the scheduler, which
            # never re-runs a lost task (allowed_failures=0), ends the chunk at once.
            self.restarts += 1
            self._sigkill(chunk.pid)
            return
        if self._cancel_first and chunk.dask is not None:
            # Another scheduler may re-run a task whose worker is lost: take it out first.
            chunk.dask.cancel()
        try:
            outcome = self.client.restart_workers(
                [chunk.address], timeout=30, raise_for_error=False
            )
            self.restarts += 1
            log.info("restarted worker %s: %s", chunk.address, outcome)
        except Exception as exc:
            if self._closed:
                return
            log.warning(
                "could not restart worker %s (%s); the "
                "timed-out task runs on there until it returns, and its result will "
                "be dropped",
                chunk.address,
                exc,
            )
            if not self._cancel_first and chunk.dask is not None:
                chunk.dask.cancel()

    def _nannies(self) -> list[Any]:
        """The nannies of our LocalCluster, if we started one (no round trip)."""
        try:
            return list(self._local.workers.values())
        except Exception:
            return []

    def _local_pids(self) -> set[int]:
        """The worker processes of our LocalCluster, from their nannies."""
        return {
            pid
            for pid in (getattr(nanny, "pid", None) for nanny in self._nannies())
            if isinstance(pid, int)
        }

    def _no_restarts(self) -> None:
        """Have our nannies close once their worker is gone, instead of starting another
        (whose queues would outlive the kernel's resource trackers at its shutdown)."""
        for nanny in self._nannies():
            close_gracefully = getattr(nanny, "close_gracefully", None)
            if close_gracefully is not None:
                with contextlib.suppress(Exception):
                    close_gracefully(reason="nbqueue-stop")

    @staticmethod
    def _sigkill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # -- for tests and the curious -----------------------------------------------------

    def worker_pids(self) -> dict[str, int]:
        """{worker address: pid} of the dask workers that answer now."""
        return self.client.run(os.getpid, on_error="ignore")


def _allowed_failures(dask_scheduler: Any) -> int:
    return dask_scheduler.allowed_failures


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless it already has one."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
