"""Large values as signed files of the store, which messages name instead of holding.

Pickled arguments of ``LARGE`` bytes or more are written by the caller (``arguments``),
and a result as large by the worker that made it (``result``), each to one file of the
store signed with its key for that task and that role (``signing.context``: a file put
in the place of another task's, or of its arguments, is refused), written whole or not
at all, and read only as a regular file of the size written. The queued package, the
item a worker gets, the outcome it sends back and the stored record then carry a
``Blob`` that names the file: the large bytes cross no pipe, are never pickled again
into another message, and are not copied through the cluster's GIL. A stored record makes its blob
diskcache's value file of its row (``storage.SignedDisk``), so the file goes with it.

- ``<store>/spill/<host pid>-<task id>-<random>``: results; a cluster removes those of
  hosts that are gone (``clean_spill``); the record of a stored outcome moves it away.
- ``<store>/blobs/<task id>-<random>``: arguments, for as long as the task may be
  delivered again: the writer removes them once the task has succeeded; a failure keeps
  them for ``nbqueue.retry``. A cluster that starts sweeps those no task can need any
  more (``sweep_arguments``).

Workers import this module, so it imports only the standard library and nbqueue's
signing and errors.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import stat
import struct
import time
from collections.abc import Callable
from typing import Any, NamedTuple, SupportsIndex

from nbqueue.disk.signing import HEADER_SIZE, check_parts, context, create_file, seal, seal_parts
from nbqueue.errors import SignatureError, StoreFileMissing

log = logging.getLogger(__name__)

LARGE = 1 << 20  # pickled arguments or results this large go to a file of their own
SPILL_DIR = "spill"
ARGS_DIR = "blobs"
ARGUMENTS, RESULT = "arguments", "result"  # the roles a task's file is signed for
ROLES = {"result": RESULT, "args": ARGUMENTS}  # a record's fields that may be a Blob


class Blob(NamedTuple):
    """A large pickled value in a signed file of the store."""

    path: str  # absolute; "" inside a stored record: its row's value file
    size: int  # bytes of the pickled value


class Frames(NamedTuple):
    """A value pickled with its large buffers out of band, as read from a blob: each
    buffer read into an object of its own, bytes where the value's was read-only (a
    ``bytes`` comes back as that very object: no copy) and a bytearray where it was
    writable (a numpy array comes back sharing its memory, writable)."""

    stream: bytes
    buffers: list

    def load(self) -> Any:
        return pickle.loads(self.stream, buffers=self.buffers)


_FRAMED = b"NBQF"  # a payload of frames: count, (length, writable) each, then the frames
_COUNT = struct.Struct("<I")
_FRAME = struct.Struct("<Q?")
OUT_OF_BAND = 64 * 1024  # bytes objects this large are pickled out of band


def large(value: Any) -> bool:
    """Whether ``value`` (or a value in it, one or two levels down: the arguments of a
    call) has buffers of LARGE bytes or more: a cheap guess made before pickling."""
    return _size(value, 2) >= LARGE


def large_call(args: tuple, kwargs: dict) -> bool:
    """``large((args, kwargs))``, quicker for the plain arguments of most calls (this is
    every ``async_task``'s path)."""
    total = 0
    for item in args:
        if type(item) not in _SCALARS:
            total += _size(item, 1)
    if kwargs:
        for item in kwargs.values():
            if type(item) not in _SCALARS:
                total += _size(item, 1)
    return total >= LARGE


def _size(value: Any, depth: int) -> int:
    kind = type(value)
    if kind in _SCALARS:
        return 0
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is tuple or kind is list or kind is dict:
        if not depth or len(value) > 100:
            return 0
        total = 0
        for item in value.values() if kind is dict else value:
            if type(item) not in _SCALARS:
                total += _size(item, depth - 1)
        return total
    nbytes = getattr(value, "nbytes", None)  # numpy arrays, pandas Series and others
    if type(nbytes) is int:
        return nbytes
    usage = getattr(value, "memory_usage", None)  # a pandas DataFrame
    if callable(usage):
        try:
            return int(usage(index=True, deep=False).sum())
        except Exception:
            return 0
    return 0


_SCALARS = frozenset((int, float, str, bool, type(None), complex))


class _Raw:
    """A large bytes object, pickled out of band (``bytes`` itself is always in band), to
    come back as ``rebuild`` of its buffer: its own type, or a ``memoryview`` of it."""

    __slots__ = ("data", "rebuild")

    def __init__(self, data: Any, rebuild: type) -> None:
        self.data = data
        self.rebuild = rebuild

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return self.rebuild, (pickle.PickleBuffer(self.data),)


def out_of_band(value: Any, depth: int = 2, as_views: bool = False) -> Any:
    """``value`` with its large bytes (``OUT_OF_BAND`` or more; in tuples, lists and dicts
    ``depth`` levels down) made to pickle out of band, to come back as their own type or,
    ``as_views``, as read-only views of the buffers they are loaded with."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        if len(value) < OUT_OF_BAND:
            return value
        return _Raw(value, memoryview if as_views else kind)
    if depth and kind is tuple:
        return tuple(out_of_band(v, depth - 1, as_views) for v in value)
    if depth and kind is list:
        return [out_of_band(v, depth - 1, as_views) for v in value]
    if depth and kind is dict:
        return {k: out_of_band(v, depth - 1, as_views) for k, v in value.items()}
    return value


def frames(value: Any, dumps: Callable[..., bytes] = pickle.dumps) -> list[Any]:
    """``value`` pickled with its large buffers (numpy arrays, bytes) out of band: the
    parts of a framed payload, to write one after another with no joined copy."""
    buffers: list[pickle.PickleBuffer] = []
    stream = dumps(out_of_band(value), protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    frames = [(len(stream), False)] + [(raw.nbytes, not raw.readonly) for raw in raws]
    head = _FRAMED + _COUNT.pack(len(frames)) + b"".join(_FRAME.pack(*f) for f in frames)
    return [head, stream, *raws]


def loads(data: Any) -> Any:
    """The value of a pickled payload as ``read`` gives it: bytes, or ``Frames``."""
    return data.load() if type(data) is Frames else pickle.loads(data)


def write(directory: str, name: str, data: Any, key: bytes, task_id: str, role: str) -> Blob:
    """Sign ``data`` (bytes, or the parts ``frames`` made) as the ``role`` (ARGUMENTS,
    RESULT) of task ``task_id``, and write it to ``directory/name``, whole or not at
    all."""
    bound = context(role, task_id)
    if type(data) is list:
        parts, header = data, seal_parts(key, data, bound)
    else:
        header, payload = seal(key, data, bound)
        parts = [payload]
    path = os.path.join(directory, name)
    write_whole(path, [header, *parts])
    return Blob(path, sum(memoryview(part).nbytes for part in parts))


def write_whole(path: str, parts: list[Any], draft: str | None = None) -> None:
    """Write ``parts`` one after another to a new 0600 file at ``path``, whole or not at
    all: a ``draft`` (``path`` + ".part"), renamed once written."""
    draft = draft or path + ".part"
    try:
        with open(create_file(None, draft), "wb") as out:  # 0600, whatever the umask
            for part in parts:
                out.write(part)
        os.rename(draft, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(draft)
        raise


def read(blob: Blob, key: bytes, task_id: str, role: str) -> Any:
    """The pickled value of ``blob`` (bytes, or ``Frames``: give it to ``loads``),
    checked against the store's key, as the ``role`` of task ``task_id``, before it is
    given back. Each part is read straight into an object of its own: no copy of it is
    made; no length read from the file is trusted before it is checked against the
    file's size.

    Raises SignatureError (tampered, swapped, or not a regular file), StoreFileMissing
    (deleted: also once its record is gone), or another OSError."""
    what = f"the {role} of task {task_id}"
    src, size = open_regular(blob.path, what)
    with src:
        if size != HEADER_SIZE + blob.size:
            raise _damaged(
                what, blob.path, f"{size:,} bytes, where {HEADER_SIZE + blob.size:,} were written"
            )
        size = blob.size
        header = src.read(HEADER_SIZE)
        if os.pread(src.fileno(), len(_FRAMED), HEADER_SIZE) != _FRAMED:
            parts = [src.read(size)]
        else:
            head = src.read(len(_FRAMED) + _COUNT.size)
            (count,) = _COUNT.unpack_from(head, len(_FRAMED))
            if count < 1 or len(head) + count * _FRAME.size > size:
                raise _damaged(what, blob.path, f"its frame count ({count:,}) does not fit")
            head += src.read(count * _FRAME.size)
            frames = [
                _FRAME.unpack_from(head, len(_FRAMED) + _COUNT.size + i * _FRAME.size)
                for i in range(count)
            ]
            if len(head) + sum(length for length, _ in frames) != size:
                raise _damaged(what, blob.path, "its frame lengths do not add up to its size")
            parts = [head, *(_read_frame(src, length, writable) for length, writable in frames)]
    try:
        check_parts(key, header, parts, context(role, task_id))
    except SignatureError as exc:
        raise SignatureError(f"{what} ({blob.path}) is refused: {exc}") from None
    return parts[0] if len(parts) == 1 else Frames(parts[1], parts[2:])


def _damaged(what: str, path: str, why: str) -> SignatureError:
    return SignatureError(
        f"{what} ({path}) is not a whole nbqueue value: {why} (tampered "
        "or damaged); it is left unread"
    )


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str, what: str) -> tuple[Any, int]:
    """``path`` opened for reading (unbuffered), and its size, if it is a regular file:
    never a FIFO (whose open or read would wait for a writer), a device (``/dev/zero``
    reads for ever) or a symbolic link, put in the place of a file of the store.
    ``what`` names the value in messages.

    Raises SignatureError for any other kind of file, StoreFileMissing when there is
    none, or the OSError of the open."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise StoreFileMissing(
            errno.ENOENT, f"{what} cannot be read: its file was deleted from the store", path
        ) from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise SignatureError(
            f"{what} ({path}) is a symbolic link, not a file nbqueue wrote; it is left unread"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SignatureError(
                f"{what} ({path}) is not a regular file but a {_kind(info.st_mode)}, not a "
                "file nbqueue wrote; it is left unread"
            )
        return open(fd, "rb", buffering=0), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _read_frame(src: Any, length: int, writable: bool) -> Any:
    if not writable:
        return src.read(length)  # may come back short: the check then fails
    frame = bytearray(length)
    got, view = 0, memoryview(frame)
    while got < length:
        n = src.readinto(view[got:])
        if not n:
            break
        got += n
    del view
    if got < length:
        del frame[got:]
    return frame


def arguments(directory: str, task_id: str, data: bytes, key: bytes) -> Blob:
    """Write a task's large pickled arguments to the store (the caller does)."""
    folder = os.path.join(directory, ARGS_DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return write(folder, f"{task_id}-{os.urandom(6).hex()}", data, key, task_id, ARGUMENTS)


def inlined(items: list[Any], key: bytes) -> list[Any]:
    """Work items (``records.Item``) whose large arguments travel inside them, read from
    their files: for workers that may not reach the store (a remote dask scheduler)."""
    return [
        item._replace(args=read(item.args, key, item.id, ARGUMENTS))
        if type(item.args) is Blob
        else item
        for item in items
    ]


def discard(blob: Any) -> None:
    """Remove a blob's file, if ``blob`` is one and it is still there."""
    if type(blob) is Blob and blob.path:
        with contextlib.suppress(OSError):
            os.unlink(blob.path)


def clean_spill(directory: str, hosts: Callable[[int], bool]) -> None:
    """Remove the spill files of the hosts ``hosts(pid)`` says are gone: results their
    clusters never collected (those tasks are delivered again) and drafts of killed
    workers."""
    try:
        entries = list(os.scandir(os.path.join(directory, SPILL_DIR)))
    except OSError:
        return
    for entry in entries:
        host = entry.name.split("-", 1)[0]
        if host.isdigit() and hosts(int(host)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def pin(blob: Blob) -> str | None:
    """A link of its own to an argument file, that keeps the sweep from it while no record
    and no queued task names it (``retry`` between the two); None if it cannot be made."""
    path = f"{blob.path}{PIN}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.link(blob.path, path)
    except OSError:
        return None
    return path


def unpin(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


PIN = ".pin-"  # in an argument file's pin: its name, PIN, the pid that pinned it
ORPHAN_AGE = 3600.0  # seconds an argument file no record holds is kept, at least


def sweep_arguments(
    directory: str, queued: Callable[[list[str]], set[str]], older_than: float = ORPHAN_AGE
) -> int:
    """Remove the argument files no task can need any more; return how many.

    Such a file is one that no record links (one link: its own name), that is older than
    ``older_than`` seconds, and whose task ``queued(task_ids)`` does not name as queued
    or leased: its caller died before the task reached the queue, or the failure that
    kept it for ``retry`` was deleted. A younger file may belong to a task on its way to
    the queue from another process's outbox."""
    try:
        entries = list(os.scandir(os.path.join(directory, ARGS_DIR)))
    except OSError:
        return 0
    now = time.time()
    candidates = {}
    for entry in entries:
        try:
            info = entry.stat()
        except OSError:
            continue
        if PIN in entry.name:  # its process died before it unpinned the file: unpin
            if now - info.st_ctime > older_than:  # a link's change time: when pinned
                unpin(entry.path)
            continue
        if info.st_nlink == 1 and now - info.st_mtime > older_than:
            candidates[entry.path] = entry.name.rsplit("-", 1)[0]
    if not candidates:
        return 0
    try:
        needed = queued(sorted(set(candidates.values())))
    except Exception:  # the queue cannot be read now: keep them all, for the next sweep
        return 0
    removed = 0
    for path, task_id in candidates.items():
        if task_id not in needed:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
    return removed
