"""nbqueue.outbox: packages written behind, in order, bounded, and never dropped.

The Outbox is given the function that writes a batch; here it writes into a list, or
refuses like a full disk, so that each rule is seen on its own. tests/test_broker.py
and tests/test_failures.py (a disk that fills up) test it inside a real Broker.
"""

from __future__ import annotations

import threading
import time

import pytest

from nbqueue.errors import StoreError
from nbqueue.disk.outbox import OUTBOX_BYTES, RETRY_AFTER, WRITE_BYTES, Outbox


class Sink:
    """Where an Outbox writes: a list of batches, or a refusal while ``full``."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.full = False
        self.written = threading.Event()

    def write(self, packages: list[bytes]) -> None:
        if self.full:
            raise StoreError("database or disk is full")
        self.batches.append(list(packages))

    @property
    def packages(self) -> list[bytes]:
        return [p for batch in self.batches for p in batch]


@pytest.fixture
def sink():
    return Sink()


def _outbox(sink: Sink, consumer: bool = False) -> Outbox:
    return Outbox("test-store", sink.write, lambda: consumer, sink.written.set)


def test_packages_are_written_behind_in_order(sink):
    outbox = _outbox(sink)
    for i in range(500):
        outbox.put(b"%d" % i)
    assert sink.written.wait(10)
    outbox.flush()
    assert sink.packages == [b"%d" % i for i in range(500)] and len(outbox) == 0
    assert len(sink.batches) < 500  # batched, not one write per package


def test_a_refused_batch_is_kept_in_order_and_the_next_call_says_why(sink):
    outbox = _outbox(sink)
    sink.full = True
    outbox.put(b"a")
    with pytest.raises(StoreError, match="not in the queue yet.*disk is full.*flush"):
        outbox.flush()
    with pytest.raises(StoreError, match="kept in memory"):
        outbox.put(b"late")  # refused at the call, not taken
    assert sink.packages == []
    sink.full = False
    outbox.flush()
    assert sink.packages == [b"a"]
    assert outbox.error is None
    outbox.put(b"c")
    outbox.flush()
    assert sink.packages[-1] == b"c"


def test_taken_packages_refused_by_the_caller_go_back_in_front(sink):
    outbox = _outbox(sink, consumer=True)
    outbox._packages.extend([b"1", b"2"])  # as put() leaves them, without the thread
    with pytest.raises(StoreError, match="2 task"):
        with outbox.taken() as fresh:
            assert fresh == [b"1", b"2"] and len(outbox) == 0
            raise StoreError("disk full")
    assert outbox.take() == [b"1", b"2"]
    outbox.error = None
    with outbox.taken() as fresh:
        assert fresh == []


def test_the_outbox_is_bounded_past_it_the_caller_writes_first(sink):
    outbox = _outbox(sink, consumer=True)  # the thread waits: a consumer leases first
    package = bytes(WRITE_BYTES // 2)
    for _ in range(OUTBOX_BYTES // len(package) + 3):
        outbox.put(package)
        assert outbox._bytes <= OUTBOX_BYTES
    outbox.flush()
    assert all(sum(map(len, batch)) <= WRITE_BYTES for batch in sink.batches)


@pytest.mark.timeout(30)
def test_the_batch_being_written_counts_in_the_bound(sink):
    """While the thread writes a batch, ``put`` takes only what fits beside it: a batch
    the store then refuses is kept with what came meanwhile, still within OUTBOX_BYTES,
    and the caller past the bound is refused at the call. Nothing is dropped."""
    writing, release = threading.Event(), threading.Event()

    def slow_write(packages: list[bytes]) -> None:
        writing.set()
        assert release.wait(10)
        sink.write(packages)

    outbox = Outbox("test-store", slow_write, lambda: False, sink.written.set)
    package = bytes(WRITE_BYTES // 4)
    fit = OUTBOX_BYTES // len(package)
    sink.full = True
    outbox.put(package)
    assert writing.wait(10)  # the thread writes a batch of one: it blocks until released
    taken, refused = [], []

    def produce() -> None:
        for _ in range(fit + 2):
            try:
                outbox.put(package)
            except StoreError:
                refused.append(1)
                return
            taken.append(1)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(0.5)
    assert producer.is_alive() and len(taken) == fit - 1  # it writes first, and waits
    assert outbox._bytes + outbox._flying <= OUTBOX_BYTES
    release.set()  # the store refuses that batch, then what the producer writes first
    producer.join(10)
    assert not producer.is_alive() and refused == [1] and len(taken) == fit - 1
    assert len(outbox) == fit and outbox._bytes <= OUTBOX_BYTES  # kept with the rest
    sink.full = False
    outbox.flush()
    assert len(sink.packages) == fit and len(outbox) == 0


def test_a_store_short_of_space_takes_what_fits(sink):
    outbox = _outbox(sink)
    sizes = []

    def write(packages):
        if sizes and sum(sizes) + sum(map(len, packages)) > 3 * WRITE_BYTES:
            raise StoreError("database or disk is full")
        sizes.append(sum(map(len, packages)))
        sink.batches.append(list(packages))

    outbox._write = write
    outbox._packages.extend(bytes(WRITE_BYTES // 4) for _ in range(20))
    with pytest.raises(StoreError):
        outbox.flush()
    assert len(sink.packages) == 12 and len(outbox) == 8  # what fitted, the rest kept


@pytest.mark.timeout(30)
def test_the_thread_tries_again_after_a_refusal(sink):
    outbox = _outbox(sink)
    sink.full = True
    outbox.put(b"x")
    time.sleep(0.2)
    assert sink.packages == [] and len(outbox) == 1
    sink.full = False
    deadline = time.monotonic() + 10
    while not sink.packages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.packages == [b"x"]


def test_packages_put_while_a_batch_is_written_go_next_not_after_a_retry_delay(sink):
    """A package that comes while the thread writes a batch is no refusal: it is written
    right after that batch, far sooner than RETRY_AFTER (a caller killed meanwhile would
    lose it)."""
    writing, release = threading.Event(), threading.Event()

    def slow_write(packages: list[bytes]) -> None:
        if packages == [b"first"]:
            writing.set()
            release.wait(10)
        sink.write(packages)

    outbox = Outbox("test-store", slow_write, lambda: False, sink.written.set)
    outbox.put(b"first")
    assert writing.wait(10)
    outbox.put(b"second")  # arrives while "first" is being written
    put_at = time.monotonic()
    release.set()
    deadline = put_at + 10
    while b"second" not in sink.packages and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sink.packages == [b"first", b"second"]
    assert time.monotonic() - put_at < RETRY_AFTER / 2
    assert outbox.error is None
