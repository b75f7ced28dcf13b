"""nbqueue.disk.sent: what this process sent to a store directory."""

from __future__ import annotations

import pytest

from nbqueue import async_task
from nbqueue.disk import sent as sent_module
from nbqueue.disk.sent import Sent
from nbqueue.disk.directory import sent

pytestmark = pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")


def test_sent_is_shared_per_directory(tmp_path):
    one, other = str(tmp_path / "one"), str(tmp_path / "other")
    assert sent(one) is sent(one)
    assert sent(one) is not sent(other)


def test_remember_keeps_the_newest(monkeypatch):
    monkeypatch.setattr(sent_module, "SENT_KEPT", 3)
    memo = Sent()
    for i in range(5):
        memo.remember(f"t{i}", "cached" if i % 2 else "unsaved")
    assert memo.unusual == {"t2": "unsaved", "t3": "cached", "t4": "unsaved"}


def test_async_task_counts_groups_and_unusual_tasks(broker):
    memo = sent(broker.directory)
    async_task("math.floor", 1.5, group="g")
    async_task("math.floor", 1.5, group="g", cached=True)
    unsaved = async_task("math.floor", 1.5, save=False)
    assert memo.enqueued == {"g": 2}
    assert memo.unusual[unsaved] == "unsaved" and len(memo.unusual) == 2
