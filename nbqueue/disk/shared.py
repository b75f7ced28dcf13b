"""Objects stored once in the store and given to many tasks by a small handle.

``write`` pickles an object with its large buffers (numpy arrays, bytes) out of band
and writes one signed file, ``<store>/shared/<id>``, each buffer at a file offset
aligned for any dtype. The id is taken from the file's MAC, so sharing the same object
again under the same name (a cell run again, in a new kernel too) finds its file there
and writes nothing. A small signed ``<id>.info`` beside it describes it for ``listing``.

A ``Shared`` handle pickles as a call of ``_rebuild``. Where a task's arguments are
loaded (``loading``), that call gives back the object itself, at any depth of the
arguments; anywhere else it gives back the handle. A process loads an object once
(``load``): the file's MAC is checked first, reading it in chunks that leave no copy
behind, then the file is memory-mapped read-only and each buffer is a view of that map:
no copy, and pages shared by every process that reads them. Only the small pickled
part is read into memory, and unpickled once checked. Loaded objects are kept, least
recently used first out once the memory they hold outside their buffers passes
``MEMORY``; an object deleted from the store (``Shared.delete``) is dropped at its next
use, so every task after the deletion fails alike.

Workers import this module; it imports only the standard library, cloudpickle and
nbqueue's store modules.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import pickle
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle

from nbqueue.disk.blobs import open_regular, out_of_band, write_whole
from nbqueue.disk.signing import (
    HEADER_SIZE,
    check_parts,
    context,
    load_key,
    seal_parts,
    sign,
    verify,
)
from nbqueue.errors import PackingError, SharedObjectMissing, SignatureError, StoreFileMissing

log = logging.getLogger(__name__)

SHARED_DIR = "shared"
DATA, INFO = "shared", "shared-info"  # the roles its two files are signed for
ALIGN = 64  # a buffer's offset in the file: a multiple of this, for any dtype
MEMORY = int(os.environ.get("NBQUEUE_SHARED_MEMORY", 1 << 30))  # bytes kept loaded
_MAGIC = b"NBQS"
_COUNT = struct.Struct("<I")
_FRAME = struct.Struct("<QQ")  # offset in the payload, length
_CHUNK = 1 << 22  # bytes read at a time to check a file


@dataclass(frozen=True)
class Shared:
    """A handle to an object stored once in the store (``nbqueue.share``). Given as an
    argument of a task, at any depth of its ``args`` and ``kwargs``, it reaches the task
    as the object itself; numpy arrays and large bytes in it come memory-mapped,
    read-only. It is small, and stays valid in a new kernel until ``delete``."""

    directory: str  # the store's
    id: str
    name: str
    size: int  # bytes of its file, signature excluded
    kind: str  # the object's type
    created: float

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _rebuild, (self.directory, self.id, self.name, self.size, self.kind, self.created)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, SHARED_DIR, self.id)

    def load(self) -> Any:
        """The object, loaded in this process as a task gets it."""
        return load(self)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def delete(self) -> bool:
        """Remove it from the store; return whether it was there. Tasks that use it
        after this fail with SharedObjectMissing."""
        found = False
        for path in (self.path + ".info", self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                found = True
        return found

    def __repr__(self) -> str:
        return f"<Shared {self.name!r}: {self.kind}, {_megabytes(self.size)}, id {self.id[:8]}>"


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} bytes"


_local = threading.local()


def _rebuild(*fields: Any) -> Any:
    handle = Shared(*fields)
    return load(handle) if is_loading() else handle


def is_loading() -> bool:
    """Whether this thread loads a task's arguments now."""
    return getattr(_local, "loading", False)


def loading(loads: Callable[[Any], Any], data: Any) -> Any:
    """``loads(data)`` of a task's arguments, with the handles in them as their objects."""
    _local.loading = True
    try:
        return loads(data)
    finally:
        _local.loading = False


def kind_of(obj: Any) -> str:
    kind = type(obj)
    text = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    shape, dtype = getattr(obj, "shape", None), getattr(obj, "dtype", None)
    if type(shape) is tuple and dtype is not None:
        text += f" {dtype} {shape}"
    return text


def _parts(obj: Any) -> list[Any]:
    """The payload of a shared object's file: head, pickled part, then each buffer
    after the padding that aligns it."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = cloudpickle.dumps(
            out_of_band(obj, as_views=True), protocol=5, buffer_callback=buffers.append
        )
    except Exception as exc:
        raise PackingError(
            f"the object to share ({type(obj).__name__}) cannot be pickled: "
            f"{type(exc).__name__}: {exc}. Share plain data (arrays, frames, dicts), "
            "or load it inside the tasks from a file instead"
        ) from exc
    raws = [buffer.raw() for buffer in buffers]
    head_size = len(_MAGIC) + _COUNT.size + _FRAME.size * (1 + len(raws))
    frames, body, position = [(head_size, len(stream))], [stream], head_size + len(stream)
    for raw in raws:
        padding = -(HEADER_SIZE + position) % ALIGN
        if padding:
            body.append(bytes(padding))
        position += padding
        frames.append((position, raw.nbytes))
        body.append(raw)
        position += raw.nbytes
    head = _MAGIC + _COUNT.pack(len(frames)) + b"".join(_FRAME.pack(*f) for f in frames)
    return [head, *body]


def write(directory: str, key: bytes, obj: Any, name: str) -> Shared:
    """Store ``obj`` under ``name`` in the store at ``directory`` (its ``shared`` folder
    made already) and return its handle; nothing is written if it is there already."""
    parts = _parts(obj)
    header = seal_parts(key, parts, context(DATA, name))
    size = sum(memoryview(part).nbytes for part in parts)
    shared = Shared(directory, header[4:20].hex(), name, size, kind_of(obj), time.time())
    try:
        known = _info(shared.path + ".info", shared.id, directory, key)
    except (OSError, SignatureError, ValueError):
        known = None
    if known is not None and known.size == size and _whole(shared):
        return known
    _write(shared.path, [header, *parts])
    info = json.dumps(
        {"name": name, "size": size, "kind": shared.kind, "created": shared.created}
    ).encode()
    _write(shared.path + ".info", [sign(key, info, context(INFO, shared.id))])
    return shared


def _whole(shared: Shared) -> bool:
    try:
        return os.stat(shared.path).st_size == HEADER_SIZE + shared.size
    except OSError:
        return False


def _write(path: str, parts: list[Any]) -> None:
    """``write_whole``, from a draft of this process's own: two processes may share the
    same object at once."""
    write_whole(path, parts, f"{path}.{os.getpid()}.part")


def _info(path: str, shared_id: str, directory: str, key: bytes) -> Shared:
    with open(path, "rb") as src:
        data = src.read(1 << 16)
    info = json.loads(bytes(verify(key, data, context(INFO, shared_id))))
    return Shared(directory, shared_id, info["name"], info["size"], info["kind"], info["created"])


def listing(directory: str, key: bytes) -> list[Shared]:
    """The objects shared in the store at ``directory``, oldest first."""
    try:
        entries = list(os.scandir(os.path.join(directory, SHARED_DIR)))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if not entry.name.endswith(".info"):
            continue
        try:
            found.append(_info(entry.path, entry.name[: -len(".info")], directory, key))
        except FileNotFoundError:
            continue  # deleted meanwhile
        except (OSError, SignatureError, ValueError, KeyError) as exc:
            log.warning("left out the shared object file %s: %s", entry.path, exc)
    return sorted(found, key=lambda shared: shared.created)


_loaded: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # id: (object, memory held)
_held = [0]
_lock = threading.Lock()
loads_done = [0]  # objects this process has loaded from their files


def load(shared: Shared) -> Any:
    """The object of ``shared``, loaded once in this process and kept while it is used.

    Raises SharedObjectMissing (deleted from the store), or SignatureError (its file is
    not the one nbqueue wrote for it)."""
    with _lock:
        kept = _loaded.get(shared.id)
        if kept is not None:
            if os.path.exists(shared.path):
                _loaded.move_to_end(shared.id)
                return kept[0]
            _drop(shared.id)
            raise _missing(shared)
    obj, held = _read(shared, load_key(shared.directory))
    with _lock:
        loads_done[0] += 1
        if shared.id not in _loaded:
            _loaded[shared.id] = (obj, held)
            _held[0] += held
            while _held[0] > MEMORY and len(_loaded) > 1:
                _drop(next(iter(_loaded)))
    return obj


def _drop(shared_id: str) -> None:
    _held[0] -= _loaded.pop(shared_id)[1]


def forget() -> None:
    """Let go of every object this process loaded (they are freed once no task holds
    them)."""
    with _lock:
        _loaded.clear()
        _held[0] = 0


def _missing(shared: Shared) -> SharedObjectMissing:
    return SharedObjectMissing(
        f"the shared object {shared.name!r} (id {shared.id}) is not in the store at "
        f"{shared.directory}: it was deleted (Shared.delete()), or this process cannot "
        "reach that directory. Share it again with nbqueue.share() and send the tasks "
        "that use it again"
    )


def _read(shared: Shared, key: bytes) -> tuple[Any, int]:
    what = f"the shared object {shared.name!r} ({shared.id})"
    try:
        src, size = open_regular(shared.path, what)
    except StoreFileMissing:
        raise _missing(shared) from None
    with src:
        if size != HEADER_SIZE + shared.size:
            raise _damaged(
                what,
                shared.path,
                f"{size:,} bytes, where {HEADER_SIZE + shared.size:,} were written",
            )
        header = src.read(HEADER_SIZE)
        if header[4:20].hex() != shared.id:
            raise _damaged(what, shared.path, "it is the file of another object")
        head = src.read(len(_MAGIC) + _COUNT.size)
        if head[: len(_MAGIC)] != _MAGIC or len(head) < len(_MAGIC) + _COUNT.size:
            raise _damaged(what, shared.path, "it does not start as one")
        (count,) = _COUNT.unpack_from(head, len(_MAGIC))
        if count < 1 or len(head) + count * _FRAME.size > shared.size:
            raise _damaged(what, shared.path, f"its frame count ({count:,}) does not fit")
        head += src.read(count * _FRAME.size)
        frames = [
            _FRAME.unpack_from(head, len(_MAGIC) + _COUNT.size + i * _FRAME.size)
            for i in range(count)
        ]
        end = len(head)
        for offset, length in frames:
            if offset < end or offset + length > shared.size:
                raise _damaged(what, shared.path, "its frames do not fit in it")
            end = offset + length
        stream_offset, stream_length = frames[0]
        if stream_offset != len(head):
            raise _damaged(what, shared.path, "its pickled part is out of place")
        stream = src.read(stream_length)  # unpickled from this copy, once checked
        rest = _chunks(src, shared.size - len(head) - len(stream))
        try:
            check_parts(key, header, _chain(head, stream, rest), context(DATA, shared.name))
        except SignatureError as exc:
            raise SignatureError(f"{what} ({shared.path}) is refused: {exc}") from None
        buffers: list[Any] = []
        if count > 1:
            mapped = memoryview(mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ))
            buffers = [mapped[HEADER_SIZE + o : HEADER_SIZE + o + n] for o, n in frames[1:]]
    return pickle.loads(stream, buffers=buffers), len(stream)


def _chain(head: bytes, stream: bytes, rest: Iterator[Any]) -> Iterator[Any]:
    yield head
    yield stream
    yield from rest


def _chunks(src: Any, size: int) -> Iterator[memoryview]:
    """``size`` bytes of ``src``, a chunk at a time through one buffer (a short read
    ends it: the MAC then does not match)."""
    buffer = bytearray(min(size, _CHUNK))
    view = memoryview(buffer)
    while size > 0:
        n = src.readinto(view[: min(size, _CHUNK)])
        if not n:
            return
        yield view[:n]
        size -= n


def _damaged(what: str, path: str, why: str) -> SignatureError:
    return SignatureError(
        f"{what} ({path}) is not a whole nbqueue shared object: {why} (tampered or "
        "damaged); it is left unread"
    )
