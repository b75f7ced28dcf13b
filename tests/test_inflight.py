"""nbqueue.cluster.inflight: a Job's attempt rules and the table of jobs and chunks in flight.

Real settings (``conf.merged``), real headers, leases and Futures; no cluster.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future

import pytest

from nbqueue import conf
from nbqueue.disk.leases import Lease
from nbqueue.cluster.inflight import InFlight, Job
from nbqueue.disk.records import EMPTY_ARGS, Header, encode_header

KEY = os.urandom(32)


def _settings(max_attempts: int = 3, ack_failures: bool = True) -> conf.Settings:
    return conf.merged(conf.settings(), max_attempts=max_attempts, ack_failures=ack_failures)


def _job(task_id: str = "t1", attempt: int = 1, token: str | None = None,
         **header_fields) -> Job:
    header = Header(task_id, f"name-{task_id}", "math.floor", "math.floor", None, EMPTY_ARGS,
                    **header_fields)
    lease = Lease(token or f"tok-{task_id}", attempt, encode_header(KEY, header))
    return Job(lease, header, header.timeout)


# -- Job -------------------------------------------------------------------------------


def test_attempts_allowed_comes_from_settings_unless_the_header_sets_it():
    assert _job().attempts_allowed(_settings(max_attempts=5)) == 5
    assert _job(max_attempts=1).attempts_allowed(_settings(max_attempts=5)) == 1
    assert _job(max_attempts=7).attempts_allowed(_settings(max_attempts=2)) == 7
    # a header's 0 (unlimited) overrides a limited setting, and the other way round
    assert _job(max_attempts=0).attempts_allowed(_settings(max_attempts=3)) == 0
    assert _job(max_attempts=2).attempts_allowed(_settings(max_attempts=0)) == 2


def test_last_attempt_is_reached_at_the_limit_and_past_it():
    settings = _settings(max_attempts=3)
    assert [_job(attempt=n).last_attempt(settings) for n in (1, 2, 3, 4)] == [
        False, False, True, True]
    assert _job(attempt=1, max_attempts=1).last_attempt(settings)
    assert not _job(attempt=3, max_attempts=4).last_attempt(settings)


def test_unlimited_attempts_never_reach_a_last_one():
    assert not _job(attempt=10_000).last_attempt(_settings(max_attempts=0))
    assert not _job(attempt=10_000, max_attempts=0).last_attempt(_settings(max_attempts=3))


def test_a_success_is_always_final():
    for settings in (_settings(ack_failures=False), _settings(ack_failures=True),
                     _settings(max_attempts=0, ack_failures=False)):
        for ack in (None, True, False):
            assert _job(attempt=1, ack_failure=ack).is_final(True, settings)


def test_a_failure_follows_ack_failures_of_the_settings_when_the_header_leaves_it():
    assert _job(attempt=1).is_final(False, _settings(ack_failures=True))
    assert not _job(attempt=1).is_final(False, _settings(ack_failures=False))


def test_the_header_ack_failure_overrides_the_settings():
    acked = _job(attempt=1, ack_failure=True)
    assert acked.is_final(False, _settings(ack_failures=False))
    retried = _job(attempt=1, ack_failure=False)
    assert not retried.is_final(False, _settings(ack_failures=True))


def test_an_unacknowledged_failure_is_final_on_its_last_attempt_only():
    settings = _settings(max_attempts=3, ack_failures=False)
    assert [_job(attempt=n).is_final(False, settings) for n in (1, 2, 3)] == [
        False, False, True]
    # ack_failure=False with the header's own limit
    assert _job(attempt=2, ack_failure=False, max_attempts=2).is_final(
        False, _settings(ack_failures=True))
    # and never with unlimited attempts
    assert not _job(attempt=50, ack_failure=False).is_final(
        False, _settings(max_attempts=0, ack_failures=True))


# -- InFlight --------------------------------------------------------------------------


def test_add_remove_tokens_and_len():
    table = InFlight()
    a, b, c = _job("a"), _job("b"), _job("c")
    for job in (a, b, c):
        table.add(job)
    assert len(table) == 3 and sorted(table.tokens()) == ["tok-a", "tok-b", "tok-c"]
    table.add(_job("a"))  # the same token again replaces, does not duplicate
    assert len(table) == 3

    table.remove(["tok-b", "never-there"])
    assert len(table) == 2 and sorted(table.tokens()) == ["tok-a", "tok-c"]
    table.remove(job.lease.token for job in (a, c))  # any iterable, a generator too
    assert len(table) == 0 and table.tokens() == []


def test_room_is_set_by_remove_only():
    table = InFlight()
    assert not table.room.is_set()
    table.add(_job("a"))
    table.add_chunk(Future(), [_job("a")])
    assert not table.room.is_set()
    table.remove(["tok-a"])
    assert table.room.is_set()
    table.room.clear()
    table.remove([])  # the feeder is woken even when nothing was left to remove
    assert table.room.is_set()


def test_renewable_leaves_out_the_judged_jobs():
    table = InFlight()
    jobs = [_job(name) for name in "abc"]
    for job in jobs:
        table.add(job)
    assert sorted(table.renewable()) == ["tok-a", "tok-b", "tok-c"]
    jobs[1].judged = True
    assert sorted(table.renewable()) == ["tok-a", "tok-c"]
    assert sorted(table.tokens()) == ["tok-a", "tok-b", "tok-c"]  # still in flight


def test_take_chunk_gives_the_jobs_still_in_the_table_and_the_chunk_leaves():
    table = InFlight()
    jobs = [_job(name) for name in "abc"]
    for job in jobs:
        table.add(job)
    first, second = Future(), Future()
    table.add_chunk(first, jobs[:2])
    table.add_chunk(second, jobs[2:])
    assert table.chunk_count() == 2 and set(table.chunks()) == {first, second}

    table.remove(["tok-a"])  # judged and written already
    assert table.take_chunk(first) == [jobs[1]]
    assert table.chunk_count() == 1 and table.chunks() == [second]
    assert table.take_chunk(first) == []  # taken once
    assert len(table) == 2  # taking a chunk leaves its jobs in the table

    assert table.take_chunk(Future()) == []  # never added
    assert table.take_chunk(second) == [jobs[2]]
    assert table.chunks() == [] and table.chunk_count() == 0


def test_chunks_within_are_the_chunks_all_of_whose_tasks_are_given():
    table = InFlight()
    jobs = {name: _job(name) for name in "abcd"}
    for job in jobs.values():
        table.add(job)
    ab, c, cd = Future(), Future(), Future()
    table.add_chunk(ab, [jobs["a"], jobs["b"]])
    table.add_chunk(c, [jobs["c"]])
    table.add_chunk(cd, [jobs["c"], jobs["d"]])

    assert table.chunks_within(set()) == []
    assert table.chunks_within({"tok-a"}) == []  # half of ab only
    assert table.chunks_within({"tok-c"}) == [c]
    assert set(table.chunks_within({"tok-a", "tok-b", "tok-c"})) == {ab, c}
    assert set(table.chunks_within({"tok-a", "tok-b", "tok-c", "tok-d", "x"})) == {ab, c, cd}


def test_job_of_task_finds_the_job_by_task_id_while_it_is_in_flight():
    table = InFlight()
    a, b = _job("a"), _job("b")
    table.add(a)
    table.add(b)
    assert table.job_of_task("a") is a and table.job_of_task("b") is b
    assert table.job_of_task("tok-a") is None  # by task id, not by token
    b.judged = True
    assert table.job_of_task("b") is b  # judged, still in flight: the monitor skips it
    table.remove(["tok-a"])
    assert table.job_of_task("a") is None


def test_groups_count_the_given_tasks_by_group():
    table = InFlight()
    for name, group in (("a", "g1"), ("b", "g1"), ("c", "g2"), ("d", None), ("e", "g1")):
        table.add(_job(name, group=group))
    assert table.groups({"a", "b", "c", "d"}) == {"g1": 2, "g2": 1}
    assert table.groups({"d"}) == {}  # no group: not counted
    assert table.groups({"e", "nope"}) == {"g1": 1}
    assert table.groups(set()) == {}
    table.remove(["tok-a", "tok-c"])
    assert table.groups({"a", "b", "c", "d", "e"}) == {"g1": 2}


@pytest.mark.timeout(30)
def test_concurrent_adds_and_removes_leave_a_consistent_table():
    """Several threads add and remove their own jobs while others read the table: the
    readers never see a map changing under them, and the end state is exact."""
    table = InFlight()
    threads_n, per_thread = 6, 400
    start = threading.Barrier(threads_n + 2)
    stop_reading = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait(10)
            jobs = [_job(f"w{n}-{i}", group=f"g{n}") for i in range(per_thread)]
            for i, job in enumerate(jobs):
                table.add(job)
                if i % 2:  # every odd job leaves right after it came
                    table.remove([job.lease.token])
            future = Future()
            table.add_chunk(future, jobs)
            assert [j.header.id for j in table.take_chunk(future)] == [
                j.header.id for i, j in enumerate(jobs) if i % 2 == 0]
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def reader() -> None:
        try:
            start.wait(10)
            while not stop_reading.is_set():
                table.tokens()
                table.renewable()
                table.groups({"w0-0", "w1-2"})
                table.job_of_task("w2-4")
                table.chunks_within({"tok-w0-0"})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(n,), daemon=True)
               for n in range(threads_n)]
    readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join(20)
    stop_reading.set()
    for thread in readers:
        thread.join(5)
    assert not any(thread.is_alive() for thread in writers + readers)
    assert errors == []

    expected = {f"tok-w{n}-{i}" for n in range(threads_n) for i in range(0, per_thread, 2)}
    assert len(table) == len(expected) and set(table.tokens()) == expected
    assert table.chunk_count() == 0
    assert table.groups({f"w{n}-{i}" for n in range(threads_n) for i in range(per_thread)}) == {
        f"g{n}": per_thread // 2 for n in range(threads_n)}
    assert table.room.is_set()
