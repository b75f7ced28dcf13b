"""nbqueue: the Django Q Tasks API for Jupyter, with no Django.

``async_task`` in a notebook cell, a loky worker cluster started from the kernel,
results in a private on-disk store that every process on the machine can read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nbqueue.conf import configure
from nbqueue.control import cancel, cancel_group, retry, retry_group
from nbqueue.dependencies import Result
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import get_broker
from nbqueue.disk.records import Cause
from nbqueue.disk.shared import Shared
from nbqueue.display.summary import GroupSummary, summary
from nbqueue.errors import (
    ClusterError,
    ConfigurationError,
    DependencyFailed,
    InitializerFailed,
    InsecureStoreError,
    MissingDependency,
    NbqueueError,
    NoClusterWarning,
    OutcomeDeleted,
    PackingError,
    RemoteError,
    SharedObjectMissing,
    SignatureError,
    StoreError,
    TaskCancelled,
    TaskFailed,
    TaskFunctionError,
    TaskStillRunning,
    TaskTimeout,
    WaitWarning,
    WorkerLost,
)
from nbqueue.futures import TaskFuture, future
from nbqueue.iterate import as_completed
from nbqueue.live import output, status
from nbqueue.models import Failure, Success, Task
from nbqueue.results import (
    count_group,
    delete_cached,
    delete_group,
    fetch,
    fetch_group,
    flush,
    queue_size,
    result,
    result_group,
)
from nbqueue.sharing import share, shared
from nbqueue.tasks import AsyncTask, Chain, Iter, async_chain, async_iter, async_task
from nbqueue.worker import worker_state
from nbqueue.worker.capture import report

if TYPE_CHECKING:
    from nbqueue.cluster import Cluster
    from nbqueue.display.group_panel import progress
    from nbqueue.executor import Executor

__version__ = "0.1.0"


def __getattr__(name: str):
    # The cluster (and loky with it) loads on first use: enqueuing never needs it.
    if name == "Cluster":
        from nbqueue.cluster import Cluster

        return Cluster
    if name == "map":  # not imported above, nor in __all__: `import *` keeps builtin map
        from nbqueue.iterate import map

        return map
    if name == "Executor":
        from nbqueue.executor import Executor

        return Executor
    if name == "progress":
        from nbqueue.display.group_panel import progress

        return progress
    raise AttributeError(f"module 'nbqueue' has no attribute {name!r}")


__all__ = [
    "async_task",
    "async_iter",
    "AsyncTask",
    "Iter",
    "async_chain",
    "Chain",
    "DependencyFailed",
    "Result",
    "share",
    "shared",
    "Shared",
    "SharedObjectMissing",
    "result",
    "fetch",
    "result_group",
    "fetch_group",
    "count_group",
    "delete_group",
    "delete_cached",
    "queue_size",
    "flush",
    "Task",
    "Success",
    "Failure",
    "Cause",
    "Cluster",
    "configure",
    "get_broker",
    "Broker",
    "progress",
    "NbqueueError",
    "ConfigurationError",
    "TaskFunctionError",
    "PackingError",
    "SignatureError",
    "InsecureStoreError",
    "StoreError",
    "TaskTimeout",
    "ClusterError",
    "NoClusterWarning",
    "WaitWarning",
    "future",
    "TaskFuture",
    "as_completed",
    "TaskFailed",
    "TaskCancelled",
    "cancel",
    "cancel_group",
    "retry",
    "retry_group",
    "report",
    "status",
    "output",
    "RemoteError",
    "WorkerLost",
    "MissingDependency",
    "summary",
    "GroupSummary",
    "TaskStillRunning",
    "OutcomeDeleted",
    "Executor",
    "worker_state",
    "InitializerFailed",
]
