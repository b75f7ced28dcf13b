"""A cluster inside a real Jupyter kernel, driven as JupyterLab drives it.

Each test starts real IPython kernels with jupyter_client's ``KernelManager`` (this
venv's Python, in the test's temporary directory, with ``NBQUEUE_DIRECTORY`` pointing to
a private store) and talks to them with a ``BlockingKernelClient``: cells are executed,
interrupted (``interrupt_kernel``: SIGINT to the kernel's whole process group, loky
workers included), the kernel is restarted and shut down with JupyterLab's own calls
(a shutdown_request, then SIGTERM to the process group after 2.5 s and SIGKILL after
5 s), or killed outright. Afterwards the test reads every task's outcome back from the
store in its own process, and counts each task's real runs in a log the tasks write
(``tests.tasks_fixtures.logged``: a "start <i> <pid> <time>" and a "stop <i> <pid> <time>"
line per run).

Every wait is bounded; every kernel is shut down in a ``finally`` and any process left in
its process group (its loky workers, loky's resource tracker) is killed by pid.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

import nbqueue
from nbqueue.cluster.serving import EXIT_GRACE
from tests import stopping
from tests.waiting import wait_for

ROOT = str(Path(__file__).resolve().parents[1])
KERNEL_READY = 90  # seconds for a kernel to answer, on a busy 2-core machine
CELL = 60  # seconds for an ordinary cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- kernels ----------------------------------------------------------------------------

class CellError(Exception):
    """A cell ended with an error reply."""

    def __init__(self, ename: str, evalue: str, traceback: str, code: str) -> None:
        super().__init__(f"{ename}: {evalue}\n--- cell ---\n{code}\n--- traceback ---\n"
                         f"{traceback}")
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback


def _runs_this_python(argv: list[str]) -> bool:
    """Whether a kernelspec's argv starts this venv's Python with ipykernel_launcher."""
    if len(argv) < 3 or argv[1:3] != ["-m", "ipykernel_launcher"]:
        return False
    exe = argv[0]
    major, minor = sys.version_info[:2]
    if exe in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True  # jupyter_client runs sys.executable for these names
    found = shutil.which(exe) or exe
    return os.path.abspath(found) == os.path.abspath(sys.executable)


def kernel_manager(private_dir: Path) -> KernelManager:
    """A manager for the ``python3`` kernel, running this venv's Python.

    The installed ``python3`` kernelspec is used as it is when it runs this Python;
    otherwise a private ``python3`` spec (``sys.executable -m ipykernel_launcher -f
    {connection_file}``) is found first through the manager's own spec manager.
    """
    km = KernelManager(kernel_name="python3")
    if _runs_this_python(list(km.kernel_spec.argv)):
        return km
    spec = private_dir / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (nbqueue kernel tests)", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(private_dir / "kernels")])
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    assert _runs_this_python(list(km.kernel_spec.argv)), km.kernel_spec.argv
    return km


class Kernel:
    """One kernel (and the kernels a restart gives it), with a blocking client."""

    def __init__(self, workdir: Path, store: str, registry: "Processes") -> None:
        self.workdir = workdir
        self.store = store
        self.registry = registry
        self.km = kernel_manager(workdir / ".kernelspec")
        self.kc = None
        self.pid = 0
        self._backlog: list[dict] = []

    # life cycle

    def start(self) -> "Kernel":
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBQUEUE_")}
        env["NBQUEUE_DIRECTORY"] = self.store
        self.km.start_kernel(cwd=str(self.workdir), env=env)
        self._note_process()
        self.connect()
        return self

    def _note_process(self) -> None:
        self.pid = self.km.provisioner.process.pid
        self.registry.add_kernel(self.pid)

    def connect(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        self._backlog = []
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=KERNEL_READY)

    def restart(self) -> float:
        """``restart_kernel(now=False)`` as JupyterLab's restart; returns its seconds."""
        started = time.monotonic()
        self.km.restart_kernel(now=False)
        seconds = time.monotonic() - started
        self._note_process()
        self.connect()
        return seconds

    def close(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
            self.kc = None
        try:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=True)
        except Exception:
            pass

    # processes

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.registry.track(found)
        return found

    def workers(self) -> list[psutil.Process]:
        """The live loky worker processes of this kernel (not loky's resource tracker)."""
        alive = []
        for proc in self.descendants():
            try:
                cmdline = " ".join(proc.cmdline())
                if ("LokyProcess" in cmdline and "resource_tracker" not in cmdline
                        and proc.status() != psutil.STATUS_ZOMBIE):
                    alive.append(proc)
            except psutil.Error:
                continue
        return alive

    # cells

    def _next_iopub(self, deadline: float) -> dict:
        if self._backlog:
            return self._backlog.pop(0)
        return self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))

    def submit(self, code: str, timeout: float = CELL) -> str:
        """Execute ``code`` without waiting for it: returns once the kernel runs it."""
        msg_id = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        seen = []
        try:
            while True:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
                seen.append(msg)
                if (msg["parent_header"].get("msg_id") == msg_id
                        and msg["msg_type"] == "execute_input"):
                    break
        except queue.Empty:
            raise TimeoutError(f"the kernel did not start the cell within {timeout} s: "
                               f"{code}") from None
        finally:
            self._backlog.extend(seen)
        self.descendants()  # notes every process the kernel has now
        return msg_id

    def finish(self, msg_id: str, timeout: float = CELL, code: str = "") -> tuple[dict, str]:
        """(reply content, stdout) of a cell started with ``submit``."""
        deadline = time.monotonic() + timeout
        out, err = [], []
        try:
            while True:
                msg = self._next_iopub(deadline)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    (out if content["name"] == "stdout" else err).append(content["text"])
                elif kind == "status" and content["execution_state"] == "idle":
                    break
            while True:
                reply = self.kc.get_shell_msg(
                    timeout=max(0.01, deadline - time.monotonic()))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        except queue.Empty:
            raise TimeoutError(f"cell not finished within {timeout} s:\n{code}\n--- stdout "
                               f"---\n{''.join(out)}\n--- stderr ---\n{''.join(err)}") from None
        finally:
            self.descendants()  # notes every process the kernel has now
        return reply["content"], "".join(out)

    def run(self, code: str, timeout: float = CELL) -> str:
        """Run a cell; its stdout, or CellError with the traceback on an error reply."""
        msg_id = self.submit(code, timeout)
        content, out = self.finish(msg_id, timeout, code)
        if content["status"] != "ok":
            raise CellError(content.get("ename", "?"), content.get("evalue", ""),
                            ANSI.sub("", "\n".join(content.get("traceback", []))), code)
        return out

    def value(self, code: str, timeout: float = CELL):
        """Run a cell whose last printed line is JSON; that value."""
        out = self.run(code, timeout)
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, f"the cell printed nothing:\n{code}"
        return json.loads(lines[-1])


class Processes:
    """Every process of the test's kernels: killed by pid when the test ends."""

    def __init__(self) -> None:
        self.kernel_pids: set[int] = set()
        self.seen: dict[int, psutil.Process] = {}
        self.since = time.time() - 1

    def add_kernel(self, pid: int) -> None:
        self.kernel_pids.add(pid)
        try:
            self.track([psutil.Process(pid)])
        except psutil.NoSuchProcess:
            pass

    def track(self, procs) -> None:
        for proc in procs:
            self.seen.setdefault(proc.pid, proc)

    def in_groups(self) -> list[psutil.Process]:
        """Live processes in a kernel's process group (a kernel leads its own group)."""
        found = []
        for proc in psutil.process_iter(["create_time"]):
            try:
                if (os.getpgid(proc.pid) in self.kernel_pids and proc.pid != os.getpid()
                        and proc.info["create_time"] >= self.since):
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def group_alive(self, kernel_pid: int) -> list[psutil.Process]:
        alive = []
        for proc in psutil.process_iter(["create_time", "status"]):
            try:
                if (os.getpgid(proc.pid) == kernel_pid and proc.info["create_time"] >= self.since
                        and proc.info["status"] != psutil.STATUS_ZOMBIE):
                    alive.append(proc)
            except (OSError, psutil.Error):
                continue
        return alive

    def kill_all(self) -> None:
        procs = {p.pid: p for p in self.seen.values()}
        procs.update({p.pid: p for p in self.in_groups()})
        live = []
        for proc in procs.values():
            try:
                if proc.is_running() and proc.pid != os.getpid():  # is_running checks the pid
                    proc.kill()                                     # was not reused
                    live.append(proc)
            except psutil.Error:
                continue
        psutil.wait_procs(live, timeout=10)


@pytest.fixture
def kernels(tmp_path, store_dir):
    """Start kernels with ``kernels()``; all of them, and their processes, end afterwards."""
    registry = Processes()
    started: list[Kernel] = []

    def start() -> Kernel:
        kernel = Kernel(tmp_path, store_dir, registry)
        started.append(kernel)
        return kernel.start()

    try:
        yield start
    finally:
        for kernel in started:
            kernel.close()
        registry.kill_all()


def setup_cell(log: Path | str) -> str:
    return (f"import json, math, os, sys, threading, time\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            f"import nbqueue\n"
            f"from tests.tasks_fixtures import logged\n"
            f"LOG = {str(log)!r}\n"
            f"print(json.dumps([nbqueue.get_broker().directory, nbqueue.__file__]))\n")


def check_setup(kernel: Kernel, log: Path | str, store: str) -> None:
    """Run the setup cell: the kernel uses the test's store and the nbqueue under test."""
    directory, module = kernel.value(setup_cell(log))
    assert os.path.realpath(directory) == os.path.realpath(store), directory
    assert os.path.realpath(module) == os.path.realpath(nbqueue.__file__), module


# -- the run log --------------------------------------------------------------------------

def read_log(path: Path | str) -> list[tuple[str, int, int, float]]:
    """(kind, task number, pid, time) of every line the tasks wrote."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            entries.append((parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return entries


def starts_by_task(entries) -> dict[int, list[float]]:
    found: dict[int, list[float]] = defaultdict(list)
    for kind, number, _, when in entries:
        if kind == "start":
            found[number].append(when)
    return found


def by_number(tasks) -> dict[int, nbqueue.Task]:
    """The group's tasks by their task number (the second argument of ``logged``)."""
    return {task.args[1]: task for task in tasks}


def wait_worker_count(kernel: Kernel, expected: int, seconds: float = 20.0) -> int:
    """Wait until the kernel has exactly ``expected`` live workers for 1 s running."""
    deadline = time.monotonic() + seconds
    stable_since = None
    count = -1
    while time.monotonic() < deadline:
        count = len(kernel.workers())
        if count == expected:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 1.0:
                return count
        else:
            stable_since = None
        time.sleep(0.1)
    return count


FEEDERS = ("print(sum(t.name.startswith('nbqueue-feeder') and t.is_alive() "
           "for t in threading.enumerate()))")


# -- the tests ----------------------------------------------------------------------------

@pytest.mark.timeout(150)
def test_interrupt_reaches_only_the_kernel(kernels, store_dir, tmp_path):
    """Jupyter's Interrupt (SIGINT to the whole process group) stops the waiting cell
    only: the tasks running in the workers finish, nothing runs twice or fails."""
    log = tmp_path / "runs.log"
    kernel = kernels()
    check_setup(kernel, log, store_dir)
    kernel.run("cluster = nbqueue.Cluster(workers=2).start()\n"
               "ids = [nbqueue.async_task(logged, LOG, i, 0.2, group='i') for i in range(30)]\n")
    waiting = "nbqueue.result_group('i', count=30, wait=-1)"
    msg_id = kernel.submit(waiting)
    wait_for(lambda: len(starts_by_task(read_log(log))) >= 2, 60, "two tasks running")
    time.sleep(0.5)
    stopped_before = sum(1 for e in read_log(log) if e[0] == "stop")
    kernel.km.interrupt_kernel()
    content, _ = kernel.finish(msg_id, 30, waiting)
    print(f"interrupted with {stopped_before} of 30 tasks finished")
    assert stopped_before < 30, "the interrupt came after the whole group had finished"
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt", content

    done = kernel.value("print(len(nbqueue.result_group('i', count=30, wait=60000) or []))", 90)
    assert done == 30
    assert kernel.value("print(json.dumps(cluster.running))") is True
    assert nbqueue.count_group("i", failures=True) == 0
    assert nbqueue.count_group("i") == 30
    tasks = nbqueue.fetch_group("i")
    assert len(tasks) == 30
    assert sorted(t.attempt_count for t in tasks) == [1] * 30, \
        {t.args[1]: (t.attempt_count, t.result) for t in tasks if t.attempt_count != 1}
    entries = read_log(log)
    starts = starts_by_task(entries)
    assert sorted(starts) == list(range(30))
    assert {i: len(s) for i, s in starts.items() if len(s) != 1} == {}, "tasks ran twice"
    assert sum(1 for e in entries if e[0] == "stop") == 30

    # the cluster keeps storing outcomes after the interrupt
    log2 = tmp_path / "runs2.log"
    second = kernel.value(
        f"ids2 = [nbqueue.async_task(logged, {str(log2)!r}, i, 0.05, group='i2') "
        "for i in range(10)]\n"
        "print(len(nbqueue.result_group('i2', count=10, wait=30000) or []))", 60)
    assert second == 10
    assert nbqueue.count_group("i2") == 10 and nbqueue.count_group("i2", failures=True) == 0
    assert kernel.value("print(json.dumps(cluster.running))") is True


@pytest.mark.timeout(120)
def test_tasks_that_exit_or_raise_base_exceptions_are_failures(kernels, store_dir, tmp_path):
    """sys.exit(), SystemExit, KeyboardInterrupt and GeneratorExit in a task are that
    task's Failure, and the cluster goes on."""
    kernel = kernels()
    check_setup(kernel, tmp_path / "runs.log", store_dir)
    ids = kernel.value(
        "def exits():\n"
        "    sys.exit(3)\n"
        "def raises_system_exit():\n"
        "    raise SystemExit\n"
        "def raises_keyboard_interrupt():\n"
        "    raise KeyboardInterrupt\n"
        "def raises_generator_exit():\n"
        "    raise GeneratorExit\n"
        "cluster = nbqueue.Cluster(workers=2).start()\n"
        "ids = {f.__name__: nbqueue.async_task(f, group='b') for f in\n"
        "       (exits, raises_system_exit, raises_keyboard_interrupt, raises_generator_exit)}\n"
        "print(json.dumps(ids))\n")
    finished = kernel.value("print(len(nbqueue.fetch_group('b', count=4, wait=30000) or []))", 60)
    outcomes = {name: nbqueue.fetch(task_id) for name, task_id in ids.items()}
    after = kernel.value("print(json.dumps(nbqueue.result(nbqueue.async_task(math.sqrt, 16), "
                         "wait=30000)))", 60)
    running = kernel.value("print(json.dumps(cluster.running))")
    print({name: (None if t is None else (t.success, t.result.splitlines()[0]
                                          if isinstance(t.result, str) else t.result,
                                          t.attempt_count))
           for name, t in outcomes.items()}, f"then sqrt(16) = {after}, running = {running}")

    assert finished == 4, {name: t for name, t in outcomes.items()}
    expected = {"exits": "SystemExit: 3", "raises_system_exit": "SystemExit",
                "raises_keyboard_interrupt": "KeyboardInterrupt",
                "raises_generator_exit": "GeneratorExit"}
    for name, text in expected.items():
        task = outcomes[name]
        assert task is not None, f"{name}: no outcome stored"
        assert task.success is False, (name, task.result)
        assert isinstance(task.result, str) and text in task.result, (name, task.result)
        assert task.attempt_count == 1, (name, task.attempt_count)
    assert "KeyboardInterrupt" not in outcomes["raises_system_exit"].result
    assert after == 4.0
    assert running is True


COUNT = 24  # tasks of 1 s in the group a restart or shutdown cuts short


def _interrupted_by_stop(kernel: Kernel, kernels, store_dir, tmp_path, how: str) -> None:
    """Tests 3 and 4: a 24-task group; the kernel restarted (or shut down and a new one
    started) ~3 s into it; a new cluster in the new kernel finishes the group."""
    log = tmp_path / "runs.log"
    check_setup(kernel, log, store_dir)
    kernel.run("cluster = nbqueue.Cluster(workers=2).start()\n"
               "ids = [nbqueue.async_task(logged, LOG, i, 1.0, group='r') "
               f"for i in range({COUNT})]\n")
    wait_for(lambda: read_log(log), 60, "the first task started")
    time.sleep(3)
    old_pid = kernel.pid
    old_popen = kernel.km.provisioner.process
    old_proc = psutil.Process(old_pid)
    before = read_log(log)
    stop_called = time.monotonic()
    stop_wall = time.time()
    if how == "restart":
        seconds = kernel.restart()
        new = kernel
    else:
        kernel.km.shutdown_kernel(now=False)
        seconds = time.monotonic() - stop_called
        new = None
    status = getattr(getattr(kernel.km, "_shutdown_status", None), "name", "?")
    exited = wait_for_exit(old_proc, 10)
    returncode = old_popen.poll()
    leftovers = [p.pid for p in kernel.registry.group_alive(old_pid)]
    print(f"{how}: took {seconds:.2f} s; old kernel exited={exited} returncode={returncode} "
          f"jupyter_client shutdown status={status}; {sum(e[0] == 'stop' for e in before)} "
          f"tasks finished before; old group processes alive after: {leftovers}")

    if new is None:
        new = kernels()
    else:
        assert new.pid != old_pid
    check_setup(new, log, store_dir)
    new.run("cluster = nbqueue.Cluster(workers=4).start()\n")
    done = new.value(f"print(len(nbqueue.result_group('r', count={COUNT}, wait=60000) or []))",
                     90)
    group_seconds = time.monotonic() - stop_called
    print(f"the whole group was done {group_seconds:.1f} s after the {how} call")

    assert exited, "the old kernel process did not exit"
    # it ends on the shutdown request itself: neither the SIGTERM (2.5 s) nor the SIGKILL
    assert returncode == 0 and status == "ShutdownRequest", \
        f"the old kernel did not end by itself (returncode {returncode}, status {status})"
    assert seconds < 2.5, f"the {how} took {seconds:.2f} s"
    assert done == COUNT
    assert group_seconds < 40, f"the group finished {group_seconds:.1f} s after the {how}"
    assert nbqueue.count_group("r", failures=True) == 0
    assert nbqueue.count_group("r") == COUNT
    tasks = nbqueue.fetch_group("r")
    assert {t.args[1]: t.attempt_count for t in tasks if t.attempt_count != 1} == {}
    starts = starts_by_task(read_log(log))
    assert sorted(starts) == list(range(COUNT))
    assert {i: len(s) for i, s in starts.items() if len(s) > 2} == {}, "tasks ran 3+ times"
    # a task whose run the stop cut short ran again only in the new kernel
    second_runs = {i: s[1] - stop_wall for i, s in starts.items() if len(s) == 2}
    print(f"{len(second_runs)} task(s) ran twice: {second_runs}")


def wait_for_exit(proc: psutil.Process, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.alone  # bounds a time from above
@pytest.mark.timeout(200)
def test_restart_hands_tasks_back_at_once(kernels, store_dir, tmp_path):
    """Restart Kernel mid-group: the running tasks go back to the queue uncounted, and a
    cluster in the new kernel finishes the group long before ``retry``."""
    _interrupted_by_stop(kernels(), kernels, store_dir, tmp_path, "restart")


@pytest.mark.alone  # bounds a time from above
@pytest.mark.timeout(200)
def test_shutdown_then_new_kernel(kernels, store_dir, tmp_path):
    """Shut Down Kernel mid-group, then a new kernel on the same store: as a restart."""
    _interrupted_by_stop(kernels(), kernels, store_dir, tmp_path, "shutdown")


@pytest.mark.timeout(180)
def test_hard_kill_leases_expire_after_retry(kernels, store_dir, tmp_path):
    """A kernel SIGKILLed with its workers: its leases hold until they expire, then its
    tasks run again (attempt 2) in another kernel's cluster; nothing is lost."""
    retry = 4.0
    count = 30
    log = tmp_path / "runs.log"
    kernel = kernels()
    check_setup(kernel, log, store_dir)
    new = kernels()  # a second notebook, ready before the kill: its cluster starts at once
    check_setup(new, log, store_dir)
    kernel.run(f"cluster = nbqueue.Cluster(workers=2, retry={retry})\n"
               "cluster.start()\n"
               f"ids = [nbqueue.async_task(logged, LOG, i, 0.5, group='k') "
               f"for i in range({count})]\n")
    wait_for(lambda: read_log(log), 60, "the first task started")
    time.sleep(1.5)
    old_pid = kernel.pid
    killed_at = time.time()
    # SIGKILL to the kernel's process group, loky workers included, as jupyter_client's
    # own kill does (it is private in jupyter_client 8: KernelManager._kill_kernel)
    os.killpg(os.getpgid(old_pid), signal.SIGKILL)
    kernel.km.provisioner.process.wait(10)
    wait_for(lambda: not kernel.registry.group_alive(old_pid), 10,
             "the killed kernel's processes gone")
    before = read_log(log)
    ran_before = {e[1] for e in before if e[0] == "start"}
    stopped_before = {e[1] for e in before if e[0] == "stop"}
    cut_short = ran_before - stopped_before
    # a task that ran to its end just before the kill, but whose outcome was not yet
    # stored, was still held: it runs again too. Only stored outcomes are final.
    stored_before = set(by_number(nbqueue.fetch_group("k") or []))
    new.run("cluster = nbqueue.Cluster(workers=2).start()\n")
    print(f"killed with {len(stopped_before)} finished and {sorted(cut_short)} running; "
          f"the new cluster started {time.time() - killed_at:.2f} s after the kill")
    done = new.value(f"print(len(nbqueue.result_group('k', count={count}, wait=60000) or []))",
                     90)
    assert done == count
    assert nbqueue.count_group("k", failures=True) == 0
    tasks = by_number(nbqueue.fetch_group("k"))
    starts = starts_by_task(read_log(log))
    assert sorted(tasks) == list(range(count)) and sorted(starts) == list(range(count))
    assert cut_short, "the kill came when no task was running"

    held = {i for i, t in tasks.items() if t.attempt_count == 2}
    later = {i: [round(s - killed_at, 2) for s in starts[i] if s > killed_at]
             for i in sorted(held)}
    print(f"attempt 2 (held by the dead kernel): {later}")
    assert {i: t.attempt_count for i, t in tasks.items() if t.attempt_count not in (1, 2)} == {}
    # the tasks running at the kill were held by it: they ran again, as attempt 2
    assert {i: tasks[i].attempt_count for i in cut_short if tasks[i].attempt_count != 2} == {}
    assert {i: len(starts[i]) for i in cut_short if len(starts[i]) != 2} == {}
    # tasks whose outcome was stored before the kill ran once, as attempt 1
    assert stored_before <= stopped_before
    assert {i: (len(starts[i]), tasks[i].attempt_count) for i in stored_before
            if len(starts[i]) != 1 or tasks[i].attempt_count != 1} == {}
    # every task the dead kernel held ran again only once its lease had expired: a lease
    # is renewed every retry/4 s, so none expired sooner than 3/4 of retry after the kill
    earliest = min(s for i in held for s in starts[i] if s > killed_at) - killed_at
    print(f"the first re-run of a held task started {earliest:.2f} s after the kill")
    assert earliest >= 0.75 * retry - 0.1, earliest
    # and the tasks it never leased ran in the new kernel as attempt 1, the first of them
    # before any held task: the new cluster was serving while the dead one's leases held
    fresh = set(range(count)) - held - stored_before
    assert fresh, "the dead kernel held every task left"
    assert {i: starts[i] for i in fresh
            if len(starts[i]) != 1 or starts[i][0] <= killed_at} == {}
    first_fresh = min(starts[i][0] for i in fresh) - killed_at
    print(f"the first task the dead kernel did not hold started {first_fresh:.2f} s after "
          "the kill")
    assert first_fresh < earliest


def test_a_map_cut_short_by_a_kernel_kill_resumes_with_reuse(kernels, store_dir, tmp_path):
    """A kernel SIGKILLed in the middle of a map of many items: the same cell run again in
    a new kernel, with ``reuse=True``, gives every result and runs only what had not
    finished: each item whose batch was stored before the kill ran once."""
    count, seconds, retry = 600, 0.01, 4.0
    log = tmp_path / "runs.log"
    cell = (f"cluster = nbqueue.Cluster(workers=2, retry={retry}).start()\n"
            f"values = list(nbqueue.map(logged, [LOG] * {count}, range({count}), "
            f"[{seconds}] * {count}, group='sweep', reuse=True))\n"
            f"print(json.dumps(values == list(range({count}))))\n")
    kernel = kernels()
    check_setup(kernel, log, store_dir)
    new = kernels()  # ready before the kill
    check_setup(new, log, store_dir)
    kernel.submit(cell)
    wait_for(lambda: nbqueue.count_group("sweep") >= count // 4, 60,
             "a quarter of the items stored")
    os.killpg(os.getpgid(kernel.pid), signal.SIGKILL)
    kernel.km.provisioner.process.wait(10)
    wait_for(lambda: not kernel.registry.group_alive(kernel.pid), 10,
             "the killed kernel's processes gone")
    stored = {t.args[1] for t in nbqueue.fetch_group("sweep", failures=True)}
    assert count // 4 <= len(stored) < count, len(stored)
    assert new.value(cell, 120) is True
    tasks = nbqueue.fetch_group("sweep", failures=True)
    assert sorted(t.args[1] for t in tasks) == list(range(count))
    assert all(t.success for t in tasks)
    starts = starts_by_task(read_log(log))
    assert sorted(starts) == list(range(count))
    # stored before the kill: never run again; the rest: at most once more (a batch cut
    # short by the kill runs again whole, once its lease has expired)
    assert {i: len(starts[i]) for i in stored if len(starts[i]) != 1} == {}
    assert {i: len(starts[i]) for i in range(count) if len(starts[i]) > 2} == {}
    print(f"{len(stored)} items stored before the kill; "
          f"{sum(len(s) == 2 for s in starts.values())} ran twice")


def run_group_of_naps(kernel: Kernel, group: str, count: int,
                      workers: int) -> tuple[int, int, int]:
    """Run ``count`` 50 ms tasks in ``group`` from the kernel; return how many finished,
    then the kernel's live workers (expected: ``workers``) and its feeder threads."""
    done = kernel.value(f"tids = [nbqueue.async_task(time.sleep, 0.05, group={group!r}) "
                        f"for i in range({count})]\n"
                        f"print(len(nbqueue.result_group({group!r}, count={count}, "
                        "wait=30000, failures=True) or []))", 60)
    return done, wait_worker_count(kernel, workers), kernel.value(FEEDERS)


@pytest.mark.timeout(180)
def test_rerunning_the_cluster_cell_gives_one_cluster(kernels, store_dir, tmp_path):
    """Running the cluster cell again keeps one cluster; a different one replaces it."""
    kernel = kernels()
    check_setup(kernel, tmp_path / "runs.log", store_dir)
    cell = "cluster = nbqueue.Cluster(workers=2).start()\nprint(id(cluster))\n"
    kernel.run("_kept = []")
    ids = []
    for _ in range(3):
        ids.append(int(kernel.run(cell).split()[-1]))
        kernel.run("_kept.append(cluster)")  # keeps each object alive: ids stay unique
    same = kernel.value("print(json.dumps([c is cluster for c in _kept]))")
    done, workers, feeders = run_group_of_naps(kernel, "w", 40, workers=2)
    print(f"ids {ids}; workers {workers}; feeder threads {feeders}")
    assert len(set(ids)) == 1 and same == [True, True, True], (ids, same)
    assert done == 40
    assert feeders == 1
    assert workers == 2, [" ".join(p.cmdline()) for p in kernel.workers()]

    # a different cluster cell replaces it
    states = kernel.value("old = cluster\n"
                          "cluster = nbqueue.Cluster(workers=3).start()\n"
                          "print(json.dumps([old is cluster, old.running, cluster.running, "
                          "cluster.workers]))")
    done, workers, feeders = run_group_of_naps(kernel, "w3", 60, workers=3)
    print(f"replaced: {states}; workers {workers}; feeder threads {feeders}")
    assert states == [False, False, True, 3]
    assert done == 60 and nbqueue.count_group("w3") == 60
    assert feeders == 1
    assert workers == 3, [" ".join(p.cmdline()) for p in kernel.workers()]

    # a cluster as a context manager
    kernel.run("cluster.stop()")
    inside = kernel.value(
        "with nbqueue.Cluster(workers=2).start() as c:\n"
        "    r = nbqueue.result(nbqueue.async_task(math.sqrt, 9), wait=30000)\n"
        "    inside = c.running\n"
        "print(json.dumps([r, inside, c.running]))", 60)
    assert inside == [3.0, True, False]
    assert wait_for(lambda: kernel.value(FEEDERS) == 0, 15, "no feeder thread left")
    assert wait_worker_count(kernel, 0) == 0, "workers left after the with block"


@pytest.mark.timeout(120)
def test_hook_object_given_before_the_cluster_starts_is_called_itself(kernels, store_dir,
                                                                       tmp_path):
    """A hook given as an object while no cluster runs is called as that very object
    (it appends to the notebook's own list) by the cluster started afterwards."""
    kernel = kernels()
    check_setup(kernel, tmp_path / "runs.log", store_dir)
    kernel.run("import warnings\n"
               "warnings.simplefilter('ignore')\n"  # NoClusterWarning: no cluster yet
               "results = []\n"
               "tid = nbqueue.async_task(math.sqrt, 16, hook=lambda t: "
               "results.append(t.result))\n")
    value = kernel.value("cluster = nbqueue.Cluster(workers=2).start()\n"
                         "print(json.dumps(nbqueue.result(tid, wait=30000)))", 60)
    seen = kernel.value("deadline = time.monotonic() + 10\n"
                        "while not results and time.monotonic() < deadline:\n"
                        "    time.sleep(0.05)\n"
                        "time.sleep(0.2)\n"  # a second call would show up too
                        "print(json.dumps(results))", 30)
    assert value == 4.0
    assert seen == [4.0]


@pytest.mark.timeout(150)
def test_a_cell_function_fails_with_its_source_lines_and_its_output_stays_out_of_cells(
        kernels, store_dir, tmp_path):
    """A function defined in a cell fails in a worker: ``Task.traceback``, read in another
    process, shows the cell's lines and the chain. A task's prints go to its ``output``,
    readable while it runs, and never into a cell that runs meanwhile."""
    kernel = kernels()
    check_setup(kernel, tmp_path / "runs.log", store_dir)
    ids = kernel.value(
        "def parse(text):\n"
        "    return int(text)  # the line that fails\n"
        "def load(text):\n"
        "    try:\n"
        "        return parse(text)\n"
        "    except ValueError as exc:\n"
        "        raise RuntimeError(f'cannot load {text!r}') from exc\n"
        "def chatty(n):\n"
        "    for i in range(n):\n"
        "        print('LEAK-CHECK line', i, flush=True)\n"
        "        nbqueue.report(i + 1, n, f'line {i}')\n"
        "        time.sleep(0.2)\n"
        "    return n\n"
        "cluster = nbqueue.Cluster(workers=2).start()\n"
        "ids = [nbqueue.async_task(load, 'x7'), nbqueue.async_task(chatty, 25)]\n"
        "print(json.dumps(ids))\n")
    failed_id, chatty_id = ids
    seen = wait_for(lambda: "LEAK-CHECK line 3" in (nbqueue.output(chatty_id) or ""), 30,
                    "the running task's output read from another process")
    assert seen
    running = nbqueue.status(chatty_id)
    assert running["state"] == "running" and running["progress"][1] == 25, running
    # a cell that runs while the task prints: none of it lands here
    during = kernel.run("time.sleep(2.5)\nprint('cell done')\n")
    assert "LEAK-CHECK" not in during and "cell done" in during
    done = nbqueue.fetch(chatty_id, wait=30000)
    assert done.success and done.result == 25
    assert done.output.count("LEAK-CHECK line") == 25 and done.progress == (25, 25, "line 24")
    failure = nbqueue.fetch(failed_id, wait=30000)
    assert not failure.success
    text = failure.traceback
    print(text)
    assert "return int(text)  # the line that fails" in text
    assert "raise RuntimeError(f'cannot load {text!r}') from exc" in text
    assert "The above exception was the direct cause" in text and "ipykernel" in text
    exc = failure.exception
    assert isinstance(exc, RuntimeError) and str(exc) == "cannot load 'x7'"
    assert isinstance(exc.__cause__, ValueError)
    assert failure.result.startswith("RuntimeError: cannot load 'x7'")


def quiet_setup(kernel: Kernel, tag: str, tmp_path: Path, log: Path, store: str) -> dict:
    """The setup cell, then: the kernel's stderr (``sys.stderr`` and file descriptor 2,
    which its threads, loky's included, and its worker processes write to) goes to a
    file; a recording ``threading.excepthook`` notes every thread that dies; nbqueue's
    own log (its warnings about tasks handed back are meant for the user) goes to a
    file of its own. Returns those files."""
    check_setup(kernel, log, store)
    paths = {name: tmp_path / f"{tag}.{name}" for name in ("stderr", "died", "nbqueue")}
    kernel.run("import logging, warnings\n"
               "warnings.simplefilter('ignore', nbqueue.NoClusterWarning)\n"  # queued first
               f"_err = open({str(paths['stderr'])!r}, 'a', buffering=1)\n"
               "os.dup2(_err.fileno(), 2)\n"
               "sys.stderr = _err\n"
               f"def _died(args, path={str(paths['died'])!r}):\n"
               "    with open(path, 'a') as out:\n"
               "        out.write(f'{args.thread}: {args.exc_type.__name__}: "
               "{args.exc_value}\\n')\n"
               "threading.excepthook = _died\n"
               f"_handler = logging.FileHandler({str(paths['nbqueue'])!r})\n"
               "_handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))\n"
               "logging.getLogger('nbqueue').addHandler(_handler)\n"
               "logging.getLogger('nbqueue').propagate = False\n")
    return paths


def check_quiet(paths: dict) -> list[str]:
    """Nothing on the kernel's stderr, no thread dead, no error in nbqueue's log; the
    lines nbqueue logged."""
    def text(name: str) -> str:
        return paths[name].read_text() if paths[name].exists() else ""
    assert text("stderr") == "", text("stderr")
    assert text("died") == "", text("died")
    said = text("nbqueue").splitlines()
    assert [line for line in said if not line.startswith(("INFO ", "WARNING "))
            or "Traceback" in line] == [], said
    return said


@pytest.mark.timeout(400)
# A kernel that stops a dask cluster needs the CPU to close it within the 2.5 s Jupyter
# gives before its SIGTERM, which the kernels and clusters of other tests beside it take:
# those run alone. The two stops of loky clusters run on one worker, one after the other.
@pytest.mark.parametrize("executor", [
    pytest.param("loky", marks=pytest.mark.xdist_group("kernel-stops-loky")),
    pytest.param("dask", marks=pytest.mark.alone)])
@pytest.mark.parametrize("how", ["restart", "shutdown"])
def test_restart_or_shutdown_with_tasks_not_started_is_quiet(kernels, store_dir, tmp_path, how,
                                                             executor):
    """Restart Kernel (or Shut Down Kernel, then a new kernel), three times, each 2 s
    into 20 tasks of 1.5 s on 2 workers, while the cluster holds tasks no worker has
    started: nothing on the kernel's stderr, no thread dead, no error logged; then a
    cluster runs all 60 tasks, each once."""
    if executor == "dask":
        pytest.importorskip("distributed", reason='needs "nbqueue[dask]"')
    options = ", executor='dask', dashboard_address=None" if executor == "dask" else ""
    log = tmp_path / "runs.log"
    windows: list[tuple[float, float, float]] = []  # each stop: began, ended by, grace
    kernel = kernels()
    for r in range(stopping.ROUNDS):
        paths = quiet_setup(kernel, f"{how}{r}", tmp_path, log, store_dir)
        held, running = kernel.value(
            f"ids = [nbqueue.async_task(logged, LOG, {r} * {stopping.TASKS} + i, "
            f"{stopping.SECONDS}, group='stop') for i in range({stopping.TASKS})]\n"
            f"cluster = nbqueue.Cluster(workers=2{options}).start()\n"
            f"time.sleep({stopping.STOP_AFTER})\n"
            "print(json.dumps([len(cluster.inflight), cluster.running_tasks()]))\n", 60)
        assert held > running, (held, running)
        old_pid, old_proc = kernel.pid, psutil.Process(kernel.pid)
        began = time.time()
        if how == "restart":
            kernel.restart()
        else:
            kernel.km.shutdown_kernel(now=False)
        assert wait_for_exit(old_proc, 15), "the old kernel did not exit"
        windows.append((began, time.time(), EXIT_GRACE))
        wait_for(lambda: not kernel.registry.group_alive(old_pid), 15,
                 "the old kernel's processes gone")
        said = check_quiet(paths)
        print(f"{executor} {how} {r}: held {held}, running {running}; nbqueue said {said}")
        assert any("hands" in line and "back" in line for line in said), said
        if how == "shutdown":
            kernel = kernels()
    stopping.drain_and_count(log, stopping.ROUNDS * stopping.TASKS, windows)
