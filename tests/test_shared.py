"""``nbqueue.share``: an object stored once, signed, and given to tasks by a handle that
reaches them as the object itself, its arrays memory-mapped read-only from the store's
file; on a real store and real loky clusters."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import nbqueue
from nbqueue import (
    ConfigurationError,
    PackingError,
    Shared,
    SharedObjectMissing,
    async_task,
    result,
    share,
    shared,
)
from nbqueue.disk import shared as store
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(120)
WAIT = 60_000


def _memory_kb(field: str) -> int:
    return fx._memory_kb(field)


def test_an_array_comes_back_memory_mapped_read_only_with_no_copy(store_dir):
    array = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    handle = share(array, name="grid")
    assert isinstance(handle, Shared) and handle.name == "grid"
    assert handle.kind == "numpy.ndarray float32 (1000, 1000)"
    assert os.stat(handle.path).st_mode & 0o777 == 0o600
    store.forget()
    loaded = handle.load()
    assert np.array_equal(loaded, array) and loaded.dtype == np.float32
    assert not loaded.flags.writeable
    assert loaded.ctypes.data % store.ALIGN == 0
    base = loaded
    while not isinstance(base, memoryview):
        base = base.base
    assert type(base.obj).__name__ == "mmap"  # a view of the store's file
    assert handle.load() is loaded  # loaded once in this process
    with pytest.raises(ValueError, match="read-only"):
        loaded[0, 0] = 1


def test_sharing_an_equal_object_again_writes_nothing_and_gives_the_same_handle(store_dir):
    array = np.ones(300_000)
    first = share(array, name="ones")
    written = os.stat(first.path).st_mtime_ns
    again = share(array.copy(), name="ones")
    assert again == first and os.stat(first.path).st_mtime_ns == written
    other = share(array, name="other name")
    changed = share(array * 2, name="ones")
    assert len({first.id, other.id, changed.id}) == 3
    assert [s.id for s in shared("ones")] == [first.id, changed.id]
    assert len(shared()) == 3
    assert share(first) is first


def test_handles_at_any_depth_reach_the_task_as_their_objects(store_dir, cluster):
    table = share({"weights": np.arange(10.0), "note": "kept"}, name="table")
    raw = share(b"abc" * 100_000)
    factor = share({"factor": 3})
    nested = {"rows": [{"table": table}], "raw": raw}
    for sync in (False, True):
        task = async_task(fx.shared_kinds, nested, scale=factor, sync=sync)
        assert result(task, wait=WAIT) == ("dict", 45.0, b"abc", "memoryview", 3)
    # outside a task's arguments a handle stays a handle
    assert pickle.loads(pickle.dumps([table])) == [table]


def test_a_handle_is_valid_in_a_new_process(store_dir):
    handle = share(np.arange(100_000), name="kept across kernels")
    code = (
        f"import nbqueue; nbqueue.configure(directory={store_dir!r}); "
        "h = nbqueue.shared('kept across kernels')[0]; print(h.id, int(h.load().sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [handle.id, str(sum(range(100_000)))]


def test_a_400_mb_array_read_by_1000_tasks_is_written_once_and_mapped_once_per_worker(
    store_dir, cluster
):
    array = np.arange(50_000_000, dtype=np.float64)  # 400 MB
    kernel_before = _memory_kb("RssAnon")
    handle = share(array, name="big")
    assert handle.size >= array.nbytes
    tasks = [async_task(fx.shared_slice, handle, i, 1000) for i in range(1000)]
    outcomes = [result(task, wait=WAIT) for task in tasks]
    assert sum(total for total, *_ in outcomes) == float(array.sum())
    assert not any(writeable for _, writeable, *_ in outcomes)
    assert sorted(os.listdir(os.path.dirname(handle.path))) == [handle.id, handle.id + ".info"]
    per_worker: dict[int, tuple[int, int]] = {}
    for _, _, pid, loads, anon in outcomes:
        first = per_worker.setdefault(pid, (loads, anon))
        per_worker[pid] = (max(first[0], loads), max(first[1], anon))
    assert 1 <= len(per_worker) <= 2
    for loads, anon_kb in per_worker.values():
        assert loads == 1  # read once by each worker
        assert anon_kb < 150 * 1024  # its private memory: far less than the array
    grown_mb = (_memory_kb("RssAnon") - kernel_before) / 1024
    assert grown_mb < 60, f"the kernel's private memory grew by {grown_mb:.0f} MB"


def test_a_deleted_object_fails_every_task_after_it_clearly(store_dir, cluster):
    handle = share(np.arange(1000.0), name="gone soon")
    assert result(async_task(fx.shared_slice, handle, 0, 1), wait=WAIT)[0] == 499500.0
    assert handle.delete() and not handle.delete() and not handle.exists()
    assert shared("gone soon") == []
    for _ in range(4):  # each worker, whether it had loaded it or not
        task = nbqueue.fetch(async_task(fx.shared_slice, handle, 0, 1), wait=WAIT)
        assert task is not None and not task.success
        assert "SharedObjectMissing" in task.result and "gone soon" in task.result
    with pytest.raises(SharedObjectMissing, match="share it again|Share it again"):
        store.forget()
        handle.load()


def test_a_file_changed_or_put_in_another_ones_place_is_refused(store_dir):
    first = share(np.arange(1000.0), name="a")
    second = share(np.arange(2000.0), name="b")
    with open(first.path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"12345678")
    store.forget()
    with pytest.raises(nbqueue.SignatureError, match="refused"):
        first.load()
    os.replace(second.path, first.path)
    with pytest.raises(nbqueue.SignatureError, match="not a whole|another object"):
        first.load()


def test_loaded_objects_beyond_the_memory_limit_go_least_recently_used_first(
    store_dir, monkeypatch
):
    store.forget()
    handles = [share({"n": i, "pad": "x" * 200_000}, name=f"obj{i}") for i in range(4)]
    monkeypatch.setattr(store, "MEMORY", 500_000)
    for handle in handles:
        assert handle.load()["n"] == int(handle.name[3:])
    assert list(store._loaded) == [handles[2].id, handles[3].id]
    handles[2].load()
    assert list(store._loaded) == [handles[3].id, handles[2].id]
    store.forget()


def test_bad_input_is_refused_at_the_call(store_dir):
    with pytest.raises(PackingError, match="cannot be pickled"):
        share(threading.Lock())
    with pytest.raises(ConfigurationError, match="name"):
        share([1], name="")
    with pytest.raises(ConfigurationError, match="name"):
        share([1], name=3)  # type: ignore[arg-type]
