"""The cluster: a few threads in this process that move work between the queue, a pool
of worker processes and the store.

::

    queue --lease--> Feeder --chunks of Items--> Executor --> worker processes
      ^                |                            |
      |                | adds Jobs                  | Futures of Outcomes
      |                v                            v
      |            InFlight <------ removes ---- Writer --Records--> store
      |           (token -> Job,                 |   |
      |            Future -> tokens)             |   +--finished Tasks--> HookRunner
      +------- ack, release ---------------------+
      +------- renew, reap ---- Monitor (timeouts, heartbeat, store watch)

- the ``Feeder`` (``feeder.py``) leases batches, checks each package's signature and
  submits chunks of tasks, keeping the workers busy;
- the ``Writer`` (``writer.py``) stores the outcomes of finished chunks in one
  transaction, then acknowledges their leases (never before); the ``HookRunner``
  calls hooks, in this process, with the finished Task;
- the ``Monitor`` (``monitor.py``) renews leases, kills workers stuck past a timeout,
  reaps the expired leases of dead clusters, beats and watches the store directory;
- ``InFlight`` (``inflight.py``) is the table of leased jobs and running chunks they
  share; ``Deaths`` (``deaths.py``) tells which dead worker ran which task;
  ``Cancels`` (``cancels.py``) stops the tasks in flight that cancel requests name.

Each part gets what it needs when it is made (the broker, the store, the executor, the
in-flight table, the writer, callbacks that count outcomes, write the heartbeat or
report a failure) and does one step at a time (``step()``: one lease, one batch of
outcomes, one tick, one hook). The cluster runs each part's steps in a thread of its
own under one supervisor: a step goes on through the errors it expects, and anything
else, ``BaseException`` included, stops the whole cluster visibly (``error``, the log,
``nbqueue info``), as does what a chunk's callback raises in the executor's thread.

A process serves a store directory with one cluster (``serving.py``): ``start()`` run
again gives it back, and the process hands its tasks in flight back to the queue,
uncounted, as it exits or as Jupyter asks its kernel to shut down or restart.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import cloudpickle

from nbqueue import conf
from nbqueue.cluster.cancels import CancelRequests, Cancels
from nbqueue.cluster.deaths import Deaths
from nbqueue.cluster.executors import EXECUTOR_OPTIONS, Executor, make_executor
from nbqueue.cluster.feeder import Feeder, Pace
from nbqueue.cluster.inflight import InFlight
from nbqueue.cluster.monitor import HEARTBEAT, Monitor
from nbqueue.cluster.serving import install_exit_hooks, serving, serving_lock, stop_all
from nbqueue.cluster.waiting import Waiting
from nbqueue.cluster.writer import HookRunner, Writer
from nbqueue.disk import hosts
from nbqueue.disk.blobs import clean_spill, sweep_arguments
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker, get_store, heartbeats
from nbqueue.disk.names import task_of
from nbqueue.disk.storage import process_alive
from nbqueue.errors import ClusterError, ConfigurationError, PackingError
from nbqueue.figures import RateMeter
from nbqueue.worker.callables import check_callable, resolve
from nbqueue.worker.stream import Collector

log = logging.getLogger(__name__)


def _setup(initializer: Any, initargs: Any) -> bytes | None:
    """The cloudpickled ``(initializer, initargs)`` of a cluster, checked at the call."""
    if initializer is None:
        if initargs:
            raise ConfigurationError("initargs go to an initializer: give initializer= too")
        return None
    check_callable("option 'initializer'", initializer)
    if not isinstance(initargs, (tuple, list)):
        raise ConfigurationError(
            f"initargs must be a tuple of the initializer's arguments, got {initargs!r}"
        )
    function = resolve(initializer) if isinstance(initializer, str) else initializer
    try:
        return cloudpickle.dumps((function, tuple(initargs)))
    except Exception as exc:
        raise PackingError(
            f"the initializer or its initargs cannot be pickled to reach the worker "
            f"processes: {type(exc).__name__}: {exc}"
        ) from exc


class Cluster:
    """Workers that run the queued tasks of one store directory, hosted by this process.

    ``Cluster(workers=4, timeout=60).start()`` returns at once; ``stop()`` finishes or
    hands back the work in flight. Options left out come from ``configure`` and the
    ``NBQUEUE_*`` environment. Also a context manager: ``with Cluster() as c: ...``.

    ``initializer(*initargs)`` runs once in each worker process before its first task
    (and in each worker that replaces one), to fill ``nbqueue.worker_state()``, say with
    a model loaded once. If it raises, the cluster stops, saying why with its traceback
    (``error``, the log, ``nbqueue info``), and its tasks go back to the queue.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float | None = conf.UNSET,
        retry: float | None = None,
        max_attempts: int | None = None,
        ack_failures: bool | None = None,
        save_limit: int | None = None,
        bulk: int | None = None,
        poll: float | None = None,
        label: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        max_rss: int | None = None,
        executor: str = "loky",
        initializer: Callable[..., Any] | str | None = None,
        initargs: tuple | list = (),
        **executor_options: Any,
    ) -> None:
        _check_option_names(executor, executor_options)
        self._setup = _setup(initializer, initargs)
        given = {
            "workers": workers,
            "retry": retry,
            "max_attempts": max_attempts,
            "ack_failures": ack_failures,
            "save_limit": save_limit,
            "bulk": bulk,
            "poll": poll,
            "label": label,
            "directory": directory,
            "max_rss": max_rss,
        }
        options: dict[str, object] = {k: v for k, v in given.items() if v is not None}
        if timeout is not conf.UNSET:
            options["timeout"] = timeout
        self.settings = conf.merged(conf.settings(), **options)
        self.workers = self.settings.worker_count
        self.broker: Broker = get_broker(self.settings.directory)
        self.directory = self.broker.directory
        self.heartbeats = heartbeats(self.directory)
        self.store = get_store(self.directory)
        self.id = uuid.uuid4().hex
        self.executor_name = executor
        self._executor_options = executor_options
        if executor != "loky":  # fail at the call, not at start
            make_executor(executor, 1, "", self.settings.max_rss, **executor_options)
        self._executor: Executor | None = None
        self.collector: Collector | None = None  # the outcome stream, when it has one
        self.inflight = InFlight()
        self.wakeup = threading.Event()  # the queue has work, or a task just finished
        self.stopping = threading.Event()
        self.shutting_down = threading.Event()  # the executor is being shut down
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._context: Cluster | None = None
        self.error: str | None = None  # why the cluster stopped on its own, if it did
        self.started_at: float | None = None
        self.done = 0
        self.failed = 0
        self._meter = RateMeter()  # tasks finished per second, as every view counts them
        self._slot_dir = ""
        self._panels: list[Any] = []  # status panels shown in Jupyter

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise ClusterError("this cluster is not started; call start() first")
        return self._executor

    # -- life cycle ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.started_at is not None and not self.stopping.is_set()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` has finished: its workers and threads are gone."""
        return self._stopped.is_set()

    def _options(self) -> tuple:
        return (
            conf.merged(self.settings, workers=self.workers),
            self.executor_name,
            self._executor_options,
            self._setup,
        )

    def start(self) -> Cluster:
        """Start the workers and threads; returns at once (the first tasks wait for spawn).

        One process serves a store directory with one cluster: if this process already
        runs one on the same directory (a notebook cell run again), ``start()`` returns
        that running cluster when its options are the same, and otherwise stops it,
        handing its tasks in flight back to the queue uncounted, and starts this one.
        """
        with serving_lock:
            current = serving.get(self.directory)
            if current is self and self.running:
                return self
            if self.started_at is not None:
                raise ClusterError("this cluster was stopped; make a new Cluster() to start again")
            if current is not None and current.running:
                if current._options() == self._options():
                    return current
                log.warning(
                    "replacing the running cluster on %s (%s) with a new "
                    "one (%s); its tasks in flight go back to the queue",
                    self.directory,
                    current._describe(),
                    self._describe(),
                )
                current.stop(wait=0)
            self._start()
            serving[self.directory] = self
        install_exit_hooks()
        return self

    def _describe(self) -> str:
        timeout = self.settings.timeout
        return (
            f"{self.workers} {self.executor_name} workers, timeout "
            f"{'none' if timeout is None else f'{timeout:g} s'}, "
            f"retry {self.settings.retry:g} s"
        )

    def _start(self) -> None:
        self.broker.place.check()  # a store it may not write to is refused before it starts
        self.started_at = time.time()
        self._slot_dir = hosts.make_folder(self.id)
        executor = make_executor(
            self.executor_name,
            self.workers,
            self._slot_dir,
            self.settings.max_rss,
            **self._executor_options,
        )
        hosts.describe(self._slot_dir, self.id, self.directory, executor.notes_begun)
        clean_spill(self.directory, lambda host: not process_alive(host))  # of clusters gone
        hosts.sweep(self.directory, self.broker.owners())  # folders of dead hosts
        sweep_arguments(self.directory, self.broker.holds)
        executor.at_exit = stop_all
        executor.directory = self.directory
        executor.setup = self._setup
        try:
            executor.open()  # dask: connect, or start a LocalCluster
        except Exception:
            self.started_at = None
            shutil.rmtree(self._slot_dir, ignore_errors=True)
            raise
        self._executor = executor
        self._make_parts(executor)
        steps: list[tuple[str, Callable[[], bool]]] = [
            ("feeder", self.feeder.step),
            ("writer", self.writer.step),
            ("monitor", self.monitor.step),
            ("hooks", self.hook_runner.step),
        ]
        if self.collector is not None:  # its own select loop, as one step
            steps.append(("collector", _as_one_step(self.collector.run)))
        self.broker.subscribe(self.wakeup, name=self.id)
        self.broker.watch_cancels(self.monitor.wake)
        self._beat()
        for name, step in steps:
            thread = threading.Thread(
                target=self._supervised, args=(name, step), name=f"nbqueue-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _make_parts(self, executor: Executor) -> None:
        """The parts, each given what it needs (the writer, which stores every outcome,
        first: the others hand it theirs)."""
        requests = CancelRequests(self.broker)
        self.deaths = Deaths(self._slot_dir)
        self.hook_runner = HookRunner(self.store)
        self.waiting = Waiting(self.broker, self.store, self.settings.save_limit, self.hook_runner)
        pace = Pace(executor.chunk_seconds)
        self.writer = Writer(
            cluster_id=self.id,
            store=self.store,
            deaths=self.deaths,
            cancel_requests=requests,
            hooks=self.hook_runner,
            stored=self.waiting.stored,
            measured=pace.measured,
            tally=self._tally,
            failed=self._failed,
            shutting_down=self.shutting_down,
            stream_in=self._slot_dir if executor.streams_outcomes else None,
            settings=self.settings,
            broker=self.broker,
            inflight=self.inflight,
            wakeup=self.wakeup,
            stopping=self.stopping,
        )
        self.collector = self.writer.collector
        self.cancels = Cancels(
            requests=requests,
            slot_dir=self._slot_dir,
            inflight=self.inflight,
            executor=executor,
            judge=self.writer.judge,
        )
        self.feeder = Feeder(
            cluster_id=self.id,
            store=self.store,
            executor=executor,
            executor_name=self.executor_name,
            cancels=self.cancels,
            writer=self.writer,
            pace=pace,
            workers=lambda: self.workers,
            tally=self._tally,
            settings=self.settings,
            broker=self.broker,
            inflight=self.inflight,
            wakeup=self.wakeup,
            stopping=self.stopping,
        )
        self.monitor = Monitor(
            executor=executor,
            cancels=self.cancels,
            writer=self.writer,
            beat=self._beat,
            settle_waiting=self.waiting.check,
            shutting_down=self.shutting_down,
            settings=self.settings,
            broker=self.broker,
            inflight=self.inflight,
            wakeup=self.wakeup,
            stopping=self.stopping,
        )

    def _tally(self, success: bool, count: int = 1) -> None:
        """Count outcomes stored (a batch's: those of its items)."""
        if success:
            self.done += count
        else:
            self.failed += count

    def _beat(self, ttl: float = 3 * HEARTBEAT + 2) -> None:
        """Write this cluster's heartbeat, its figures (dask: its threads now, as
        workers come and go), kept ``ttl`` seconds unless written again."""
        capacity = self.executor.capacity()
        if capacity:
            self.workers = capacity
        self.heartbeats.beat(self.id, self.info(), ttl=ttl)
        if self.heartbeats.asked_to_stop(self.id) and not self.stopping.is_set():
            log.warning("cluster %s: asked to stop from a view of its store; stopping", self.id)
            threading.Thread(target=self._stop_as_asked, name="nbqueue-stop", daemon=True).start()

    def _stop_as_asked(self) -> None:
        """Stop, asked by another process (a dashboard's Stop): as ``stop()`` does."""
        try:
            self.stop()
        except BaseException:
            log.exception("cluster %s: the stop asked for failed", self.id)

    def _supervised(self, name: str, step: Callable[[], bool]) -> None:
        """Run one part's steps in its thread until it is done. Each step goes on
        through the errors it expects; anything else (``BaseException`` included)
        stops the whole cluster, visibly: a cluster with a dead thread would still look
        alive while it stored or fed nothing.

        SIGINT is blocked in these threads, and so in the threads and worker processes
        they start (a mask is inherited): a worker gets Ctrl-C blocked from its first
        instruction, until its initializer ignores it. Python runs signal handlers in the
        main thread anyway.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            while step():
                pass
        except BaseException as exc:  # noqa: BLE001 - this is the supervisor
            self._failed(f"{name} thread", exc)

    def _failed(self, where: str, exc: BaseException) -> None:
        """The one error policy, for the parts' threads and for what a part runs in a
        thread not its own (a chunk's callback, in the executor's): the cluster stops,
        saying why in ``error``, the log and ``nbqueue info``, and its tasks in flight go
        back to the queue."""
        self.error = f"its {where} failed: {type(exc).__name__}: {exc}"
        log.critical(
            "cluster %s on %s stopped: %s; its tasks in flight go back "
            "to the queue. Start a new Cluster() to go on",
            self.id[:8],
            self.directory,
            self.error,
            exc_info=exc,
        )
        threading.Thread(
            target=self.stop, kwargs={"wait": 0}, name="nbqueue-stop", daemon=True
        ).start()

    def stop(self, wait: float = 10.0) -> None:
        """Stop gracefully: take no new work, let the tasks running now finish for up to
        ``wait`` seconds, then kill the workers and hand every unfinished task back to the
        queue (its attempt not counted), store what finished, and run the pending hooks."""
        if self.started_at is None:
            return
        with self._stop_lock:
            stopping_elsewhere = self.stopping.is_set()
            self.stopping.set()
        if stopping_elsewhere:  # in another thread (the panel's button, the supervisor)
            if threading.current_thread() not in self._threads:
                self._stopped.wait(wait + 60)
            return
        self.wakeup.set()
        try:  # every view shows it stopping now, for as long as the stop may take
            self._beat(ttl=wait + 3 * HEARTBEAT + 10)
        except Exception:
            log.debug("could not write the stopping cluster's heartbeat", exc_info=True)
        feeder, writer, monitor, hooks = self._threads[:4]
        _join(feeder, 10)
        for future in self.inflight.chunks():
            future.cancel()  # the chunks still waiting in the executor never run
        # the tasks running now may finish; those a worker starts meanwhile are not waited for
        running = {state[0] for state in self._running_states()}
        deadline = time.monotonic() + wait
        while (
            any(self.inflight.job_of_task(task_id) for task_id in running)
            and time.monotonic() < deadline
            and writer.is_alive()
        ):
            time.sleep(0.01)
        self._shut_down_executor()
        if self.collector is not None:  # the workers are gone: read what they sent
            self.collector.drain()
            self.collector.close()
            _join(self._threads[4], 5)
        self.writer.events.put(None)
        _join(writer, 30)
        self._hand_back_at_stop()
        self._close_executor()  # last: it can take seconds (a dask LocalCluster)
        self.monitor.wake.set()  # its tick ends at once
        _join(monitor, 10)
        self.hook_runner.close()
        _join(hooks, 30)
        self._clean_up()

    def _shut_down_executor(self) -> None:
        self.shutting_down.set()
        try:
            self.executor.shutdown(kill=True)
        except Exception:
            log.exception("the %s executor did not shut down cleanly", self.executor_name)

    def _close_executor(self) -> None:
        try:
            self.executor.close()
        except Exception:
            log.exception("the %s executor did not close cleanly", self.executor_name)

    def _hand_back_at_stop(self) -> None:
        """Acknowledge what was stored; every task still in flight goes back uncounted."""
        try:
            self.broker.flush_acks()
            left = self.inflight.tokens()
            if left:
                self.inflight.remove(left)
                self.broker.release(left, counted=False)
                log.info("%d task(s) in flight went back to the queue", len(left))
        except Exception:
            log.exception(
                "could not hand the tasks in flight back; they "
                "will be delivered again once their lease expires"
            )

    def _clean_up(self) -> None:
        """The end of ``stop()``: record it, remove the cluster's files, redraw panels."""
        self.broker.unsubscribe(self.wakeup)
        self.broker.unwatch_cancels(self.monitor.wake)
        try:
            self.heartbeats.forget(self.id)
            if self.error is not None:
                self.heartbeats.record_stop(self.id, self.info())
        except Exception:  # the store itself may be what failed
            log.warning("could not record the stop in the store", exc_info=True)
        shutil.rmtree(self._slot_dir, ignore_errors=True)
        clean_spill(self.directory, lambda host: host == os.getpid())  # its workers are gone
        with serving_lock:
            if serving.get(self.directory) is self:
                del serving[self.directory]
        self._stopped.set()
        for panel in self._panels:  # show "stopped" now, before this call returns
            try:
                panel.refresh()
            except Exception:
                log.debug("a status panel could not be redrawn", exc_info=True)

    def __enter__(self) -> Cluster:
        self._context = self if self.running else self.start()
        return self._context

    def __exit__(self, *exc_info: Any) -> None:
        (self._context or self).stop()

    def join(self) -> None:
        """Block until the cluster is stopped (Ctrl-C in a terminal stops it gracefully)."""
        while self.running:
            time.sleep(0.2)

    # -- figures ---------------------------------------------------------------------

    def _running_states(self) -> list[tuple[str, float, float, Any]]:
        """(task id, started, deadline or 0, worker handle) of each task running now."""
        return self._executor.running() if self._executor is not None else []

    def running_tasks(self) -> int:
        """Tasks running in a worker right now."""
        return len(self._running_states())

    def running_ids(self) -> list[str]:
        """The ids of the tasks begun in a worker and running now."""
        return [state[0] for state in self._running_states()]

    def rate(self) -> float:
        """Tasks finished per second, over the last ``figures.RATE_WINDOW`` seconds."""
        return self._meter.add(self.done + self.failed)

    def info(self) -> dict[str, Any]:
        """This cluster's figures: what ``nbqueue info`` and the status panel show.
        ``waiting`` says why outcomes wait to be stored (a full disk), if they do. It
        only reads: it must answer on a full disk."""
        running = self._running_states()
        # a batch runs its items under their ids: one item of it runs at a time
        groups = self.inflight.groups({task_of(state[0]) for state in running}) if running else {}
        writer = getattr(self, "writer", None)
        return {
            "groups_running": groups,
            "state": "stopping" if self.stopping.is_set() else "running",
            "beat": time.time(),
            "id": self.id,
            "label": self.settings.label,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "executor": self.executor_name,
            "workers": self.workers,
            "directory": self.directory,
            "started": self.started_at,
            "done": self.done,
            "failed": self.failed,
            "running": len(running),
            "running_ids": [state[0] for state in running],  # begun in a worker
            "in_flight": len(self.inflight),
            "queued": self.broker.pending(),
            "rate": round(self.rate(), 1),
            "dashboard": self._executor.dashboard if self._executor is not None else None,
            "error": self.error,
            "waiting": writer.trouble if writer is not None and self.running else None,
        }

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In Jupyter, a live status panel with a stop button; plain text elsewhere."""
        from nbqueue.display.cluster_panel import ClusterPanel
        from nbqueue.display.group_panel import in_notebook

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
        elif self.running and getattr(self, "writer", None) and self.writer.trouble:
            state = f"running, waiting ({self.writer.trouble})"
        return (
            f"<Cluster {self.settings.label} {state} workers={self.workers} "
            f"executor={self.executor_name} done={self.done} failed={self.failed} "
            f"directory={self.directory}>"
        )


def _as_one_step(loop: Callable[[], None]) -> Callable[[], bool]:
    """A part that runs a loop of its own (the outcome stream's collector), as one step
    after which it is done."""

    def step() -> bool:
        loop()
        return False

    return step


def _join(thread: threading.Thread, timeout: float) -> None:
    """Join a cluster thread, unless it is the caller (a hook that stops its cluster)."""
    if thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            log.warning("thread %s did not end within %g s", thread.name, timeout)


def _check_option_names(executor: str, options: dict[str, Any]) -> None:
    """Refuse a misspelt option at the call, naming it (``Cluster(wrkers=2)``)."""
    if executor not in EXECUTOR_OPTIONS:
        raise ConfigurationError(
            f"unknown executor {executor!r}; the executors are: "
            + ", ".join(repr(e) for e in EXECUTOR_OPTIONS)
        )
    unknown = sorted(set(options) - set(EXECUTOR_OPTIONS[executor]))
    if not unknown:
        return
    own = [
        p
        for p in inspect.signature(Cluster.__init__).parameters
        if p not in ("self", "executor_options")
    ]
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
        f"{', '.join(own)}; with executor='dask' also {', '.join(EXECUTOR_OPTIONS['dask'])}"
    )


__all__ = ["Cluster"]
