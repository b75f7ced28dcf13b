"""Many small items in few tasks: how ``map`` and ``async_iter`` pack their items.

A sweep of a function over many small inputs would spend most of its time storing,
signing and tracking one task per item. So items travel in *batches*: one package and
one record for many items, while each item keeps its own id (``names.item_id``), run,
time limit, output, outcome and place in the counts (see ``records.item_view``).

A batch's size is set as its items are packed, from what is known of the function:

- about ``SPREAD`` batches per worker serving the store, so that the work spreads
  evenly whatever an item takes;
- smaller when the function's items took long in this process before
  (``Sent.item_seconds``): batches of about ``BATCH_SECONDS``;

never more than ``MOST_ITEMS`` items nor ``MOST_BYTES`` of pickled arguments: a batch
larger sends its items with large buffers (``blobs.large_call``) alone, their arguments
files of the store, and is cut in halves. A batch's arguments are its calls' ``(args,
kwargs)``, pickled as one list; or, when each call takes one argument and no keyword,
``(SINGLE, the list of those arguments)``, quicker to make and to run.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from nbqueue.disk import blobs
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import heartbeats, sent
from nbqueue.disk.heartbeats import serves
from nbqueue.disk.records import SINGLE, Header, Record
from nbqueue.options import TaskOptions
from nbqueue.packing import make_package, pickle_calls

BATCH_SECONDS = 0.2  # a batch's run, once its items' time is known
SPREAD = 8  # batches per worker, when it is not
MOST_ITEMS = 5_000
MOST_BYTES = 512 * 1024  # pickled arguments of a batch's items


def workers_serving(broker: Broker) -> int:
    """The workers of the clusters serving the store now (0: none serves it)."""
    return sum(
        int(info.get("workers") or 0)
        for info in heartbeats(broker.directory).clusters()
        if serves(info)
    )


def batch_size(count: int, workers: int, item_seconds: float | None) -> int:
    """Items per batch for ``count`` items on ``workers`` workers (see the module
    docstring); ``item_seconds``: the time an item of the function took before."""
    size = math.ceil(count / (max(workers, 1) * SPREAD))
    if item_seconds is not None:  # smaller, for slow items
        size = min(size, int(BATCH_SECONDS / max(item_seconds, 1e-9)))
    return max(1, min(size, MOST_ITEMS))


def pack(
    func: Any,
    items: Iterable[Any],
    count: int,
    kwargs: dict,
    options: TaskOptions,
    function: tuple[str, str | None, bytes | None],
) -> Iterator[tuple[Header, bytes]]:
    """The batches of ``count`` calls of ``func``, one per item of ``items`` (a tuple is
    spread as positional arguments, anything else is the one argument), each with
    ``kwargs``: ``(header, package)`` each, sized as the module docstring says."""
    broker = options.broker
    workers = workers_serving(broker) or os.cpu_count() or 1
    size = batch_size(count, workers, sent(broker.directory).item_seconds.get(function[0]))

    def made(batch: list[Any], single: bool) -> Iterator[tuple[Header, bytes]]:
        packed = pickle_calls((SINGLE, batch) if single else batch)
        if len(packed) > MOST_BYTES and len(batch) > 1:
            calls = [((x,), {}) for x in batch] if single else batch
            large = [call for call in calls if blobs.large_call(*call)]
            if large:  # alone: their arguments go to files of the store
                for call in large:
                    yield make_package(func, (), {}, options, function, pickle_calls([call]), 1)
                yield from made([call for call in calls if not blobs.large_call(*call)], False)
                return
            half = len(batch) // 2  # in halves, until small enough
            yield from made(batch[:half], single)
            yield from made(batch[half:], single)
            return
        if batch:
            yield make_package(func, (), {}, options, function, packed, items=len(batch))

    rest = iter(items)
    while chunk := list(itertools.islice(rest, size)):
        if kwargs or any(issubclass(kind, tuple) for kind in set(map(type, chunk))):
            yield from made([(x if isinstance(x, tuple) else (x,), kwargs) for x in chunk], False)
        else:  # one argument each, the common case: packed as the list of them
            yield from made(chunk, True)


def measured(directory: str, func: str, record: Record) -> None:
    """Note the time the items of a finished batch took, for the next batches of ``func``."""
    count = record.get("count") or 1
    seconds = max(record["stopped"] - record.get("began", record["stopped"]), 0.0) / count
    memo = sent(directory).item_seconds
    known = memo.get(func)
    memo[func] = seconds if known is None else 0.5 * known + 0.5 * seconds
