"""Everything that touches diskcache, behind a short contract.

The queue (``broker``) and the outcomes (``store``) are diskcache Caches of one store
directory, and nothing else in nbqueue imports diskcache. The contract:

- ``open_cache(path, expiring)`` opens one part of a store (a diskcache Cache that never
  evicts) through ``SignedDisk``: every value written is signed with the store's key and
  every value read is checked before it is unpickled; integers (diskcache's counters)
  stay plain. A value that fails the check raises SignatureError. Its ``place`` is the
  store directory as it was checked (``signing.Anchor``): callers check it before each
  write batch, a thread's first SQLite connection checks it itself, and every folder
  and file the part makes is 0700/0600, value files made relative to the folder held.
- ``upsert(cache, rows)`` sets many never-expiring string keys in one statement and
  ``read_many(cache, keys)`` reads many in a few: what ``Cache.set``/``Cache.get`` do,
  on diskcache's own table (its schema is stable since diskcache 3), without a statement
  per key. Both go through ``SignedDisk``, so what one path writes the other reads, and
  diskcache's count and size stay right. ``read_all(cache)`` reads every value in one
  statement: one snapshot.
- ``writing(path)`` turns the ways a write can fail (locked, full, read-only, damaged)
  into one StoreError that names the cause; ``checked_get`` reads a value, one that fails
  its check read as a default (for rows a cluster must get past); ``checkpoint(cache)``
  gives the space of a failed transaction back to the disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import diskcache

from nbqueue.disk import blobs
from nbqueue.disk.blobs import Blob
from nbqueue.disk.signing import (
    HEADER_SIZE,
    VALUE,
    anchor,
    context,
    create_file,
    load_key,
    make_directories,
    make_directory,
    seal,
    sign,
    verify,
)
from nbqueue.errors import (
    InsecureStoreError,
    SignatureError,
    StoreError,
    StoreFileMissing,
    StoreGone,
)

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 60.0  # seconds SQLite waits for another process's write lock
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: past a file size limit


def store_advice(exc: BaseException, path: str) -> str:
    """What to do about ``exc``, raised opening or writing ``path`` (a part of a store: its
    queue, state, results or cache): the real cause named, because a read-only store is
    not helped by freeing disk space, nor a damaged file by making it writable."""
    store = os.path.dirname(os.path.abspath(path))
    text = str(exc).lower()
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _FULL or "database or disk is full" in text:
        return f"The disk of {store} is full: free space and try again"
    if "file is not a database" in text or "database disk image is malformed" in text:
        return f"A file of the store is damaged: move {store} away and start again"
    if (
        code in _READ_ONLY
        or "readonly database" in text
        or (os.path.isdir(path) and not os.access(path, os.W_OK))
    ):
        return (
            f"The store at {store} is read-only for this process: make it writable "
            f"(`chmod -R u+w {store}`) or choose another directory with "
            "configure(directory=...)"
        )
    return f"Check that {store} is on a working disk that this process may write to"


def store_trouble(exc: BaseException, path: str) -> str | None:
    """What is wrong with the store, said as ``writing`` says it, when ``exc`` (raised
    writing to its part at ``path``) is the store's own trouble: a full or read-only
    disk, a lock, a damaged file. None when it is the trouble of one value written (a
    task's file that cannot be linked, moved or read), which other values do not share."""
    cause = _first_cause(exc)
    if isinstance(cause, StoreError):
        return str(cause)
    if isinstance(cause, diskcache.Timeout):
        return (
            f"the store at {path} stayed locked by another process; is a process stuck holding it?"
        )
    if isinstance(cause, sqlite3.Error) or (
        isinstance(cause, OSError) and cause.errno in _STORE_WIDE
    ):
        return f"cannot write to the store at {path}: {cause}. {store_advice(cause, path)}"
    return None


_STORE_WIDE = (*_FULL, errno.EROFS, errno.EIO)  # errors of a disk, not of one file on it


class SignedDisk(diskcache.Disk):
    """diskcache's serialization, signed with the store's key: every value is pickled and
    signed (``signing.sign``) as it is written, and read back only once its signature
    checks out, so that nothing read from the store is unpickled unless this store's
    owner wrote it. A row written without the key (by a plain ``diskcache.Cache``, or by
    someone else) raises SignatureError instead. Integers stay plain: they are diskcache's
    counters (``incr`` adds to them in SQL), and unpickle nothing.

    Values over diskcache's 32 KiB go to files, written whole or not at all, so a writer
    killed halfway leaves no partial value behind, each signed for its file's name (one
    moved into the place of another is refused), and read only as a regular file. They
    and their folders are created 0600 and 0700, relative to the part's folder held open
    (``_fd``): inside the store directory that was checked, wherever its path leads now.
    A record's large result or arguments are the file its task's worker or caller signed
    for that task (``blobs``), which its row keeps.
    """

    def __init__(self, directory: str, **options: Any) -> None:
        super().__init__(directory, **options)
        self.place = anchor(os.path.dirname(directory))
        self._key = load_key(self.place.path)
        self._fd = os.open(os.path.basename(directory), _DIRECTORY, dir_fd=self.place.fd)
        self._made = threading.local()  # files: the value files made in ``undone`` blocks
        self._clean_drafts()

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.close(self._fd)

    def _made_file(self, path: str, undo: Callable[[], None] | None = None) -> None:
        """Note a value file made inside an ``undone`` block, and what else to undo
        with it."""
        made = getattr(self._made, "files", None)
        if made is not None:
            made.append((path, undo))

    @contextlib.contextmanager
    def undone(self) -> Iterator[None]:
        """Remove the value files that the writes of this block made (large values,
        links to argument files) if it fails: the rows that named them were rolled back,
        and a write tried again on a full disk must not fill it with orphans. A record
        made to name such a file names what it named before again."""
        made: list[tuple[str, Callable[[], None] | None]] = []
        self._made.files = made
        try:
            yield
        except BaseException:
            for path, undo in made:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                if undo is not None:
                    undo()
            raise
        finally:
            self._made.files = None

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if type(value) is int:
            return super().store(value, read, key)
        if type(value) is dict and (
            type(value.get("result")) is Blob or type(value.get("args")) is Blob
        ):
            return self._store_with_blob(value, key)
        return self._store_pickled(value, key)

    def _store_pickled(self, value: Any, key: Any) -> tuple:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        size = HEADER_SIZE + len(payload)
        if size < self.min_file_size:
            header, _ = seal(self._key, payload)
            return super().store(header + payload, False, key)
        filename, full_path = self.filename(key, value)  # a large value: no joined copy
        header, _ = seal(self._key, payload, context(FILE_ROLE, filename))
        self._write(full_path, iter((header, payload)), "xb")
        self._made_file(full_path)
        return size, diskcache.core.MODE_BINARY, filename, None

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_RAW and type(value) is int:
            return value
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise SignatureError(
                f"a value in the store at {self._directory} was not written "
                "by nbqueue with this store's key; it is left unread"
            )
        try:
            if mode == diskcache.core.MODE_BINARY:
                assert filename is not None  # diskcache keeps every binary value in a file
                data, bound = self._read_file(filename), context(FILE_ROLE, filename)
            else:
                data, bound = super().fetch(mode, filename, value, False), VALUE
            value = pickle.loads(verify(self._key, data, bound))
            if filename is not None and mode == diskcache.core.MODE_RAW:
                self._blob_of(value, filename)
            return value
        except SignatureError as exc:
            raise SignatureError(
                f"a value in the store at {self._directory} failed its "
                f"signature check ({exc}); it is left unread"
            ) from None

    def _read_file(self, filename: str) -> bytes:
        """A value file, read only if it is a regular file (``blobs.open_regular``)."""
        src, size = blobs.open_regular(os.path.join(self._directory, filename), "its value")
        with src:
            return src.read(size)

    def _blob_of(self, record: dict, filename: str) -> None:
        """Give a record read back the file its row holds: a result is read at once
        (whoever reads a record reads its result); arguments are left as a Blob naming
        the file, which ``Task.args`` reads when asked (a group's results are read
        without their arguments)."""
        path = os.path.join(self._directory, filename)
        for field in _BLOB_FIELDS:
            blob = record.get(field)
            if type(blob) is Blob and not blob.path:
                if field == "result":
                    record[field] = blobs.read(
                        blob._replace(path=path), self._key, record["id"], blobs.RESULT
                    )
                else:
                    record[field] = blob._replace(path=path)

    def _store_with_blob(self, record: dict, key: Any) -> tuple:
        """A record whose result or arguments are a ``Blob``: that file becomes its row's
        value file (diskcache removes it with the row), and the rest is signed inline.

        A result's file is moved in (and ``record`` updated to name it where it is now,
        for the hooks that read it next); arguments are linked, as the queue may still
        deliver them. When both are blobs, the arguments are read into the record."""
        fields = [f for f in _BLOB_FIELDS if type(record.get(f)) is Blob]
        for field in fields[1:]:
            record[field] = blobs.read(record[field], self._key, record["id"], blobs.ROLES[field])
        field = fields[0]
        blob = record[field]
        filename, full_path = self.filename(key, record)
        source, source_fd = self._in_store(blob.path)

        def move() -> None:  # a link to the file itself: never to what a symlink names
            if field == "result":
                os.rename(source, filename, src_dir_fd=source_fd, dst_dir_fd=self._fd)
            else:
                os.link(
                    source,
                    filename,
                    src_dir_fd=source_fd,
                    dst_dir_fd=self._fd,
                    follow_symlinks=False,
                )
                self._made_file(full_path, lambda: record.__setitem__(field, blob))

        try:
            self._into_place(filename, move)
        except FileNotFoundError:  # removed by hand: the record names it, reads say so
            return self._store_pickled(record, key)
        except OSError as exc:  # arguments that are not a file one can link (a folder put
            if field == "result" or exc.errno in _STORE_WIDE:  # in its place): the
                raise  # record names them where they are, and a read of them says what
            return self._store_pickled(record, key)  # is wrong
        record[field] = blob._replace(path=full_path)
        inline = sign(
            self._key,
            pickle.dumps(
                {**record, field: blob._replace(path="")}, protocol=pickle.HIGHEST_PROTOCOL
            ),
        )
        return len(inline) + blob.size, diskcache.core.MODE_RAW, filename, sqlite3.Binary(inline)

    def _into_place(self, filename: str, move: Any) -> None:
        """Make the folders of the value file ``filename`` and ``move()`` it there; again
        when another writer removed a folder meanwhile (diskcache removes the folders it
        empties as it deletes values). FileNotFoundError when the file to move is gone."""
        folder = os.path.dirname(filename)
        for attempt in range(10):
            try:
                make_directories(self._fd, folder)
                move()
                return
            except FileNotFoundError:
                if attempt == 9 or self._has(folder):
                    raise  # the folder is there: the file to move is not

    def _has(self, relative: str) -> bool:
        """Whether ``relative`` exists in the part's folder held open."""
        try:
            os.stat(relative, dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _in_store(self, path: str) -> tuple[str, int | None]:
        """``path`` relative to the store directory held open, and its fd, when it is a
        file of the store (as a blob's is); else ``path`` as it is."""
        store = self.place.path + os.sep
        if path.startswith(store):
            return path[len(store) :], self.place.fd
        return path, None

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        """Write a value file whole or not at all: as a draft, renamed into place once
        written. Drafts of writers that died are removed when the store is next opened."""
        filename = full_path[len(self._directory) + 1 :]  # diskcache's, relative to it
        draft = os.path.join(_DRAFTS, f"{os.getpid()}-{os.urandom(8).hex()}")
        try:
            for attempt in range(10):  # another writer may remove the empty folder
                make_directory(self._fd, _DRAFTS)
                try:
                    fd = create_file(self._fd, draft)
                    break
                except FileNotFoundError:
                    if attempt == 9:
                        raise
            with open(fd, "wb" if "b" in mode else "w", encoding=encoding) as out:
                size = 0
                for chunk in iterator:
                    size += len(chunk)
                    out.write(chunk)
            self._into_place(
                filename,
                lambda: os.rename(draft, filename, src_dir_fd=self._fd, dst_dir_fd=self._fd),
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(draft, dir_fd=self._fd)
            raise
        finally:  # no empty folder left for diskcache's check() to warn about
            with contextlib.suppress(OSError):  # (not empty: another writer's draft)
                os.rmdir(_DRAFTS, dir_fd=self._fd)
        return size

    def _clean_drafts(self) -> None:
        try:
            entries = list(os.scandir(os.path.join(self._directory, _DRAFTS)))
        except OSError:
            return
        for entry in entries:
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        with contextlib.suppress(OSError):  # when empty
            os.rmdir(os.path.join(self._directory, _DRAFTS))


_DRAFTS = "drafts"
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SQLITE_FILES = ("cache.db", "cache.db-wal", "cache.db-shm")  # diskcache's, SQLite's
_BLOB_FIELDS = ("result", "args")  # of a record, in the order they may own its file
FILE_ROLE = "file"  # what a large value's file is signed as, with its name


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie child counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as src:
            return src.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class _Cache(diskcache.Cache):
    """A diskcache Cache that opens no SQLite connection to its file (one per thread)
    unless the store directory is still the one that was checked: SQLite opens by path,
    and a connection opened in another user's directory would create files there.
    ``place`` is that directory (``signing.Anchor``): check it before each write batch."""

    _local: threading.local  # diskcache's per-thread connections

    def __init__(self, directory: str, *args: Any, **settings: Any) -> None:
        self.place = anchor(os.path.dirname(os.path.abspath(directory)))
        self.place.check_path()  # opening is not a write batch: a reader opens too
        super().__init__(directory, *args, **settings)
        opened = self._local  # this thread's connection, opened just now
        self._local = _connections(self.place)
        for name, value in vars(opened).items():
            setattr(self._local, name, value)


def _connections(place: Any) -> threading.local:
    """A Cache's thread-local connections, each thread's first one opened only once
    ``place`` checks out."""
    return type("_Connections", (threading.local,), {"pid": _FirstConnection(place)})()


class _FirstConnection:
    """The ``pid`` of a thread that has no connection yet, in diskcache's thread-local:
    only ``Cache._con`` reads it, just before it connects; a thread that has one reads
    its own ``pid``, so this costs nothing once connected."""

    def __init__(self, place: Any) -> None:
        self.place = place

    def __get__(self, local: Any, owner: Any = None) -> Any:
        if local is not None:
            self.place.check_path()
        raise AttributeError("pid")  # unset: diskcache then connects


def _private_part(path: str) -> None:
    """Create the folder of a part of a store, and its SQLite database, 0700 and 0600
    whatever the umask (SQLite gives its -wal and -shm files the database's mode); take
    the group's and others' access away from those of a store made before."""
    place = anchor(os.path.dirname(path))
    name = os.path.basename(path)
    make_directory(place.fd, name)
    database = os.path.join(name, _SQLITE_FILES[0])
    with contextlib.suppress(FileExistsError):
        os.close(create_file(place.fd, database))
    for relative, flags in [(name, _DIRECTORY)] + [
        (os.path.join(name, f), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC) for f in _SQLITE_FILES
    ]:
        try:
            fd = os.open(relative, flags, dir_fd=place.fd)
        except FileNotFoundError:
            continue
        try:
            mode = os.fstat(fd).st_mode
            if mode & 0o077:
                with contextlib.suppress(OSError):  # a store on read-only media: read it
                    os.fchmod(fd, mode & 0o700)
        finally:
            os.close(fd)


def open_cache(path: str, expiring: bool = False) -> diskcache.Cache:
    """A diskcache Cache that never evicts (queued work and results must not vanish).

    Only an ``expiring`` cache culls expired keys as it writes; elsewhere that check
    would cost one more SQLite statement per write for nothing. SQLite's page cache is
    kept small and memory-mapping is off: with diskcache's defaults (32 MiB of cache and
    64 MiB of mapped file per connection, one connection per thread and file) a cluster's
    RSS grew many times as much over a long run as it does with these, at the same speed.

    A part that already exists with these settings is opened without a write
    (``_reopen``): diskcache's own open writes every setting again, which a full disk
    refuses, and a store must stay readable on a full disk.
    """
    settings = {
        "eviction_policy": "none",
        "cull_limit": 10 if expiring else 0,
        "sqlite_cache_size": 256,
        "sqlite_mmap_size": 0,
    }
    try:
        _private_part(path)
        found = _reopen(path, settings)
        if found is not None:
            return found
        return _Cache(path, timeout=LOCK_TIMEOUT, disk=SignedDisk, **settings)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(
            f"cannot open the store at {path}: {exc}. {store_advice(exc, path)}"
        ) from exc


# What diskcache's open creates in a database (tables, indexes, triggers), by name.
_SCHEMA = frozenset(
    (
        "Settings",
        "Cache",
        "Cache_key_raw",
        "Cache_expire_time",
        "Settings_count_insert",
        "Settings_count_delete",
        "Settings_size_insert",
        "Settings_size_update",
        "Settings_size_delete",
    )
)


def _reopen(path: str, settings: dict[str, Any]) -> diskcache.Cache | None:
    """The Cache at ``path`` if diskcache's open made it whole with ``settings`` before,
    set up as that open would leave it, but with reads only; None otherwise (the caller
    then opens it the usual way, which creates or updates what is missing)."""
    database = os.path.join(path, diskcache.core.DBNAME)
    if not os.path.isfile(database):
        return None
    anchor(os.path.dirname(os.path.abspath(path))).check_path()  # SQLite opens by path
    con = sqlite3.connect(database, timeout=LOCK_TIMEOUT, isolation_level=None)
    try:
        names = {name for (name,) in con.execute("SELECT name FROM sqlite_master")}
        if not names >= _SCHEMA:
            return None
        stored = dict(con.execute("SELECT key, value FROM Settings").fetchall())
    finally:
        con.close()
    wanted = {**diskcache.DEFAULT_SETTINGS, **settings}
    if any(key not in stored for key in diskcache.core.METADATA) or any(
        stored.get(key) != value for key, value in wanted.items()
    ):
        return None
    cache = _Cache.__new__(_Cache)  # what _Cache.__init__ sets, read back
    cache.place = anchor(os.path.dirname(os.path.abspath(path)))
    cache._directory = path
    cache._timeout = LOCK_TIMEOUT
    cache._local = _connections(cache.place)
    cache._txn_id = None
    for key, value in stored.items():
        setattr(cache, key, value)
    cache._disk = SignedDisk(
        path, **{key[5:]: value for key, value in stored.items() if key.startswith("disk_")}
    )
    ((cache._page_size,),) = cache._sql("PRAGMA page_size").fetchall()
    return cache


# One statement for many rows: ``Cache.set`` costs a SELECT and an INSERT each, in the
# cluster's GIL time, for every row (two rows per outcome stored, two per lease). The
# columns and the unique (key, raw) index are diskcache's table (stable since diskcache
# 3); an existing key is updated in place, so diskcache's count and size triggers stay
# right.
UPSERT_OK = sqlite3.sqlite_version_info >= (3, 24, 0)
_UPSERT_SQL = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag,"
    " size, mode, filename, value) VALUES (?, ?, ?, NULL, ?, 0, NULL, ?, ?, ?, ?)"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " expire_time = NULL, access_time = excluded.access_time, access_count = 0, tag = NULL,"
    " size = excluded.size, mode = excluded.mode, filename = excluded.filename,"
    " value = excluded.value"
)


def upsert(cache: Any, rows: list[tuple[str, Any]]) -> None:
    """Set many never-expiring string keys in one statement; inside ``cache.transact()``.

    The file of a large value it replaces is removed, as ``Cache.set`` does."""
    disk, now = cache._disk, time.time()
    values = []
    for key, value in rows:
        db_key, raw = disk.put(key)
        size, mode, filename, db_value = disk.store(value, False, key=key)
        values.append((db_key, raw, now, now, size, mode, filename, db_value))
    keys = [key for key, _ in rows]
    replaced = (
        [name for (name,) in cache._con.execute(_FILES_SQL.format(",".join("?" * len(keys))), keys)]
        if keys
        else []
    )
    cache._con.executemany(_UPSERT_SQL, values)
    for name in replaced:
        disk.remove(name)


_FILES_SQL = "SELECT filename FROM Cache WHERE raw = 1 AND filename IS NOT NULL AND key IN ({})"


_SELECT_SQL = (
    "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN ({})"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


_KEYS_SQL = (
    "SELECT key FROM Cache WHERE raw = 1 AND key IN ({})"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


def stored_keys(cache: Any, keys: list[str]) -> set[str]:
    """Those of many string keys that have a row, their values not read."""
    found: set[str] = set()
    con, now = cache._con, time.time()
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        rows = con.execute(_KEYS_SQL.format(",".join("?" * len(part))), (*part, now))
        found.update(key for (key,) in rows.fetchall())
    return found


def read_many(cache: Any, keys: list[str]) -> dict[str, Any]:
    """The values of many string keys, read 500 a statement (``Cache.get`` costs a
    statement and a file-like unpickling each, several times this for many keys).

    Raises StoreFileMissing for a row whose file was deleted under it (``Cache.get``
    reads that as no row at all)."""
    found: dict[str, Any] = {}
    fetch, con, now = cache._disk.fetch, cache._con, time.time()
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        rows = con.execute(_SELECT_SQL.format(",".join("?" * len(part))), (*part, now))
        for key, mode, filename, value in rows.fetchall():
            try:
                found[key] = fetch(mode, filename, value, False)
            except OSError as exc:
                value = _read_again(cache, key, filename, exc)
                if value is not _NONE:
                    found[key] = value
    return found


_NONE = object()
_ROW_SQL = (
    "SELECT mode, filename, value FROM Cache WHERE raw = 1 AND key = ?"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


def _read_again(cache: Any, key: str, filename: str | None, exc: OSError) -> Any:
    """The value of a row whose file could not be read, or _NONE: the row was deleted
    meanwhile, or replaced (then its new value). Its row is read again under the write
    lock, where no write is halfway (a write removes a file it replaces before it
    commits); a row that still names the file it could not read raises."""
    for _ in range(3):
        try:
            with cache.transact(retry=True):
                row = cache._con.execute(_ROW_SQL, (key, time.time())).fetchone()
        except sqlite3.Error:  # a store this process may only read: read it as it is
            row = cache._con.execute(_ROW_SQL, (key, time.time())).fetchone()
        if row is None:
            return _NONE
        if row[1] == filename:
            break
        try:
            return cache._disk.fetch(*row, False)
        except OSError as again:
            filename, exc = row[1], again
    where = f"{key!r} in the store at {cache.directory}"
    if isinstance(exc, FileNotFoundError):
        raise StoreFileMissing(
            errno.ENOENT, f"{where}: {exc.strerror}; send the task again", exc.filename
        ) from None
    raise StoreError(
        f"{where} cannot be read: {exc}. {store_advice(exc, cache.directory)}"
    ) from exc


_ALL_SQL = (
    "SELECT mode, filename, value FROM Cache WHERE raw = 1"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


def read_all(cache: Any) -> Iterator[Any]:
    """Every value of a cache, as one snapshot (a walk key by key could miss a value
    moved from key to key meanwhile); a value that fails its check is skipped. Raises
    OSError when a large value's file was removed after the snapshot was taken."""
    fetch = cache._disk.fetch
    for mode, filename, value in cache._con.execute(_ALL_SQL, (time.time(),)):
        try:
            yield fetch(mode, filename, value, False)
        except SignatureError:
            continue


_PREFIX_SQL = (
    "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key >= ? AND key < ?"
    " AND (expire_time IS NULL OR expire_time > ?)"
)


def read_prefixed(cache: Any, prefix: str) -> dict[str, Any]:
    """The values of the string keys that start with ``prefix`` (ASCII), read in one
    statement over the key index, whatever else the cache holds; a value that fails its
    signature check is left out (logged), never unpickled."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    fetch, found = cache._disk.fetch, {}
    rows = cache._con.execute(_PREFIX_SQL, (prefix, end, time.time())).fetchall()
    for key, mode, filename, value in rows:
        try:
            found[key] = fetch(mode, filename, value, False)
        except SignatureError as exc:
            log.error("%r in %s is unreadable and was left out: %s", key, cache.directory, exc)
        except OSError:  # a large value removed since the statement: it is gone
            continue
    return found


def checkpoint(cache: Any, mode: str = "TRUNCATE") -> None:
    """Give the space of a failed transaction back to the disk: SQLite keeps it in the
    write-ahead log until a checkpoint truncates it (best effort). ``"RESTART"`` keeps
    the log's file as large as it is, emptied: the next small write reuses its space,
    which a full disk has no more of."""
    with contextlib.suppress(Exception):
        cache._con.execute(f"PRAGMA wal_checkpoint({mode})")


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn the ways a write to the store can fail into one clear StoreError."""
    try:
        yield
    except (InsecureStoreError, StoreGone):  # the store directory is not the one checked
        raise
    except diskcache.Timeout:
        raise StoreError(
            f"the store at {path} stayed locked by another process for over "
            f"{LOCK_TIMEOUT:g} s; is a process stuck holding it? Try again, or "
            "restart the processes that use this directory"
        ) from None
    except (sqlite3.Error, OSError) as exc:
        cause = _first_cause(exc)
        raise StoreError(
            f"cannot write to the store at {path}: {cause}. {store_advice(cause, path)}"
        ) from exc


def _first_cause(exc: BaseException) -> BaseException:
    """The error that failed a transaction: SQLite rolls back by itself on a full disk,
    and diskcache's own ROLLBACK then fails with "no transaction is active", which would
    hide the real cause."""
    while "cannot rollback" in str(exc) and isinstance(exc.__context__, (sqlite3.Error, OSError)):
        exc = exc.__context__
    return exc


def checked_get(cache: Any, key: str | int, default: Any, what: str) -> Any:
    """``cache.get``, a value that fails its signature check read as ``default`` (and
    written over at the next write): one bad row must not stop the queue."""
    try:
        return cache.get(key, default, retry=True)
    except SignatureError as exc:
        log.error("%s in %s is unreadable and was dropped: %s", what, cache.directory, exc)
        return default
