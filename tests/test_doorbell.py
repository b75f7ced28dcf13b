"""Doorbells: a process that enqueues wakes the clusters of other processes at once."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import nbqueue
from nbqueue.disk.broker import Broker
from nbqueue.disk.doorbell import BELLS, Bells, Doorbell
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(60)


def test_a_ring_wakes_the_bell_of_another_process(tmp_path):
    rung = threading.Event()
    bell = Doorbell(str(tmp_path), "cluster-a", rung.set)
    try:
        assert os.listdir(tmp_path / BELLS) == ["cluster-a"]
        Bells(str(tmp_path)).ring()
        assert rung.wait(5)
    finally:
        bell.close()
    assert os.listdir(tmp_path / BELLS) == []


def test_a_process_does_not_ring_its_own_clusters(tmp_path):
    rung = threading.Event()
    bell = Doorbell(str(tmp_path), "own", rung.set)
    try:
        bells = Bells(str(tmp_path))
        bells.own.add(bell.path)
        bells.ring()
        assert not rung.wait(0.3)
    finally:
        bell.close()


def test_the_bell_of_a_dead_cluster_is_removed_and_ringing_goes_on(tmp_path):
    folder = tmp_path / BELLS
    folder.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / "killed"))
    dead.close()  # as a SIGKILL leaves it: the file stays, nobody reads
    rung = threading.Event()
    bell = Doorbell(str(tmp_path), "alive", rung.set)
    try:
        Bells(str(tmp_path)).ring()
        assert rung.wait(5)
        assert sorted(os.listdir(folder)) == ["alive"]
    finally:
        bell.close()


def test_ringing_with_no_bells_or_no_folder_is_quiet(tmp_path):
    Bells(str(tmp_path / "nothing")).ring()
    Bells(str(tmp_path)).ring()


def test_a_path_too_long_for_a_socket_leaves_the_cluster_polling(tmp_path):
    deep = tmp_path / ("d" * 120)
    with pytest.raises(OSError):
        Doorbell(str(deep), "x", lambda: None)
    directory = str(deep / "store")
    broker = Broker(directory)
    try:
        with nbqueue.Cluster(workers=1, directory=directory):
            assert nbqueue.result(nbqueue.async_task(fx.add, 2, 3, broker=broker),
                                  wait=30000, broker=broker) == 5
    finally:
        broker.close()
        from nbqueue.disk.directory import drop
        drop(directory)


def test_a_cluster_has_a_bell_while_it_runs_and_other_brokers_ring_it(store_dir):
    cluster = nbqueue.Cluster(workers=1, directory=store_dir).start()
    try:
        bells = os.listdir(os.path.join(store_dir, BELLS))
        assert bells == [cluster.id]
        other = Broker(store_dir)  # as another process would have
        try:
            for _ in range(50):  # an idle moment: nothing else wakes the cluster
                cluster.wakeup.clear()
                if not cluster.wakeup.wait(0.2):
                    break
            # The cluster's feeder clears the event it wakes on: a ring can be taken
            # before this thread looks. Ring again until this thread sees one.
            for _ in range(25):
                cluster.wakeup.clear()
                other.enqueue_again([])  # writes nothing, rings all the same
                if cluster.wakeup.wait(0.2):
                    break
            else:
                raise AssertionError("25 rings, and the cluster's event was never seen set")
        finally:
            other.close()
    finally:
        cluster.stop(wait=5)
    assert os.listdir(os.path.join(store_dir, BELLS)) == []
