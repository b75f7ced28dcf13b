"""The messages of a task, one named type per hop, and the functions that convert them.

::

    async_task --Header--> queue --Header--> cluster --Item--> worker
    worker --Outcome--> cluster --Record--> store --Task--> result()

- ``Header``: all that a task is, as the caller packed it; pickled and signed, it is
  the package in the queue (``encode_header``/``decode_header``).
- ``Item``: the part of a header a worker needs to run the task.
- ``Outcome``: what the worker sends back: the pickled result or a failure's text and
  ``Cause``, and what else the task left: its output, last progress, exception and
  traceback.
- ``Record``: what the store keeps of a finished task (``make_record``): the header's
  description of it and its outcome. ``models.Task`` is the read-only view of one.
- ``Manifest``: the ids of an ``async_iter``, whose combined result is an iter record.

A *batch* is one task that runs many items of ``map`` or ``async_iter`` (``Header.items``
of them): its arguments are the list of its items' pickled arguments, and its record
keeps one ``ItemOutcome`` per item, in order. An item is still a task to the reader:
``item_view`` makes its record from its batch's, and ``expand`` all of them.

Workers import this module, so it imports only the standard library and nbqueue's
signing, errors and blobs.
"""

from __future__ import annotations

import operator
import pickle
import time
from enum import Enum
from typing import Any, NamedTuple, TypedDict, TypeGuard

from nbqueue.disk.blobs import Frames
from nbqueue.disk.names import item_id, item_name
from nbqueue.disk.signing import sign, verify
from nbqueue.errors import SignatureError

PROTOCOL = pickle.HIGHEST_PROTOCOL
EMPTY_ARGS = pickle.dumps(((), {}), protocol=PROTOCOL)


class Cause(str, Enum):
    """Why a task failed: ``Task.cause`` of a Failure (None for a success). A record keeps
    its value (a plain string), so that a store reads alike whatever this class becomes."""

    RAISED = "raised"  # its function raised (SystemExit and KeyboardInterrupt too)
    TIMEOUT = "timeout"  # it ran past its timeout: TaskTimeout in it, or its worker killed
    CANCELLED = "cancelled"  # nbqueue.cancel stopped it, or kept it from starting
    WORKER_LOST = "worker_lost"  # its worker process died, or it was lost too many times
    EXECUTOR = "executor"  # the executor could not run its chunk (no task of it began)
    REFUSED = "refused"  # its queued package failed the signature check: it never ran
    NOT_STORED = "not_stored"  # its outcome could not be stored (a file of its own)
    DEPENDENCY = "dependency"  # a task it came after failed: it never ran (a chain's link)


class Item(NamedTuple):
    """A task as a worker runs it (``worker.execute``)."""

    id: str
    func_ref: str | None  # a dotted path, or None when func_bytes holds the function
    func_bytes: bytes | None  # the cloudpickled function
    args: Any  # the pickled (args, kwargs), or a blobs.Blob naming a file of them
    timeout: float | None
    token: str = ""  # the lease of this delivery, which its outcome names
    items: int = 0  # a batch of this many items (args: their pickled arguments); 0: a task


class Header(NamedTuple):
    """A task as queued: what to run, how, and how to describe its outcome."""

    id: str
    name: str
    func: str  # display name: the dotted path, or module.qualname of an object
    func_ref: str | None
    func_bytes: bytes | None
    args: Any  # the pickled (args, kwargs), or a blobs.Blob naming a file of them
    hook_name: str | None = None
    hook_ref: str | None = None
    hook_bytes: bytes | None = None
    group: str | None = None
    save: bool | None = None
    cached: bool | int = False
    timeout: float | None = None
    ack_failure: bool | None = None
    max_attempts: int | None = None
    enqueued: float = 0.0
    iter: str | None = None  # the async_iter this task is part of
    sent: float = 0.0  # when this delivery was sent: ``retry`` sends one again (0: enqueued)
    items: int = 0  # a batch of this many items (args: their pickled arguments); 0: a task
    then: bytes | None = None  # a chain's next link: its signed package, sent once this succeeds
    after: tuple[str, ...] = ()  # tasks whose results it takes: queued once they succeeded

    def item(self, timeout: float | None, token: str = "") -> Item:
        """What a worker needs of this task, with the timeout that applies to it (to
        each item of a batch)."""
        return Item(self.id, self.func_ref, self.func_bytes, self.args, timeout, token, self.items)


class Outcome(NamedTuple):
    """The end of one attempt of a task, as a worker (or the cluster) reports it."""

    id: str
    success: bool
    result: Any  # pickled result bytes, a failure's text, or a blobs.Blob
    started: float
    stopped: float
    token: str = ""  # the lease of the delivery it ends ("": decided by the cluster)
    pid: int = 0  # the worker process that ran it (0: decided by the cluster)
    # what else there is to keep, when there is: "output" (text), "progress" (its last
    # report), "exception" (tracebacks.pack_exception), "traceback" (text), "live" (it
    # has a live row to remove)
    details: dict[str, Any] | None = None
    cause: Cause | None = None  # why a failure failed (None: a success)


class Record(TypedDict, total=False):
    """A finished task as stored (a dict, so that stores of every version read alike)."""

    id: str
    name: str
    func: str
    hook: str | None
    args: Any  # bytes; a blobs.Blob in a record not read from the store
    group: str | None
    result: Any
    success: bool
    cause: str  # a failure's ``Cause`` (its value); a success has none
    started: float  # when it was enqueued, as in Django Q
    stopped: float
    attempt_count: int
    cached: bool | int
    save: bool | None
    iter: str | None
    package: bytes  # a failure's signed package, for ``nbqueue.retry``
    began: float  # when a worker started the attempt that gave this outcome
    sent: float  # when that attempt's delivery was sent: enqueued, or retried
    pid: int  # the worker process that ran it (0: the cluster decided the outcome)
    output: str  # what it wrote (stdout, stderr, log records), if anything
    progress: tuple  # its last ``report``: (done, total, message), if any
    exception: bytes  # a failure's exception and its chain (tracebacks.pack_exception)
    traceback: str  # a failure's traceback, chain included
    count: int  # a batch's: how many items it runs
    items: list[tuple | None]  # a batch's: its items' ``ItemOutcome`` tuples (None: sent again)
    batch: str  # an item's (a view made by ``item_view``): the id of its batch


class ItemOutcome(NamedTuple):
    """The outcome of one item of a batch, as its batch's record keeps it (as a plain
    tuple: a record reads alike whatever this class becomes)."""

    success: bool
    result: Any  # pickled result bytes, or a failure's text
    began: float
    stopped: float
    cause: str | None  # a failure's ``Cause`` value
    details: dict[str, Any] | None  # "output", "progress", "exception", "traceback"


DETAILS = ("output", "progress", "exception", "traceback")


def is_record(value: object) -> TypeGuard[Record]:
    """Whether a value read from a store's row is a record (a dict), not some other key's."""
    return isinstance(value, dict)


class Manifest(TypedDict, total=False):
    """An ``async_iter``: its tasks, in input order: its batches (``(id, items)`` each),
    or, written by an earlier version, the ids of its tasks."""

    id: str
    group: str
    ids: list[str]
    batches: list[tuple[str, int]]
    func: str
    enqueued: float
    cached: bool | int


def manifest_tasks(manifest: Manifest) -> list[str]:
    """The ids of the tasks an ``async_iter`` sent: its batches', or its tasks'."""
    if "batches" not in manifest:
        return manifest["ids"]
    return [batch for batch, _ in manifest["batches"]]


def manifest_size(manifest: Manifest) -> int:
    if "batches" not in manifest:
        return len(manifest["ids"])
    return sum(count for _, count in manifest["batches"])


_SUCCESS, _CAUSE = operator.itemgetter(0), operator.itemgetter(4)


def tallies(record: Record) -> dict[tuple[bool, bool], int]:
    """How many outcomes a record counts for, by (success, cancelled): one, or for a
    batch, those of its items."""
    if "count" not in record:
        return {(record["success"], is_cancelled(record)): 1}
    items: list[Any] | None = record.get("items")
    if items is None:  # failed as a whole
        return {(False, is_cancelled(record)): record["count"]}
    if None in items:  # some sent again alone
        items = [entry for entry in items if entry is not None]
    ok = sum(map(_SUCCESS, items))  # in C: a batch may hold many items
    cancelled = list(map(_CAUSE, items)).count(Cause.CANCELLED.value) if ok < len(items) else 0
    counts = {
        (True, False): ok,
        (False, False): len(items) - ok - cancelled,
        (False, True): cancelled,
    }
    return {kind: n for kind, n in counts.items() if n}


def has_failed(record: Record) -> bool:
    """Whether a record is a failure, or a batch's with a failed item."""
    if not record["success"]:
        return True
    return "items" in record and any(not ok for (ok, _), n in tallies(record).items() if n)


def encode_header(key: bytes, header: Header) -> bytes:
    """The signed package of a task."""
    return sign(key, pickle.dumps(header, protocol=PROTOCOL))


def decode_header(key: bytes, package: Any) -> Header:
    """The header of a package made by ``encode_header``, checked before it is unpickled.

    Raises SignatureError saying why a package cannot be a task of this store."""
    payload = verify(key, package)
    try:
        header = pickle.loads(payload)
    except Exception as exc:  # signed but unreadable: written by an incompatible version
        raise SignatureError(f"package is signed but cannot be read: {exc!r}") from exc
    if isinstance(header, Header):
        return header
    if isinstance(header, dict) and "id" in header:  # queued by nbqueue 0.1
        return Header(**{f: header[f] for f in Header._fields if f in header})
    raise SignatureError("package is signed but is not an nbqueue task")


def make_record(header: Header, outcome: Outcome, attempt: int) -> Record:
    """The stored record of one attempt of a task: its header plus its outcome."""
    record: Record = {
        "id": header.id,
        "name": header.name,
        "func": header.func,
        "hook": header.hook_name,
        "args": header.args,
        "group": header.group,
        "result": outcome.result,
        "success": outcome.success,
        "started": header.enqueued,
        "stopped": outcome.stopped,
        "attempt_count": attempt,
        "cached": header.cached,
        "save": header.save,
        "iter": header.iter,
        "began": outcome.started,
        "pid": outcome.pid,
        "sent": header.sent or header.enqueued,
    }
    if header.items:
        record["count"] = header.items
        if outcome.success:  # a batch that ran: its result is its items' outcomes
            record["items"] = outcome.result
            record["result"] = None
    if outcome.cause is not None:
        record["cause"] = outcome.cause.value
    if outcome.details is not None:
        # details' keys are fields of Record; a plain dict mypy cannot check against it
        record.update(
            {
                k: v
                for k, v in outcome.details.items()  # type: ignore[typeddict-item]
                if k != "live"
            }
        )
    return record


def has_failure(outcome: Outcome) -> bool:
    """Whether an outcome is a failure, or a batch's with a failed item: its record then
    keeps the signed package, for ``nbqueue.retry``."""
    if not outcome.success:
        return True
    items = outcome.result
    return type(items) is list and sum(map(_SUCCESS, items)) < len(items)


SINGLE = "one argument each"  # a batch's arguments: (SINGLE, [its items' one argument])


def batch_arguments(batch: Record) -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` of a batch's items (bytes read from a signed row); none for
    a batch whose arguments were a file of the store."""
    args = batch["args"]
    if not isinstance(args, (bytes, bytearray)):
        return []
    calls = pickle.loads(args)
    return [((x,), {}) for x in calls[1]] if type(calls) is tuple else calls


def _pickled_call(call: tuple[tuple, dict]) -> bytes:
    """An item's ``(args, kwargs)`` pickled alone, as a task's arguments are."""
    try:
        return pickle.dumps(call, protocol=PROTOCOL)
    except Exception:  # a value of a class defined in a notebook
        import cloudpickle

        return cloudpickle.dumps(call, protocol=PROTOCOL)


def item_view(
    batch: Record, index: int, arguments: list[tuple[tuple, dict]] | None = None
) -> Record | None:
    """The record of item ``index`` of a batch's record; None if it has no outcome (it
    was sent again on its own: see ``nbqueue.retry``). A batch that failed as a whole
    (its worker lost, or killed past an item's timeout) is each of its items' failure.
    ``arguments``: ``batch_arguments(batch)``, when many views are made of one batch."""
    if not 0 <= index < batch["count"]:
        return None
    items = batch.get("items")
    if items is not None:
        entry = items[index]
        if entry is None:
            return None
        success, result, began, stopped, cause, details = entry
    else:
        success, result, stopped = False, batch["result"], batch["stopped"]
        began, cause = batch.get("began", stopped), batch.get("cause")
        details = {k: batch[k] for k in DETAILS if k in batch}  # type: ignore[literal-required]
    if arguments is None:
        arguments = batch_arguments(batch)
    view: Record = {
        "id": item_id(batch["id"], index),
        "name": item_name(batch["name"], index),
        "func": batch["func"],
        "hook": batch["hook"],
        "args": _pickled_call(arguments[index]) if index < len(arguments) else EMPTY_ARGS,
        "group": batch["group"],
        "result": result,
        "success": success,
        "started": batch["started"],
        "stopped": stopped,
        "attempt_count": batch["attempt_count"],
        "cached": batch["cached"],
        "save": batch["save"],
        "iter": batch.get("iter"),
        "began": began,
        "pid": batch.get("pid", 0),
        "sent": batch.get("sent", batch["started"]),
        "batch": batch["id"],
    }
    if cause is not None:
        view["cause"] = cause
    if details:
        for key in DETAILS:
            if key in details:
                view[key] = details[key]  # type: ignore[literal-required]
    if not success and "package" in batch:
        view["package"] = batch["package"]
    return view


def expand(record: Record) -> list[Record]:
    """The records of a batch's items that have an outcome, in order; any other record
    as it is."""
    if "count" not in record:
        return [record]
    arguments = batch_arguments(record)
    views = (item_view(record, i, arguments) for i in range(record["count"]))
    return [view for view in views if view is not None]


def item_outcome(record: Record) -> tuple:
    """The ``ItemOutcome`` tuple a batch keeps of an item's record (one run again on its
    own)."""
    details = {k: record[k] for k in DETAILS if k in record}  # type: ignore[literal-required]
    return (
        record["success"],
        record["result"],
        record.get("began", record["stopped"]),
        record["stopped"],
        record.get("cause"),
        details or None,
    )


def chain_rest(key: bytes, header: Header, why: str) -> list[Record]:
    """The records of the links of a chain after ``header``'s that will never run, its own
    having failed (``why``): each a Failure saying so (``Cause.DEPENDENCY``)."""
    records = []
    package = header.then
    while package is not None:
        link = decode_header(key, package)
        record = make_record(link, failure(link.id, why, Cause.DEPENDENCY), 0)
        record["package"] = package
        records.append(record)
        package = link.then
    return records


def failure(task_id: str, why: str, cause: Cause) -> Outcome:
    """The outcome of a task judged failed without a worker's word: ``why`` is its text."""
    now = time.time()
    return Outcome(task_id, False, why, now, now, cause=cause)


def cause_of(record: Record) -> Cause | None:
    """Why a stored task failed; None for a success (and a failure stored by an earlier
    version, which kept no cause)."""
    value = record.get("cause")
    return None if value is None else Cause(value)


def is_cancelled(record: Record) -> bool:
    """Whether a task failed because it was cancelled (by the cluster, or raised in it)."""
    return record.get("cause") == Cause.CANCELLED.value


def refused_record(task_id: str, name: str, why: str, attempt: int) -> Record:
    """The record of a queued package that is not a task of this store (bad signature)."""
    header = Header(task_id, name, "<rejected package>", None, None, EMPTY_ARGS, save=True)
    return make_record(header, failure(task_id, why, Cause.REFUSED), attempt)


def decode_result(blob: Any) -> Any:
    """The Python value of a stored result: pickled bytes, or a failure's text as is."""
    if isinstance(blob, (bytes, bytearray)):
        return pickle.loads(blob)
    if type(blob) is Frames:
        return blob.load()
    return blob  # a failure's text (or an iter's values, ``IterOutcome.record``)


class IterOutcome:
    """The combined outcome of an ``async_iter``, made batch by batch (``add``): its
    results in input order, decoded as they come, so that a batch read can go at once."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.values: list[Any] = []
        self.success = True
        self.stopped = manifest["enqueued"]
        self.attempts = 0
        self.cause: str | None = None  # that of its first failed item, in input order

    def add(self, entries: list[tuple], attempts: int) -> None:
        """Items' ``ItemOutcome`` tuples, in input order, run in up to ``attempts``."""
        if not entries:
            return
        self.attempts = max(self.attempts, attempts)
        self.stopped = max(self.stopped, max(map(_STOPPED, entries)))
        if sum(map(_SUCCESS, entries)) == len(entries):  # an item's result: pickled bytes
            self.values.extend(map(pickle.loads, map(_RESULT, entries)))
            return
        for entry in entries:
            self.values.append(decode_result(entry[1]))
            if not entry[0]:
                self.success = False
                if self.cause is None:
                    self.cause = entry[4]

    def record(self) -> Record:
        """The combined record: never stored, so its result is the list of values."""
        manifest = self.manifest
        combined: Record = {
            "id": manifest["id"],
            "name": manifest["id"],
            "func": manifest["func"],
            "hook": None,
            "args": EMPTY_ARGS,
            "group": manifest["group"],
            "result": self.values,
            "success": self.success,
            "started": manifest["enqueued"],
            "stopped": self.stopped,
            "attempt_count": self.attempts,
            "cached": manifest["cached"],
            "save": True,
        }
        if self.cause is not None:
            combined["cause"] = self.cause
        return combined


_RESULT, _STOPPED = operator.itemgetter(1), operator.itemgetter(3)
