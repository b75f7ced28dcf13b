"""``nbqueue dashboard``: a real server process, its token, its XSRF check, its JSON, and
its actions on a real store and cluster (the page itself: ``test_browser``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

import nbqueue
from nbqueue import async_task, status
from nbqueue.dashboard.views import store_id
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"nbqueue dashboard: (http://127\.0\.0\.1:\d+)/nbqueue/\?token=(\S+)")


class Dashboard:
    """A running ``nbqueue dashboard``: its base URL and token."""

    def __init__(self, process: subprocess.Popen, base: str, token: str) -> None:
        self.process, self.base, self.token = process, base, token

    def request(self, path: str, body: dict | None = None, token: bool = True,
                opener=None) -> tuple[int, object]:
        """(status, JSON or text) of a GET, or a POST when ``body`` is given."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"token {self.token}"} if token else {}
        request = urllib.request.Request(self.base + "/nbqueue/" + path, data=data,
                                         headers=headers, method="GET" if data is None else "POST")
        try:
            with (opener or urllib.request.build_opener()).open(request, timeout=30) as answer:
                status_code, text = answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            status_code, text = exc.code, exc.read().decode()
        try:
            return status_code, json.loads(text)
        except ValueError:
            return status_code, text


@pytest.fixture
def dashboard(store_dir, tmp_path):
    """``nbqueue dashboard --directory <the test's store>`` on a free port, with a registry
    of its own (which lists that store alone), killed after."""
    nbqueue.get_broker()  # the store exists
    process = subprocess.Popen(
        [sys.executable, "-m", "nbqueue", "dashboard", "--directory", store_dir, "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, NBQUEUE_REGISTRY=str(tmp_path / "registry")),
    )
    try:
        line = process.stdout.readline()  # the server prints its URL once it listens
        found = URL.search(line)
        assert found, (line, process.poll(), process.poll() is not None and process.stderr.read())
        yield Dashboard(process, found[1], found[2])
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


def test_nothing_is_shown_without_the_token(dashboard):
    sid = store_id(nbqueue.get_broker().directory)
    for path in ("", "static/panel.js", "api/stores", f"api/stores/{sid}"):
        code, _ = dashboard.request(path, token=False)
        assert code == 403, path
    code, _ = dashboard.request("api/stores", token=False, body={"directory": "/"})
    assert code == 403


def test_the_token_in_the_url_signs_a_browser_in_whose_posts_need_the_xsrf_cookie(
        dashboard, cluster):
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    code, page = dashboard.request(f"?token={dashboard.token}", token=False, opener=browser)
    assert code == 200 and 'src="static/page.js"' in page
    assert {cookie.name for cookie in jar} >= {"nbqueue-dashboard", "_xsrf"}
    code, stores = dashboard.request("api/stores", token=False, opener=browser)
    assert code == 200 and stores == [{"id": store_id(cluster.directory),
                                       "directory": cluster.directory}]
    task = async_task(fx.nap, 30)
    wait_for(lambda: status(task)["state"] == "running", 30, "the nap running")
    sid = store_id(cluster.directory)
    cancel = f"api/stores/{sid}/tasks/{task}/cancel"
    code, _ = dashboard.request(cancel, body={}, token=False, opener=browser)
    assert code == 403 and status(task)["state"] == "running"  # no XSRF header: refused
    xsrf = next(cookie.value for cookie in jar if cookie.name == "_xsrf")
    browser.addheaders = [("X-XSRFToken", xsrf)]
    code, answer = dashboard.request(cancel, body={}, token=False, opener=browser)
    assert code == 200 and answer["ok"], answer
    wait_for(lambda: status(task)["state"] == "cancelled", 30, "the nap cancelled")


def test_a_stores_figures_and_the_actions_on_it(dashboard, cluster):
    sid = store_id(cluster.directory)
    failing = async_task(fx.reports, 2, 0.0, True, group="sweep")
    ok = async_task(fx.add, 1, 2, group="sweep")
    nbqueue.result_group("sweep", wait=30_000, count=2, failures=True)
    code, figures = dashboard.request(f"api/stores/{sid}")
    assert code == 200
    assert [c["id"] for c in figures["clusters"]] == [cluster.id]
    (group,) = figures["groups"]
    assert {k: group[k] for k in ("name", "done", "failed", "cancelled", "total")} == {
        "name": "sweep", "done": 1, "failed": 1, "cancelled": 0, "total": 2}
    (failure,) = figures["failures"]
    assert failure["id"] == failing and "RuntimeError: failed after reporting" in failure["error"]
    code, answer = dashboard.request(f"api/stores/{sid}/tasks/{ok}/retry", body={})
    assert code == 200 and not answer["ok"] and "no failure" in answer["message"]
    code, answer = dashboard.request(f"api/stores/{sid}/groups/sweep/retry", body={})
    assert code == 200 and answer["ok"], answer
    wait_for(lambda: nbqueue.fetch(failing) is not None and not nbqueue.fetch(failing).success
             and nbqueue.fetch(failing).attempt_count == 2, 30, "the failure run again")
    code, task = dashboard.request(f"api/stores/{sid}/tasks/{failing}")
    assert code == 200 and task["state"] == "failed" and "Traceback" in task["traceback"]
    code, answer = dashboard.request(f"api/stores/{sid}/clusters/{cluster.id}/stop", body={})
    assert code == 200 and answer["ok"], answer
    wait_for(lambda: cluster.stopped, 30, "the cluster stopped from the dashboard")


def test_requests_reach_only_the_listed_stores_and_bad_ones_say_why(dashboard, tmp_path):
    code, answer = dashboard.request("api/stores/0123456789abcdef")
    assert code == 404 and "no store of this user" in answer["message"]
    code, answer = dashboard.request("api/stores/../../etc")
    assert code == 404
    (tmp_path / "plain").mkdir()
    code, answer = dashboard.request("api/stores", body={"directory": str(tmp_path / "plain")})
    assert code == 400 and "not an nbqueue store of this user" in answer["message"]
    code, answer = dashboard.request("api/stores", body={"directory": 3})
    assert code == 400 and "give the path" in answer["message"]
    sid = store_id(nbqueue.get_broker().directory)
    code, answer = dashboard.request(f"api/stores/{sid}/clusters/nope/stop", body={})
    assert code == 404 and "is not running" in answer["message"]
    code, answer = dashboard.request(f"api/stores/{sid}/tasks/nope/cancel", body={})
    assert code == 200 and not answer["ok"]


def test_another_store_can_be_added_by_path(dashboard, tmp_path):
    other = str(tmp_path / "other")
    nbqueue.get_broker(other)
    code, answer = dashboard.request("api/stores", body={"directory": other})
    assert code == 200 and answer == {"id": store_id(other), "directory": other}
    code, stores = dashboard.request("api/stores")
    assert other in [s["directory"] for s in stores]


def test_the_dashboard_listens_on_localhost_only(dashboard):
    assert dashboard.base.startswith("http://127.0.0.1:")
    pid = dashboard.process.pid
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    mine = [line for line in out.splitlines() if f"pid={pid}," in line]
    assert mine and all("127.0.0.1:" in line for line in mine), out
    assert os.path.exists(f"/proc/{pid}")


def test_a_directory_that_is_no_store_is_refused_at_the_start(tmp_path):
    run = subprocess.run([sys.executable, "-m", "nbqueue", "dashboard", "--directory",
                          str(tmp_path), "--port", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "not an nbqueue store of this user" in run.stderr, run.stderr


def test_the_dashboard_needs_none_of_the_users_modules(dashboard, store_dir, tmp_path):
    """Tasks of a module the dashboard cannot import: it shows them all the same (it reads
    metadata, never unpickles an argument or a result)."""
    modules = tmp_path / "mods"
    modules.mkdir()
    (modules / "secretmod.py").write_text(
        "class Secret:\n    pass\n\n"
        "class SecretError(Exception):\n    pass\n\n"
        "def make(value):\n    return Secret()\n\n"
        "def fail(value):\n    raise SecretError('only the cluster knows me')\n"
    )
    code = (
        "import sys, nbqueue, secretmod\n"
        f"nbqueue.configure(directory={store_dir!r})\n"
        "with nbqueue.Cluster(workers=1):\n"
        "    nbqueue.async_task(secretmod.make, secretmod.Secret(), group='private')\n"
        "    nbqueue.async_task(secretmod.fail, secretmod.Secret(), group='private')\n"
        "    nbqueue.result_group('private', count=2, failures=True, wait=60_000)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(modules)))
    assert run.returncode == 0, run.stderr
    code, figures = dashboard.request(f"api/stores/{store_id(store_dir)}")
    assert code == 200, figures
    (group,) = figures["groups"]
    assert (group["name"], group["done"], group["failed"], group["total"]) == ("private", 1, 1, 2)
    (failure,) = figures["failures"]
    assert failure["error"] == "secretmod.SecretError: only the cluster knows me", failure
    assert "raise SecretError" in failure["traceback"]
