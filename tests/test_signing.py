"""nbqueue.signing: the private store directory, its key, and signed packages."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbqueue.disk import signing
from nbqueue.errors import InsecureStoreError, SignatureError, StoreError, StoreGone
from nbqueue.disk.signing import (MAGIC, load_key, private_directory, sign,
                             verify)
from tests.intruder import intruder  # noqa: F401 - a fixture

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def forget_keys():
    """load_key caches keys per directory; forget the ones a test loads."""
    before = set(signing._keys)
    yield
    for directory in set(signing._keys) - before:
        signing._keys.pop(directory, None)


# -- the private directory -------------------------------------------------------------


def test_private_directory_is_created_0700(tmp_path):
    target = tmp_path / "a" / "b" / "store"
    path = private_directory(target)
    assert path == os.path.abspath(target)
    assert os.path.isdir(path)
    assert _mode(path) == 0o700
    assert private_directory(str(target)) == path  # an existing private dir is fine


def test_private_directory_refuses_a_shared_directory(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    with pytest.raises(InsecureStoreError) as caught:
        private_directory(shared)
    message = str(caught.value)
    assert f"chmod 700 {shared}" in message
    assert "other users" in message
    assert isinstance(caught.value, PermissionError)
    os.chmod(shared, 0o700)
    assert private_directory(shared) == str(shared)


def test_private_directory_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as caught:
        private_directory(blocker / "store")
    assert "configure(directory=" in str(caught.value)


# -- the key ---------------------------------------------------------------------------------


def test_key_file_is_0600_created_once_and_reused(tmp_path, forget_keys):
    directory = private_directory(tmp_path / "store")
    key = load_key(directory)
    path = os.path.join(directory, signing.KEY_FILE)
    assert len(key) == 32
    assert _mode(path) == 0o600
    with open(path) as src:
        text = src.read()
    assert bytes.fromhex(text.strip()) == key

    assert load_key(directory) == key
    signing._keys.pop(directory)  # as a new process would: read it from the file
    assert load_key(directory) == key
    with open(path) as src:
        assert src.read() == text  # not rewritten


def test_different_stores_have_different_keys(tmp_path, forget_keys):
    one = load_key(private_directory(tmp_path / "one"))
    two = load_key(private_directory(tmp_path / "two"))
    assert one != two


def test_key_file_open_to_others_is_refused(tmp_path, forget_keys):
    directory = private_directory(tmp_path / "store")
    path = os.path.join(directory, signing.KEY_FILE)
    with open(path, "w") as out:
        out.write(os.urandom(32).hex())
    os.chmod(path, 0o644)
    with pytest.raises(InsecureStoreError) as caught:
        load_key(directory)
    assert f"chmod 600 {path}" in str(caught.value)
    assert directory not in signing._keys


def test_key_file_made_readable_later_is_refused_on_next_load(tmp_path, forget_keys):
    directory = private_directory(tmp_path / "store")
    load_key(directory)
    path = os.path.join(directory, signing.KEY_FILE)
    os.chmod(path, 0o644)
    signing._keys.pop(directory)  # a new process
    with pytest.raises(InsecureStoreError, match="chmod 600"):
        load_key(directory)


def test_damaged_key_file_is_reported(tmp_path, forget_keys):
    directory = private_directory(tmp_path / "store")
    path = os.path.join(directory, signing.KEY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("not hex at all")
    with pytest.raises(StoreError, match="damaged"):
        load_key(directory)


OTHER_UID = 65534  # "nobody"


def _foreign_store(tmp_path):
    """A store made private by another user: directory 0700 and key 0600, theirs."""
    directory = private_directory(tmp_path / "theirs")
    key = os.path.join(directory, signing.KEY_FILE)
    with open(key, "w") as out:
        out.write("ab" * 32)
    os.chmod(key, 0o600)
    return directory, key


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_store_owned_by_another_user_is_refused(tmp_path, forget_keys):
    """As OpenSSH refuses another user's key: their queued tasks would run as us."""
    directory, key = _foreign_store(tmp_path)
    os.chown(key, OTHER_UID, OTHER_UID)
    with pytest.raises(InsecureStoreError, match=f"the key file {key} is owned by .*uid "
                       f"{OTHER_UID}.*not by you"):
        load_key(directory)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(InsecureStoreError, match=f"the store directory {directory} is owned "
                       f"by .*uid {OTHER_UID}"):
        private_directory(directory)
    import nbqueue
    with pytest.raises(InsecureStoreError):
        nbqueue.Cluster(directory=directory)


def test_symlinked_store_or_key_is_refused(tmp_path, forget_keys):
    real = private_directory(tmp_path / "real")
    link = tmp_path / "link"
    os.symlink(real, link)
    with pytest.raises(InsecureStoreError, match="is a symbolic link"):
        private_directory(link)
    directory = private_directory(tmp_path / "store")
    elsewhere = tmp_path / "elsewhere-key"
    elsewhere.write_text("ab" * 32)
    os.chmod(elsewhere, 0o600)
    os.symlink(elsewhere, os.path.join(directory, signing.KEY_FILE))
    with pytest.raises(InsecureStoreError, match="the key file .* is a symbolic link"):
        load_key(directory)


@pytest.mark.parametrize("content, why", [
    ("abcd", "does not hold a key"),
    (None, "is not a regular file"),
    (b"\xff\xfe not text", "cannot be read"),
])
def test_a_short_unreadable_or_odd_key_is_a_clear_error(tmp_path, forget_keys, content, why):
    directory = private_directory(tmp_path / "store")
    path = os.path.join(directory, signing.KEY_FILE)
    if content is None:
        os.mkdir(path, 0o700)
    else:
        with open(path, "wb" if isinstance(content, bytes) else "w") as out:
            out.write(content)
        os.chmod(path, 0o600)
    with pytest.raises(StoreError, match=f"the key file {path} is damaged \\(it {why}"):
        load_key(directory)


# -- sign / verify ---------------------------------------------------------------------------------


def test_sign_verify_roundtrip():
    package = sign(KEY, b"payload")
    assert package.startswith(MAGIC)
    assert verify(KEY, package) == b"payload"
    assert verify(KEY, bytearray(package)) == b"payload"
    assert verify(KEY, sign(KEY, b"")) == b""


def _reason(package, key=KEY):
    with pytest.raises(SignatureError) as caught:
        verify(key, package)
    assert isinstance(caught.value, ValueError)
    return str(caught.value)


def test_each_bad_package_is_refused_with_its_reason():
    package = sign(KEY, b"the payload")
    tampered = bytearray(package)
    tampered[-1] ^= 0x01

    non_bytes = _reason("a string")
    truncated = _reason(package[:20])
    random_bytes = _reason(b"Z" + os.urandom(63))  # long enough, wrong header
    bad_mac = _reason(bytes(tampered))
    other_key = _reason(package, key=OTHER_KEY)
    cut_payload = _reason(package[:-3])

    assert "not bytes" in non_bytes and "str" in non_bytes
    assert "truncated (20 bytes)" in truncated
    assert "no nbqueue header" in random_bytes
    assert "does not match" in bad_mac
    # a MAC cannot tell tampering from another key or a cut payload: one reason covers them
    assert other_key == bad_mac == cut_payload
    assert len({non_bytes, truncated, random_bytes, bad_mac}) == 4


def test_none_and_memoryview_are_not_bytes():
    assert "NoneType" in _reason(None)
    assert "memoryview" in _reason(memoryview(sign(KEY, b"x")))


# -- properties ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused(data):
    with pytest.raises(SignatureError):
        verify(KEY, data)
    with pytest.raises(SignatureError):
        verify(KEY, MAGIC + data)  # even with the right header


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=200), st.booleans())
def test_verify_returns_payload_only_when_signed_with_the_key(payload, right_key):
    package = sign(KEY if right_key else OTHER_KEY, payload)
    if right_key:
        assert verify(KEY, package) == payload
    else:
        with pytest.raises(SignatureError):
            verify(KEY, package)


@settings(max_examples=300, deadline=None, database=None)
@given(st.data())
def test_flipping_any_single_byte_is_detected(data):
    payload = data.draw(st.binary(max_size=100), label="payload")
    package = bytearray(sign(KEY, payload))
    index = data.draw(st.integers(0, len(package) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    package[index] ^= flip
    with pytest.raises(SignatureError):
        verify(KEY, bytes(package))


def test_processes_starting_together_share_one_whole_key(tmp_path):
    """Many processes creating the key at once all read the same complete key."""
    import subprocess
    import sys
    directory = str(tmp_path / "store")
    os.makedirs(directory, mode=0o700)
    code = ("import sys; from nbqueue.disk import signing; "
            "print(signing.load_key(sys.argv[1]).hex())")
    procs = [subprocess.Popen([sys.executable, "-c", code, directory],
                              stdout=subprocess.PIPE, text=True) for _ in range(12)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(keys) == 1 and len(keys.pop()) == 64
    assert sorted(os.listdir(directory)) == ["key"]  # no drafts left behind


def test_large_payloads_are_signed_and_checked_too():
    """From signing.LARGE bytes on, keyed BLAKE3 (a subkey of the store's key) signs."""
    payload = os.urandom(signing.LARGE + 10)
    package = sign(KEY, payload)
    assert package.startswith(signing.MAGIC_FAST) and verify(KEY, package) == payload
    tampered = bytearray(package)
    tampered[-1] ^= 1
    with pytest.raises(SignatureError, match="does not match"):
        verify(KEY, bytes(tampered))
    for other in (signing.MAGIC, signing.MAGIC_LARGE):  # the other MACs' headers
        with pytest.raises(SignatureError, match="does not match"):
            verify(KEY, other + package[len(other):])


def test_large_values_of_earlier_stores_are_still_checked():
    """Stores written before BLAKE3 signed large values with HMAC-SHA256 (NBQ3)."""
    import hmac
    payload = os.urandom(signing.LARGE + 10)
    package = signing.MAGIC_LARGE + hmac.digest(KEY, payload, "sha256") + payload
    assert verify(KEY, package) == payload
    header = package[:signing.HEADER_SIZE]
    signing.check_parts(KEY, header, [payload[:5], payload[5:]])
    with pytest.raises(SignatureError, match="does not match"):
        signing.check(KEY, header, payload[:-1])


def test_a_payload_signed_in_parts_is_checked_whole_and_the_other_way_round():
    payload = os.urandom(3 * signing.LARGE + 7)
    header = sign(KEY, payload)[:signing.HEADER_SIZE]
    cut = len(payload) // 3
    assert signing.seal_parts(KEY, [payload[:cut], memoryview(payload)[cut:]]) == header
    signing.check_parts(KEY, header, [payload[:1], payload[1:cut], payload[cut:]])
    flipped = bytes([payload[cut] ^ 1])  # a byte changed (one set to 0 may be 0 already)
    for changed in (payload[:-1], payload + b"x", payload[:cut] + flipped + payload[cut + 1:]):
        with pytest.raises(SignatureError, match="does not match"):
            signing.check_parts(KEY, header, [changed])
    small = b"a small package"
    assert signing.seal_parts(KEY, [small[:3], small[3:]]) == sign(KEY, small)[:signing.HEADER_SIZE]
    with pytest.raises(SignatureError, match="no nbqueue header"):
        signing.check_parts(KEY, b"XXXX" + header[4:], [payload])


@pytest.mark.parametrize("size", [100, signing.LARGE + 10])
def test_a_signature_binds_what_the_value_is_for(size):
    """The context (role and task) is part of what is signed, not of the package: the
    same bytes signed for one task or use are refused for another, whole or in parts."""
    payload = os.urandom(size)
    arguments = signing.context("arguments", "task-1")
    package = sign(KEY, payload, arguments)
    assert len(package) == signing.HEADER_SIZE + size
    assert verify(KEY, package, arguments) == payload
    header = package[:signing.HEADER_SIZE]
    signing.check_parts(KEY, header, [payload[:7], payload[7:]], arguments)
    assert signing.seal_parts(KEY, [payload[:7], payload[7:]], arguments) == header
    for other in (signing.context("arguments", "task-2"), signing.context("result", "task-1"),
                  signing.VALUE, signing.context("arguments", "task-"),
                  signing.context("arguments", "task-11")):
        with pytest.raises(SignatureError, match="made for another task or use"):
            verify(KEY, package, other)
        with pytest.raises(SignatureError, match="does not match"):
            signing.check(KEY, header, payload, other)
    assert verify(KEY, sign(KEY, payload)) == payload  # a value of the tables by default
    with pytest.raises(SignatureError):
        verify(KEY, sign(KEY, payload), arguments)


def test_the_context_cannot_be_moved_into_the_payload():
    """A bound package read as one of the unbound kinds, its context's bytes taken for
    payload, is refused: the two kinds of MAC are apart."""
    payload = os.urandom(200)
    bound = signing.context("result", "t")
    package = sign(KEY, payload, bound)
    mac = package[len(MAGIC):signing.HEADER_SIZE]
    framed = len(bound).to_bytes(4, "little") + bound + payload
    for magic in (signing.MAGIC_UNBOUND, signing.MAGIC_UNBOUND_FAST, signing.MAGIC_LARGE):
        with pytest.raises(SignatureError, match="does not match"):
            verify(KEY, magic + mac + framed)


def test_values_of_stores_of_earlier_versions_are_still_read_bound_to_nothing():
    """Earlier versions signed the payload alone (NBQ2 BLAKE2b, NBQ4 BLAKE3): read, and
    since nothing bound them, in any context."""
    from blake3 import blake3
    import hashlib
    small, large = os.urandom(100), os.urandom(signing.LARGE + 10)
    old_small = (signing.MAGIC_UNBOUND
                 + hashlib.blake2b(small, key=KEY, digest_size=32).digest() + small)
    subkey = blake3(KEY, derive_key_context="nbqueue 2026-12-05 MAC of large values").digest()
    old_large = signing.MAGIC_UNBOUND_FAST + blake3(large, key=subkey).digest() + large
    for package, payload in ((old_small, small), (old_large, large)):
        assert verify(KEY, package) == payload
        assert verify(KEY, package, signing.context("result", "any")) == payload
        tampered = bytearray(package)
        tampered[-1] ^= 1
        with pytest.raises(SignatureError, match="does not match"):
            verify(KEY, bytes(tampered))


# -- the store a worker serves ---------------------------------------------------------------


def test_a_worker_serves_the_store_its_host_named_last(tmp_path):
    """``hosted`` is what makes a process a worker of a store: ``serving`` names that store
    (a wait for a task of it, in one of its tasks, may wait for itself)."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    before = list(signing._serving)  # empty unless an in-process dask worker ran here
    try:
        signing.hosted(first)
        assert signing.serving() == first
        signing.hosted(second)
        assert signing.serving() == second
        assert {first, second} <= signing._hosted  # it writes both as their host does
    finally:
        signing._hosted.difference_update((first, second))
        signing._serving[:] = before


# -- the store directory as it was checked ---------------------------------------------------


def test_a_store_directory_replaced_or_deleted_fails_its_check(tmp_path, forget_keys):
    """The directory checked is held open; ``check`` (one stat) says when the path no
    longer leads to it, and where the one that was checked is now."""
    directory = private_directory(tmp_path / "store")
    place = signing.anchor(directory)
    assert signing.anchor(directory) is place and private_directory(directory) == directory
    place.check()
    os.rename(directory, directory + ".old")
    with pytest.raises(StoreGone, match=f"was deleted or moved .*now {directory}.old"):
        place.check()
    os.mkdir(directory, 0o700)  # one of our own: not a security matter, but not it either
    with pytest.raises(StoreGone, match="replaced by another one") as caught:
        place.check()
    assert not isinstance(caught.value, InsecureStoreError)
    os.rmdir(directory)
    os.rename(directory + ".old", directory)  # moved back: the same directory again
    place.check()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_store_directory_put_in_place_by_another_user_is_insecure(tmp_path, forget_keys):
    directory = private_directory(tmp_path / "store")
    place = signing.anchor(directory)
    os.rename(directory, directory + ".old")
    os.mkdir(directory, 0o700)
    os.chown(directory, OTHER_UID, OTHER_UID)
    with pytest.raises(InsecureStoreError, match=f"{directory} was replaced by a directory "
                       f"owned by .*uid {OTHER_UID}.*nothing more is written there") as caught:
        place.check()
    assert isinstance(caught.value, StoreGone) and isinstance(caught.value, PermissionError)


@pytest.mark.filterwarnings("ignore::nbqueue.NoClusterWarning")
def test_store_swapped_by_another_user_takes_no_task_and_gets_no_file(intruder):
    """Another user who may write the store's parent folder renames the store and puts a
    directory of its own at its path. Large arguments are refused at the call, small
    tasks at the next put or flush, and nothing at all is written in their directory;
    once the real store is back at its path, every task accepted is written and runs."""
    import nbqueue
    from nbqueue import Cluster, async_task, conf, result
    from nbqueue.disk.directory import drop
    from tests import tasks_fixtures as fx

    store = os.path.join(intruder.parent, ".nbqueue")
    conf.reset()
    nbqueue.configure(directory=store)
    try:
        before = [async_task(fx.add, 1), async_task(fx.length, b"x" * (2 << 20))]
        nbqueue.flush()
        moved = intruder.swap(store)
        with pytest.raises(InsecureStoreError, match="replaced by a directory owned by"):
            async_task(fx.length, b"y" * (2 << 20))  # its file would go there: refused
        accepted = async_task(fx.add, 2)  # in the outbox: the write behind finds the swap
        with pytest.raises(InsecureStoreError, match="not in the queue yet.*replaced by"):
            nbqueue.flush()
        with pytest.raises(InsecureStoreError):
            async_task(fx.add, 3)  # refused, as long as the store is not back
        assert intruder.files(store) == []
        assert len(os.listdir(os.path.join(moved, "blobs"))) == 1  # the one before
        intruder.give_back(store, moved)
        nbqueue.flush()  # the same directory at its path again: the task accepted goes in
        with Cluster(workers=1, directory=store):
            assert [result(t, wait=60_000) for t in before + [accepted]] == [1, 2 << 20, 2]
    finally:
        conf.reset()
        drop(store)
