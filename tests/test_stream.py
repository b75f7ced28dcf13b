"""nbqueue.stream: outcomes sent by worker processes as tasks end, read by the cluster.

Real sockets in a private temp directory and real worker-like processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nbqueue.disk.records import Outcome
from nbqueue.disk.signing import sign
from nbqueue.worker.stream import SOCKET, STREAM_DELAY, Collector, Sender, _LENGTH

from tests.waiting import wait_for

KEY = os.urandom(32)


@pytest.fixture
def collector(tmp_path):
    got: list[Outcome] = []
    found = Collector(str(tmp_path), KEY, got.extend)
    found.got = got  # type: ignore[attr-defined]
    thread = threading.Thread(target=found.run, daemon=True)
    thread.start()
    yield found
    found.close()
    thread.join(5)
    assert not thread.is_alive() and not os.path.exists(found.path)


def _outcome(task_id: str) -> Outcome:
    return Outcome(task_id, True, b"result", 1.0, 2.0)


@pytest.mark.timeout(30)
def test_an_outcome_is_sent_within_the_delay_and_the_chunk_names_it(collector, tmp_path):
    sender = Sender(collector.path, KEY)
    start = time.monotonic()
    sender.add(_outcome("a"))
    wait_for(lambda: collector.got, 5, "the streamed outcome")
    assert time.monotonic() - start < STREAM_DELAY + 1.0
    assert collector.got == [_outcome("a")]
    sender.add(_outcome("b"))  # the chunk ends before the delay: b goes with it
    assert sender.end_chunk([_outcome("a"), _outcome("b")]) == ["a", _outcome("b")]
    time.sleep(STREAM_DELAY * 3)
    assert collector.got == [_outcome("a")]  # b was not sent twice


@pytest.mark.timeout(30)
def test_fast_outcomes_travel_together(collector):
    sender = Sender(collector.path, KEY)
    for name in "abcde":
        sender.add(_outcome(name))
    wait_for(lambda: len(collector.got) == 5, 5, "five outcomes")
    assert [o.id for o in collector.got] == list("abcde")


@pytest.mark.timeout(30)
def test_a_message_with_a_bad_signature_is_refused(collector, caplog):
    sender = Sender(collector.path, os.urandom(32))  # signs with another key
    sender.add(_outcome("forged"))
    wait_for(lambda: any("refused a message" in r.getMessage() for r in caplog.records), 5,
             "the refusal")
    assert collector.got == []


@pytest.mark.timeout(30)
def test_drain_reads_a_dead_workers_connection_to_its_end(collector):
    code = ("import os, socket, sys, time\n"
            "from nbqueue.disk.records import Outcome\n"
            "from nbqueue.worker.stream import _frame\n"
            "key = bytes.fromhex(sys.argv[2])\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.connect(sys.argv[1])\n"
            "s.sendall(_frame(key, [Outcome('sent', True, b'x' * 300_000, 1.0, 2.0)]))\n"
            "s.sendall(b'\\x00\\x10\\x00\\x00partial')\n"  # a message cut by the kill
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    worker = subprocess.Popen([sys.executable, "-c", code, collector.path, KEY.hex()],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "ready"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        collector.drain({worker.pid}, timeout=5)
        assert [o.id for o in collector.got] == ["sent"]
        assert len(collector.got[0].result) == 300_000
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def test_the_frame_is_a_length_and_a_signed_payload():
    from nbqueue.worker.stream import _frame
    frame = _frame(KEY, [_outcome("a")])
    (size,) = _LENGTH.unpack_from(frame)
    assert size == len(frame) - _LENGTH.size
    assert frame[_LENGTH.size:_LENGTH.size + 4] == sign(KEY, b"")[:4]  # nbqueue's magic


@pytest.mark.timeout(30)
def test_without_a_cluster_a_sender_cannot_be_made(tmp_path):
    with pytest.raises(OSError):
        Sender(str(tmp_path / SOCKET), KEY)
