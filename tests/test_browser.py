"""The progress notebook in a real JupyterLab and a real Chromium.

Starts JupyterLab from this venv on a free local port with a private config, data, runtime
and settings directory (so nothing from the machine leaks in and nothing reaches the
network), opens ``notebooks/02-groups-and-progress.ipynb`` in Debian's Chromium through
Playwright, runs all cells from the Run menu and waits until the ``nbqueue.progress`` panel
says the group is complete. The page is saved to
``test-artifacts/browser/02-groups-and-progress.png``; the server log and the browser
console go beside it.

The widgets render from the prebuilt lab extension that ``jupyterlab_widgets`` installs
into ``<venv>/share/jupyter/labextensions``: no ``jupyter lab build``, no Node.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "02-groups-and-progress.ipynb"
NOTEBOOK = ROOT / "notebooks" / NAME
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOT = ARTIFACTS / "02-groups-and-progress.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Measured on a busy 2-core box: server 3-6 s, kernel 2-10 s, the whole notebook
# 10-25 s; each bound is several times that.
SERVER_START = 60      # seconds for JupyterLab to answer /api/status
KERNEL_IDLE = 60       # seconds for the notebook's kernel to start
GROUP_DONE = 120       # seconds for the notebook's groups and cells to finish
STOP_GRACE = 10        # seconds between SIGTERM and SIGKILL

COUNTS = re.compile(r"(\d+) % · (\d+) done · (\d+) failed · (\d+) running · (\d+) total")

# `make test` installs Debian's Chromium first; only a bare `pytest` on a machine without
# it skips this test, and never in CI, where a missing browser must fail the run.
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                reason=f"no Chromium at {CHROMIUM}: run `make test`, which "
                                       "installs it")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _private_jupyter_env(base: Path) -> dict[str, str]:
    """The environment of a JupyterLab that reads nothing of this machine's user.

    The user-level Jupyter, IPython and lab settings directories are all under ``base``;
    ``<venv>/share/jupyter`` (kernelspec, the widgets' lab extension) and
    ``<venv>/etc/jupyter`` (server extensions) stay on the paths, because Jupyter always
    searches ``sys.prefix``.
    """
    dirs = {name: base / name for name in
            ("home", "config", "data", "runtime", "settings", "workspaces", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True)
    # Offline and quiet: no news or update toasts (they would fetch jupyter.org and cover
    # the page in the screenshot).
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    labconfig = dirs["config"] / "labconfig"
    labconfig.mkdir()
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("JUPYTER", "IPYTHON", "NBQUEUE_"))}
    env.update(
        HOME=str(dirs["home"]),
        XDG_CONFIG_HOME=str(dirs["home"] / ".config"),
        XDG_CACHE_HOME=str(dirs["home"] / ".cache"),
        XDG_DATA_HOME=str(dirs["home"] / ".local" / "share"),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        IPYTHONDIR=str(dirs["ipython"]),
        JUPYTER_PLATFORM_DIRS="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
    )
    return env


class Lab:
    """A JupyterLab server process, talked to over its REST API."""

    def __init__(self, root: Path, base: Path, log: Path) -> None:
        self.port = _free_port()
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab",
             "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}",
             "--ServerApp.open_browser=False",
             "--ServerApp.terminals_enabled=False",
             "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly",  # the "pypi" one searches PyPI
             "--LanguageServerManager.autodetect=False",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=_private_jupyter_env(base),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method,
            headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}")
            try:
                self.api(f"/api/status?token={self.token}")
                return
            except OSError:  # refused until it listens; URLError is an OSError
                time.sleep(0.2)
        raise TimeoutError(f"JupyterLab did not answer within {timeout} s")

    def kernel_states(self) -> list[str]:
        """The execution state of each kernel; "unknown" while the server can't tell."""
        try:
            return [kernel["execution_state"] for kernel in self.api("/api/kernels")]
        except urllib.error.HTTPError as error:
            if error.code < 500:
                raise
            return ["unknown"]  # a kernel starting or stopping can make this one call fail

    def wait_kernels_idle(self, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        states: list[str] = []
        while time.monotonic() < deadline:
            states = self.kernel_states()
            if len(states) >= count and all(state == "idle" for state in states):
                return
            time.sleep(0.25)
        raise TimeoutError(f"kernels not idle within {timeout} s: {states}")

    def stop(self) -> list[int]:
        """Shut down the kernels, then the server; return the pids still alive after."""
        import psutil  # a dependency of ipykernel

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        if self.proc.poll() is None:
            try:  # kernels first, so they stop their worker pools themselves
                for session in self.api("/api/sessions"):
                    self.api(f"/api/sessions/{session['id']}", method="DELETE")
                for kernel in self.api("/api/kernels"):
                    self.api(f"/api/kernels/{kernel['id']}", method="DELETE")
            except OSError:  # the server may be going already
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_GRACE)
        self._log.close()
        # Kernels run in sessions of their own and their workers may outlive them.
        alive = psutil.wait_procs(family, timeout=STOP_GRACE)[1]
        for end in (psutil.Process.terminate, psutil.Process.kill):
            for proc in alive:
                try:
                    end(proc)
                except psutil.NoSuchProcess:
                    pass
            alive = psutil.wait_procs(alive, timeout=STOP_GRACE)[1]
        return [proc.pid for proc in alive]


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NAME)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in (SCREENSHOT, ARTIFACTS / "failure.png"):
        stale.unlink(missing_ok=True)
    server = Lab(root, tmp_path / "jupyter", ARTIFACTS / "jupyterlab.log")
    try:
        server.wait_ready(SERVER_START)
        yield server
    finally:
        left = server.stop()
    assert not left, f"processes left after JupyterLab stopped: {left}"


def _run_all_cells(page) -> None:
    """Run → Run All Cells, from the menu bar as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item:visible",
                 has_text=re.compile(r"^Run All Cells")).first.click()


def _accept_kernel_dialog(page) -> None:
    """If JupyterLab asks which kernel to start, choose Python 3."""
    dialog = page.locator(".jp-Dialog")
    if not dialog.is_visible():
        return
    select = dialog.locator("select")
    if select.count():
        options = select.locator("option").all_inner_texts()
        python = next((text for text in options if "Python 3" in text), None)
        if python:
            select.select_option(label=python)
    dialog.get_by_role("button", name=re.compile("Select|OK")).click()


def _check_complete(panel) -> None:
    """A finished nbqueue.progress panel: "complete", a full green bar, done == total."""
    from playwright.sync_api import expect

    expect(panel.locator(".nbqueue-state")).to_have_text("complete")
    bar = panel.locator(".widget-hprogress .progress-bar")
    expect(bar).to_have_count(1)
    expect(bar).to_have_class(re.compile(r"\bprogress-bar-success\b"))
    width = bar.evaluate("element => element.style.width")
    assert width == "100%", width
    counts = panel.locator(".nbqueue-counts").inner_text()
    match = COUNTS.search(counts)
    assert match, counts
    pct, done, failed, running, total = map(int, match.groups())
    assert (pct, failed, running) == (100, 0, 0), counts
    assert done == total > 0, counts


@pytest.mark.timeout(300)
def test_progress_notebook_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    console: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
            headless=False, args=CHROMIUM_ARGS,  # --headless=new is in the args
            viewport={"width": 1280, "height": 1000}, device_scale_factor=1,
        )
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.on("console", lambda message: console.append(
                f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            page.goto(f"{lab.url}/lab/tree/{NAME}?token={lab.token}")
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
            deadline = time.monotonic() + KERNEL_IDLE
            while not lab.kernel_states() and time.monotonic() < deadline:
                _accept_kernel_dialog(page)
                time.sleep(0.25)
            lab.wait_kernels_idle(KERNEL_IDLE)
            expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
                "data-status", "idle", timeout=KERNEL_IDLE * 1000)

            # The file browser only takes room from the notebook in the picture.
            page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()
            expect(page.locator("#jp-left-stack")).to_be_hidden()

            _run_all_cells(page)

            panels = page.locator(".nbqueue-progress")
            expect(panels.first.locator(".nbqueue-state")).to_have_text(
                "complete", timeout=GROUP_DONE * 1000)
            # The notebook goes on after its first group; let every cell finish.
            expect(page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(
                0, timeout=GROUP_DONE * 1000)
            lab.wait_kernels_idle(GROUP_DONE)

            # Every code cell ran: a failing cell stops Run All and leaves "[ ]:" below it.
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            assert prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts
            tracebacks = page.locator(".jp-OutputArea-output", has_text="Traceback")
            assert tracebacks.count() == 0, tracebacks.all_inner_texts()

            assert panels.count() >= 1
            for panel in panels.all():
                _check_complete(panel)

            # The picture: the first panel in the middle of the page, no hover effects.
            panels.first.evaluate("element => element.scrollIntoView({block: 'center'})")
            page.mouse.move(0, 0)
            page.wait_for_timeout(500)  # let the scroll and the last redraw settle
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        except BaseException:
            try:
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            except Exception:  # the page may be gone; the original error matters
                pass
            raise
        finally:
            (ARTIFACTS / "browser-console.log").write_text("\n".join(console) + "\n")
            context.close()
    assert SCREENSHOT.stat().st_size > 10_000
