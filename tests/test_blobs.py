"""Large arguments and results as signed files of the store (``nbqueue.blobs``): written
whole, checked before they are unpickled, owned by the record that names them, and
removed when nothing can need them any more."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

import nbqueue
from nbqueue import async_task, blobs, fetch, result
from nbqueue.errors import SignatureError
from nbqueue.store import get_store
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
    blob = blobs.write(str(tmp_path), "value", b"x" * BIG, key)
    assert blob.size == BIG and not os.path.exists(blob.path + ".part")
    assert blobs.read(blob, key) == b"x" * BIG
    with pytest.raises(SignatureError, match="does not match"):
        blobs.read(blob, other)
    with open(blob.path, "r+b") as out:  # one byte changed in the middle
        out.seek(BIG // 2)
        out.write(b"y")
    with pytest.raises(SignatureError):
        blobs.read(blob, key)
    with open(blob.path, "r+b") as out:
        out.truncate(20)
    with pytest.raises(SignatureError, match="no nbqueue header"):
        blobs.read(blob, key)
    blobs.discard(blob)
    assert not os.path.exists(blob.path)
    blobs.discard(blob)  # gone already: nothing to do
    with pytest.raises(FileNotFoundError):
        blobs.read(blob, key)


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
    assert "StoreError" in text and blobs.ARGS_DIR in text and "cannot be read" in text


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
    blob = blobs.write(str(tmp_path), "framed", parts, key)
    assert blob.size == sum(memoryview(p).nbytes for p in parts)
    framed = blobs.read(blob, key)
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
        blobs.read(blob, key)


def test_a_data_frame_is_seen_as_large_and_its_columns_go_out_of_band(tmp_path):
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    frame = pd.DataFrame({"x": np.arange(BIG // 8, dtype=np.float64), "n": 1})
    assert blobs.large_call((frame,), {}) and not blobs.large_call((frame.head(),), {})
    parts = blobs.frames(((frame,), {}))
    assert len(parts[1]) < 10_000 and sum(memoryview(p).nbytes for p in parts[2:]) >= BIG
    blob = blobs.write(str(tmp_path), "frame", parts, b"k" * 32)
    (got,), _ = blobs.loads(blobs.read(blob, b"k" * 32))
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
