"""nbqueue.disk.search: finding tasks in a real queue, and the broker's part that does it
(``Finding``, ``broker.search``), with the cancel requests it keeps."""

from __future__ import annotations

import threading

import pytest

from nbqueue import async_task
from nbqueue.disk.search import Finding
from tests.test_broker import _no_writer_thread

pytestmark = pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")


def _everything(header) -> bool:
    return True


def test_the_broker_holds_its_finding_part(broker):
    assert isinstance(broker.search, Finding) and broker.search.key == broker.key


def test_holds_reads_a_snapshot_at_most_max_age_old_and_purge_forgets_it(broker):
    first = async_task("math.floor", 1.5)  # in the outbox: holds writes it first
    assert broker.search.holds([first, "other"]) == {first}
    second = async_task("math.floor", 2.5)
    assert broker.search.holds([first, second], max_age=60) == {first}  # the snapshot
    assert broker.search.holds([first, second]) == {first, second}  # a new one
    assert broker.purge() == 2
    third = async_task("math.floor", 3.5)
    assert broker.search.holds([first, second, third], max_age=60) == {third}


def test_cancel_takes_queued_tasks_out_and_requests_the_leased_ones(broker):
    leased = async_task("math.floor", 1.5, group="g")
    (lease,) = broker.lease("w", 1, 30)
    queued = async_task("math.floor", 2.5, group="g")
    broker.flush()
    woken = threading.Event()
    broker.search.watch_cancels(woken)
    count = broker.search.cancel_count()
    removed, running = broker.search.cancel(lambda header: header.group == "g")
    assert [header.id for header, _, _ in removed] == [queued]
    assert [header.id for header in running] == [leased]
    assert set(broker.search.cancel_requests()) == {leased}
    assert broker.search.cancel_count() > count and broker.pending() == 0
    assert not woken.is_set()
    broker.search.notify_cancels()
    assert woken.is_set()
    broker.search.unwatch_cancels(woken)
    broker.search.forget_cancels([leased])
    assert broker.search.cancel_requests() == {}
    broker.ack([lease.token])


def test_cancel_finds_a_task_whose_lease_is_still_in_memory(broker):
    with _no_writer_thread(broker):  # nothing written behind: only cancel writes it
        task_id = async_task("math.floor", 1.5)
        (lease,) = broker.lease("w", 1, 30)
        removed, running = broker.search.cancel(_everything)
        assert removed == [] and [header.id for header in running] == [task_id]
    broker.ack([lease.token])


def test_locate_and_running_find_a_task_queued_then_leased(broker):
    task_id = async_task("math.floor", 1.5, group="g")
    where, header, attempt = broker.search.locate(lambda h: h.id == task_id, [task_id.encode()])
    assert (where, header.id, attempt) == ("queued", task_id, 0)
    assert broker.search.running(_everything) == []
    (lease,) = broker.lease("w", 1, 30)
    where, header, attempt = broker.search.locate(lambda h: h.id == task_id)
    assert (where, header.id, attempt) == ("running", task_id, 1)
    assert [(h.id, n) for h, n in broker.search.running(_everything)] == [(task_id, 1)]
    broker.ack([lease.token])
    assert broker.search.locate(_everything) is None
