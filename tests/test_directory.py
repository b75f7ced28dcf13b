"""nbqueue.disk.directory: one StoreDirectory per store directory, on real stores in temp
directories."""

from __future__ import annotations

import os
import pathlib
import shutil
import threading

import nbqueue
from nbqueue.disk.broker import Broker
from nbqueue.disk.directory import (StoreDirectory, drop, get_broker, get_store, heartbeats,
                                    sent, store_directory)
from nbqueue.disk.heartbeats import Heartbeats
from nbqueue.disk.store import Store
from nbqueue.disk.sent import Sent


def test_one_store_directory_per_absolute_path(tmp_path, monkeypatch):
    directory = str(tmp_path / "store")
    found = store_directory(directory)
    try:
        assert isinstance(found, StoreDirectory) and found.path == directory
        assert store_directory(directory) is found
        assert store_directory(directory + os.sep) is found
        assert store_directory(pathlib.Path(directory)) is found
        monkeypatch.chdir(tmp_path)
        assert store_directory("store") is found
        assert store_directory(os.path.join(".", "store")) is found
        other = store_directory("other")  # relative: from the working directory
        assert other is not found and other.path == str(tmp_path / "other")
        monkeypatch.chdir(tmp_path / "..")
        assert store_directory("store") is not found  # another directory from here
    finally:
        for path in (directory, str(tmp_path / "other"), str(tmp_path / ".." / "store")):
            drop(path)


def test_nothing_is_made_on_disk_until_a_part_is_used(tmp_path):
    directory = str(tmp_path / "store")
    try:
        memo = sent(directory)
        memo.count("g")
        assert store_directory(directory).sent is memo and memo.enqueued == {"g": 1}
        assert not os.path.exists(directory)  # what this process sent is memory only
        get_store(directory)
        assert os.path.isdir(os.path.join(directory, "results"))
        assert not os.path.exists(os.path.join(directory, "queue"))  # no broker yet
        get_broker(directory)
        assert os.path.isdir(os.path.join(directory, "queue"))
    finally:
        drop(directory)


def test_the_accessors_give_the_parts_of_the_one_object(store_dir):
    found = store_directory()  # the configured directory
    assert found is store_directory(store_dir) and found.path == os.path.abspath(store_dir)
    broker = get_broker()
    assert isinstance(broker, Broker) and broker is found.broker is get_broker(store_dir)
    assert isinstance(found.store, Store) and get_store(store_dir) is found.store
    assert isinstance(found.heartbeats, Heartbeats) and heartbeats(store_dir) is found.heartbeats
    assert isinstance(found.sent, Sent) and sent(store_dir) is found.sent
    assert broker.directory == found.store.directory == found.heartbeats.directory == found.path


def test_threads_at_once_make_one_of_each_part(tmp_path):
    directory = str(tmp_path / "shared")
    start = threading.Barrier(8, timeout=30)
    found: list[tuple] = []

    def use() -> None:
        start.wait()
        found.append((store_directory(directory), get_broker(directory), get_store(directory),
                      heartbeats(directory), sent(directory)))

    threads = [threading.Thread(target=use) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(found) == 8
        for parts in zip(*found):
            assert all(part is parts[0] for part in parts)
    finally:
        drop(directory)


def test_drop_forgets_every_part_and_closes_them(tmp_path, monkeypatch):
    directory = str(tmp_path / "store")
    old = store_directory(directory)
    parts = (old.broker, old.store, old.heartbeats, old.sent)
    old.sent.count("g", 3)
    monkeypatch.chdir(tmp_path)
    assert store_directory("store") is old
    old.broker.enqueue(b"kept")  # in the outbox, written behind
    drop(directory)
    try:
        new = store_directory(directory)
        assert new is not old and store_directory("store") is new  # every name forgotten
        assert all(a is not b for a, b in zip(parts, (new.broker, new.store, new.heartbeats,
                                                      new.sent)))
        assert new.sent.enqueued == {}
        assert new.broker.size() == 1  # the old broker wrote its outbox as it closed
    finally:
        drop(directory)


def test_drop_of_a_deleted_store_makes_nothing_again_and_reads_the_new_key(tmp_path):
    directory = str(tmp_path / "store")
    broker = get_broker(directory)
    broker.enqueue(b"gone")
    broker.flush()
    key = broker.key
    shutil.rmtree(directory)
    drop(directory, close=False)
    try:
        assert not os.path.exists(directory)
        again = get_broker(directory)  # a new store there: its own key, read anew
        assert again is not broker and again.key != key and again.size() == 0
    finally:
        drop(directory)


def test_dropping_a_directory_never_used_does_nothing(tmp_path):
    directory = tmp_path / "never"
    drop(directory)
    drop(directory, close=False)
    assert not directory.exists()


def test_a_cluster_and_the_api_share_the_parts_of_their_directory(store_dir):
    with nbqueue.Cluster(workers=1, directory=store_dir) as running:
        found = store_directory(store_dir)
        assert running.broker is found.broker and running.store is found.store
        assert running.heartbeats is found.heartbeats
        task_id = nbqueue.async_task("math.floor", 2.5, group="g")
        assert nbqueue.result(task_id, wait=30_000) == 2
        assert found.sent.enqueued == {"g": 1}
