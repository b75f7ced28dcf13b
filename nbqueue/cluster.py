"""The cluster: a few threads in this process that move work between the queue,
a pool of worker processes and the store.

- the *feeder* leases batches from the queue, checks each package's signature,
  and submits chunks of tasks to the executor, keeping its workers busy;
- the *writer* takes finished chunks, stores their outcomes in one transaction,
  then acknowledges the leases (never before: an outcome not stored is not done);
- the *monitor* renews the leases of tasks in flight (so a task longer than
  ``retry`` is not delivered twice), puts expired leases of dead clusters back in
  the queue, kills workers stuck past a timeout, and writes a heartbeat;
- the *hook runner* calls hooks, in this process, with the finished Task.

Each thread runs under a supervisor: what a loop does not expect, ``BaseException``
included, stops the whole cluster visibly (``error``, the log, ``nbqueue info``). A
process serves a store directory with one cluster (``start()`` run again gives it back),
and hands its tasks in flight back to the queue, uncounted, as the process exits or as
Jupyter asks its kernel to shut down or restart.

Chunks: a no-op task costs ~0.1 ms in loky, and each chunk a few store writes, so
tasks are sent in chunks sized to take ~100 ms by the running average of task time
(1 for slow tasks, up to 64; on 2 cores 10 ms tasks ran at 83-88 % of ideal in chunks
of 30 ms, at 91-92 % in chunks of 100 ms). While every worker has a chunk, the feeder
leases only whole chunks; the last of the queue is spread evenly so that no worker
idles.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

from . import conf, signing
from .broker import Broker, Lease, drop_broker, get_broker
from .storage import process_alive
from .errors import ClusterError, ConfigurationError, SignatureError, StoreGone
from .executors import BROKEN, EXECUTOR_OPTIONS, Executor, make_executor
from .models import Task
from .records import Header, Outcome, decode_header, failure, make_record, refused_record
from .heartbeats import heartbeats
from .hooks import find_hook, run_hook
from .names import new_task_id
from .worker import Spilled, clean_spill, failure_text, read_slot, unspill

log = logging.getLogger("nbqueue")

CHUNK_SECONDS = 0.1
MAX_CHUNK = 64
HEARTBEAT = 1.0
IDLE_POLL = 0.05  # seconds between queue polls of a cluster that has been idle for a while
HOT_POLL = 0.001  # ... and right after a task finished, when its caller may send the next
EXIT_GRACE = 1.0  # seconds running tasks get to finish when the process or kernel ends


@dataclass
class _Job:
    lease: Lease
    header: Header
    timeout: float | None
    judged: bool = False  # an outcome was already decided outside its chunk (timeout kill)


class Cluster:
    """Workers that run the queued tasks of one store directory, hosted by this process.

    ``Cluster(workers=4, timeout=60).start()`` returns at once; ``stop()`` finishes or
    hands back the work in flight. Options left out come from ``configure`` and the
    ``NBQUEUE_*`` environment. Also a context manager: ``with Cluster() as c: ...``.
    """

    def __init__(self, workers: int | None = None, timeout: float | None = conf.UNSET,
                 retry: float | None = None, max_attempts: int | None = None,
                 ack_failures: bool | None = None, save_limit: int | None = None,
                 bulk: int | None = None, poll: float | None = None,
                 label: str | None = None, directory: str | os.PathLike[str] | None = None,
                 max_rss: int | None = None, executor: str = "loky",
                 **executor_options: Any) -> None:
        _check_option_names(executor, executor_options)
        given = {"workers": workers, "retry": retry, "max_attempts": max_attempts,
                 "ack_failures": ack_failures, "save_limit": save_limit, "bulk": bulk,
                 "poll": poll, "label": label, "directory": directory, "max_rss": max_rss}
        options = {k: v for k, v in given.items() if v is not None}
        if timeout is not conf.UNSET:
            options["timeout"] = timeout
        self.settings = conf.merged(conf.settings(), **options)
        self.workers = self.settings.worker_count
        self.broker: Broker = get_broker(self.settings.directory)
        self.directory = self.broker.directory
        self.heartbeats = heartbeats(self.directory)
        self.id = uuid.uuid4().hex
        self.executor_name = executor
        self._executor_options = executor_options
        if executor != "loky":  # fail at the call, not at start
            make_executor(executor, 1, "", self.settings.max_rss, **executor_options)
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._inflight: dict[str, _Job] = {}
        self._chunks: dict[Future, list[str]] = {}
        self._events: queue.Queue = queue.Queue()
        self._hooks: queue.Queue = queue.Queue()
        self._wakeup = threading.Event()
        self._room = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._shutting_down = False
        self._threads: list[threading.Thread] = []
        self._task_seconds = CHUNK_SECONDS  # until measured: one task per chunk
        self._dead_running: dict[str, str] = {}  # task id -> why its worker died
        self._doomed: set[int] = set()  # pids of live workers of a pool that broke
        self._deaths_lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._context: Cluster | None = None
        self.error: str | None = None  # why the cluster stopped on its own, if it did
        self.started_at: float | None = None
        self.done = 0
        self.failed = 0
        self._rate = (time.monotonic(), 0, 0.0)  # (when, done+failed then, tasks/s)
        self._slot_dir = ""
        self._panels: list[Any] = []  # status panels shown in Jupyter

    # -- life cycle ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self._stopping.is_set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has finished: its workers and threads are gone."""
        return self._stopped.is_set()

    def _options(self) -> tuple:
        return (conf.merged(self.settings, workers=self.workers), self.executor_name,
                self._executor_options)

    def start(self) -> Cluster:
        """Start the workers and threads; returns at once (the first tasks wait for spawn).

        One process serves a store directory with one cluster: if this process already
        runs one on the same directory (a notebook cell run again), ``start()`` returns
        that running cluster when its options are the same, and otherwise stops it,
        handing its tasks in flight back to the queue uncounted, and starts this one.
        """
        with _serving_lock:
            current = _serving.get(self.directory)
            if current is self and self.running:
                return self
            if self.started_at is not None:
                raise ClusterError("this cluster was stopped; make a new Cluster() to start "
                                   "again")
            if current is not None and current.running:
                if current._options() == self._options():
                    return current
                log.warning("nbqueue: replacing the running cluster on %s (%s) with a new "
                            "one (%s); its tasks in flight go back to the queue", self.directory,
                            current._describe(), self._describe())
                current.stop(wait=0)
            self._start()
            _serving[self.directory] = self
        _install_exit_hooks()
        return self

    def _describe(self) -> str:
        timeout = self.settings.timeout
        return (f"{self.workers} {self.executor_name} workers, timeout "
                f"{'none' if timeout is None else f'{timeout:g} s'}, "
                f"retry {self.settings.retry:g} s")

    def _start(self) -> None:
        self.started_at = time.time()
        self._slot_dir = tempfile.mkdtemp(prefix=f"nbqueue-{self.id[:8]}-")
        self._executor = make_executor(self.executor_name, self.workers, self._slot_dir,
                                       self.settings.max_rss, **self._executor_options)
        self._identity = self._store_identity()
        clean_spill(self.directory, lambda host: not process_alive(host))  # of clusters gone
        self._executor.at_exit = _stop_all
        self._executor.directory = self.directory
        try:
            self._executor.open()  # dask: connect, or start a LocalCluster
        except Exception:
            self._executor, self.started_at = None, None
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise
        # until measured, one task per chunk (dask takes longer chunks: ~25 ms a round trip)
        self._task_seconds = self._executor.chunk_seconds
        self.broker.subscribe(self._wakeup)
        self._beat()
        for name, target in (("feeder", self._feed), ("writer", self._write),
                             ("monitor", self._monitor), ("hooks", self._run_hooks)):
            thread = threading.Thread(target=self._supervised, args=(name, target),
                                      name=f"nbqueue-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _supervised(self, name: str, loop: Any) -> None:
        """Run one of the cluster's threads. Each loop goes on through the errors it
        expects; anything else (``BaseException`` included) stops the whole cluster,
        visibly: a cluster with a dead thread would still look alive while it stored or
        fed nothing.

        SIGINT is blocked in these threads, and so in the threads and worker processes
        they start (a mask is inherited): a worker gets Ctrl-C blocked from its first
        instruction, until its initializer ignores it. Python runs signal handlers in the
        main thread anyway.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            loop()
        except BaseException as exc:  # noqa: BLE001 - this is the supervisor
            self.error = f"its {name} thread failed: {type(exc).__name__}: {exc}"
            log.critical("nbqueue cluster %s on %s stopped: %s; its tasks in flight go back "
                         "to the queue. Start a new Cluster() to go on", self.id[:8],
                         self.directory, self.error, exc_info=exc)
            threading.Thread(target=self.stop, kwargs={"wait": 0}, name="nbqueue-stop",
                             daemon=True).start()

    def stop(self, wait: float = 10.0) -> None:
        """Stop gracefully: take no new work, let running tasks finish for up to ``wait``
        seconds, then kill the workers and hand every unfinished task back to the queue
        (its attempt not counted), store what finished, and run the pending hooks."""
        if self.started_at is None:
            return
        with self._stop_lock:
            stopping_elsewhere = self._stopping.is_set()
            self._stopping.set()
        if stopping_elsewhere:  # in another thread (the panel's button, the supervisor)
            if threading.current_thread() not in self._threads:
                self._stopped.wait(wait + 60)
            return
        self._wakeup.set()
        feeder, writer, monitor, hooks = self._threads
        _join(feeder, 10)
        with self._lock:
            futures = list(self._chunks)
        for future in futures:
            future.cancel()
        deadline = time.monotonic() + wait
        while self._inflight and time.monotonic() < deadline and writer.is_alive():
            time.sleep(0.01)
        self._shutting_down = True
        if self._executor is not None:
            try:
                self._executor.shutdown(kill=True)
            except Exception:
                log.exception("nbqueue cluster: the %s executor did not shut down cleanly",
                              self.executor_name)
        self._events.put(None)
        _join(writer, 30)
        self._hand_back_at_stop()
        _join(monitor, 10)
        self._hooks.put(None)
        _join(hooks, 30)
        self.broker.unsubscribe(self._wakeup)
        try:
            self.heartbeats.forget(self.id)
            if self.error is not None:
                self.heartbeats.record_stop(self.id, self.info())
        except Exception:  # the store itself may be what failed
            log.warning("nbqueue cluster: could not record the stop in the store",
                        exc_info=True)
        shutil.rmtree(self._slot_dir, ignore_errors=True)
        clean_spill(self.directory, lambda host: host == os.getpid())  # its workers are gone
        with _serving_lock:
            if _serving.get(self.directory) is self:
                del _serving[self.directory]
        self._stopped.set()
        for panel in self._panels:  # show "stopped" now, before this call returns
            try:
                panel.refresh()
            except Exception:
                log.debug("nbqueue cluster: a status panel could not be redrawn",
                          exc_info=True)

    def _hand_back_at_stop(self) -> None:
        """Acknowledge what was stored; every task still in flight goes back uncounted."""
        try:
            self.broker.flush_acks()
            with self._lock:
                left = list(self._inflight)
            if left:
                self._forget(left)
                self.broker.release(left, counted=False)
                log.info("nbqueue cluster: %d task(s) in flight went back to the queue",
                         len(left))
        except Exception:
            log.exception("nbqueue cluster: could not hand the tasks in flight back; they "
                          "will be delivered again once their lease expires")

    def __enter__(self) -> Cluster:
        self._context = self if self.running else self.start()
        return self._context

    def __exit__(self, *exc_info: Any) -> None:
        (self._context or self).stop()

    def join(self) -> None:
        """Block until the cluster is stopped (Ctrl-C in a terminal stops it gracefully)."""
        while self.running:
            time.sleep(0.2)

    # -- feeder ----------------------------------------------------------------------

    def _max_inflight(self) -> int:
        return self.workers * max(4, 2 * self._chunk_size())

    def _chunk_size(self) -> int:
        seconds = self._executor.chunk_seconds if self._executor else CHUNK_SECONDS
        return max(1, min(MAX_CHUNK, int(seconds / max(self._task_seconds, 1e-6))))

    def _feed(self) -> None:
        settings = self.settings
        pause = settings.poll
        while not self._stopping.is_set():
            try:
                chunk = self._chunk_size()
                room = self._max_inflight() - len(self._inflight)
                if self._inflight and (room < chunk or len(self._chunks) >= self.workers
                                       and self.broker.pending() < chunk):
                    # Every worker has a chunk: lease again once a whole chunk waits,
                    # or a chunk finishes. Leasing each task as it comes would mean
                    # chunks of one, and a round trip through the store per task.
                    self.broker.flush_acks()
                    self._room.wait(0.05)
                    self._room.clear()
                    continue
                wanted = min(room, settings.bulk)
                leases = self.broker.lease(self.id, wanted, settings.retry)
                if not leases:
                    # An empty poll is one read (~10 us). Every HOT_POLL seconds right
                    # after a wake-up (a task finished: its caller may send the next),
                    # growing 10 % a poll to IDLE_POLL (an idle cluster then costs ~1 %
                    # of a core). Enqueues in this process wake the feeder at once.
                    woken = self._wakeup.wait(pause)
                    self._wakeup.clear()
                    pause = (min(HOT_POLL, settings.poll) if woken
                             else min(pause * 1.1, max(IDLE_POLL, settings.poll)))
                    continue
                pause = settings.poll
                # a full batch goes in whole chunks; the last of the queue is spread
                # evenly over the workers so that none idles at the end
                self._dispatch(leases, chunk if len(leases) == wanted else
                               min(chunk, math.ceil(len(leases) / self.workers)))
            except Exception:
                log.exception("nbqueue cluster: feeder error; going on in 1 s")
                time.sleep(1)

    def _dispatch(self, leases: list[Lease], size: int) -> None:
        jobs = []
        for lease in leases:
            if lease.refused is not None:
                self._reject(lease, SignatureError(lease.refused))
                continue
            try:
                header = decode_header(self.broker.key, lease.package)
            except SignatureError as exc:
                self._reject(lease, exc)
                continue
            job = _Job(lease, header, header.timeout or self.settings.timeout)
            limit = self._max_attempts(job)
            with self._lock:
                self._inflight[lease.token] = job
            if limit and lease.attempt > limit:
                self._judge(job, f"gave up after {limit} attempts: each time the task was "
                            "lost (its worker or cluster died, or it was stopped) before it "
                            "finished", attempt=lease.attempt - 1, final=True)
                continue
            jobs.append(job)
        size = max(1, size)
        for i in range(0, len(jobs), size):
            self._submit(jobs[i:i + size])

    def _submit(self, jobs: list[_Job]) -> None:
        items = [j.header.item(j.timeout) for j in jobs]
        tokens = [j.lease.token for j in jobs]
        try:
            future = self._executor.submit(items)
        except Exception as exc:
            log.error("nbqueue cluster: cannot submit to the %s executor (%s); the tasks go "
                      "back to the queue", self.executor_name, exc)
            self._forget(tokens)
            self.broker.release(tokens, counted=False)
            time.sleep(1)
            return
        with self._lock:
            self._chunks[future] = tokens
        future.add_done_callback(self._chunk_done)

    def _max_attempts(self, job: _Job) -> int:
        limit = job.header.max_attempts
        return self.settings.max_attempts if limit is None else limit

    def _reject(self, lease: Lease, exc: SignatureError) -> None:
        """A package that fails the signature check: record it as a Failure, never run it."""
        task_id, name = new_task_id()
        log.warning("nbqueue cluster: refused a queued package: %s (recorded as task %s)",
                    exc, name)
        record = refused_record(task_id, name, f"SignatureError: {exc}", lease.attempt)
        self.broker.store.save([record], self.settings.save_limit)
        self.broker.ack([lease.token])
        self.failed += 1

    # -- writer ----------------------------------------------------------------------

    def _write(self) -> None:
        """Store outcomes as chunks finish, until ``stop()`` sends None (after the
        executor shut down, so every chunk's event is queued before it)."""
        while True:
            events = [self._events.get()]
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(events)
            except Exception:
                log.exception("nbqueue cluster: writer error; the affected tasks will be "
                              "delivered again after their lease expires")
            if None in events:
                return

    def _handle(self, events: list[Any]) -> None:
        finished: list[tuple[_Job, dict[str, Any], bool]] = []
        for event in events:
            if event is None:
                continue
            if isinstance(event, Future):
                with self._lock:
                    tokens = self._chunks.pop(event, [])
                    jobs = [self._inflight[t] for t in tokens if t in self._inflight]
                self._finish_chunk(event, jobs, finished)
            else:
                finished.append(event)  # a verdict: (job, record, final)
        if not finished:
            return
        outcomes = [(job, record) for job, record, final in finished if final]
        # the fence: a lease this cluster no longer holds (it stalled past `retry`, and
        # the task went to another delivery) stores nothing and counts nothing
        held = self.broker.held([job.lease.token for job, _ in outcomes], self.id)
        if len(held) < len(outcomes):
            log.warning("nbqueue cluster: dropped %d outcome(s) whose leases had expired "
                        "(this cluster was stalled for over %g s); those tasks belong to "
                        "another delivery now", len(outcomes) - len(held),
                        self.settings.retry)
            outcomes = [(job, record) for job, record in outcomes
                        if job.lease.token in held]
        for job, record, final in finished:
            if not final:  # delivered again once its lease expires; not an outcome yet
                log.info("nbqueue cluster: task %s failed on attempt %d; it is delivered "
                         "again in about %g s: %s", record["name"], record["attempt_count"],
                         self.settings.retry, str(record["result"]).split("\n", 1)[0])
        self.broker.store.save([record for _, record in outcomes], self.settings.save_limit)
        done = [job.lease.token for job, _ in outcomes]
        if self._stopping.is_set():
            self.broker.ack(done)
        else:  # with the feeder's next lease, which this wakes
            self.broker.ack_soon(done)
            self._wakeup.set()
        self._forget(job.lease.token for job, _, _ in finished)
        for job, record in outcomes:
            if record["success"]:
                self.done += 1
            else:
                self.failed += 1
            self._hooks.put((job, record))

    def _finish_chunk(self, future: Future, jobs: list[_Job],
                      finished: list[tuple[_Job, dict[str, Any], bool]]) -> None:
        try:
            outcomes = future.result()
        except CancelledError:
            self._give_back(jobs, counted=False)
            return
        except BROKEN as exc:
            self._broken(jobs, exc)
            return
        except BaseException as exc:  # the chunk itself failed to run: count it on each task
            outcomes = [failure(j.header.id, failure_text(exc)) for j in jobs]
        by_id = {job.header.id: job for job in jobs}
        for outcome in outcomes:
            job = by_id.get(outcome.id)
            if isinstance(outcome.result, Spilled):
                outcome = self._unspilled(outcome, keep=job is not None and not job.judged)
            if job is None or job.judged:
                continue
            self._task_seconds = 0.8 * self._task_seconds + 0.2 * (outcome.stopped - outcome.started)
            record = make_record(job.header, outcome, job.lease.attempt)
            finished.append((job, record, self._final(job, record["success"])))

    def _unspilled(self, outcome: Outcome, keep: bool) -> Outcome:
        """An outcome whose large result a worker wrote to the store's spill directory,
        with the result read back (and checked, and its file removed)."""
        task_id, success, spilled, started, stopped = outcome
        try:
            if not keep:
                os.unlink(spilled.path)
                return outcome
            return Outcome(task_id, success, unspill(spilled, self.broker.key), started, stopped)
        except (OSError, SignatureError) as exc:
            return Outcome(task_id, False, f"StoreError: the task's result ({spilled.size:,} bytes) "
                    f"could not be read back from {spilled.path}: {exc}", started, stopped)

    def _final(self, job: _Job, success: bool) -> bool:
        """Whether an outcome is the task's last: a success, a failure acknowledged
        (``ack_failures``, the default), or the last attempt."""
        if success:
            return True
        ack = job.header.ack_failure
        if ack if ack is not None else self.settings.ack_failures:
            return True
        return self._last_attempt(job)

    def _last_attempt(self, job: _Job) -> bool:
        limit = self._max_attempts(job)
        return bool(limit) and job.lease.attempt >= limit

    def _chunk_done(self, future: Future) -> None:
        """A chunk ended (in the executor's thread). When a worker died, loky fails every
        chunk first and kills the pool's other workers right after: so the workers dead
        at this moment are the ones that died first, and only their tasks are charged."""
        if (not self._shutting_down and not future.cancelled()
                and isinstance(future.exception(), BROKEN)):
            self._note_dead_workers(str(future.exception()))
        self._events.put(future)

    def _broken(self, jobs: list[_Job], exc: BaseException) -> None:
        """The pool broke (a worker died, or we killed it): judge or hand back each task,
        once every worker of the broken pool is dead (one still running a task would
        otherwise run it beside its next delivery)."""
        self._await_doomed()
        for job in jobs:
            why = self._dead_running.pop(job.header.id, None)
            if job.judged:
                continue
            if why is None and job.header.id in getattr(exc, "running", ()):
                why = f"the worker process running this task died ({exc.reason})"
            if why is None or self._shutting_down:
                self._give_back([job], counted=False)  # collateral: it was only waiting
            elif self._last_attempt(job):  # a lost task is delivered again, whatever
                self._judge(job, why, attempt=job.lease.attempt, final=True)  # ack_failures
            else:
                self._give_back([job], counted=True)

    def _note_dead_workers(self, reason: str) -> None:
        """Read the slots: a dead worker's task was running when it died; a live worker
        is doomed (loky kills it next)."""
        codes = [line.strip() for line in reason.splitlines() if "exit codes" in line]
        why = codes[0] if codes else "it was killed, ran out of memory or crashed"
        with self._deaths_lock:
            for entry in os.scandir(self._slot_dir):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if process_alive(pid):
                    self._doomed.add(pid)
                    continue
                state = read_slot(entry.path)
                if state is not None:
                    self._dead_running.setdefault(
                        state[0], f"the worker process running this task died ({why})")
                os.unlink(entry.path)

    def _await_doomed(self, timeout: float = 5.0) -> None:
        """Wait until the doomed workers are dead (SIGKILL them past ``timeout``)."""
        with self._deaths_lock:
            doomed, self._doomed = self._doomed, set()
        deadline = time.monotonic() + timeout
        while doomed:
            doomed = {pid for pid in doomed if process_alive(pid)}
            if not doomed:
                break
            if time.monotonic() > deadline:
                for pid in doomed:
                    _kill(pid)
                deadline = float("inf")
            time.sleep(0.005)
        with self._deaths_lock:
            for entry in os.scandir(self._slot_dir):
                if entry.name.isdigit() and not process_alive(int(entry.name)):
                    os.unlink(entry.path)

    def _give_back(self, jobs: list[_Job], counted: bool) -> None:
        tokens = [j.lease.token for j in jobs]
        self._forget(tokens)
        self.broker.release(tokens, counted=counted)

    def _forget(self, tokens: Any) -> None:
        with self._lock:
            for token in tokens:
                self._inflight.pop(token, None)
        self._room.set()

    def _judge(self, job: _Job, why: str, attempt: int, final: bool) -> None:
        """Decide a task's outcome outside its chunk (timeouts, give-ups, worker deaths)."""
        job.judged = True
        outcome = failure(job.header.id, why)
        self._events.put((job, make_record(job.header, outcome, attempt), final))

    # -- monitor ---------------------------------------------------------------------

    def _monitor(self) -> None:
        renew_every = min(self.settings.retry / 4, 10.0)
        last_renew = last_beat = last_check = time.monotonic()
        while not (self._stopping.is_set() and self._shutting_down):
            time.sleep(0.1)
            if time.monotonic() - last_check >= HEARTBEAT:
                last_check = time.monotonic()
                self._check_store()  # outside the try: a gone store stops the cluster
            try:
                self._enforce_timeouts()
                now = time.monotonic()
                if now - last_renew >= renew_every:
                    last_renew = now
                    with self._lock:
                        tokens = [t for t, j in self._inflight.items() if not j.judged]
                    lost = self.broker.renew(tokens, self.settings.retry)
                    if lost:
                        self._drop_lost(lost)
                if now - last_beat >= HEARTBEAT:
                    last_beat = now
                    if not self._stopping.is_set():
                        self._beat()
                    reaped = self.broker.reap()
                    if reaped:
                        log.info("nbqueue cluster: %d expired lease(s) back in the queue",
                                 reaped)
                        self._wakeup.set()
            except Exception:
                log.exception("nbqueue cluster: monitor error; going on")

    def _drop_lost(self, tokens: list[str]) -> None:
        """Leases that expired while this cluster stalled: their tasks belong to another
        delivery. Chunks of them not started yet never start; outcomes are fenced."""
        lost = set(tokens)
        log.warning("nbqueue cluster: lost the leases of %d task(s) (this cluster was "
                    "stalled for over %g s); they are delivered again elsewhere", len(lost),
                    self.settings.retry)
        with self._lock:
            doomed = [future for future, chunk in self._chunks.items() if set(chunk) <= lost]
        for future in doomed:
            future.cancel()

    def _store_identity(self) -> tuple[int, ...]:
        directory = os.stat(self.directory)
        key = os.stat(os.path.join(self.directory, signing.KEY_FILE))
        return directory.st_dev, directory.st_ino, key.st_ino

    def _check_store(self) -> None:
        """Stop if the store directory was deleted or replaced under the cluster: what it
        stores would land in files no one can read."""
        try:
            same = self._store_identity() == self._identity
        except FileNotFoundError:
            same = False
        if not same:
            drop_broker(self.directory, close=False)  # a new Cluster() opens the new store
            raise StoreGone(f"the store directory {self.directory} was deleted or replaced "
                            "while this cluster ran, so it stopped; start a new Cluster() "
                            "to serve the store there now")

    def _enforce_timeouts(self) -> None:
        """Tier 2 of timeouts: kill a worker stuck past its task's deadline + grace
        (dask has no tier 1: its grace is 0, and ``kill`` restarts the dask worker)."""
        if not self._slot_dir or self._executor is None:
            return
        now = time.time()
        grace, note = self._executor.kill_grace, self._executor.timeout_note
        for task_id, _, deadline, handle in self._running_states():
            if not deadline or now < deadline + grace:
                continue
            with self._lock:
                job = next((j for j in self._inflight.values()
                            if j.header.id == task_id), None)
            if job is None or job.judged:
                continue
            why = f"TaskTimeout: timed out after {job.timeout:g} s {note}"
            self._judge(job, why, attempt=job.lease.attempt,
                        final=self._final(job, success=False))
            log.warning("nbqueue cluster: task %s ran past its %g s timeout; killing worker "
                        "%s", job.header.name, job.timeout, handle)
            self._executor.kill(handle)

    def _running_states(self) -> list[tuple[str, float, float, Any]]:
        """(task id, started, deadline or 0, worker handle) of each task running now."""
        return self._executor.running() if self._executor is not None else []

    def _beat(self) -> None:
        capacity = self._executor.capacity() if self._executor is not None else None
        if capacity:  # dask: its threads now (workers come and go)
            self.workers = capacity
        self.heartbeats.beat(self.id, self.info(), ttl=3 * HEARTBEAT + 2)

    # -- hooks -----------------------------------------------------------------------

    def _run_hooks(self) -> None:
        while True:
            item = self._hooks.get()
            if item is None:
                return
            job, record = item
            header = job.header
            if header.hook_name is None:
                continue
            try:
                hook = find_hook(self.broker, header)
            except Exception as exc:
                log.error("nbqueue cluster: hook %s of task %s cannot be loaded: %s",
                          header.hook_name, header.name, exc)
                continue
            if hook is None:
                log.warning("nbqueue cluster: hook %s of task %s was an object of a process "
                            "that has ended; it cannot run here", header.hook_name,
                            header.name)
                continue
            run_hook(hook, Task(record, self.broker.store, bool(record["cached"])), log)

    # -- figures ---------------------------------------------------------------------

    def running_tasks(self) -> int:
        """Tasks running in a worker right now."""
        return len(self._running_states())

    def rate(self) -> float:
        """Tasks finished per second, over the last few seconds."""
        when, count, rate = self._rate
        now, total = time.monotonic(), self.done + self.failed
        if now - when >= 1.0:
            rate = (total - count) / (now - when)
            self._rate = (now, total, rate)
        return rate

    def _groups_running(self) -> dict[str, int]:
        running = {state[0] for state in self._running_states()}
        if not running:
            return {}
        with self._lock:
            groups = [j.header.group for j in self._inflight.values()
                      if j.header.id in running]
        counts: dict[str, int] = {}
        for group in groups:
            if group is not None:
                counts[group] = counts.get(group, 0) + 1
        return counts

    def info(self) -> dict[str, Any]:
        """This cluster's figures: what ``nbqueue info`` and the status panel show."""
        return {"groups_running": self._groups_running(), "id": self.id,
                "label": self.settings.label, "pid": os.getpid(),
                "host": socket.gethostname(), "executor": self.executor_name,
                "workers": self.workers, "directory": self.directory,
                "started": self.started_at, "done": self.done, "failed": self.failed,
                "running": self.running_tasks(), "in_flight": len(self._inflight),
                "queued": self.broker.size(), "rate": round(self.rate(), 1),
                "dashboard": self._executor.dashboard if self._executor is not None else None,
                "error": self.error}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In Jupyter, a live status panel with a stop button; plain text elsewhere."""
        from .widgets import ClusterPanel, in_notebook
        if not in_notebook():
            return {"text/plain": repr(self)}
        panel = ClusterPanel(self)
        self._panels.append(panel)
        bundle = dict(panel.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self.started_at else "not started")
        if self.error is not None:
            state = f"stopped ({self.error})"
        return (f"<Cluster {self.settings.label} {state} workers={self.workers} "
                f"executor={self.executor_name} done={self.done} failed={self.failed} "
                f"directory={self.directory}>")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _join(thread: threading.Thread, timeout: float) -> None:
    """Join a cluster thread, unless it is the caller (a hook that stops its cluster)."""
    if thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            log.warning("nbqueue cluster: thread %s did not end within %g s", thread.name,
                        timeout)





# -- one cluster per store directory in a process, and its end with the process ----------

_serving: dict[str, Cluster] = {}  # directory -> the running cluster of this process
_serving_lock = threading.RLock()
_exit_hooks_installed = False


def _check_option_names(executor: str, options: dict[str, Any]) -> None:
    """Refuse a misspelt option at the call, naming it (``Cluster(wrkers=2)``)."""
    if executor not in EXECUTOR_OPTIONS:
        raise ConfigurationError(f"unknown executor {executor!r}; the executors are: "
                                 + ", ".join(repr(e) for e in EXECUTOR_OPTIONS))
    unknown = sorted(set(options) - set(EXECUTOR_OPTIONS[executor]))
    if not unknown:
        return
    own = [p for p in inspect.signature(Cluster.__init__).parameters
           if p not in ("self", "executor_options")]
    extra = [o for name, opts in EXECUTOR_OPTIONS.items() for o in opts]
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, own + extra, n=1)
        if name in extra:
            parts.append(f"{name!r} is an option of another executor (not {executor!r})")
        else:
            parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigurationError(
        f"unknown option(s) of Cluster: {', '.join(parts)}. Its options are "
        f"{', '.join(own)}; with executor='dask' also {', '.join(EXECUTOR_OPTIONS['dask'])}")


def _stop_all(why: str = "this process is exiting") -> None:
    """Stop every running cluster of this process at once, handing their tasks in
    flight back to the queue uncounted, so that the next cluster runs them without
    waiting for ``retry``. Runs at exit (before loky's own handler, which would wait
    for every running task) and when Jupyter asks the kernel to shut down or restart
    (it kills the kernel 5 s later)."""
    with _serving_lock:
        clusters = [c for c in _serving.values() if c.running]
    for cluster in clusters:
        if cluster._inflight:
            log.warning("nbqueue: %s: the cluster on %s stops and hands %d task(s) in "
                        "flight back to the queue; a cluster started later runs them", why,
                        cluster.directory, len(cluster._inflight))
        cluster.stop(wait=EXIT_GRACE)


def _install_exit_hooks() -> None:
    """Call ``_stop_all`` as the interpreter exits, and in a Jupyter kernel as soon as a
    shutdown or restart is requested (the request is handled in the kernel's control
    thread, also while a cell is running; the kernel's own shutdown then terminates
    every child process, our workers included)."""
    global _exit_hooks_installed
    with _serving_lock:
        if _exit_hooks_installed:
            return
        _exit_hooks_installed = True
    try:
        threading._register_atexit(_stop_all)  # type: ignore[attr-defined]
    except RuntimeError:  # already exiting
        return
    kernel = _jupyter_kernel()
    if kernel is None:
        return
    original = kernel.do_shutdown

    def do_shutdown(restart: bool) -> Any:
        try:
            _stop_all("the kernel is restarting" if restart else "the kernel is shutting down")
            _stop_resource_trackers()
        except BaseException:  # noqa: BLE001 - the shutdown itself must go on
            log.exception("nbqueue: stopping the clusters at kernel shutdown failed")
        return original(restart)

    kernel.do_shutdown = do_shutdown


def _stop_resource_trackers(timeout: float = 1.0) -> None:
    """Let loky's and multiprocessing's resource trackers end now, as they do when the
    kernel exits: they ignore SIGTERM, and ipykernel's shutdown, which SIGTERMs every
    child, would wait for them until Jupyter kills the kernel (2.5 s into a restart).
    A tracker ends once its pipe is closed; joined in a thread, never for long."""
    trackers = []
    for module in ("loky.backend.resource_tracker", "multiprocessing.resource_tracker"):
        tracker = getattr(sys.modules.get(module), "_resource_tracker", None)
        if tracker is not None and getattr(tracker, "_fd", None) is not None:
            trackers.append(tracker)
    if not trackers:
        return
    thread = threading.Thread(target=lambda: [t._stop() for t in trackers],
                              name="nbqueue-trackers", daemon=True)
    thread.start()
    thread.join(timeout)


def _jupyter_kernel() -> Any:
    """The ipykernel Kernel this process runs, if it is one."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return getattr(get_ipython(), "kernel", None)

__all__ = ["Cluster"]
