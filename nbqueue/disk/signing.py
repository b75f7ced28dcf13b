"""The private store directory, its key, and signed packages.

A package is ``MAGIC + MAC + payload``: the MAC a keyed BLAKE2b of a small payload, a
keyed BLAKE3 of a large one (each the faster at that size; both are sound), taken of
every value the store holds. The MAC covers a ``context`` with the payload: what the
value is for (a value of the store's tables, the arguments or the result of one task,
the value file of one row), so a value signed for one task or use is refused in the
place of another (two tasks' files swapped); the context is fed to the MAC, not stored.
Values of stores written by earlier versions carry a MAC of the payload alone (and
large ones there an HMAC-SHA256): they are still read, bound to nothing.
The key is created once, 32 random bytes, in a 0600 file inside the 0700 store
directory, both owned by the user, so only they can put work in it that a cluster will
run. A package whose signature does not check out is never unpickled. A store directory
on a network file system is read but not written (``Anchor``, ``filesystems``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import threading
import warnings
from typing import Any

from blake3 import blake3

from nbqueue import conf
from nbqueue.disk import filesystems
from nbqueue.errors import (
    InsecureStoreError,
    NetworkFileSystemWarning,
    SignatureError,
    StoreError,
    StoreGone,
    StoreLocationError,
    StoreSwapped,
)

MAGIC = b"NBQ5"  # keyed BLAKE2b of the context and the payload
MAGIC_FAST = b"NBQ6"  # keyed BLAKE3 of the context and the payload, LARGE bytes or more
# of the payload alone, bound to nothing: values of stores of earlier versions, read
MAGIC_UNBOUND = b"NBQ2"  # keyed BLAKE2b
MAGIC_LARGE = b"NBQ3"  # HMAC-SHA256
MAGIC_UNBOUND_FAST = b"NBQ4"  # keyed BLAKE3
LARGE = 64 * 1024
_MAGICS = (MAGIC, MAGIC_FAST, MAGIC_UNBOUND, MAGIC_LARGE, MAGIC_UNBOUND_FAST)
_PERSON = b"nbqueue context"  # keeps bound BLAKE2b MACs apart from unbound ones
_MAC_SIZE = 32
_HEADER = len(MAGIC) + _MAC_SIZE
HEADER_SIZE = _HEADER  # bytes before the payload of a signed package
KEY_FILE = "key"

_keys: dict[str, bytes] = {}


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _refuse_if_unsafe(path: str, what: str, fix: str) -> os.stat_result:
    """Refuse a store directory or key file that is a symlink, is owned by another user,
    or is open to others: whoever controls it can run code as us (the cluster runs what
    the store holds), as OpenSSH refuses someone else's key file."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise StoreError(f"cannot read {what} {path}: {exc}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise InsecureStoreError(
            f"{what} {path} is a symbolic link; nbqueue uses only a real {what.split()[-1]} "
            f"owned by you. Point configure(directory=...) at the real path instead."
        )
    if info.st_uid != os.geteuid():
        raise InsecureStoreError(
            f"{what} {path} is owned by {_owner_name(info.st_uid)}, not by you "
            f"({_owner_name(os.geteuid())}); its queued tasks would run as you. Use a store "
            "of your own (configure(directory=...)), or have its owner run the cluster."
        )
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureStoreError(
            f"{what} {path} is open to other users (mode {stat.filemode(info.st_mode)}); "
            f"anyone who can read or write it can run code as you. Fix it with `{fix}`."
        )
    return info


def private_directory(directory: str | os.PathLike[str]) -> str:
    """Create ``directory`` as 0700 if needed; return its absolute path. The directory
    checked is held open from then on (``anchor``): what this process writes to the
    store later is written only while the path still leads to it.

    Raises InsecureStoreError if it exists and other users can reach into it, and
    StoreLocationError if it would be a new store on a network file system (see
    ``Anchor``).
    """
    return _open_anchor(os.path.abspath(os.fspath(directory))).path


class Anchor:
    """A store directory as it was checked: held open, known by its device and inode.

    Another user who may write the folder that holds the store can rename the store and
    put a directory of their own at its path; everything written to the store by path
    would then go to them. ``check()`` (one ``stat``) is called before each batch of
    writes and raises before anything is written there; a file the store creates itself
    is opened relative to ``fd``, the directory that was checked, whatever the path
    leads to now.

    ``filesystem`` is the file system the directory is on (``filesystems.detect``, once
    per directory and process). On a network one that ``allow_network_fs`` does not
    allow, ``refusal`` says why: the store is read, and ``check()`` raises
    StoreLocationError before any write batch. Opening a store and a thread's SQLite
    connection (``check_path()``) are not write batches: a process that only reads goes on.
    """

    def __init__(
        self,
        path: str,
        fd: int,
        info: os.stat_result,
        filesystem: filesystems.FileSystem | None = None,
        refusal: str | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        self.identity = (info.st_dev, info.st_ino)
        self.filesystem = filesystem
        self.refusal = refusal

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.close(self.fd)

    def check(self) -> None:
        """Raise before a batch of writes: StoreLocationError if the store is on a network
        file system it may not write to; otherwise as ``check_path``."""
        if self.refusal is not None:
            self._refuse()
        self.check_path()

    def _refuse(self) -> None:
        """Raise StoreLocationError, unless ``allow_network_fs`` was set since the store
        was opened (then warn once, and write from now on)."""
        if conf.settings().allow_network_fs or self.path in _hosted:
            _allowed(self.path, self.filesystem)
            self.refusal = None
            return
        raise StoreLocationError(self.refusal)

    def check_path(self) -> None:
        """Raise unless the path still leads to this directory: InsecureStoreError
        (``StoreSwapped``) if something not private to this user is there now,
        StoreGone if the store was deleted or replaced by one of the user's own."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        except OSError as exc:
            raise StoreError(f"cannot reach the store directory {self.path}: {exc}") from exc
        if info is not None and (info.st_dev, info.st_ino) == self.identity:
            return
        now = self._where_now()
        if info is None:
            raise StoreGone(
                f"the store directory {self.path} was deleted or moved{now}; "
                "nothing more is written to it. Move it back, or restart this "
                "process to start a new store there"
            )
        if (
            stat.S_ISLNK(info.st_mode)
            or info.st_uid != os.geteuid()
            or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        ):
            raise StoreSwapped(
                f"the store directory {self.path} was replaced by "
                f"{'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'a directory'} "
                f"owned by {_owner_name(info.st_uid)} (mode {stat.filemode(info.st_mode)})"
                f"{now}: whoever can write its parent folder took its place, so nothing "
                "more is written there. Protect the parent folder (chmod o-w, or the sticky "
                "bit) and move the real store back, or configure(directory=...) elsewhere"
            )
        raise StoreGone(
            f"the store directory {self.path} was replaced by another one{now}; "
            "nothing more is written to the one this process opened. Restart "
            "this process to use the new one"
        )

    def _where_now(self) -> str:
        """Where the directory that was checked is now, as far as the system knows."""
        try:
            where = os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return ""
        return f" (the one this process opened is now {where})"


_anchors: dict[str, Anchor] = {}
_anchors_lock = threading.Lock()
_filesystems: dict[str, filesystems.FileSystem] = {}  # detected once per directory
_warned: set[str] = set()  # directories whose file system this process warned about
_hosted: set[str] = set()  # directories written for a cluster host (``hosted``)
_serving: list[str] = []  # the last of them: the store whose tasks this process runs


def hosted(directory: str) -> None:
    """This process runs tasks for a cluster host that writes the store at ``directory``
    (a worker): it writes there as its host does (spilled results, tasks enqueued by
    tasks), with no warning of its own. The host leased those tasks: a write to the
    store that its file system was checked for."""
    _hosted.add(directory)
    _serving[:] = [directory]


def serving() -> str | None:
    """The store directory whose tasks this process runs (a worker), or None."""
    return _serving[0] if _serving else None


def _filesystem(path: str) -> filesystems.FileSystem:
    found = _filesystems.get(path)
    if found is None:
        found = _filesystems[path] = filesystems.detect(path)
    return found


def _local_places() -> str:
    """Where a store can go instead: the local temporary folder, $XDG_RUNTIME_DIR."""
    user = os.environ.get("USER") or str(os.geteuid())
    local = os.path.join(tempfile.gettempdir(), f"nbqueue-{user}")
    places = f"the local temporary folder ({local})"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return places + (
        f" or $XDG_RUNTIME_DIR ({runtime}/nbqueue)" if runtime else " or $XDG_RUNTIME_DIR"
    )


def _network_refusal(path: str, fs: filesystems.FileSystem) -> str:
    mounted = f" mounted at {fs.mount}" if fs.mount else ""
    return (
        f"the store directory {path} is on {fs.name}, a network file system{mounted}: "
        "SQLite's locks and shared memory are not sound there and the store can be "
        "corrupted, so nbqueue does not write to it. Put the store on a local disk "
        "with nbqueue.configure(directory=...) or NBQUEUE_DIRECTORY, e.g. "
        f"{_local_places()}. If you know this file system's locking is sound, "
        "configure(allow_network_fs=True) or NBQUEUE_ALLOW_NETWORK_FS=1 lets nbqueue "
        "write to it"
    )


def _warn_once(path: str, text: str) -> None:
    if path not in _warned:
        _warned.add(path)
        warnings.warn(text, NetworkFileSystemWarning, stacklevel=4)


def _allowed(path: str, fs: filesystems.FileSystem | None) -> None:
    if path in _hosted:
        return
    name = fs.name if fs is not None else "a network file system"
    _warn_once(
        path,
        f"the store directory {path} is on {name}, a network file system; "
        "allow_network_fs=True lets nbqueue write to it. Its locks must be "
        "sound across every machine that uses the store, or it can be corrupted",
    )


def anchor(directory: str) -> Anchor:
    """The store directory at ``directory`` (absolute) as this process checked it; checked
    now if it was not yet (a worker process)."""
    found = _anchors.get(directory)
    return found if found is not None else _open_anchor(directory)


def _open_anchor(path: str) -> Anchor:
    """Create ``path`` as 0700 if needed, open it, refuse it if it is not private to
    this user, and hold it: the anchor of ``path`` from now on, unless the one held
    already is still what the path leads to.

    On a network file system that ``allow_network_fs`` does not allow, a new store (no
    key yet) is refused with StoreLocationError before anything is made; an existing
    one is opened to be read, with a warning, and its writes are refused."""
    fs = _filesystem(path)
    refusal = None
    if fs.network:
        if conf.settings().allow_network_fs or path in _hosted:
            _allowed(path, fs)
        else:
            refusal = _network_refusal(path, fs)
            if not os.path.isfile(os.path.join(path, KEY_FILE)):
                raise StoreLocationError(refusal)
            _warn_once(
                path,
                f"{refusal}. This process may read the store; any write to "
                "it raises StoreLocationError",
            )
    with _anchors_lock:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store directory {path}: {exc}; choose a "
                "writable place with configure(directory=...)"
            ) from exc
        info = _refuse_if_unsafe(path, "the store directory", f"chmod 700 {path}")
        if not stat.S_ISDIR(info.st_mode):
            raise StoreError(
                f"the store directory {path} is not a directory; choose "
                "another path with configure(directory=...)"
            )
        held = _anchors.get(path)
        if held is not None and held.identity == (info.st_dev, info.st_ino):
            if refusal is None:
                held.refusal = None  # allowed since it was opened
            return held
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"cannot open the store directory {path}: {exc}") from exc
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)  # replaced between the check and the open
            raise InsecureStoreError(
                f"the store directory {path} changed while it was "
                "being opened; check who else can write its parent "
                "folder, then try again"
            )
        found = _anchors[path] = Anchor(path, fd, opened, fs, refusal)
        return found


def make_directory(parent: int, name: str) -> None:
    """Create the folder ``name`` (relative: its parents exist) under the directory
    ``parent`` (a descriptor) as 0700, whatever the umask; nothing if it exists."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return
    os.chmod(name, 0o700, dir_fd=parent)  # the umask may have taken more away


def make_directories(parent: int, relative: str) -> None:
    """``make_directory`` of every level of ``relative`` under ``parent``."""
    done = ""
    for name in relative.split(os.sep):
        if name:
            done = os.path.join(done, name)
            make_directory(parent, done)


def create_file(parent: int | None, name: str) -> int:
    """Open a new file ``name`` (under the directory ``parent``, a descriptor, if given)
    for writing, as 0600 whatever the umask, never through a symbolic link: its fd."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=parent,
    )
    os.fchmod(fd, 0o600)  # the umask may have taken more away
    return fd


def load_key(directory: str) -> bytes:
    """The signing key of the store at ``directory`` (absolute), created on first use."""
    key = _keys.get(directory)
    if key is not None:
        return key
    path = os.path.join(directory, KEY_FILE)
    if not os.path.exists(path):
        # written whole under a name of its own, then linked into place: processes that
        # start together never read a key file that another one is still writing
        draft = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            os.link(draft, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(draft)
    info = _refuse_if_unsafe(path, "the key file", f"chmod 600 {path}")
    damaged = (
        f"the key file {path} is damaged ({{}}); delete it (queued work signed with "
        "the old key will then be refused) and try again"
    )
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(damaged.format("it is not a regular file"))
    try:
        with open(path) as src:
            text = src.read(1024).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(damaged.format(f"it cannot be read: {exc}")) from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StoreError(damaged.format("it does not hold a key of 32 hex-encoded bytes"))
    _keys[directory] = key
    return key


def forget_key(directory: str) -> None:
    """Read the key of ``directory`` again next time, and check the directory again (the
    store was deleted or replaced)."""
    _keys.pop(directory, None)
    with _anchors_lock:
        _anchors.pop(directory, None)


def context(role: str, name: str = "") -> bytes:
    """What a signature binds a value to besides its bytes: its ``role`` (``"value"``: a
    value of the store's tables; ``"arguments"``, ``"result"``: a task's file) and the
    ``name`` of what it belongs to (the task id, the value file)."""
    return f"{role}:{name}".encode()


VALUE = context("value")  # a value of the store's tables, or a message


def _mac(key: bytes, payload: Any, magic: bytes, bound: bytes) -> bytes:
    if magic == MAGIC and bound is VALUE:  # every task's package: a keyed start, copied
        mac = _value_macs.get(key)
        if mac is None:
            mac = _value_macs[key] = hashlib.blake2b(
                _framed(VALUE), key=key, digest_size=_MAC_SIZE, person=_PERSON
            )
        mac = mac.copy()
        mac.update(payload)
        return mac.digest()
    return _parts_mac(key, (payload,), magic, bound)


_value_macs: dict[bytes, Any] = {}


def _parts_mac(key: bytes, parts: Any, magic: bytes, bound: bytes) -> bytes:
    """The MAC of the kind ``magic`` names of the payload ``parts`` make, and of the
    context ``bound`` when that kind binds one (its length first: the two cannot be
    told apart otherwise)."""
    if magic == MAGIC:
        mac: Any = hashlib.blake2b(_framed(bound), key=key, digest_size=_MAC_SIZE, person=_PERSON)
    elif magic == MAGIC_FAST:
        mac = blake3(_framed(bound), key=_fast_key(key, _BOUND_CONTEXT))
    elif magic == MAGIC_UNBOUND:
        mac = hashlib.blake2b(key=key, digest_size=_MAC_SIZE)
    elif magic == MAGIC_UNBOUND_FAST:
        mac = blake3(key=_fast_key(key, _UNBOUND_CONTEXT))
    else:
        mac = hmac.new(key, digestmod="sha256")
    for part in parts:
        mac.update(part)
    return mac.digest()


def _framed(bound: bytes) -> bytes:
    return len(bound).to_bytes(4, "little") + bound


def _fast_key(key: bytes, purpose: str) -> bytes:
    """The store key's own subkey for keyed BLAKE3 (which takes exactly 32 bytes)."""
    derived = _fast_keys.get((key, purpose))
    if derived is None:
        derived = _fast_keys[key, purpose] = blake3(key, derive_key_context=purpose).digest()
    return derived


_fast_keys: dict[tuple[bytes, str], bytes] = {}
_UNBOUND_CONTEXT = "nbqueue 2026-12-05 MAC of large values"
_BOUND_CONTEXT = "nbqueue MAC of a value and what it is for"


def seal(key: bytes, payload: Any, bound: bytes = VALUE) -> tuple[bytes, Any]:
    """The header (magic and MAC) that signs ``payload`` for the context ``bound``:
    keyed BLAKE2b for small ones (a task's package: the quickest to start), keyed BLAKE3
    from LARGE bytes on (several times faster than HMAC-SHA256 on large values, and it
    lets go of the GIL)."""
    magic = MAGIC if len(payload) < LARGE else MAGIC_FAST  # bytes, or a view of bytes
    return magic + _mac(key, payload, magic, bound), payload


def seal_parts(key: bytes, parts: list[Any], bound: bytes = VALUE) -> bytes:
    """The header that ``seal`` makes for the payload ``b"".join(parts)``, without joining
    them."""
    size = sum(memoryview(part).nbytes for part in parts)
    magic = MAGIC if size < LARGE else MAGIC_FAST
    return magic + _parts_mac(key, parts, magic, bound)


def sign(key: bytes, payload: bytes, bound: bytes = VALUE) -> bytes:
    """Wrap ``payload`` into a signed package, for the context ``bound``."""
    header, _ = seal(key, payload, bound)
    return header + payload


def verify(key: bytes, package: Any, bound: bytes = VALUE) -> memoryview:
    """The payload of a package signed for the context ``bound``, as a view (no copy of
    a large one); raise SignatureError saying why not."""
    if not isinstance(package, (bytes, bytearray)):
        raise SignatureError(f"package is a {type(package).__name__}, not bytes")
    if len(package) < _HEADER:
        raise SignatureError(f"package is truncated ({len(package)} bytes)")
    magic = bytes(package[: len(MAGIC)])
    if magic not in _MAGICS:
        raise SignatureError("package has no nbqueue header (random or foreign bytes)")
    payload = memoryview(package)[_HEADER:]
    if not hmac.compare_digest(_mac(key, payload, magic, bound), package[len(MAGIC) : _HEADER]):
        raise SignatureError(_MISMATCH)
    return payload


def check(key: bytes, header: bytes, payload: Any, bound: bytes = VALUE) -> None:
    """Check ``payload`` against the ``header`` that ``seal`` made for it, the two read
    apart (a large file's payload is read into a bytes object of its own); raise
    SignatureError saying why it does not match."""
    check_parts(key, header, (payload,), bound)


def check_parts(key: bytes, header: bytes, parts: Any, bound: bytes = VALUE) -> None:
    """``check`` of the payload ``b"".join(parts)``, without joining them."""
    magic = header[: len(MAGIC)]
    if len(header) != HEADER_SIZE or magic not in _MAGICS:
        raise SignatureError("file has no nbqueue header (truncated, random or foreign bytes)")
    if not hmac.compare_digest(_parts_mac(key, parts, magic, bound), header[len(MAGIC) :]):
        raise SignatureError(_MISMATCH)


_MISMATCH = (
    "package signature does not match this store's key and its use (tampered, "
    "truncated, signed with another key, or made for another task or use: "
    "swapped with another file)"
)
