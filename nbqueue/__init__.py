"""nbqueue: the Django Q Tasks API for Jupyter, with no Django.

``async_task`` in a notebook cell, a loky worker cluster started from the kernel,
results in a private on-disk store that every process on the machine can read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .broker import Broker, get_broker
from .capture import report
from .conf import configure
from .control import cancel, cancel_group, retry, retry_group
from .errors import (
    ClusterError,
    ConfigurationError,
    InsecureStoreError,
    MissingDependency,
    NbqueueError,
    NoClusterWarning,
    OutcomeDeleted,
    PackingError,
    RemoteError,
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
from .futures import TaskFuture, future
from .iterate import as_completed
from .live import output, status
from .models import Failure, Success, Task
from .results import (
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
from .summary import GroupSummary, summary
from .tasks import AsyncTask, async_iter, async_task

if TYPE_CHECKING:
    from .cluster import Cluster
    from .widgets import progress

__version__ = "0.1.0"


def __getattr__(name: str):
    # The cluster (and loky with it) loads on first use: enqueuing never needs it.
    if name == "Cluster":
        from .cluster import Cluster

        return Cluster
    if name == "map":  # not imported above, nor in __all__: `import *` keeps builtin map
        from .iterate import map

        return map
    if name == "progress":
        from .widgets import progress

        return progress
    raise AttributeError(f"module 'nbqueue' has no attribute {name!r}")


__all__ = [
    "async_task",
    "async_iter",
    "AsyncTask",
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
]
