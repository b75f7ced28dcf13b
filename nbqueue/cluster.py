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

Chunks: a no-op task costs ~0.1 ms in loky, and each chunk a few store writes, so
tasks are sent in chunks sized to take ~100 ms by the running average of task time
(1 for slow tasks, up to 64; on 2 cores 10 ms tasks ran at 83-88 % of ideal in chunks
of 30 ms, at 91-92 % in chunks of 100 ms). While every worker has a chunk, the feeder
leases only whole chunks; the last of the queue is spread evenly so that no worker
idles.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import cloudpickle

from . import conf, signing
from .broker import Broker, Lease, get_broker
from .errors import ClusterError, SignatureError
from .executors import BROKEN, Executor, make_executor
from .models import Task, make_record
from .names import new_task_id
from .tasks import find_hook, run_hook
from .worker import failure_text, read_slot

log = logging.getLogger("nbqueue")

_UNSET: Any = conf._UNSET
CHUNK_SECONDS = 0.1
MAX_CHUNK = 64
KILL_GRACE = 1.0  # seconds past a timeout before a worker that ignored SIGALRM is killed
HEARTBEAT = 1.0
IDLE_POLL = 0.05  # seconds between queue polls of a cluster that has been idle for a while
HOT_POLL = 0.001  # ... and right after a task finished, when its caller may send the next


@dataclass
class _Job:
    lease: Lease
    header: dict[str, Any]
    timeout: float | None
    judged: bool = False  # an outcome was already decided outside its chunk (timeout kill)


class Cluster:
    """Workers that run the queued tasks of one store directory, hosted by this process.

    ``Cluster(workers=4, timeout=60).start()`` returns at once; ``stop()`` finishes or
    hands back the work in flight. Options left out come from ``configure`` and the
    ``NBQUEUE_*`` environment. Also a context manager: ``with Cluster() as c: ...``.
    """

    def __init__(self, workers: int | None = None, timeout: float | None = _UNSET,
                 retry: float | None = None, max_attempts: int | None = None,
                 ack_failures: bool | None = None, save_limit: int | None = None,
                 bulk: int | None = None, poll: float | None = None,
                 label: str | None = None, directory: str | os.PathLike[str] | None = None,
                 max_rss: int | None = None, executor: str = "loky",
                 **executor_options: Any) -> None:
        given = {"workers": workers, "retry": retry, "max_attempts": max_attempts,
                 "ack_failures": ack_failures, "save_limit": save_limit, "bulk": bulk,
                 "poll": poll, "label": label, "directory": directory, "max_rss": max_rss}
        options = {k: v for k, v in given.items() if v is not None}
        if timeout is not _UNSET:
            options["timeout"] = timeout
        self.settings = conf.merged(conf.settings(), **options)
        self.workers = self.settings.worker_count
        self.broker: Broker = get_broker(self.settings.directory)
        self.directory = self.broker.directory
        self.id = uuid.uuid4().hex
        self.executor_name = executor
        self._executor_options = executor_options
        if executor != "loky" or executor_options:  # fail at the call, not at start
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

    def start(self) -> Cluster:
        """Start the workers and threads; returns at once (the first tasks wait for spawn)."""
        if self.started_at is not None:
            raise ClusterError("this cluster was already started; make a new Cluster() "
                               "to start again")
        self.started_at = time.time()
        self._slot_dir = tempfile.mkdtemp(prefix=f"nbqueue-{self.id[:8]}-")
        self._executor = make_executor(self.executor_name, self.workers, self._slot_dir,
                                       self.settings.max_rss, **self._executor_options)
        try:
            self._executor.open()  # dask: connect, or start a LocalCluster
        except Exception:
            self._executor, self.started_at = None, None
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise
        # until measured, one task per chunk (dask takes longer chunks: ~25 ms a round trip)
        self._task_seconds = getattr(self._executor, "chunk_seconds", CHUNK_SECONDS)
        self.broker.subscribe(self._wakeup)
        self._beat()
        for name, target in (("feeder", self._feed), ("writer", self._write),
                             ("monitor", self._monitor), ("hooks", self._run_hooks)):
            thread = threading.Thread(target=target, name=f"nbqueue-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, wait: float = 10.0) -> None:
        """Stop gracefully: take no new work, let running tasks finish for up to ``wait``
        seconds, then kill the workers and hand every unfinished task back to the queue
        (its attempt not counted), store what finished, and run the pending hooks."""
        if self.started_at is None:
            return
        if self._stopping.is_set():  # stopping in another thread (the panel's button)
            self._stopped.wait(wait + 60)
            return
        self._stopping.set()
        self._wakeup.set()
        feeder, writer, monitor, hooks = self._threads
        feeder.join()
        with self._lock:
            futures = list(self._chunks)
        for future in futures:
            future.cancel()
        deadline = time.monotonic() + wait
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self._shutting_down = True
        if self._executor is not None:
            self._executor.shutdown(kill=True)
        self._events.put(None)
        writer.join(timeout=30)
        self.broker.flush_acks()
        with self._lock:
            left = list(self._inflight)
        if left:  # outcomes that never came back: the tasks go back to the queue
            self._forget(left)
            self.broker.release(left, counted=False)
        monitor.join()
        self._hooks.put(None)
        hooks.join()
        self.broker.unsubscribe(self._wakeup)
        self.broker.forget(self.id)
        shutil.rmtree(self._slot_dir, ignore_errors=True)
        for panel in self._panels:  # show "stopped" now, before this call returns
            try:
                panel.refresh()
            except Exception:
                log.debug("nbqueue cluster: a status panel could not be redrawn",
                          exc_info=True)
        self._stopped.set()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def join(self) -> None:
        """Block until the cluster is stopped (Ctrl-C in a terminal stops it gracefully)."""
        while self.running:
            time.sleep(0.2)

    # -- feeder ----------------------------------------------------------------------

    def _max_inflight(self) -> int:
        return self.workers * max(4, 2 * self._chunk_size())

    def _chunk_size(self) -> int:
        seconds = getattr(self._executor, "chunk_seconds", CHUNK_SECONDS)
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
            try:
                header = signing.unpack(self.broker.key, lease.package)
            except SignatureError as exc:
                self._reject(lease, exc)
                continue
            job = _Job(lease, header, header["timeout"] or self.settings.timeout)
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
        items = [(j.header["id"], j.header["func_ref"], j.header["func_bytes"],
                  j.header["args"], j.timeout) for j in jobs]
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
        future.add_done_callback(self._events.put)

    def _max_attempts(self, job: _Job) -> int:
        limit = job.header["max_attempts"]
        return self.settings.max_attempts if limit is None else limit

    def _reject(self, lease: Lease, exc: SignatureError) -> None:
        """A package that fails the signature check: record it as a Failure, never run it."""
        task_id, name = new_task_id()
        log.warning("nbqueue cluster: refused a queued package: %s (recorded as task %s)",
                    exc, name)
        now = time.time()
        record = {"id": task_id, "name": name, "func": "<rejected package>", "hook": None,
                  "args": _EMPTY_ARGS, "group": None, "result": f"SignatureError: {exc}",
                  "success": False, "started": now, "stopped": now,
                  "attempt_count": lease.attempt, "cached": False, "save": True}
        self.broker.store.save([record], self.settings.save_limit)
        self.broker.ack([lease.token])
        self.failed += 1

    # -- writer ----------------------------------------------------------------------

    def _write(self) -> None:
        while True:
            try:
                first = self._events.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set() and self._shutting_down and not self._inflight:
                    return
                continue
            events = [first]
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
            if None in events and not self._inflight:
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
        self.broker.store.save([record for _, record, _ in finished], self.settings.save_limit)
        done = [job.lease.token for job, _, final in finished if final]
        if self._stopping.is_set():
            self.broker.ack(done)
        else:  # with the feeder's next lease, which this wakes
            self.broker.ack_soon(done)
            self._wakeup.set()
        self._forget(job.lease.token for job, _, _ in finished)
        for job, record, final in finished:
            if record["success"]:
                self.done += 1
            else:
                self.failed += 1
            self._hooks.put((job, record, final))

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
        except Exception as exc:  # the chunk itself failed to run: count it on each task
            outcomes = [(j.header["id"], False, failure_text(exc), time.time(), time.time())
                        for j in jobs]
        by_id = {job.header["id"]: job for job in jobs}
        for outcome in outcomes:
            job = by_id.get(outcome[0])
            if job is None or job.judged:
                continue
            self._task_seconds = 0.8 * self._task_seconds + 0.2 * (outcome[4] - outcome[3])
            record = make_record(job.header, outcome, job.lease.attempt)
            finished.append((job, record, self._final(job, record["success"])))

    def _final(self, job: _Job, success: bool) -> bool:
        if success:
            return True
        ack = job.header["ack_failure"]
        if ack if ack is not None else self.settings.ack_failures:
            return True
        limit = self._max_attempts(job)
        return bool(limit) and job.lease.attempt >= limit

    def _broken(self, jobs: list[_Job], exc: BaseException) -> None:
        """The pool broke (a worker died, or we killed it): judge or hand back each task."""
        if self._shutting_down:
            self._give_back([j for j in jobs if not j.judged], counted=False)
            return
        self._note_dead_workers(str(exc))
        for job in jobs:
            if job.judged:
                continue
            why = self._dead_running.pop(job.header["id"], None)
            if why is None and job.header["id"] in getattr(exc, "running", ()):
                why = f"the worker process running this task died ({exc.reason})"
            if why is None:
                self._give_back([job], counted=False)  # collateral: it was only waiting
            elif self._final(job, success=False):
                self._judge(job, why, attempt=job.lease.attempt, final=True)
            else:
                self._give_back([job], counted=True)

    def _note_dead_workers(self, reason: str) -> None:
        """Read the slots of dead workers: the tasks in them were running when it broke."""
        codes = [line.strip() for line in reason.splitlines() if "exit codes" in line]
        why = codes[0] if codes else "it was killed, ran out of memory or crashed"
        for entry in os.scandir(self._slot_dir):
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if _alive(pid):
                continue
            state = read_slot(entry.path)
            if state is not None:
                self._dead_running.setdefault(
                    state[0], f"the worker process running this task died ({why})")
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
        now = time.time()
        outcome = (job.header["id"], False, why, now, now)
        self._events.put((job, make_record(job.header, outcome, attempt), final))

    # -- monitor ---------------------------------------------------------------------

    def _monitor(self) -> None:
        renew_every = min(self.settings.retry / 4, 10.0)
        last_renew = last_beat = time.monotonic()
        while not (self._stopping.is_set() and self._shutting_down):
            time.sleep(0.1)
            try:
                self._enforce_timeouts()
                now = time.monotonic()
                if now - last_renew >= renew_every:
                    last_renew = now
                    with self._lock:
                        tokens = [t for t, j in self._inflight.items() if not j.judged]
                    self.broker.renew(tokens, self.settings.retry)
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

    def _enforce_timeouts(self) -> None:
        """Tier 2 of timeouts: kill a worker stuck past its task's deadline + grace
        (dask has no tier 1: its grace is 0, and ``kill`` restarts the dask worker)."""
        if not self._slot_dir:
            return
        now = time.time()
        grace = getattr(self._executor, "kill_grace", KILL_GRACE)
        note = getattr(self._executor, "timeout_note", "(the task did not respond to the "
                       "timeout signal, so its worker process was killed)")
        for task_id, _, deadline, handle in self._running_states():
            if not deadline or now < deadline + grace:
                continue
            with self._lock:
                job = next((j for j in self._inflight.values()
                            if j.header["id"] == task_id), None)
            if job is None or job.judged:
                continue
            why = f"TaskTimeout: timed out after {job.timeout:g} s {note}"
            self._judge(job, why, attempt=job.lease.attempt,
                        final=self._final(job, success=False))
            log.warning("nbqueue cluster: task %s ran past its %g s timeout; killing worker "
                        "%s", job.header["name"], job.timeout, handle)
            self._executor.kill(handle)

    def _running_states(self) -> list[tuple[str, float, float, Any]]:
        """(task id, started, deadline or 0, worker handle) of each task running now:
        from the executor (dask), or from the workers' slots (loky; the handle a pid)."""
        states = self._executor.running() if self._executor is not None else None
        if states is not None:
            return states
        if not self._slot_dir or not os.path.isdir(self._slot_dir):
            return []
        states = []
        for entry in os.scandir(self._slot_dir):
            state = read_slot(entry.path)
            if state is not None and entry.name.isdigit():
                states.append((state[0], state[1], state[2], int(entry.name)))
        return states

    def _beat(self) -> None:
        capacity = self._executor.capacity() if self._executor is not None else None
        if capacity:  # dask: its threads now (workers come and go)
            self.workers = capacity
        self.broker.beat(self.id, self.info(), ttl=3 * HEARTBEAT + 2)

    # -- hooks -----------------------------------------------------------------------

    def _run_hooks(self) -> None:
        while True:
            item = self._hooks.get()
            if item is None:
                return
            job, record, final = item
            header = job.header
            if header["hook_name"] is None:
                continue
            try:
                hook = find_hook(self.broker, header, final)
            except Exception as exc:
                log.error("nbqueue cluster: hook %s of task %s cannot be loaded: %s",
                          header["hook_name"], header["name"], exc)
                continue
            if hook is None:
                log.warning("nbqueue cluster: hook %s of task %s was an object of a process "
                            "that has ended; it cannot run here", header["hook_name"],
                            header["name"])
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
            groups = [j.header["group"] for j in self._inflight.values()
                      if j.header["id"] in running]
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
                "dashboard": self._executor.dashboard if self._executor is not None else None}

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
        return (f"<Cluster {self.settings.label} {state} workers={self.workers} "
                f"executor={self.executor_name} done={self.done} failed={self.failed} "
                f"directory={self.directory}>")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as src:
            return src.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


_EMPTY_ARGS = cloudpickle.dumps(((), {}))

__all__ = ["Cluster"]
