"""nbqueue.filesystems: the file system of a store, and a store on a network one refused.

No NFS, SMB or sshfs server runs here: the decision is tested on the statfs magic
numbers and mount table types each one reports, and a store "on NFS" is one whose
detection (made once per directory and process) is what statfs and the mount table say
of an NFS mount: ``classify(NFS's magic, "nfs4")``, put where ``detect`` would put it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import pytest

import nbqueue
from nbqueue import conf
from nbqueue.disk import filesystems
from nbqueue.disk import signing
from nbqueue.errors import (ConfigurationError, NetworkFileSystemWarning, StoreError,
                            StoreLocationError)
from nbqueue.disk.filesystems import (FUSE_MAGIC, NETWORK_MAGICS, classify, detect,
                                 mount_output_type, mountinfo_type, statfs_type)
from nbqueue.disk.directory import drop
from tests import tasks_fixtures as fx

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]
NFS = 0x6969


# -- this machine's file systems -----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs mounted for the test."""
    point = tmp_path / "tmpfs"
    point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)], check=True,
                   timeout=30)
    try:
        yield str(point)
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True, timeout=30)


def test_this_machines_file_systems_are_local(tmp_path, tmpfs):
    for path, magics in [(str(tmp_path), None), ("/", None), (tmpfs, {0x01021994})]:
        found = detect(path)
        assert not found.network, found
        assert found.name not in ("", "unknown")
        kind = statfs_type(path)
        assert kind is not None and kind not in NETWORK_MAGICS
        if magics:
            assert kind in magics and found.name == "tmpfs" and found.mount == tmpfs
    # a path not made yet is judged by its nearest parent: the tmpfs
    assert detect(os.path.join(tmpfs, "a", "b")).mount == tmpfs
    with open("/proc/self/mountinfo") as src:
        table = src.read()
    root = mountinfo_type("/", table)
    assert root is not None and root[0] in ("ext4", "overlay", "xfs", "btrfs", "tmpfs", "zfs")


@pytest.mark.filterwarnings("error::nbqueue.errors.NetworkFileSystemWarning")
def test_a_store_on_a_local_tmpfs_is_used_without_a_word(tmpfs):
    store = os.path.join(tmpfs, ".nbqueue")
    try:
        nbqueue.configure(directory=store, sync=True)
        task = nbqueue.async_task(fx.add, 2, 3)
        assert nbqueue.result(task) == 5
        place = signing.anchor(store)
        assert place.filesystem.name == "tmpfs" and place.refusal is None
    finally:
        conf.reset()
        drop(store)


# -- the decision --------------------------------------------------------------------------


@pytest.mark.parametrize("magic,name", sorted(NETWORK_MAGICS.items()))
def test_each_network_file_system_is_network_by_its_magic_number(magic, name):
    assert classify(magic, None) == filesystems.FileSystem(name, True)
    assert classify(magic, "something") .network  # the magic number decides
    if magic & 0x80000000:  # as a 32-bit long reads it
        assert classify(magic - (1 << 32), None).network


@pytest.mark.parametrize("magic", [0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x794C7630,
                                   0x2FC12FC1])
def test_local_file_systems_are_local_by_their_magic_number(magic):
    assert not classify(magic, None).network
    assert not classify(magic, "nfs").network  # the magic number decides


@pytest.mark.parametrize("fstype,network", [
    ("fuse.sshfs", True), ("fuse.glusterfs", True), ("fuse.ceph-fuse", True),
    ("fuse.rclone", True), ("fuse.s3fs", True), ("fuse.gcsfuse", True), ("fuse.juicefs", True),
    ("fuse.gocryptfs", False), ("fuse.encfs", False), ("fuse.bindfs", False),
    ("fuseblk", False), (None, False)])
def test_fuse_is_network_when_its_mount_table_type_is(fstype, network):
    found = classify(FUSE_MAGIC, fstype)
    assert found.network is network
    assert found.name == (fstype or "fuse")


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs",
                                    "afs", "ceph", "glusterfs", "9p", "beegfs", "fuse.sshfs",
                                    "afpfs", "webdav"])
def test_without_statfs_the_mount_table_type_decides(fstype):
    assert classify(None, fstype).network


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "apfs",
                                    "hfs", "ufs", "fuse.encfs", None])
def test_without_statfs_local_types_are_local(fstype):
    assert not classify(None, fstype).network


MOUNTINFO = textwrap.dedent("""\
    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
    40 27 0:50 / /home rw,relatime shared:5 - nfs4 filer:/export/home rw,vers=4.2
    41 40 254:3 / /home/alice/scratch rw,relatime - ext4 /dev/vdb rw
    42 27 0:51 / /homestead rw - tmpfs tmpfs rw
    43 27 0:52 / /mnt/my\\040files rw master:1 - fuse.sshfs alice@far:/data rw
    44 27 0:53 / /lustre rw - lustre 10.0.0.1@tcp:/fs rw
    45 44 0:54 / /lustre rw - tmpfs tmpfs rw
    """)


@pytest.mark.parametrize("path,expected", [
    ("/home/alice/nb/.nbqueue", ("nfs4", "/home")),
    ("/home", ("nfs4", "/home")),
    ("/home/alice/scratch/.nbqueue", ("ext4", "/home/alice/scratch")),
    ("/homestead/.nbqueue", ("tmpfs", "/homestead")),
    ("/mnt/my files/x", ("fuse.sshfs", "/mnt/my files")),
    ("/lustre/x", ("tmpfs", "/lustre")),  # mounted over it later: that one holds the path
    ("/srv", ("ext4", "/")),
])
def test_the_mount_table_gives_the_longest_mount_point_holding_the_path(path, expected):
    assert mountinfo_type(path, MOUNTINFO) == expected


def test_the_output_of_mount_is_read_on_linux_and_macos():
    linux = "filer:/export on /home type nfs4 (rw,vers=4.2)\n/dev/vda on / type ext4 (rw)\n"
    macos = ("/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
             "//alice@server/share on /Volumes/share (smbfs, nodev, nosuid, mounted by alice)\n")
    assert mount_output_type("/home/a", linux) == ("nfs4", "/home")
    assert mount_output_type("/tmp", linux) == ("ext4", "/")
    assert mount_output_type("/Volumes/share/nb", macos) == ("smbfs", "/Volumes/share")
    assert mount_output_type("/Users/alice", macos) == ("apfs", "/")
    assert classify(None, "smbfs").network and not classify(None, "apfs").network


# -- a store on a network file system ------------------------------------------------------


@pytest.fixture
def on_nfs(tmp_path):
    """A store path that this process detects as on NFS (``nfs4`` mounted at
    ``tmp_path``), as the statfs call and the mount table would there."""
    store = str(tmp_path / ".nbqueue")
    conf.reset()
    signing._filesystems[store] = classify(NFS, "nfs4", str(tmp_path))
    yield store
    conf.reset()
    drop(store)
    signing._filesystems.pop(store, None)
    signing._warned.discard(store)
    signing._hosted.discard(store)
    signing._serving.clear()


def _make_store(store: str) -> tuple[str, str]:
    """A store made as on a local disk, with a done task and a queued one; then forgotten
    by this process, as a new process would find it."""
    fs = signing._filesystems.pop(store)
    nbqueue.configure(directory=store)
    done = nbqueue.async_task(fx.add, 20, 22, sync=True, group="made")
    queued = nbqueue.async_task(fx.add, 1, 1)
    nbqueue.flush()
    conf.reset()
    drop(store)
    signing._filesystems[store] = fs
    return done, queued


def test_a_new_store_on_nfs_is_refused_saying_what_to_do(on_nfs, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    nbqueue.configure(directory=on_nfs)
    with pytest.raises(StoreLocationError) as caught:
        nbqueue.async_task(fx.add, 1, 2)
    message = str(caught.value)
    for part in ((f"the store directory {on_nfs} is on nfs4, a network file system mounted "
                  f"at {tmp_path}"), "can be corrupted", "nbqueue.configure(directory=...)",
                 "NBQUEUE_DIRECTORY", tempfile.gettempdir(), "$XDG_RUNTIME_DIR (/run/user/4242",
                 "configure(allow_network_fs=True)", "NBQUEUE_ALLOW_NETWORK_FS=1"):
        assert part in message
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, OSError)
    assert not os.path.exists(on_nfs)  # refused before anything was made
    with pytest.raises(StoreLocationError):
        nbqueue.Cluster(workers=1, directory=on_nfs)


def test_an_existing_store_on_nfs_is_read_with_a_warning_and_never_written(on_nfs):
    done, queued = _make_store(on_nfs)
    nbqueue.configure(directory=on_nfs)
    with pytest.warns(NetworkFileSystemWarning, match="This process may read the store") as w:
        assert nbqueue.result(done) == 42
    assert len(w) == 1 and on_nfs in str(w[0].message) and "nfs4" in str(w[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetworkFileSystemWarning)  # once per store
        assert nbqueue.fetch(done).success and nbqueue.result(queued) is None
        broker = nbqueue.get_broker()
        assert broker.size() == 1
        with pytest.raises(StoreLocationError, match="nbqueue does not write to it"):
            nbqueue.async_task(fx.add, 3, 4)  # at the call: nothing taken
        with pytest.raises(StoreLocationError):
            nbqueue.async_task(fx.add, 3, 4, sync=True)  # its outcome would be saved
        with pytest.raises(StoreLocationError):
            nbqueue.async_task(fx.length, b"x" * (2 << 20))  # its arguments' file
        with pytest.raises(StoreLocationError):
            nbqueue.async_iter(fx.add, [(1, 2), (3, 4)])
        with pytest.raises(StoreLocationError):
            nbqueue.cancel(queued)
        with pytest.raises(StoreLocationError):
            nbqueue.delete_group("made", tasks=True)
        with pytest.raises(StoreLocationError):
            nbqueue.Cluster(workers=1, directory=on_nfs).start()
        nbqueue.flush()
        assert nbqueue.count_group("made") == 1
        assert broker.size() == 1 and nbqueue.result(queued) is None
    blobs = os.path.join(on_nfs, "blobs")
    assert not os.path.exists(blobs) or os.listdir(blobs) == []  # no arguments' file


def test_allow_network_fs_writes_with_one_warning(on_nfs):
    nbqueue.configure(directory=on_nfs, allow_network_fs=True, sync=True)
    with pytest.warns(NetworkFileSystemWarning, match="allow_network_fs=True lets nbqueue "
                      "write to it") as w:
        task = nbqueue.async_task(fx.add, 1, 2)
        assert nbqueue.result(task) == 3
        assert nbqueue.result(nbqueue.async_task(fx.add, 2, 2)) == 4
    assert len(w) == 1 and on_nfs in str(w[0].message)


def test_a_cluster_allowed_on_nfs_runs_every_task(on_nfs):
    nbqueue.configure(directory=on_nfs, allow_network_fs=True)
    with pytest.warns(NetworkFileSystemWarning):
        ids = [nbqueue.async_task(fx.add, i, 1, group="allowed") for i in range(20)]
    with nbqueue.Cluster(workers=1, directory=on_nfs):
        assert nbqueue.result_group("allowed", count=20, wait=60_000) is not None
    assert sorted(nbqueue.result(i) for i in ids) == list(range(1, 21))


def test_allowing_after_a_store_was_opened_for_reading_lets_it_write(on_nfs):
    done, _ = _make_store(on_nfs)
    nbqueue.configure(directory=on_nfs)
    with pytest.warns(NetworkFileSystemWarning):
        assert nbqueue.result(done) == 42
    with pytest.raises(StoreLocationError):
        nbqueue.async_task(fx.add, 1, 2, sync=True)
    nbqueue.configure(allow_network_fs=True)
    assert nbqueue.result(nbqueue.async_task(fx.add, 1, 2, sync=True)) == 3


def test_a_worker_writes_for_its_host_without_a_warning(on_nfs):
    _make_store(on_nfs)
    signing.hosted(on_nfs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetworkFileSystemWarning)
        place = signing.anchor(on_nfs)
        place.check()
    assert place.refusal is None


_SCRIPT = """
import sys, warnings
from nbqueue.disk import filesystems
from nbqueue.disk import signing
import nbqueue
from tests import tasks_fixtures as fx
store = sys.argv[1]
signing._filesystems[store] = filesystems.classify(0x6969, "nfs", "/mnt/filer")
nbqueue.configure(directory=store, sync=True)
try:
    print("result", nbqueue.result(nbqueue.async_task(fx.add, 1, 2)))
except nbqueue.errors.StoreLocationError as exc:
    print("refused", exc)
"""


@pytest.mark.parametrize("value,written", [("1", True), ("yes", True), ("0", False),
                                           (None, False)])
def test_the_environment_variable_allows_it(tmp_path, value, written):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("NBQUEUE_ALLOW_NETWORK_FS", None)
    if value is not None:
        env["NBQUEUE_ALLOW_NETWORK_FS"] = value
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    if written:
        assert done.stdout.strip() == "result 3"
        assert "NetworkFileSystemWarning" in done.stderr and "allow_network_fs" in done.stderr
    else:
        assert done.stdout.startswith("refused the store directory") and "nfs" in done.stdout


def test_a_bad_value_of_the_option_or_variable_is_named(monkeypatch):
    with pytest.raises(ConfigurationError, match="'allow_network_fs' must be True or False"):
        nbqueue.configure(allow_network_fs="yes")
    monkeypatch.setenv("NBQUEUE_ALLOW_NETWORK_FS", "maybe")
    conf.reset()
    with pytest.raises(ConfigurationError, match="NBQUEUE_ALLOW_NETWORK_FS"):
        conf.settings()
    monkeypatch.setenv("NBQUEUE_ALLOW_NETWORK_FS", "on")
    conf.reset()
    assert conf.settings().allow_network_fs is True
    conf.reset()


# -- nbqueue info --------------------------------------------------------------------------


def _info(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = ["-c", script, *args] if script else ["-m", "nbqueue", *args]
    return subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_info_shows_the_file_system_of_the_store(tmpfs):
    store = os.path.join(tmpfs, "store")
    nbqueue.configure(directory=store)
    try:
        nbqueue.async_task(fx.add, 1, 1, sync=True)
        text = _info("info", "--directory", store)
        assert text.returncode == 0 and "fs        tmpfs (local)" in text.stdout
        figures = json.loads(_info("info", "--directory", store, "--json").stdout)
        assert figures["filesystem"] == "tmpfs" and figures["network_filesystem"] is False
    finally:
        conf.reset()
        drop(store)


_INFO = """
import sys
from nbqueue.disk import filesystems
from nbqueue.disk import signing
from nbqueue.cli import main
signing._filesystems[sys.argv[1]] = filesystems.classify(0xFF534D42, "cifs", "/mnt/share")
sys.exit(main(["info", "--directory", sys.argv[1]]))
"""


_CLUSTER = """
import sys
from nbqueue.disk import filesystems
from nbqueue.disk import signing
from nbqueue.cli import main
signing._filesystems[sys.argv[1]] = filesystems.classify(0x47504653, "gpfs", "/gpfs")
sys.exit(main(["cluster", "--directory", sys.argv[1], "--workers", "1"]))
"""


def test_nbqueue_cluster_on_a_network_file_system_is_refused(on_nfs):
    _make_store(on_nfs)
    refused = _info(on_nfs, script=_CLUSTER)
    assert refused.returncode == 2
    assert f"nbqueue: the store directory {on_nfs} is on gpfs" in refused.stderr


def test_info_reads_a_store_on_a_network_file_system_with_a_warning(on_nfs):
    _make_store(on_nfs)
    shown = _info(on_nfs, script=_INFO)
    assert shown.returncode == 0, shown.stderr
    assert "fs        cifs (network: read only here" in shown.stdout
    assert "queued    1" in shown.stdout and "done      1" in shown.stdout
    assert "NetworkFileSystemWarning" in shown.stderr and "cifs" in shown.stderr
