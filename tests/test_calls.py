"""reuse=True (nbqueue.calls): the same call gives back its task instead of sending it again,
so re-running a notebook cell runs nothing twice. A real store, and a real cluster where
tasks must run; a notebook cell is played by source code exec'd into a fresh module named
__main__ (under a new file name each time, as a new kernel gives)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

import nbqueue
from nbqueue import (AsyncTask, async_iter, async_task, configure, fetch, get_broker,
                     queue_size, result)
from nbqueue import calls
from nbqueue import conf
from nbqueue.errors import ConfigurationError
from nbqueue.disk.directory import get_store
from tests import tasks_fixtures as fx
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::nbqueue.errors.NoClusterWarning")]
WAIT = 20_000  # ms
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CELL = '''
def record(path, x):
    """Append a line to ``path``: one line per run of the task."""
    with open(path, "a") as out:
        out.write(f"{x}\\n")
    return x * SCALE

twice = lambda path, x: record(path, x) * 2
'''
_cells = itertools.count()


def run_cell(source: str = CELL, **namespace):
    """The functions of a notebook cell, defined afresh: new objects, new code, new file."""
    namespace = {"__name__": "__main__", "SCALE": 2, **namespace}
    exec(compile(source, f"/tmp/ipykernel_{next(_cells)}/cell.py", "exec"), namespace)
    return namespace


def lines(path) -> list[str]:
    try:
        with open(path) as src:
            return src.read().splitlines()
    except FileNotFoundError:
        return []


# -- re-running a cell -----------------------------------------------------------------

def test_rerunning_a_cell_runs_its_tasks_once(cluster, tmp_path):
    path = str(tmp_path / "effects.txt")
    cell = run_cell()
    first = async_task(cell["record"], path, 21, reuse=True)
    lam = async_task(cell["twice"], path, 5, reuse=True)
    # the cell run again at once (tasks queued or running), with a line added above its
    # functions (their line numbers change, not what they do); then after they finished
    again = run_cell("import math  # a line added\n" + CELL)
    assert again["record"] is not cell["record"]
    assert async_task(again["record"], path, 21, reuse=True) == first
    assert async_task(again["twice"], path, 5, reuse=True) == lam
    assert result(first, wait=WAIT) == 42 and result(lam, wait=WAIT) == 20
    third = run_cell()
    assert async_task(third["record"], path, 21, reuse=True) == first
    assert async_task(third["twice"], path, 5, reuse=True) == lam
    nbqueue.flush()
    assert wait_for(lambda: get_broker().pending() == 0 and get_broker().leased() == 0, 10)
    assert sorted(lines(path)) == ["21", "5"]  # each task ran once


def test_another_process_finds_the_same_call(cluster, tmp_path, monkeypatch):
    """A new kernel (another process, another hash seed, another file name) sends the same
    call: it gets the id of the task this process sent."""
    path = str(tmp_path / "effects.txt")
    task_id = async_task(run_cell()["record"], path, 3, reuse=True)
    assert result(task_id, wait=WAIT) == 6
    script = (f"import sys\nsys.path.insert(0, {ROOT!r})\nimport nbqueue\n"
              f"from tests.test_calls import run_cell\n"
              f"nbqueue.configure(directory={conf.settings().directory!r})\n"
              f"print(nbqueue.async_task(run_cell()['record'], {path!r}, 3, reuse=True))\n")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == task_id
    assert lines(path) == ["3"]


# -- what is the same call ---------------------------------------------------------------

def test_different_arguments_options_or_group_are_different_calls(store_dir):
    base = async_task(fx.add, 1, 2, reuse=True)
    assert async_task(fx.add, 1, 2, reuse=True) == base
    assert async_task("tests.tasks_fixtures.add", 1, 2, reuse=True) == base  # by its path
    assert async_task(fx.add, 1, 2, q_options={"reuse": True}) == base
    others = [async_task(fx.add, 1, 3, reuse=True), async_task(fx.add, 1, b=2, reuse=True),
              async_task(fx.add, 1.0, 2, reuse=True), async_task(fx.echo, 1, 2, reuse=True),
              async_task(fx.add, 1, 2, reuse=True, group="g"),
              async_task(fx.add, 1, 2, reuse=True, group="h"),
              async_task(fx.add, 1, 2, reuse=True, timeout=5),
              async_task(fx.add, 1, 2, reuse=True, save=False),
              async_task(fx.add, 1, 2, reuse=True, cached=True),
              async_task(fx.add, 1, 2, reuse=True, task_name="mine"),
              async_task(fx.add, 1, 2, reuse=True, max_attempts=1),
              async_task(fx.add, 1, 2, reuse=True, ack_failure=False),
              async_task(fx.add, 1, 2, reuse=True, hook=fx.hook_record)]
    assert len({base, *others}) == 1 + len(others)
    assert queue_size() == 1 + len(others)
    assert async_task(fx.add, 1, 2, reuse=True, group="g") == others[4]
    assert async_task(fx.add, 1, 2) not in {base, *others}  # reuse off: always sent


def test_changed_code_default_closure_or_global_is_another_call(store_dir):
    def send(cell, *args):
        return async_task(cell["record"], *args, reuse=True)

    base = send(run_cell(), "p", 1)
    assert send(run_cell(), "p", 1) == base
    changed = {
        "code": send(run_cell(CELL.replace("x * SCALE", "x * SCALE + 0")), "p", 1),
        "global": send(run_cell(SCALE=3), "p", 1),
        "argument": send(run_cell(), "p", 2),
    }
    assert len({base, *changed.values()}) == 4, changed

    maker = run_cell("def make(k, d=1):\n    return lambda x, e=d: x + k + e\n")["make"]
    fresh = run_cell("def make(k, d=1):\n    return lambda x, e=d: x + k + e\n")["make"]
    closure = async_task(maker(1), 10, reuse=True)
    assert async_task(fresh(1), 10, reuse=True) == closure
    assert async_task(maker(2), 10, reuse=True) != closure  # a closure value
    assert async_task(maker(1, d=5), 10, reuse=True) != closure  # a default


def test_notebook_classes_in_arguments_compare_by_definition(store_dir):
    source = ("class Params:\n    def __init__(self, n):\n        self.n = n\n"
              "    def double(self):\n        return 2 * self.n\n"
              "def run(p):\n    return p.double()\n")
    one, two = run_cell(source), run_cell(source)
    assert one["Params"] is not two["Params"]
    first = async_task(one["run"], one["Params"](4), reuse=True)
    assert async_task(two["run"], two["Params"](4), reuse=True) == first
    assert async_task(two["run"], two["Params"](5), reuse=True) != first
    other = run_cell(source.replace("2 * self.n", "3 * self.n"))
    assert async_task(other["run"], other["Params"](4), reuse=True) != first


# -- which earlier task stands for the call ------------------------------------------------

def test_a_failure_is_run_again_under_a_new_id(cluster):
    first = async_task(fx.boom, "once", reuse=True)
    assert fetch(first, wait=WAIT).success is False
    again = async_task(fx.boom, "once", reuse=True)
    assert again != first
    assert fetch(again, wait=WAIT).success is False
    assert async_task(fx.add, 2, 2, reuse=True) == async_task(fx.add, 2, 2, reuse=True)


def test_queued_or_leased_task_is_given_back_and_a_lost_one_sent_again(store_dir,
                                                                      monkeypatch):
    broker = get_broker()
    first = async_task(fx.add, 1, 2, reuse=True)
    assert queue_size() == 1
    assert async_task(fx.add, 1, 2, reuse=True) == first  # just sent
    monkeypatch.setattr(calls, "SENDING", 0.0)
    assert async_task(fx.add, 1, 2, reuse=True) == first  # found in the queue
    assert queue_size() == 1
    assert broker.purge() == 1  # lost: neither stored nor queued
    second = async_task(fx.add, 1, 2, reuse=True)
    assert second != first and queue_size() == 1
    leases = broker.lease("someone", 10, 60.0)  # running
    assert len(leases) == 1 and queue_size() == 0
    assert async_task(fx.add, 1, 2, reuse=True) == second
    assert queue_size() == 0
    broker.release([lease.token for lease in leases])  # back in the queue
    assert async_task(fx.add, 1, 2, reuse=True) == second
    assert broker.holds([second, first]) == {second}


def test_an_unsaved_success_is_not_reused(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(calls, "SENDING", 0.0)
    path = str(tmp_path / "effects.txt")
    first = async_task(run_cell()["record"], path, 7, save=False, reuse=True)
    assert wait_for(lambda: lines(path) == ["7"], 20)
    broker = get_broker()
    assert wait_for(lambda: broker.pending() == 0 and broker.leased() == 0, 10)
    second = async_task(run_cell()["record"], path, 7, save=False, reuse=True)
    assert second != first
    assert wait_for(lambda: lines(path) == ["7", "7"], 20)


def test_sync_reuses_a_stored_success(store_dir):
    first = async_task(fx.add, 20, 22, sync=True, reuse=True)
    assert result(first) == 42
    assert async_task(fx.add, 20, 22, sync=True, reuse=True) == first
    assert async_task(fx.add, 20, 22, reuse=True) == first  # not sent to the queue either
    assert queue_size() == 0
    failed = async_task(fx.boom, sync=True, reuse=True)
    assert async_task(fx.boom, sync=True, reuse=True) != failed


def test_two_processes_sending_the_same_call_at_once_send_it_once(store_dir):
    broker = get_broker()
    one = calls.Reuse(broker, False, "k" * 40)
    two = calls.Reuse(broker, False, "k" * 40)  # read the key before the first one claimed
    assert one.earlier() is None and two.earlier() is None
    assert one.claim("id-1") == "id-1"
    assert two.claim("id-2") == "id-1"
    assert get_store(broker.directory).saved.call("k" * 40)[0] == "id-1"


# -- async_iter, AsyncTask, configure --------------------------------------------------------

def test_async_iter_is_reused_whole_and_its_failures_sent_again(store_dir):
    first = async_iter(fx.add, [(1, 1), (2, 2), (3, 3)], reuse=True)
    size = queue_size()
    assert size == 3
    assert async_iter(fx.add, [(1, 1), (2, 2), (3, 3)], reuse=True) == first
    assert queue_size() == size  # nothing enqueued
    other = async_iter(fx.add, [(1, 1), (2, 2)], reuse=True)
    assert other != first and async_iter(fx.add, [(2, 2), (1, 1), (3, 3)], reuse=True) != first
    assert async_iter(fx.add, [(1, 1), (2, 2), (3, 3)]) != first  # reuse off
    running = nbqueue.Cluster(workers=1, directory=store_dir).start()
    try:
        assert result(first, wait=WAIT) == [2, 4, 6]
        assert async_iter(fx.add, [(1, 1), (2, 2), (3, 3)], reuse=True) == first
        failing = async_iter(fx.boom, ["a", "b"], reuse=True)
        failed = fetch(failing, wait=WAIT)
        assert failed is not None and not failed.success
        # the same iter, its failed batches sent again
        assert async_iter(fx.boom, ["a", "b"], reuse=True) == failing
        wait_for(lambda: (fetch(failing) or failed).stopped > failed.stopped, WAIT / 1000,
                 "its failures run again")
    finally:
        running.stop(wait=5)


def test_configure_reuse_and_async_task_reuse(cluster):
    task = AsyncTask(fx.add, 7, 8)
    assert task.reuse is None
    task.reuse = True
    first = task.run()
    twin = AsyncTask(fx.add, 7, 8, reuse=True)
    assert twin.reuse is True and twin.run() == first
    assert twin.result(wait=WAIT) == 15
    assert AsyncTask(fx.add, 7, 8).run() != first  # reuse off by default
    assert conf.settings().reuse is False
    configure(reuse=True)
    assert async_task(fx.add, 7, 8) == first
    assert async_task(fx.add, 7, 8, reuse=False) != first


def test_a_bad_reuse_value_is_refused_naming_it(store_dir, monkeypatch):
    for value in ("yes", 1, 0.0, []):
        with pytest.raises(ConfigurationError, match="'reuse'"):
            async_task(fx.add, 1, reuse=value)
        with pytest.raises(ConfigurationError, match="'reuse'"):
            async_iter(fx.add, [1], reuse=value)
        with pytest.raises(ConfigurationError, match="'reuse'"):
            configure(reuse=value)
    assert queue_size() == 0
    monkeypatch.setenv("NBQUEUE_REUSE", "yes")
    conf.reload()
    assert conf.settings().reuse is True
    monkeypatch.setenv("NBQUEUE_REUSE", "maybe")
    conf.reload()
    with pytest.raises(ConfigurationError, match="NBQUEUE_REUSE"):
        conf.settings()



def test_the_key_of_a_call_is_the_one_stores_hold(store_dir):
    """Keys live in the store: the same call must give the key recorded by earlier
    versions (the options keyed: group, save, cached, timeout, ack_failure, max_attempts,
    task_name, as given, the settings' cached filled in)."""
    import pickle
    from nbqueue.options import TaskOptions

    args, kwargs = (1, 2.5), {"x": "y"}
    pickled = pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    options = TaskOptions.take({"group": "g", "timeout": 5, "task_name": "n", "save": True},
                               conf.settings())
    keys = [calls.call_key("math.floor", ("math.floor", "math.floor", None), options, "h.hook",
                           [(args, kwargs, pickled)], of_iter=of_iter) for of_iter in (False, True)]
    assert keys == ["689cfba153909fed8d6e65aa05e18b327742d85c",
                    "487eb73f77a6c094360300cf64c4c53662c9a7b6"]
