"""The private store directory, its key, and signed task packages.

A package is ``MAGIC + HMAC-SHA256(key, payload) + payload``. The key is created
once, 32 random bytes, in a 0600 file inside the 0700 store directory, so only the
user who owns the store can put work in it that a cluster will run. A package whose
signature does not check out is never unpickled.
"""

from __future__ import annotations

import hmac
import os
import pickle
import secrets
import stat
from typing import Any

from .errors import InsecureStoreError, SignatureError, StoreError

MAGIC = b"NBQ1"
_MAC_SIZE = 32
_HEADER = len(MAGIC) + _MAC_SIZE
KEY_FILE = "key"

_keys: dict[str, bytes] = {}


def _refuse_if_shared(path: str, what: str, fix: str) -> None:
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureStoreError(
            f"{what} {path} is open to other users (mode {stat.filemode(mode)}); anyone who "
            f"can read or write it can run code as you. Fix it with `{fix}`.")


def private_directory(directory: str | os.PathLike[str]) -> str:
    """Create ``directory`` as 0700 if needed; return its absolute path.

    Raises InsecureStoreError if it exists and other users can reach into it.
    """
    path = os.path.abspath(os.fspath(directory))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store directory {path}: {exc}; choose a "
                         "writable place with configure(directory=...)") from exc
    _refuse_if_shared(path, "the store directory", f"chmod 700 {path}")
    return path


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
    _refuse_if_shared(path, "the key file", f"chmod 600 {path}")
    with open(path) as src:
        text = src.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StoreError(f"the key file {path} is damaged; delete it (queued work signed "
                         "with the old key will then be refused) and try again")
    _keys[directory] = key
    return key


def sign(key: bytes, payload: bytes) -> bytes:
    """Wrap ``payload`` into a signed package."""
    return MAGIC + hmac.digest(key, payload, "sha256") + payload


def verify(key: bytes, package: Any) -> bytes:
    """Return the payload of a signed package; raise SignatureError saying why not."""
    if not isinstance(package, (bytes, bytearray)):
        raise SignatureError(f"package is a {type(package).__name__}, not bytes")
    if len(package) < _HEADER:
        raise SignatureError(f"package is truncated ({len(package)} bytes)")
    if package[:len(MAGIC)] != MAGIC:
        raise SignatureError("package has no nbqueue header (random or foreign bytes)")
    payload = bytes(package[_HEADER:])
    expected = hmac.digest(key, payload, "sha256")
    if not hmac.compare_digest(expected, bytes(package[len(MAGIC):_HEADER])):
        raise SignatureError("package signature does not match this store's key "
                             "(tampered, truncated, or signed with another key)")
    return payload


def pack(key: bytes, header: dict[str, Any]) -> bytes:
    """Pickle and sign a task header."""
    return sign(key, pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL))


def unpack(key: bytes, package: Any) -> dict[str, Any]:
    """Check and unpickle a package made by ``pack``."""
    payload = verify(key, package)
    try:
        header = pickle.loads(payload)
    except Exception as exc:  # signed but unreadable: written by an incompatible version
        raise SignatureError(f"package is signed but cannot be read: {exc!r}") from exc
    if not isinstance(header, dict) or "id" not in header:
        raise SignatureError("package is signed but is not an nbqueue task")
    return header
