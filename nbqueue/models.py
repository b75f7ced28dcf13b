"""``Task``, ``Success`` and ``Failure``: read-only views of stored outcomes.

A Task wraps one stored record. Its result, args and kwargs are unpickled only
when read, so listing a group of large results costs little until they are used.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, TypeGuard, overload

from nbqueue.disk import blobs
from nbqueue.disk.blobs import Blob
from nbqueue.disk.directory import get_store
from nbqueue.disk.records import Cause, Record, cause_of, decode_result
from nbqueue.disk.signing import load_key
from nbqueue.disk.store import Store
from nbqueue.worker.tracebacks import exception_from_text, unpack_exception


def _default_store(store: Store | None) -> Store:
    if store is not None:
        return store
    from nbqueue.disk.directory import get_broker

    return get_store(get_broker().directory)


@overload
def _when(timestamp: float) -> datetime: ...
@overload
def _when(timestamp: float | None) -> datetime | None: ...
def _when(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)


class Task:
    """An executed task, as stored. Get one with ``fetch`` or ``Task.get_task``."""

    _success_filter: ClassVar[bool | None] = None

    def __init__(self, record: Record, store: Store | None = None, cached: bool = False):
        self._record = record
        self._store = store
        self._cached = cached
        self._decoded: dict[str, Any] = {}

    # -- fields ----------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._record["id"]

    @property
    def name(self) -> str:
        return self._record["name"]

    @property
    def func(self) -> str:
        """The dotted path of the function that ran (``module.qualname`` for an object)."""
        return self._record["func"]

    @property
    def hook(self) -> str | None:
        return self._record["hook"]

    def _arguments(self) -> tuple[tuple, dict]:
        if "args" not in self._decoded:
            self._decoded["args"] = decode_result(self._pickled("args"))
        return self._decoded["args"]

    def _pickled(self, field: Literal["args", "result"]) -> Any:
        """A field as stored; a large one that a record just made names a file (a hook's
        Task, in the cluster's process), read here (``blobs``)."""
        value = self._record[field]
        if type(value) is Blob:
            value = blobs.read(
                value,
                load_key(_default_store(self._store).directory),
                self._record["id"],
                blobs.ROLES[field],
            )
        return value

    @property
    def args(self) -> tuple:
        return self._arguments()[0]

    @property
    def kwargs(self) -> dict:
        return self._arguments()[1]

    @property
    def result(self) -> Any:
        """The value the function returned, or for a failure the error and its traceback."""
        if "result" not in self._decoded:
            self._decoded["result"] = decode_result(self._pickled("result"))
        return self._decoded["result"]

    @property
    def cause(self) -> Cause | None:
        """Why the task failed (``nbqueue.Cause``: it raised, timed out, was cancelled,
        its worker was lost ...); None for a success."""
        return cause_of(self._record)

    @property
    def started(self) -> datetime:
        """When the task was enqueued (UTC)."""
        return _when(self._record["started"])

    @property
    def stopped(self) -> datetime:
        """When a worker finished it (UTC)."""
        return _when(self._record["stopped"])

    @property
    def success(self) -> bool:
        return self._record["success"]

    @property
    def group(self) -> str | None:
        return self._record["group"]

    @property
    def attempt_count(self) -> int:
        return self._record["attempt_count"]

    @property
    def cached(self) -> bool:
        """Whether this task was read from the cached part of the store."""
        return self._cached

    @property
    def began(self) -> datetime | None:
        """When a worker started the attempt that gave this outcome (UTC); None for a
        task stored by an earlier version."""
        return _when(self._record.get("began"))

    @property
    def sent(self) -> datetime:
        """When the delivery that gave this outcome was sent (UTC): ``started``, or the
        last ``nbqueue.retry``."""
        return _when(self._record.get("sent") or self._record["started"])

    @property
    def duration(self) -> float | None:
        """Seconds the attempt that gave this outcome ran (queue time not included)."""
        began = self._record.get("began")
        return None if began is None else max(0.0, self._record["stopped"] - began)

    @property
    def pid(self) -> int | None:
        """The worker process that ran it; None when the cluster decided the outcome
        (a timeout kill, a worker death, a cancel before it ran)."""
        return self._record.get("pid") or None

    @property
    def output(self) -> str:
        """What the task wrote to stdout and stderr, and its log records of WARNING and
        above, interleaved in order; the last 64 K characters, saying so where cut."""
        return self._record.get("output", "")

    @property
    def progress(self) -> tuple | None:
        """The task's last ``nbqueue.report``: ``(done, total, message)``, or None."""
        return self._record.get("progress")

    @property
    def exception(self) -> BaseException | None:
        """The exception the task raised, with its ``__cause__``/``__context__`` chain:
        the object itself when it could be pickled, else a ``nbqueue.RemoteError``
        with its type's name and message. None for a success."""
        if self.success:
            return None
        if "exception" not in self._decoded:
            self._decoded["exception"] = self._load_exception()
        return self._decoded["exception"]

    def _load_exception(self) -> BaseException:
        packed = self._record.get("exception")
        if packed is not None:
            try:
                return unpack_exception(packed)
            except Exception:
                pass
        return exception_from_text(self._record["result"])

    @property
    def traceback(self) -> str | None:
        """The failure's full traceback, its chain included, with the source lines of
        functions defined in notebook cells; None for a success."""
        if self.success:
            return None
        return self._record.get("traceback") or str(self._record["result"])

    def reraise(self) -> None:
        """Raise the task's exception here (a fresh copy each time), its traceback in
        the task as a note. Raises ``ValueError`` for a success."""
        if self.success:
            raise ValueError(f"task {self.name} succeeded: it has no exception to raise")
        exc = self._load_exception()
        if self.traceback and hasattr(exc, "add_note"):
            exc.add_note(
                f"\nTraceback in task {self.name} ({self.func}):\n" + self.traceback.rstrip("\n")
            )
        raise exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._record == self._record

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        from nbqueue.display.views import task_line

        return task_line(self)

    def _repr_html_(self) -> str:
        from nbqueue.display.views import task_html

        return task_html(self)

    # -- methods ---------------------------------------------------------------------

    def time_taken(self) -> float:
        """Seconds from enqueue to finish, queue time included."""
        return self._record["stopped"] - self._record["started"]

    def group_result(self, failures: bool = False) -> list[Any] | None:
        """Results of this task's group; failed ones too with ``failures=True``."""
        if self.group is None:
            return None
        return group_results(self._part(), self.group, failures)

    def group_count(self, failures: bool = False) -> int | None:
        """Tasks in this task's group (successes and failures, as in Django Q), or only
        the failures with ``failures=True``; None for a task without a group, as in
        Django Q."""
        if self.group is None:
            return None
        return group_count(self._part(), self.group, failures)

    def group_delete(self, tasks: bool = False) -> int:
        """Remove the group label from this task's group, or delete its tasks (``tasks=True``)."""
        if self.group is None:
            return 0
        return self._part().delete_group(self.group, tasks)

    def save(self) -> None:
        """Keep this task in the saved part of the store (turns a cached task into a saved one)."""
        record = self._record.copy()
        record["cached"], record["save"] = False, True
        store = _default_store(self._store)
        store.saved.write([record], replace=True)
        self._record, self._cached = record, False

    def _part(self):
        return _default_store(self._store).part(self._cached)

    # -- class methods, as in Django Q ------------------------------------------------

    @classmethod
    def _accepts(cls, record: Record | None) -> TypeGuard[Record]:
        return record is not None and (
            cls._success_filter is None or record["success"] == cls._success_filter
        )

    @classmethod
    def get_task(
        cls, task_id: str, cached: bool = False, store: Store | None = None
    ) -> Task | None:
        """A stored task by uuid or name, or None."""
        store = _default_store(store)
        record = store.part(cached).get(task_id)
        return cls(record, store, cached) if cls._accepts(record) else None

    @classmethod
    def get_result(cls, task_id: str, cached: bool = False, store: Store | None = None) -> Any:
        """A stored task's result by uuid or name, or None."""
        task = cls.get_task(task_id, cached, store)
        return None if task is None else task.result

    @classmethod
    def get_task_group(
        cls, group_id: str, failures: bool = True, cached: bool = False, store: Store | None = None
    ) -> list[Task]:
        """The group's tasks; without the failed ones when ``failures=False``."""
        store = _default_store(store)
        records = store.part(cached).group_records(group_id, failures)
        return [cls(r, store, cached) for r in records if cls._accepts(r)]

    @classmethod
    def get_result_group(
        cls, group_id: str, failures: bool = False, cached: bool = False, store: Store | None = None
    ) -> list[Any]:
        """The group's results; failed ones too when ``failures=True``."""
        return [t.result for t in cls.get_task_group(group_id, failures, cached, store)]

    @classmethod
    def get_group_count(
        cls, group_id: str, failures: bool = False, cached: bool = False, store: Store | None = None
    ) -> int:
        """Tasks in the group (successes and failures, as in Django Q), or only the
        failures when ``failures=True``; ``Success``/``Failure`` count only their kind."""
        part = _default_store(store).part(cached)
        if cls._success_filter is not None:
            return part.count(group_id, failures=not cls._success_filter)
        return group_count(part, group_id, failures)

    @classmethod
    def delete_group(
        cls, group_id: str, objects: bool = False, cached: bool = False, store: Store | None = None
    ) -> int:
        """Remove a group label; with ``objects=True`` delete the group's tasks too."""
        return _default_store(store).part(cached).delete_group(group_id, objects)


class Success(Task):
    """The successful tasks only."""

    _success_filter = True


class Failure(Task):
    """The failed tasks only."""

    _success_filter = False


def group_count(part: Any, group: str, failures: bool = False) -> int:
    """Django Q's count of a group: every task of it, or only the failures."""
    if failures:
        return part.count(group, failures=True)
    return sum(part.tally(group))


def group_results(part, group: str, failures: bool) -> list[Any]:
    return [decode_result(r["result"]) for r in part.group_records(group, failures)]
