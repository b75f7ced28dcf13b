"""nbqueue.disk.leases: lease rows and the lease index, on a real store in a temp directory.

Each test writes rows and the index with the module's own functions (inside a transaction
of the store's queue, as the broker does) and reads back what the store holds.
"""

from __future__ import annotations

import threading
import time

import pytest

from nbqueue.disk import leases
from nbqueue.disk.leases import INDEX, PENDING, ROW, InMemory

pytestmark = pytest.mark.timeout(30)

OWNER = "host-a"


@pytest.fixture
def queue(broker):
    """The store's queue: the diskcache Cache the broker leases from."""
    return broker._queue


def _put(queue, batch, row, expires, owner=OWNER):
    """A lease row ``batch`` holding ``row`` ({number: (attempt, package)}), indexed."""
    with queue.transact():
        index = leases.read_index(queue)
        index[batch] = (expires, owner, tuple(row))
        queue.set(ROW + batch, row)
        queue.set(INDEX, index)


def _queued(queue):
    """Every item of the queue, front first, taken out of it."""
    items = []
    while True:
        key, item = queue.pull()
        if key is None:
            return items
        items.append(item)


def _row(queue, batch):
    return queue.get(ROW + batch)


# -- tokens and the index -------------------------------------------------------------


def test_by_row_groups_tokens_by_their_row_and_names_the_foreign_ones():
    rows, foreign = leases.by_row(["b1.0", "b2.3", "b1.2", "x.y.7", "refused-0", "b3.", "nodot"])
    assert rows == {"b1": [0, 2], "b2": [3], "x.y": [7]}  # the row is all before the last dot
    assert foreign == ["refused-0", "b3.", "nodot"]
    assert leases.by_row([]) == ({}, [])


def test_read_index_of_a_fresh_store_is_empty_then_what_was_written(queue):
    assert leases.read_index(queue) == {}
    _put(queue, "b1", {0: (1, b"p0")}, 123.0)
    assert leases.read_index(queue) == {"b1": (123.0, OWNER, (0,))}


def test_a_brokers_lease_is_a_row_and_an_index_entry_named_by_its_token(broker, queue):
    broker.enqueue_many([b"p0", b"p1", b"p2"])
    before = time.time()
    taken = broker.lease("w", 3, 30)
    broker.flush()  # leases of this process's own packages are written behind
    index = leases.read_index(queue)
    rows, foreign = leases.by_row(lease.token for lease in taken)
    assert foreign == [] and set(rows) == set(index)
    for batch, numbers in rows.items():
        expires, owner, out = index[batch]
        assert owner == "w" and before + 30 <= expires <= time.time() + 30
        assert sorted(out) == sorted(numbers)
        row = _row(queue, batch)
        assert {n: row[n] for n in numbers} == {
            int(lease.token.rpartition(".")[2]): (1, lease.package)
            for lease in taken
            if lease.token.rpartition(".")[0] == batch
        }
    assert sorted(lease.package for lease in taken) == [b"p0", b"p1", b"p2"]


# -- push_front and end ---------------------------------------------------------------


def test_push_front_puts_items_before_the_queue_in_their_order_and_counts_them(queue):
    queue.push((1, b"old"))
    queue.set(PENDING, 1)
    with queue.transact():
        leases.push_front(queue, [(2, b"a"), (1, b"b")])
        leases.push_front(queue, [])  # nothing: nothing counted
    assert queue.get(PENDING) == 3
    assert _queued(queue) == [(2, b"a"), (1, b"b"), (1, b"old")]


def test_end_acks_part_of_a_row_then_the_rest_and_the_row_goes(queue):
    _put(queue, "b1", {0: (1, b"p0"), 1: (1, b"p1"), 2: (1, b"p2")}, time.time() + 60)
    with queue.transact():
        index = leases.read_index(queue)
        leases.end(queue, {"b1": [0, 2]}, index)
        queue.set(INDEX, index)
    assert _row(queue, "b1") == {1: (1, b"p1")}
    assert leases.read_index(queue)["b1"][1:] == (OWNER, (1,))  # its expiry kept
    with queue.transact():
        index = leases.read_index(queue)
        leases.end(queue, {"b1": [1]}, index)
        queue.set(INDEX, index)
    assert _row(queue, "b1") is None and leases.read_index(queue) == {}
    assert _queued(queue) == [] and queue.get(PENDING, 0) == 0  # acked: nothing back


@pytest.mark.parametrize("counted, attempts", [(False, [0, 2]), (True, [1, 3])])
def test_end_back_requeues_with_the_attempt_counted_or_given_back(queue, counted, attempts):
    _put(queue, "b1", {0: (1, b"p0"), 1: (3, b"p1")}, time.time() + 60)
    with queue.transact():
        index = leases.read_index(queue)
        leases.end(queue, {"b1": [0, 1]}, index, back=True, counted=counted)
        queue.set(INDEX, index)
    assert leases.read_index(queue) == {} and _row(queue, "b1") is None
    assert queue.get(PENDING) == 2
    assert _queued(queue) == list(zip(attempts, [b"p0", b"p1"], strict=True))


def test_end_of_a_lease_no_longer_in_the_index_leaves_its_row_to_the_new_delivery(queue):
    queue.set(ROW + "gone", {0: (1, b"p0")})  # reaped meanwhile, delivered again as "gone"
    with queue.transact():
        index = leases.read_index(queue)
        leases.end(queue, {"gone": [0]}, index, back=True)
        queue.set(INDEX, index)
    assert _row(queue, "gone") == {0: (1, b"p0")}
    assert _queued(queue) == [] and leases.read_index(queue) == {}


# -- renew and held_by ----------------------------------------------------------------


def test_renew_extends_held_leases_and_names_the_tokens_no_longer_held(queue):
    _put(queue, "b1", {0: (1, b"p0"), 1: (1, b"p1")}, time.time() + 1)
    with queue.transact():
        index = leases.read_index(queue)
        leases.end(queue, {"b1": [1]}, index)  # acked meanwhile
        before = time.time()
        lost = leases.renew({"b1": [0, 1], "reaped": [4]}, index, 600)
        queue.set(INDEX, index)
    assert sorted(lost) == ["b1.1", "reaped.4"]
    expires, owner, out = leases.read_index(queue)["b1"]
    assert before + 600 <= expires <= time.time() + 600 and owner == OWNER and out == (0,)
    assert "reaped" not in leases.read_index(queue)  # renewing adds no lease


def test_held_by_is_the_owners_unexpired_tokens_only(queue):
    now = time.time()
    _put(queue, "mine", {0: (1, b"a"), 1: (1, b"b")}, now + 60)
    _put(queue, "late", {0: (1, b"c")}, now - 1)
    _put(queue, "theirs", {0: (1, b"d")}, now + 60, owner="host-b")
    index = leases.read_index(queue)
    asked = {"mine": [0, 1, 2], "late": [0], "theirs": [0], "unknown": [0]}
    assert leases.held_by(asked, index, OWNER) == {"mine.0", "mine.1"}
    assert leases.held_by(asked, index, "host-b") == {"theirs.0"}
    assert leases.held_by(asked, index, "nobody") == set()


# -- reap -----------------------------------------------------------------------------


def test_reap_puts_back_expired_leases_counted_when_begun_is_unknown(queue):
    now = time.time()
    _put(queue, "old", {0: (1, b"p0"), 1: (2, b"p1")}, now - 5)
    _put(queue, "live", {0: (1, b"p2")}, now + 60)
    asked = []
    with queue.transact():
        index = leases.read_index(queue)
        reaped = leases.reap(queue, index, now, lambda owner: asked.append(owner))
        queue.set(INDEX, index)
    assert reaped == 2 and asked == [OWNER]
    assert set(leases.read_index(queue)) == {"live"} and _row(queue, "old") is None
    assert _row(queue, "live") == {0: (1, b"p2")}
    assert _queued(queue) == [(1, b"p0"), (2, b"p1")]  # attempts counted: they may have run


def test_reap_gives_the_attempt_back_to_the_leases_no_worker_began(queue):
    now = time.time()
    _put(queue, "old", {0: (1, b"p0"), 1: (1, b"p1"), 2: (4, b"p2")}, now - 5)
    with queue.transact():
        index = leases.read_index(queue)
        reaped = leases.reap(queue, index, now, lambda owner: {"old.1"})
        queue.set(INDEX, index)
    assert reaped == 3 and leases.read_index(queue) == {}
    assert queue.get(PENDING) == 3
    assert _queued(queue) == [(0, b"p0"), (1, b"p1"), (3, b"p2")]


def test_reap_with_nothing_expired_changes_nothing(queue):
    _put(queue, "live", {0: (1, b"p0")}, time.time() + 60)
    with queue.transact():
        index = leases.read_index(queue)
        assert leases.reap(queue, index, time.time(), lambda owner: None) == 0
    assert set(index) == {"live"} and _queued(queue) == []


# -- write: the rows InMemory kept, and the acks -----------------------------------------


def test_write_writes_the_rows_kept_in_memory_and_ends_the_acked_leases(queue):
    _put(queue, "b0", {0: (1, b"x"), 1: (1, b"y")}, time.time() + 60)
    expires = time.time() + 30
    pending = {
        "b1": (expires, OWNER, {0: (1, b"p0"), 1: (1, b"p1")}),
        "empty": (expires, OWNER, {}),
    }
    with queue.transact():
        leases.write(queue, pending, ["b0.0"])
    index = leases.read_index(queue)
    assert set(index) == {"b0", "b1"}  # a row emptied in memory is never written
    assert index["b1"] == (expires, OWNER, (0, 1)) and index["b0"][2] == (1,)
    assert _row(queue, "b1") == {0: (1, b"p0"), 1: (1, b"p1")} and _row(queue, "empty") is None
    assert _row(queue, "b0") == {1: (1, b"y")}
    assert _queued(queue) == []


# -- InMemory ---------------------------------------------------------------------------


def _memory(expires=None, owner=OWNER):
    memory = InMemory()
    expires = time.time() + 60 if expires is None else expires
    memory.add([("m1", {0: (1, b"p0"), 1: (1, b"p1")}), ("m2", {0: (2, b"p2")})], expires, owner)
    return memory


def test_in_memory_an_ack_before_the_write_ends_the_lease_here(queue):
    memory = _memory()
    assert memory
    memory.ack(["m1.0", "w9.3"])  # m1.0 is unwritten: ended here; w9.3 waits
    pending, acks = memory.take()
    assert acks == ["w9.3"] and pending["m1"][2] == {1: (1, b"p1")}
    with queue.transact():
        leases.write(queue, pending, [])
    memory.written(pending, acks, ok=True)
    assert not memory
    assert leases.read_index(queue)["m1"][2] == (1,)  # the acked package never written
    assert _row(queue, "m2") == {0: (2, b"p2")}


def test_in_memory_a_failed_write_keeps_the_rows_and_the_acks(queue):
    memory = _memory()
    memory.ack(["w9.3"])
    pending, acks = memory.take()
    assert not memory.rows and memory.writing == pending  # held all along, while written
    assert memory.held_by({"m1": [0]}, OWNER) == {"m1.0"}
    memory.ack(["m1.1", "w9.4"])  # came meanwhile: m1 is being written, so it waits
    memory.written(pending, acks, ok=False)
    assert memory.writing == {} and set(memory.rows) == {"m1", "m2"}
    # kept: the acks, those of rows kept here now ended here instead
    assert memory.rows["m1"][2] == {0: (1, b"p0")}
    assert memory.take_acks() == ["w9.3", "w9.4"] and memory.take_acks() == []


def test_in_memory_end_gives_back_the_unwritten_packages_and_the_other_tokens():
    memory = _memory()
    others, requeued = memory.end(["m1.0", "m2.0", "w9.1", "refused-0"], back=True, counted=False)
    assert others == ["w9.1", "refused-0"]  # for the store to end
    assert requeued == [(0, b"p0"), (1, b"p2")]  # attempts given back
    assert set(memory.rows) == {"m1"} and memory.rows["m1"][2] == {1: (1, b"p1")}
    others, requeued = memory.end(["m1.1"], back=True, counted=True)
    assert others == [] and requeued == [(1, b"p1")] and not memory
    assert _memory().end(["m1.0"], back=False, counted=False) == ([], [])


def test_in_memory_renew_takes_its_rows_out_and_names_those_no_longer_held():
    memory = _memory(expires=time.time() + 1)
    memory.ack(["m1.1"])
    rows = {"m1": [0, 1], "w9": [0]}
    before = time.time()
    assert memory.renew(rows, 600) == ["m1.1"]
    assert rows == {"w9": [0]}  # the store renews the rest
    assert memory.rows["m1"][0] >= before + 600


def test_in_memory_held_by_is_the_owners_unexpired_leases():
    memory = _memory()
    rows = {"m1": [0, 1, 5], "w9": [0]}
    assert memory.held_by(rows, OWNER) == {"m1.0", "m1.1"} and rows == {"w9": [0]}
    assert memory.held_by({"m2": [0]}, "host-b") == set()
    assert _memory(expires=time.time() - 1).held_by({"m2": [0]}, OWNER) == set()


def test_in_memory_count_counts_a_row_written_meanwhile_once(queue):
    memory = _memory()
    assert memory.count(lambda: leases.read_index(queue)) == 3
    _put(queue, "b0", {0: (1, b"x")}, time.time() + 60)
    pending, acks = memory.take()
    with queue.transact():
        leases.write(queue, pending, acks)
    # written, and still held as being written: each counted once
    assert memory.count(lambda: leases.read_index(queue)) == 4
    memory.written(pending, acks, ok=True)
    assert memory.count(lambda: leases.read_index(queue)) == 4


def test_in_memory_reset_holds_nothing_and_a_fresh_lock():
    memory = _memory()
    memory.ack(["w9.0"])
    lock = memory.lock
    memory.reset()
    assert not memory and memory.writing == {} and memory.lock is not lock
    assert isinstance(memory.lock, type(threading.Lock()))
