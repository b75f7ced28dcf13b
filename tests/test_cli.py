"""`nbqueue cluster` and `nbqueue info`: a real cluster process in the background."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest

import nbqueue
from nbqueue import async_task, result, result_group
from nbqueue.errors import NoClusterWarning
from nbqueue.disk.directory import heartbeats
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
        while not heartbeats(broker.directory).clusters() and time.monotonic() < deadline:
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
        assert "group     cli: 10 done, 0 failed, 0 cancelled of 10; finished" in text
        assert info["groups"][0]["name"] == "cli" and info["groups"][0]["total"] == 10
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
    nbqueue.get_broker()  # an empty store: `nbqueue info` only reads stores that exist
    text = _run_cli("info", "--directory", store_dir).stdout
    assert "queued    0" in text and "none alive" in text


def test_version():
    done = _run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"nbqueue {nbqueue.__version__}"


def test_info_on_a_missing_store_makes_none(tmp_path):
    for name, make in (("typo", None), ("empty", "dir"), ("other", "file")):
        target = tmp_path / name
        if make:
            target.mkdir()
        if make == "file":
            (target / "notes.txt").write_text("not a store")
        before = sorted(p.name for p in tmp_path.rglob("*"))
        done = _run_cli("info", "--directory", name, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"no store at {target}" in done.stderr
        assert f"nbqueue cluster --directory {name}" in done.stderr
        assert f"configure(directory={name!r})" in done.stderr
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing was created


def _console_script():
    script = os.path.join(os.path.dirname(sys.executable), "nbqueue")
    if not os.path.exists(script):
        script = shutil.which("nbqueue", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the nbqueue console script is not installed beside this Python "
                    "(pip install -e . makes it)")
    return script


def test_console_script_cluster_imports_modules_beside_it(store_dir, tmp_path, monkeypatch):
    """`nbqueue cluster` started in a folder runs a task 'mymod.work' from mymod.py there,
    in its loky workers, as `python -m nbqueue cluster` would."""
    (tmp_path / "mymod.py").write_text("import os\n\n\ndef work(x):\n"
                                       "    return x * 2, os.getpid()\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # async_task imports the path at the call
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([_console_script(), "cluster", "--directory", store_dir,
                             "--workers", "1"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        broker = nbqueue.get_broker()
        deadline = time.monotonic() + 30
        while (not heartbeats(broker.directory).clusters() and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert heartbeats(broker.directory).clusters(), "the cluster did not start"
        task_id = async_task("mymod.work", 21)
        task = nbqueue.fetch(task_id, wait=WAIT)
        assert task is not None, "no result within the wait"
        assert task.success, task.result
        value, pid = task.result
        assert value == 42 and pid != proc.pid  # run in a loky worker, not the host
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "stopped; 1 done, 0 failed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
