"""nbqueue.broker.Broker on a real diskcache store in a temp directory."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest

from nbqueue.disk import broker as broker_module
from nbqueue.disk.broker import Broker, Lease
from nbqueue.disk.directory import drop, get_broker
from nbqueue.errors import StoreError
from tests import tasks_fixtures


def _packages(leases):
    return [lease.package for lease in leases]


# -- enqueue / lease / ack -----------------------------------------------------------


def test_lease_on_empty_queue_returns_nothing(broker):
    assert broker.lease("w", 10, 30) == []
    assert broker.size() == 0
    assert broker.leased() == 0


def test_enqueue_lease_ack_roundtrip(broker):
    broker.enqueue(b"one")
    assert broker.size() == 1

    leases = broker.lease("w", 1, 30)
    assert len(leases) == 1
    lease = leases[0]
    assert isinstance(lease, Lease)
    assert lease.package == b"one"
    assert lease.attempt == 1
    assert isinstance(lease.token, str) and lease.token
    assert broker.size() == 0
    assert broker.leased() == 1

    broker.ack([lease.token])
    assert broker.leased() == 0
    assert broker.size() == 0
    assert broker.lease("w", 10, 30) == []


def test_lease_respects_count_and_fifo_order(broker):
    for i in range(10):
        broker.enqueue(b"p%d" % i)

    first = broker.lease("w", 3, 30)
    assert _packages(first) == [b"p0", b"p1", b"p2"]
    rest = broker.lease("w", 100, 30)
    assert _packages(rest) == [b"p%d" % i for i in range(3, 10)]
    assert broker.lease("w", 100, 30) == []
    assert broker.leased() == 10

    tokens = [lease.token for lease in first + rest]
    assert len(set(tokens)) == 10  # every delivery has its own token
    assert all(lease.attempt == 1 for lease in first + rest)
    broker.ack(tokens)
    assert broker.leased() == 0


def test_ack_removes_for_good(broker):
    broker.enqueue(b"gone")
    (lease,) = broker.lease("w", 1, 0.2)
    broker.ack([lease.token])
    time.sleep(0.3)  # well past the lease's deadline
    assert broker.reap() == 0
    assert broker.lease("w", 10, 30) == []
    assert broker.size() == 0
    broker.ack([lease.token])  # acking twice is harmless
    broker.ack([])
    assert broker.size() == 0 and broker.leased() == 0


def test_size_excludes_leased_and_leased_counts_them(broker):
    for i in range(5):
        broker.enqueue(b"s%d" % i)
    assert broker.size() == 5
    leases = broker.lease("w", 2, 30)
    assert broker.size() == 3
    assert broker.leased() == 2
    broker.ack([leases[0].token])
    assert broker.size() == 3
    assert broker.leased() == 1
    broker.release([leases[1].token])
    assert broker.size() == 4
    assert broker.leased() == 0


# -- release -----------------------------------------------------------------------


def test_release_uncounted_gives_attempt_back_and_goes_to_front(broker):
    for name in (b"a", b"b", b"c"):
        broker.enqueue(name)
    (lease,) = broker.lease("w", 1, 30)
    assert lease.package == b"a" and lease.attempt == 1

    broker.release([lease.token], counted=False)
    assert broker.leased() == 0
    assert broker.size() == 3

    again = broker.lease("w", 3, 30)
    assert _packages(again) == [b"a", b"b", b"c"]  # a went back to the front
    assert again[0].attempt == 1  # the attempt was given back
    assert again[0].token != lease.token


def test_release_counted_keeps_the_attempt(broker):
    broker.enqueue(b"a")
    broker.enqueue(b"b")
    (lease,) = broker.lease("w", 1, 30)
    broker.release([lease.token], counted=True)

    (second,) = broker.lease("w", 1, 30)
    assert second.package == b"a"  # front of the queue
    assert second.attempt == 2
    broker.release([second.token], counted=True)
    (third,) = broker.lease("w", 1, 30)
    assert third.package == b"a" and third.attempt == 3


def test_release_of_unknown_or_acked_token_does_nothing(broker):
    broker.enqueue(b"x")
    (lease,) = broker.lease("w", 1, 30)
    broker.ack([lease.token])
    broker.release([lease.token])
    broker.release(["no-such-token"], counted=True)
    assert broker.size() == 0
    assert broker.leased() == 0


# -- renew / reap --------------------------------------------------------------------


def test_renew_extends_deadline(broker):
    broker.enqueue(b"long")
    (lease,) = broker.lease("w", 1, 0.2)
    assert broker.renew([lease.token], 30) == []
    time.sleep(0.3)  # past the original deadline
    assert broker.reap() == 0
    assert broker.leased() == 1
    assert broker.size() == 0


def test_renew_returns_tokens_no_longer_held(broker):
    broker.enqueue(b"a")
    broker.enqueue(b"b")
    held, acked = broker.lease("w", 2, 30)
    broker.ack([acked.token])
    lost = broker.renew([held.token, acked.token, "never-leased"], 30)
    assert sorted(lost) == sorted([acked.token, "never-leased"])
    assert broker.renew([], 30) == []
    assert broker.leased() == 1


def test_renew_after_reap_reports_token_lost(broker):
    broker.enqueue(b"a")
    (lease,) = broker.lease("w", 1, 0.2)
    time.sleep(0.3)
    assert broker.reap() == 1
    assert broker.renew([lease.token], 30) == [lease.token]


def test_reap_puts_expired_leases_back_with_attempt_counted(broker):
    broker.enqueue(b"short")
    broker.enqueue(b"other")
    (short,) = broker.lease("w", 1, 0.2)
    assert short.attempt == 1
    time.sleep(0.3)

    assert broker.reap() == 1
    assert broker.leased() == 0
    assert broker.size() == 2

    (again,) = broker.lease("w", 1, 0.2)
    assert again.package == b"short"  # reaped work goes to the front
    assert again.attempt == 2
    time.sleep(0.3)
    assert broker.reap() == 1
    (third,) = broker.lease("w", 1, 30)
    assert third.package == b"short" and third.attempt == 3


def test_reap_charges_only_the_leases_whose_task_a_worker_began(broker):
    """The holder's folder (``nbqueue.hosts``) says which tasks its workers began: only
    those keep their attempt; the others come back as they were."""
    from nbqueue.disk import hosts
    for name in (b"a", b"b", b"c"):
        broker.enqueue(name)
    leased = broker.lease("cluster-one", 3, 60)
    dead = []
    for _ in range(2):  # pids of processes that ended: the host, its worker
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(10)
        dead.append(proc.pid)
    folder = hosts.make_folder("cluster-one")
    try:
        with open(os.path.join(folder, hosts.HOST_FILE), "w") as out:
            json.dump({"pid": dead[0], "cluster": "cluster-one",
                       "directory": broker.directory, "slots": True}, out)
        hosts.Slot(os.path.join(folder, str(dead[1]))).begin(leased[1].token)
        assert broker.reap(now=time.time() + 120) == 3
        again = broker.lease("cluster-two", 3, 60)
        assert [(lease.package, lease.attempt) for lease in again] == [
            (b"a", 1), (b"b", 2), (b"c", 1)]
        broker.ack([lease.token for lease in again])
        # without a folder of its holder here, every task is charged, as it may have run
        broker.enqueue(b"d")
        broker.lease("cluster-elsewhere", 1, 60)
        assert broker.reap(now=time.time() + 120) == 1
        assert broker.lease("cluster-two", 1, 60)[0].attempt == 2
        assert not os.path.exists(folder)  # used: the dead host's folder is swept
    finally:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


def test_reap_leaves_live_leases_alone(broker):
    for name in (b"a", b"b"):
        broker.enqueue(name)
    short, long_ = broker.lease("w", 1, 0.2) + broker.lease("w", 1, 60)
    time.sleep(0.3)
    assert broker.reap() == 1
    assert broker.leased() == 1
    (again,) = broker.lease("w", 5, 60)
    assert again.package == short.package
    broker.ack([long_.token, again.token])
    assert broker.leased() == 0 and broker.size() == 0


def test_reap_with_explicit_now(broker):
    broker.enqueue(b"a")
    broker.lease("w", 1, 60)
    assert broker.reap() == 0  # not expired yet
    assert broker.reap(now=time.time()) == 0
    assert broker.reap(now=time.time() + 120) == 1
    assert broker.size() == 1


def test_late_ack_of_reaped_lease_does_not_remove_new_delivery(broker):
    broker.enqueue(b"job")
    (old,) = broker.lease("w1", 1, 0.2)
    time.sleep(0.3)
    assert broker.reap() == 1
    (new,) = broker.lease("w2", 1, 30)
    assert new.package == b"job" and new.attempt == 2

    broker.ack([old.token])  # the first worker finally reports
    assert broker.leased() == 1  # the second delivery is still held
    assert broker.renew([new.token], 30) == []
    broker.release([old.token])  # a late release is ignored as well
    assert broker.size() == 0

    broker.ack([new.token])
    assert broker.leased() == 0


def test_late_ack_of_reaped_lease_before_redelivery_keeps_package_queued(broker):
    broker.enqueue(b"job")
    (old,) = broker.lease("w1", 1, 0.2)
    time.sleep(0.3)
    assert broker.reap() == 1
    broker.ack([old.token])
    assert broker.size() == 1
    (new,) = broker.lease("w2", 1, 30)
    assert new.package == b"job"


# -- purge / enqueue_many -----------------------------------------------------------


def test_purge_drops_pending_but_not_leased(broker):
    for i in range(5):
        broker.enqueue(b"p%d" % i)
    leases = broker.lease("w", 2, 30)
    assert broker.purge() == 3
    assert broker.size() == 0
    assert broker.leased() == 2
    assert broker.lease("w", 10, 30) == []
    broker.release([leases[0].token])
    assert broker.size() == 1
    assert broker.purge() == 1
    assert broker.purge() == 0


def test_enqueue_many_keeps_order(broker):
    packages = [b"m%03d" % i for i in range(200)]
    broker.enqueue_many(packages)
    assert broker.size() == 200
    leased = broker.lease("w", 150, 30) + broker.lease("w", 150, 30)
    assert _packages(leased) == packages
    broker.enqueue_many([])
    assert broker.size() == 0


def test_bundles_split_at_lease_and_keep_order_and_count(broker):
    packages = [b"b%04d" % i for i in range(3 * broker_module.BUNDLE + 5)]
    broker.enqueue_many(packages)
    assert len(broker._queue) < len(packages) // 10  # rows are bundles, not packages
    leased = []
    for count in (1, 7, broker_module.BUNDLE, 3, 1000):
        got = broker.lease("w", count, 30)
        assert len(got) == min(count, len(packages) - len(leased))
        leased += got
        assert broker.size() == len(packages) - len(leased)
    assert _packages(leased) == packages
    broker.release([lease.token for lease in leased[:10]])
    assert broker.size() == 10
    assert _packages(broker.lease("w", 100, 30)) == packages[:10]


def test_a_big_package_is_a_bundle_of_its_own(broker):
    big = b"x" * (broker_module.BUNDLE_BYTES + 1)
    broker.enqueue_many([b"a", big, b"b", b"c"])
    rows = [broker._queue[key] for key in broker._queue.iterkeys()
            if isinstance(key, int)]
    assert rows == [[b"a"], [big], [b"b", b"c"]]
    assert _packages(broker.lease("w", 10, 30)) == [b"a", big, b"b", b"c"]


def test_enqueue_many_accepts_a_generator(broker):
    broker.enqueue_many(b"g%d" % i for i in range(10))
    assert broker.size() == 10


# -- wakeups --------------------------------------------------------------------------


def test_subscribe_wakes_on_enqueue_and_unsubscribe_stops(broker):
    event = threading.Event()
    assert not broker.has_local_consumer
    broker.subscribe(event)
    assert broker.has_local_consumer

    broker.enqueue(b"a")
    assert event.is_set()
    event.clear()
    broker.enqueue_many([b"b", b"c"])
    assert event.is_set()

    broker.unsubscribe(event)
    assert not broker.has_local_consumer
    event.clear()
    broker.enqueue(b"d")
    assert not event.is_set()
    broker.unsubscribe(event)  # twice is harmless


def test_wakeup_reaches_a_waiting_thread(broker):
    event = threading.Event()
    broker.subscribe(event)
    try:
        woke = []
        waiter = threading.Thread(target=lambda: woke.append(event.wait(10)))
        waiter.start()
        time.sleep(0.05)
        started = time.monotonic()
        broker.enqueue(b"x")
        waiter.join(10)
        assert not waiter.is_alive()
        assert woke == [True]
        assert time.monotonic() - started < 5
    finally:
        broker.unsubscribe(event)


# -- get_broker -------------------------------------------------------------------------


def test_get_broker_is_shared_per_directory(store_dir, tmp_path):
    first = get_broker(store_dir)
    assert get_broker(store_dir) is first
    assert get_broker(store_dir + os.sep) is first
    assert get_broker() is first  # the configured directory
    assert first.directory == os.path.abspath(store_dir)

    other_dir = str(tmp_path / "other")
    try:
        other = get_broker(other_dir)
        assert other is not first
        assert get_broker(other_dir) is other
        # separate queues
        first.enqueue(b"here")
        assert other.size() == 0
    finally:
        drop(other_dir)


def test_two_brokers_on_one_directory_share_the_queue(store_dir):
    one = Broker(store_dir)
    two = Broker(store_dir)
    try:
        one.enqueue(b"shared")
        one.flush()  # enqueue writes behind; another process sees it once written
        (lease,) = two.lease("w", 1, 30)
        assert lease.package == b"shared"
        assert one.leased() == 1
        one.ack([lease.token])  # any process may end a lease
        assert two.leased() == 0
        assert one.key == two.key
    finally:
        one.close()
        two.close()


# -- several processes at once ------------------------------------------------------------


def _stop(processes, timeout):
    for process in processes:
        process.join(timeout)
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, 9)
            process.join(5)


def test_many_producers_and_consumers_consume_each_package_once(store_dir, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    Broker(store_dir).close()  # create the directory and key before the children race
    producers_done = ctx.Event()
    outputs = [str(tmp_path / f"consumed-{i}.txt") for i in range(2)]
    consumers = [ctx.Process(target=tasks_fixtures.consume_packages,
                             args=(store_dir, out, producers_done, 60.0))
                 for out in outputs]
    producers = [ctx.Process(target=tasks_fixtures.produce_packages,
                             args=(store_dir, f"producer{p}", 500))
                 for p in range(4)]
    everyone = consumers + producers
    try:
        for process in everyone:
            process.start()
        deadline = time.monotonic() + 60
        for process in producers:
            process.join(max(0.1, deadline - time.monotonic()))
        assert not any(p.is_alive() for p in producers), "producers did not finish in time"
        assert all(p.exitcode == 0 for p in producers)
        producers_done.set()
        for process in consumers:
            process.join(max(0.1, deadline - time.monotonic()))
        assert not any(p.is_alive() for p in consumers), "consumers did not finish in time"
        assert all(p.exitcode == 0 for p in consumers)
    finally:
        producers_done.set()
        _stop(everyone, 5)

    consumed = []
    for out in outputs:
        with open(out) as src:
            text = src.read()
        consumed.extend(line for line in text.split("\n") if line)
    expected = {f"producer{p}-{i}" for p in range(4) for i in range(500)}
    assert len(consumed) == len(expected)  # nothing delivered twice
    assert set(consumed) == expected  # nothing lost

    check = Broker(store_dir)
    try:
        assert check.size() == 0
        assert check.leased() == 0
    finally:
        check.close()


def test_enqueue_writes_behind_and_flush_writes_now(store_dir, tmp_path):
    one = Broker(store_dir)
    other = Broker(store_dir)  # stands for another process on the same directory
    try:
        for i in range(500):
            one.enqueue(f"p{i}".encode())
        one.flush()
        assert other.size() == 500
        leases = other.lease("w", 500, 30)
        assert [lease.package for lease in leases] == [f"p{i}".encode() for i in range(500)]
    finally:
        one.close()
        other.close()


def test_a_waiting_task_s_row_is_written_behind_after_what_was_enqueued_before_it(store_dir):
    """A task that waits for others (``waiting``) is written behind like a package, never
    before a package this process enqueued before it (its dependency, most often)."""
    one = Broker(store_dir)
    other = Broker(store_dir)  # stands for another process on the same directory
    try:
        with one._outbox.order:  # the outbox's thread writes nothing meanwhile
            one._outbox._packages.append(b"dependency")  # as ``put`` leaves it
            one._outbox._bytes += len(b"dependency")
            one.wait("task-b", ("task-a",), b"package-b", "g")
            one._write([])  # what the thread writes with no package: not the row yet
            assert other.waiting() == {} and other.size() == 0
        one.flush()
        assert other.size() == 1 and other.waiting() == {"task-b": (("task-a",), b"package-b")}
        assert other.group_sent("g").tasks == 1
        assert one.take_waiting(["task-b", "task-x"], send=True) == {"task-b": b"package-b"}
        assert other.waiting() == {} and other.size() == 2
    finally:
        one.close()
        other.close()


def test_ack_soon_is_done_by_the_next_lease_or_flush_acks(broker):
    broker.enqueue_many([b"a", b"b", b"c"])
    first, second = broker.lease("w", 2, 30)
    broker.ack_soon([first.token])
    assert broker.leased() == 2  # not yet
    assert _packages(broker.lease("w", 1, 30)) == [b"c"]  # the same transaction acks
    assert broker.leased() == 2  # second and c
    broker.ack_soon([second.token])
    broker.flush_acks()
    assert broker.leased() == 1
    assert broker.lease("w", 5, 30) == []  # an empty queue: nothing leased, nothing lost
    assert broker.size() == 0 and broker.leased() == 1


def _rows_written(broker):
    from nbqueue.disk import leases
    return leases.read_index(broker._queue)


@contextlib.contextmanager
def _no_writer_thread(broker):
    """No outbox thread writes behind while a test looks (one is started after)."""
    outbox = broker._outbox
    assert outbox._thread is None
    outbox._thread = threading.current_thread()  # stands for one: none is started
    try:
        yield
    finally:
        outbox._thread = None
        outbox.poke()


def test_fresh_packages_are_leased_in_memory_and_written_behind(broker):
    with _no_writer_thread(broker):
        broker.enqueue(b"fresh")
        (lease,) = broker.lease("w", 5, 30)
        assert lease.package == b"fresh" and lease.attempt == 1
        assert _rows_written(broker) == {}  # no transaction on the lease's path
        assert broker.leased() == 1  # this process counts it all the same
        assert broker.held([lease.token], "w") == {lease.token}
        assert broker.held([lease.token], "another") == set()
        assert broker.renew([lease.token], 60) == []
    deadline = time.monotonic() + 10
    while not _rows_written(broker) and time.monotonic() < deadline:
        time.sleep(0.005)  # written behind by the outbox's thread, within a few ms
    (row,) = _rows_written(broker).values()
    assert row[1] == "w" and row[0] > time.time() + 50  # the renewed deadline
    broker.ack([lease.token])
    assert _rows_written(broker) == {} and broker.leased() == 0


def test_a_lease_in_memory_acknowledged_before_it_is_written_is_never_written(broker):
    with _no_writer_thread(broker):
        broker.enqueue(b"quick")
        (lease,) = broker.lease("w", 5, 30)
        broker.ack_soon([lease.token])  # its outcome is stored: done, in memory
        assert broker.leased() == 0 and not broker._memory
    broker.flush()
    assert _rows_written(broker) == {} and broker.size() == 0
    assert broker.lease("w", 5, 30) == []


def test_flush_writes_leases_in_memory_and_release_puts_them_back(broker):
    with _no_writer_thread(broker):
        broker.enqueue(b"a")
        broker.enqueue(b"b")
        first, second = broker.lease("w", 5, 30)
        broker.flush()  # durable now: another process would find them leased
        assert sorted(len(row[2]) for row in _rows_written(broker).values()) == [2]
        broker.enqueue(b"c")
        (third,) = broker.lease("w", 5, 30)
        broker.release([first.token, third.token], counted=False)  # one written, one not
        assert broker.size() == 2
        again = broker.lease("w", 5, 30)
        assert sorted(_packages(again)) == [b"a", b"c"] and {x.attempt for x in again} == {1}
        broker.release([second.token], counted=True)
        (last,) = broker.lease("w", 5, 30)
        assert last.package == b"b" and last.attempt == 2


def test_a_queued_package_goes_before_fresh_ones_leased_in_memory(broker):
    broker.enqueue(b"older")
    broker.flush()
    broker.enqueue(b"newer")
    assert _packages(broker.lease("w", 1, 30)) == [b"older"]
    assert _packages(broker.lease("w", 1, 30)) == [b"newer"]


def test_a_forked_child_writes_none_of_its_parents_leases_or_packages(broker):
    with _no_writer_thread(broker):  # the parent's own thread cannot write meanwhile
        broker.enqueue(b"leased")
        broker.lease("w", 1, 30)
        broker.enqueue(b"waiting")
        broker._outbox._thread = None  # the child would start one: it must find nothing
        pid = os.fork()
        if pid == 0:
            try:
                broker.flush()
                os._exit(0)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _rows_written(broker) == {}
        assert broker._queue.get(broker_module.PENDING, 0) == 0
        broker._outbox._thread = threading.current_thread()
    broker.flush()
    assert len(_rows_written(broker)) == 1 and broker.size() == 1


def test_read_only_store_is_a_clear_error(store_dir):
    get_broker(store_dir).flush()  # the store exists ...
    drop(store_dir)
    modes = {}
    for root, dirs, files in os.walk(store_dir):  # ... and is made read-only
        for name in [root] + [os.path.join(root, f) for f in files]:
            modes[name] = os.stat(name).st_mode
            os.chmod(name, modes[name] & ~0o222)
    try:
        if os.geteuid() == 0:
            # root writes through file modes (CAP_DAC_OVERRIDE): open the store in a
            # process without that capability, as any other user would
            code = ("import nbqueue, sys\n"
                    f"try: nbqueue.get_broker({store_dir!r})\n"
                    "except nbqueue.StoreError as exc: print(exc); sys.exit(0)\n"
                    "sys.exit('no StoreError')\n")
            done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                                   "--", sys.executable, "-c", code], capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            message = done.stdout
        else:
            with pytest.raises(StoreError) as info:
                get_broker(store_dir)
            message = str(info.value)
        assert f"{store_dir} is read-only for this process" in message, message
        assert f"chmod -R u+w {store_dir}" in message and "free space" not in message
    finally:
        for name, mode in modes.items():
            os.chmod(name, mode)
        drop(store_dir)


def test_a_lease_in_memory_ended_while_the_outbox_waits_to_write_is_never_written(tmp_path):
    """The outbox's thread waits for the write lock while a lease it would write is
    acked in a transaction that goes first: the lease ends, and no row of it is written
    behind (else it would stay leased until it expired, and its task run again)."""
    directory = str(tmp_path / "store")
    broker = get_broker(directory)
    broker._write_lock = threading.RLock()  # so that this thread's ack goes first
    try:
        with _no_writer_thread(broker):
            broker.enqueue(b"quick")
            (lease,) = broker.lease("w", 5, 30)
        with broker._write_lock:  # the outbox's thread (poked on leaving) waits here
            deadline = time.monotonic() + 10
            while not broker._outbox.order.locked() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert broker._outbox.order.locked(), "the outbox's thread began its write"
            time.sleep(0.05)  # for it to reach the write lock (nothing to wait on)
            broker.ack([lease.token])  # its own transaction, before the outbox's
        broker.flush()
        assert broker.leased() == 0, "the acked lease was written behind"
        assert _rows_written(broker) == {}
    finally:
        drop(directory)
