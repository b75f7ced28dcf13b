"""The stores of this user, as the dashboard lists them (``nbqueue.disk.registry``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nbqueue
from nbqueue.disk import registry
from nbqueue.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_registry(tmp_path, monkeypatch):
    """A registry of the test's own, and this process's memory of what it listed cleared."""
    path = tmp_path / "registry" / "stores"
    monkeypatch.setenv("NBQUEUE_REGISTRY", str(path))
    monkeypatch.setattr(registry, "_registered", set())
    return path


def test_a_store_lists_itself_when_its_queue_is_opened(own_registry, store_dir):
    assert registry.stores() == []
    nbqueue.get_broker()
    assert registry.stores() == [store_dir]
    assert oct(os.stat(own_registry.parent).st_mode & 0o777) == "0o700"
    assert oct(os.stat(own_registry).st_mode & 0o777) == "0o600"


def test_stores_of_other_processes_are_listed_once_each(own_registry, tmp_path):
    directories = [str(tmp_path / f"s{i}") for i in range(3)]
    code = (
        "import sys, nbqueue\n"
        "for d in sys.argv[1:]:\n"
        "    nbqueue.get_broker(d)\n"
    )
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code, *directories], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    assert registry.stores() == directories
    assert own_registry.read_text().splitlines() == directories


def test_a_store_deleted_drops_out_of_the_list(own_registry, tmp_path):
    kept, gone = str(tmp_path / "kept"), str(tmp_path / "gone")
    for directory in (kept, gone):
        nbqueue.get_broker(directory)
    from nbqueue.disk.directory import drop
    drop(gone)
    import shutil
    shutil.rmtree(gone)
    assert registry.stores() == [kept]
    assert own_registry.read_text().splitlines() == [kept]


@pytest.mark.skipif(os.getuid() != 0, reason="making a store of another user needs root")
def test_a_store_of_another_user_is_never_listed(own_registry, tmp_path):
    other = tmp_path / "other"
    nbqueue.get_broker(str(other))
    from nbqueue.disk.directory import drop
    drop(str(other))
    for path in (other, other / "key"):
        os.chown(path, 65534, 65534)
    assert registry.stores() == []
    with pytest.raises(StoreError, match="not an nbqueue store of this user"):
        registry.add(str(other))


def test_adding_by_path_names_what_is_wrong(own_registry, tmp_path, store_dir):
    with pytest.raises(StoreError, match="there is no directory"):
        registry.add(str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="no 'key' file"):
        registry.add(str(tmp_path / "plain"))
    nbqueue.get_broker()
    own_registry.unlink()
    assert registry.add(store_dir) == store_dir
    assert registry.stores() == [store_dir]
