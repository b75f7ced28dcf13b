"""The writer stores outcomes; the hook runner calls hooks with the finished tasks.

The writer takes events from one queue: a finished chunk (its Future, put there by
the executor's thread) or a verdict reached outside a chunk (``judge``: a timeout
kill, a task given up, a worker death). It stores every final outcome of a batch of
events in one transaction, and only then acknowledges their leases: an outcome not
stored is not done. An outcome whose lease this cluster no longer holds (it stalled
past ``retry`` and the task went to another delivery) is dropped: the fence.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future

from nbqueue.cluster.cancels import WHY as CANCELLED
from nbqueue.cluster.cancels import CancelRequests
from nbqueue.cluster.deaths import Deaths
from nbqueue.cluster.executors import BROKEN
from nbqueue.cluster.inflight import InFlight, Job
from nbqueue.conf import Settings
from nbqueue.disk import chains, live_rows
from nbqueue.disk.blobs import Blob, discard
from nbqueue.disk.broker import Broker
from nbqueue.disk.names import item_id, task_of
from nbqueue.disk.records import (
    Cause,
    Header,
    Outcome,
    Record,
    expand,
    failure,
    has_failed,
    has_failure,
    make_record,
    tallies,
)
from nbqueue.disk.storage import store_trouble
from nbqueue.disk.store import Store
from nbqueue.errors import InitializerFailed, WorkerLost
from nbqueue.models import Task
from nbqueue.worker import failure_text
from nbqueue.worker.callables import find_hook, run_hook
from nbqueue.worker.stream import Collector

log = logging.getLogger(__name__)

RETRY_FIRST = 0.05  # seconds before outcomes the store refused are tried again, doubling
RETRY_MOST = 2.0  # ... up to this

Verdict = tuple[Job, Record, bool]  # (job, record, final)
# a chunk's Future, outcomes from the stream, a verdict, or None: the last, from stop()
Event = Future | list[Outcome] | Verdict | None


class Writer:
    """Stores the outcomes of the cluster's tasks and acknowledges them (one thread).

    Outcomes the store refuses (a full disk, a lock held too long) are held and tried
    again with a growing pause, their leases renewed meanwhile, and ``trouble`` says why
    (``Cluster.info``): the cluster takes no more work than its in-flight table holds. A
    record refused for a cause of its own (a file of the task's that cannot be stored)
    is told apart by storing the records of a refused batch one at a time, and becomes
    that task's failure. Outcomes still refused after ``retry`` seconds go back to the
    queue, their attempt not counted, to run again.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        settings: Settings,
        broker: Broker,
        store: Store,
        inflight: InFlight,
        deaths: Deaths,
        cancel_requests: CancelRequests,
        hooks: HookRunner,
        stored: Callable[[Iterable[str]], None],
        measured: Callable[[float], None],
        tally: Callable[[bool, int], None],
        failed: Callable[[str, BaseException], None],
        wakeup: threading.Event,
        stopping: threading.Event,
        shutting_down: threading.Event,
        stream_in: str | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.settings = settings
        self.broker = broker
        self.store = store
        self.inflight = inflight
        self.deaths = deaths
        self.cancel_requests = cancel_requests
        self.hooks = hooks
        self.stored = stored  # these tasks' outcomes are stored (the tasks that wait go on)
        self.measured = measured  # a task ran for that many seconds (it sizes chunks)
        self.tally = tally  # counts outcomes: tally(success, count)
        self.failed = failed  # stops the cluster: failed(where, exception)
        self.wakeup = wakeup
        self.stopping = stopping
        self.shutting_down = shutting_down  # the executor is being shut down
        self.events: queue.Queue[Event] = queue.Queue()
        self._arrived: set[str] = set()  # leases of streamed outcomes not handled yet
        self._arrived_lock = threading.Lock()
        self._live: list[str] = []  # tasks whose live rows go once their outcome is stored
        self._held: list[tuple[Job, Record]] = []  # final outcomes not stored yet, in order
        self._held_tokens: frozenset[str] = frozenset()  # their leases, for other threads
        self._pause = 0.0  # seconds until the held outcomes are tried again
        self._next_try = 0.0  # when, on the monotonic clock
        self._since = 0.0  # when the store first refused them (monotonic), 0: it did not
        self._oldest = 0.0  # since when the outcomes held now are held, at most
        self._gone_back = 0  # outcomes given back to the queue since the store refused them
        self.trouble: str | None = None  # why outcomes wait to be stored, if they do
        # the outcome stream of the workers, in the slot directory ``stream_in``; its
        # thread is the collector's (``Collector.run``)
        self.collector = (
            Collector(stream_in, broker.key, self.streamed) if stream_in is not None else None
        )

    def step(self) -> bool:
        """Store the outcomes of the events that came (waiting for one, or until the
        held outcomes are tried again); False once ``stop()`` sent None (after the
        executor shut down, so every chunk's event is queued before it)."""
        wait = max(0.0, self._next_try - time.monotonic()) if self._held else None
        try:
            events = [self.events.get(timeout=wait)]
        except queue.Empty:
            events = []  # time to try the held outcomes again
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                break
        try:
            self._handle(events)
        except Exception:
            log.exception(
                "writer error; the affected tasks go back to "
                "the queue when the cluster stops, or are delivered again "
                "once their lease expires"
            )
        if None in events:  # what is still held goes back (at last by the stop)
            for _, record in self._held:
                discard(record["result"])
            self._give_back(self._held, "the cluster stopped")
            return False
        return True

    def streamed(self, outcomes: list[Outcome]) -> None:
        """Outcomes from the stream (in the collector's thread), ahead of their chunk."""
        with self._arrived_lock:
            self._arrived.update(outcome.token for outcome in outcomes)
        self.events.put(outcomes)

    def chunk_done(self, future: Future) -> None:
        """A chunk ended (in the executor's thread): note the workers that died first.
        What fails here stops the cluster (the executor would only log it, and the
        chunk's tasks would wait in flight for ever)."""
        try:
            if (
                not self.shutting_down.is_set()
                and not future.cancelled()
                and isinstance(future.exception(), BROKEN)
            ):
                self.deaths.note(str(future.exception()))
            self.events.put(future)
        except BaseException as exc:  # noqa: BLE001 - reported to the cluster's supervisor
            self.failed("chunk callback", exc)

    def judge(self, job: Job, why: str, cause: Cause, attempt: int, final: bool) -> None:
        """Decide a task's outcome outside its chunk (timeouts, give-ups, worker deaths,
        cancels); not that of a task whose outcome is held (decided, not stored yet).
        The caller looked the task up a moment before, and its run may have ended since:
        the writer takes the first outcome it gets of a delivery, and a verdict that
        comes after its run's outcome (or after another verdict) is void."""
        if job.lease.token in self._held_tokens:
            return
        job.judged = True
        self.events.put((job, _record(job, failure(job.header.id, why, cause), attempt), final))

    def _last_words(self, record: Record) -> None:
        """What a task judged from outside (killed on its timeout, its worker dead) wrote
        and reported until its live row was last written, if it has one."""
        directory = self.broker.directory
        try:
            row = live_rows.read(directory, record["id"], fresh=False)
        except Exception:  # a bad row is logged by the read; the verdict stands
            return
        if row is None:
            return
        self._live.append(record["id"])
        record["began"], record["pid"] = row["started"], row["pid"]
        if row.get("progress") is not None:
            record["progress"] = row["progress"]
        if row.get("output"):
            record["output"] = (
                row["output"] + "\n[... what it wrote after "
                f"{time.strftime('%H:%M:%S', time.localtime(row['updated']))}"
                " was lost with its run ...]\n"
            )

    def hand_back(self, jobs: list[Job], counted: bool) -> None:
        """Return tasks to the queue unfinished, their attempt ``counted`` or not."""
        tokens = [job.lease.token for job in jobs]
        self.inflight.remove(tokens)
        self.broker.release(tokens, counted=counted)

    def _handle(self, events: list[Event]) -> None:
        finished: list[Verdict] = []
        for event in events:
            if isinstance(event, Future):
                self._finish_chunk(event, self.inflight.take_chunk(event), finished)
            elif isinstance(event, list):
                with self._arrived_lock:
                    self._arrived.difference_update(outcome.token for outcome in event)
                self._outcomes(event, finished)
            elif event is not None and not event[0].decided:  # else void: see judge()
                event[0].decided = True
                self._last_words(event[1])
                finished.append(event)
        for _job, record, final in finished:
            if not final:  # delivered again once its lease expires; not an outcome yet
                log.info(
                    "task %s failed on attempt %d; it is delivered again in about %g s: %s",
                    record["name"],
                    record["attempt_count"],
                    self.settings.retry,
                    str(record["result"]).split("\n", 1)[0],
                )
        again = [job.lease.token for job, _, final in finished if not final]
        if again:
            self.inflight.remove(again)
        self._held.extend((job, record) for job, record, final in finished if final)
        if not self._held:
            if finished:
                self._forget_live()
            return
        if time.monotonic() < self._next_try and None not in events:
            return
        outcomes = self._held
        try:
            stored, held, why = self._store(self._fenced(outcomes))
        except Exception as exc:  # the fence's read of the queue failed
            stored, held, why = [], outcomes, exc
        self._hold(held)
        if self._held:
            self._refused(why)
        elif self._since:
            log.warning(
                "the store takes outcomes again; the ones held for %.1f s are stored",
                time.monotonic() - self._since,
            )
            self._since, self._pause, self._gone_back, self.trouble = 0.0, 0.0, 0, None
        if stored:
            self._done(stored)

    def _hold(self, outcomes: list[tuple[Job, Record]]) -> None:
        """Hold these outcomes (the store refused them); none is held on success."""
        self._held = outcomes
        if outcomes or self._held_tokens:
            self._held_tokens = frozenset(job.lease.token for job, _ in outcomes)

    def _store(
        self,
        outcomes: list[tuple[Job, Record]],
    ) -> tuple[list[tuple[Job, Record]], list[tuple[Job, Record]], BaseException | None]:
        """Store outcomes in one transaction; if the store refuses it, one at a time, to
        tell a record's own trouble (its task's failure) from the store's (held).
        Returns (stored, held, why the store refused the held ones)."""
        save, limit = self.store.save, self.settings.save_limit
        try:  # held ones were tried before: one part may have taken them (replace)
            save([record for _, record in outcomes], limit, bool(self._since))
            return outcomes, [], None
        except Exception as exc:
            why: BaseException = exc
        stored, held = [], []
        for job, record in outcomes:
            if len(outcomes) > 1:
                try:
                    save([record], limit, True)
                    stored.append((job, record))
                    continue
                except Exception as exc:
                    why = exc
            if self._store_wide(why) is not None:
                held.append((job, record))
                continue
            own = self._own_failure(job, record, why)
            try:
                save([own], limit, True)
            except Exception as exc:  # the store's trouble after all
                why = exc
                held.append((job, record))
                continue
            log.error(
                "the outcome of task %s could not be stored (%s: %s); it is stored as its failure",
                record["name"],
                type(why).__name__,
                why,
            )
            discard(record["result"])
            stored.append((job, own))
        return stored, held, why

    def _store_wide(self, exc: BaseException | None) -> str | None:
        """What is wrong with the store, if ``exc`` is its trouble and not one record's."""
        return (
            store_trouble(exc, os.path.join(self.broker.directory, "results"))
            if exc is not None
            else None
        )

    @staticmethod
    def _own_failure(job: Job, record: Record, exc: BaseException) -> Record:
        """A record the store refused for a cause of its own, made its task's failure:
        no file of its own, its package kept for ``nbqueue.retry``."""
        text = (
            f"StoreError: the outcome of this task could not be stored: "
            f"{type(exc).__name__}: {exc}. Once the cause is fixed, nbqueue.retry "
            "runs it again"
        )
        if not record["success"]:
            text += f"\n\nIts outcome was this failure:\n{record['result']}"
        return {
            **record,
            "success": False,
            "cause": Cause.NOT_STORED.value,
            "result": text,
            "package": job.lease.package,
        }

    def _refused(self, why: BaseException | None) -> None:
        """The store refused the held outcomes: say why, try again later, and give them
        back to the queue once that has lasted ``retry`` seconds."""
        now = time.monotonic()
        cause = self._store_wide(why) or f"{type(why).__name__}: {why}"
        if not self._since:
            self._since = now
            log.error(
                "the store refused the outcomes of %d task(s): %s. They "
                "are held and stored as soon as it takes them; the cluster takes new "
                "work only as far as its table of tasks in flight has room",
                len(self._held),
                cause,
            )
            self._oldest = now
        elif now - self._oldest >= self.settings.retry:
            count = len(self._held)
            self._hold(
                self._give_back(
                    self._held,
                    f"the store refused them for over {self.settings.retry:g} s: {cause}",
                )
            )
            self._gone_back += count - len(self._held)
            self._oldest = now  # those that run again get as long
        self._pause = min(RETRY_MOST, max(RETRY_FIRST, 2 * self._pause))
        self._next_try = now + self._pause
        since = time.strftime("%H:%M:%S", time.localtime(time.time() - (now - self._since)))
        back = f", {self._gone_back} went back to the queue to run again" if self._gone_back else ""
        self.trouble = (
            f"the store refuses outcomes since {since} ({len(self._held)} held, "
            f"tried again every {self._pause:g} s at most{back}): {cause}"
        )

    def _give_back(
        self,
        outcomes: list[tuple[Job, Record]],
        why: str,
    ) -> list[tuple[Job, Record]]:
        """Hand the tasks of outcomes not stored back to the queue, their attempt not
        counted: they run again. Returns them if the queue refused them too (held on)."""
        if not outcomes:
            return []
        tokens = [job.lease.token for job, _ in outcomes]
        try:
            self.broker.release(tokens, counted=False)
        except Exception as exc:
            log.warning(
                "could not hand %d task(s) back to the queue (%s); their outcomes are held",
                len(outcomes),
                exc,
            )
            return outcomes
        self.inflight.remove(tokens)
        self.wakeup.set()
        for _, record in outcomes:
            discard(record["result"])
        log.warning(
            "%d task(s) whose outcomes could not be stored went back "
            "to the queue, their attempt not counted, to run again: %s",
            len(outcomes),
            why,
        )
        return []

    def _done(self, outcomes: list[tuple[Job, Record]]) -> None:
        """Outcomes stored: their chains go on, then their leases are acknowledged, they
        are counted and their hooks run. The writes after the store (a chain's next link,
        an ack, the cancels, live rows) may fail on a troubled store: each is logged, and
        left to a later transaction."""
        for job, record in outcomes:
            if job.header.then is not None:
                try:
                    chains.go_on(
                        self.broker, self.store, job.header, record, self.settings.save_limit
                    )
                except Exception as exc:
                    log.error("the chain after task %s cannot go on: %s", job.header.name, exc)
        self.stored(job.header.id for job, _ in outcomes)
        blobbed = [
            job
            for job, record in outcomes
            if type(job.header.args) is Blob and not has_failed(record)
        ]
        acked: set[str] = set()
        if blobbed:  # done with their argument files, once no delivery can come again
            try:
                self.broker.ack([job.lease.token for job in blobbed])
                acked = {job.lease.token for job in blobbed}
                for job in blobbed:
                    if job.header.hook_name is None:
                        discard(job.header.args)
            except Exception as exc:  # acknowledged with the others below
                log.warning("could not acknowledge %d task(s) now: %s", len(blobbed), exc)
        done = [job.lease.token for job, _ in outcomes if job.lease.token not in acked]
        if self.stopping.is_set():
            try:
                self.broker.ack(done)
            except Exception:  # the stop's flush_acks tries again
                self.broker.ack_soon(done)
        else:  # with the feeder's next lease, which this wakes
            self.broker.ack_soon(done)
            self.wakeup.set()
        self.inflight.remove(job.lease.token for job, _ in outcomes)
        for job, record in outcomes:
            for (success, _), count in tallies(record).items():
                self.tally(success, count)
            self.hooks.put(job, record)
        try:
            known = self.cancel_requests.known()
            ids = {job.header.id for job, _ in outcomes}
            cancelled = known & ids
            if self.cancel_requests.has_items:  # and those of their items
                cancelled |= {i for i in known if task_of(i) in ids}
            if cancelled:  # done with: a later retry() of these runs them
                self.broker.forget_cancels(cancelled)
        except Exception as exc:
            log.warning("could not clear the cancels of stored outcomes: %s", exc)
        if not self._held:
            self._forget_live()

    def _forget_live(self) -> None:
        """Remove the live rows of the tasks whose outcome is stored (or that run again)."""
        if not self._live:
            return
        live, self._live = self._live, []
        try:
            live_rows.forget(self.broker.directory, live)
        except Exception as exc:  # a row left behind reads as stale once not refreshed
            log.warning("could not remove the live rows of %d task(s): %s", len(live), exc)

    def _fenced(self, outcomes: list[tuple[Job, Record]]) -> list[tuple[Job, Record]]:
        """The outcomes whose leases this cluster still holds; the others leave the
        in-flight table."""
        held = self.broker.held([job.lease.token for job, _ in outcomes], self.cluster_id)
        if len(held) == len(outcomes):
            return outcomes
        log.warning(
            "dropped %d outcome(s) whose leases had expired (this "
            "cluster was stalled for over %g s); those tasks belong to another "
            "delivery now",
            len(outcomes) - len(held),
            self.settings.retry,
        )
        for job, record in outcomes:
            if job.lease.token not in held:
                discard(record["result"])
        self.inflight.remove(job.lease.token for job, _ in outcomes if job.lease.token not in held)
        return [(job, record) for job, record in outcomes if job.lease.token in held]

    def _finish_chunk(self, future: Future, jobs: list[Job], finished: list[Verdict]) -> None:
        """A chunk ended: its outcomes, except those the stream brought (named by id)."""
        try:
            outcomes = future.result()
        except CancelledError:
            self.hand_back(self._cancelled_ended(jobs, finished), counted=False)
            return
        except BROKEN as exc:
            self._broken(jobs, exc, finished)
            return
        except InitializerFailed as exc:  # no task of it began: back to the queue
            self.hand_back(self._cancelled_ended(jobs, finished), counted=False)
            self.failed("worker initializer", exc)
            return
        except BaseException as exc:  # the chunk itself failed to run: count it on each task
            why = failure_text(exc)
            outcomes = [
                failure(job.header.id, why, Cause.EXECUTOR)._replace(token=job.lease.token)
                for job in jobs
                if not self._arrived_ahead(job)
            ]
        self._outcomes([o for o in outcomes if not isinstance(o, str)], finished)
        reported = {o if isinstance(o, str) else o.id for o in outcomes}
        self._cancelled_ended(
            [job for job in jobs if job.header.id not in reported], finished
        )  # those it left out (dask drops them)

    def _cancelled_ended(self, jobs: list[Job], finished: list[Verdict]) -> list[Job]:
        """Of the jobs of a chunk that ended without their outcomes, the ones neither
        cancelled nor judged; each cancelled one is judged cancelled (final) now that
        nothing runs it, unless it has an outcome already (a verdict, or its run's
        through the stream)."""
        rest = []
        for job in jobs:
            if job.judged or job.decided or self._arrived_ahead(job):
                continue  # its outcome is another's: never handed back beside it
            if job.cancelled:
                job.judged = job.decided = True
                outcome = failure(job.header.id, CANCELLED, Cause.CANCELLED)
                record = _record(job, outcome, job.lease.attempt)
                self._last_words(record)
                finished.append((job, record, True))
            else:
                rest.append(job)
        return rest

    def _arrived_ahead(self, job: Job) -> bool:
        """Whether the task's outcome came through the stream, not handled yet."""
        with self._arrived_lock:
            return job.lease.token in self._arrived

    def _outcomes(self, outcomes: list[Outcome], finished: list[Verdict]) -> None:
        """Make the records of outcomes whose jobs are still in flight and not judged."""
        settings = self.settings
        inflight = self.inflight
        for outcome in outcomes:  # by its delivery: an earlier one's late outcome is no match
            job = inflight.job(outcome.token)
            if type(outcome.result) is list:  # a batch's: the live rows of its items
                self._live += [
                    item_id(outcome.id, i)
                    for i, entry in enumerate(outcome.result)
                    if entry[5] is not None and entry[5].get("live")
                ]
            if outcome.details is not None:
                if outcome.details.get("live"):
                    self._live.append(outcome.id)
                unspilled = outcome.details.pop("unspilled", None)
                if unspilled is not None and job is not None and not job.judged:
                    log.warning(
                        "the worker could not write the result of task "
                        "%s to a file of the store (%s); it came inline (%s bytes) "
                        "and is stored with the others",
                        job.header.name,
                        unspilled,
                        f"{len(outcome.result):,}",
                    )
            if job is None or job.judged or job.decided:
                discard(outcome.result)  # a large result no record will hold
                continue
            job.decided = True
            self.measured(outcome.stopped - outcome.started)
            record = _record(job, outcome, job.lease.attempt)
            final = job.cancelled or job.is_final(record["success"], settings)
            finished.append((job, record, final))

    def _broken(self, jobs: list[Job], exc: BaseException, finished: list[Verdict]) -> None:
        """The pool broke (a worker died, or we killed it): judge or hand back each task,
        once every worker of the broken pool is dead (one still running a task would
        otherwise run it beside its next delivery)."""
        self.deaths.await_doomed()
        if self.collector is not None:  # what the dead workers sent is all read
            self.collector.drain()
        for job in self._cancelled_ended(jobs, finished):
            why = self.deaths.why(job.header.id)
            if job.judged or self._arrived_ahead(job):
                continue
            if why is None and isinstance(exc, WorkerLost) and job.header.id in exc.running:
                why = f"the worker process running this task died ({exc.reason})"
            if why is None or self.shutting_down.is_set():
                self.hand_back([job], counted=False)  # collateral: it was only waiting
            elif job.last_attempt(self.settings):  # lost: delivered again, whatever
                self.judge(
                    job,
                    f"WorkerLost: {why}",
                    Cause.WORKER_LOST,
                    attempt=job.lease.attempt,
                    final=True,
                )  # ack_failures
            else:
                self.hand_back([job], counted=True)


def _record(job: Job, outcome: Outcome, attempt: int) -> Record:
    """The record of an outcome; a failure keeps its package, for ``nbqueue.retry``."""
    record = make_record(job.header, outcome, attempt)
    if has_failure(outcome):
        record["package"] = job.lease.package
    return record


class HookRunner:
    """Calls the hooks of finished tasks, in this process, one after another (one thread)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.Queue[tuple[Header, Record] | None] = queue.Queue()

    def put(self, job: Job, record: Record) -> None:
        self.put_header(job.header, record)

    def put_header(self, header: Header, record: Record) -> None:
        """The hook of a task that ran in no job of this cluster's (one that waited, whose
        dependency failed)."""
        if header.hook_name is not None:
            self._queue.put((header, record))

    def close(self) -> None:
        """Let ``step`` say it is done once the hooks already queued have run."""
        self._queue.put(None)

    def step(self) -> bool:
        """Run the next hook, waiting for one; False once ``close()`` was called."""
        item = self._queue.get()
        if item is None:
            return False
        header, record = item
        try:
            self._call(header, record)
        finally:
            if type(header.args) is Blob and not has_failed(record):
                discard(header.args)  # kept for the hook's Task.args until now
        return True

    def _call(self, header: Header, record: Record) -> None:
        try:
            hook = find_hook(header)
        except Exception as exc:
            log.error(
                "hook %s of task %s cannot be loaded: %s",
                header.hook_name,
                header.name,
                exc,
            )
            return
        if hook is None:
            log.warning(
                "hook %s of task %s was an object of a process that has ended; it cannot run here",
                header.hook_name,
                header.name,
            )
            return
        for each in expand(record):  # a batch's hook runs for each of its items
            run_hook(hook, Task(each, self.store, bool(record["cached"])), log)


__all__ = ["Writer", "HookRunner"]
