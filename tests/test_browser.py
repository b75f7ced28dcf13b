"""The progress notebook in a real JupyterLab and a real Chromium.

Starts JupyterLab from this venv on a free local port with a private config, data, runtime
and settings directory (so nothing from the machine leaks in and nothing reaches the
network), opens ``notebooks/02-groups-and-progress.ipynb`` in Debian's Chromium through
Playwright, runs all cells from the Run menu and waits until the ``nbqueue.progress`` panel
says the group is complete. The page is saved to
``test-artifacts/browser/02-groups-and-progress.png``; the server log and the browser
console go beside it.

A second test plays a user who interrupts a ``result_group(..., progress=True)`` cell
half-way (Kernel → Interrupt Kernel): the cell ends with a KeyboardInterrupt, while the
panel goes on counting the group to its end and every task runs to completion. Its page
is saved to ``test-artifacts/browser/interrupt.png``.

A third test runs ``notebooks/07-seeing-tasks.ipynb`` and checks that a ``Failure``'s HTML
view (its failing line highlighted) and ``nbqueue.summary``'s SVG charts render. Its page
is saved to ``test-artifacts/browser/07-seeing-tasks.png``, and the two outputs, cropped,
to ``test-artifacts/browser/seeing-tasks-readme.png`` (copied to ``docs/seeing-tasks.png``,
the README's picture, when it should change: tests never write into the checkout's docs).

The widgets render from the prebuilt lab extension that ``jupyterlab_widgets`` installs
into ``<venv>/share/jupyter/labextensions``: no ``jupyter lab build``, no Node.
"""

from __future__ import annotations

import contextlib
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
INTERRUPT_NAME = "interrupt.ipynb"
INTERRUPT_SCREENSHOT = ARTIFACTS / "interrupt.png"
SEEING_NAME = "07-seeing-tasks.ipynb"
SEEING_SCREENSHOT = ARTIFACTS / "07-seeing-tasks.png"
README_PICTURE = ARTIFACTS / "seeing-tasks-readme.png"  # copied to docs/ by hand
FAILING_LINE = "raise RuntimeError(f'bad reading on line {number}: {line!r}') from e"
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
# The interrupt test's group: 40 sleeps of 0.25 s on 2 workers, about 5 s of work.
INTERRUPT_TASKS = 40
INTERRUPT_SLEEP = 0.25

COUNTS = re.compile(r"(\d+) % · (\d+) done · (\d+) failed · 0 cancelled · (\d+) running · (\d+) total")

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
        self.root = root
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


def _counts(panel) -> tuple[int, int, int, int, int]:
    """The panel's figures: percent, done, failed, running, total."""
    text = panel.locator(".nbqueue-counts").inner_text()
    match = COUNTS.search(text)
    assert match, text
    return tuple(map(int, match.groups()))


def _wait_counts(panel, ok, timeout: float, what: str) -> tuple[int, int, int, int, int]:
    """Poll the panel's figures until ``ok(figures)``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        counts = _counts(panel)
        if ok(counts):
            return counts
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {timeout} s; the panel shows {counts}")
        time.sleep(0.05)


def _interrupt_kernel(page) -> None:
    """Kernel → Interrupt Kernel, from the menu bar as a user would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
    page.locator(".lm-Menu-item:visible",
                 has_text=re.compile(r"^Interrupt Kernel")).first.click()


def _run_new_cell(page, code: str):
    """Add a code cell below the last one, type ``code`` in it, run it; return the cell."""
    from playwright.sync_api import expect

    cells = page.locator(".jp-Notebook .jp-Cell")
    before = cells.count()
    cells.last.locator(".jp-InputPrompt").click()  # select it, in command mode
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # insert a cell below
    expect(cells).to_have_count(before + 1)
    cell = cells.nth(before)
    cell.locator(".cm-content").click()
    # Inserted as text, not typed key by key: the editor's bracket auto-closing stays out.
    page.keyboard.insert_text(code)
    expect(cell.locator(".cm-content")).to_have_text(code)
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(
        re.compile(r"\[\d+\]:"), timeout=GROUP_DONE * 1000)
    return cell


@contextlib.contextmanager
def _chromium_page(tmp_path: Path, failure: Path, console_log: Path):
    """A page of a fresh Chromium; ``failure`` gets the page if the block raises."""
    from playwright.sync_api import sync_playwright

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
            yield page
        except BaseException:
            try:
                page.screenshot(path=str(failure), full_page=True)
            except Exception:  # the page may be gone; the original error matters
                pass
            raise
        finally:
            console_log.write_text("\n".join(console) + "\n")
            context.close()


def _open_notebook(page, lab: Lab, name: str) -> None:
    """Open ``name`` and wait until its kernel is idle; hide the file browser."""
    from playwright.sync_api import expect

    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
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


def _screenshot(page, element, path: Path) -> None:
    """The page, with ``element`` in the middle of it and no hover effects."""
    element.evaluate("element => element.scrollIntoView({block: 'center'})")
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)  # let the scroll and the last redraw settle
    page.screenshot(path=str(path), full_page=True)


@pytest.mark.timeout(300)
def test_progress_notebook_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import expect

    with _chromium_page(tmp_path, ARTIFACTS / "failure.png",
                        ARTIFACTS / "browser-console.log") as page:
        _open_notebook(page, lab, NAME)
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

        _screenshot(page, panels.first, SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000


def _write_interrupt_notebook(path: Path, store: Path) -> None:
    """A fresh notebook: a cluster and a group of sleeps, then a wait with a panel."""
    import nbformat

    setup = (
        "import nbqueue\n"
        f"nbqueue.configure(directory={str(store)!r})\n"
        "cluster = nbqueue.Cluster(workers=2).start()\n"
        f"for i in range({INTERRUPT_TASKS}):\n"
        f"    nbqueue.async_task('time.sleep', {INTERRUPT_SLEEP}, group='g')"
    )
    wait = f"nbqueue.result_group('g', count={INTERRUPT_TASKS}, wait=-1, progress=True)"
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(wait)],
        metadata={"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                 "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}})
    nbformat.write(notebook, str(path))


@pytest.mark.timeout(300)
def test_interrupt_keeps_the_panel_updating(lab, tmp_path):
    """Interrupt a result_group(..., progress=True) cell half-way, as a user does.

    The cell ends with a KeyboardInterrupt; the panel keeps counting after it, to all
    tasks done and "complete"; no task was interrupted (the workers ignore the SIGINT
    that the interrupt sends to the kernel's whole process group).
    """
    from playwright.sync_api import expect

    failure = ARTIFACTS / "interrupt-failure.png"
    for stale in (INTERRUPT_SCREENSHOT, failure):
        stale.unlink(missing_ok=True)
    _write_interrupt_notebook(lab.root / INTERRUPT_NAME, tmp_path / "store")

    with _chromium_page(tmp_path, failure, ARTIFACTS / "interrupt-browser-console.log") as page:
        _open_notebook(page, lab, INTERRUPT_NAME)
        _run_all_cells(page)

        waiting = page.locator(".jp-Notebook .jp-CodeCell").nth(1)
        panel = waiting.locator(".nbqueue-progress")
        expect(panel.locator(".nbqueue-counts")).to_be_visible(timeout=GROUP_DONE * 1000)
        # Some tasks done, not all: the moment to interrupt.
        _, done, _, _, _ = _wait_counts(panel, lambda c: c[1] >= 1, GROUP_DONE,
                                        "a first task done")
        assert done < INTERRUPT_TASKS, f"the group ended before the interrupt: {done} done"
        _interrupt_kernel(page)

        # The cell ends with a KeyboardInterrupt; the kernel is free again.
        expect(waiting.locator(".jp-OutputArea-output", has_text="KeyboardInterrupt")
               ).to_have_count(1, timeout=KERNEL_IDLE * 1000)
        first = _counts(panel)
        expect(waiting.locator(".jp-InputPrompt")).to_have_text(
            re.compile(r"\[\d+\]:"), timeout=KERNEL_IDLE * 1000)
        assert first[1] < INTERRUPT_TASKS, (
            f"all tasks were done before the interrupt ended the cell: {first}")
        # The panel goes on: more tasks done at a later moment, up to all of them.
        second = _wait_counts(panel, lambda c: c[1] > first[1], GROUP_DONE,
                              f"the done count growing past {first[1]} after the interrupt")
        expect(panel.locator(".nbqueue-state")).to_have_text(
            "complete", timeout=GROUP_DONE * 1000)
        _check_complete(panel)
        final = _counts(panel)
        assert final == (100, INTERRUPT_TASKS, 0, 0, INTERRUPT_TASKS), (first, second, final)
        lab.wait_kernels_idle(KERNEL_IDLE)

        # Every task ran to its end: none failed (an interrupted worker fails its task).
        counted = _run_new_cell(
            page, "print(nbqueue.count_group('g')); "
                  "print(nbqueue.count_group('g', failures=True))")
        expect(counted.locator(".jp-OutputArea-output")).to_have_text(
            f"{INTERRUPT_TASKS}\n0", timeout=KERNEL_IDLE * 1000)

        _screenshot(page, panel, INTERRUPT_SCREENSHOT)

        # Done: stop the cluster, as the notebook would; the fixture shuts the kernel down.
        stopped = _run_new_cell(page, "cluster.stop()")
        assert stopped.locator(".jp-OutputArea-output", has_text="Traceback").count() == 0
        lab.wait_kernels_idle(KERNEL_IDLE)
    assert INTERRUPT_SCREENSHOT.stat().st_size > 10_000


def _picture_of(page, cells, path: Path) -> None:
    """A picture of just ``cells``: the notebook's other cells hidden, cropped to them.

    For the README: taken after the checks, on a narrower and taller window so the two
    outputs fit one picture at a readable width.
    """
    page.set_viewport_size({"width": 1000, "height": 1900})
    keep = [cell.element_handle(timeout=10_000) for cell in cells]
    page.evaluate("""keep => {
        for (const cell of document.querySelectorAll('.jp-Notebook .jp-Cell')) {
            if (!keep.includes(cell)) cell.style.display = 'none';
        }
        for (const cell of keep) cell.classList.remove('jp-mod-active', 'jp-mod-selected');
    }""", keep)
    keep[0].evaluate("element => element.scrollIntoView({block: 'start'})")
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)  # let the layout and the last redraw settle
    boxes = [cell.bounding_box() for cell in cells]
    assert all(boxes), boxes
    left = min(box["x"] for box in boxes)
    top = min(box["y"] for box in boxes)
    right = max(box["x"] + box["width"] for box in boxes)
    bottom = max(box["y"] + box["height"] for box in boxes)
    viewport = page.viewport_size
    clip = {"x": max(0, left - 8), "y": top}  # (above the cell: the notebook's toolbar)
    clip["width"] = min(viewport["width"], right + 8) - clip["x"]
    clip["height"] = min(viewport["height"], bottom + 8) - clip["y"]
    assert bottom <= viewport["height"], f"the cells do not fit the window: {boxes}"
    page.screenshot(path=str(path), clip=clip)


@pytest.mark.timeout(300)
def test_failure_view_and_summary_in_jupyterlab(lab, tmp_path):
    """Notebook 07, run in JupyterLab: a Failure's HTML view and a group's summary render.

    The Failure's card shows its traceback with the failing line of the notebook's cell
    highlighted; the summary shows its two SVG charts (a histogram, a timeline with a bar
    per task). The page goes to ``test-artifacts/browser/07-seeing-tasks.png``, the two
    outputs alone to ``test-artifacts/browser/seeing-tasks-readme.png``.
    """
    from playwright.sync_api import expect

    failure = ARTIFACTS / "seeing-tasks-failure.png"
    for stale in (SEEING_SCREENSHOT, failure):
        stale.unlink(missing_ok=True)
    shutil.copy(ROOT / "notebooks" / SEEING_NAME, lab.root / SEEING_NAME)

    with _chromium_page(tmp_path, failure, ARTIFACTS / "seeing-tasks-browser-console.log"
                        ) as page:
        _open_notebook(page, lab, SEEING_NAME)
        _run_all_cells(page)

        summary = page.locator(".jp-OutputArea-output .nbqueue-summary")
        expect(summary).to_have_count(1, timeout=GROUP_DONE * 1000)
        # The notebook goes on after the summary; let every cell finish.
        code_cells = page.locator(".jp-Notebook .jp-CodeCell")
        expect(code_cells.last.locator(".jp-InputPrompt")).to_have_text(
            re.compile(r"\[\d+\]:"), timeout=GROUP_DONE * 1000)
        lab.wait_kernels_idle(GROUP_DONE)
        # Every code cell ran: a failing cell stops Run All and leaves "[ ]:" below it.
        # (text content: the cells off screen are not laid out, so they have no inner text)
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()
        assert prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts
        assert page.locator(".jp-OutputArea-output[data-mime-type="
                            "'application/vnd.jupyter.stderr']").count() == 0

        # The Failure's HTML view: a red card, its traceback's failing line highlighted.
        card = page.locator(".jp-OutputArea-output div.nbqueue-task")
        expect(card).to_have_count(1)
        card.scroll_into_view_if_needed(timeout=10_000)
        expect(card).to_be_visible()
        expect(card).to_contain_text("✗ failed")
        expect(card).to_contain_text("RuntimeError: bad reading on line 3: 'n/a'")
        marked = card.locator(".nbqueue-failing-line")
        expect(marked).to_have_count(1)
        expect(marked).to_be_visible()
        expect(marked).to_have_text(re.compile(r"^\s*" + re.escape(FAILING_LINE) + r"\s*$"))
        background, weight = marked.evaluate(
            "e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).fontWeight]")
        assert background not in ("rgba(0, 0, 0, 0)", "transparent") and int(weight) >= 600, (
            background, weight)
        # It fits its output area: no part of the card sticks out to the right.
        card_box = card.bounding_box()
        area_box = card.locator("xpath=ancestor::div[contains(@class, "
                                "'jp-OutputArea-output')][1]").bounding_box()
        assert card_box["x"] + card_box["width"] <= area_box["x"] + area_box["width"] + 1, (
            card_box, area_box)

        # The summary: its two SVG charts drawn, a bar per task on the timeline.
        summary.scroll_into_view_if_needed(timeout=10_000)
        expect(summary).to_contain_text("group 'sweep': 30 tasks, 25 succeeded, 5 failed")
        charts = summary.locator("svg")
        expect(charts).to_have_count(2)
        for chart in charts.all():
            expect(chart).to_be_visible()
            box = chart.bounding_box()
            assert box["width"] >= 300 and box["height"] >= 40, box
        expect(summary.locator("svg rect.nbqueue-bar")).to_have_count(30)
        assert summary.locator("svg rect.nbqueue-bin").count() >= 1
        sizes = summary.locator("svg rect").evaluate_all(
            "rects => rects.map(r => [r.getBoundingClientRect().width, "
            "r.getBoundingClientRect().height])")
        assert len(sizes) >= 31 and all(w > 0 and h > 0 for w, h in sizes), sizes

        _screenshot(page, summary, SEEING_SCREENSHOT)
        cells = [code_cells.filter(has=card), code_cells.filter(has=summary)]
        _picture_of(page, cells, README_PICTURE)
    assert SEEING_SCREENSHOT.stat().st_size > 10_000
    assert 10_000 < README_PICTURE.stat().st_size < 400_000
