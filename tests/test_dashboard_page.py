"""The dashboard's page in a real Chromium: JupyterLab's ``nbqueue`` side panel and the page
of ``nbqueue dashboard``, watching a store that a plain Python process (no kernel) fills and
a terminal cluster (``nbqueue cluster``) serves.

In JupyterLab the panel shows the store, its cluster, a group's counts rising to its total,
a running task's reported progress and a failure's traceback; its Cancel, Retry and Stop
act on the store; a kernel restart changes nothing in it. ``nbqueue dashboard`` shows the
same markup. Pages go to ``test-artifacts/dashboard/`` (``panel.png`` is the README's
picture, copied to ``docs/`` by hand: tests never write into the checkout's docs).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_browser import (CHROMIUM, SERVER_START, Lab, _chromium_page,
                                _private_jupyter_env)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
SEEN = 60_000  # ms for the page to show what the store holds (it polls every second)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                reason=f"no Chromium at {CHROMIUM}: run `make test`")

# What the plain Python process sends: a group of naps whose counts rise, a task that
# reports its progress for a while (then cancelled from the page), a failure whose
# traceback the page shows (then retried from the page, once a flag lets it succeed).
SENDER = """
import sys
import nbqueue
from tests import tasks_fixtures as fx
nbqueue.configure(directory=sys.argv[1])
if sys.argv[3] == "first":
    nbqueue.async_task(fx.reports, 600, 0.1, group="long", task_name="reporter")
    nbqueue.async_task(fx.fails_until, sys.argv[2], "abc", group="shaky", task_name="shaky-one")
else:  # sent once the page shows the store: its counts rise on screen
    for i in range(12):
        nbqueue.async_task(fx.nap, 0.4, i, group="sweep")
nbqueue.flush()
"""


def _send(what: str, store: str, flag: Path, env: dict[str, str]) -> None:
    """Send tasks to ``store`` from a plain Python process (no kernel)."""
    sent = subprocess.run([sys.executable, "-c", SENDER, store, str(flag), what], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def _started(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


def _row(panel, kind: str, row_id: str):
    return panel.locator(f'[data-nbqueue-kind="{kind}"][data-nbqueue-id="{row_id}"]')


def _watch_the_store(page, store: str, flag: Path, cluster: subprocess.Popen, lab: Lab,
                     env: dict[str, str], shot: Path | None = None) -> None:
    """What the panel shows and does, wherever it is drawn."""
    from playwright.sync_api import expect

    panel = _row(page.locator("#nbqueue-panel"), "store", store)
    expect(panel).to_be_visible(timeout=SEEN)
    cluster_row = panel.locator('[data-nbqueue-kind="cluster"]')
    expect(cluster_row).to_have_count(1, timeout=SEEN)
    expect(cluster_row).to_contain_text("running", timeout=SEEN)
    # a group's counts rise to its total
    _send("sweep", store, flag, env)
    sweep = _row(panel, "group", "sweep")
    expect(sweep).to_have_attribute("data-total", "12", timeout=SEEN)
    seen = []
    deadline = time.monotonic() + SEEN / 1000
    while time.monotonic() < deadline:
        seen.append(int(sweep.get_attribute("data-done")))
        if seen[-1] == 12:
            break
        time.sleep(0.2)
    assert seen[-1] == 12 and any(0 < done < 12 for done in seen), seen
    assert sweep.get_attribute("data-failed") == "0"
    # a running task's reported progress
    reporter = panel.locator('[data-nbqueue-kind="task"]', has_text="reporter")
    expect(reporter).to_contain_text(re.compile(r"\d+ ?/ ?600"), timeout=SEEN)
    # a failure's traceback
    failure = panel.locator('[data-nbqueue-kind="failure"]', has_text="shaky-one")
    expect(failure).to_contain_text("RuntimeError", timeout=SEEN)
    failure.get_by_role("button", name="traceback of shaky-one").click()
    expect(panel.locator("pre", has_text="Traceback (most recent call last)").first
           ).to_be_visible(timeout=SEEN)
    if shot is not None:
        page.screenshot(path=str(shot))
    # a kernel restart changes nothing in the panel
    kernel = lab.api("/api/kernels", method="POST")
    lab.api(f"/api/kernels/{kernel['id']}/restart", method="POST")
    expect(reporter).to_contain_text(re.compile(r"\d+ ?/ ?600"), timeout=SEEN)
    # Cancel
    reporter.get_by_role("button", name="Cancel").click()
    long_group = _row(panel, "group", "long")
    expect(long_group).to_have_attribute("data-cancelled", "1", timeout=SEEN)
    expect(reporter).to_have_count(0, timeout=SEEN)
    # Retry: the flag lets it succeed now
    flag.touch()
    failure.get_by_role("button", name="Retry").click()
    shaky = _row(panel, "group", "shaky")
    expect(shaky).to_have_attribute("data-done", "1", timeout=SEEN)
    expect(shaky).to_have_attribute("data-failed", "0", timeout=SEEN)
    # Stop
    cluster_row.get_by_role("button", name="Stop").click()
    cluster.wait(SEEN / 1000)
    expect(panel.locator("text=no cluster serves this store").first).to_be_visible(timeout=SEEN)


@pytest.mark.timeout(300)
def test_the_side_panel_and_the_dashboard_page_watch_a_store_filled_without_a_kernel(tmp_path):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "lab"
    root.mkdir()
    store = str(root / ".nbqueue")
    flag = tmp_path / "flag"
    lab = Lab(root, tmp_path / "jupyter", ARTIFACTS / "jupyterlab.log")
    env = _private_jupyter_env(tmp_path / "others")
    env["PYTHONPATH"] = str(ROOT)
    processes = []
    try:
        lab.wait_ready(SERVER_START)
        _send("first", store, flag, env)
        cluster = _started([sys.executable, "-m", "nbqueue", "cluster", "--directory", store,
                            "--workers", "2"], env, ARTIFACTS / "cluster.log")
        processes.append(cluster)
        with _chromium_page(tmp_path, ARTIFACTS / "failure.png",
                            ARTIFACTS / "browser-console.log") as page:
            page.goto(f"{lab.url}/lab?token={lab.token}", timeout=SERVER_START * 1000)
            tab = page.locator('.jp-SideBar [title="nbqueue"]').first
            expect(tab).to_be_visible(timeout=SERVER_START * 1000)
            tab.click()
            page.locator("#nbqueue-panel input").first.fill(store)
            page.get_by_role("button", name="Add").click()  # the lab's own registry
            _watch_the_store(page, store, flag, cluster, lab, env, ARTIFACTS / "panel.png")

        # nbqueue dashboard: the same page, outside Jupyter, on a second store
        store = str(root / "second")
        cluster = _started([sys.executable, "-m", "nbqueue", "cluster", "--directory", store,
                            "--workers", "2"], env, ARTIFACTS / "cluster-2.log")
        processes.append(cluster)
        flag.unlink()
        _send("first", store, flag, env)
        board_log = ARTIFACTS / "dashboard.log"
        board = _started([sys.executable, "-m", "nbqueue", "dashboard", "--port", "0",
                          "--directory", store], env, board_log)
        processes.append(board)
        deadline = time.monotonic() + SERVER_START
        while not (found := re.search(r"http://\S+token=\S+", board_log.read_text())):
            assert time.monotonic() < deadline and board.poll() is None, board_log.read_text()
            time.sleep(0.1)
        with _chromium_page(tmp_path, ARTIFACTS / "failure-dashboard.png",
                            ARTIFACTS / "dashboard-console.log") as page:
            page.goto(found[0], timeout=SERVER_START * 1000)
            _watch_the_store(page, store, flag, cluster, lab, env)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    finally:
        for process in processes:
            _end(process)
        left = lab.stop()
    assert not left, f"processes left after JupyterLab stopped: {left}"
