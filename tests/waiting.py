"""Bounded waiting for tests: every wait has a limit."""

from __future__ import annotations

import time

import pytest


def wait_for(predicate, seconds: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {seconds} s")
        time.sleep(0.01)


def watched(task_id: str) -> bool:
    """Whether nbqueue's futures' waiter thread still waits for ``task_id``."""
    from nbqueue import futures

    waiter = futures._waiter
    with waiter._lock:
        return any(task_id in keys.watches for keys in waiter._keys.values())
