"""The file system a store directory is on, and whether it is a network one.

The store is SQLite in write-ahead-log mode: its locks and its shared-memory index
(the ``-shm`` file, mapped into every process) are sound only on a local file system.
Over NFS, Lustre, GPFS, SMB and their kind, locks are emulated, lost or not shared, and
the store can be corrupted, as SQLite's documentation warns.

On Linux the type is ``statfs``'s ``f_type`` (libc, through ctypes), and the mount
table (``/proc/self/mountinfo``: the longest mount point holding the path) gives its
name and, for FUSE, which file system serves it (``fuse.sshfs``). Elsewhere the output
of ``mount`` is that table. ``classify`` is the decision alone, on those two facts.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

# statfs f_type of network file systems (linux/magic.h and the file systems' sources)
NETWORK_MAGICS: dict[int, str] = {
    0x6969: "nfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x5346414F: "afs",  # OpenAFS
    0x6B414653: "afs",  # the kernel's AFS
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x564C: "ncpfs",
    0x73757245: "coda",
    0x19830326: "beegfs",
    0xAAD7AAEA: "panfs",
    0x20030528: "pvfs2",
}
FUSE_MAGIC = 0x65735546  # any FUSE file system: the mount table says which one
# statfs f_type of common local ones, to name them when the mount table cannot
LOCAL_MAGICS: dict[int, str] = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x858458F6: "ramfs",
    0x73717368: "squashfs",
    0xE0F5E1E2: "erofs",
    0x4D44: "vfat",
    0x5346544E: "ntfs",
    0x2011BAB0: "exfat",
    0xF15F: "ecryptfs",
    0x61756673: "aufs",
}
# mount table types of network file systems (Linux, macOS and the BSDs)
NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "afs",
        "openafs",
        "ceph",
        "glusterfs",
        "9p",
        "ncpfs",
        "coda",
        "beegfs",
        "panfs",
        "pvfs2",
        "orangefs",
        "afpfs",
        "webdav",
        "davfs",
        "lizardfs",
        "moosefs",
    }
)
# FUSE file systems that serve files of another machine (mount table ``fuse.<name>``)
NETWORK_FUSE = frozenset(
    {
        "sshfs",
        "glusterfs",
        "ceph-fuse",
        "ceph",
        "s3fs",
        "gcsfuse",
        "rclone",
        "juicefs",
        "mfs",
        "moosefs",
        "lizardfs",
        "mfsmount",
        "davfs",
        "goofys",
        "blobfuse",
        "blobfuse2",
        "curlftpfs",
        "cvmfs2",
        "beegfs",
        "quobyte",
        "weka",
        "alluxio-fuse",
        "objectivefs",
    }
)


@dataclass(frozen=True)
class FileSystem:
    """A file system as ``detect`` found it: its ``name`` (``nfs4``, ``fuse.sshfs``,
    ``ext4``, ``unknown``), whether it serves another machine's files (``network``),
    and the mount point that holds the store (``mount``, empty if unknown)."""

    name: str
    network: bool
    mount: str = ""


def classify(f_type: int | None, fstype: str | None, mount: str = "") -> FileSystem:
    """The file system of statfs type ``f_type`` and mount table type ``fstype`` (either
    may be None: unknown). The magic number decides where it names a network file system
    or a local one; for FUSE, or when statfs was not available, the mount table does."""
    if f_type is not None:
        f_type &= 0xFFFFFFFF  # a 32-bit long reads CIFS's magic as negative
    named = fstype or ""
    base = named.removeprefix("fuse.")
    if f_type in NETWORK_MAGICS:
        return FileSystem(named or NETWORK_MAGICS[f_type], True, mount)
    if f_type is not None and f_type != FUSE_MAGIC:
        return FileSystem(named or LOCAL_MAGICS.get(f_type, f"0x{f_type:x}"), False, mount)
    if named.startswith("fuse."):
        return FileSystem(named, base in NETWORK_FUSE, mount)
    if named:
        return FileSystem(named, named in NETWORK_TYPES, mount)
    return FileSystem("fuse" if f_type == FUSE_MAGIC else "unknown", False, mount)


def statfs_type(path: str) -> int | None:
    """statfs's ``f_type`` of ``path`` (Linux), or None where it cannot be had."""
    if not sys.platform.startswith("linux"):
        return None
    statfs = _libc_statfs()
    if statfs is None:
        return None
    buffer = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit
    if statfs(os.fsencode(path), buffer) != 0:
        return None
    kind = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_long
    return kind.from_buffer(buffer).value & 0xFFFFFFFF


_statfs: list[Any] = []  # libc's statfs, once found (None: not there)


def _libc_statfs() -> Any:
    if not _statfs:
        try:
            # this process's own symbols, libc's among them: ``find_library`` would run
            # ``ldconfig`` in a child process (a fork of every worker as it starts)
            libc = ctypes.CDLL(None, use_errno=True)
            function = libc.statfs
            function.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
            function.restype = ctypes.c_int
        except (OSError, AttributeError):
            function = None
        _statfs.append(function)
    return _statfs[0]


def _unescape(field: str) -> str:
    """A mount point as the mount table writes it (``\\040`` for a space ...)."""
    if "\\" not in field:
        return field
    return (
        field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")
    )


def mountinfo_type(path: str, table: str) -> tuple[str, str] | None:
    """(file system type, mount point) of the mount that holds ``path`` (absolute, with
    no symbolic links) in ``table``, the text of ``/proc/self/mountinfo``: the longest
    mount point that is ``path`` or one of its parents, the last mounted if several."""
    best: tuple[str, str] | None = None
    for line in table.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        dash = fields.index("-", 6)
        if len(fields) <= dash + 1 or not _holds(point, path):
            continue
        if best is None or len(point) >= len(best[1]):
            best = (fields[dash + 1], point)
    return best


def mount_output_type(path: str, output: str) -> tuple[str, str] | None:
    """(type, mount point) of the mount that holds ``path`` in the output of ``mount``:
    ``src on /point type T (...)`` (Linux) or ``src on /point (T, ...)`` (macOS, BSD)."""
    best: tuple[str, str] | None = None
    for line in output.splitlines():
        if " on " not in line:
            continue
        rest = line.split(" on ", 1)[1]
        if " type " in rest:
            point, _, tail = rest.partition(" type ")
            kind = tail.split()[0] if tail.split() else ""
        elif " (" in rest:
            point, _, tail = rest.rpartition(" (")
            kind = tail.split(",")[0].strip(" )")
        else:
            continue
        if kind and _holds(point, path) and (best is None or len(point) >= len(best[1])):
            best = (kind, point)
    return best


def _holds(point: str, path: str) -> bool:
    return path == point or point == "/" or path.startswith(point.rstrip("/") + "/")


def _mount_table(path: str) -> tuple[str, str] | None:
    try:
        with open("/proc/self/mountinfo") as src:
            return mountinfo_type(path, src.read())
    except OSError:
        pass
    try:
        done = subprocess.run(["mount"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return mount_output_type(path, done.stdout)


def detect(path: str) -> FileSystem:
    """The file system that holds ``path``, or would hold it (its nearest existing
    parent when it does not exist yet)."""
    where = os.path.realpath(path)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    found = _mount_table(where)
    fstype, mount = found if found is not None else (None, "")
    return classify(statfs_type(where), fstype, mount)
