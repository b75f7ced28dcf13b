"""Every notebook in notebooks/, run top to bottom by nbclient in a real IPython kernel.

Each notebook is copied into the test's temporary directory and run there, so its store
(the default ``.nbqueue`` of the working directory) is private to the test. The kernel is
this venv's Python (a private kernelspec named ``python3``, see ``kernelspec``), so it
imports the ``nbqueue`` under test. The assertions read the notebook's outputs, the widget
views it displayed and the widget state nbclient stores in its metadata (what a saved
notebook shows). After each notebook, no process the kernel started (the cluster's loky
workers) may be left running.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from nbclient import NotebookClient
# nbformat and nbclient are imported where a test uses them: nbformat's schema checks
# compile grammars at import, seconds that every test worker would pay at collection.

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with IPython >= 9 on Linux
    psutil = None

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.xdist_group("notebooks")]  # one worker imports nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01-quickstart", "02-groups-and-progress", "03-cached-results",
         "04-asynctask-interactive", "05-failures-and-timeouts", "06-control",
         "07-seeing-tasks", "08-sweeps", "09-context"]
VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"
RUN_LIMIT = 60  # seconds: each notebook is meant to run in well under a minute


# -- running a notebook ------------------------------------------------------------------

@pytest.fixture(scope="session")
def kernelspec(tmp_path_factory):
    """A private ``python3`` kernelspec that runs this venv's Python, found first.

    ``JUPYTER_PATH`` comes before the user's and the system's Jupyter directories, so a
    ``python3`` kernelspec elsewhere on the machine cannot shadow it.
    """
    data = tmp_path_factory.mktemp("jupyter")
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (nbqueue tests)", "language": "python",
    }))
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data), saved]))
    yield spec
    if saved is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = saved


class Run:
    """One notebook executed in a fresh kernel, with what the test needs to judge it."""

    def __init__(self, name: str, workdir: Path) -> None:
        shutil.copy(NOTEBOOKS / f"{name}.ipynb", workdir)
        self.path = workdir / f"{name}.ipynb"
        self.workdir = workdir
        import nbformat

        self.nb = nbformat.read(self.path, as_version=4)
        self.kernel_cmd: list[str] = []
        self.kernel_pid: int | None = None
        self.descendants: dict[int, object] = {}  # pid -> psutil.Process, over the run
        self.last_cell_descendants: list[object] = []
        self.seconds = 0.0

    def execute(self) -> None:
        import nbformat
        from nbclient import NotebookClient

        client = NotebookClient(
            self.nb, timeout=120, kernel_name="python3",
            resources={"metadata": {"path": str(self.workdir)}},
            store_widget_state=True,
            on_notebook_start=lambda notebook: self._kernel_started(client),
            on_cell_executed=lambda cell, cell_index, execute_reply: self._cell_done(
                client, cell_index),
        )
        # The kernel gets this environment without NBQUEUE_* settings of the caller, so
        # the notebook runs with its documented defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
        started = time.monotonic()
        try:
            client.execute(env=env)
        finally:
            self.seconds = time.monotonic() - started
            nbformat.write(self.nb, self.workdir / f"executed-{self.path.name}")

    def _kernel_started(self, client: NotebookClient) -> None:
        process = getattr(client.km.provisioner, "process", None)
        self.kernel_cmd = list(getattr(process, "args", []) or [])
        self.kernel_pid = getattr(process, "pid", None)

    def _children(self) -> list:
        if psutil is None or self.kernel_pid is None:
            return []
        try:
            return psutil.Process(self.kernel_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _cell_done(self, client: NotebookClient, cell_index: int) -> None:
        children = self._children()
        for child in children:
            self.descendants.setdefault(child.pid, child)
        if cell_index == len(self.nb.cells) - 1:
            self.last_cell_descendants = children

    # -- reading the outputs -------------------------------------------------------------

    def code_cells(self) -> list:
        return [c for c in self.nb.cells if c.cell_type == "code"]

    def text(self) -> str:
        """All printed and displayed text of the notebook, cell after cell."""
        parts = []
        for cell in self.code_cells():
            for out in cell.outputs:
                if out.output_type == "stream":
                    parts.append(out.text)
                elif out.output_type in ("execute_result", "display_data"):
                    parts.append(out.data.get("text/plain", ""))
                elif out.output_type == "error":
                    parts.append("\n".join(out.traceback))
        return "\n".join(parts)

    def value(self, label: str) -> str:
        """What the notebook printed after ``label`` on a line of its own."""
        match = re.search(rf"^{re.escape(label)}\s*(.*)$", self.text(), re.M)
        assert match, f"{label!r} not printed; the notebook printed:\n{self.text()}"
        return match.group(1).strip()

    def views(self) -> list[str]:
        """Model ids of the widget views the notebook displayed, in order."""
        return [out.data[VIEW]["model_id"] for cell in self.code_cells()
                for out in cell.outputs
                if out.output_type in ("execute_result", "display_data") and VIEW in out.data]

    def widget_state(self) -> dict[str, dict]:
        """The stored state of every widget model, by model id."""
        return self.nb.metadata["widgets"][STATE]["state"]

    def panels(self, dom_class: str) -> list[dict]:
        """Each displayed panel of the given CSS class: the states of its parts."""
        state = self.widget_state()
        found = []
        for model_id in self.views():
            model = state.get(model_id)
            assert model is not None, f"displayed widget {model_id} has no stored state"
            if dom_class not in model["state"].get("_dom_classes", []):
                continue
            children = [ref.removeprefix("IPY_MODEL_") for ref in model["state"]["children"]]
            found.append({"model": model, "parts": [state[c] for c in children]})
        return found


def progress_panels(run: Run) -> list[dict]:
    """Each ``nbqueue-progress`` panel as its title, bar and label states (then come its
    list of running tasks, the output selector and the output area)."""
    panels = []
    for panel in run.panels("nbqueue-progress"):
        parts = panel["parts"]
        assert [p["model_name"] for p in parts] == ["HTMLModel", "IntProgressModel",
                                                    "HTMLModel", "HTMLModel",
                                                    "DropdownModel", "HTMLModel"]
        panels.append({"title": parts[0]["state"]["value"], "bar": parts[1]["state"],
                       "label": parts[2]["state"]["value"]})
    return panels


def wait_gone(processes: list, seconds: float = 15.0) -> list:
    """The processes still alive (zombies count as gone) after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for proc in processes:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


# -- the saved notebooks -----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_saved_clean(name):
    """Saved without outputs, for kernel python3, with a cluster started and stopped."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    source = "\n".join(c.source for c in code)
    assert re.search(r"^cluster = nbqueue\.Cluster\(workers=2[^\n]*\)\.start\(\)$", source, re.M)
    assert "cluster.stop()" in code[-1].source
    assert "directory" not in source  # the default store: .nbqueue in the working dir
    # every wait is bounded, except AsyncTask's documented result(wait=-1)
    unbounded = re.findall(r"(\w+(?:\.\w+)*)\([^()]*wait=-1", source)
    assert unbounded == (["a.result"] if name == "04-asynctask-interactive" else [])


# -- the notebooks, run ------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernelspec, tmp_path):
    """Runs without an error, in the venv's Python, quickly, leaves no process behind, and
    shows the results and widgets it is about."""
    run = Run(name, tmp_path)
    run.execute()  # a cell that raises fails the test here, with the cell and its error
    assert run.kernel_cmd and run.kernel_cmd[0] == sys.executable
    errors = [out for cell in run.code_cells() for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert all(c.execution_count is not None for c in run.code_cells())
    assert run.seconds < RUN_LIMIT, f"{name} took {run.seconds:.1f} s"
    assert (run.workdir / ".nbqueue").is_dir()  # the default store, in the working dir
    if psutil is not None:
        # after cluster.stop(), no worker process is left (loky's resource tracker may
        # stay until the kernel exits) ...
        workers = [p for p in run.last_cell_descendants
                   if "resource_tracker" not in " ".join(_cmdline(p))]
        assert wait_gone(workers, 10) == []
        # ... and once nbclient has shut the kernel down, nothing it started is left
        assert run.descendants, "the cluster's worker processes were never seen"
        assert wait_gone(list(run.descendants.values())) == []
    check = CHECKS[name]
    check(run)


def test_progress_notebook_runs_twice_in_one_kernel(kernelspec, tmp_path):
    """"Run All" again without restarting the kernel: same results, no stale totals.

    The second run finds the first run's store and this kernel's bookkeeping; the
    notebook clears its groups, so its panels must count only the new tasks (a panel
    waiting for 600 of 300 tasks would time out).
    """
    name = "02-groups-and-progress"
    shutil.copy(NOTEBOOKS / f"{name}.ipynb", tmp_path)
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
    with client.setup_kernel(env=env):
        for _ in range(2):
            started = time.monotonic()
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            assert time.monotonic() - started < RUN_LIMIT
    text = "\n".join(out.text for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")
    assert "300 results, 6,000,000 darts" in text
    assert "primes below 300,000: 25997" in text
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* done=600 failed=0", text)


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def check_quickstart(run: Run) -> None:
    assert run.value("copysign(2, -2) =") == "-2.0"
    assert run.value("after waiting:") == "-2.0"
    assert run.value("slow_square(12) =") == "144"
    assert run.value("function:") == "__main__.slow_square args: (12,)"
    assert run.value("success:").startswith("True")
    assert run.value("by name:") == "144"
    assert run.value("collected by the hook:") == "[(0, 0), (1, 1), (2, 4), (3, 9), (4, 16)]"
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* done=8 failed=0", run.text())


def check_groups_and_progress(run: Run) -> None:
    assert "300 results, 6,000,000 darts" in run.text()
    estimate = float(re.search(r"pi is about (\d\.\d+)", run.text()).group(1))
    assert abs(estimate - math.pi) < 0.01
    assert run.value("primes below 300,000:") == "25997"  # pi(300000)
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* done=600 failed=0", run.text())

    # the two progress panels: nbqueue.progress('pi') and result_group(progress=True)
    panels = progress_panels(run)
    assert [re.search(r"<b>(\w+)</b>", p["title"]).group(1) for p in panels] == [
        "pi", "primes"]
    for panel in panels:
        bar = panel["bar"]
        assert bar["value"] == bar["max"] == 300
        assert bar["bar_style"] == "success"
        assert "complete" in panel["title"]
        assert "100 % · 300 done · 0 failed · 0 cancelled · 0 running · 300 total" in panel["label"]
    state = run.widget_state().values()
    assert any(m["model_name"] == "IntProgressModel" and m["state"]["value"] ==
               m["state"]["max"] and m["state"]["bar_style"] == "success" for m in state)
    assert any(m["model_name"] == "HTMLModel" and "complete" in m["state"]["value"]
               for m in state)

    # the cluster's status panel, displayed once, shown stopped after cluster.stop()
    (cluster,) = run.panels("nbqueue-cluster")
    html, button = cluster["parts"]
    assert html["model_name"] == "HTMLModel" and button["model_name"] == "ButtonModel"
    assert "<b>nbqueue cluster</b>" in html["state"]["value"]
    assert "stopped" in html["state"]["value"]
    assert re.search(r"class='nbqueue-done'>600<", html["state"]["value"])
    assert button["state"]["disabled"] is True


def check_cached_results(run: Run) -> None:
    assert run.value("from the cache:") == "100"
    assert run.value("saved results:") == "None"
    assert run.value("saved results after save():") == "100"
    assert run.value("cache after delete_cached():") == "None"
    assert run.value("saved copy is still there:") == "100"
    assert run.value("right after the run:") == "2"
    assert run.value("2.5 s later:") == "None"  # cached=2 expired
    assert run.value("100 cached results, e.g.") == "[(0.0, 0), (0.5, 1), (0.5, 2)]"
    assert run.value("cached count:") == "100 - saved count: 0"
    assert run.value("after delete_group:") == "0"


def check_asynctask_interactive(run: Run) -> None:
    assert run.value("floor(1.5) =") == "1"
    assert run.value("after changing args:") == (
        "None - <AsyncTask math.floor not run with these parameters>")
    assert run.value("floor(2.5) =") == "2"
    assert run.value("both runs of the group:") == "[1, 2]"
    first, second = int(run.value("seed 1:")), int(run.value("seed 2:"))
    assert first != second and first % 2 == second % 2 == 0  # 10,000 steps of +-1
    assert run.value("after changing the seed:") == "None"
    assert run.value("after setting a timeout:") == "None - started: False"
    assert int(run.value("seed 2 with a timeout:")) == second
    assert re.search(r"success: True args: \(10000,\) kwargs: \{'seed': 2\}", run.text())
    assert run.value("slow_double(21) =") == "42"
    (panel,) = progress_panels(run)  # AsyncTask.result(wait=..., progress=True)
    assert "<b>slow</b>" in panel["title"] and "complete" in panel["title"]
    assert panel["bar"]["value"] == panel["bar"]["max"] == 1
    assert panel["bar"]["bar_style"] == "success"


def check_failures_and_timeouts(run: Run) -> None:
    text = run.text()
    assert run.value("success: False - attempts:") == "1"
    assert "ValueError: negative input: -4\n\nTraceback (most recent call last):" in text
    assert ("in checked_sqrt\n    raise ValueError(f'negative input: {x}')\n"
            "ValueError: negative input: -4") in text  # the cell's line, from a worker
    assert run.value("result:") == "ValueError: negative input: -4"
    assert run.value("Failure.get_task:") == "True"
    assert run.value("Success.get_task:") == "None"
    assert "TaskTimeout: timed out after 1 s" in text
    packing = run.value("PackingError:")
    assert "positional argument 0 (lock) cannot be pickled" in packing
    assert "cannot pickle '_thread.lock' object" in packing
    assert run.value("TaskFunctionError:") == "cannot resolve 'my.buggy.code': No module named 'my'"
    assert run.value("An error occurred:") == (
        "TaskFunctionError: cannot resolve 'my.buggy.code': "
        "No module named 'my'")
    assert run.value("successes:") == "[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]"
    assert run.value("failures:") == (
        "['ValueError: negative input: -1', 'ValueError: negative input: -2']")
    (panel,) = progress_panels(run)  # red: the group finished with failures
    assert panel["bar"]["value"] == panel["bar"]["max"] == 8
    assert panel["bar"]["bar_style"] == "danger"
    assert "finished with failures" in panel["title"]
    assert "6 done · 2 failed" in panel["label"]


def check_control(run: Run) -> None:
    text = run.text()
    # future: a result, and a failure raised as TaskFailed carrying its Failure
    assert run.value("future result:") == "144"
    assert re.fullmatch(r"task [a-z]+(-[a-z]+)+ failed: ValueError: negative input: -4",
                        run.value("TaskFailed:"))
    assert run.value("its task:") == "Failure - success: False"
    assert run.value("error text:") == "ValueError: negative input: -4"
    # await of an AsyncTask, and asyncio.gather over several
    assert run.value("awaited:") == "25"
    assert run.value("gathered:") == "[0, 1, 4, 9, 16, 25]"
    # as_completed: the fast task, sent second, comes out first
    assert run.value("first to finish:") == "fast"
    assert run.value("order:") == "['fast', 'slow']"
    assert run.value("fast finished:") == "16" and run.value("slow finished:") == "9"
    # map: input order; ordered=False: as they finish; a failure at its place
    assert run.value("map:") == "[1.0, 0.1, 0.2, 0.3]"
    unordered = json.loads(run.value("map, ordered=False:"))
    assert sorted(unordered) == [0.1, 0.2, 0.3, 1.0] and unordered[-1] == 1.0
    assert run.value("map failed at item") == "2 - ValueError: negative input: -1"
    assert run.value("results before the failure:") == "[4.0, 3.0]"
    # cancel of a running 60 s task: True, stopped within about a second, a Failure
    # saying it was cancelled
    assert run.value("running:") == "True"
    assert run.value("cancelled running:") == "True"
    stopped = re.fullmatch(r"True - after (\d+\.\d\d) s", run.value("stopped:"))
    assert stopped, run.value("stopped:")
    assert float(stopped.group(1)) <= 2.0
    assert "cancelled" in run.value("outcome:")
    assert run.value("outcome:").startswith("TaskCancelled")
    # cancel_group: the waiting tasks never ran; the running ones were stopped
    assert run.value("both workers busy:") == "True"
    assert run.value("cancelled in backlog:") == "5"
    assert run.value("cancelled in busy:") == "2"
    assert run.value("workers free:") == "True"
    assert run.value("backlog lines written:") == "0"
    # a finished task is not cancelled
    assert run.value("cancel a finished task:") == "False"
    assert run.value("cancel it again:") == "False"
    assert run.value("result still there:") == "144"
    # reuse=True: the cell run again gives back the same task; it ran once
    assert run.value("first result:") == "70"
    assert run.value("same id:") == "True"
    assert run.value("second result:") == "70"
    assert run.value("side effects:") == "1"
    assert (run.workdir / "reuse-log.txt").read_text() == "ran with 7\n"
    # retry: the missing file made it fail; fixed, it succeeds under the same id
    assert run.value("first try:").startswith("False - FileNotFoundError:")
    assert run.value("retried:") == "True"
    assert run.value("after retry:") == "True - fast - attempts: 2"
    assert run.value("failed in parts:") == "3"
    assert run.value("retried in parts:") == "3"
    assert run.value("parts after retry:") == "['value 0', 'value 1', 'value 2']"
    assert run.value("failed after retry:") == "0"
    assert run.value("retry a success:") == "False"
    assert re.search(r"<Cluster nbqueue stopped workers=2 ", text)


def _cell(run: Run, cell_id: str):
    (cell,) = [c for c in run.code_cells() if c.get("id") == cell_id]
    return cell


def _cell_text(run: Run, cell_id: str) -> str:
    """What one code cell printed."""
    return "".join(out.text for out in _cell(run, cell_id).outputs
                   if out.output_type == "stream")


def _cell_data(run: Run, cell_id: str, mime: str) -> list[str]:
    """The ``mime`` data of each result and display of one code cell."""
    return [out.data[mime] for out in _cell(run, cell_id).outputs
            if out.output_type in ("execute_result", "display_data") and mime in out.data]


def check_seeing_tasks(run: Run) -> None:
    import html

    failing = "raise RuntimeError(f'bad reading on line {number}: {line!r}') from e"
    # the Failure as the cell's last expression: its HTML view, the failing line marked
    (view,) = _cell_data(run, "07-03", "text/html")
    assert view.startswith('<div class="nbqueue-task"')
    assert "✗ failed" in view and "<code>__main__.load_readings</code>" in view
    assert html.escape("RuntimeError: bad reading on line 3: 'n/a'") in view
    marked = re.findall(r'<span class="nbqueue-failing-line"[^>]*>(.*?)</span>', view)
    assert [html.unescape(m).strip() for m in marked] == [failing], marked
    (line,) = _cell_data(run, "07-03", "text/plain")
    assert line.startswith("<Task ") and (
        "__main__.load_readings(['1.5', '2.25', 'n/a', '4.0']) failed: "
        "RuntimeError: bad reading on line 3: 'n/a'") in line
    # the exception object, with its cause
    assert _cell_text(run, "07-05") == (
        "exception: RuntimeError(\"bad reading on line 3: 'n/a'\")\n"
        "type: RuntimeError\n"
        "cause: <class 'ValueError'> - could not convert string to float: 'n/a'\n")
    # the traceback: both exceptions of the chain, with the lines of the notebook's cell
    traceback = _cell_text(run, "07-07")
    cell_lines = [ln.strip() for ln in _cell(run, "07-03").source.splitlines()]
    code_lines = re.findall(r'^  File "[^"]+", line \d+, in \w+\n    (.+)$', traceback, re.M)
    assert code_lines == ["readings.append(parse_reading(line))",
                          "return float(text.strip())", failing], traceback
    assert all(code in cell_lines for code in code_lines)
    assert "ValueError: could not convert string to float: 'n/a'\n\nThe above exception " \
           "was the direct cause of the following exception:" in traceback
    assert traceback.rstrip().endswith("RuntimeError: bad reading on line 3: 'n/a'")
    # reraise(): the same exception, raised in the kernel
    assert _cell_text(run, "07-09") == (
        "caught here: bad reading on line 3: 'n/a' - caused by "
        "ValueError(\"could not convert string to float: 'n/a'\")\n")
    # output: prints and a logged warning, in order
    assert _cell_text(run, "07-11") == (
        "result: [1.0, 3.0, 5.0]\ncleaning 5 values\n"
        "WARNING:cleaning:dropped 2 missing values\nkept 3\n\n")
    # status of the running task: running, with its progress and its worker
    status = _cell_text(run, "07-13")
    match = re.fullmatch(r"state: running\nprogress: \((\d+), 30, 'loss (\d\.\d{3})'\)\n"
                         r"worker pid: (\d+)\n", status)
    assert match, status
    done, loss, pid = int(match.group(1)), match.group(2), int(match.group(3))
    assert 1 <= done < 30 and loss == f"{0.9 ** done:.3f}"
    # its output so far: the first epochs, at least as many as it had reported
    epochs = [f"epoch {i:2d}: loss {0.9 ** i:.3f}" for i in range(1, 31)]
    so_far = _cell_text(run, "07-15").rstrip("\n").split("\n")
    assert done <= len(so_far) <= 30 and so_far == epochs[:len(so_far)], so_far
    # once finished: its last report, all its output, when and where it ran
    final = _cell_text(run, "07-17")
    assert f"result: {round(0.9 ** 30, 4)}\n" in final
    assert "final progress: (30, 30, 'loss 0.042')\n" in final
    ran = re.search(r"^ran (\d+\.\d) s on worker pid (\d+)$", final, re.M)
    assert ran and 3.0 <= float(ran.group(1)) < 10 and int(ran.group(2)) == pid, final
    assert "output lines: 30\n" in final
    # the group's panel: red, all 30 finished, 5 of them failed
    (panel,) = run.panels("nbqueue-progress")
    title, bar, label = (part["state"] for part in panel["parts"][:3])
    assert "<b>sweep</b>" in title["value"] and "finished with failures" in title["value"]
    assert bar["value"] == bar["max"] == 30 and bar["bar_style"] == "danger"
    assert "100 % · 25 done · 5 failed · 0 cancelled · 0 running · 30 total" in label["value"]
    # the summary: counts, two SVG charts (30 bars on the timeline), failures by type
    (summary,) = _cell_data(run, "07-21", "text/html")
    assert summary.startswith('<div class="nbqueue-summary"')
    assert html.escape("group 'sweep': 30 tasks, 25 succeeded, 5 failed") in summary
    assert summary.count("<svg") == 2
    assert 'aria-label="histogram of task durations"' in summary
    assert 'aria-label="timeline of tasks per worker"' in summary
    assert summary.count('class="nbqueue-bin"') >= 1
    assert summary.count('class="nbqueue-bar"') == 30
    assert len(set(re.findall(r"on pid (\d+)</title>", summary))) == 2  # both workers
    assert "FloatingPointError</span>: 3 tasks" in summary
    assert "ValueError</span>: 2 tasks" in summary
    (text,) = _cell_data(run, "07-21", "text/plain")
    assert text.startswith("group 'sweep': 30 tasks, 25 succeeded, 5 failed;")
    assert "failures: FloatingPointError ×3, ValueError ×2" in text
    parts = _cell_text(run, "07-23")
    assert "tasks: 30 - succeeded: 25 - failed: 5\n" in parts
    assert "failures by type: {'FloatingPointError': 3, 'ValueError': 2}\n" in parts
    # to_frame(): one row per task, in pandas (installed in the test venv)
    frame = _cell_text(run, "07-25")
    assert frame.startswith("rows: 30\n"), frame
    per_worker = json.loads(re.search(r"tasks per worker: (\[.*\])", frame).group(1))
    assert len(per_worker) == 2 and sum(per_worker) == 30
    (table,) = _cell_data(run, "07-25", "text/html")
    assert 'class="dataframe"' in table
    assert table.count("<td>sim-") == 5 and "<th>duration</th>" in table
    # 27 successes (clean, train, 25 simulations), 6 failures (load_readings, 5 simulations)
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* done=27 failed=6", run.text())


def check_sweeps(run: Run) -> None:
    assert run.value("first values:") == "[0.905, 1.81, 2.715]"
    assert run.value("points:") == "12"
    assert run.value("columns:") == "['id', 'name', 'func', 'amplitude', 'damping', 'success']"
    table = "\n".join(str(out.data.get("text/plain", "")) for cell in run.code_cells()
                      for out in cell.outputs if out.output_type == "execute_result")
    assert "0.905" in table and "0.135" in table and "damping" in table  # the pivot table
    said = sorted(re.findall(r"^damping (\S+): (\S+)$", run.text(), re.M))
    assert said == [("0.1", "-0.9512"), ("0.2", "-0.9048"), ("0.4", "-0.8187")]
    assert run.value("map:") == "[0.7408, 1.4816]"
    assert run.value("sum of squares:") == "332833500"
    assert run.value("tasks in the group (joblib batched the 1000 calls):") == "True"
    assert re.search(r"^100,000 squares in \S+ s; the last: 9,999,800,001$", run.text(), re.M)
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* failed=0", run.text())


def check_context(run: Run) -> None:
    assert run.value("first predictions:") == "[0, 0.0, 0.5, 1.5]"
    assert run.value("worker processes:") in ("1", "2")
    assert run.value("each used the model it loaded itself:") == "True"
    assert run.value("chain results:") == "['fetched', 45]"
    lines = re.findall(r"^(raised|dependency) - (.*)$", run.text(), re.M)
    assert [cause for cause, _ in lines] == ["raised", "dependency"], lines
    assert lines[0][1].startswith("FileNotFoundError")
    assert lines[1][1].startswith("DependencyFailed: the task before it in its chain")
    assert run.value("other.txt written:") == "False"
    assert run.value("Iter:") == "[0, 1, 4, 9, 16]"
    assert run.value("handle:").startswith("<Shared 'table': numpy.ndarray float64 (2000, 500)")
    assert run.value("means match:") == "True"
    assert run.value("read-only in the tasks:") == "True"
    assert run.value("shared again, same handle:") == "True"
    assert run.value("while raw runs, the report is:") == "waiting"
    assert run.value("report:") == "700 values, mean 3.000, first [0, 1, 2]"
    assert run.value("dependant:").startswith("dependency - DependencyFailed: task ")
    # the cluster counts what it ran: the raised chain task and the failed measure
    assert re.search(r"<Cluster nbqueue stopped workers=2 .* failed=2", run.text())


CHECKS = {
    "01-quickstart": check_quickstart,
    "02-groups-and-progress": check_groups_and_progress,
    "03-cached-results": check_cached_results,
    "04-asynctask-interactive": check_asynctask_interactive,
    "05-failures-and-timeouts": check_failures_and_timeouts,
    "06-control": check_control,
    "07-seeing-tasks": check_seeing_tasks,
    "08-sweeps": check_sweeps,
    "09-context": check_context,
}
