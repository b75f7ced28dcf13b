"""Task outcomes on disk: a saved part (kept) and a cached part (expiring), over diskcache.

Each part keeps, in one diskcache Cache:

- ``task_id -> record`` (a dict; the result inside is pickled bytes, decoded on read);
  a batch's record holds the outcomes of its items, which have no row of their own: a
  read of an item's id makes its record from its batch's (``records.item_view``), and
  the counters, failures and group reads count and list items, not batches,
- ``"name:" + name -> task_id`` so every lookup also takes the humanized name (a
  string key: diskcache stores it as is, where a tuple key would be pickled),
- group membership as pages of at most ``PAGE`` ids, ``f"g:{i}:{group}"``, plus the
  page count ``"gp:" + group``: adding a result rewrites at most one small page, so
  grouping costs the same for the 10th and the 100,000th task,
- per group success/failure counters ``"ok:"/"failed:" + group``, and of the failures
  those cancelled, ``"cancelled:" + group``, so ``count_group`` of the saved part is two
  reads whatever the group's size,
- ``"failures"``: the ids of the latest failures, newest last, for the views to list,
- store-wide totals ``"total:ok"``/``"total:failed"`` and, when ``save_limit`` is set, a queue of
  success ids, oldest first, to prune from,
- ``"call:" + key -> (task_id, sent)``: the task last sent for a ``reuse=True`` call (see
  ``calls``), written by the process that sends it; one small row per distinct call, kept
  when its task is pruned or deleted (the call is then sent again).

The cached part keeps the same layout with an expiry on every key; its counts are
taken by reading the group (records expire one by one, counters could not follow).

``get_store(directory)`` (``nbqueue.disk.directory``) gives the Store of a directory,
shared in the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from nbqueue.disk import blobs
from nbqueue.disk.blobs import Blob
from nbqueue.disk.names import batch_of, batch_of_name, item_id
from nbqueue.disk.records import (
    Cause,
    IterOutcome,
    Manifest,
    Record,
    batch_arguments,
    expand,
    is_cancelled,
    is_record,
    item_outcome,
    item_view,
    tallies,
)
from nbqueue.disk.signing import load_key
from nbqueue.disk.storage import (
    UPSERT_OK,
    checked_get,
    open_cache,
    read_many,
    stored_keys,
    upsert,
    writing,
)
from nbqueue.errors import ConfigurationError, SignatureError, StoreFileMissing, WaitWarning

log = logging.getLogger(__name__)

PAGE = 256
FRESH_KEPT = 1024  # records of this process's latest saves kept for its waiters
FRESH_AGE = 1.0  # seconds one of them is given out, and kept, at most
FRESH_BYTES = 64 * 1024  # a record with a larger result is not kept (it is read back)
HINT_AFTER = 5.0  # seconds a wait goes on before it says why it may never end
# Keys are strings only: diskcache stores a str key as it is, but pickles any other
# key and runs pickletools.optimize on it: pure Python that costs more than the SQLite
# statement, on every read or write.
_NAME = "name:"
_COUNT = {True: "ok:", False: "failed:"}
_TOTAL = {True: "total:ok", False: "total:failed"}
_PAGES = "gp:"
_ITER = "iter:"
_ITER_OK = "total:iter"  # successes of async_iter tasks, which save_limit does not prune
_CALL = "call:"
_CANCELLED = "cancelled:"
_FAILURES = "failures"
FAILURES_KEPT = 200  # latest failures listed
ITER_READ = 8  # batch records of an async_iter read at once


def _page(group: str, i: int) -> str:
    return f"g:{i}:{group}"


def check_name(what: str, value: Any) -> None:
    """A task id or group name must be a non-empty string, whatever else it may be."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{what} must be a non-empty string (a task's uuid or name for a task id, the "
            f"label given as group= for a group), got {value!r}"
        )


class Part:
    """One half of the store (see the module docstring for the layout)."""

    def __init__(self, path: str, expiring: bool) -> None:
        self.expiring = expiring
        self._cache = open_cache(path, expiring)

    def close(self) -> None:
        self._cache.close()

    def write(self, records: list[Record], save_limit: int = 0, replace: bool = False) -> None:
        """Store records in one transaction, replacing earlier outcomes of the same tasks.

        The outcome of a first attempt has no earlier record to replace (its lease is
        acknowledged only after this write), so it skips that read unless ``replace``.
        """
        cache = self._cache
        joined: dict[str, list[str]] = defaultdict(list)
        expires: dict[str, float | None] = {}
        deltas: dict[tuple[str | None, bool, bool, bool], int] = defaultdict(int)
        failed: list[str] = []
        new_rows: list[tuple[str, Any]] = []
        cache.place.check()  # nothing written to a store directory put in its place
        with cache.disk.undone(), cache.transact(retry=True):
            for record in records:
                task_id, group, success = record["id"], record["group"], record["success"]
                expire = self._expire(record)
                old = None
                where = batch_of(task_id) if task_id[14:15] == "8" else None
                if where is not None or replace or record["attempt_count"] != 1:
                    if new_rows:  # the earlier outcome may be among them
                        upsert(cache, new_rows)
                        new_rows = []
                    if where is not None and self._fold(record, where, deltas, failed):
                        continue  # an item sent again on its own: kept in its batch
                    old = checked_get(cache, task_id, None, "an earlier outcome")
                    old = old if isinstance(old, dict) else None
                if old is None and expire is None and UPSERT_OK:
                    new_rows += ((task_id, record), (_NAME + record["name"], task_id))
                else:
                    cache.set(task_id, record, expire=expire)
                    cache.set(_NAME + record["name"], task_id, expire=expire)
                if old is not None:
                    of_iter = bool(old.get("iter"))
                    for (ok, cancelled), n in tallies(old).items():
                        deltas[old["group"], ok, of_iter, cancelled] -= n
                if group is not None:
                    if old is None or old["group"] != group:
                        joined[group].append(task_id)
                    expires[group] = expire
                of_iter = bool(record.get("iter"))
                for (ok, cancelled), n in tallies(record).items():
                    deltas[group, ok, of_iter, cancelled] += n
                failed += _failed_ids(record)
                if (
                    success
                    and save_limit > 0
                    and not self.expiring
                    and (old is None or not old["success"])
                    and not record.get("iter")
                ):
                    cache.push(task_id, prefix="s")  # an async_iter's results stay whole
            if new_rows:
                upsert(cache, new_rows)
            # one counter update per (group, outcome), not per record: each incr costs
            # as much as a record write, so this halves the cost of a large batch
            for (group, success, of_iter, cancelled), delta in deltas.items():
                if delta:
                    self._count(group, success, delta, of_iter, cancelled)
            if failed:
                self._list_failures(failed)
            for group, ids in joined.items():
                self._append(group, ids, expires[group])
            if save_limit > 0 and not self.expiring:
                self._prune(save_limit)

    def _fold(
        self,
        record: Record,
        where: tuple[str, int],
        deltas: dict[tuple[str | None, bool, bool, bool], int],
        failed: list[str],
    ) -> bool:
        """Keep the outcome of an item sent again on its own (``nbqueue.retry``) in its
        batch's record, in place of its earlier one; False if there is no such batch."""
        batch_id, index = where
        batch = checked_get(self._cache, batch_id, None, "the batch of an item")
        if not is_record(batch) or not 0 <= index < batch.get("count", -1):
            return False
        items = batch.get("items")
        if items is None:  # it failed as a whole: each item keeps that failure
            whole = item_view(batch, 0, [])
            assert whole is not None
            items = [item_outcome(whole)] * batch["count"]
        old = items[index]
        of_iter = bool(batch.get("iter"))
        if old is not None:
            deltas[batch["group"], old[0], of_iter, old[4] == Cause.CANCELLED.value] -= 1
        items = list(items)
        items[index] = item_outcome(record)
        batch["items"] = items
        batch["stopped"] = max(batch["stopped"], record["stopped"])
        batch["attempt_count"] = max(batch["attempt_count"], record["attempt_count"])
        if not record["success"] and "package" in record:
            batch.setdefault("package", record["package"])
        self._cache.set(batch_id, batch, expire=self._expire(batch))
        deltas[batch["group"], record["success"], of_iter, is_cancelled(record)] += 1
        if not record["success"]:
            failed.append(record["id"])
        return True

    def _expire(self, record: Record) -> float | None:
        if not self.expiring:
            return None
        cached = record["cached"]  # set in every record of the expiring part
        if cached is True:
            return None
        return float(cached)

    def _count(
        self,
        group: str | None,
        success: bool,
        delta: int,
        of_iter: bool = False,
        cancelled: bool = False,
    ) -> None:
        if self.expiring:
            return
        self._cache.incr(_TOTAL[success], delta)
        if of_iter and success:  # kept whole, whatever save_limit: not counted by _prune
            self._cache.incr(_ITER_OK, delta)
        if group is not None:
            self._cache.incr(_COUNT[success] + group, delta)
            if cancelled:
                self._cache.incr(_CANCELLED + group, delta)

    def _list_failures(self, task_ids: list[str]) -> None:
        """Add to the ids of the latest failures (kept without expiry: an id whose record
        expired reads as no failure)."""
        cache = self._cache
        listed = checked_get(cache, _FAILURES, [], "the latest failures")
        new = set(task_ids)
        listed = [i for i in listed if i not in new] + task_ids
        cache.set(_FAILURES, listed[-FAILURES_KEPT:])

    def latest_failures(self, count: int = 50) -> list[Record]:
        """The latest failures still stored as failures, newest first."""
        listed = checked_get(self._cache, _FAILURES, [], "the latest failures")
        found = self._read(listed[::-1])
        records = [found.get(task_id) for task_id in listed[::-1]]
        return [r for r in records if is_record(r) and not r["success"]][:count]

    def _append(self, group: str, ids: list[str], expire: float | None) -> None:
        cache = self._cache
        pages = cache.get(_PAGES + group, 0)
        page = checked_get(cache, _page(group, pages - 1), None, "a group page") if pages else None
        if page is None or len(page) >= PAGE:
            page, pages = [], pages + 1
        while ids:
            room = PAGE - len(page)
            page.extend(ids[:room])
            ids = ids[room:]
            cache.set(_page(group, pages - 1), page, expire=expire)
            if ids:
                page, pages = [], pages + 1
        cache.set(_PAGES + group, pages, expire=expire)

    def _prune(self, save_limit: int) -> None:
        cache = self._cache
        while cache.get(_TOTAL[True], 0) - cache.get(_ITER_OK, 0) > save_limit:
            key, task_id = cache.pull(prefix="s")
            if key is None:
                break
            record = checked_get(cache, task_id, None, "an outcome to prune")
            if is_record(record) and record["success"]:
                self._delete(record)

    def _delete(self, record: Record) -> None:
        cache = self._cache
        if "batch" in record:  # an item: its outcome leaves its batch's record
            self._remove_item(record)
            return
        cache.delete(record["id"])
        if checked_get(cache, _NAME + record["name"], None, "a name") == record["id"]:
            cache.delete(_NAME + record["name"])
        for (ok, cancelled), n in tallies(record).items():
            self._count(record["group"], ok, -n, bool(record.get("iter")), cancelled)

    def _remove_item(self, view: Record) -> None:
        """Take an item's outcome out of its batch's record (it reads as not stored)."""
        where = batch_of(view["id"])
        assert where is not None
        batch = checked_get(self._cache, where[0], None, "the batch of an item")
        if not is_record(batch):
            return
        items = batch.get("items")
        if items is None:
            items = [item_outcome(view)] * batch["count"]
        items = list(items)
        items[where[1]] = None
        batch["items"] = items
        self._cache.set(where[0], batch, expire=self._expire(batch))
        self._count(view["group"], view["success"], -1, bool(view.get("iter")), is_cancelled(view))

    def get(self, task_id: str) -> Record | None:
        """The record of a task by uuid or name, or None.

        Raises ConfigurationError if ``task_id`` is not a non-empty string."""
        check_name("task id", task_id)
        cache = self._cache
        record = self._read([task_id]).get(task_id)
        if not isinstance(record, dict):  # not found, or one of the store's own keys
            real_id = cache.get(_NAME + task_id)  # a name, also one that looks like a uuid
            if real_id is None and (where := batch_of_name(task_id)) is not None:
                batch_id = cache.get(_NAME + where[0])  # an item's name: its batch's, .i
                if isinstance(batch_id, str):
                    real_id = item_id(batch_id, where[1])
            record = self._read([real_id]).get(real_id) if isinstance(real_id, str) else None
        return record if is_record(record) else None

    def _read(self, task_ids: list[str]) -> dict[str, Any]:
        """The rows of ``task_ids`` that there are (``read_many``: a file deleted under its
        row raises, where ``Cache.get`` reads no row), a record only in the row of its
        own task: the rows of two tasks swapped read as neither."""
        found = self._rows(task_ids)
        items = [i for i in task_ids if i[14:15] == "8" and i not in found]
        if items:
            self._item_views(items, found)
        return found

    def _item_views(self, task_ids: list[str], found: dict[str, Any]) -> None:
        """Add to ``found`` the records of the items of ``task_ids``, from their batches'."""
        wanted: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for task_id in task_ids:
            where = batch_of(task_id)
            if where is not None:
                wanted[where[0]].append((task_id, where[1]))
        batches = self._rows(list(wanted))
        for batch_id, items in wanted.items():
            batch = batches.get(batch_id)
            if not is_record(batch) or "count" not in batch:
                continue
            arguments = batch_arguments(batch)
            for task_id, index in items:
                view = item_view(batch, index, arguments)
                if view is not None:
                    found[task_id] = view

    def _rows(self, task_ids: list[str]) -> dict[str, Any]:
        found = read_many(self._cache, task_ids)
        for task_id, record in found.items():
            if (
                type(record) is dict
                and "success" in record  # an outcome, not a manifest
                and record.get("id", task_id) != task_id
            ):
                raise SignatureError(
                    f"the row of task {task_id} in {self._cache.directory} holds the "
                    f"outcome of task {record['id']}: the store was tampered with; it is "
                    "left unread"
                )
        return found

    def find(self, task_id: str) -> Record | None:
        """The record of a task by uuid or name, or the combined record of a finished
        ``async_iter`` by its id; None while it has no outcome."""
        record = self.get(task_id)
        if record is not None:
            return record
        manifest = self.manifest(task_id)
        return None if manifest is None else self.iter_outcome(manifest)[0]

    def iter_outcome(self, manifest: Manifest) -> tuple[Record | None, set[str]]:
        """The combined record of an ``async_iter`` once every item of it is stored, and
        what is not: a batch's id (none of it stored) or an item's (sent again alone).
        Read from its batches' records, a few at a time; no item's record is made."""
        combined = IterOutcome(manifest)
        missing: set[str] = set()
        if "batches" not in manifest:  # one task per item: an earlier version's
            ids = manifest["ids"]
            records = self.records(ids)
            missing = {i for i, r in zip(ids, records, strict=False) if r is None}
            for record in records if not missing else ():
                assert record is not None
                combined.add([item_outcome(record)], record["attempt_count"])
            return (None if missing else combined.record()), missing
        batches = manifest["batches"]
        ids = [batch_id for batch_id, _ in batches]
        absent = set(ids) - stored_keys(self._cache, ids)
        if absent:  # not all there: nothing more to read (this is polled while it runs)
            return None, absent
        for k in range(0, len(batches), ITER_READ):
            rows = self._rows(ids[k : k + ITER_READ])
            for batch_id, count in batches[k : k + ITER_READ]:
                row = rows.pop(batch_id, None)
                if not is_record(row):
                    missing.add(batch_id)
                    continue
                entries: list[Any] = row.get("items") or [item_outcome(expand(row)[0])] * count
                if None in entries:  # sent again alone: in its own row if its batch's went
                    entries = self._own_outcomes(batch_id, entries, missing)
                if not missing:
                    combined.add(entries, row["attempt_count"])
        return (None if missing else combined.record()), missing

    def _own_outcomes(self, batch_id: str, entries: list[Any], missing: set[str]) -> list[tuple]:
        """A batch's items' outcomes, those sent again alone read from their own rows;
        the ids of those without one are added to ``missing``."""
        found = []
        for i, entry in enumerate(entries):
            if entry is None:
                task_id = item_id(batch_id, i)
                own = self._rows([task_id]).get(task_id)
                if not is_record(own):
                    missing.add(task_id)
                    continue
                entry = item_outcome(own)
            found.append(entry)
        return found

    def stored(self, task_ids: list[str]) -> dict[str, Record | bool]:
        """Those of ``task_ids`` with an outcome stored: a task's record, or True for an
        item of a batch (its record is not made: ``get`` it)."""
        found: dict[str, Record | bool] = {
            i: r for i, r in self._rows(task_ids).items() if is_record(r)
        }
        wanted: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for task_id in task_ids:
            if task_id[14:15] == "8" and task_id not in found:
                where = batch_of(task_id)
                if where is not None:
                    wanted[where[0]].append((task_id, where[1]))
        if wanted:
            for batch_id, row in self._rows(list(wanted)).items():
                if not is_record(row) or "count" not in row:
                    continue
                entries = row.get("items")
                for task_id, index in wanted[batch_id]:
                    if index < row["count"] and (entries is None or entries[index] is not None):
                        found[task_id] = True
        return found

    def records(self, task_ids: list[str]) -> list[Record | None]:
        """The records of many tasks by uuid (None for those not stored)."""
        found = self._read(task_ids)
        return [found.get(task_id) for task_id in task_ids]

    def write_manifest(self, iter_id: str, manifest: Manifest) -> None:
        """Remember which tasks, in which order, make up an ``async_iter``."""
        cached = manifest.get("cached", False)
        expire = None if not self.expiring or cached is True else float(cached)
        self._cache.place.check()
        with writing(self._cache.directory):
            self._cache.set(_ITER + iter_id, manifest, expire=expire)

    def manifest(self, iter_id: str) -> Manifest | None:
        return self._cache.get(_ITER + iter_id)

    def call(self, key: str) -> tuple[str, float] | None:
        """``(task_id, sent)`` of the task last sent for the ``reuse=True`` call ``key``."""
        row = checked_get(self._cache, _CALL + key, None, "a call row")
        return row if isinstance(row, tuple) else None

    def claim_call(self, key: str, seen: tuple[str, float] | None, task_id: str) -> str:
        """Record ``task_id`` as the task of call ``key``, sent now, and return it; unless
        the row is no longer ``seen`` (another process sent the call meanwhile): then
        return the id it holds. In one transaction, so one process wins."""
        cache = self._cache
        cache.place.check()
        with writing(cache.directory), cache.transact(retry=True):
            row = checked_get(cache, _CALL + key, None, "a call row")
            if isinstance(row, tuple) and row != seen:
                return row[0]
            cache.set(_CALL + key, (task_id, time.time()))
        return task_id

    def renew_call(self, key: str, seen: tuple[str, float]) -> bool:
        """Record call ``key``'s task as sent again now, unless its row is no longer
        ``seen`` (another process did so meanwhile); return whether it was. In one
        transaction, so one process wins."""
        cache = self._cache
        cache.place.check()
        with writing(cache.directory), cache.transact(retry=True):
            if checked_get(cache, _CALL + key, None, "a call row") != seen:
                return False
            cache.set(_CALL + key, (seen[0], time.time()))
        return True

    def has_group(self, group: str) -> bool:
        """Whether some outcome of ``group`` is stored in this part."""
        return bool(self._cache.get(_PAGES + group, 0))

    def group_ids(self, group: str) -> list[str]:
        check_name("group", group)
        cache = self._cache
        ids: list[str] = []
        for i in range(cache.get(_PAGES + group, 0)):
            ids.extend(cache.get(_page(group, i), ()))
        # a task deleted (or pruned, or moved to another group and back) and then stored
        # again is appended again: keep its first place only
        return list(dict.fromkeys(ids))

    def group_pages(self, group: str, first: int = 0) -> tuple[int, list[str]]:
        """(the group's page count, the ids on its pages from ``first`` on, as stored, not
        deduplicated): to follow a growing group re-reading only its last page, not all."""
        check_name("group", group)
        cache = self._cache
        pages = cache.get(_PAGES + group, 0)
        ids: list[str] = []
        for i in range(first, pages):
            ids.extend(cache.get(_page(group, i), ()))
        return pages, ids

    def group_records(self, group: str, failures: bool = True) -> list[Record]:
        """The group's records, in the order their first outcome was stored."""
        ids = self.group_ids(group)
        found = self._read(ids)
        records: list[Record] = []
        for task_id in ids:
            record = found.get(task_id)
            if record is not None and record["group"] == group:
                records += (r for r in expand(record) if failures or r["success"])
        return records

    def count(self, group: str, failures: bool = False) -> int:
        """Successes in the group, or failures when ``failures`` is True."""
        check_name("group", group)
        if self.expiring:
            return sum(1 for r in self.group_records(group) if r["success"] != failures)
        return self._cache.get(_COUNT[not failures] + group, 0)

    def tally(self, group: str) -> tuple[int, int]:
        """(successes, failures) of the group, in one read of the group for the cached part."""
        ok, failed, _ = self.tally_cancelled(group)
        return ok, failed

    def tally_cancelled(self, group: str) -> tuple[int, int, int]:
        """(successes, failures, those of the failures that were cancelled) of the group."""
        check_name("group", group)
        if self.expiring:
            records = self.group_records(group)
            ok = sum(1 for r in records if r["success"])
            cancelled = sum(1 for r in records if is_cancelled(r))
            return ok, len(records) - ok, cancelled
        got = self._cache.get
        return (
            got(_COUNT[True] + group, 0),
            got(_COUNT[False] + group, 0),
            got(_CANCELLED + group, 0),
        )

    def totals(self) -> tuple[int, int]:
        """(successes, failures) stored in this part (the cached part does not count)."""
        return self._cache.get(_TOTAL[True], 0), self._cache.get(_TOTAL[False], 0)

    def delete(self, task_id: str) -> bool:
        """Delete one task by uuid or name; return whether it was there."""
        self._cache.place.check()
        with self._cache.transact(retry=True):
            try:
                record = self.get(task_id)
            except (SignatureError, StoreFileMissing) as exc:
                return self._drop_unreadable(task_id, exc)
            if record is None:
                return False
            self._delete(record)
        return True

    def delete_outcome(self, record: Record) -> bool:
        """Delete the stored outcome of ``record``'s task if it is still that very outcome
        (a later one, stored meanwhile by another delivery, stays); return whether it was."""
        with self._cache.transact(retry=True):
            stored = self.get(record["id"])
            if stored is None or (stored["attempt_count"], stored["stopped"]) != (
                record["attempt_count"],
                record["stopped"],
            ):
                return False
            self._delete(stored)
        return True

    def _drop_unreadable(self, task_id: str, exc: Exception) -> bool:
        """Delete the row of a task (by uuid or name) whose outcome cannot be read, its
        file deleted or the store tampered with: all that can be done with it. Its group
        and outcome cannot be read, so its counts stay as they were (logged)."""
        cache = self._cache
        if not cache.delete(task_id):
            real_id = checked_get(cache, _NAME + task_id, None, "a name")
            if not isinstance(real_id, str) or not cache.delete(real_id):
                return False
            cache.delete(_NAME + task_id)
        log.warning(
            "the outcome of task %s could not be read (%s); its row was "
            "deleted, and its group's counts may be off by one",
            task_id,
            exc,
        )
        return True

    def delete_group(self, group: str, tasks: bool = False) -> int:
        """Forget a group: drop its label from its tasks, or delete them with ``tasks=True``."""
        check_name("group", group)
        cache = self._cache
        touched = 0
        cache.place.check()
        with cache.transact(retry=True):
            for task_id in self.group_ids(group):
                try:
                    record = self._read([task_id]).get(task_id)
                except (SignatureError, StoreFileMissing) as exc:
                    if tasks and self._drop_unreadable(task_id, exc):
                        touched += 1
                    continue
                if record is None or record["group"] != group:
                    continue
                touched += 1
                if tasks:
                    self._delete(record)
                else:
                    of_iter = bool(record.get("iter"))
                    for (ok, cancelled), n in tallies(record).items():
                        self._count(group, ok, -n, of_iter, cancelled)
                        self._count(None, ok, n, of_iter)  # totals unchanged
                    record["group"] = None
                    cache.set(task_id, record, expire=self._expire(record))
            for i in range(cache.get(_PAGES + group, 0)):
                cache.delete(_page(group, i))
            for prefix in (_PAGES, _COUNT[True], _COUNT[False], _CANCELLED):
                cache.delete(prefix + group)
        return touched


def _failed_ids(record: Record) -> list[str]:
    """The ids of a record's failures: its own, or those of its failed items."""
    if "count" not in record:
        return [] if record["success"] else [record["id"]]
    items = record.get("items")
    if items is None:
        return [item_id(record["id"], i) for i in range(record["count"])][-FAILURES_KEPT:]
    return [
        item_id(record["id"], i)
        for i, entry in enumerate(items)
        if entry is not None and not entry[0]
    ][-FAILURES_KEPT:]


class Store:
    """The saved and cached outcomes of one store directory (``directory``: absolute,
    checked by ``signing.private_directory``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.saved = Part(os.path.join(directory, "results"), expiring=False)
        self.cached = Part(os.path.join(directory, "cache"), expiring=True)
        self._changed = threading.Condition()
        self._changes = 0  # saves of this process, for wait_for_change
        self._fresh: dict[tuple[Part, str], tuple[float, int, Record]] = {}  # see fresh()

    def close(self) -> None:
        self.saved.close()
        self.cached.close()

    def part(self, cached: bool) -> Part:
        return self.cached if cached else self.saved

    def save(self, records: Iterable[Record], save_limit: int = 0, replace: bool = False) -> None:
        """Store outcomes where each one belongs and wake local waiters.

        A record with ``cached`` goes to the cached part; a success with ``save``
        False, or any success when ``save_limit`` is -1, is not kept (its hook still
        runs); failures are always kept. ``replace``: records tried before, which one
        part may have taken while the other refused them (see ``Part.write``).
        """
        saved, cached = [], []
        for record in records:
            if record.get("cached"):
                cached.append(record)
            elif record["success"] and (record.get("save") is False or save_limit < 0):
                if type(record["result"]) is Blob:  # for its hook; no record keeps it
                    _read_result_in(record, load_key(self.directory))
                continue
            else:
                saved.append(record)
        if saved:
            self.saved.write(saved, save_limit, replace)
        if cached:
            self.cached.write(cached, replace=replace)
        now = time.monotonic()
        with self._changed:
            self._changes += 1
            fresh = self._fresh
            for part, records in ((self.saved, saved), (self.cached, cached)):
                for record in records:
                    value = record["result"]
                    if "count" in record:  # a batch's: no one waits for its id
                        continue
                    if type(value) is not bytes or len(value) < FRESH_BYTES:
                        fresh[part, record["id"]] = (now, self._changes, record)
            while fresh and (
                len(fresh) > FRESH_KEPT or now - next(iter(fresh.values()))[0] > FRESH_AGE
            ):
                del fresh[next(iter(fresh))]
            self._changed.notify_all()

    def fresh(self, part: Part, task_id: str, since: int) -> Record | None:
        """The record of ``task_id`` if this process saved it in ``part`` after its save
        number ``since`` (``wait_for_change``) and under FRESH_AGE seconds ago, as saved
        (taken: given once): a waiter of this process gets the outcome it waited for
        without reading it back. One saved before the wait began may have been deleted
        or replaced since: that is read from the store."""
        with self._changed:
            found = self._fresh.pop((part, task_id), None)
        if found is None or found[1] <= since or time.monotonic() - found[0] > FRESH_AGE:
            return None
        return found[2]

    def wait_for_change(self, since: int | None = None, timeout: float | None = None) -> int:
        """Wait until this process saves outcomes here (``save``), or ``timeout`` seconds
        pass; return how many saves it has made, to pass as ``since`` next time: a save
        made since then returns at once, so none is missed between two waits. Other
        processes' writes do not wake it: poll the store for those."""
        with self._changed:
            if since is None or since == self._changes:
                self._changed.wait(timeout)
            return self._changes

    def wait(
        self,
        ready: Callable[[], Any],
        wait_ms: int | float | None,
        hint: Callable[[], str | None] | None = None,
        fresh: Callable[[int], Any] | None = None,
        slowest: float = 0.002,
    ) -> Any:
        """Call ``ready()`` until it returns something truthy or ``wait_ms`` runs out.

        ``wait_ms`` is in milliseconds, -1 waits forever. Local writes wake the waiter
        at once, and ``fresh(since)``, asked first after each, may give what was saved
        since the wait began without a read; writes by other processes are seen by
        polling (0.5 ms, growing to ``slowest`` seconds: more for a ``ready`` that costs
        more). After HINT_AFTER seconds, ``hint()`` may say why the wait may never
        end: that is warned once (WaitWarning).
        """
        since = self._changes  # before the first look: a save after it is fresh
        value = ready()
        if value or not wait_ms:
            return value
        now = time.monotonic()
        deadline = None if wait_ms < 0 else now + wait_ms / 1000
        hint_at = now + HINT_AFTER if hint is not None else float("inf")
        pause = 0.0005
        while True:
            if time.monotonic() >= hint_at and hint is not None:
                hint_at = float("inf")
                text = hint()
                if text:
                    warnings.warn(WaitWarning(f"this wait may never end: {text}"), stacklevel=4)
            if deadline is None:
                step = pause
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return ready()
                step = min(pause, left)
            with self._changed:
                self._changed.wait(step)
            value = (fresh and fresh(since)) or ready()
            if value:
                return value
            pause = min(pause * 1.5, slowest)


def _read_result_in(record: Record, key: bytes) -> None:
    """Read the large result of a record that will not be stored into it (for its
    hook), and remove its file; a file that cannot be read leaves None, logged."""
    blob = record["result"]
    try:
        record["result"] = blobs.read(blob, key, record["id"], blobs.RESULT)
    except (OSError, SignatureError) as exc:
        record["result"] = None
        log.warning(
            "the unsaved result of task %s could not be read back for its hook: %s",
            record.get("name"),
            exc,
        )
    blobs.discard(blob)
