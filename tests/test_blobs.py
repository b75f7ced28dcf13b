"""Large arguments and results as signed files of the store (``nbqueue.blobs``): written
whole, checked before they are unpickled, owned by the record that names them, and
removed when nothing can need them any more."""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import subprocess
import threading
import time

import pytest

import nbqueue
from nbqueue import async_task, fetch, fetch_group, result, result_group
from nbqueue.disk import blobs, signing
from nbqueue.errors import SignatureError, StoreFileMissing
from nbqueue.disk.directory import get_store
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

WAIT = 30_000
BIG = blobs.LARGE + 1000


def _files(folder: str) -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                  for name in names if not name.startswith("cache.db"))


def _named(part_dir: str) -> set[str]:
    with sqlite3.connect(os.path.join(part_dir, "cache.db")) as con:
        return {os.path.join(part_dir, row[0]) for row in con.execute(
            "SELECT filename FROM Cache WHERE filename IS NOT NULL")}


def test_a_blob_reads_back_only_whole_and_signed_with_the_store_key(tmp_path):
    key, other = os.urandom(32), os.urandom(32)
    blob = blobs.write(str(tmp_path), "value", b"x" * BIG, key, "t1", blobs.RESULT)
    assert blob.size == BIG and not os.path.exists(blob.path + ".part")
    assert blobs.read(blob, key, "t1", blobs.RESULT) == b"x" * BIG
    with pytest.raises(SignatureError, match="does not match"):
        blobs.read(blob, other, "t1", blobs.RESULT)
    with open(blob.path, "r+b") as out:  # one byte changed in the middle
        out.seek(BIG // 2)
        out.write(b"y")
    with pytest.raises(SignatureError):
        blobs.read(blob, key, "t1", blobs.RESULT)
    with open(blob.path, "r+b") as out:
        out.truncate(20)
    with pytest.raises(SignatureError, match="not a whole nbqueue value: 20 bytes"):
        blobs.read(blob, key, "t1", blobs.RESULT)
    blobs.discard(blob)
    assert not os.path.exists(blob.path)
    blobs.discard(blob)  # gone already: nothing to do
    with pytest.raises(StoreFileMissing, match="the result of task t1 cannot be read"):
        blobs.read(blob, key, "t1", blobs.RESULT)


def test_a_blob_reads_back_only_as_what_it_was_written_for(tmp_path):
    """The signature covers the task and the role: the file of another task, or the
    arguments of this one, are refused as its result."""
    key = os.urandom(32)
    blob = blobs.write(str(tmp_path), "value", b"x" * BIG, key, "t1", blobs.RESULT)
    framed = blobs.write(str(tmp_path), "framed", blobs.frames(b"f" * BIG), key, "t1",
                         blobs.ARGUMENTS)
    for one in (blob, framed):
        for task_id, role in (("t2", blobs.RESULT), ("t2", blobs.ARGUMENTS),
                              ("t1", blobs.RESULT if one is framed else blobs.ARGUMENTS)):
            with pytest.raises(SignatureError, match=f"of task {task_id} .*does not match"):
                blobs.read(one, key, task_id, role)
    assert blobs.read(blob, key, "t1", blobs.RESULT) == b"x" * BIG
    assert blobs.loads(blobs.read(framed, key, "t1", blobs.ARGUMENTS)) == b"f" * BIG


def test_a_file_of_an_earlier_store_is_still_read_bound_to_nothing(tmp_path):
    """Files written before signatures named their task (NBQ4: keyed BLAKE3 of the
    payload alone) are read as they are: nothing binds them to their task."""
    from blake3 import blake3
    key = os.urandom(32)
    payload = pickle.dumps(((b"o" * BIG,), {}), protocol=5)
    subkey = blake3(key, derive_key_context="nbqueue 2026-12-05 MAC of large values").digest()
    path = str(tmp_path / "old")
    with open(path, "wb") as out:
        out.write(signing.MAGIC_UNBOUND_FAST + blake3(payload, key=subkey).digest() + payload)
    blob = blobs.Blob(path, len(payload))
    assert blobs.read(blob, key, "any-task", blobs.ARGUMENTS) == payload
    with open(path, "r+b") as out:
        out.seek(-1, os.SEEK_END)
        out.write(b"!")
    with pytest.raises(SignatureError, match="does not match"):
        blobs.read(blob, key, "any-task", blobs.ARGUMENTS)


def test_large_arguments_go_to_a_file_that_the_record_keeps(cluster, store_dir):
    data = bytes(range(256)) * (BIG // 256 + 1)
    task_id = async_task(fx.length, data, tag="kw")
    assert result(task_id, wait=WAIT) == len(data)
    task = fetch(task_id)
    assert task.args == (data,) and task.kwargs == {"tag": "kw"}
    # the caller's file is gone once the task succeeded; the record's row owns a link
    wait_for(lambda: not _files(os.path.join(store_dir, blobs.ARGS_DIR)), 5, "arguments gone")
    results = os.path.join(store_dir, "results")
    owned = _named(results)
    assert len(owned) == 1 and os.path.getsize(owned.pop()) > len(data)
    get_store(store_dir).saved.delete(task_id)
    assert _files(results) == []


def test_a_large_result_is_the_file_its_worker_wrote(cluster, store_dir):
    task_id = async_task(fx.sized_result, 2, 7)
    assert result(task_id, wait=WAIT) == bytes([7]) * (2 * 1024 * 1024)
    assert os.listdir(os.path.join(store_dir, "spill")) == []  # moved, not copied
    results = os.path.join(store_dir, "results")
    assert _named(results) == set(_files(results))
    get_store(store_dir).saved.delete(task_id)
    assert _files(results) == []


def test_a_tampered_result_file_is_never_unpickled(cluster, store_dir):
    task_id = async_task(fx.sized_result, 2, 1)
    assert result(task_id, wait=WAIT) is not None
    (path,) = _named(os.path.join(store_dir, "results"))
    with open(path, "r+b") as out:
        out.seek(-10, os.SEEK_END)
        out.write(b"0123456789")
    with pytest.raises(SignatureError, match="failed its signature check"):
        get_store(store_dir).saved.get(task_id)


def test_a_failure_keeps_its_large_arguments_for_retry(store_dir):
    data = b"z" * BIG
    flag = os.path.join(store_dir, "..", "fixed")
    with nbqueue.Cluster(workers=1, max_attempts=1) as running:
        task_id = async_task(fx.fails_until, flag, data)
        wait_for(lambda: running.failed == 1, 20, "a failure")
        args_dir = os.path.join(store_dir, blobs.ARGS_DIR)
        assert len(_files(args_dir)) == 1  # for nbqueue.retry
        open(flag, "w").close()
        assert nbqueue.retry(task_id)
        wait_for(lambda: running.done == 1, 20, "a success")
        assert result(task_id, wait=WAIT) == len(data)
        wait_for(lambda: not _files(args_dir), 5, "arguments gone")
        assert fetch(task_id).args == (flag, data)


def test_an_unsaved_large_result_still_reaches_its_hook_and_leaves_no_file(store_dir):
    seen = []
    with nbqueue.Cluster(workers=1):
        async_task(fx.sized_result, 2, 3, save=False, hook=lambda task: seen.append(
            (len(task.result), task.args)))
        wait_for(lambda: seen, 20, "the hook")
    assert seen == [(2 * 1024 * 1024, (2, 3))]
    assert os.listdir(os.path.join(store_dir, "spill")) == []
    assert _files(os.path.join(store_dir, "results")) == []


def test_large_arguments_of_a_sync_task_stay_in_memory(store_dir):
    data = b"s" * BIG
    task_id = async_task(fx.length, data, sync=True)
    assert result(task_id) == len(data)
    assert not os.path.exists(os.path.join(store_dir, blobs.ARGS_DIR))


def test_a_worker_says_which_argument_file_it_could_not_read(cluster, store_dir):
    data = b"q" * BIG
    # the file goes before the cluster gets to the task: its failure names the file
    cluster.stop(wait=5)
    with pytest.warns(nbqueue.NoClusterWarning):
        task_id = async_task(fx.length, data)
    nbqueue.flush()
    for path in _files(os.path.join(store_dir, blobs.ARGS_DIR)):
        os.unlink(path)
    with nbqueue.Cluster(workers=1, max_attempts=1):
        text = str(result(task_id, wait=WAIT))
    assert "StoreFileMissing" in text and blobs.ARGS_DIR in text and "cannot be read" in text
    assert f"the arguments of task {task_id}" in text


def test_frames_keep_large_buffers_out_of_the_pickle_stream(tmp_path):
    np = pytest.importorskip("numpy")
    key = os.urandom(32)
    array = np.arange(BIG // 8, dtype=np.float64)
    data = b"b" * BIG
    value = ((array, data, 3), {"small": b"s", "big": bytearray(data)})
    assert blobs.large(value) and not blobs.large(((b"s" * 1000, 3), {}))
    assert blobs.large_call(*value) and not blobs.large_call((1, "x", b"s"), {"n": 2.0})
    half = b"h" * (blobs.LARGE // 2 + 1)
    assert blobs.large_call(([half, half],), {}) and blobs.large_call((half,), {"k": half})
    parts = blobs.frames(value)
    assert len(parts[1]) < 1000  # the stream: the buffers are parts of their own
    blob = blobs.write(str(tmp_path), "framed", parts, key, "t1", blobs.RESULT)
    assert blob.size == sum(memoryview(p).nbytes for p in parts)
    framed = blobs.read(blob, key, "t1", blobs.RESULT)
    assert type(framed) is blobs.Frames
    (got_array, got_data, three), kwargs = blobs.loads(framed)
    assert (got_array == array).all() and got_array.flags.writeable
    assert type(got_data) is bytes and got_data == data and three == 3
    assert kwargs == {"small": b"s", "big": bytearray(data)}
    assert type(kwargs["big"]) is bytearray
    with open(blob.path, "r+b") as out:
        out.seek(-1, os.SEEK_END)
        out.write(b"!")
    with pytest.raises(SignatureError):
        blobs.read(blob, key, "t1", blobs.RESULT)
    # lengths read from the file are checked against its size before any is allocated
    with open(blob.path, "r+b") as out:
        out.seek(signing.HEADER_SIZE + 4)
        out.write(struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(SignatureError, match="frame count"):
        blobs.read(blob, key, "t1", blobs.RESULT)
    with open(blob.path, "r+b") as out:
        out.seek(signing.HEADER_SIZE + 4)
        out.write(struct.pack("<I", len(parts) - 2))
        out.seek(signing.HEADER_SIZE + 8)
        out.write(struct.pack("<Q", 1 << 62))
    with pytest.raises(SignatureError, match="frame lengths"):
        blobs.read(blob, key, "t1", blobs.RESULT)


def test_a_data_frame_is_seen_as_large_and_its_columns_go_out_of_band(tmp_path):
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = pd.DataFrame({"x": np.arange(BIG // 8, dtype=np.float64), "n": 1})
    assert blobs.large_call((frame,), {}) and not blobs.large_call((frame.head(),), {})
    parts = blobs.frames(((frame,), {}))
    assert len(parts[1]) < 10_000 and sum(memoryview(p).nbytes for p in parts[2:]) >= BIG
    blob = blobs.write(str(tmp_path), "frame", parts, b"k" * 32, "t1", blobs.ARGUMENTS)
    (got,), _ = blobs.loads(blobs.read(blob, b"k" * 32, "t1", blobs.ARGUMENTS))
    assert got.equals(frame)


def test_numpy_arrays_travel_both_ways_as_files(cluster, store_dir):
    np = pytest.importorskip("numpy")
    array = np.arange(BIG // 8, dtype=np.float64)
    task_id = async_task(fx.doubled_in_place, array)
    doubled = result(task_id, wait=WAIT)
    assert type(doubled) is np.ndarray and (doubled == array * 2).all()
    assert (fetch(task_id).args[0] == array).all()


def test_argument_files_no_task_can_need_are_swept_when_a_cluster_starts(store_dir):
    """Old files that no record links and whose task is not in the queue go (a caller
    killed before its task reached the queue); young ones, linked ones and those of
    queued tasks stay."""
    key = nbqueue.get_broker().key
    old = time.time() - 2 * blobs.ORPHAN_AGE

    def aged(blob):
        os.utime(blob.path, (old, old))
        return blob.path

    orphan = aged(blobs.arguments(store_dir, "no-such-task", b"o" * BIG, key))
    young = blobs.arguments(store_dir, "another-task", b"y" * BIG, key).path
    linked = aged(blobs.arguments(store_dir, "kept-by-a-record", b"l" * BIG, key))
    os.link(linked, os.path.join(store_dir, "record-link"))
    with pytest.warns(nbqueue.NoClusterWarning):
        task_id = async_task(fx.length, b"q" * BIG)
    nbqueue.flush()
    (queued,) = [p for p in _files(os.path.join(store_dir, blobs.ARGS_DIR))
                 if os.path.basename(p).startswith(task_id)]
    aged(blobs.Blob(queued, 0))
    with nbqueue.Cluster(workers=1):
        assert result(task_id, wait=WAIT) == BIG
    assert not os.path.exists(orphan)
    assert os.path.exists(young) and os.path.exists(linked)
    aged(blobs.Blob(young, 0))
    assert blobs.sweep_arguments(store_dir, lambda ids: set(ids)) == 0  # its task is held
    assert os.path.exists(young)
    assert blobs.sweep_arguments(store_dir, lambda ids: set()) == 1
    assert not os.path.exists(young) and os.path.exists(linked)


@pytest.mark.timeout(120)
def test_retries_beside_a_sweep_in_a_loop_never_lose_an_argument_file(store_dir):
    """A cluster's start-up sweep, run in a loop, beside retries of failures whose argument
    files are old: no instant of a retry leaves a file some task needs unnamed (its
    failure removed, its new delivery not yet queued), so every retry runs, none saying
    its arguments cannot be read."""
    flag = os.path.join(store_dir, "..", "fixed")
    broker = nbqueue.get_broker()
    old = time.time() - 2 * blobs.ORPHAN_AGE
    with nbqueue.Cluster(workers=2, max_attempts=1) as running:
        ids = [async_task(fx.fails_until, flag, bytes([n]) * BIG, group="again")
               for n in range(30)]
        wait_for(lambda: running.failed == 30, 60, "30 failures")
        args_dir = os.path.join(store_dir, blobs.ARGS_DIR)
        for path in _files(args_dir):
            os.utime(path, (old, old))
        open(flag, "w").close()
        stop, swept = threading.Event(), []

        def sweep() -> None:
            while not stop.is_set():
                swept.append(blobs.sweep_arguments(store_dir, broker.holds))

        sweeper = threading.Thread(target=sweep)
        sweeper.start()
        try:
            for task_id in ids:
                assert nbqueue.retry(task_id)
            outcomes = [fetch(task_id, wait=WAIT) for task_id in ids]
        finally:
            stop.set()
            sweeper.join(10)
    assert len(swept) > 30 and sum(swept) == 0
    assert [t.result for t in outcomes] == [BIG] * 30, [
        t.result for t in outcomes if not t.success][:1]
    assert not [p for p in _files(args_dir) if blobs.PIN in p]  # pins are gone


# -- files swapped, replaced or deleted inside the store: each refused, naming its task --

MIB2 = 2 * 1024 * 1024


def _row_file(part_dir: str, task_id: str) -> str:
    """The value file of a task's record row."""
    with sqlite3.connect(os.path.join(part_dir, "cache.db")) as con:
        (name,) = con.execute("SELECT filename FROM Cache WHERE key = ?",
                              (task_id,)).fetchone()
    return os.path.join(part_dir, name)


def _swap(a: str, b: str) -> None:
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)


def _argument_file(store_dir: str, task_id: str) -> str:
    (path,) = [p for p in _files(os.path.join(store_dir, blobs.ARGS_DIR))
               if os.path.basename(p).startswith(task_id)]
    return path


@pytest.mark.timeout(90)
def test_argument_files_swapped_or_replaced_fail_their_tasks_never_run_on_other_data(
        store_dir, tmp_path):
    """Two tasks' argument files swapped in the store (same size: only the signature
    tells them apart), and others replaced by a FIFO and by a link to /dev/zero: every
    task fails at once with a SignatureError naming it, none runs."""
    runs = str(tmp_path / "runs")
    with pytest.warns(nbqueue.NoClusterWarning):
        ids = [async_task(fx.log_run, runs, 0.0, bytes([i]) * BIG, group="swapped")
               for i in range(4)]
    nbqueue.flush()
    files = [_argument_file(store_dir, task_id) for task_id in ids]
    _swap(files[0], files[1])
    os.unlink(files[2])
    os.mkfifo(files[2])
    os.unlink(files[3])
    os.symlink("/dev/zero", files[3])
    with nbqueue.Cluster(workers=2, max_attempts=1):
        tasks = fetch_group("swapped", count=4, wait=WAIT)
    assert not os.path.exists(runs)  # not one run of the function
    assert sorted(task.id for task in tasks) == sorted(ids)
    for task in tasks:
        text = str(task.result)
        assert not task.success and "SignatureError" in text, text
        assert f"the arguments of task {task.id} " in text, text
    why = {task.id: str(task.result) for task in tasks}
    assert "does not match" in why[ids[0]] and "does not match" in why[ids[1]]
    assert "FIFO" in why[ids[2]] and "symbolic link" in why[ids[3]]


def test_result_files_swapped_read_as_neither_task(cluster, store_dir):
    first = async_task(fx.sized_result, 2, 1, group="pair")
    second = async_task(fx.sized_result, 2, 2, group="pair")
    assert result_group("pair", count=2, wait=WAIT) is not None
    results = os.path.join(store_dir, "results")
    _swap(_row_file(results, first), _row_file(results, second))
    for task_id in (first, second):
        with pytest.raises(SignatureError, match=f"the result of task {task_id} .*does not "
                                                 "match"):
            result(task_id)
    with pytest.raises(SignatureError, match="the result of task"):
        result_group("pair")


def _tamper_frame_length(path: str) -> None:
    """Set the length of the last frame of a framed result file to 2**62 bytes."""
    with open(path, "r+b") as out:
        out.seek(signing.HEADER_SIZE + 4)
        (count,) = struct.unpack("<I", out.read(4))
        out.seek(signing.HEADER_SIZE + 8 + (count - 1) * 9)
        out.write(struct.pack("<Q", 1 << 62))


@pytest.mark.timeout(90)
def test_result_files_tampered_or_replaced_are_refused_at_once(cluster, store_dir):
    """A tampered frame length, /dev/zero (a link to it, and bound onto the file), and a
    FIFO in the place of result files: result() and result_group() raise a
    SignatureError naming the task at once (no MemoryError, no endless read, no hang)."""
    ids = [async_task(fx.sized_result, 2, i, group="bad") for i in range(4)]
    assert len(result_group("bad", count=4, wait=WAIT)) == 4
    results = os.path.join(store_dir, "results")
    paths = [_row_file(results, task_id) for task_id in ids]
    _tamper_frame_length(paths[0])
    os.unlink(paths[1])
    os.symlink("/dev/zero", paths[1])
    os.unlink(paths[2])
    os.mkfifo(paths[2])
    zero = subprocess.run(["mount", "--bind", "/dev/zero", paths[3]], capture_output=True,
                          text=True)
    assert zero.returncode == 0, zero.stderr  # the test runs as root
    try:
        why = {ids[0]: "frame lengths do not add up", ids[1]: "symbolic link",
               ids[2]: "not a regular file but a FIFO",
               ids[3]: "not a regular file but a character device"}
        for task_id, reason in why.items():
            start = time.monotonic()
            with pytest.raises(SignatureError, match=f"the result of task {task_id} .*{reason}"):
                result(task_id)
            with pytest.raises(SignatureError, match=reason):
                fetch(task_id)
            assert time.monotonic() - start < 2
        start = time.monotonic()
        with pytest.raises(SignatureError, match="the result of task"):
            result_group("bad")
        with pytest.raises(SignatureError, match="the result of task"):
            result_group("bad", count=4, wait=1000)
        assert time.monotonic() - start < 2
    finally:
        subprocess.run(["umount", paths[3]], check=True)


def test_a_deleted_result_file_is_a_store_error_naming_its_task_not_no_result(
        cluster, store_dir):
    task_id = async_task(fx.sized_result, 2, 9, group="deleted")
    assert result(task_id, wait=WAIT) == bytes([9]) * MIB2
    os.unlink(_row_file(os.path.join(store_dir, "results"), task_id))
    for read in (lambda: result(task_id), lambda: fetch(task_id, wait=100),
                 lambda: result_group("deleted"), lambda: fetch_group("deleted")):
        with pytest.raises(StoreFileMissing, match=f"the result of task {task_id} cannot be "
                                                   "read: its file was deleted"):
            read()
    # the way out: delete it (here with its group), and send it again
    assert nbqueue.delete_group("deleted", tasks=True) == 1
    assert fetch(task_id) is None and result_group("deleted") is None
    again = async_task(fx.sized_result, 2, 9)
    assert result(again, wait=WAIT) == bytes([9]) * MIB2
    os.unlink(_row_file(os.path.join(store_dir, "results"), again))
    assert get_store(store_dir).saved.delete(again) and fetch(again) is None
