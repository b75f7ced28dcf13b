"""nbqueue.storage: the contract between nbqueue and diskcache, tested against
diskcache's own public API on a real store in a temp directory."""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
import time

import diskcache
import pytest

from nbqueue.disk import signing
from nbqueue.disk import storage
from nbqueue.errors import SignatureError, StoreError, StoreFileMissing


@pytest.fixture
def part(tmp_path):
    """One part of a store (its key beside it), opened as nbqueue opens it."""
    signing.private_directory(tmp_path / "store")
    cache = storage.open_cache(str(tmp_path / "store" / "results"))
    yield cache
    cache.close()


def test_upsert_writes_what_get_reads_and_read_many_reads_what_set_writes(part):
    rows = [(f"k{i}", {"n": i}) for i in range(50)] + [("big", b"z" * 100_000)]
    with part.transact():
        storage.upsert(part, rows)
    assert all(part.get(key) == value for key, value in rows)
    part.set("set-small", [1, 2])
    part.set("set-big", b"w" * 100_000)
    assert storage.read_many(part, ["set-small", "set-big", "nope"]) == {
        "set-small": [1, 2], "set-big": b"w" * 100_000}


def test_counts_sizes_and_counters_stay_right(part):
    with part.transact():
        storage.upsert(part, [("a", "x" * 10), ("b", b"y" * 100_000)])
        storage.upsert(part, [("a", "again"), ("b", b"y" * 50_000)])  # updated in place
    assert len(part) == 2 and part.volume() > 50_000
    part.incr("counter", 5)
    part.incr("counter", 2)
    assert part.get("counter") == 7  # integers stay plain: diskcache adds to them in SQL
    assert part.check() == []  # diskcache's own consistency check


def test_replacing_a_large_value_orphans_no_file(part):
    def files():
        return sorted(os.path.join(root, name) for root, _, names in os.walk(part.directory)
                      for name in names if name.endswith(".val"))
    with part.transact():
        storage.upsert(part, [("big", b"1" * 100_000)])
    first = files()
    part.set("big", b"2" * 100_000)
    with part.transact():
        storage.upsert(part, [("big", b"3" * 100_000)])
    assert len(files()) == 1 and files() != first and part.get("big") == b"3" * 100_000
    part.delete("big")
    assert files() == []


def test_a_value_written_without_the_key_is_refused_unread(part, tmp_path):
    plain = diskcache.Cache(part.directory)
    marker = tmp_path / "ran"
    plain.set("pickled", _Evil(str(marker)))
    plain.set("raw-bytes", pickle.dumps(_Evil(str(marker))))
    plain.set("text", "hello")
    for key in ("pickled", "raw-bytes", "text"):
        with pytest.raises(SignatureError):
            part.get(key)
    assert storage.checked_get(part, "pickled", "default", "a test row") == "default"
    assert not marker.exists()
    plain.close()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_read_many_reads_what_cache_get_reads(tmp_path):
    cache = storage.open_cache(str(tmp_path / "c"), expiring=True)
    try:
        big = b"y" * 100_000  # in a file of its own
        cache.set("small", {"a": 1})
        cache.set("big", big)
        cache.set("text", "hello")
        cache.set("gone", 1, expire=0.01)
        time.sleep(0.05)
        keys = ["small", "big", "text", "gone", "missing"] + [f"k{i}" for i in range(1200)]
        found = storage.read_many(cache, keys)
        assert found == {"small": {"a": 1}, "big": big, "text": "hello"}
    finally:
        cache.close()


def _value_file(cache, key):
    with sqlite3.connect(os.path.join(cache.directory, "cache.db")) as con:
        (name,) = con.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    return os.path.join(cache.directory, name)


def test_value_files_swapped_are_refused_not_read_as_each_other(part):
    """A large value's file is signed for its own name: two rows' files swapped on disk
    read as neither row's value."""
    part.set("a", {"id": "a", "result": b"a" * 100_000})
    part.set("b", {"id": "b", "result": b"b" * 100_000})
    a, b = _value_file(part, "a"), _value_file(part, "b")
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)
    for key in ("a", "b"):
        with pytest.raises(SignatureError, match="failed its signature check"):
            part.get(key)
        with pytest.raises(SignatureError, match="failed its signature check"):
            storage.read_many(part, [key])


@pytest.mark.timeout(20)
def test_only_a_regular_file_is_read_as_a_value_file(part):
    """A FIFO (whose open waits for a writer), /dev/zero (endless) or a symbolic link in
    the place of a value file is refused at once, unread."""
    part.set("v", b"v" * 100_000)
    path = _value_file(part, "v")
    for kind, make in (("FIFO", os.mkfifo),
                       ("symbolic link", lambda p: os.symlink("/dev/zero", p))):
        os.unlink(path)
        make(path)
        start = time.monotonic()
        with pytest.raises(SignatureError, match=kind):
            part.get("v")
        with pytest.raises(SignatureError, match=kind):
            storage.read_many(part, ["v"])
        assert time.monotonic() - start < 2


def test_a_value_file_deleted_under_its_row_is_an_error_not_no_value(part):
    """``Cache.get`` reads a missing file as no row (a row deleted meanwhile); nbqueue's
    reads see the row still names it, and say so."""
    part.set("v", b"v" * 100_000)
    path = _value_file(part, "v")
    os.unlink(path)
    with pytest.raises(StoreFileMissing, match="'v' in the store at .*was deleted"):
        storage.read_many(part, ["v"])
    assert part.get("v") is None  # diskcache's own reading, unchanged
    part.set("v", b"w" * 100_000)  # replaced: read as it is now
    assert storage.read_many(part, ["v"]) == {"v": b"w" * 100_000}
    part.delete("v")
    assert storage.read_many(part, ["v"]) == {}


@pytest.mark.timeout(60)
def test_a_value_replaced_while_it_is_read_is_read_again_not_an_error(part):
    """A writer in another process replaces a large value over and over (each write
    removes the file it replaced): a reader whose row named the old file reads the new
    one; never a StoreFileMissing, never a value that was not written."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from nbqueue.disk import storage\n"
            f"cache = storage.open_cache({part.directory!r})\n"
            "print('ready', flush=True)\n"
            "for i in range(400):\n"
            "    cache.set('v', bytes([i % 256]) * 100_000)\n"
            "    if i % 2:\n"
            "        with cache.transact():\n"
            "            storage.upsert(cache, [('v', bytes([i % 256]) * 100_000)])\n")
    part.set("v", bytes(100_000))
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        reads = 0
        while writer.poll() is None:
            value = storage.read_many(part, ["v"])["v"]
            assert value == value[:1] * 100_000
            reads += 1
        assert writer.returncode == 0 and reads > 10
    finally:
        writer.kill()
        writer.wait(timeout=10)


# -- store errors name their cause ------------------------------------------------------


def _sqlite_error(db, *statements):
    """The error real SQLite statements raise."""
    con = sqlite3.connect(db)
    try:
        for statement in statements:
            con.execute(statement)
        con.commit()
    except sqlite3.Error as exc:
        return exc
    finally:
        con.close()
    raise AssertionError(f"{statements!r} did not fail")


def test_store_errors_say_read_only_full_damaged_or_what_happened(tmp_path):
    part = tmp_path / "store" / "queue"
    part.mkdir(parents=True)
    db = str(part / "cache.db")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x BLOB)")
    con.commit()
    con.close()
    store = str(tmp_path / "store")

    read_only = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        with pytest.raises(StoreError) as info:
            with storage.writing(str(part)):
                read_only.execute("INSERT INTO t VALUES (1)")
    finally:
        read_only.close()
    message = str(info.value)
    assert message.startswith(f"cannot write to the store at {part}: attempt to write")
    assert f"{store} is read-only for this process" in message
    assert f"chmod -R u+w {store}" in message and "configure(directory=" in message
    assert "full" not in message and "damaged" not in message

    # a database that may not grow stands for a full disk: SQLite says the same
    full = _sqlite_error(db, "PRAGMA max_page_count = 3", "INSERT INTO t VALUES (zeroblob(1e6))")
    assert str(full) == "database or disk is full"
    for exc in (full, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))):
        advice = storage.store_advice(exc, str(part))
        assert advice == f"The disk of {store} is full: free space and try again"

    for exc in (OSError(errno.EROFS, os.strerror(errno.EROFS)),
                PermissionError(errno.EACCES, os.strerror(errno.EACCES))):
        assert "is read-only for this process" in storage.store_advice(exc, str(part))

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as info:
        storage.open_cache(str(damaged))
    message = str(info.value)
    assert message.startswith(f"cannot open the store at {damaged}: file is not a database")
    assert f"damaged: move {tmp_path} away" in message and "read-only" not in message

    other = _sqlite_error(db, "INSERT INTO missing VALUES (1)")  # neither of the above
    advice = storage.store_advice(other, str(part))
    assert advice == f"Check that {store} is on a working disk that this process may write to"


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_every_file_and_folder_of_a_used_store_is_private(store_dir, umask):
    """Whatever the umask, the store makes every folder 0700 and every file 0600: SQLite's
    database and its -wal and -shm files, value files and their folders, argument and
    result files, the key, the clusters' doorbell sockets."""
    import stat

    import nbqueue
    from nbqueue import Cluster, async_task, result
    from tests import tasks_fixtures as fx

    before = os.umask(umask)
    try:
        with Cluster(workers=2, directory=store_dir):  # its doorbell: a socket in bells/
            tasks = [async_task(fx.add, 1), async_task(fx.add, 2, cached=True),
                     async_task(fx.length, b"a" * (2 << 20)),  # arguments: a file
                     async_task(fx.sized_result, 2),  # a result: a spill file, moved
                     async_task(fx.echo, b"m" * 100_000),  # a value file of diskcache's
                     async_task(fx.fails_until, "/nonexistent", b"f" * (2 << 20))]  # kept
            for task in tasks:
                result(task, wait=60_000, cached=task == tasks[1])
            nbqueue.flush()
            found: dict[str, int] = {}
            for root, dirs, files in os.walk(store_dir):
                for name in [root] + [os.path.join(root, f) for f in files]:
                    try:
                        found[os.path.relpath(name, store_dir)] = os.lstat(name).st_mode
                    except FileNotFoundError:  # a lease's value ended as the walk went
                        continue
    finally:
        os.umask(before)
    wrong = {name: stat.filemode(mode) for name, mode in found.items()
             if stat.S_IMODE(mode) != (0o700 if stat.S_ISDIR(mode) else 0o600)}
    assert wrong == {}
    assert any(stat.S_ISSOCK(mode) for name, mode in found.items() if name.startswith("bells"))
    for part in ("queue", "results", "cache", "state"):
        assert {f"{part}/cache.db", f"{part}/cache.db-wal", f"{part}/cache.db-shm"} <= set(found)
    assert any(name.endswith(".val") for name in found)  # diskcache's value files
    assert any(name.startswith("blobs/") for name in found if name != "blobs")
    assert {"key", "spill"} <= set(found)


def test_no_connection_is_opened_in_a_directory_put_in_the_stores_place(part, tmp_path):
    """SQLite opens by path: a thread's first use of a part (its own connection) checks
    the store directory first, and creates nothing in one that took its place. A thread
    connected before goes on with the store it opened."""
    import threading

    from nbqueue.errors import StoreGone
    part.set("before", 1)
    store = str(tmp_path / "store")
    os.rename(store, store + ".moved")
    os.mkdir(store, 0o700)
    os.mkdir(os.path.join(store, "results"), 0o700)
    caught = []

    def first_use() -> None:
        try:
            part.get("before")
        except StoreGone as exc:
            caught.append(exc)

    thread = threading.Thread(target=first_use)
    thread.start()
    thread.join(30)
    assert len(caught) == 1 and "replaced by another one" in str(caught[0])
    assert os.listdir(os.path.join(store, "results")) == []
    assert part.get("before") == 1  # this thread's connection: the store it opened


def test_an_existing_part_opens_without_a_write(tmp_path):
    """A part diskcache made with nbqueue's settings opens with reads only (a full disk
    refuses every write), set up as diskcache's own open leaves it; one whose settings
    differ goes through diskcache's open, which writes them."""
    signing.private_directory(tmp_path / "store")
    path = str(tmp_path / "store" / "cache")
    first = storage.open_cache(path, expiring=True)
    first.set("kept", {"a": 1}, expire=60)
    first.close()  # the last connection: SQLite empties the write-ahead log into the file
    database = os.path.join(path, diskcache.core.DBNAME)
    before = os.stat(database).st_mtime_ns, os.path.getsize(database)
    again = storage.open_cache(path, expiring=True)
    assert again.get("kept") == {"a": 1} and isinstance(again.disk, storage.SignedDisk)
    assert (again.cull_limit, again.eviction_policy) == (10, "none")
    assert again._sql("PRAGMA cache_size").fetchall() == [(256,)]
    assert (os.stat(database).st_mtime_ns, os.path.getsize(database)) == before
    assert os.path.getsize(database + "-wal") == 0  # nothing written
    again.set("more", b"x" * 100_000)  # and it writes as ever
    assert again.get("more") == b"x" * 100_000 and len(again) == 2
    again.close()
    other = storage.open_cache(path, expiring=False)  # other settings: written
    assert other.cull_limit == 0 and other.get("kept") == {"a": 1}
    other.close()


def test_a_link_to_arguments_that_fails_names_them_and_a_failed_write_leaves_no_file(part):
    """An argument file that cannot be linked (a folder in its place) is named by its path
    in the record stored; a transaction rolled back removes the value files it made."""
    from nbqueue.disk.blobs import Blob
    folder = os.path.join(os.path.dirname(part.directory), "blobs", "task-1")
    os.makedirs(folder)
    with part.disk.undone(), part.transact():
        part.set("task", {"args": Blob(folder, 10), "result": b"r"})
    assert part.get("task")["args"] == Blob(folder, 10)

    def files() -> set[str]:
        return {os.path.join(d, f) for d, _, fs in os.walk(part.directory) for f in fs
                if not f.startswith("cache.db")}
    present = files()
    with pytest.raises(RuntimeError):
        with part.disk.undone(), part.transact():
            part.set("big", b"y" * 100_000)
            assert files() != present  # its value file
            raise RuntimeError("rolled back")
    assert files() == present and part.get("big") is None
    arguments = os.path.join(os.path.dirname(folder), "task-2")
    with open(arguments, "wb") as out:
        out.write(b"a")
    record = {"args": Blob(arguments, 1), "result": b"r"}
    with pytest.raises(RuntimeError):
        with part.disk.undone(), part.transact():
            part.set("task2", record)
            assert record["args"].path != arguments  # named where its row links it
            raise RuntimeError("rolled back")
    assert record["args"] == Blob(arguments, 1) and os.stat(arguments).st_nlink == 1
    assert files() == present
