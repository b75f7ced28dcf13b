"""nbqueue.store.Store and Part on a real diskcache store in a temp directory."""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid

import cloudpickle
import pytest

from nbqueue.errors import SignatureError
from nbqueue.disk.names import humanize
from nbqueue.disk.records import decode_result as decode
from nbqueue.disk.directory import drop, get_store
from nbqueue.disk.store import PAGE, Part, Store


def encode(value):
    """A value pickled as a worker pickles a result: plain pickle, cloudpickle for the rest."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def rec(group=None, success=True, result="ok", cached=False, save=True, task_id=None,
        name=None):
    task_id = task_id or str(uuid.uuid4())
    now = time.time()
    return {
        "id": task_id, "name": name or humanize(task_id), "func": "tests.tasks_fixtures.add",
        "hook": None, "args": encode(((), {})), "group": group, "result": encode(result),
        "success": success, "started": now, "stopped": now, "attempt_count": 1,
        "cached": cached, "save": save,
    }


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store"))
    yield s
    s.close()


@pytest.fixture
def part(tmp_path):
    p = Part(str(tmp_path / "part"), expiring=False)
    yield p
    p.close()


# -- write / get ----------------------------------------------------------------------


def test_write_and_get_by_id_and_name(part):
    record = rec(group="g", result={"answer": 42})
    part.write([record])
    by_id = part.get(record["id"])
    by_name = part.get(record["name"])
    assert by_id == record
    assert by_name == record
    assert decode(by_id["result"]) == {"answer": 42}


def test_two_tasks_rows_swapped_read_as_neither(part):
    """Each record is read only from the row of its own task: two rows' values swapped
    in the database (small outcomes, signed inline) are refused by id and by name."""
    import sqlite3
    first, second = rec(group="g", result=1), rec(group="g", result=2)
    part.write([first, second])
    with sqlite3.connect(os.path.join(part._cache.directory, "cache.db")) as con:
        value = dict(con.execute("SELECT key, value FROM Cache WHERE key IN (?, ?)",
                                 (first["id"], second["id"])))
        for one, other in ((first, second), (second, first)):
            con.execute("UPDATE Cache SET value = ? WHERE key = ?",
                        (value[other["id"]], one["id"]))
    for one, other in ((first, second), (second, first)):
        for key in (one["id"], one["name"]):
            with pytest.raises(SignatureError, match=f"the row of task {one['id']} .*holds "
                                                     f"the outcome of task {other['id']}"):
                part.get(key)
    with pytest.raises(SignatureError):
        part.records([first["id"]])
    with pytest.raises(SignatureError):
        part.group_records("g")


def test_get_missing_returns_none(part):
    part.write([rec()])
    assert part.get(str(uuid.uuid4())) is None
    assert part.get("no-such-name-here") is None


def test_name_maps_to_newest_task_bearing_it(part):
    first, second = rec(name="same-name"), rec(name="same-name")
    part.write([first])
    part.write([second])
    assert part.get("same-name")["id"] == second["id"]
    assert part.get(first["id"])["id"] == first["id"]
    # deleting the older one keeps the name pointing at the newer one
    assert part.delete(first["id"])
    assert part.get("same-name")["id"] == second["id"]


def test_records_in_order_with_none_for_missing(part):
    a, b = rec(), rec()
    part.write([a, b])
    missing = str(uuid.uuid4())
    got = part.records([b["id"], missing, a["id"]])
    assert [r and r["id"] for r in got] == [b["id"], None, a["id"]]
    assert part.records([]) == []


# -- groups ---------------------------------------------------------------------------


def test_group_pages_beyond_page_keep_order(part):
    records = [rec(group="big") for _ in range(1000)]
    for record in records[:100]:  # one by one
        part.write([record])
    for start in range(100, 1000, 300):  # batches larger than a page
        part.write(records[start:start + 300])
    assert len(records) > 3 * PAGE

    ids = [r["id"] for r in records]
    assert part.group_ids("big") == ids
    assert [r["id"] for r in part.group_records("big")] == ids
    assert part.count("big") == 1000
    assert part.group_ids("other") == []
    assert part.group_records("other") == []


def test_records_without_group_are_not_in_any_group(part):
    part.write([rec(group=None), rec(group="g")])
    assert len(part.group_ids("g")) == 1
    assert part.count("g") == 1
    assert part.totals() == (2, 0)


def test_count_by_group_success_and_failure(part):
    part.write([rec("g", True) for _ in range(5)] + [rec("g", False) for _ in range(3)]
               + [rec("h", True) for _ in range(2)])
    assert part.count("g") == 5
    assert part.count("g", failures=True) == 3
    assert part.count("h") == 2
    assert part.count("h", failures=True) == 0
    assert part.count("nope") == 0
    assert part.totals() == (7, 3)
    successes = part.group_records("g", failures=False)
    assert len(successes) == 5 and all(r["success"] for r in successes)
    assert len(part.group_records("g")) == 8


def test_overwrite_failure_then_success_adjusts_counts_once(part):
    failure = rec("g", success=False, result="Traceback: boom")
    other = rec("g", success=True)
    part.write([failure, other])
    assert part.count("g", failures=True) == 1
    assert part.count("g") == 1

    success = dict(failure, success=True, result=encode(7), attempt_count=2)
    part.write([success])
    assert part.count("g", failures=True) == 0
    assert part.count("g") == 2
    assert part.totals() == (2, 0)
    assert part.group_ids("g") == [failure["id"], other["id"]]  # no duplicate membership
    got = part.get(failure["id"])
    assert got["success"] is True and decode(got["result"]) == 7
    assert [r["id"] for r in part.group_records("g")] == [failure["id"], other["id"]]


def test_overwrite_same_outcome_twice_in_one_batch(part):
    record = rec("g")
    part.write([record, dict(record, attempt_count=2)])
    assert part.count("g") == 1
    assert part.totals() == (1, 0)
    assert part.group_ids("g") == [record["id"]]
    assert part.get(record["id"])["attempt_count"] == 2


def test_overwrite_moving_task_to_another_group(part):
    record = rec("g1")
    part.write([record])
    part.write([dict(record, group="g2")], replace=True)
    assert part.count("g1") == 0
    assert part.count("g2") == 1
    assert part.group_records("g1") == []
    assert [r["id"] for r in part.group_records("g2")] == [record["id"]]
    assert part.totals() == (1, 0)


def test_deleted_task_stored_again_is_in_its_group_once(part):
    record, other = rec("g"), rec("g")
    part.write([record, other])
    part.delete(record["id"])
    assert [r["id"] for r in part.group_records("g")] == [other["id"]]
    part.write([record])  # e.g. delivered again after its outcome was pruned
    assert part.group_ids("g") == [record["id"], other["id"]]
    assert [r["id"] for r in part.group_records("g")] == [record["id"], other["id"]]
    assert part.count("g") == 2


def test_task_moved_away_and_back_is_in_its_group_once(part):
    record = rec("g1")
    part.write([record])
    part.write([dict(record, group="g2")], replace=True)
    part.write([dict(record, group="g1")], replace=True)
    assert part.group_ids("g1") == [record["id"]]
    assert len(part.group_records("g1")) == 1
    assert part.group_records("g2") == []
    assert (part.count("g1"), part.count("g2")) == (1, 0)
    assert part.delete_group("g1") == 1


# -- save_limit / save -------------------------------------------------------------------


def test_save_limit_keeps_newest_successes_and_all_failures(store):
    successes = [rec("g", True, result=i) for i in range(6)]
    failures = [rec("g", False) for _ in range(3)]
    for i, record in enumerate(successes):
        store.save([record], save_limit=3)
        if i < len(failures):
            store.save([failures[i]], save_limit=3)

    kept = [r["id"] for r in store.saved.group_records("g", failures=False)]
    assert kept == [r["id"] for r in successes[-3:]]
    for record in successes[:3]:
        assert store.saved.get(record["id"]) is None
        assert store.saved.get(record["name"]) is None
    for record in failures:
        assert store.saved.get(record["id"]) is not None
    assert store.saved.count("g") == 3
    assert store.saved.count("g", failures=True) == 3
    assert store.saved.totals() == (3, 3)


def test_save_limit_in_one_batch(store):
    successes = [rec("g", True) for _ in range(10)]
    store.save(successes, save_limit=4)
    assert [r["id"] for r in store.saved.group_records("g")] == [
        r["id"] for r in successes[-4:]]
    assert store.saved.totals() == (4, 0)


def test_save_limit_counts_a_failure_turned_success(store):
    failure = rec("g", False)
    store.save([failure], save_limit=2)
    store.save([rec("g", True)], save_limit=2)
    store.save([dict(failure, success=True, attempt_count=2)], save_limit=2)  # a retry won
    store.save([rec("g", True)], save_limit=2)  # pushes the oldest success out
    assert store.saved.totals() == (2, 0)
    assert store.saved.get(failure["id"]) is not None


def test_save_false_skips_successes_keeps_failures(store):
    success, failure = rec("g", True, save=False), rec("g", False, save=False)
    store.save([success, failure])
    assert store.saved.get(success["id"]) is None
    assert store.saved.get(failure["id"]) is not None
    assert store.saved.count("g") == 0
    assert store.saved.count("g", failures=True) == 1


def test_save_limit_minus_one_keeps_no_successes(store):
    successes = [rec("g", True) for _ in range(3)]
    failure = rec("g", False)
    store.save(successes + [failure], save_limit=-1)
    assert all(store.saved.get(r["id"]) is None for r in successes)
    assert store.saved.get(failure["id"]) is not None
    assert store.saved.totals() == (0, 1)


def test_save_limit_zero_keeps_everything(store):
    store.save([rec("g") for _ in range(20)], save_limit=0)
    assert store.saved.count("g") == 20


# -- cached part ---------------------------------------------------------------------------


def test_cached_records_expire_and_true_does_not(store):
    short = rec("c", True, cached=1)
    short_failure = rec("c", False, cached=1)
    forever = rec("forever", True, cached=True)
    store.save([short, short_failure, forever])
    store.cached.write_manifest("iter-short", {"ids": [short["id"]], "cached": 1})

    assert store.saved.get(short["id"]) is None  # cached records do not go to the saved part
    assert store.cached.get(short["id"]) == short
    assert store.cached.get(short["name"]) == short
    assert store.cached.count("c") == 1
    assert store.cached.count("c", failures=True) == 1
    assert store.cached.totals() == (0, 0)  # the cached part keeps no counters
    assert store.part(cached=True).manifest("iter-short") is not None

    time.sleep(1.2)
    assert store.cached.get(short["id"]) is None
    assert store.cached.get(short["name"]) is None
    assert store.cached.count("c") == 0
    assert store.cached.count("c", failures=True) == 0
    assert store.cached.group_records("c") == []
    assert store.cached.manifest("iter-short") is None
    assert store.cached.get(forever["id"]) == forever
    assert store.cached.count("forever") == 1


def test_cached_delete_and_delete_group(store):
    records = [rec("c", True, cached=True) for _ in range(3)]
    store.save(records)
    assert store.cached.delete(records[0]["name"])
    assert store.cached.count("c") == 2
    assert store.cached.delete_group("c") == 2
    assert store.cached.group_records("c") == []
    assert store.cached.get(records[1]["id"])["group"] is None


# -- delete ---------------------------------------------------------------------------------


def test_delete_by_id_and_name(part):
    a, b, c = rec("g"), rec("g"), rec("g", False)
    part.write([a, b, c])
    assert part.delete(a["id"]) is True
    assert part.delete(b["name"]) is True
    assert part.delete(a["id"]) is False
    assert part.delete("no-such-name") is False
    assert part.get(a["id"]) is None and part.get(a["name"]) is None
    assert part.get(b["id"]) is None
    assert part.count("g") == 0
    assert part.count("g", failures=True) == 1
    assert [r["id"] for r in part.group_records("g")] == [c["id"]]
    assert part.totals() == (0, 1)


def test_delete_group_keeps_tasks_by_default(part):
    members = [rec("g", True) for _ in range(4)] + [rec("g", False)]
    outsider = rec("h")
    part.write(members + [outsider])
    assert part.delete_group("g") == 5
    assert part.group_ids("g") == []
    assert part.count("g") == 0 and part.count("g", failures=True) == 0
    for record in members:
        kept = part.get(record["id"])
        assert kept is not None and kept["group"] is None
    assert part.totals() == (5, 1)  # the records are still stored
    assert part.count("h") == 1
    assert part.delete_group("g") == 0

    # the group can be used again from scratch
    again = rec("g")
    part.write([again])
    assert part.group_ids("g") == [again["id"]]
    assert part.count("g") == 1


def test_delete_group_with_tasks_deletes_them(part):
    members = [rec("g", True) for _ in range(3)] + [rec("g", False)]
    outsider = rec("h")
    part.write(members + [outsider])
    assert part.delete_group("g", tasks=True) == 4
    for record in members:
        assert part.get(record["id"]) is None
        assert part.get(record["name"]) is None
    assert part.get(outsider["id"]) is not None
    assert part.totals() == (1, 0)
    assert part.count("g") == 0
    assert part.group_records("g") == []


def test_delete_group_skips_tasks_that_moved_away(part):
    record = rec("g1")
    part.write([record])
    part.write([dict(record, group="g2")], replace=True)
    assert part.delete_group("g1", tasks=True) == 0
    assert part.get(record["id"]) is not None
    assert part.count("g2") == 1


# -- manifests ------------------------------------------------------------------------------


def test_manifests(store):
    manifest = {"ids": [str(uuid.uuid4()) for _ in range(3)], "cached": False}
    store.saved.write_manifest("iter-1", manifest)
    assert store.saved.manifest("iter-1") == manifest
    assert store.saved.manifest("iter-2") is None
    assert store.cached.manifest("iter-1") is None  # the parts are separate


# -- wait ----------------------------------------------------------------------------------


def test_wait_zero_or_none_calls_ready_once(store):
    calls = []

    def ready():
        calls.append(1)
        return None

    assert store.wait(ready, 0) is None
    assert len(calls) == 1
    assert store.wait(ready, None) is None
    assert len(calls) == 2
    assert store.wait(lambda: "now", 10_000) == "now"


def test_wait_positive_times_out(store):
    started = time.monotonic()
    assert store.wait(lambda: 0, 150) == 0
    elapsed = time.monotonic() - started
    assert 0.14 <= elapsed < 2.0


def test_wait_is_woken_by_local_save_from_another_thread(store):
    record = rec("g")

    def later():
        time.sleep(0.1)
        store.save([record])

    saver = threading.Thread(target=later)
    started = time.monotonic()
    saver.start()
    try:
        got = store.wait(lambda: store.saved.get(record["id"]), 10_000)
    finally:
        saver.join(10)
    assert got == record
    assert time.monotonic() - started < 5


def test_wait_forever_returns_when_ready(store):
    record = rec("g")
    out = []
    waiter = threading.Thread(
        target=lambda: out.append(store.wait(lambda: store.saved.get(record["id"]), -1)),
        daemon=True)
    waiter.start()
    time.sleep(0.05)
    store.save([record])
    waiter.join(10)
    assert not waiter.is_alive()
    assert out == [record]


def test_wait_sees_writes_of_another_store_object(tmp_path):
    """Another process's writes are not notified; they are seen by polling."""
    one, two = Store(str(tmp_path / "s")), Store(str(tmp_path / "s"))
    try:
        record = rec("g")
        timer = threading.Timer(0.1, lambda: two.save([record]))
        timer.start()
        try:
            got = one.wait(lambda: one.saved.get(record["id"]), 10_000)
        finally:
            timer.join(10)
        assert got == record
    finally:
        one.close()
        two.close()


# -- get_store -----------------------------------------------------------------------------


def test_get_store_is_shared_per_directory(broker, tmp_path, monkeypatch):
    store = get_store(broker.directory)
    assert get_store(broker.directory) is store
    assert get_store(broker.directory + os.sep) is store
    assert store.directory == broker.directory
    monkeypatch.chdir(os.path.dirname(broker.directory))
    assert get_store(os.path.basename(broker.directory)) is store
    drop(broker.directory)
    assert get_store(broker.directory) is not store


def test_get_store_makes_one_store_for_threads_at_once(tmp_path):
    directory = str(tmp_path / "shared")
    found = []
    threads = [threading.Thread(target=lambda: found.append(get_store(directory)))
               for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == 8 and all(store is found[0] for store in found)
    finally:
        drop(directory)


# -- scale ---------------------------------------------------------------------------------


def test_count_and_group_records_at_scale(tmp_path):
    part = Part(str(tmp_path / "big"), expiring=False)
    try:
        started = time.monotonic()
        for _ in range(100):
            part.write([rec("huge") for _ in range(1000)])
        build = time.monotonic() - started

        t0 = time.perf_counter()
        count = part.count("huge")
        took = time.perf_counter() - t0
        assert count == 100_000
        assert took < 0.05, f"count_group of 100k took {took * 1000:.1f} ms"
        assert part.count("huge", failures=True) == 0
        assert part.totals() == (100_000, 0)

        mid = [rec("mid", i % 10 != 0) for i in range(10_000)]
        for start in range(0, 10_000, 1000):
            part.write(mid[start:start + 1000])
        records = part.group_records("mid")
        assert len(records) == 10_000
        assert [r["id"] for r in records[:5]] == [r["id"] for r in mid[:5]]
        assert records[-1]["id"] == mid[-1]["id"]
        assert len(part.group_records("mid", failures=False)) == 9_000
        assert part.count("mid") == 9_000
        assert part.count("mid", failures=True) == 1_000
        print(f"built 100k records in {build:.1f} s")
    finally:
        part.close()


def test_batched_rows_are_diskcache_rows(part):
    """Outcomes written in one statement read back through diskcache's own API, keep
    its row count right, update a taken name in place, and put a big result in a file."""
    big = rec("g", result=b"x" * 200_000)
    first, same_name = rec("g", name="shared-name"), rec("g", name="shared-name")
    part.write([big, first])
    part.write([same_name])
    cache = part._cache
    assert len(cache) == len(list(cache.iterkeys()))  # diskcache's count trigger held
    assert decode(part.get(big["id"])["result"]) == b"x" * 200_000
    assert _value_files(cache.directory)  # over 32 KiB: in a file of its own
    assert part.get("shared-name")["id"] == same_name["id"]  # the latest of the name
    assert part.get(first["id"])["id"] == first["id"]
    assert part.count("g") == 3


def _value_files(directory):
    return [f for _, _, files in os.walk(directory) for f in files if f.endswith(".val")]
