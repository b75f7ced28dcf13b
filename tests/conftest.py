"""Shared fixtures: a real store in a temp directory, a real loky cluster on it; the
plugin that runs the tests side by side (``tests/side_by_side.py``)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

import nbqueue
from nbqueue import conf
from nbqueue.disk.directory import drop


@pytest.fixture(autouse=True)
def _no_panels_of_earlier_tests():
    """Complete widget panels are held and watched by their process: those of one test
    must not wake up in the next."""
    yield
    panels = sys.modules.get("nbqueue.display.group_panel")
    if panels is not None:
        panels._finished.forget()


@pytest.fixture
def store_dir(tmp_path):
    """A fresh private store directory, made the configured default for the test."""
    directory = str(tmp_path / "store")
    conf.reset()
    nbqueue.configure(directory=directory)
    yield directory
    conf.reset()
    drop(directory)


@pytest.fixture
def broker(store_dir):
    return nbqueue.get_broker()


@pytest.fixture
def cluster(store_dir):
    """A running two-worker loky cluster on the test's store, stopped afterwards."""
    running = nbqueue.Cluster(workers=2, directory=store_dir).start()
    yield running
    running.stop(wait=5)


# The stores the tests make are listed in a registry of the test run, not in the user's
# (their processes, kernels and servers inherit it).
os.environ.setdefault("NBQUEUE_REGISTRY", os.path.join(tempfile.mkdtemp(), "stores"))

pytest_plugins = ["tests.side_by_side"]  # xdist's units of work, tests run alone, the order


@pytest.fixture
def slot_dir(tmp_path):
    """An empty folder standing for a cluster host's slot folder (its workers' slot files)."""
    path = tmp_path / "slots"
    path.mkdir()
    return str(path)
