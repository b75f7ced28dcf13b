"""`nbqueue cluster` and `nbqueue info`: a real cluster process in the background."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings

import pytest

import nbqueue
from nbqueue import async_task, result, result_group
from nbqueue.errors import NoClusterWarning
from tests import tasks_fixtures as fx

pytestmark = pytest.mark.timeout(90)
WAIT = 20_000


def _run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "nbqueue", *args], capture_output=True,
                          text=True, timeout=60, **kwargs)


def test_command_line_cluster_and_info(store_dir):
    proc = subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--workers", "1"], stderr=subprocess.PIPE, text=True)
    try:
        broker = nbqueue.get_broker()
        deadline = time.monotonic() + 30
        while not broker.clusters() and time.monotonic() < deadline:
            time.sleep(0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NoClusterWarning)  # the cluster's heartbeat is seen
            ids = [async_task(fx.add, i, 1, group="cli") for i in range(10)]
        assert result_group("cli", count=10, wait=WAIT * 2) is not None
        assert sorted(result(i) for i in ids) == list(range(1, 11))
        info = json.loads(_run_cli("info", "--directory", store_dir, "--json").stdout)
        assert info["done"] == 10 and info["queued"] == 0
        assert len(info["clusters"]) == 1 and info["clusters"][0]["pid"] == proc.pid
        text = _run_cli("info", "--directory", store_dir).stdout
        assert "done      10" in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopped; 10 done" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_bad_option_is_a_clear_error(store_dir):
    done = _run_cli("cluster", "--directory", store_dir, "--workers", "-3")
    assert done.returncode == 2 and "option 'workers'" in done.stderr


def test_info_with_no_cluster(store_dir):
    text = _run_cli("info", "--directory", store_dir).stdout
    assert "queued    0" in text and "none alive" in text
