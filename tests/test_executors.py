"""The dask executor, against real ``distributed.LocalCluster``s of worker processes.

Each test that needs its own dask cluster starts one through nbqueue (``Cluster(
executor="dask")`` starts a LocalCluster of ``workers`` single-threaded processes and
closes it on ``stop``) or, for the ``address=`` path, starts a LocalCluster itself and
connects to it, as a notebook connects to a ``dask scheduler`` started elsewhere. The
queue and the store are real, in the test's temp directory. Worker processes are killed
with real signals. Every wait is bounded, and every test by pytest-timeout.

The rest of the API is checked against dask by ``test_seed_api.py``, whose ``cluster``
fixture runs every test with both executors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import nbqueue
from nbqueue import (Cluster, async_task, count_group, fetch, fetch_group, queue_size, result,
                     result_group)
from nbqueue.errors import ClusterError, ConfigurationError
from nbqueue.disk.directory import heartbeats

from tests import stopping
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

distributed = pytest.importorskip("distributed", reason='needs "nbqueue[dask]"')
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.timeout(120)

WAIT = 30_000  # ms: bounded, but never flaky on a slow 2-core machine


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def runs(path: Path) -> list[tuple[str, int]]:
    """The ('start'|'stop', pid) lines ``tasks_fixtures.log_run`` wrote."""
    if not path.exists():
        return []
    return [(line.split()[0], int(line.split()[1])) for line in path.read_text().splitlines()]


@pytest.fixture
def dask_cluster(store_dir):
    """A running Cluster on the dask executor, with a LocalCluster of its own (2 processes)."""
    running = Cluster(workers=2, directory=store_dir, executor="dask",
                      dashboard_address="127.0.0.1:0").start()
    yield running
    running.stop(wait=5)


@pytest.fixture
def foreign_scheduler():
    """A LocalCluster that nbqueue did not start, with dask's default settings: what
    ``dask scheduler`` + ``dask worker`` give (``allowed-failures`` 3)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as local:
        yield local.scheduler_address


# -- the round trip ----------------------------------------------------------------------

def test_round_trip_dotted_path_lambda_and_notebook_cell_function(dask_cluster):
    """Dotted paths, lambdas and functions defined in ``__main__`` (a notebook cell)
    are cloudpickled and run in the dask worker processes, not in this one."""
    namespace = {"__name__": "__main__"}  # what a function defined in a cell has
    exec("import os\n"
         "def cell_function(x):\n"
         "    return {'pid': os.getpid(), 'double': 2 * x}\n", namespace)
    offset = 10
    first = async_task("math.copysign", 2, -2)
    closure = async_task(lambda x: x + offset, 5)
    cell = [async_task(namespace["cell_function"], i, group="cell") for i in range(20)]

    assert result(first, WAIT) == -2.0
    assert result(closure, WAIT) == 15
    outcomes = [result(task_id, WAIT) for task_id in cell]
    assert [o["double"] for o in outcomes] == [2 * i for i in range(20)]
    worker_pids = set(dask_cluster._executor.worker_pids().values())
    used = {o["pid"] for o in outcomes}
    assert len(worker_pids) == 2 and used <= worker_pids and os.getpid() not in used
    assert all(t.attempt_count == 1 and t.success for t in fetch_group("cell"))
    assert dask_cluster.done == 22 and dask_cluster.failed == 0


def test_hooks_and_groups(dask_cluster):
    """Hooks run here, in the cluster's process (a hook object is that very object);
    groups, counts and failures are stored as with loky."""
    seen = []
    fx.HOOKED.clear()  # other test modules' hooks may have left entries
    ids = [async_task(fx.add, i, 100, group="adders", hook="tests.tasks_fixtures.hook_record")
           for i in range(30)]
    bad = async_task(fx.boom, "no", group="adders", ack_failure=True,
                     hook=lambda task: seen.append((task.id, task.success)))

    assert sorted(result_group("adders", count=31, wait=WAIT)) == [100 + i for i in range(30)]
    assert count_group("adders") == 31 and count_group("adders", failures=True) == 1
    wait_for(lambda: len({i for i, _ in fx.HOOKED} & set(ids)) == 30 and seen, what="hooks")
    assert sorted(h for h in fx.HOOKED if h[0] in set(ids)) == sorted(
        (i, 100 + n) for n, i in enumerate(ids))
    assert seen == [(bad, False)]
    assert "ValueError: no" in fetch(bad).result
    fx.HOOKED.clear()


def test_running_counts_follow_the_dask_workers(dask_cluster):
    """``info()`` counts the tasks running on dask workers, by group."""
    ids = [async_task(fx.nap, 1.5, i, group="slow") for i in range(2)]
    wait_for(lambda: dask_cluster.info()["running"] == 2, what="2 tasks running")
    info = dask_cluster.info()
    assert info["groups_running"] == {"slow": 2} and info["workers"] == 2
    assert [result(i, WAIT) for i in ids] == [0, 1]
    wait_for(lambda: dask_cluster.info()["running"] == 0, what="nothing running")


# -- lost workers ------------------------------------------------------------------------

def test_worker_killed_mid_task_is_redelivered_and_every_task_completes(dask_cluster,
                                                                        tmp_path):
    """SIGKILL a dask worker while it runs a task: that task runs again (attempt 2), the
    others once; all 12 succeed; the nanny brings the worker back and the cluster goes on."""
    executor = dask_cluster._executor
    pids_before = set(executor.worker_pids().values())
    logs = [tmp_path / f"{i}.log" for i in range(12)]
    ids = [async_task(fx.log_run, str(path), 1.0, i, group="victims")
           for i, path in enumerate(logs)]

    def a_task_just_started():
        for number, path in enumerate(logs):
            lines = runs(path)
            if len(lines) == 1 and time.time() - path.stat().st_mtime < 0.4:
                return number, lines[0][1]
        return None

    number, pid = wait_for(a_task_just_started, what="a task started on a dask worker")
    assert pid in pids_before
    os.kill(pid, signal.SIGKILL)

    assert sorted(result_group("victims", count=12, wait=WAIT * 2)) == list(range(12))
    tasks = {t.id: t for t in fetch_group("victims")}
    assert all(t.success for t in tasks.values()) and len(tasks) == 12
    assert tasks[ids[number]].attempt_count == 2
    assert {i: t.attempt_count for i, t in tasks.items() if i != ids[number]} == {
        i: 1 for i in ids if i != ids[number]}
    lines = runs(logs[number])
    assert lines[0] == ("start", pid) and ("stop", pid) not in lines
    assert [kind for kind, _ in lines] == ["start", "start", "stop"] and lines[1][1] != pid
    assert all([kind for kind, _ in runs(p)] == ["start", "stop"]
               for n, p in enumerate(logs) if n != number)
    wait_for(lambda: len(executor.worker_pids()) == 2, what="the worker replaced")
    assert pid not in executor.worker_pids().values()
    assert result(async_task(fx.add, 1, 1), WAIT) == 2


def test_sigint_leaves_the_dask_workers_and_their_tasks_alone(dask_cluster):
    """Jupyter's Interrupt signals the kernel's process group, our LocalCluster's
    workers included: they ignore it, and every task runs once, to its end."""
    executor = dask_cluster._executor
    pids = set(executor.worker_pids().values())
    ids = [async_task(fx.nap, 0.3, i, group="interrupted") for i in range(10)]
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        time.sleep(0.05)
    assert sorted(result_group("interrupted", count=10, wait=WAIT)) == list(range(10))
    assert all(fetch(i).attempt_count == 1 for i in ids)
    assert set(executor.worker_pids().values()) == pids  # none died


def test_task_that_kills_its_worker_is_a_failure_after_max_attempts(dask_cluster):
    """A task that kills its dask worker at once is delivered ``max_attempts`` times, then
    recorded as a Failure saying so; the other tasks are not disturbed."""
    doomed = async_task(fx.die, max_attempts=2)
    ids = [async_task(fx.add, i, 1) for i in range(6)]
    task = fetch(doomed, WAIT * 2)
    assert task is not None and task.success is False
    assert "the worker process running this task died" in task.result
    assert "dask worker" in task.result and task.attempt_count == 2
    assert task.cause is nbqueue.Cause.WORKER_LOST
    assert [result(i, WAIT) for i in ids] == list(range(1, 7))


# -- timeouts ----------------------------------------------------------------------------

def _timeout_checks(cluster, tmp_path):
    """A 30 s task with a 1 s timeout, among short ones: it is recorded as timed out,
    never run again, its worker process is stopped and replaced, the others succeed."""
    executor = cluster._executor
    log = tmp_path / "timed.log"
    timed = async_task(fx.log_run, str(log), 30, "never", timeout=1, ack_failure=True)
    for i in range(10):
        async_task(fx.add, i, 1, group="others")

    started = time.monotonic()
    task = fetch(timed, WAIT)
    assert task is not None and task.success is False
    assert "timed out after 1 s" in task.result and "worker process was restarted" in task.result
    assert task.cause is nbqueue.Cause.TIMEOUT
    assert time.monotonic() - started < 10 and task.time_taken() < 10
    assert sorted(result_group("others", count=10, wait=WAIT)) == list(range(1, 11))
    (kind, pid), = runs(log)
    assert kind == "start"
    wait_for(lambda: gone(pid), seconds=30, what="the timed-out task's worker stopped")
    wait_for(lambda: len(executor.worker_pids()) == 2 and pid not in
             executor.worker_pids().values(), seconds=30, what="a fresh worker")
    time.sleep(1.0)
    assert runs(log) == [("start", pid)]  # stopped, and not run again anywhere
    assert result(async_task(fx.add, 2, 2), WAIT) == 4
    return task


def test_timeout_on_our_local_cluster(dask_cluster, tmp_path):
    """Our LocalCluster: the worker is SIGKILLed at the deadline and its nanny replaces it."""
    _timeout_checks(dask_cluster, tmp_path)
    assert dask_cluster.failed == 1


def test_timeout_on_a_scheduler_started_elsewhere(store_dir, foreign_scheduler, tmp_path):
    """A scheduler nbqueue did not start (which would re-run a task whose worker is lost):
    the chunk is cancelled, then its worker restarted through its nanny."""
    cluster = Cluster(workers=2, directory=store_dir, executor="dask",
                      address=foreign_scheduler).start()
    try:
        assert cluster._executor._cancel_first
        _timeout_checks(cluster, tmp_path)
    finally:
        cluster.stop(wait=5)


def _large_values_round_trip(cluster) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: a file of the store (``nbqueue.blobs``)
    ids = [async_task(fx.length, data), async_task(fx.sized_result, 2, 5)]
    assert result(ids[0], wait=WAIT) == len(data)
    assert result(ids[1], wait=WAIT) == bytes([5]) * (2 * 1024 * 1024)
    assert fetch(ids[0]).args == (data,)


def test_large_values_on_our_local_cluster(dask_cluster):
    """Its workers share this machine's disk: they read arguments from the store's
    files and write large results there themselves."""
    _large_values_round_trip(dask_cluster)


def test_shared_data_and_results_as_arguments_on_dask(dask_cluster):
    """Workers on this machine load a shared array from the store's file, memory-mapped,
    and read the results that tasks take from the store."""
    import numpy as np

    handle = nbqueue.share(np.arange(1000.0), name="on dask")
    first = async_task(fx.shared_slice, handle, 0, 2)
    after = async_task(fx.echo, [nbqueue.Result(first)])
    total, writeable, *_ = result(first, wait=WAIT)
    assert total == float(sum(range(500))) and not writeable
    args, _ = result(after, wait=WAIT)
    assert list(args[0][0]) == list(result(first))


def test_large_values_on_a_scheduler_started_elsewhere(store_dir, foreign_scheduler):
    """Its workers may be on other machines: large arguments travel inside the items
    (read from the store by the cluster), and results come back with their chunk."""
    cluster = Cluster(workers=2, directory=store_dir, executor="dask",
                      address=foreign_scheduler).start()
    try:
        _large_values_round_trip(cluster)
    finally:
        cluster.stop(wait=5)


# -- figures, panel, dashboard -----------------------------------------------------------

def test_info_panel_and_dashboard_link(dask_cluster, capsys):
    """The dashboard link is in ``info()``, the notebook panel, ``nbqueue info``, and it
    serves the dask dashboard."""
    info = dask_cluster.info()
    link = info["dashboard"]
    assert info["executor"] == "dask" and info["workers"] == 2
    assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
    with urllib.request.urlopen(link, timeout=20) as page:
        assert page.status == 200 and b"Dask" in page.read()

    from nbqueue.display.cluster_panel import ClusterPanel
    panel = ClusterPanel(dask_cluster, interval=60)
    assert f"<a href='{link}' target='_blank'>{link}</a>" in panel._html.value
    assert "dask" in panel._html.value

    from nbqueue import cli
    wait_for(lambda: heartbeats(nbqueue.get_broker().directory).clusters(), what="a heartbeat")
    assert cli.main(["info", "--json"]) == 0
    (beat,) = json.loads(capsys.readouterr().out)["clusters"]
    assert beat["executor"] == "dask" and beat["dashboard"] == link
    assert cli.main(["info"]) == 0
    assert f"dashboard {link}" in capsys.readouterr().out
    assert "executor=dask" in repr(dask_cluster)


# -- stopping ----------------------------------------------------------------------------

def test_stop_leaves_no_process_and_hands_back_unfinished_tasks(store_dir):
    """``stop`` closes the LocalCluster: no worker process is left; the tasks still
    running go back to the queue with no attempt counted, before the LocalCluster's close
    (which takes seconds: a kernel's shutdown may be cut short in it), and a loky cluster
    on the same store finishes them (the queue and the store never left this machine)."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    cluster = Cluster(workers=2, directory=store_dir, executor="dask",
                      dashboard_address="127.0.0.1:0").start()
    worker_pids = set(cluster._executor.worker_pids().values())
    assert len(worker_pids) == 2 and worker_pids <= {p.pid for p in me.children(recursive=True)}
    ids = [async_task(fx.nap, 2.0, i, group="handed") for i in range(2)]
    wait_for(lambda: cluster.info()["running"] == 2, what="2 tasks running")
    client = cluster._executor.client  # closed first, then the LocalCluster
    close, at_close = client.close, []

    def recording_close(*args, **kwargs):
        at_close.append((queue_size(), nbqueue.get_broker().leased()))
        return close(*args, **kwargs)

    client.close = recording_close

    started = time.monotonic()
    cluster.stop(wait=0)
    assert at_close == [(2, 0)]  # both back in the queue, no lease held, as it closes
    assert time.monotonic() - started < 15
    wait_for(lambda: all(gone(pid) for pid in worker_pids), seconds=10,
             what="the dask workers exited")
    left = {p.pid for p in me.children(recursive=True) if not gone(p.pid)
            and "resource_tracker" not in " ".join(p.cmdline())} - children_before
    assert left == set()  # (multiprocessing's resource tracker lives as long as we do)
    assert not cluster.running and cluster.info()["dashboard"] is None
    assert queue_size() == 2 and fetch(ids[0]) is None

    with Cluster(workers=2, directory=store_dir):  # loky
        assert sorted(result_group("handed", count=2, wait=WAIT)) == [0, 1]
    assert [fetch(i).attempt_count for i in ids] == [1, 1]


# -- configuration -----------------------------------------------------------------------

def test_bad_executor_configuration_is_refused_at_the_call(store_dir, monkeypatch):
    with pytest.raises(ConfigurationError, match="unknown executor 'ray'.*'loky', 'dask'"):
        Cluster(executor="ray")
    with pytest.raises(ConfigurationError, match="adress"):
        Cluster(executor="dask", adress="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigurationError, match="'address' is an option of another executor"):
        Cluster(address="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigurationError, match="memory limit"):
        Cluster(executor="dask", max_rss=100_000)
    with pytest.raises(ConfigurationError, match="address must be"):
        Cluster(executor="dask", address=8786)
    with pytest.raises(ConfigurationError, match="dashboard_address only apply to a LocalCl"):
        Cluster(executor="dask", address="tcp://127.0.0.1:8786", dashboard_address=":0")
    monkeypatch.setitem(sys.modules, "distributed", None)  # dask not installed
    with pytest.raises(ConfigurationError, match=r'pip install "nbqueue\[dask\]"'):
        Cluster(executor="dask")


def test_unreachable_scheduler_is_a_clear_error_at_start(store_dir):
    cluster = Cluster(executor="dask", address="tcp://127.0.0.1:9", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ClusterError, match="cannot start or reach its scheduler.*dask sched"):
        cluster.start()
    assert time.monotonic() - started < 30
    assert not cluster.running and cluster.started_at is None


# -- the command line --------------------------------------------------------------------

def test_command_line_cluster_on_a_dask_scheduler(store_dir, foreign_scheduler):
    """``nbqueue cluster --executor dask --address ...`` serves the store from a terminal."""
    proc = subprocess.Popen([sys.executable, "-m", "nbqueue", "cluster", "--directory",
                             store_dir, "--executor", "dask", "--address", foreign_scheduler],
                            stderr=subprocess.PIPE, text=True)
    try:
        broker = nbqueue.get_broker()
        wait_for(lambda: heartbeats(broker.directory).clusters(), what="the cluster's heartbeat")
        ids = [async_task(fx.add, i, 1, group="cli") for i in range(20)]
        assert sorted(result_group("cli", count=20, wait=WAIT)) == list(range(1, 21))
        assert sorted(result(i) for i in ids) == list(range(1, 21))
        (beat,) = heartbeats(broker.directory).clusters()
        assert beat["executor"] == "dask" and beat["pid"] == proc.pid
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "dask workers" in err and "stopped; 20 done" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- a real notebook kernel --------------------------------------------------------------

@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A private kernelspec running this venv's Python, found before any other."""
    data = tmp_path_factory.mktemp("jupyter")
    spec = data / "kernels" / "nbqueue-dask-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nbqueue dask test", "language": "python"}))
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data), saved]))
    yield "nbqueue-dask-test"
    if saved is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = saved


@pytest.mark.timeout(180)
def test_notebook_cell_functions_run_on_dask_and_the_panel_links_the_dashboard(
        tmp_path, kernel_name):
    """In a real IPython kernel: a function defined in a cell runs on the dask workers,
    and the Cluster's panel (stored widget state) shows the dashboard link."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "import os, nbqueue\n"
        f"nbqueue.configure(directory={str(tmp_path / 'store')!r})\n"
        "cluster = nbqueue.Cluster(workers=2, executor='dask',\n"
        "                          dashboard_address='127.0.0.1:0').start()",
        "def cube(x):\n"
        "    return x ** 3, os.getpid()\n"
        "ids = [nbqueue.async_task(cube, i, group='cubes') for i in range(20)]\n"
        "cubes = nbqueue.result_group('cubes', count=20, wait=60000)\n"
        "pids = set(cluster._executor.worker_pids().values())\n"
        "print(sorted(c for c, _ in cubes))\n"
        "print({p for _, p in cubes} <= pids, os.getpid() in pids)",
        "cluster",
        "print('LINK', cluster.info()['dashboard'])\n"
        "print('PANEL', cluster._panels[0]._html.value)\n"
        "cluster.stop()\nprint(cluster)\n"
        "import psutil\n"
        "print('LEFT', [p.cmdline() for p in psutil.Process().children(recursive=True)\n"
        "               if p.status() != psutil.STATUS_ZOMBIE\n"
        "               and 'resource_tracker' not in ' '.join(p.cmdline())])",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    def text(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    assert text(nb.cells[1]).splitlines() == [str(sorted(i ** 3 for i in range(20))),
                                              "True False"]
    link = text(nb.cells[3]).split("LINK ")[1].split()[0]
    assert link.startswith("http://127.0.0.1:") and "stopped" in text(nb.cells[3])
    assert "LEFT []" in text(nb.cells[3])  # no worker process outlives stop()
    views = [o for o in nb.cells[2].outputs if "data" in o]
    assert views and "application/vnd.jupyter.widget-view+json" in views[0]["data"]
    assert "executor=dask" in views[0]["data"]["text/plain"]
    panel = text(nb.cells[3]).split("PANEL ")[1]
    assert f"<a href='{link}' target='_blank'>{link}</a>" in panel
    state = json.dumps(nb.metadata["widgets"])  # the panel as saved: stopped, no link
    assert "nbqueue cluster" in state and ">stopped<" in state and link not in state


# -- the benchmark -----------------------------------------------------------------------

def test_benchmark_script_runs(tmp_path):
    """A tiny run of benchmarks/executors.py: both executors, a table; no timing asserted."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "executors.py"
    run = subprocess.run([sys.executable, str(script), "--workers", "2", "--repeat", "1",
                          "--scale", "0.02"], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| loky |")
            or line.startswith("| dask |")]
    assert [row.split("|")[1:3] for row in rows] == [
        [" loky ", " noop "], [" loky ", " 10ms "], [" dask ", " noop "], [" dask ", " 10ms "]]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("way", ["0", "0.3", "default", "panel", "replace", "exit"])
def test_every_way_of_stopping_a_dask_cluster_is_quiet_and_loses_nothing(store_dir, tmp_path,
                                                                           way):
    """As for loky (``test_cluster.py``): three rounds of a 2-worker dask cluster stopped
    2 s in, in each way a user stops one, while it holds tasks not started; nothing on
    stderr, no thread dead, no error logged; then a cluster runs every task once."""
    log = tmp_path / "runs.log"
    windows = []
    if way == "exit":  # one round per process: each ends with its cluster running
        for first in range(stopping.ROUNDS):
            windows += stopping.run("dask", way, store_dir, log, first=first,
                                    rounds=1)["windows"]
    else:
        windows = stopping.run("dask", way, store_dir, log)["windows"]
    stopping.drain_and_count(log, stopping.ROUNDS * stopping.TASKS, windows)


def test_the_initializer_runs_once_in_each_dask_worker(store_dir, tmp_path):
    log = tmp_path / "inits"
    with Cluster(workers=2, directory=store_dir, executor="dask",
                 dashboard_address="127.0.0.1:0", initializer=fx.load_model,
                 initargs=(str(log), 10)):
        ids = [nbqueue.async_task(fx.use_model, x, group="dask-state") for x in range(30)]
        values = [nbqueue.result(i, wait=60_000) for i in ids]
    inits = [int(line) for line in log.read_text().split()]
    assert len(inits) == len(set(inits)) <= 2
    assert {pid for pid, _, _ in values} <= set(inits)
    assert all(value == x + 10 for x, (_, value, _) in enumerate(values))
