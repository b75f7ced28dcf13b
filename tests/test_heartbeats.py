"""nbqueue.heartbeats: the clusters of a store, on a real store in a temp directory."""

from __future__ import annotations

import time

import pytest

from nbqueue.disk.directory import heartbeats


@pytest.fixture
def beats(broker):
    return heartbeats(broker.directory)


def test_heartbeats_beat_clusters_forget(beats, broker):
    assert beats.clusters() == []
    beats.beat("c1", {"id": "c1", "workers": 2}, ttl=30)
    beats.beat("c2", {"id": "c2", "workers": 4}, ttl=30)
    assert sorted(info["id"] for info in beats.clusters()) == ["c1", "c2"]

    beats.beat("c1", {"id": "c1", "workers": 8}, ttl=30)  # a beat replaces the info
    infos = {info["id"]: info for info in beats.clusters()}
    assert infos["c1"]["workers"] == 8

    beats.forget("c2")
    assert [info["id"] for info in beats.clusters()] == ["c1"]
    beats.forget("never-there")


def test_heartbeat_expires_after_ttl(beats, broker):
    beats.beat("short", {"id": "short"}, ttl=0.4)
    beats.beat("long", {"id": "long"}, ttl=30)
    assert len(beats.clusters()) == 2
    time.sleep(0.6)
    assert [info["id"] for info in beats.clusters()] == ["long"]


def test_heartbeats_do_not_touch_the_queue(beats, broker):
    beats.beat("c", {"id": "c"}, ttl=30)
    assert broker.size() == 0
    assert broker.lease("w", 10, 30) == []


def test_a_stopped_cluster_is_recorded_with_why_newest_first(beats):
    beats.record_stop("old", {"id": "old", "error": "its feeder thread failed"})
    time.sleep(0.01)
    beats.record_stop("new", {"id": "new", "error": "the store was deleted"})
    stopped = beats.stopped_clusters()
    assert [info["id"] for info in stopped] == ["new", "old"]
    assert stopped[0]["error"] == "the store was deleted" and stopped[0]["stopped"] > 0
    assert beats.clusters() == []  # not alive


def test_one_heartbeats_per_store_in_a_process(broker):
    assert heartbeats(broker.directory) is heartbeats(broker.directory)
