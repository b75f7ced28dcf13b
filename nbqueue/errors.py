"""Every exception nbqueue raises, in one place.

Each class also subclasses the standard exception a user would already catch
(``ValueError``, ``TimeoutError`` ...), so ``except ValueError`` keeps working.
Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class NbqueueError(Exception):
    """Base class of all nbqueue errors."""


class ConfigurationError(NbqueueError, ValueError):
    """An option of ``configure``, ``Cluster`` or ``async_task`` has a bad value or name."""


class TaskFunctionError(NbqueueError, ImportError):
    """A task function or hook given as a dotted path does not resolve to a callable."""


class PackingError(NbqueueError, TypeError):
    """A task's function, hook or arguments cannot be pickled to cross processes."""


class SignatureError(NbqueueError, ValueError):
    """A queued package is not signed with this store's key (tampered, truncated or foreign)."""


class InsecureStoreError(NbqueueError, PermissionError):
    """The store directory or its key file can be read by other users."""


class StoreError(NbqueueError, OSError):
    """The store cannot be opened, read or written (corrupt, locked or full)."""


class StoreFileMissing(StoreError, FileNotFoundError):
    """A file of the store that a stored outcome or a queued task names was deleted: its
    value (a task's large arguments or result) is gone."""


class StoreLocationError(StoreError):
    """The store is on a network file system (NFS, Lustre, GPFS, SMB, sshfs ...), where
    SQLite's locks and shared memory are not sound and the store can be corrupted: it
    is not written there unless ``configure(allow_network_fs=True)``."""


class StoreGone(StoreError):
    """The store directory of a running cluster was deleted or replaced under it."""


class StoreSwapped(InsecureStoreError, StoreGone):
    """The store directory was replaced under this process by one that is not private to
    its user (another user renamed it and put their own at its path): nothing more is
    written there."""


class TaskTimeout(NbqueueError, TimeoutError):
    """Raised inside a task that ran past its ``timeout``."""


class TaskCancelled(NbqueueError):
    """Raised inside a running task that ``nbqueue.cancel`` stopped."""


class DependencyFailed(NbqueueError, RuntimeError):
    """A task never ran because one it came after failed (a chain's link): the failure's
    text names that task and its error; fix it, then run the chain again."""


class SharedObjectMissing(NbqueueError, LookupError):
    """A task was given a shared object (``nbqueue.share``) that was deleted from the
    store: share it again and send the task again."""


class TaskStillRunning(NbqueueError, RuntimeError):
    """A task cannot be sent again yet: its cancelled run has not stopped."""


class OutcomeDeleted(NbqueueError, LookupError):
    """An outcome a future waited for was deleted before it was complete (an
    ``async_iter``'s tasks deleted with ``delete_group(..., tasks=True)`` while some ran)."""


class TaskFailed(NbqueueError, RuntimeError):
    """A task ended in failure; ``.task`` is its ``Failure`` (its ``.result`` the error
    text). What a future, ``await`` and ``nbqueue.map`` raise for a failed task."""

    def __init__(self, task: object) -> None:
        self.task = task
        first = str(getattr(task, "result", "") or "").split("\n", 1)[0]
        super().__init__(f"task {getattr(task, 'name', '?')} failed: {first}")

    def __reduce__(self) -> tuple:
        return type(self), (self.task,)


class WorkerLost(NbqueueError, RuntimeError):
    """The worker process running a task died (killed, out of memory, crashed,
    ``os._exit``, its dask worker restarted or shut down), so the task has no outcome of
    its own; the message says how it ended. A task lost this way is delivered again
    until its ``max_attempts`` are spent; one lost every time needs what killed it
    fixed (out of memory: fewer workers, or smaller inputs; a crash in C code), then
    ``nbqueue.retry`` runs it again.

    In the cluster, an executor's chunk of tasks ends with this error: ``running`` holds
    the ids of the tasks that were running when it happened (the cluster counts an
    attempt for those; the chunk's other tasks were only waiting), ``reason`` how the
    worker ended (the message, without what else it says).
    """

    def __init__(self, message: str, running: tuple[str, ...] = (), reason: str = "") -> None:
        super().__init__(message)
        self.running = tuple(running)
        self.reason = reason or message

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.running, self.reason)


class RemoteError(NbqueueError):
    """Stands for an exception a task raised that cannot be pickled back here: it keeps
    the original type's name (``type_name``, dotted) and message (``message``). The
    task's full traceback is in ``Task.traceback``."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(type_name, message)

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class MissingDependency(NbqueueError, ImportError):
    """An optional package a feature needs is not installed; the message says how to
    install it."""


class InitializerFailed(NbqueueError, RuntimeError):
    """The cluster's ``initializer`` raised in a worker: the cluster stops, its tasks go
    back to the queue. Fix the initializer (its traceback is in the message), then start
    a new Cluster."""


class ClusterError(NbqueueError, RuntimeError):
    """A cluster cannot be started, or was used in a state that does not allow it."""


class DashboardRequestError(NbqueueError):
    """A request the dashboard refuses, with its HTTP status; the message tells the user
    what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NoClusterWarning(UserWarning):
    """Work was enqueued into a directory that no live cluster serves."""


class NetworkFileSystemWarning(UserWarning):
    """The store is on a network file system: read only, or written because
    ``allow_network_fs`` says so."""


class WaitWarning(UserWarning):
    """A wait for a task or group looks like it can never end; the message says why."""
